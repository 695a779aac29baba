"""The run.toml schema: every section, key, type, default and allowed value, defined once.

Recipes, the run config, ``--set`` overrides, the planner, the trainer and the TUI all read
their names from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.families import FAMILIES, spec
from core.families.flow_mmdit import FLOW_SAMPLINGS, FLOW_SETTINGS, FLOW_WEIGHTINGS, TRAINING_GUIDANCE
from core.families.flow_mmdit.blocks import indices_problem, selects_blocks
from core.families.spec import OBJECTIVES

METHODS = ("lora", "dreambooth", "finetune", "textual_inversion")
#: The methods that train the full weights (of the denoiser, and of the text encoders when asked).
FULL_METHODS = ("dreambooth", "finetune")
PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "lion", "lion8bit", "adafactor", "prodigy", "schedulefree_adamw")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
LORA_TARGETS = ("attn", "attn_ff", "all")
LORA_TYPES = ("lora", "loha", "lokr")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
#: kohya's sample samplers (``--ss`` and ``samples.sampler``); ``default`` keeps the model's own scheduler.
SAMPLERS = (
    "default",
    "ddim",
    "pndm",
    "euler",
    "euler_a",
    "heun",
    "dpm_2",
    "dpm_2_a",
    "dpmsolver",
    "dpmsolver++",
    "dpmsingle",
    "k_euler",
    "k_euler_a",
    "k_dpm_2",
    "k_dpm_2_a",
)
#: Optimizers whose learning rate is a rule of the optimizer, not of the method: Prodigy's lr
#: multiplies the step size it estimates itself (its authors and kohya use 1.0).
OPTIMIZER_LEARNING_RATES: dict[str, float] = {"prodigy": 1.0}
#: Optimizers that keep their own schedule (schedule-free): the LR schedule is constant, the
#: warm-up is the optimizer's, and train()/eval() switch its weights around samples and saves.
SCHEDULE_FREE_OPTIMIZERS = ("schedulefree_adamw",)
ATTENTION = ("sdpa", "eager")
BACKENDS = ("ddp", "deepspeed", "fsdp")
#: The precisions of a frozen base component (``settings.base_precision``, ``text_encoder_precision``):
#: ``auto`` keeps the mixed-precision dtype; ``fp8`` stores e4m3 and computes in that dtype;
#: ``fp8_scaled`` adds a scale per output row; ``int8`` is weight-only int8; ``nf4`` bitsandbytes' 4-bit.
BASE_PRECISIONS = ("auto", "bf16", "fp16", "fp8", "fp8_scaled", "int8", "nf4")
#: The base precisions that quantize (a full fine-tune cannot train such weights).
QUANTIZED_PRECISIONS = ("fp8", "fp8_scaled", "int8", "nf4")
#: What the trainer (and the plan) say of an fp8 base: weight-only, so a GPU without fp8 matmuls
#: (before Ada, compute capability below 8.9) runs it as fast as one with them.
FP8_WEIGHT_ONLY_NOTE = "fp8 weights are stored in 1 byte and upcast for each matmul, so they work on any GPU (no fp8 matmuls needed); the speed is that of the compute dtype"
#: [model] prediction_type: read from the model (auto), or one of the objectives its family trains with.
PREDICTION_TYPES = ("auto", *OBJECTIVES)


@dataclass(frozen=True)
class Setting:
    """One key of run.toml: its type, default, allowed values and a one-line help."""

    key: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: An exclusive upper bound (the value must stay below it).
    below: float | None = None

    def check(self, value: Any) -> Any:
        """Return ``value`` coerced to this setting's type, or raise ValueError with the rule."""
        if self.type is bool:
            if isinstance(value, bool):
                result: Any = value
            elif isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                result = value.lower() in ("true", "1", "yes", "on")
            else:
                raise ValueError(f"{self.key} must be true or false")
        elif self.type is int:
            if isinstance(value, bool):
                raise ValueError(f"{self.key} must be a whole number")
            try:
                result = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.key} must be a whole number") from None
            if isinstance(value, float) and value != result:
                raise ValueError(f"{self.key} must be a whole number")
        elif self.type is float:
            if isinstance(value, bool):
                raise ValueError(f"{self.key} must be a number")
            try:
                result = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{self.key} must be a number") from None
            if not math.isfinite(result):
                raise ValueError(f"{self.key} must be a finite number, not {result}")
        elif self.type is list:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{self.key} must be a list")
            result = [str(v) for v in value]
        else:
            result = str(value)
        if self.choices is not None and result not in self.choices:
            raise ValueError(f"{self.key} must be one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and result < self.minimum:
            raise ValueError(f"{self.key} must be at least {self.minimum:g}")
        if self.maximum is not None and result > self.maximum:
            raise ValueError(f"{self.key} must be at most {self.maximum:g}")
        if self.below is not None and result >= self.below:
            raise ValueError(f"{self.key} must be below {self.below:g}")
        return result


#: Accelerate runs fp16 autocast and loss scaling on GPUs only (it refuses fp16 on the CPU), so
#: the launcher and the trainer refuse an fp16 run that would train on the CPU with this sentence.
FP16_NEEDS_A_GPU = 'settings.mixed_precision = "fp16" needs a GPU (accelerate has no fp16 autocast on the CPU); set mixed_precision to "bf16" or "no" to train on the CPU'


def _s(key: str, typ: type, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(key, typ, default, help, **kw)


#: The trainer options a recipe sets (run.toml's [settings] section).
SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        _s("recipe", str, "", "name of the recipe these settings started from"),
        _s("mixed_precision", str, "bf16", "precision of the computations: bf16 on newer GPUs, fp16 on older ones (uses loss scaling), no = fp32 (slow)", choices=PRECISIONS),
        _s("full_bf16", bool, False, "keep the trained weights themselves in bf16 (no fp32 master copy)"),
        _s("gradient_checkpointing", bool, True, "recompute activations in backward to save memory"),
        _s(
            "optimizer",
            str,
            "adamw8bit",
            "adamw8bit (8-bit states, the usual choice), adamw (more memory), lion8bit, lion (32-bit states), adafactor (least memory), prodigy (finds its own step size: learning rate 1.0) or schedulefree_adamw (needs no LR schedule)",
            choices=OPTIMIZERS,
        ),
        _s("fused_backward_pass", bool, False, "step the optimizer inside backward, one parameter at a time: saves the memory of the full gradients"),
        _s("cache_latents", bool, True, "encode images with the VAE once, before training"),
        _s("cache_latents_to_disk", bool, False, "keep the latent cache on disk instead of in memory, for datasets that do not fit in RAM"),
        _s("cache_text_encoder_outputs", bool, True, "encode captions once (only when the text encoder is frozen)"),
        _s(
            "cache_text_encoder_outputs_to_disk",
            bool,
            False,
            "keep the text-encoder output cache in files read per batch instead of in memory on every process, for many or long captions",
        ),
        _s("train_text_encoder", bool, False, "also train the text encoder(s)"),
        _s("batch_size", int, 1, "images per GPU per step", minimum=1, maximum=256),
        _s("resolution", int, 512, "training resolution in pixels (the bucket area is its square)", minimum=64, maximum=4096),
        _s("enable_bucket", bool, True, "group images by aspect ratio so each trains at about the resolution's area without a square crop"),
        _s("min_bucket_reso", int, 256, "smallest bucket side in pixels (at most the resolution)", minimum=64),
        _s("max_bucket_reso", int, 2048, "largest bucket side in pixels: very wide or tall images are cropped to fit it", minimum=64),
        _s("bucket_reso_steps", int, 64, "bucket sides are multiples of this many pixels (64 as kohya; smaller crops less)", minimum=8),
        _s("random_crop", bool, False, "crop at a random place instead of the centre when an image does not fit its bucket"),
        _s("flip_aug", bool, False, "mirror images left-right at random; more variety, but not for text or one-sided subjects"),
        _s("shuffle_caption", bool, False, "shuffle the comma-separated tags of each caption every time it is seen (keep_tokens stay first)"),
        _s("keep_tokens", int, 0, "leading caption tags kept in place when shuffling", minimum=0),
        _s("caption_dropout_rate", float, 0.0, "probability of training on an empty caption", minimum=0.0, maximum=1.0),
        _s("caption_tag_dropout_rate", float, 0.0, "probability of dropping each comma-separated tag (keep_tokens stay)", minimum=0.0, maximum=1.0),
        _s("caption_prefix", str, "", "text put before every caption"),
        _s("caption_suffix", str, "", "text put after every caption"),
        _s("clip_skip", int, 1, "text-encoder layer counted from the end (2 = penultimate, as kohya)", minimum=1, maximum=12),
        _s("bucket_no_upscale", bool, False, "never enlarge an image: small images get a bucket of their own size (kohya)"),
        _s("lora_type", str, "lora", "lora, loha (Hadamard product) or lokr (Kronecker product), through peft", choices=LORA_TYPES),
        _s("lora_rank", int, 16, "size of the LoRA matrices: higher learns more detail, gives a bigger file and needs more memory (16-32 usual)", minimum=1, maximum=1024),
        _s("lora_alpha", float, 16.0, "LoRA alpha (scale = alpha / rank)", minimum=0.0),
        _s("lora_dropout", float, 0.0, "share of LoRA activations dropped in training, against overfitting (0 = off, 0.1 typical)", minimum=0.0, maximum=1.0),
        _s("lokr_factor", int, -1, "LoKr's Kronecker factor: the split of each weight's sides (-1 = as square as possible)", minimum=-1),
        _s("conv_rank", int, 0, "rank of the conv layers that lora_targets = all adds (0 = lora_rank)", minimum=0, maximum=1024),
        _s("conv_alpha", float, 0.0, "alpha of those conv layers (0 = lora_alpha)", minimum=0.0),
        _s("lora_targets", str, "attn", "attn, attn_ff (adds feed-forward and the text encoders' MLP) or all (adds convs, LoCon)", choices=LORA_TARGETS),
        _s(
            "train_block_indices",
            str,
            "",
            "transformer families with one block list (SD 3.5's joint blocks: 24 in Medium, 38 in Large; Z-Image's 30 layers): the blocks LoRA adapts, e.g. 0-9,20 (empty or all = every block, none = Z-Image's refiners only; sd-scripts' SD3 name)",
        ),
        _s("init_lora", str, "", "a LoRA file (kohya or diffusers format) the run starts from"),
        _s("merge_lora", str, "", "a LoRA file fused into the base weights before training, e.g. Z-Image Turbo's de-distill adapter (empty = none)"),
        _s("use_dora", bool, False, "weight-decomposed LoRA (DoRA): learns magnitude and direction apart; a little better, a little slower"),
        _s("ti_num_vectors", int, 4, "embedding vectors of the new word: more learns more, but the word takes more of the prompt's 75 tokens", minimum=1, maximum=75),
        _s("ti_init_word", str, "", "word whose embedding initialises the new token"),
        _s("prior_loss_weight", float, 1.0, "weight of the class-image loss (prior preservation)", minimum=0.0),
        _s("class_images_per_instance", int, 200, "class images wanted per instance image; the trainer generates what the class folder lacks", minimum=0),
        _s("generate_class_images", bool, True, "DreamBooth: generate the missing class images from method.class_prompt (false: use the class folder's only)"),
        _s("attention", str, "sdpa", "attention kernel: sdpa (PyTorch's fused one, fast and lean) or eager (plain, for debugging)", choices=ATTENTION),
        _s("channels_last", bool, True, "keep the UNet's activations channels-last: faster convolutions on recent NVIDIA GPUs"),
        _s("min_snr_gamma", float, 0.0, "min-SNR loss weighting: evens out the loss over noise levels, converges faster (0 = off, 5 typical)", minimum=0.0),
        _s(
            "flow_sampling",
            str,
            FLOW_SETTINGS["flow_sampling"],
            "flow-matching families: how noise levels are drawn (logit_normal = sd-scripts' sigmoid, uniform, or SD3's mode)",
            choices=FLOW_SAMPLINGS,
        ),
        _s(
            "flow_shift",
            float,
            FLOW_SETTINGS["flow_shift"],
            "flow-matching families: shift of the noise levels towards noise (0 = the model's own: FLUX.1-dev's by resolution, SD3's 3.0)",
            minimum=0.0,
        ),
        _s(
            "flow_weighting",
            str,
            FLOW_SETTINGS["flow_weighting"],
            "flow-matching families: loss weighting over noise levels (none, sigma_sqrt or cosmap as SD3's trainers)",
            choices=FLOW_WEIGHTINGS,
        ),
        _s("logit_mean", float, FLOW_SETTINGS["logit_mean"], "flow_sampling = logit_normal: mean of the normal behind the noise levels (0 = centred)"),
        _s("logit_std", float, FLOW_SETTINGS["logit_std"], "flow_sampling = logit_normal: spread of the normal behind the noise levels", minimum=0.01),
        _s("mode_scale", float, FLOW_SETTINGS["mode_scale"], "flow_sampling = mode: SD3's mode density scale", minimum=0.0),
        _s("train_double_block_indices", str, "", "FLUX.1/Chroma LoRA: the double blocks to train, e.g. 0-9,15 (empty or all = every block, none = none; sd-scripts' name)"),
        _s("train_single_block_indices", str, "", "FLUX.1/Chroma LoRA: the single blocks to train, e.g. 0-19 (empty or all = every block, none = none; sd-scripts' name)"),
        _s("guidance_scale", float, TRAINING_GUIDANCE, "FLUX.1-dev's embedded guidance while training (1.0 as sd-scripts and ai-toolkit; samples use their own --l)", minimum=0.0),
        _s("noise_offset", float, 0.0, "offset added to the noise so the model learns very dark and very bright images (0 = off, 0.05-0.1 typical)", minimum=0.0),
        _s("ema", bool, False, "keep an exponential moving average of the trained weights"),
        _s("ema_decay", float, 0.9999, "how slowly the moving average follows the weights (0.9999 = slowly; lower it for short runs)", minimum=0.0, maximum=1.0),
        _s("max_grad_norm", float, 1.0, "clip gradients to this norm to keep steps stable (0 = off, 1.0 usual)", minimum=0.0),
        _s("weight_decay", float, 0.01, "optimizer weight decay (decoupled, as AdamW; Adafactor has none)", minimum=0.0),
        _s("beta1", float, 0.0, "optimizer's first beta (0 = its default: 0.9)", minimum=0.0, maximum=0.9999),
        _s("beta2", float, 0.0, "optimizer's second beta (0 = its default: 0.999, Lion 0.99)", minimum=0.0, maximum=0.9999),
        _s("prodigy_d_coef", float, 1.0, "Prodigy's d_coef: scales its step-size estimate (below 1 learns more gently)", minimum=0.0),
        _s("prodigy_safeguard_warmup", bool, True, "Prodigy's safeguard_warmup: keeps the estimate from jumping during the LR warm-up"),
        _s("output_name", str, "", "file name of the saved outputs, without extension (empty = the run name)"),
        _s("output_dir", str, "", "folder the outputs are saved to (empty = output/ in the run folder)"),
        _s("save_precision", str, "fp16", "dtype of the saved LoRA, embedding and single-file model", choices=SAVE_PRECISIONS),
        _s(
            "base_precision",
            str,
            "auto",
            "storage of the frozen denoiser: auto (the mixed_precision dtype), bf16, fp16, fp8 (e4m3, half of bf16), fp8_scaled (fp8 with a scale per row), int8, nf4 (4-bit, a quarter); LoRA trains on top",
            choices=BASE_PRECISIONS,
        ),
        _s("text_encoder_precision", str, "auto", "storage of the frozen text encoders: the same choices as base_precision", choices=BASE_PRECISIONS),
        _s("blocks_to_swap", int, 0, "denoiser blocks kept in CPU RAM and streamed to the GPU on their turn: less VRAM, slower steps (0 = off)", minimum=0),
        _s("torch_compile", bool, False, "compile the UNet with torch.compile: faster steps after a slow first one"),
        _s("dataloader_workers", int, 2, "processes that load images in the background (0 = in the training process)", minimum=0),
        _s("alpha_mask", bool, False, "weight the loss by each image's alpha channel: transparent parts do not train (as sd-scripts)"),
    )
}

