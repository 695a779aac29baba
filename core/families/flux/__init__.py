"""FLUX.1 (Black Forest Labs; dev and schnell): a 12B double/single-stream flow transformer, CLIP-L pooled + T5-XXL, 16-channel latents.

Configs from the public ``config.json`` files of black-forest-labs/FLUX.1-dev and FLUX.1-schnell
(no download): the transformer is 19 double-stream and 38 single-stream blocks 3072 wide
(24 heads of 128), 2×2-packed latents (``in_channels`` 64), CLIP-L's pooled vector (768) and
T5-XXL's states (4096). schnell is the guidance-distilled 4-step model: no guidance embedding,
fixed shift 1.0, T5 at 256 tokens (dev: 512, resolution-dependent shift). docs/families/flux.md
has the sources. No torch import here; the runtime is ``flux/runtime.py``.
"""

from __future__ import annotations

from typing import Any

from core.families.flow_mmdit import BUCKET_STEP, COMPONENT_CLASSES, DOUBLE_SINGLE_BLOCKS, METHODS, OBJECTIVES, T5_XXL, VAE_16
from core.families.sd_unet import CLIP_HIGH_PRECISION, CLIP_L, CLIP_TOKENS
from core.families.sd_unet import LORA_TARGETS as SD_LORA_TARGETS
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

#: FLUX.1-dev's scheduler config: the shift grows with the image's tokens (256 -> 0.5, 4096 -> 1.15, as exp(μ)).
SCHEDULER_DEV: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
#: FLUX.1-schnell's: a fixed shift of 1.0 (no shift).
SCHEDULER_SCHNELL: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}

#: Attention inside the blocks (the joint attention's image and text projections).
_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
#: The MLPs: the double blocks' image and text feed-forwards, the single blocks' MLP in and fused out.
_FF = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
#: The modulations (``img_mod``/``txt_mod``/``modulation``) and the embedders and final layer outside the blocks.
_ALL = ("norm1.linear", "norm1_context.linear", "norm.linear", "x_embedder", "context_embedder", "linear_1", "linear_2", "norm_out.linear")

#: ``lora_targets`` of the transformer (peft suffixes; ``flux/runtime.py`` keeps ``attn`` and ``attn_ff``
#: inside the blocks) and of CLIP-L (T5 is never trained).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {"attn": _ATTN, "attn_ff": _ATTN + _FF, "all": _ATTN + _FF + _ALL},
    "text_encoder": SD_LORA_TARGETS["text_encoder"],
}

CLIP_ENCODER = TextEncoder(
    name="text_encoder",
    tokenizer="tokenizer",
    kind="clip_l",
    max_tokens=CLIP_TOKENS,
    kohya_prefix="lora_te1",
    original_prefix="text_encoders.clip_l.transformer.",
    original_layout="clip",
    embedding_key="clip_l",
    embedding_file="",
)
T5_ENCODER = TextEncoder(
    name="text_encoder_2",
    tokenizer="tokenizer_2",
    kind="t5xxl",
    max_tokens=512,
    kohya_prefix="lora_te2",
    original_prefix="text_encoders.t5xxl.transformer.",
    original_layout="t5",
    embedding_key="t5",
    embedding_file="",
    trainable=False,
)

#: Block swap streams the 19 double-stream blocks, then the 38 single-stream ones (forward order).
SWAP_BLOCKS: dict[str, str] = {"transformer_blocks": "num_layers", "single_transformer_blocks": "num_single_layers"}
#: What keeps the compute precision under a quantized base (the layers sd-scripts and musubi-tuner
#: keep out of fp8): the image/text/timestep/guidance embedders, every norm (the blocks'
#: modulation linears live in ``norm1``/``norm``, and the final ``norm_out``) and the output
#: projection; T5 keeps its feed-forward output ``wo`` (transformers keeps it in fp32 for T5) and
#: its norms.
TRANSFORMER_HIGH_PRECISION = ("x_embedder", "context_embedder", "time_text_embed.*", "*norm*", "proj_out")
T5_HIGH_PRECISION = ("*layer_norm*", "*.wo")

SPEC = FamilySpec(
    name="flux",
    title="FLUX.1",
    native_resolution=1024,
    latent_channels=16,
    denoiser="transformer",
    text_encoders=(CLIP_ENCODER, T5_ENCODER),
    objective="flow",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={"transformer": TRANSFORMER, "vae": VAE_16, "text_encoder": CLIP_L, "text_encoder_2": T5_XXL},
    scheduler=SCHEDULER_DEV,
    component_classes={**COMPONENT_CLASSES, "transformer": "diffusers.FluxTransformer2DModel"},
    #: Transformer forward TFLOPs per image at 1024 px (4096 image + 512 text tokens): 2 × 11.9 G
    #: parameters × 4608 tokens for the linear layers plus 4 × 4608² × 3072 per block × 57 blocks
    #: for attention (docs/families/flux.md); CLIP-L + T5-XXL per caption (2 × 4.8 G × 512).
    denoiser_tflops=125.0,
    denoiser_attention_tflops=15.0,
    text_encoder_tflops=4.9,
    kohya_base_version="flux1",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "flux-1-dev", "flux-dev": "flux-1-dev", "flux-schnell": "flux-1-schnell"},
    modelspec_implementation="https://github.com/black-forest-labs/flux",
    pipeline_class="FluxPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"transformer": TRANSFORMER_HIGH_PRECISION, "text_encoder": CLIP_HIGH_PRECISION, "text_encoder_2": T5_HIGH_PRECISION},
    recognition=Recognition(
        pipeline_mark="FluxPipeline",
        unet_marks={"_class_name": "FluxTransformer2DModel", "pooled_projection_dim": 768},
        checkpoint_keys=("double_blocks.", "single_transformer_blocks."),
        hub_pattern=r"flux\.?1|flux-?1|flux",
    ),
    # Full fine-tune: sd-scripts flux_train.py docs (Adafactor, 5e-5 with fused backward, no warm-up
    # in its example); ai-toolkit's full fine-tune examples 1e-5. The text encoders are not trained.
    full_weight_rates={"finetune": LrDefault(1e-5, 0.0, "constant_with_warmup", 100)},
    variants=(
        Variant("flux-dev", "flux", "FLUX.1 [dev]", native_resolution=1024, sample_steps=28, guidance_scale=3.5),
        Variant(
            "flux-schnell",
            "flux",
            "FLUX.1 [schnell]",
            configs={"transformer": {"guidance_embeds": False}},
            scheduler=SCHEDULER_SCHNELL,
            native_resolution=1024,
            sample_steps=4,
            guidance_scale=0.0,
            max_tokens={"text_encoder_2": 256},
        ),
    ),
    pipeline_clip_skip=False,
    bucket_step=BUCKET_STEP,
    original_denoiser_only=True,
    block_settings=DOUBLE_SINGLE_BLOCKS,
    samples_from_embeddings=True,
)
