"""Z-Image (Tongyi-MAI; Turbo and Base): a 6B single-stream flow transformer, Qwen3-4B text states, FLUX.1's 16-channel VAE.

Configs from the public ``config.json`` files of Tongyi-MAI/Z-Image-Turbo (no download; the
transformer's values are also what ComfyUI's ``model_detection.py`` sets for a Z-Image file): 30
layers 3840 wide (30 heads of 128) after 2 noise- and 2 context-refiner layers, 2×2 latent
patches, the caption as Qwen3-4B's second-to-last hidden states (2560 wide) of its valid tokens
only, under Qwen3's chat template (``core/families/llm_prompt.py``). Turbo is the step-distilled
model (Decoupled-DMD): 9 scheduler steps (8 forwards), no classifier-free guidance, flow shift 3.0;
Base (Tongyi-MAI/Z-Image) is the undistilled one, sampled with CFG in ~50 steps at flow shift 6.0,
and the one to train LoRAs on (docs/families/zimage.md: training on Turbo needs a de-distill
adapter merged in).
No torch import here; the runtime is ``zimage/runtime.py``.
"""

from __future__ import annotations

from typing import Any

from core.families.flow_mmdit import BUCKET_STEP, METHODS, OBJECTIVES, VAE_16
from core.families.llm_prompt import LLM_HIGH_PRECISION, LlmPrompt, chatml
from core.families.spec import FamilySpec, LrDefault, Recognition, TextEncoder, Variant

TRANSFORMER: dict[str, Any] = {
    "all_f_patch_size": [1],
    "all_patch_size": [2],
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560,
    "dim": 3840,
    "in_channels": 16,
    "n_heads": 30,
    "n_kv_heads": 30,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
}

#: Qwen3-4B (Qwen/Qwen3-4B ``config.json``), Z-Image's ``text_encoder`` as a ``Qwen3Model``.
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}

#: Z-Image-Turbo's scheduler config (Tongyi-MAI/Z-Image-Turbo ``scheduler/scheduler_config.json``):
#: ``FlowMatchEulerDiscreteScheduler`` with a fixed shift of 3.0, no resolution-dependent shift (the
#: μ ``ZImagePipeline`` computes is ignored without ``use_dynamic_shifting``). The trainer reads each
#: model's own scheduler config; this one is the planner's, the tiny model's and a Turbo file's.
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
#: Z-Image (Base)'s (Tongyi-MAI/Z-Image ``scheduler/scheduler_config.json``): the same scheduler with
#: shift 6.0, also fixed. A Base transformer file read over a Turbo folder (their VAE and text encoder
#: are the same files) trains and samples with this one (``runtime.ZImageRuntime.load``).
BASE_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 6.0, "use_dynamic_shifting": False}

#: What ``ZImagePipeline._encode_prompt`` (diffusers 0.42) does to a caption: Qwen3's chat template
#: with ``enable_thinking=True`` (no think block), 512 tokens, ``hidden_states[-2]``, the valid tokens only.
PROMPT = LlmPrompt(chatml(), (-2,), 512, source="diffusers 0.42 ZImagePipeline._encode_prompt")

#: Attention inside every block (noise refiner, context refiner, main layers): diffusers' names.
_ATTN = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
#: The SwiGLU feed-forwards.
_FF = ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
#: The blocks' modulations and the embedders and final layer outside the blocks.
_ALL = ("adaLN_modulation.0", "all_x_embedder.2-1", "cap_embedder.1", "t_embedder.mlp.0", "t_embedder.mlp.2", "all_final_layer.2-1.linear", "all_final_layer.2-1.adaLN_modulation.1")

#: ``lora_targets`` of the transformer (peft suffixes; ``settings.train_block_indices`` narrows the
#: main layers) and of Qwen3 (listed for completeness: Z-Image's text encoder is never trained).
LORA_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "denoiser": {"attn": _ATTN, "attn_ff": _ATTN + _FF, "all": _ATTN + _FF + _ALL},
    "text_encoder": {
        "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "attn_ff": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    },
}

QWEN3_ENCODER = TextEncoder(
    name="text_encoder",
    tokenizer="tokenizer",
    kind="qwen3",
    max_tokens=PROMPT.max_tokens,
    kohya_prefix="lora_te",
    original_prefix="",
    original_layout="qwen3",
    embedding_key="",
    embedding_file="",
    attention_mask=True,
    trainable=False,
)

