"""A run config as sd-scripts' training arguments: the script that fits, and its ``--config_file`` TOML.

sd-scripts reads ``--config_file`` by flattening every table into one set of argparse options,
so only the flags of the chosen script are written (each script has its own: ``train_network.py``
has ``network_dim`` and ``unet_lr``, ``train_db.py`` ``learning_rate_te``, ``fine_tune.py``
``train_text_encoder``, ``train_textual_inversion.py`` ``token_string`` …). What a run sets that
the script has no flag for is named in :attr:`TrainingArguments.unmapped`, for one sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import tomlkit

from core.errors import UserError
from core.families import planned_as
from core.families import spec as family_spec
from core.families.flow_mmdit.blocks import selects_blocks
from core.settings import BLOCK_SETTINGS, FULL_METHODS, optimizer_betas

_SD_SCRIPTS = {"lora": "train_network.py", "dreambooth": "train_db.py", "finetune": "fine_tune.py", "textual_inversion": "train_textual_inversion.py"}
_FLUX_SCRIPTS = {"lora": "flux_train_network.py", "finetune": "flux_train.py"}
#: The training script of each family and method. sd-scripts trains Chroma with FLUX.1's LoRA
#: script (``--model_type chroma``) but not its fine-tune (flux_train.py loads FLUX.1 only), and
#: has no script for FLUX.2, Qwen-Image or Z-Image (musubi-tuner trains those).
SCRIPTS: dict[str, dict[str, str]] = {
    "sd1": _SD_SCRIPTS,
    "sd2": _SD_SCRIPTS,
    "sdxl": {"lora": "sdxl_train_network.py", "dreambooth": "sdxl_train.py", "finetune": "sdxl_train.py", "textual_inversion": "sdxl_train_textual_inversion.py"},
    "sd35": {"lora": "sd3_train_network.py", "finetune": "sd3_train.py"},
    "flux": _FLUX_SCRIPTS,
    "chroma": {"lora": "flux_train_network.py"},
}
#: The DiT scripts' own LoRA modules (``networks.lora`` is the SD UNet's).
NETWORK_MODULES = {"flux_train_network.py": "networks.lora_flux", "sd3_train_network.py": "networks.lora_sd3"}
#: sd-scripts' ``--model_type`` of flux_train_network.py for the families it trains.
MODEL_TYPES = {"flux": "flux", "chroma": "chroma"}

#: Flags every training script has (library/train_util.py's model, dataset, training, optimizer and
#: logging arguments, custom_train_functions' min_snr_gamma, config_util's dataset_config).
_COMMON = frozenset(
    {
        "pretrained_model_name_or_path",
        "v2",
        "v_parameterization",
        "vae",
        "dataset_config",
        "optimizer_type",
        "optimizer_args",
        "learning_rate",
        "max_grad_norm",
        "lr_scheduler",
        "lr_warmup_steps",
        "lr_scheduler_num_cycles",
        "lr_scheduler_power",
        "output_dir",
        "output_name",
        "save_model_as",
        "save_precision",
        "save_every_n_epochs",
        "save_every_n_steps",
        "max_train_steps",
        "max_train_epochs",
        "max_data_loader_n_workers",
        "seed",
        "gradient_checkpointing",
        "gradient_accumulation_steps",
        "mixed_precision",
        "full_bf16",
        "clip_skip",
        "sdpa",
        "torch_compile",
        "cache_latents",
        "cache_latents_to_disk",
        "noise_offset",
        "min_snr_gamma",
        "logging_dir",
        "log_with",
        "log_tracker_name",
        "sample_prompts",
        "sample_every_n_steps",
        "sample_every_n_epochs",
        "sample_at_first",
        "sample_sampler",
    }
)
#: add_training_arguments(support_dreambooth=True) adds prior_loss_weight.
_DREAMBOOTH = frozenset({"prior_loss_weight"})
_NETWORK = frozenset(
    {
        "network_module",
        "network_dim",
        "network_alpha",
        "network_dropout",
        "network_args",
        "network_weights",
        "network_train_unet_only",
        "unet_lr",
        "text_encoder_lr",
    }
)
_SDXL = frozenset({"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"})
_TI = frozenset({"token_string", "init_word", "num_vectors_per_token"})
#: train_network.py's fp8 base: ``fp8_base`` stores the denoiser and the text encoders in fp8,
#: ``fp8_base_unet`` the denoiser only (every network script inherits them).
_FP8 = frozenset({"fp8_base", "fp8_base_unet"})
#: train_util.add_dit_training_arguments: the DiT scripts' block swap and text-encoder cache.
_DIT = frozenset({"blocks_to_swap"}) | _SDXL

#: The flags each script accepts (those sdtui can fill).
SCRIPT_FLAGS: dict[str, frozenset[str]] = {
    "train_network.py": _COMMON | _DREAMBOOTH | _NETWORK | _FP8,
    "sdxl_train_network.py": _COMMON | _DREAMBOOTH | _NETWORK | _SDXL | _FP8,
    "train_db.py": _COMMON | _DREAMBOOTH | {"learning_rate_te", "stop_text_encoder_training"},
    "fine_tune.py": _COMMON | {"train_text_encoder", "learning_rate_te"},
    "sdxl_train.py": _COMMON | _SDXL | {"train_text_encoder", "learning_rate_te1", "learning_rate_te2", "fused_backward_pass"},
    "train_textual_inversion.py": _COMMON | _DREAMBOOTH | _TI,
    "sdxl_train_textual_inversion.py": _COMMON | _DREAMBOOTH | _TI | _SDXL,
    "flux_train_network.py": _COMMON | _DREAMBOOTH | _NETWORK | _FP8 | _DIT | {"model_type", "apply_t5_attn_mask"},
    "sd3_train_network.py": _COMMON | _DREAMBOOTH | _NETWORK | _FP8 | _DIT,
    "flux_train.py": _COMMON | _DIT | {"fused_backward_pass"},
    "sd3_train.py": _COMMON | _DIT | {"train_text_encoder", "learning_rate_te1", "learning_rate_te2", "fused_backward_pass"},
}
#: What each DiT script reads besides ``pretrained_model_name_or_path`` (single files, which a
#: diffusers folder does not hold as such): the user fills them in.
COMPONENT_FLAGS = {
    "flux_train_network.py": ("clip_l", "t5xxl", "ae"),
    "flux_train.py": ("clip_l", "t5xxl", "ae"),
    "sd3_train_network.py": ("clip_l", "clip_g", "t5xxl"),
    "sd3_train.py": ("clip_l", "clip_g", "t5xxl"),
}

#: run.toml optimizer names as sd-scripts' --optimizer_type spells them.
OPTIMIZER_TYPES = {
    "adamw": "AdamW",
    "adamw8bit": "AdamW8bit",
    "lion": "Lion",
    "lion8bit": "Lion8bit",
    "adafactor": "Adafactor",
    "prodigy": "Prodigy",
    "schedulefree_adamw": "AdamWScheduleFree",
}
#: sd-scripts' --save_precision spelling of run.toml's save_precision.
SAVE_PRECISIONS = {"fp16": "fp16", "bf16": "bf16", "fp32": "float"}
#: The sd-scripts table each flag is written under (sd-scripts ignores the table names; kohya_ss uses these).
_TABLES = (
    ("model_arguments", ("pretrained_model_name_or_path", "model_type", "v2", "v_parameterization", "vae", "apply_t5_attn_mask", "fp8_base", "fp8_base_unet")),
    (
        "additional_network_arguments",
        ("network_module", "network_dim", "network_alpha", "network_dropout", "network_args", "network_weights", "network_train_unet_only", "unet_lr", "text_encoder_lr"),
    ),
    ("textual_inversion_arguments", ("token_string", "init_word", "num_vectors_per_token")),
    (
        "optimizer_arguments",
        (
            "optimizer_type",
            "optimizer_args",
            "learning_rate",
            "learning_rate_te",
            "learning_rate_te1",
            "learning_rate_te2",
            "train_text_encoder",
            "stop_text_encoder_training",
            "lr_scheduler",
            "lr_warmup_steps",
            "lr_scheduler_num_cycles",
            "lr_scheduler_power",
            "max_grad_norm",
        ),
    ),
    (
        "dataset_arguments",
        ("dataset_config", "cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "max_data_loader_n_workers", "prior_loss_weight"),
    ),
    (
        "training_arguments",
        (
            "output_dir",
            "output_name",
            "save_model_as",
            "save_precision",
            "save_every_n_epochs",
            "save_every_n_steps",
            "max_train_epochs",
            "max_train_steps",
            "gradient_accumulation_steps",
            "gradient_checkpointing",
            "mixed_precision",
            "full_bf16",
            "fused_backward_pass",
            "blocks_to_swap",
            "seed",
            "clip_skip",
            "sdpa",
            "torch_compile",
            "noise_offset",
            "min_snr_gamma",
        ),
    ),
    ("sample_prompt_arguments", ("sample_prompts", "sample_every_n_steps", "sample_every_n_epochs", "sample_at_first", "sample_sampler")),
    ("logging_arguments", ("logging_dir", "log_with", "log_tracker_name")),
)


class _Config(Protocol):
    name: str
    settings: dict[str, Any]
    method: str
    family: str
    model_path: str

    def section(self, section: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TrainingArguments:
    """The script to run, its flags (sd-scripts names, in write order) and what has no flag there."""

    script: str
    flags: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)
    #: What was exported only approximately or must be filled in (one sentence each).
    notes: list[str] = field(default_factory=list)

    def document(self, run_name: str) -> tomlkit.TOMLDocument:
        """The ``--config_file`` TOML: the flags grouped in kohya_ss's tables."""
        document = tomlkit.document()
        document.add(tomlkit.comment(f"sd-scripts arguments exported by sdtui from run '{run_name}'"))
        document.add(tomlkit.comment(f"accelerate launch {self.script} --config_file training_config.toml"))
        for name, keys in _TABLES:
            table = tomlkit.table()
            for key in keys:
                if key in self.flags:
                    table.add(key, self.flags[key])
            if table:
                document.add(name, table)
        return document


