"""The flow-matching transformer base shared by FLUX.1, Chroma and SD 3.x (and the families after them): torch-free facts.

As ``core/families/sd_unet/`` is for the UNet families, this package holds what every
flow-matching transformer family has in common; each family package keeps only its own
facts (denoiser config, text encoders, key layouts). Plain functions with explicit inputs,
composed by each family's runtime:

* ``objective.py``  the flow objective from the model's scheduler config and the run's settings
* ``latents.py``    16-channel VAE latents with scaling *and* shift; 2×2 patch packing and image ids
* ``models.py``     attention backend, gradient checkpointing, adapters, schedulers of diffusers transformers
* ``single_file.py`` transformer-only single files (ComfyUI's ``diffusion_models``), the other parts from a folder or the hub
* ``tiny.py``       the toy 16-channel VAE and the flow scheduler of the tiny models
* ``runtime.py``    :class:`FlowRuntime`, the hooks every such family shares, built from the above

This module only holds data (no torch): the planner and the specs read it.
"""

from __future__ import annotations

from typing import Any

#: How a flow objective draws σ, and how it weights the loss.
FLOW_SAMPLINGS = ("uniform", "logit_normal", "mode")
FLOW_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
#: The run settings that shape a flow objective and their defaults (``core/settings.py`` reads them
#: here); a DDPM family refuses them changed. ``flow_shift`` 0 is the model's own shift rule.
FLOW_SETTINGS: dict[str, Any] = {
    "flow_sampling": "logit_normal",
    "flow_shift": 0.0,
    "flow_weighting": "none",
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "mode_scale": 1.29,
}

#: What every flow-matching transformer family trains: LoRA (LoHa/LoKr through ``lora_type``) and
#: the full model. No textual inversion (T5 is never trained) and no DreamBooth prior loss.
METHODS = ("lora", "finetune")

#: The objectives these families train with (``core/families/objectives.py``).
OBJECTIVES = ("flow",)

#: Pixels a bucket side must be a multiple of: the VAE's 8× downscale times the 2×2 patch.
BUCKET_STEP = 16

#: FLUX.1-dev's embedded guidance while training (``settings.guidance_scale``): 1.0, as sd-scripts
#: (``--guidance_scale``) and ai-toolkit train it; sampling uses the prompt's own scale.
TRAINING_GUIDANCE = 1.0

#: The block selection settings (sd-scripts' ``network_args`` names) of the FLUX.1-shaped families -> diffusers' block lists.
DOUBLE_SINGLE_BLOCKS = {"train_double_block_indices": "transformer_blocks", "train_single_block_indices": "single_transformer_blocks"}

#: Latent pixels per token side (2×2 patches: FLUX.1's packing, SD 3.x's patch embedding).
PATCH = 2

#: The 16-channel VAE of FLUX.1 (black-forest-labs/FLUX.1-dev ``vae/config.json``); SD 3.x's is the
#: same network with its own scaling and shift.
VAE_16: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

#: google/t5-v1_1-xxl's encoder, as FLUX.1-dev's ``text_encoder_2/config.json`` holds it.
T5_XXL: dict[str, Any] = {
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

#: The component classes every family here shares (a family adds its denoiser and encoders).
COMPONENT_CLASSES: dict[str, str] = {
    "vae": "diffusers.AutoencoderKL",
    "text_encoder": "transformers.CLIPTextModel",
    "text_encoder_2": "transformers.T5EncoderModel",
}