#: The [settings] keys a recipe sets: how the run spends memory and time. Every other key is the
#: user's choice (the method's own, such as LoRA type, rank and targets, and the data's, such as
#: clip skip and caption handling): picking a recipe keeps it.
RECIPE_SETTINGS = (
    "mixed_precision",
    "full_bf16",
    "gradient_checkpointing",
    "optimizer",
    "fused_backward_pass",
    "cache_latents",
    "cache_latents_to_disk",
    "cache_text_encoder_outputs",
    "cache_text_encoder_outputs_to_disk",
    "train_text_encoder",
    "batch_size",
    "resolution",
    "attention",
    "channels_last",
    "torch_compile",
    "dataloader_workers",
    "base_precision",
    "text_encoder_precision",
    "blocks_to_swap",
)

#: Every section of run.toml with its keys. [dataset] subsets and [samples] prompts are lists.
SCHEMA: dict[str, dict[str, Setting]] = {
    "": {
        "name": _s("name", str, "run", "run name (also the output file name)"),
    },
    "model": {
        "path": _s("path", str, "", "diffusers folder, single .safetensors/.ckpt file, or hub id"),
        "family": _s("family", str, "sd1", "model family", choices=FAMILIES),
        "prediction_type": _s(
            "prediction_type",
            str,
            "auto",
            "what the model predicts: auto (read from the model), epsilon (the noise), v_prediction (SD2 768) or flow (the flow families)",
            choices=PREDICTION_TYPES,
        ),
        "vae": _s("vae", str, "", "optional separate VAE (folder or file; FLUX.1's ae.safetensors)"),
        "denoiser": _s("denoiser", str, "", "optional separate denoiser file in the original layout (flux1-dev.safetensors, fp8 ones too); model.path then only gives the rest"),
        "clip_l": _s("clip_l", str, "", "optional separate CLIP-L text encoder file or folder (clip_l.safetensors)"),
        "clip_g": _s("clip_g", str, "", "optional separate CLIP-G text encoder file or folder (clip_g.safetensors)"),
        "t5xxl": _s("t5xxl", str, "", "optional separate T5-XXL text encoder file or folder (t5xxl_fp16.safetensors)"),
        "qwen3": _s("qwen3", str, "", "optional separate Qwen3 text encoder file or folder (Z-Image's qwen_3_4b.safetensors, fp8 ones too)"),
        "config": _s("config", str, "", "diffusers folder describing a single file's architecture (offline loading); empty = a folder named like the file beside it"),
    },
    "dataset": {
        "caption_extension": _s("caption_extension", str, ".txt", "caption file extension tried first"),
        "mask_dir": _s("mask_dir", str, "", "folder of loss masks, one per image with the same stem (white = train, black = ignore); empty = none"),
    },
    "method": {
        "kind": _s("kind", str, "lora", "training method", choices=METHODS),
        "class_prompt": _s("class_prompt", str, "", "prompt for the class images the trainer generates, e.g. 'a photo of a dog' (DreamBooth)"),
        "placeholder_token": _s("placeholder_token", str, "", "the new word textual inversion learns, e.g. <sks>; write it in the captions and prompts"),
    },
    "settings": SETTINGS,
    "schedule": {
        "epochs": _s("epochs", int, 10, "passes over the dataset, each image × its repeats once per pass (epoch mode)", minimum=0),
        "max_steps": _s("max_steps", int, 0, "optimizer steps of the run; above 0 it switches to step mode and epochs are ignored", minimum=0),
        "gradient_accumulation": _s("gradient_accumulation", int, 1, "micro-batches added up per optimizer step: a larger effective batch without more memory", minimum=1),
        "learning_rate": _s("learning_rate", float, 1e-4, "peak learning rate (UNet); defaults per method", minimum=0.0),
        "text_encoder_lr": _s("text_encoder_lr", float, 0.0, "text encoders' rate when trained (0 = learning_rate)", minimum=0.0),
        "lr_scheduler": _s(
            "lr_scheduler",
            str,
            "constant_with_warmup",
            "how the learning rate changes over the run: constant, after a warm-up, linear or cosine decay, cosine with restarts, polynomial",
            choices=LR_SCHEDULERS,
        ),
        "lr_warmup_steps": _s("lr_warmup_steps", int, 0, "optimizer steps over which the learning rate rises from 0 to its peak", minimum=0),
        "lr_scheduler_num_cycles": _s("lr_scheduler_num_cycles", int, 1, "how many times cosine_with_restarts starts again from the peak rate", minimum=1),
        "lr_scheduler_power": _s("lr_scheduler_power", float, 1.0, "curve of the polynomial schedule (1 = linear decay)", minimum=0.0),
        "save_every_epochs": _s("save_every_epochs", int, 1, "checkpoint every N epochs (0 = off)", minimum=0),
        "save_every_steps": _s("save_every_steps", int, 0, "checkpoint every N steps (0 = off)", minimum=0),
        "keep_checkpoints": _s("keep_checkpoints", int, 2, "how many of the newest checkpoints stay on disk; older ones are deleted", minimum=1),
        "sample_every_steps": _s("sample_every_steps", int, 100, "samples every N steps (0 = off)", minimum=0),
        "sample_every_epochs": _s("sample_every_epochs", int, 0, "samples every N epochs (0 = off)", minimum=0),
        "sample_at_start": _s("sample_at_start", bool, False, "render samples before the first step"),
        "seed": _s("seed", int, 42, "random seed: the same seed and settings train the same run again", minimum=0),
        "price_per_gpu_hour": _s("price_per_gpu_hour", float, 0.0, "price of one GPU-hour for the plan's cost column (0 = no cost column)", minimum=0.0),
    },
    "samples": {
        "prompts": _s("prompts", list, [], "prompts in kohya syntax (--n --w --h --d --l --s --ss)"),
        "sampler": _s("sampler", str, "default", "sampler of prompts without --ss (kohya's sample_sampler)", choices=SAMPLERS),
    },
    "validation": {
        "split": _s("split", float, 0.0, "share of the training images held out for the validation loss, never trained on (0 = none, 0.05 typical)", minimum=0.0, below=0.5),
        "folder": _s("folder", str, "", "a folder of validation images of its own (instead of a split); empty = none"),
        "every_n_steps": _s("every_n_steps", int, 100, "validation loss every N optimizer steps", minimum=1),
    },
    "logging": {
        "tensorboard": _s("tensorboard", bool, True, "TensorBoard event files in <run>/tb/"),
        "wandb_project": _s("wandb_project", str, "", "Weights & Biases project (empty = off)"),
    },
    "distributed": {
        "num_processes": _s("num_processes", int, 1, "processes (GPUs) on each machine", minimum=1),
        "num_machines": _s("num_machines", int, 1, "machines", minimum=1),
        "machine_rank": _s("machine_rank", int, 0, "this machine's rank", minimum=0),
        "main_process_ip": _s("main_process_ip", str, "127.0.0.1", "address of machine rank 0"),
        "main_process_port": _s("main_process_port", int, 29500, "port of machine rank 0", minimum=0, maximum=65535),
        "gpu_ids": _s("gpu_ids", str, "all", "GPUs to use: all or a comma list"),
        "backend": _s("backend", str, "ddp", "ddp, deepspeed or fsdp", choices=BACKENDS),
        "zero_stage": _s("zero_stage", int, 2, "DeepSpeed ZeRO stage", choices=(1, 2, 3)),
        "offload": _s("offload", bool, False, "DeepSpeed CPU offload of optimizer state"),
    },
}

