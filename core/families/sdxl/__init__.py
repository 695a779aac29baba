"""Stable Diffusion XL (base 1.0 and its fine-tunes): CLIP-L + OpenCLIP-bigG, size/crop conditioning, 1024 px."""

from __future__ import annotations

from core.families.sd_unet import CLIP_HIGH_PRECISION, CLIP_L, CLIP_TOKENS, COMPONENT_CLASSES, LORA_TARGETS, METHODS, OBJECTIVES, SWAP_BLOCKS, UNET_HIGH_PRECISION, VAE
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

_UNET = {
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

SPEC = FamilySpec(
    name="sdxl",
    title="Stable Diffusion XL",
    native_resolution=1024,
    latent_channels=4,
    denoiser="unet",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="clip_l",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te1",
            original_prefix="conditioner.embedders.0.transformer.",
            original_layout="clip",
            embedding_key="clip_l",
            embedding_file="learned_embeds.safetensors",
        ),
        TextEncoder(
            name="text_encoder_2",
            tokenizer="tokenizer_2",
            kind="clip_g",
            max_tokens=CLIP_TOKENS,
            kohya_prefix="lora_te2",
            original_prefix="conditioner.embedders.1.model.",
            original_layout="open_clip",
            embedding_key="clip_g",
            embedding_file="learned_embeds_2.safetensors",
        ),
    ),
    objective="epsilon",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={
        "unet": _UNET,
        "vae": {**VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": CLIP_L,
        "text_encoder_2": {
            **CLIP_L,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_attention_heads": 20,
            "num_hidden_layers": 32,
            "hidden_act": "gelu",
            "projection_dim": 1280,
        },
    },
    component_classes=COMPONENT_CLASSES,
    #: UNet forward TFLOPs per image at 1024 px; CLIP-L + bigG per caption.
    denoiser_tflops=5.6,
    text_encoder_tflops=0.12,
    kohya_base_version="sdxl_base_v1-0",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "stable-diffusion-xl-v1-base"},
    modelspec_implementation="https://github.com/Stability-AI/generative-models",
    pipeline_class="StableDiffusionXLPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={
        "unet": (*UNET_HIGH_PRECISION, "add_embedding.*"),
        "text_encoder": CLIP_HIGH_PRECISION,
        "text_encoder_2": (*CLIP_HIGH_PRECISION, "text_projection"),
    },
    recognition=Recognition(
        folder_parts=("text_encoder_2",),
        pipeline_mark="XL",
        cross_attention_dim=2048,
        unet_marks={"addition_embed_type": "text_time"},
        checkpoint_keys=("conditioner.embedders.1", "text_encoder_2", "add_embedding."),
        hub_pattern=r"xl|sd-?xl|pony|illustrious",
    ),
    # SDXL's whole UNet: diffusers train_text_to_image_sdxl 1e-6; sd-scripts' Adafactor example
    # 4e-7 with constant_with_warmup 100.
    full_weight_rates={
        "dreambooth": LrDefault(1e-6, 5e-7, "constant_with_warmup", 100),
        "finetune": LrDefault(1e-6, 5e-7, "constant_with_warmup", 100),
    },
    native_clip_layer=2,
    variants=(Variant("sdxl", "sdxl", "Stable Diffusion XL 1.0"),),
)
