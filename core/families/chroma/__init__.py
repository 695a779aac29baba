"""Chroma (lodestones): FLUX.1-schnell's blocks without the per-block modulation weights, an 8.9B flow transformer on T5-XXL alone.

Config from the public ``transformer/config.json`` of lodestones/Chroma1-HD (diffusers layout; no
download): 19 double and 38 single blocks 3072 wide as FLUX.1, the modulations computed by one
small network (the "distilled guidance layer": 5 layers 5120 wide from 64 channels), no CLIP and
no guidance embedding; T5-XXL's padding is masked in the encoder and in the transformer's
attention (all but the first pad token). Real classifier-free guidance when sampling. Same BFL
key layout as FLUX.1 (``flux/layout.py``). docs/families/chroma.md has the sources.
"""

from __future__ import annotations

from typing import Any

from core.families.flow_mmdit import BUCKET_STEP, DOUBLE_SINGLE_BLOCKS, METHODS, OBJECTIVES, T5_XXL, VAE_16
from core.families.flux import LORA_TARGETS as FLUX_TARGETS
from core.families.flux import SCHEDULER_DEV, SWAP_BLOCKS, T5_HIGH_PRECISION, TRANSFORMER_HIGH_PRECISION
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

TRANSFORMER: dict[str, Any] = {
    "approximator_hidden_dim": 5120,
    "approximator_layers": 5,
    "approximator_num_channels": 64,
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
}

#: The transformer's targets are FLUX.1's (the modulation suffixes find nothing: Chroma has none);
#: ``all`` adds the approximator's layers. T5 is never trained.
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {**FLUX_TARGETS["denoiser"], "all": (*FLUX_TARGETS["denoiser"]["all"], "in_proj", "out_proj")},
    "text_encoder": {"attn": (), "attn_ff": (), "all": ()},
}

SPEC = FamilySpec(
    name="chroma",
    title="Chroma",
    native_resolution=1024,
    latent_channels=16,
    denoiser="transformer",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="t5xxl",
            max_tokens=512,
            kohya_prefix="lora_te",
            original_prefix="text_encoders.t5xxl.transformer.",
            original_layout="t5",
            embedding_key="t5",
            embedding_file="",
            attention_mask=True,
            trainable=False,
        ),
    ),
    objective="flow",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={"transformer": TRANSFORMER, "vae": VAE_16, "text_encoder": T5_XXL},
    scheduler=SCHEDULER_DEV,
    component_classes={"transformer": "diffusers.ChromaTransformer2DModel", "vae": "diffusers.AutoencoderKL", "text_encoder": "transformers.T5EncoderModel"},
    #: Transformer forward TFLOPs per image at 1024 px: FLUX.1's blocks less the modulation weights
    #: (2 × 8.9 G parameters × 4608 tokens) plus the same attention (docs/families/chroma.md).
    denoiser_tflops=97.0,
    denoiser_attention_tflops=15.0,
    text_encoder_tflops=4.8,
    kohya_base_version="chroma",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "chroma"},
    modelspec_implementation="https://huggingface.co/lodestones/Chroma",
    pipeline_class="ChromaPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"transformer": (*TRANSFORMER_HIGH_PRECISION, "distilled_guidance_layer.*"), "text_encoder": T5_HIGH_PRECISION},
    recognition=Recognition(
        pipeline_mark="ChromaPipeline",
        unet_marks={"_class_name": "ChromaTransformer2DModel", "approximator_num_channels": 64},
        checkpoint_keys=("distilled_guidance_layer.",),
        hub_pattern=r"chroma",
    ),
    # Full fine-tune as FLUX.1's (the same blocks): 1e-5, the text encoder frozen.
    full_weight_rates={"finetune": LrDefault(1e-5, 0.0, "constant_with_warmup", 100)},
    variants=(Variant("chroma", "chroma", "Chroma", native_resolution=1024, sample_steps=26, guidance_scale=4.0),),
    pipeline_clip_skip=False,
    bucket_step=BUCKET_STEP,
    original_denoiser_only=True,
    block_settings=DOUBLE_SINGLE_BLOCKS,
    samples_from_embeddings=True,
)