#: Sampling defaults: Turbo as its model card and diffusers' example run it (9 steps = 8 forwards,
#: guidance 0 = no CFG); Base with CFG and a negative prompt as Tongyi's card runs it (its example:
#: 50 steps, guidance 4; the card recommends 28-50 steps, guidance 3-5).
#: The peers' advice for LoRAs on Turbo (docs/families/zimage.md has the sources).
TURBO_NOTE = (
    "Z-Image Turbo is step-distilled: a LoRA trained on it directly breaks the distillation within a few thousand steps "
    "(blurry, generic samples); train on Z-Image Base (Tongyi-MAI/Z-Image, whose LoRAs load on Turbo) or on Turbo with "
    "a de-distill adapter merged in (settings.merge_lora = ostris's zimage_turbo_training_adapter), and keep the run short"
)
TURBO = Variant("z-image-turbo", "zimage", "Z-Image Turbo", native_resolution=1024, sample_steps=9, guidance_scale=0.0, name_pattern=r"turbo", training_note=TURBO_NOTE)
BASE = Variant("z-image", "zimage", "Z-Image (Base)", native_resolution=1024, sample_steps=50, guidance_scale=4.0, scheduler=BASE_SCHEDULER, name_pattern=r"z[-_]?image")

#: The hub models of the variants (what a single transformer file's other parts come from when no folder is beside it).
HUB_MODELS = {TURBO.name: "Tongyi-MAI/Z-Image-Turbo", BASE.name: "Tongyi-MAI/Z-Image"}

#: Block swap streams the 30 main layers (forward order). The 2 noise- and 2 context-refiner
#: layers run first on separate streams (image, caption) whose backward order autograd does not
#: fix, and a swap of N < 30 blocks never reaches them: they stay on the GPU.
SWAP_BLOCKS: dict[str, str] = {"layers": "n_layers"}
#: What keeps the compute precision under a quantized base (musubi-tuner's Z-Image fp8 keeps the
#: modulation and norms out too): the patch, timestep and caption embedders, each block's
#: ``adaLN_modulation``, the final layer and every norm.
TRANSFORMER_HIGH_PRECISION = ("all_x_embedder.*", "t_embedder.*", "cap_embedder.*", "*adaLN_modulation*", "all_final_layer.*", "*norm*")

SPEC = FamilySpec(
    name="zimage",
    title="Z-Image",
    native_resolution=1024,
    latent_channels=16,
    denoiser="transformer",
    text_encoders=(QWEN3_ENCODER,),
    objective="flow",
    objectives=OBJECTIVES,
    methods=METHODS,
    lora_targets=LORA_TARGETS,
    configs={"transformer": TRANSFORMER, "vae": VAE_16, "text_encoder": QWEN3_4B},
    scheduler=SCHEDULER,
    component_classes={"transformer": "diffusers.ZImageTransformer2DModel", "vae": "diffusers.AutoencoderKL", "text_encoder": "transformers.Qwen3Model"},
    #: Transformer forward TFLOPs per image at 1024 px (4096 image + 512 caption tokens at most):
    #: 2 × 5.3 G block parameters × 4608 tokens + the refiners (2 × 0.35 G × 4096 and × 512) for the
    #: linear layers, plus 4 × 4608² × 3840 per layer × 30 and the refiners' attention
    #: (docs/families/zimage.md; attention is 10.3 of it); Qwen3-4B per caption at 512 tokens: 2 × 4.0 G × 512.
    denoiser_tflops=62.5,
    denoiser_attention_tflops=10.3,
    text_encoder_tflops=4.1,
    kohya_base_version="zimage",
    kohya_v_suffix="",
    kohya_v2=False,
    modelspec_architectures={"epsilon": "z-image-turbo", TURBO.name: "z-image-turbo", BASE.name: "z-image"},
    modelspec_implementation="https://github.com/Tongyi-MAI/Z-Image",
    pipeline_class="ZImagePipeline",
    swap_blocks=SWAP_BLOCKS,
    block_settings={"train_block_indices": "layers"},
    high_precision={"transformer": TRANSFORMER_HIGH_PRECISION, "text_encoder": LLM_HIGH_PRECISION},
    recognition=Recognition(
        pipeline_mark="ZImagePipeline",
        unet_marks={"_class_name": "ZImageTransformer2DModel", "cap_feat_dim": 2560},
        checkpoint_keys=("cap_pad_token", "x_pad_token"),
        hub_pattern=r"z-?image|zimage",
    ),
    # Full fine-tune: DiffSynth-Studio's Z-Image full training example (1e-5, constant);
    # the text encoder is never trained.
    full_weight_rates={"finetune": LrDefault(1e-5, 0.0, "constant_with_warmup", 100)},
    variants=(TURBO, BASE),
    pipeline_clip_skip=False,
    bucket_step=BUCKET_STEP,
    original_denoiser_only=True,
    samples_from_embeddings=True,
)