#: Keys of one [[dataset.subsets]] table.
SUBSET_KEYS: dict[str, Setting] = {
    s.key: s
    for s in (
        _s("path", str, "", "folder of images"),
        _s("repeats", int, 1, "times each image is seen per epoch", minimum=1),
        _s("token", str, "", "caption used when an image has no caption file"),
        _s("is_reg", bool, False, "regularisation / class images"),
    )
}


#: The caption options a subset may set for its own images (sd-scripts' per-subset caption options).
SUBSET_CAPTION_OPTIONS = ("caption_prefix", "caption_suffix", "shuffle_caption", "keep_tokens", "caption_dropout_rate", "caption_tag_dropout_rate")
#: Options a [[dataset.subsets]] table may set for its own images, as kohya's per-subset options;
#: a subset without one takes [settings] (caption_extension: [dataset]).
SUBSET_OPTIONS: dict[str, Setting] = {
    "caption_extension": SCHEMA["dataset"]["caption_extension"],
    **{key: SETTINGS[key] for key in ("flip_aug", *SUBSET_CAPTION_OPTIONS)},
}


def subset_settings(settings: Mapping[str, Any], subset: Mapping[str, Any]) -> dict[str, Any]:
    """The [settings] one subset trains with: ``settings`` with the subset's own options laid over."""
    return {**settings, **{k: v for k, v in subset.items() if k in SUBSET_OPTIONS and k in settings}}


