"""FLUX.2 (black-forest-labs): klein 4B / 9B with a Qwen3 text encoder, dev (32B) with Mistral Small 3.

Facts from diffusers 0.42 (``Flux2KleinPipeline``, ``Flux2Pipeline``, ``Flux2Transformer2DModel``,
``AutoencoderKLFlux2``, scripts/convert_flux2_to_diffusers.py for the klein sizes) and the public
``config.json`` files of Qwen/Qwen3-4B, Qwen/Qwen3-8B and mistralai/Mistral-Small-3.1-24B-Instruct-2503.
The training shift is kohya-ss/musubi-tuner's ``flux2_shift`` (μ linear in the image tokens,
256 → 0.5, 4096 → 1.15; the latents are already 2×2-patchified, so a token is one latent pixel).
No torch import here.
"""

from __future__ import annotations

from typing import Any

from core.families.flow_mmdit import DOUBLE_SINGLE_BLOCKS
from core.families.llm_prompt import CAPTION, LLM_HIGH_PRECISION, QWEN3_NO_THINKING, LlmPrompt, chatml
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

#: The text tokens every caption is padded to (``max_sequence_length``).
MAX_TOKENS = 512
#: FLUX.2-dev's system prompt (diffusers ``pipelines/flux2/system_messages.py``, from black-forest-labs/flux2).
DEV_SYSTEM_MESSAGE = (
    "You are an AI that reasons about image descriptions. You give structured responses focusing on object relationships, object\nattribution and actions without speculation."
)
#: How Flux2KleinPipeline reads a caption: Qwen3's chat template with thinking off, padded to 512
#: tokens (the transformer attends to the padding, so there is no mask), hidden layers 9, 18 and 27
#: side by side (``text_encoder_out_layers``).
KLEIN_PROMPT = LlmPrompt(
    template=chatml(think=QWEN3_NO_THINKING),
    layers=(9, 18, 27),
    max_tokens=MAX_TOKENS,
    trim=False,
    source="diffusers Flux2KleinPipeline._get_qwen3_prompt_embeds",
)
#: How Flux2Pipeline (dev) reads one: Mistral Small 3's chat template (its v7 format: the system
#: prompt, then the user turn, no generation prompt), layers 10, 20 and 30.
DEV_PROMPT = LlmPrompt(
    template=f"<s>[SYSTEM_PROMPT]{DEV_SYSTEM_MESSAGE}[/SYSTEM_PROMPT][INST]{CAPTION}[/INST]",
    layers=(10, 20, 30),
    max_tokens=MAX_TOKENS,
    trim=False,
    source="diffusers Flux2Pipeline._get_mistral_3_small_prompt_embeds",
)

#: FLUX.2 klein 4B's transformer (scripts/convert_flux2_to_diffusers.py ``klein-4b``); dev's are the class defaults.
TRANSFORMER_KLEIN_4B: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": [32, 32, 32, 32],
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 32,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": [2, 2],
}

#: Qwen/Qwen3-4B (klein 4B's text encoder, ``Qwen3ForCausalLM``).
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

#: Qwen/Qwen3-8B (klein 9B's).
QWEN3_8B_CHANGES: dict[str, Any] = {"hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False}

#: mistralai/Mistral-Small-3.1-24B-Instruct-2503 (dev's ``Mistral3ForConditionalGeneration``).
MISTRAL_SMALL_3: dict[str, Any] = {
    "model_type": "mistral3",
    "text_config": {
        "model_type": "mistral",
        "vocab_size": 131072,
        "hidden_size": 5120,
        "intermediate_size": 32768,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000000.0,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 1540,
        "patch_size": 14,
    },
    "spatial_merge_size": 2,
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
}

#: The scheduler the tiny model is built with: FlowMatchEuler with dynamic shifting (the FLUX.2 pipelines
#: pass their own empirical μ when sampling; training uses musubi-tuner's flux2_shift, ``runtime.TRAIN_SHIFT``).
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}

_ATTN = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_qkv_mlp_proj",
    "attn.to_out",
)
_FF = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
_ALL = (
    "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.linear",
    "single_stream_modulation.linear",
    "x_embedder",
    "context_embedder",
    "proj_out",
    "timestep_embedder.linear_1",
    "timestep_embedder.linear_2",
)

#: Module-name suffixes of the Linear layers each ``lora_targets`` setting adapts (only Linear layers
#: are adapted: the double blocks' ``attn.to_out`` list is not one). The single blocks fuse attention
#: and MLP in one projection (``to_qkv_mlp_proj``, ``to_out``), so ``attn`` adapts them whole. The
#: final ``norm_out.linear`` is left out of ``all``: its two output halves are swapped in the original
#: layout, which LoHa/LoKr factors cannot follow.
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {"attn": _ATTN, "attn_ff": _ATTN + _FF, "all": _ATTN + _FF + _ALL},
    "text_encoder": {
        "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "attn_ff": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    },
}

#: LoRA at 1e-4: musubi-tuner docs/flux_2.md and ai-toolkit's FLUX.2 klein examples (dim 16-32,
#: AdamW8bit); dev runs in the peers' scripts use 5e-5 … 1e-4. Full fine-tune of klein 4B at 1e-5
#: (OneTrainer's FLUX fine-tune presets; musubi-tuner's flux_2 full fine-tune example, Adafactor).
LR_DEFAULTS = {
    "lora": LrDefault(1e-4, 0.0, "constant", 0),
    "finetune": LrDefault(1e-5, 0.0, "constant_with_warmup", 100),
}

