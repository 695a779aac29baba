"""The Stable Diffusion UNet base shared by sd1, sd2 and sdxl: component configs, LoRA targets, methods.

Written from the public ``config.json`` files of the reference checkpoints (no download):
SD 1.5 (runwayml/stable-diffusion-v1-5), SD 2.1 768-v (stabilityai/stable-diffusion-2-1) and
SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0). The estimator's parameter counts
(``bench/measure_params.py``) and the GPU benchmarks build random real-size models from these.
No torch import here; the runtime shared by these families is ``sd_unet/runtime.py``.
"""

from __future__ import annotations

from typing import Any

#: The methods every SD-UNet family trains.
METHODS = ("lora", "dreambooth", "finetune", "textual_inversion")

#: The DDPM objectives a UNet of these families is trained with.
OBJECTIVES = ("epsilon", "v_prediction")

#: Component name -> the diffusers / transformers class that the config builds.
COMPONENT_CLASSES: dict[str, str] = {
    "unet": "diffusers.UNet2DConditionModel",
    "vae": "diffusers.AutoencoderKL",
    "text_encoder": "transformers.CLIPTextModel",
    "text_encoder_2": "transformers.CLIPTextModelWithProjection",
}

VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}

#: The token sequence length of CLIP text encoders (what the UNet cross-attends to).
CLIP_TOKENS = CLIP_L["max_position_embeddings"]

UNET_SD1: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "sample_size": 64,
}

#: Module names (peft's rule: the whole name or its last dotted parts) that each ``lora_targets``
#: setting adapts, as the trainer (core/train/model/methods.py) applies them. ``attn``: the attention
#: projections; ``attn_ff`` adds the feed-forward layers (the text encoders' MLP ``fc1``/``fc2``,
#: as kohya's LoRA adapts them); ``all`` adds the ResNet convolutions and the transformers'
#: in/out projections (LoCon).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        "attn_ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
        "all": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out"),
    },
    "text_encoder": {
        "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "attn_ff": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        "all": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    },
}


#: A UNet swaps its down and up blocks (4 + 4 in SD 1.x/2.x, 3 + 3 in SDXL) in the order the
#: forward runs them; the mid block, the embeddings and the in/out convolutions stay on the GPU.
#: The blocks are coarse and uneven (SDXL's innermost down block and outermost up block hold
#: most of its transformer layers), so swapping one block frees a large, block-dependent share.
SWAP_BLOCKS: dict[str, str] = {"down_blocks": "down_block_types", "up_blocks": "up_block_types"}

#: What keeps its precision under a quantized base (only linear layers are quantized at all):
#: the UNet's timestep embedding, each ResNet's timestep projection (its modulation), every norm
#: and the in/out convolutions; CLIP's token and position embeddings and its layer norms. SDXL
#: adds its size embedding (``add_embedding``) and the second encoder's ``text_projection``.
UNET_HIGH_PRECISION = ("time_embedding.*", "*time_emb_proj", "*norm*", "conv_in", "conv_out")
CLIP_HIGH_PRECISION = ("*embeddings*", "*layer_norm*")


def is_lora_target(module_name: str, targets: tuple[str, ...]) -> bool:
    """Whether peft adapts ``module_name`` for these targets (equal, or ending in ``.target``)."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)
