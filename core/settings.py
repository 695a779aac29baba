"""The run.toml schema: every section, key, type, default and allowed value, defined once.

Recipes, the run config, ``--set`` overrides, the planner, the trainer and the TUI all read
their names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.families import FAMILIES

METHODS = ("lora", "dreambooth", "finetune", "textual_inversion")
PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "lion8bit", "adafactor", "prodigy", "schedulefree_adamw")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
LORA_TARGETS = ("attn", "attn_ff", "all")
LORA_TYPES = ("lora", "loha", "lokr")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
#: kohya's sample samplers (``--ss`` and ``samples.sampler``); ``default`` keeps the model's own scheduler.
SAMPLERS = (
    "default", "ddim", "pndm", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
    "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)
#: Optimizers whose learning rate is a rule of the optimizer, not of the method: Prodigy's lr
#: multiplies the step size it estimates itself (its authors and kohya use 1.0).
OPTIMIZER_LEARNING_RATES: dict[str, float] = {"prodigy": 1.0}
#: Optimizers that keep their own schedule (schedule-free): the LR schedule is constant, the
#: warm-up is the optimizer's, and train()/eval() switch its weights around samples and saves.
SCHEDULE_FREE_OPTIMIZERS = ("schedulefree_adamw",)
ATTENTION = ("sdpa", "eager")
BACKENDS = ("ddp", "deepspeed", "fsdp")
PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")


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
        return result


#: Accelerate runs fp16 autocast and loss scaling on GPUs only (it refuses fp16 on the CPU), so
#: the launcher and the trainer refuse an fp16 run that would train on the CPU with this sentence.
FP16_NEEDS_A_GPU = (
    'settings.mixed_precision = "fp16" needs a GPU (accelerate has no fp16 autocast on the CPU); '
    'set mixed_precision to "bf16" or "no" to train on the CPU'
)

def _s(key: str, typ: type, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(key, typ, default, help, **kw)


#: The trainer options a recipe sets (run.toml's [settings] section).
SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        _s("recipe", str, "", "name of the recipe these settings started from"),
        _s("mixed_precision", str, "bf16", "autocast precision (fp16 uses loss scaling)", choices=PRECISIONS),
        _s("full_bf16", bool, False, "keep the trained weights themselves in bf16 (no fp32 master copy)"),
        _s("gradient_checkpointing", bool, True, "recompute activations in backward to save memory"),
        _s("optimizer", str, "adamw8bit", "optimizer", choices=OPTIMIZERS),
        _s("fused_backward_pass", bool, False, "step the optimizer inside backward, one parameter at a time"),
        _s("cache_latents", bool, True, "encode images with the VAE once, before training"),
        _s("cache_latents_to_disk", bool, False, "keep the latent cache on disk instead of in memory"),
        _s("cache_text_encoder_outputs", bool, True, "encode captions once (only when the text encoder is frozen)"),
        _s("train_text_encoder", bool, False, "also train the text encoder(s)"),
        _s("batch_size", int, 1, "images per GPU per step", minimum=1, maximum=256),
        _s("resolution", int, 512, "training resolution in pixels (the bucket area is its square)", minimum=64, maximum=4096),
        _s("enable_bucket", bool, True, "aspect-ratio bucketing"),
        _s("min_bucket_reso", int, 256, "smallest bucket side in pixels", minimum=64),
        _s("max_bucket_reso", int, 2048, "largest bucket side in pixels", minimum=64),
        _s("bucket_reso_steps", int, 64, "bucket sides are multiples of this", minimum=8),
        _s("random_crop", bool, False, "random instead of center crop"),
        _s("flip_aug", bool, False, "random horizontal flip"),
        _s("shuffle_caption", bool, False, "shuffle comma-separated caption tags"),
        _s("keep_tokens", int, 0, "leading caption tags kept in place when shuffling", minimum=0),
        _s("caption_dropout_rate", float, 0.0, "probability of training on an empty caption", minimum=0.0, maximum=1.0),
        _s("caption_tag_dropout_rate", float, 0.0, "probability of dropping each comma-separated tag (keep_tokens stay)", minimum=0.0, maximum=1.0),
        _s("caption_prefix", str, "", "text put before every caption"),
        _s("caption_suffix", str, "", "text put after every caption"),
        _s("clip_skip", int, 1, "text-encoder layer counted from the end (2 = penultimate, as kohya)", minimum=1, maximum=12),
        _s("bucket_no_upscale", bool, False, "never enlarge an image: small images get a bucket of their own size (kohya)"),
        _s("lora_type", str, "lora", "lora, loha (Hadamard product) or lokr (Kronecker product), through peft", choices=LORA_TYPES),
        _s("lora_rank", int, 16, "LoRA rank", minimum=1, maximum=1024),
        _s("lora_alpha", float, 16.0, "LoRA alpha (scale = alpha / rank)", minimum=0.0),
        _s("lora_dropout", float, 0.0, "LoRA dropout", minimum=0.0, maximum=1.0),
        _s("lora_targets", str, "attn", "attn, attn_ff (adds feed-forward and the text encoders' MLP) or all (adds convs, LoCon)", choices=LORA_TARGETS),
        _s("init_lora", str, "", "a LoRA file (kohya or diffusers format) the run starts from"),
        _s("use_dora", bool, False, "weight-decomposed LoRA (DoRA)"),
        _s("ti_num_vectors", int, 4, "vectors per textual-inversion token", minimum=1, maximum=75),
        _s("ti_init_word", str, "", "word whose embedding initialises the new token"),
        _s("prior_loss_weight", float, 1.0, "weight of the class-image loss (prior preservation)", minimum=0.0),
        _s("class_images_per_instance", int, 200, "class images wanted per instance image", minimum=0),
        _s("generate_class_images", bool, True, "DreamBooth: generate the missing class images from method.class_prompt (false: use the class folder's only)"),
        _s("attention", str, "sdpa", "attention implementation", choices=ATTENTION),
        _s("channels_last", bool, True, "channels-last memory format for the UNet"),
        _s("min_snr_gamma", float, 0.0, "min-SNR loss weighting gamma (0 = off)", minimum=0.0),
        _s("noise_offset", float, 0.0, "noise offset", minimum=0.0),
        _s("ema", bool, False, "keep an exponential moving average of the trained weights"),
        _s("ema_decay", float, 0.9999, "EMA decay", minimum=0.0, maximum=1.0),
        _s("max_grad_norm", float, 1.0, "gradient clipping norm (0 = off)", minimum=0.0),
        _s("save_precision", str, "fp16", "dtype of the saved LoRA, embedding and single-file model", choices=SAVE_PRECISIONS),
        _s("torch_compile", bool, False, "torch.compile the UNet"),
        _s("dataloader_workers", int, 2, "data loader worker processes", minimum=0),
    )
}

#: Every section of run.toml with its keys. [dataset] subsets and [samples] prompts are lists.
SCHEMA: dict[str, dict[str, Setting]] = {
    "": {
        "name": _s("name", str, "run", "run name (also the output file name)"),
    },
    "model": {
        "path": _s("path", str, "", "diffusers folder, single .safetensors/.ckpt file, or hub id"),
        "family": _s("family", str, "sd1", "model family", choices=FAMILIES),
        "prediction_type": _s("prediction_type", str, "auto", "noise prediction target", choices=PREDICTION_TYPES),
        "vae": _s("vae", str, "", "optional separate VAE (folder or file)"),
    },
    "dataset": {
        "caption_extension": _s("caption_extension", str, ".txt", "caption file extension tried first"),
    },
    "method": {
        "kind": _s("kind", str, "lora", "training method", choices=METHODS),
        "class_prompt": _s("class_prompt", str, "", "prompt for generated class images (DreamBooth)"),
        "placeholder_token": _s("placeholder_token", str, "", "new token for textual inversion"),
    },
    "settings": SETTINGS,
    "schedule": {
        "epochs": _s("epochs", int, 10, "epochs (epoch mode)", minimum=0),
        "max_steps": _s("max_steps", int, 0, "optimizer steps (step mode when > 0)", minimum=0),
        "gradient_accumulation": _s("gradient_accumulation", int, 1, "micro-batches per optimizer step", minimum=1),
        "learning_rate": _s("learning_rate", float, 1e-4, "peak learning rate (UNet); defaults per method", minimum=0.0),
        "text_encoder_lr": _s("text_encoder_lr", float, 0.0, "text encoders' rate when trained (0 = learning_rate)", minimum=0.0),
        "lr_scheduler": _s("lr_scheduler", str, "constant_with_warmup", "LR schedule", choices=LR_SCHEDULERS),
        "lr_warmup_steps": _s("lr_warmup_steps", int, 0, "warm-up in optimizer steps", minimum=0),
        "lr_scheduler_num_cycles": _s("lr_scheduler_num_cycles", int, 1, "restarts of cosine_with_restarts", minimum=1),
        "lr_scheduler_power": _s("lr_scheduler_power", float, 1.0, "power of the polynomial schedule", minimum=0.0),
        "save_every_epochs": _s("save_every_epochs", int, 1, "checkpoint every N epochs (0 = off)", minimum=0),
        "save_every_steps": _s("save_every_steps", int, 0, "checkpoint every N steps (0 = off)", minimum=0),
        "keep_checkpoints": _s("keep_checkpoints", int, 2, "checkpoints kept", minimum=1),
        "sample_every_steps": _s("sample_every_steps", int, 100, "samples every N steps (0 = off)", minimum=0),
        "sample_every_epochs": _s("sample_every_epochs", int, 0, "samples every N epochs (0 = off)", minimum=0),
        "sample_at_start": _s("sample_at_start", bool, False, "render samples before the first step"),
        "seed": _s("seed", int, 42, "random seed", minimum=0),
    },
    "samples": {
        "prompts": _s("prompts", list, [], "prompts in kohya syntax (--n --w --h --d --l --s --ss)"),
        "sampler": _s("sampler", str, "default", "sampler of prompts without --ss (kohya's sample_sampler)", choices=SAMPLERS),
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
        warnings.append(
            f"{optimizer} multiplies its own step-size estimate by schedule.learning_rate; {learning_rate:g} makes it learn almost nothing, "
            f"its rule is {rule:g}"
        )
    if optimizer in SCHEDULE_FREE_OPTIMIZERS and lr_scheduler not in ("constant", "constant_with_warmup"):
        warnings.append(f"{optimizer} keeps its own schedule, so lr_scheduler={lr_scheduler} is not used (the rate stays constant after the warm-up)")
    return warnings


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
                raise UserError(f"unknown setting {_dotted(section, key)}; known: {', '.join(keys)}")
            try:
                merged[key] = setting.check(value)
            except ValueError as exc:
                raise UserError(f"{_dotted(section, key)} = {value!r} is not allowed: {exc}") from None
    return merged


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key