def lookup(dotted: str) -> tuple[str, Setting]:
    """Find a ``section.key`` (a bare ``key`` means ``settings.key``); raise KeyError with the rule."""
    section, _, key = dotted.rpartition(".")
    if not section and key in SCHEMA[""]:
        return "", SCHEMA[""][key]
    section = section or "settings"
    if section not in SCHEMA or key not in SCHEMA[section]:
        known = ", ".join(sorted(f"{s}.{k}" if s else k for s, keys in SCHEMA.items() for k in keys))
        raise KeyError(f"unknown setting '{dotted}'; known settings: {known}")
    return section, SCHEMA[section][key]


def optimizer_learning_rate(optimizer: str) -> float | None:
    """The learning rate ``optimizer`` needs whatever the method (Prodigy: 1.0), or None."""
    return OPTIMIZER_LEARNING_RATES.get(optimizer)


def optimizer_rule_warnings(optimizer: str, learning_rate: float, lr_scheduler: str) -> list[str]:
    """Sentences for a schedule that does not follow the optimizer's rules (planner and trainer say the same)."""
    warnings = []
    rule = optimizer_learning_rate(optimizer)
    if rule is not None and learning_rate < rule / 10:
        warnings.append(f"{optimizer} multiplies its own step-size estimate by schedule.learning_rate; {learning_rate:g} makes it learn almost nothing, its rule is {rule:g}")
    if optimizer in SCHEDULE_FREE_OPTIMIZERS and lr_scheduler not in ("constant", "constant_with_warmup"):
        warnings.append(f"{optimizer} keeps its own schedule, so lr_scheduler={lr_scheduler} is not used (the rate stays constant after the warm-up)")
    return warnings