def script_for(method: str, family: str) -> str:
    """The sd-scripts training script of ``method`` on ``family``; a UserError naming what
    sd-scripts trains when it has none."""
    script = SCRIPTS.get(family, {}).get(method)
    if script is None:
        raise UserError(f"sd-scripts has no script that trains {family} with {method} (it has scripts for {', '.join(SCRIPTS)}); train this run with sdtui instead")
    return script


def training_arguments(config: _Config, paths: Mapping[str, str]) -> TrainingArguments:
    """sd-scripts' flags for ``config``; ``paths`` gives ``dataset_config``, ``sample_prompts``,
    ``output_dir`` and ``logging_dir`` as the exported folder holds them."""
    from core.kohya_memory import memory_flags

    script = script_for(config.method, config.family)
    wanted, unmapped = _wanted_flags(config, paths)
    memory = memory_flags(planned_as(config.family, str(config.model_path or "")), config.settings)
    wanted |= memory.flags
    if wanted.get("network_module", (None,))[0] == "networks.lora" and script in NETWORK_MODULES:
        wanted["network_module"] = (NETWORK_MODULES[script], "")
    unmapped += memory.unmapped
    notes = list(memory.notes)
    if script in COMPONENT_FLAGS:
        files = ", ".join(COMPONENT_FLAGS[script])
        notes.append(f"{script} reads the denoiser and {files} as single .safetensors files: point pretrained_model_name_or_path at the denoiser's file and add {files} to its --config_file")
    accepted = SCRIPT_FLAGS[script]
    flags: dict[str, Any] = {}
    for flag, (value, setting) in wanted.items():
        if value is None:
            continue
        if flag in accepted:
            flags[flag] = value
        elif setting:
            unmapped.append(setting)
    return TrainingArguments(script, flags, list(dict.fromkeys(unmapped)), notes)


