"""Stable Diffusion 3.5 (Medium, Large, Large Turbo): an MMDiT over CLIP-L + CLIP-G + T5-XXL, rectified flow, 16-channel VAE.

Written from the public ``config.json`` files of stabilityai/stable-diffusion-3.5-medium and
stabilityai/stable-diffusion-3.5-large (``transformer/``, ``vae/``, ``text_encoder*/``,
``scheduler/``), as diffusers' ``SD3Transformer2DModel`` reads them; sources in docs/families/sd35.md.
No torch import here; the runtime is ``sd35/runtime.py``.
"""

from __future__ import annotations

from typing import Any

from core.families.flow_mmdit import BUCKET_STEP, METHODS, OBJECTIVES, T5_XXL, VAE_16
from core.families.flux import T5_HIGH_PRECISION
from core.families.sd_unet import CLIP_HIGH_PRECISION, CLIP_L, CLIP_TOKENS
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

#: The T5-XXL token limit SD 3.5 is trained and sampled with (diffusers' ``max_sequence_length`` default).
T5_TOKENS = 256
#: The MMDiT's text sequence: the CLIP states (77 tokens) followed by T5's.
TEXT_SEQUENCE = CLIP_TOKENS + T5_TOKENS

#: SD 3.5 Medium's MMDiT-X: 24 joint blocks, 13 of them with a second (image-only) attention, QK RMS norm.
TRANSFORMER_MEDIUM: dict[str, Any] = {
    "attention_head_dim": 64,
    "caption_projection_dim": 1536,
    "dual_attention_layers": list(range(13)),
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 24,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}

#: SD 3.5 Large (and Large Turbo): 38 joint blocks 2432 wide, QK RMS norm, no dual attention.
TRANSFORMER_LARGE: dict[str, Any] = {
    "caption_projection_dim": 2432,
    "dual_attention_layers": [],
    "num_attention_heads": 38,
    "num_layers": 38,
    "pos_embed_max_size": 192,
}

#: What makes a variant Large: its transformer, and its forward TFLOPs at 1024 px (counted as Medium's;
#: attention 4·L²·d per joint block: 4 × 4429² × 2432 × 38).
LARGE: dict[str, Any] = {"configs": {"transformer": TRANSFORMER_LARGE}, "denoiser_tflops": 31.1, "denoiser_attention_tflops": 7.25}

#: The 16-channel VAE as SD 3.x ships it: FLUX.1's network, latents ``(z - 0.0609) * 1.5305``.
VAE_SD3: dict[str, Any] = {**VAE_16, "scaling_factor": 1.5305, "shift_factor": 0.0609}

#: The flow-matching Euler scheduler of SD 3.5 (``scheduler/scheduler_config.json``): a fixed shift of 3.0.
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}

CLIP_G: dict[str, Any] = {
    **CLIP_L,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

#: The attention projections of a joint block (image stream, text stream, and Medium's second attention).
_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_MLP = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
#: The adaLN modulation linears (sd-scripts' ``adaLN_modulation.1``, trained by its default SD3 LoRA).
_MODULATION = ("norm1.linear", "norm1_context.linear")

#: ``lora_targets`` -> module names. ``attn``: the joint attention (diffusers' SD3 LoRA example);
#: ``attn_ff`` adds both streams' MLPs; ``all`` adds the modulation linears, every Linear of a
#: joint block as sd-scripts' SD3 LoRA adapts them. CLIP-L/G: as the SD families; T5 is never trained.
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {"attn": _ATTN, "attn_ff": _ATTN + _MLP, "all": _ATTN + _MLP + _MODULATION},
    "text_encoder": {
        "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "attn_ff": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
        "all": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    },
}

#: Block swap streams the MMDiT's joint blocks (24 in Medium, 38 in Large), in forward order.
SWAP_BLOCKS: dict[str, str] = {"transformer_blocks": "num_layers"}
#: LoRA's block selection: sd-scripts' SD3 network argument ``train_block_indices`` (networks/lora_sd3.py)
#: names the joint blocks to adapt, one list; the layers outside the blocks are not in any target.
BLOCK_SETTINGS: dict[str, str] = {"train_block_indices": "transformer_blocks"}
#: What keeps the compute precision under a quantized base, as for FLUX.1: the patch, caption and
#: timestep/pooled embedders, every norm (the blocks' AdaLN modulation linears live in ``norm1`` and
#: ``norm1_context``, the final one in ``norm_out``) and the output projection.
TRANSFORMER_HIGH_PRECISION = ("pos_embed.*", "context_embedder", "time_text_embed.*", "*norm*", "proj_out")