#: What to expect of an optimizer that is not obvious from its settings (planner notes, trainer events).
OPTIMIZER_NOTES: dict[str, str] = {
    "prodigy": (
        "prodigy estimates its own step size: it starts tiny (d0 = 1e-6 times the learning rate) and grows over the first "
        "tens to hundreds of steps, so the loss may stay flat at first; the dashboard and train.log show it as 'step d×lr'"
    ),
}


def optimizer_notes(optimizer: str) -> list[str]:
    """Sentences on what to expect of ``optimizer`` (Prodigy's growing step size), for the plan and the run."""
    return [OPTIMIZER_NOTES[optimizer]] if optimizer in OPTIMIZER_NOTES else []


def optimizer_betas(settings: Mapping[str, Any]) -> tuple[float, float] | None:
    """The (beta1, beta2) the run sets for its optimizer (a 0 keeps that beta's default: 0.9, and
    0.999, Lion 0.99), or None when it sets neither, so the optimizer keeps its own."""
    beta1, beta2 = float(settings["beta1"]), float(settings["beta2"])
    if not beta1 and not beta2:
        return None
    second = 0.99 if str(settings["optimizer"]).startswith("lion") else 0.999
    return (beta1 or 0.9, beta2 or second)


def bucket_problem(settings: Mapping[str, Any]) -> str | None:
    """The sentence for bucket sides that do not frame the resolution (sd-scripts refuses them too:
    with bucketing on, min_bucket_reso ≤ resolution ≤ max_bucket_reso), or None when they do."""
    if not settings.get("enable_bucket", True):
        return None
    resolution = int(settings["resolution"])
    low, high = int(settings["min_bucket_reso"]), int(settings["max_bucket_reso"])
    if low > resolution:
        return f"settings.min_bucket_reso = {low} is larger than settings.resolution = {resolution}; set min_bucket_reso to {resolution} or less"
    if high < resolution:
        return f"settings.max_bucket_reso = {high} is smaller than settings.resolution = {resolution}; set max_bucket_reso to {resolution} or more"
    return None


