"""kohya sd-scripts interchange: dataset_config.toml and sample prompt lines.

``export_kohya`` writes a run config as sd-scripts' ``dataset_config.toml`` ([general],
[[datasets]], [[datasets.subsets]]), ``sample_prompts.txt`` and ``training_config.toml`` (the
optimizer and learning rates, for ``--config_file``); ``read_kohya`` reads such a
dataset config back. The prompt lines both tools share are ``core/sample_prompts.py``'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tomlkit
from tomlkit.exceptions import ParseError

from core.atomic import read_user_text, write_atomic
from core.errors import UserError
from core.sample_prompts import format_prompt_line, parse_prompt_line
from core.settings import SETTINGS, SUBSET_KEYS

DATASET_CONFIG = "dataset_config.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"
TRAINING_CONFIG = "training_config.toml"
#: run.toml optimizer names as sd-scripts' --optimizer_type spells them.
OPTIMIZER_TYPES = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "lion8bit": "Lion8bit", "adafactor": "Adafactor"}

#: [settings] keys written to [general] (sd-scripts' subset options, inherited by every subset).
GENERAL_KEYS = ("shuffle_caption", "keep_tokens", "flip_aug", "random_crop", "caption_prefix", "caption_suffix", "caption_dropout_rate", "caption_tag_dropout_rate")
#: The caption-dropout options, which sd-scripts' train_textual_inversion.py rejects ("extra keys not allowed").
DROPOUT_KEYS = ("caption_dropout_rate", "caption_tag_dropout_rate")
#: [settings] keys written to each [[datasets]] table.
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")
_KOHYA_CAPTION_DEFAULT = ".caption"


class _Config(Protocol):
    name: str
    settings: dict[str, Any]
    subsets: list[dict[str, Any]]
    prompts: list[str]

    def section(self, section: str) -> dict[str, Any]: ...


def export_kohya(config: _Config, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``dataset_config.toml`` and ``sample_prompts.txt`` for sd-scripts into ``out_dir``.

    Only what the method's sd-scripts script accepts is written: textual inversion
    (train_textual_inversion.py) gets no caption-dropout options; empty prefixes are left out.
    """
    settings = config.settings
    caption_extension = config.section("dataset")["caption_extension"]
    textual_inversion = config.section("method")["kind"] == "textual_inversion"
    document = tomlkit.document()
    document.add(tomlkit.comment(f"sd-scripts dataset config exported by sdtui from run '{config.name}'"))
    general = tomlkit.table()
    for key in GENERAL_KEYS:
        if (textual_inversion and key in DROPOUT_KEYS) or settings[key] == "":
            continue
        general.add(key, settings[key])
    general.add("caption_extension", caption_extension)
    document.add("general", general)
    dataset = tomlkit.table()
    for key in DATASET_KEYS:
        dataset.add(key, settings[key])
    subsets = tomlkit.aot()
    for subset in config.subsets:
        table = tomlkit.table()
        table.add("image_dir", str(subset["path"]))
        table.add("num_repeats", int(subset["repeats"]))
        if subset.get("token"):
            table.add("class_tokens", str(subset["token"]))
        table.add("caption_extension", caption_extension)
        table.add("is_reg", bool(subset.get("is_reg", False)))
        subsets.append(table)
    dataset.add("subsets", subsets)
    datasets = tomlkit.aot()
    datasets.append(dataset)
    document.add("datasets", datasets)
    out = Path(out_dir)
    resolution = int(settings["resolution"])
    lines = [format_prompt_line(parse_prompt_line(p, resolution, resolution)) for p in config.prompts]
    written = [out / DATASET_CONFIG, out / SAMPLE_PROMPTS, out / TRAINING_CONFIG]
    write_atomic(written[0], document.as_string())
    write_atomic(written[1], "".join(f"{line}\n" for line in lines))
    write_atomic(written[2], _training_config(config).as_string())
    return written