def _wanted_flags(config: _Config, paths: Mapping[str, str]) -> tuple[dict[str, tuple[Any, str]], list[str]]:
    """Every flag the run has a value for, with the run.toml setting it comes from ('' when the flag
    only restates a default), and the settings no script has a flag for."""
    s, sched, model, method = config.settings, config.section("schedule"), config.section("model"), config.section("method")
    logging, samples = config.section("logging"), config.section("samples")
    lr, te_lr = float(sched["learning_rate"]), float(sched["text_encoder_lr"])
    flags: dict[str, tuple[Any, str]] = {
        "pretrained_model_name_or_path": (config.model_path, ""),
        "v2": (True if family_spec(config.family).kohya_v2 else None, ""),
        "v_parameterization": (True if model["prediction_type"] == "v_prediction" else None, "model.prediction_type"),
        "vae": (model["vae"] or None, "model.vae"),
        "dataset_config": (paths["dataset_config"], ""),
        "optimizer_type": (OPTIMIZER_TYPES[s["optimizer"]], ""),
        "optimizer_args": (optimizer_args(s, int(sched["lr_warmup_steps"])) or None, ""),
        "learning_rate": (lr, ""),
        "max_grad_norm": (float(s["max_grad_norm"]), ""),
        "lr_scheduler": (str(sched["lr_scheduler"]), ""),
        "lr_warmup_steps": (int(sched["lr_warmup_steps"]), ""),
        "lr_scheduler_num_cycles": (int(sched["lr_scheduler_num_cycles"]), ""),
        "lr_scheduler_power": (float(sched["lr_scheduler_power"]), ""),
        "output_dir": (s["output_dir"] or paths["output_dir"], ""),
        "output_name": (s["output_name"] or config.name, ""),
        "save_model_as": ("safetensors", ""),
        "save_precision": (SAVE_PRECISIONS[s["save_precision"]], ""),
        "save_every_n_epochs": (int(sched["save_every_epochs"]) or None, ""),
        "save_every_n_steps": (int(sched["save_every_steps"]) or None, ""),
        "max_train_steps": (int(sched["max_steps"]) or None, ""),
        "max_train_epochs": (None if int(sched["max_steps"]) else int(sched["epochs"]), ""),
        "max_data_loader_n_workers": (int(s["dataloader_workers"]), ""),
        "seed": (int(sched["seed"]), ""),
        "gradient_checkpointing": (bool(s["gradient_checkpointing"]), ""),
        "gradient_accumulation_steps": (int(sched["gradient_accumulation"]), ""),
        "mixed_precision": (s["mixed_precision"], ""),
        "full_bf16": (True if s["full_bf16"] else None, "settings.full_bf16"),
        "clip_skip": (int(s["clip_skip"]), ""),
        "sdpa": (True if s["attention"] == "sdpa" else None, ""),
        "torch_compile": (True if s["torch_compile"] else None, ""),
        "cache_latents": (bool(s["cache_latents"]), ""),
        "cache_latents_to_disk": (True if s["cache_latents_to_disk"] else None, ""),
        "cache_text_encoder_outputs": (True if s["cache_text_encoder_outputs"] and not s["train_text_encoder"] else None, ""),
        "cache_text_encoder_outputs_to_disk": (True if s["cache_text_encoder_outputs_to_disk"] and s["cache_text_encoder_outputs"] and not s["train_text_encoder"] else None, ""),
        "noise_offset": (float(s["noise_offset"]) or None, "settings.noise_offset"),
        "min_snr_gamma": (float(s["min_snr_gamma"]) or None, "settings.min_snr_gamma"),
        "fused_backward_pass": (True if s["fused_backward_pass"] else None, "settings.fused_backward_pass"),
        "prior_loss_weight": (float(s["prior_loss_weight"]) if config.method == "dreambooth" else None, "settings.prior_loss_weight" if float(s["prior_loss_weight"]) != 1.0 else ""),
        "sample_prompts": (paths["sample_prompts"] if samples["prompts"] else None, ""),
        "sample_every_n_steps": (int(sched["sample_every_steps"]) or None, ""),
        "sample_every_n_epochs": (int(sched["sample_every_epochs"]) or None, ""),
        "sample_at_first": (True if sched["sample_at_start"] else None, ""),
        "sample_sampler": (None if samples["sampler"] == "default" else samples["sampler"], "samples.sampler"),
        "logging_dir": (paths["logging_dir"] if logging["tensorboard"] or logging["wandb_project"] else None, ""),
        "log_with": (_log_with(logging), ""),
        "log_tracker_name": (logging["wandb_project"] or None, "logging.wandb_project"),
    }
    flags |= _method_flags(config.method, s, method, lr, te_lr)
    if config.family in MODEL_TYPES:
        # Chroma's text encoding needs T5's attention mask in sd-scripts (flux_train_network.py asserts it)
        flags |= {"model_type": (MODEL_TYPES[config.family], ""), "apply_t5_attn_mask": (True if config.family == "chroma" else None, "")}
    unmapped = ["settings.ema"] if s["ema"] else []
    unmapped += _mask_and_validation(config, s)
    if config.method == "lora" and s["lora_targets"] == "attn":
        unmapped.append("settings.lora_targets = attn (sd-scripts' LoRA also trains the feed-forward layers)")
    return flags, unmapped