#: The block selection settings (sd-scripts' network argument names) -> the blocks they name, for the sentence
#: that refuses one on a family without them.
BLOCK_SETTINGS = {
    "train_double_block_indices": "FLUX.1-style blocks",
    "train_single_block_indices": "FLUX.1-style blocks",
    "train_block_indices": "transformer blocks (SD 3.5's joint blocks, Z-Image's layers)",
}


def block_problem(family: str, settings: Mapping[str, Any], model: str = "") -> str | None:
    """The sentence for a block selection the family cannot make, or None: a setting it does not take
    (``FamilySpec.block_settings``), a list that is not one, or a block past the depth of ``model``'s
    block list (``core.families.detect.block_depths``: its folder's config, its variant's, else the
    family's deepest variant's; the trainer checks the loaded model's own)."""
    from core.families.detect import block_depths

    found = spec(family)
    chosen = {key: str(settings.get(key, "") or "") for key in BLOCK_SETTINGS if selects_blocks(str(settings.get(key, "") or ""))}
    for key in chosen:
        if key not in found.block_settings:
            return f"settings.{key} selects {BLOCK_SETTINGS[key]} and the {family} family has none; remove it"
    depths = block_depths(model, family) if chosen else {}
    for key, text in chosen.items():
        problem = indices_problem(text, depths[found.block_settings[key]], key)
        if problem:
            return problem
    return None