#: klein's sampling defaults: 50 steps, guidance 4.0 (Flux2KleinPipeline's; the distilled checkpoints ignore the guidance).
KLEIN_STEPS, KLEIN_GUIDANCE = 50, 4.0

#: Block swap streams the double-stream blocks, then the single-stream ones (forward order; klein 4B:
#: 5 + 20, klein 9B: 8 + 24, dev: 8 + 48).
SWAP_BLOCKS: dict[str, str] = {"transformer_blocks": "num_layers", "single_transformer_blocks": "num_single_layers"}
#: What keeps the compute precision under a quantized base (musubi-tuner's FLUX.2 fp8 keeps the
#: norms, embedders and modulation out): the image/text/timestep(-guidance) embedders, the three
#: shared modulations, every norm and the output projection.
TRANSFORMER_HIGH_PRECISION = ("x_embedder", "context_embedder", "time_guidance_embed.*", "*modulation*", "*norm*", "proj_out")
#: The text encoder's: an LLM's embedding and norms, and ``lm_head`` (Qwen3-4B ties it to the embedding).
TEXT_ENCODER_HIGH_PRECISION = (*LLM_HIGH_PRECISION, "lm_head")

SPEC = FamilySpec(
    name="flux2",
    title="FLUX.2",
    native_resolution=1024,
    latent_channels=128,
    denoiser="transformer",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="qwen3",
            max_tokens=MAX_TOKENS,
            kohya_prefix="lora_te",
            original_prefix="",
            original_layout="transformers",
            embedding_key="",
            embedding_file="",
            trainable=False,
        ),
    ),
    objective="flow",
    objectives=("flow",),
    methods=("lora", "finetune"),
    lora_targets=LORA_TARGETS,
    configs={"transformer": TRANSFORMER_KLEIN_4B, "vae": VAE, "text_encoder": QWEN3_4B},
    component_classes={
        "transformer": "diffusers.Flux2Transformer2DModel",
        "vae": "diffusers.AutoencoderKLFlux2",
        "text_encoder": "transformers.Qwen3ForCausalLM",
    },
    #: Forward TFLOPs per 1024² image (4096 image + 512 text tokens), 2 FLOPs per MAC over the blocks'
    #: linears plus attention: klein 4B ≈ 3.9 B block weights -> 2 · 3.9e9 · 4608 + 4 · 4608² · 3072 · 25
    #: ≈ 42; the Qwen3-4B encoder 2 · 4e9 · 512 ≈ 4.1 per caption (27 of 36 layers are needed, all are run).
    denoiser_tflops=42.0,
    denoiser_attention_tflops=6.5,
    text_encoder_tflops=4.1,
    kohya_base_version="flux2",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "flux-2-klein-4b", "flux2-klein-9b": "flux-2-klein-9b", "flux2-dev": "flux-2-dev"},
    modelspec_implementation="https://github.com/black-forest-labs/flux2",
    pipeline_class="Flux2KleinPipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"transformer": TRANSFORMER_HIGH_PRECISION, "text_encoder": TEXT_ENCODER_HIGH_PRECISION},
    recognition=Recognition(
        pipeline_mark="Flux2",
        unet_marks={"_class_name": "Flux2Transformer2DModel", "timestep_guidance_channels": 256},
        checkpoint_keys=("double_stream_modulation_img.", "single_stream_modulation."),
        hub_pattern=r"flux[._-]?2|klein",
    ),
    full_weight_rates=LR_DEFAULTS,
    scheduler=SCHEDULER,
    variants=(
        Variant("flux2-klein-4b", "flux2", "FLUX.2 [klein] 4B", native_resolution=1024, sample_steps=KLEIN_STEPS, guidance_scale=KLEIN_GUIDANCE),
        Variant(
            "flux2-klein-9b",
            "flux2",
            "FLUX.2 [klein] 9B",
            configs={
                "transformer": {"num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32, "joint_attention_dim": 12288},
                "text_encoder": QWEN3_8B_CHANGES,
            },
            native_resolution=1024,
            # 2 · 9.08e9 · 4608 + 4 · 4608² · 4096 · 32 blocks; Qwen3-8B: 2 · 8.2e9 · 512.
            denoiser_tflops=95.0,
            denoiser_attention_tflops=11.1,
            text_encoder_tflops=8.4,
            sample_steps=KLEIN_STEPS,
            guidance_scale=KLEIN_GUIDANCE,
        ),
        Variant(
            "flux2-dev",
            "flux2",
            "FLUX.2 [dev]",
            configs={
                "transformer": {"num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48, "joint_attention_dim": 15360, "guidance_embeds": True},
                "text_encoder": MISTRAL_SMALL_3,
            },
            component_classes={"text_encoder": "transformers.Mistral3ForConditionalGeneration"},
            native_resolution=1024,
            # 2 · 32.2e9 · 4608 + 4 · 4608² · 6144 · 56 blocks; Mistral 24B: 2 · 23.3e9 · 512.
            denoiser_tflops=326.0,
            denoiser_attention_tflops=29.2,
            text_encoder_tflops=23.9,
            sample_steps=50,
            guidance_scale=4.0,
        ),
    ),
    pipeline_clip_skip=False,
    bucket_step=16,
    original_denoiser_only=True,
    block_settings=DOUBLE_SINGLE_BLOCKS,
    samples_from_embeddings=True,
)