def _mask_and_validation(config: _Config, s: Mapping[str, Any]) -> list[str]:
    """The masked loss and the validation loss, which the export does not carry over (yet)."""
    validation = config.section("validation")
    unmapped = ["settings.alpha_mask"] if s["alpha_mask"] else []
    if config.section("dataset")["mask_dir"]:
        unmapped.append("dataset.mask_dir")
    if float(validation["split"]) > 0 or validation["folder"]:
        unmapped.append("[validation]")
    return unmapped


def _method_flags(kind: str, s: Mapping[str, Any], method: Mapping[str, Any], lr: float, te_lr: float) -> dict[str, tuple[Any, str]]:
    """The flags of the method: the network's, the text encoder's rates, textual inversion's token."""
    train_te = bool(s["train_text_encoder"])
    te_rate = te_lr or None
    flags: dict[str, tuple[Any, str]] = {}
    if kind == "lora":
        module, args = network(s)
        flags |= {
            "network_module": (module, ""),
            "network_dim": (int(s["lora_rank"]), ""),
            "network_alpha": (float(s["lora_alpha"]), ""),
            "network_dropout": (float(s["lora_dropout"]) or None, "settings.lora_dropout"),
            "network_args": (args or None, ""),
            "network_weights": (s["init_lora"] or None, "settings.init_lora"),
            "network_train_unet_only": (None if train_te else True, ""),
            "unet_lr": (lr, ""),
            "text_encoder_lr": (te_rate if train_te else None, "schedule.text_encoder_lr"),
        }
    elif kind in FULL_METHODS:
        flags |= {
            # train_db.py trains the text encoder unless stopped; fine_tune.py and sdxl_train.py only when asked
            "train_text_encoder": (True if train_te else None, ""),
            "stop_text_encoder_training": (None if train_te else -1, ""),
            "learning_rate_te": (te_rate if train_te else None, ""),
            "learning_rate_te1": (te_rate if train_te else None, ""),
            "learning_rate_te2": (te_rate if train_te else None, ""),
        }
    else:
        flags |= {
            "token_string": (method["placeholder_token"] or None, ""),
            "init_word": (s["ti_init_word"] or None, ""),
            "num_vectors_per_token": (int(s["ti_num_vectors"]), ""),
        }
    return flags