def family_problem(family: str, prediction_type: str, settings: Mapping[str, Any], model: str = "") -> str | None:
    """The sentence for a value the model's family cannot take, or None: a ``prediction_type`` that is
    not one of the objectives it trains with (``flow`` only for flow families), a block selection the
    family cannot make (:func:`block_problem`, against ``model``'s depth where it is known), a bucket
    step that does not cut its latents (``FamilySpec.bucket_step``), more swapped blocks than
    ``model``'s variant has (the family's default variant when ``model`` names none)."""
    from core.families.detect import variant_of_model

    found = spec(family)
    if prediction_type != "auto" and prediction_type not in found.objectives:
        return f'[model] prediction_type = "{prediction_type}" is not an objective the {family} family trains with; set it to auto or to {" or ".join(found.objectives)}'
    selection = block_problem(family, settings, model)
    if selection:
        return selection
    step = int(settings.get("bucket_reso_steps", SETTINGS["bucket_reso_steps"].default))
    if step % found.bucket_step:
        return f"settings.bucket_reso_steps = {step} does not cut {family} latents into whole patches; set it to a multiple of {found.bucket_step} (e.g. 64)"
    variant = variant_of_model(model, family) if model else ""
    swap, blocks = int(settings.get("blocks_to_swap", 0)), found.swap_block_count(variant)
    if swap and not blocks:
        return f"settings.blocks_to_swap = {swap}, but the {family} family does not swap blocks; set blocks_to_swap to 0"
    if swap >= blocks > 0:
        return f"settings.blocks_to_swap = {swap}, but the {variant or family} denoiser has {blocks} blocks and at least one must stay on the GPU; set blocks_to_swap to {blocks - 1} or less"
    return None


