"""The real-size architecture configs of the three Stable Diffusion families, as plain dicts.

Written from the public ``config.json`` files of the reference checkpoints (no download):
SD 1.5 (runwayml/stable-diffusion-v1-5), SD 2.1 768-v (stabilityai/stable-diffusion-2-1) and
SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0). The estimator's parameter counts
(``bench/measure_params.py``) and the GPU benchmarks build random real-size models from these.
No torch import here.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

#: Component name -> the diffusers / transformers class that the config builds.
COMPONENT_CLASSES: dict[str, str] = {
    "unet": "diffusers.UNet2DConditionModel",
    "vae": "diffusers.AutoencoderKL",
    "text_encoder": "transformers.CLIPTextModel",
    "text_encoder_2": "transformers.CLIPTextModelWithProjection",
}

_VAE: dict[str, Any] = {
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

_CLIP_L: dict[str, Any] = {
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

_UNET_SD1: dict[str, Any] = {
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

_UNET_SD2: dict[str, Any] = {
    **_UNET_SD1,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "sample_size": 96,
}

_UNET_SDXL: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}

_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd1": {
        "unet": _UNET_SD1,
        "vae": _VAE,
        "text_encoder": _CLIP_L,
    },
    "sd2": {
        "unet": _UNET_SD2,
        "vae": {**_VAE, "sample_size": 768},
        "text_encoder": {
            **_CLIP_L,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    },
    "sdxl": {
        "unet": _UNET_SDXL,
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {
            **_CLIP_L,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "hidden_act": "gelu",
            "projection_dim": 1280,
        },
    },
}

#: The native training resolution of each family (its reference checkpoint's image size).
NATIVE_RESOLUTION: dict[str, int] = {"sd1": 512, "sd2": 768, "sdxl": 1024}

#: The text sequence length the UNet cross-attends to (CLIP's 77 tokens).
TEXT_TOKENS = 77


def family_config(family: str) -> dict[str, dict[str, Any]]:
    """A fresh copy of the component configs of ``family`` (sd1, sd2 or sdxl)."""
    if family not in _CONFIGS:
        raise KeyError(f"unknown model family '{family}'; known: {', '.join(_CONFIGS)}")
    return deepcopy(_CONFIGS[family])


def families() -> tuple[str, ...]:
    """The families that have configs."""
    return tuple(_CONFIGS)

#: Module names (peft's rule: the whole name or its last dotted parts) that each ``lora_targets``
#: setting adapts, as the trainer (core/train/methods.py) applies them. ``attn``: the attention
#: projections; ``attn_ff`` adds the feed-forward layers (the text encoders' MLP ``fc1``/``fc2``,
#: as kohya's LoRA adapts them); ``all`` adds the ResNet convolutions and the transformers'
#: in/out projections (LoCon).
LORA_TARGET_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "unet": {
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


def is_lora_target(module_name: str, targets: tuple[str, ...]) -> bool:
    """Whether peft adapts ``module_name`` for these targets (equal, or ending in ``.target``)."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def adapter_parameters(lora_type: str, rank: int, width: int) -> int:
    """Trainable parameters of a LoRA-style adapter over layers of total ``width`` (Σ in·k·k + out).

    LoRA: rank × width. LoHa: two LoRA pairs, 2 × rank × width. LoKr: peft factors each layer
    into a Kronecker product of two small matrices, about 2·√(out·in) per layer whatever the
    rank (a factor is split by rank only when that is smaller), which is at most ``width``: the
    count used here, an upper bound.
    """
    if lora_type == "loha":
        return 2 * rank * width
    if lora_type == "lokr":
        return width
    return rank * width