def network(s: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``network_module`` and ``network_args`` of the run's adapter: sd-scripts' own LoRA, or LyCORIS
    (``lycoris.kohya``) for LoHa, LoKr and DoRA, with the conv rank of LoCon-style targets and the
    blocks a block selection trains (``train_block_indices`` and the double/single lists)."""
    kind = str(s["lora_type"])
    conv_dim = int(s["conv_rank"]) or int(s["lora_rank"])
    conv_alpha = float(s["conv_alpha"]) or float(s["lora_alpha"])
    args: list[str] = []
    module = "networks.lora"
    if kind != "lora" or s["use_dora"]:
        module = "lycoris.kohya"
        args.append(f"algo={kind}")
        if s["use_dora"]:
            args.append("dora_wd=True")
        if kind == "lokr":
            args.append(f"factor={int(s['lokr_factor'])}")
    if s["lora_targets"] == "all":
        args += [f"conv_dim={conv_dim}", f"conv_alpha={conv_alpha:g}"]
    # sd-scripts' block selection arguments under their own names (lora_flux.py's double/single lists,
    # lora_sd3.py's train_block_indices); every block, its default here, is sd-scripts' default too.
    args += [f"{key}={''.join(str(s[key]).split())}" for key in BLOCK_SETTINGS if key in s and selects_blocks(str(s[key] or ""))]
    return module, args


def optimizer_args(s: Mapping[str, Any], warmup: int) -> list[str]:
    """sd-scripts' ``optimizer_args`` (``key=value`` strings passed to the optimizer) for the run's
    optimizer: what sdtui's trainer passes it (core/train/model/optimizer.py)."""
    name = s["optimizer"]
    if name == "adafactor":
        return ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
    args = [f"weight_decay={float(s['weight_decay']):g}"]
    betas = optimizer_betas(s)
    if betas is not None:
        args.append(f"betas={betas[0]:g},{betas[1]:g}")
    if name == "prodigy":
        args += ["decouple=True", "use_bias_correction=True", f"safeguard_warmup={bool(s['prodigy_safeguard_warmup'])}", f"d_coef={float(s['prodigy_d_coef']):g}"]
    if name == "schedulefree_adamw":
        args.append(f"warmup_steps={warmup}")
    return args


def _log_with(logging: Mapping[str, Any]) -> str | None:
    if logging["tensorboard"] and logging["wandb_project"]:
        return "all"
    if logging["wandb_project"]:
        return "wandb"
    return "tensorboard" if logging["tensorboard"] else None