def technique_problem(method: str, settings: Mapping[str, Any], backend: str = "ddp", processes: int = 1) -> str | None:
    """The sentence for a memory technique that cannot work with the method or the other settings, or None:
    a quantized weight a full fine-tune would train, block swap with ``torch_compile`` or FSDP, a
    full fine-tune's block swap (its swapped blocks step on the CPU: every optimizer here can,
    bitsandbytes' 8-bit ones too) under DeepSpeed or on more than one process (``processes``,
    every machine's), an explicit base dtype that is not the compute dtype."""
    full = method in FULL_METHODS
    base, te = str(settings.get("base_precision", "auto")), str(settings.get("text_encoder_precision", "auto"))
    if full and base in QUANTIZED_PRECISIONS:
        return f'settings.base_precision = "{base}" quantizes the denoiser, which a {method} trains whole; set base_precision to "auto" or train a LoRA (method.kind = "lora")'
    if full and te in QUANTIZED_PRECISIONS and settings.get("train_text_encoder"):
        return f'settings.text_encoder_precision = "{te}" quantizes the text encoders, which this {method} trains (train_text_encoder); set text_encoder_precision to "auto" or train_text_encoder to false'
    for key, value in (("base_precision", base), ("text_encoder_precision", te)):
        compute = str(settings.get("mixed_precision", "bf16"))
        if value in ("bf16", "fp16") and value != compute:
            return f'settings.{key} = "{value}" stores the weights in {value}, but they compute in mixed_precision "{compute}"; set {key} to "auto" or mixed_precision to "{value}"'
    swap = int(settings.get("blocks_to_swap", 0))
    if swap and settings.get("torch_compile"):
        return "settings.blocks_to_swap moves blocks in and out between their calls, which torch_compile cannot trace; set torch_compile to false or blocks_to_swap to 0"
    if swap and backend == "fsdp":
        return 'settings.blocks_to_swap and distributed.backend = "fsdp" both place the weights themselves; set blocks_to_swap to 0 or backend to "ddp"'
    if swap and full and backend == "deepspeed":
        return 'settings.blocks_to_swap keeps a full fine-tune\'s swapped weights and their optimizer state in host memory, where DeepSpeed cannot reach them; set blocks_to_swap to 0 or backend to "ddp" with one process'
    if swap and full and processes > 1:
        return f"settings.blocks_to_swap takes a {method}'s swapped gradients to host memory as backward makes them, before DDP could average them across the {processes} processes; set blocks_to_swap to 0 or train on one GPU (num_processes = 1)"
    return None


def _keys(section: str) -> dict[str, Setting]:
    return SUBSET_KEYS if section == "subset" else SCHEMA[section]


def defaults(section: str) -> dict[str, Any]:
    """The default values of a section (``subset``: of one [[dataset.subsets]] table)."""
    return {k: (list(s.default) if isinstance(s.default, list) else s.default) for k, s in _keys(section).items()}


def resolve(section: str, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """A section's values: its defaults overlaid by each layer in turn, every value checked.

    ``section`` is a run.toml section name or ``subset`` (one [[dataset.subsets]] table).
    The one merge of settings with their defaults (recipes, run.toml, ``--set``, the picker,
    the estimator, the planner, the scanner and the trainer all call it). A later layer wins;
    ``None`` layers are skipped. An unknown key or a bad value is a UserError naming it.
    """
    from core.errors import UserError

    keys = _keys(section)
    merged = defaults(section)
    for layer in layers:
        for key, value in (layer or {}).items():
            setting = keys.get(key)
            if setting is None:
                raise UserError(f"unknown setting {setting_name(section, key)}; known: {', '.join(keys)}")
            try:
                merged[key] = setting.check(value)
            except ValueError as exc:
                raise UserError(f"{setting_name(section, key)} = {value!r} is not allowed: {exc}") from None
    return merged


def setting_name(section: str, key: str) -> str:
    """A setting's name as run.toml and ``--set`` write it: ``settings.lora_rank`` (``name`` for a top-level key)."""
    return f"{section}.{key}" if section else key