SPEC = FamilySpec(
    name="sd35",
    title="Stable Diffusion 3.5",
    native_resolution=1024,
    latent_channels=16,
    denoiser="transformer",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="clip_l",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te1",
            original_prefix="text_encoders.clip_l.transformer.",
            original_layout="clip",
            embedding_key="clip_l",
            embedding_file="",
        ),
        TextEncoder(
            name="text_encoder_2",
            tokenizer="tokenizer_2",
            kind="clip_g",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te2",
            original_prefix="text_encoders.clip_g.transformer.",
            original_layout="clip",
            embedding_key="clip_g",
            embedding_file="",
        ),
        TextEncoder(
            name="text_encoder_3",
            tokenizer="tokenizer_3",
            kind="t5xxl",
            max_tokens=T5_TOKENS,
            kohya_prefix="lora_te3",
            original_prefix="text_encoders.t5xxl.transformer.",
            original_layout="t5",
            embedding_key="t5xxl",
            embedding_file="",
            trainable=False,
        ),
    ),
    objective="flow",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={
        "transformer": TRANSFORMER_MEDIUM,
        "vae": VAE_SD3,
        "text_encoder": CLIP_L,
        "text_encoder_2": CLIP_G,
        "text_encoder_3": T5_XXL,
    },
    scheduler=SCHEDULER,
    component_classes={
        "transformer": "diffusers.SD3Transformer2DModel",
        "vae": "diffusers.AutoencoderKL",
        "text_encoder": "transformers.CLIPTextModelWithProjection",
        "text_encoder_2": "transformers.CLIPTextModelWithProjection",
        "text_encoder_3": "transformers.T5EncoderModel",
    },
    #: Medium's forward TFLOPs per image at 1024 px (4096 image + 333 text tokens; Large: 31.1) and
    #: CLIP-L + CLIP-G (77 tokens) + T5-XXL (256 tokens) per caption, counted by torch's FlopCounterMode
    #: on the meta device (docs/families/sd35.md).
    denoiser_tflops=11.25,
    #: Attention's part (grows with tokens²): 4 × 4429² × 1536 × 24 joint + 4 × 4096² × 1536 × 13 image-only.
    denoiser_attention_tflops=4.23,
    text_encoder_tflops=2.51,
    kohya_base_version="5-medium",
    kohya_v_suffix="",
    kohya_v2=False,
    #: sd-scripts' ``modelspec.architecture`` is ``stable-diffusion-3-`` + its model type of the weights.
    modelspec_architectures={"epsilon": "stable-diffusion-3-5-medium", "sd35-large": "stable-diffusion-3-5-large", "sd35-large-turbo": "stable-diffusion-3-5-large"},
    modelspec_implementation="diffusers",
    pipeline_class="StableDiffusion3Pipeline",
    swap_blocks=SWAP_BLOCKS,
    block_settings=BLOCK_SETTINGS,
    high_precision={
        "transformer": TRANSFORMER_HIGH_PRECISION,
        "text_encoder": CLIP_HIGH_PRECISION,
        "text_encoder_2": CLIP_HIGH_PRECISION,
        "text_encoder_3": T5_HIGH_PRECISION,
    },
    recognition=Recognition(
        folder_parts=("text_encoder_3",),
        pipeline_mark="StableDiffusion3",
        unet_marks={"_class_name": "SD3Transformer2DModel", "pooled_projection_dim": 2048},
        checkpoint_keys=("joint_blocks.",),
        hub_pattern=r"stable-diffusion-3|sd-?3",
    ),
    # Full fine-tune: diffusers examples/dreambooth/README_sd3.md trains the whole SD3 transformer at
    # 1e-4 for a 500-step DreamBooth (accumulation 4, constant); for a fine-tune of thousands of steps
    # sdtui takes 1e-5 with 100 warm-up steps, as for FLUX.1 (ai-toolkit's full fine-tunes). T5 is never trained.
    full_weight_rates={"finetune": LrDefault(1e-5, 5e-6, "constant_with_warmup", 100)},
    native_clip_layer=2,
    variants=(
        Variant("sd35-medium", "sd35", "Stable Diffusion 3.5 Medium", sample_steps=40, guidance_scale=4.5),
        Variant("sd35-large", "sd35", "Stable Diffusion 3.5 Large", sample_steps=28, guidance_scale=3.5, **LARGE),
        Variant("sd35-large-turbo", "sd35", "Stable Diffusion 3.5 Large Turbo", sample_steps=4, guidance_scale=0.0, **LARGE),
    ),
    pipeline_clip_skip=True,
    bucket_step=BUCKET_STEP,
    samples_from_embeddings=True,
)
