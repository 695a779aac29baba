"""Stable Diffusion 2.x (SD 2.1 768-v and 512): OpenCLIP-H, a linear-projection UNet, v-prediction at 768 px."""

from __future__ import annotations

from core.families.sd_unet import CLIP_HIGH_PRECISION, CLIP_L, CLIP_TOKENS, COMPONENT_CLASSES, LORA_TARGETS, METHODS, OBJECTIVES, SWAP_BLOCKS, UNET_HIGH_PRECISION, UNET_SD1, VAE
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

SPEC = FamilySpec(
    name="sd2",
    title="Stable Diffusion 2.x",
    native_resolution=768,
    latent_channels=4,
    denoiser="unet",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="open_clip_h",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te",
            original_prefix="cond_stage_model.model.",
            original_layout="open_clip",
            embedding_key="emb_params",
            embedding_file="learned_embeds.safetensors",
        ),
    ),
    objective="epsilon",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={
        "unet": {**UNET_SD1, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True, "upcast_attention": True, "sample_size": 96},
        "vae": {**VAE, "sample_size": 768},
        "text_encoder": {
            **CLIP_L,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    },
    component_classes={k: COMPONENT_CLASSES[k] for k in ("unet", "vae", "text_encoder")},
    #: UNet forward TFLOPs per image at 768 px; OpenCLIP-H per caption.
    denoiser_tflops=1.52,
    text_encoder_tflops=0.055,
    kohya_base_version="sd_v2",
    kohya_v_suffix="_v",
    kohya_v2=True,
    modelspec_architectures={"epsilon": "stable-diffusion-v2-512", "v_prediction": "stable-diffusion-v2-768-v"},
    modelspec_implementation="diffusers",
    pipeline_class="StableDiffusionPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"unet": UNET_HIGH_PRECISION, "text_encoder": CLIP_HIGH_PRECISION},
    recognition=Recognition(
        cross_attention_dim=1024,
        unet_marks={"use_linear_projection": True},
        text_marks={"hidden_size": 1024, "hidden_act": "gelu"},
        checkpoint_keys=("cond_stage_model.model.",),
        hub_pattern=r"stable-diffusion-2|sd-?2|2-1|2\.1|v2-",
    ),
    # diffusers examples/dreambooth: 5e-6 (UNet only) and 2e-6 (with the text encoder), constant,
    # no warm-up; sd-scripts train_db docs 1e-6. Fine-tune: diffusers train_text_to_image 1e-5
    # (effective batch 4), sd-scripts fine_tune.md 1e-5 with text encoders at 5e-6 / 2e-6,
    # OneTrainer's default 3e-6 with 200 warm-up steps.
    full_weight_rates={
        "dreambooth": LrDefault(2e-6, 1e-6, "constant", 0),
        "finetune": LrDefault(5e-6, 2e-6, "constant_with_warmup", 200),
    },
    v_prediction_sample_size=96,
    # SD 2.x 768-v (v-prediction at 768 px) and the 512 px epsilon base model
    variants=(
        Variant("sd2", "sd2", "Stable Diffusion 2.1 (768-v)"),
        Variant("sd2-base", "sd2", "Stable Diffusion 2.1 base (512 px)", configs={"unet": {"sample_size": 64}}, native_resolution=512),
    ),
)