def _training_config(config: _Config) -> tomlkit.TOMLDocument:
    """sd-scripts' optimizer arguments for ``--config_file``: the optimizer, the rates and the schedule.

    sd-scripts' ``text_encoder_lr`` is written only when set (0 in run.toml means "the learning
    rate", which is what sd-scripts does without it; its own 0 would freeze the text encoder).
    """
    schedule = config.section("schedule")
    settings = config.settings
    document = tomlkit.document()
    document.add(tomlkit.comment(f"sd-scripts training arguments exported by sdtui from run '{config.name}'; pass with --config_file"))
    table = tomlkit.table()
    table.add("optimizer_type", OPTIMIZER_TYPES[settings["optimizer"]])
    if settings["optimizer"] == "adafactor":
        table.add("optimizer_args", ["scale_parameter=False", "relative_step=False", "warmup_init=False"])
    table.add("learning_rate", float(schedule["learning_rate"]))
    table.add("unet_lr", float(schedule["learning_rate"]))
    if float(schedule["text_encoder_lr"]) > 0:
        table.add("text_encoder_lr", float(schedule["text_encoder_lr"]))
    table.add("lr_scheduler", str(schedule["lr_scheduler"]))
    table.add("lr_warmup_steps", int(schedule["lr_warmup_steps"]))
    table.add("max_grad_norm", float(settings["max_grad_norm"]))
    document.add("optimizer_arguments", table)
    return document


@dataclass(frozen=True)
class KohyaDataset:
    """What a dataset_config.toml holds in run.toml terms."""

    subsets: list[dict[str, Any]]
    settings: dict[str, Any]
    caption_extension: str
    warnings: list[str] = field(default_factory=list)


def import_kohya(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The subsets of an sd-scripts dataset_config.toml as run.toml subset dicts."""
    return read_kohya(path).subsets


def read_kohya(path: str | os.PathLike[str]) -> KohyaDataset:
    """Read an sd-scripts dataset_config.toml: subsets, the [settings] it maps and the caption extension.

    Values fall back subset → dataset → general as in sd-scripts; relative ``image_dir`` paths
    are taken relative to the file's folder. The first dataset's options become the settings.
    """
    file = Path(path).expanduser()
    try:
        data = tomlkit.parse(read_user_text(file)).unwrap()
    except FileNotFoundError:
        raise UserError(f"kohya dataset config {file} does not exist; check the path") from None
    except ParseError as exc:
        raise UserError(f"{file} line {exc.line}: invalid TOML; fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"kohya dataset config {file} cannot be read ({exc}); make it a readable UTF-8 text file") from None
    general = data.get("general", {})
    datasets = data.get("datasets", [])
    if not isinstance(general, Mapping) or not isinstance(datasets, list) or not all(isinstance(d, Mapping) for d in datasets):
        raise UserError(f"{file} is not an sd-scripts dataset config; it needs [general] and [[datasets]] tables")
    subsets: list[dict[str, Any]] = []
    warnings: list[str] = []
    settings: dict[str, Any] = {}
    extensions: list[str] = []
    for number, dataset in enumerate(datasets, start=1):
        scope = [dataset, general]
        mapped = {key: _inherited(key, scope) for key in (*DATASET_KEYS, *GENERAL_KEYS)}
        mapped = {key: value for key, value in mapped.items() if value is not None}
        if "resolution" in mapped and isinstance(mapped["resolution"], list):
            width, height = mapped["resolution"]
            mapped["resolution"] = int(round(math.sqrt(int(width) * int(height))))
        if number == 1:
            settings = _checked_settings(file, mapped)
        elif _checked_settings(file, mapped) != settings:
            warnings.append(f"dataset {number} of {file} has other options than the first; the first dataset's options are used")
        for table in dataset.get("subsets", []):
            subset, extension = _subset(file, table, [table, *scope])
            subsets.append(subset)
            extensions.append(extension)
    if not subsets:
        raise UserError(f"{file} has no [[datasets.subsets]]; add one with image_dir and num_repeats")
    caption_extension = extensions[0]
    if any(e != caption_extension for e in extensions):
        warnings.append(f"subsets of {file} use different caption extensions; {caption_extension} is tried first")
    return KohyaDataset(subsets, settings, caption_extension, warnings)


def _inherited(key: str, scopes: list[Mapping[str, Any]]) -> Any:
    for scope in scopes:
        if scope.get(key) is not None:
            return scope[key]
    return None


def _checked_settings(file: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = SETTINGS[key].check(value)
        except ValueError as exc:
            raise UserError(f"{file}: {exc} (sd-scripts option {key}); fix the value") from None
    return checked


def _subset(file: Path, table: Mapping[str, Any], scopes: list[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    if "metadata_file" in table:
        raise UserError(f"{file}: fine-tuning subsets with metadata_file are not supported; use image_dir folders with caption files")
    image_dir = table.get("image_dir")
    if not image_dir:
        raise UserError(f"{file}: a [[datasets.subsets]] has no image_dir; give each subset its image folder")
    folder = Path(str(image_dir)).expanduser()
    if not folder.is_absolute():
        folder = (file.resolve().parent / folder).resolve()
    values = {
        "path": str(folder),
        "repeats": table.get("num_repeats", _inherited("num_repeats", scopes[1:]) or 1),
        "token": table.get("class_tokens", _inherited("class_tokens", scopes[1:]) or ""),
        "is_reg": table.get("is_reg", False),
    }
    subset = {}
    for key, value in values.items():
        try:
            subset[key] = SUBSET_KEYS[key].check(value)
        except ValueError as exc:
            raise UserError(f"{file}: subset {folder}: {exc}; fix the value") from None
    extension = _inherited("caption_extension", scopes) or _KOHYA_CAPTION_DEFAULT
    return subset, str(extension)


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompt lines of an sd-scripts sample prompts file, each checked (blank lines and ``#`` comments skipped)."""
    file = Path(path).expanduser()
    try:
        text = read_user_text(file)
    except FileNotFoundError:
        raise UserError(f"sample prompts file {file} does not exist; check the path or leave the prompts out") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"sample prompts file {file} cannot be read ({exc}); make it a readable UTF-8 text file") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for number, line in enumerate(lines, start=1):
        try:
            parse_prompt_line(line)
        except UserError as exc:
            raise UserError(f"{file} line {number}: {exc}") from None
    return lines


