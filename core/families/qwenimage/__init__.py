"""Qwen-Image (Qwen/Qwen-Image, 20B MMDiT): a Qwen2.5-VL-7B text encoder, the Wan-style 3-D VAE used with one frame.

Facts from diffusers 0.42 (``QwenImagePipeline``, ``QwenImageTransformer2DModel``,
``AutoencoderKLQwenImage``) and the public ``config.json`` files of Qwen/Qwen-Image; the
training shift from kohya-ss/musubi-tuner (``qwen_shift``: μ linear in the packed image tokens,
256 → 0.5, 8192 → 0.9, the model's own scheduler values). No torch import here.

Qwen-Image-Edit (image-conditioned, with control images) is a later issue: its checkpoints are
recognised and refused (``recognition.refused``).
"""

from __future__ import annotations

from typing import Any

from core.families.llm_prompt import LLM_HIGH_PRECISION, LlmPrompt, chatml
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

#: The system prompt QwenImagePipeline's chat template carries (``prompt_template_encode``).
SYSTEM_PROMPT = "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:"
#: The template's leading tokens the pipeline drops from the encoder's output (``prompt_template_encode_start_idx``).
DROPPED_PREFIX_TOKENS = 34
#: The caption tokens the pipeline keeps after the prefix (``tokenizer_max_length``).
MAX_TOKENS = 1024
#: How QwenImagePipeline reads a caption: the chat template with its system prompt, the last hidden
#: layer (after the final norm), the prefix dropped, each caption at its own length with a mask.
PROMPT = LlmPrompt(
    template=chatml(system=SYSTEM_PROMPT),
    layers=(-1,),
    max_tokens=MAX_TOKENS + DROPPED_PREFIX_TOKENS,
    drop_tokens=DROPPED_PREFIX_TOKENS,
    trim=True,
    source="diffusers QwenImagePipeline._get_qwen_prompt_embeds",
)

TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56],
}

VAE: dict[str, Any] = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
}

#: Qwen2.5-VL-7B-Instruct (the text tower is what the pipeline runs; the vision tower is loaded with it).
TEXT_ENCODER: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}

#: Qwen/Qwen-Image ``scheduler/scheduler_config.json``: dynamic shift over 256 … 8192 packed tokens.
SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
_FF = ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")
_ALL = ("img_mod.1", "txt_mod.1", "img_in", "txt_in", "proj_out", "norm_out.linear", "timestep_embedder.linear_1", "timestep_embedder.linear_2")

#: Module names each ``lora_targets`` setting adapts in the transformer (musubi-tuner's
#: lora_qwen_image adapts every Linear of the blocks, i.e. ``attn_ff`` + the modulations).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {"attn": _ATTN, "attn_ff": _ATTN + _FF, "all": _ATTN + _FF + _ALL},
    "text_encoder": {
        "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "attn_ff": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    },
}

#: The LoRA learning rate: musubi-tuner docs/qwen_image.md trains LoRA (dim 16) at 5e-5 with
#: AdamW8bit; ai-toolkit's Qwen-Image example and diffusers' README_qwen use 1e-4. Full fine-tune:
#: musubi-tuner's qwen_image full-finetune example uses Adafactor at 1e-5 … 2e-6; we start at 1e-5.
LR_DEFAULTS = {
    "lora": LrDefault(5e-5, 0.0, "constant", 0),
    "finetune": LrDefault(1e-5, 0.0, "constant_with_warmup", 100),
}

#: Block swap streams the 60 dual-stream blocks (forward order).
SWAP_BLOCKS: dict[str, str] = {"transformer_blocks": "num_layers"}
#: What keeps the compute precision under a quantized base: the image/text input projections, the
#: timestep embedder, every norm (``txt_norm``, the blocks' and ``norm_out``) and the output
#: projection. The blocks' modulations ``img_mod``/``txt_mod`` (a third of the 20 B weights) are
#: quantized, as the ComfyUI-compatible fp8 conversions do (they keep only the norms and the timestep embedder).
TRANSFORMER_HIGH_PRECISION = ("img_in", "txt_in", "time_text_embed.*", "*norm*", "proj_out")

SPEC = FamilySpec(
    name="qwenimage",
    title="Qwen-Image",
    native_resolution=1024,
    latent_channels=16,
    denoiser="transformer",
    text_encoders=(
        TextEncoder(
            name="text_encoder",
            tokenizer="tokenizer",
            kind="qwen25vl",
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
    configs={"transformer": TRANSFORMER, "vae": VAE, "text_encoder": TEXT_ENCODER},
    component_classes={
        "transformer": "diffusers.QwenImageTransformer2DModel",
        "vae": "diffusers.AutoencoderKLQwenImage",
        "text_encoder": "transformers.Qwen2_5_VLForConditionalGeneration",
    },
    #: Forward TFLOPs per 1024² image: 2 FLOPs per MAC over the 60 blocks' linears (≈ 20.4 B
    #: weights, the image stream's half on 4096 tokens, the text stream's on ~128 caption tokens)
    #: plus attention (4 · 4224² · 3072 per block); the text encoder: 2 · 7.6 B · ~160 tokens.
    denoiser_tflops=100.0,
    denoiser_attention_tflops=13.2,
    text_encoder_tflops=2.4,
    kohya_base_version="qwen_image",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "qwen-image"},
    modelspec_implementation="https://github.com/QwenLM/Qwen-Image",
    pipeline_class="QwenImagePipeline",
    swap_blocks=SWAP_BLOCKS,
    high_precision={"transformer": TRANSFORMER_HIGH_PRECISION, "text_encoder": LLM_HIGH_PRECISION},
    recognition=Recognition(
        pipeline_mark="QwenImage",
        unet_marks={"_class_name": "QwenImageTransformer2DModel", "joint_attention_dim": TRANSFORMER["joint_attention_dim"]},
        checkpoint_keys=("img_mod.1.weight", "txt_mlp.net.0.proj"),
        hub_pattern=r"qwen[-_]?image",
        refused=(("edit", "a Qwen-Image-Edit model (image-conditioned editing with control images), which sdtui does not train yet; use Qwen/Qwen-Image"),),
    ),
    full_weight_rates=LR_DEFAULTS,
    scheduler=SCHEDULER,
    variants=(Variant("qwen-image", "qwenimage", "Qwen-Image", native_resolution=1024, sample_steps=50, guidance_scale=4.0),),
    pipeline_clip_skip=False,
    bucket_step=16,
    original_denoiser_only=True,
    block_settings={"train_double_block_indices": "transformer_blocks"},
    samples_from_embeddings=True,
)
