"""Stable Diffusion 1.x (SD 1.5 and its fine-tunes): CLIP-L, a 4-level UNet, 512 px, epsilon."""

from __future__ import annotations

from core.families.sd_unet import CLIP_HIGH_PRECISION, CLIP_L, CLIP_TOKENS, COMPONENT_CLASSES, LORA_TARGETS, METHODS, OBJECTIVES, SWAP_BLOCKS, UNET_HIGH_PRECISION, UNET_SD1, VAE
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

SPEC = FamilySpec(
    name="sd1",
    title="Stable Diffusion 1.x",
    native_resolution=512,
    latent_channels=4,
    denoiser="unet",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="clip_l",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te",
            original_prefix="cond_stage_model.transformer.",
            original_layout="clip",
            embedding_key="emb_params",
            embedding_file="learned_embeds.safetensors",
        ),
    ),
    objective="epsilon",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={"unet": UNET_SD1, "vae": VAE, "text_encoder": CLIP_L},
    component_classes={k: COMPONENT_CLASSES[k] for k in ("unet", "vae", "text_encoder")},
    #: UNet forward TFLOPs per image at 512 px (2 FLOPs per MAC); CLIP-L per 77-token caption.
    denoiser_tflops=0.68,
    text_encoder_tflops=0.013,
    kohya_base_version="sd_v1",
    kohya_v_suffix="_v",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "stable-diffusion-v1"},
    modelspec_implementation="diffusers",
    pipeline_class="StableDiffusionPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"unet": UNET_HIGH_PRECISION, "text_encoder": CLIP_HIGH_PRECISION},
    recognition=Recognition(
        cross_attention_dim=768,
        text_marks={"hidden_act": "quick_gelu"},
        checkpoint_keys=("cond_stage_model.transformer.",),
        hub_pattern=r"stable-diffusion-v?1|sd-?1|v1-[45]|1-5|1\.5",
    ),
    variants=(Variant("sd1", "sd1", "Stable Diffusion 1.5"),),
    # diffusers examples/dreambooth: 5e-6 (UNet only) and 2e-6 (with the text encoder), constant,
    # no warm-up; sd-scripts train_db docs 1e-6. Fine-tune: diffusers train_text_to_image 1e-5
    # (effective batch 4), sd-scripts fine_tune.md 1e-5 with text encoders at 5e-6 / 2e-6,
    # OneTrainer's default 3e-6 with 200 warm-up steps.
    full_weight_rates={
        "dreambooth": LrDefault(2e-6, 1e-6, "constant", 0),
        "finetune": LrDefault(5e-6, 2e-6, "constant_with_warmup", 200),
    },
)