def run_config_from_kohya(
    dataset_config: str | os.PathLike[str],
    prompts: str | os.PathLike[str] | None = None,
    model: str = "",
    method: str = "lora",
    name: str | None = None,
) -> Any:
    """A run config (core.config.RunConfig) from an sd-scripts dataset_config.toml and its sample
    prompts file: the subsets, the [settings] it maps, the caption extension and the prompts.

    ``model`` (a path or hub id) sets [model] and its detected family; without it [model] path
    stays empty and must be filled in before training.
    """
    from core.config import new_config
    from core.runs import slug
    from core.settings import defaults

    dataset = read_kohya(dataset_config)
    family = defaults("model")["family"]
    if model:
        from core.model_family import detect_family

        family = detect_family(model)
    first = next((s for s in dataset.subsets if not s["is_reg"]), dataset.subsets[0])
    label = first["token"] or Path(first["path"]).name
    return new_config(
        name=name or slug(f"{label}-{method}".replace(" ", "-").replace("_", "-")) or "run",
        model_path=model,
        family=family,
        method=method,
        subsets=dataset.subsets,
        settings=defaults("settings") | dataset.settings,
        prompts=read_prompts(prompts) if prompts else [],
        dataset_options={"caption_extension": dataset.caption_extension},
    )


def is_dataset_config(path: str | os.PathLike[str]) -> bool:
    """True when the TOML file at ``path`` is an sd-scripts dataset config (``[[datasets]]``, no ``[model]``), not a run.toml."""
    try:
        data = tomlkit.parse(read_user_text(Path(path).expanduser()))
    except (OSError, UnicodeDecodeError, ParseError):
        return False
    return "datasets" in data and "model" not in data
