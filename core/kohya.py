"""kohya sd-scripts interchange: dataset_config.toml and sample prompt lines.

``export_kohya`` writes a run config as sd-scripts' ``dataset_config.toml`` ([general],
[[datasets]], [[datasets.subsets]]; fine-tuning subsets with metadata files for fine_tune.py),
``sample_prompts.txt`` and ``training_config.toml`` (every training argument the method's script
has, for ``--config_file``: core/kohya_args.py); ``read_kohya`` reads such a dataset config back.
The prompt lines both tools share are ``core/sample_prompts.py``'s.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tomlkit
from tomlkit.exceptions import ParseError

from core.atomic import finish_tree, read_user_text, replace
from core.errors import UserError
from core.sample_prompts import format_prompt_line, parse_prompt_line
from core.settings import SETTINGS, SUBSET_KEYS, SUBSET_OPTIONS, bucket_problem

DATASET_CONFIG = "dataset_config.toml"
SAMPLE_PROMPTS = "sample_prompts.txt"
TRAINING_CONFIG = "training_config.toml"
#: The folder of fine_tune.py's metadata files (one per subset: image path → caption).
METADATA_DIR = "metadata"
#: The folder of the DreamBooth-style subsets with generated captions: per subset, links to its
#: images and a caption file beside each link, which sd-scripts reads as its image_dir.
CAPTIONED_DIR = "captioned"

#: [settings] keys written to [general] (sd-scripts' subset options, inherited by every subset).
GENERAL_KEYS = ("shuffle_caption", "keep_tokens", "flip_aug", "random_crop", "caption_prefix", "caption_suffix", "caption_dropout_rate", "caption_tag_dropout_rate")
#: The caption-dropout options, which sd-scripts' train_textual_inversion.py rejects ("extra keys not allowed").
DROPOUT_KEYS = ("caption_dropout_rate", "caption_tag_dropout_rate")
#: [settings] keys written to each [[datasets]] table.
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")
_KOHYA_CAPTION_DEFAULT = ".caption"


class _Config(Protocol):
    name: str
    path: Path | None
    settings: dict[str, Any]
    subsets: list[dict[str, Any]]
    prompts: list[str]
    method: str
    family: str
    model_path: str
    caption_extensions: tuple[str, ...]

    def section(self, section: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class KohyaExport:
    """What ``export_kohya`` wrote: the files, the sd-scripts script they are for, and the run's
    settings that script has no option for."""

    written: list[Path]
    script: str
    unmapped: list[str]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One sentence on what has no sd-scripts equivalent (empty when everything maps)."""
        if not self.unmapped:
            return ""
        return f"not exported, {self.script} has no option for: {', '.join(self.unmapped)}"


def export_kohya(config: _Config, out_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None = None) -> KohyaExport:
    """Write sd-scripts' files for ``config`` into the new folder ``out_dir``: ``dataset_config.toml``,
    ``sample_prompts.txt``, ``training_config.toml`` (``--config_file`` of the script that fits the
    method) and, for a fine-tune, ``metadata/`` (fine_tune.py's metadata files).

    ``out_dir`` must not exist or be empty (UserError otherwise); the files are written into a
    temp folder beside it that is renamed to ``out_dir``, so a failed export leaves nothing.
    ``run_dir`` (default: the folder of ``config.path`` when it is a run folder) supplies the class
    images the run generated, listed as one more regularisation subset.
    """
    from core.kohya_args import training_arguments

    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; give a new folder for the kohya files")
    bucket = bucket_problem(config.settings)
    if bucket:
        raise UserError(bucket)
    run = Path(run_dir) if run_dir is not None else (config.path.parent if config.path is not None else None)
    finetune = config.method == "finetune"
    notes: list[str] = []
    metadata = _metadata_files(config, out, notes) if finetune else {}
    links, captions, image_dirs = ({}, {}, {}) if finetune else _captioned_subsets(config, out, notes)
    dataset = _dataset_document(config, _run_class_images(config, run, notes), [out / METADATA_DIR / name for name in metadata], image_dirs)
    paths = {
        "dataset_config": str(out / DATASET_CONFIG),
        "sample_prompts": str(out / SAMPLE_PROMPTS),
        "output_dir": str(out / "output"),
        "logging_dir": str(out / "logs"),
    }
    arguments = training_arguments(config, paths)
    resolution = int(config.settings["resolution"])
    lines = [format_prompt_line(parse_prompt_line(p, resolution, resolution)) for p in config.prompts]
    files: dict[str, str] = {
        DATASET_CONFIG: dataset.as_string(),
        SAMPLE_PROMPTS: "".join(f"{line}\n" for line in lines),
        TRAINING_CONFIG: arguments.document(config.name).as_string(),
    }
    files |= {f"{METADATA_DIR}/{name}": json.dumps(entries, indent=2, ensure_ascii=False) + "\n" for name, entries in metadata.items()}
    files |= captions
    _write_folder(out, files, links)
    return KohyaExport([out / name for name in files], arguments.script, arguments.unmapped, notes + arguments.notes)


def _captioned_subsets(config: _Config, out: Path, notes: list[str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The training subsets with captions from the caption layer, laid out for sd-scripts without
    touching the dataset: ``captioned/<NN>_<folder>/`` holds a link to each image and a caption file
    beside it (the image's own caption, else its generated one), and becomes the subset's image_dir.

    Returns (link path → image, caption file path → text, subset path → new image_dir); nothing for
    subsets without generated captions, which keep their own folder.
    """
    from core.dataset.scan import scan_config

    if not all(Path(str(s["path"])).expanduser().is_dir() for s in config.subsets):
        return {}, {}, {}  # a config exported without its images here: no captions to carry
    try:
        scan = scan_config(config)
    except UserError as exc:
        notes.append(f"the dataset could not be scanned ({exc}), so captions from the caption layer are not carried over")
        return {}, {}, {}
    links: dict[str, str] = {}
    captions: dict[str, str] = {}
    image_dirs: dict[str, str] = {}
    for number, entry in enumerate(config.subsets, start=1):
        folder = Path(str(entry["path"])).expanduser().resolve()
        images = [i for s in scan.subsets if Path(s.path).resolve() == folder for i in s.images]
        if not any(i.generated for i in images):
            continue
        extension = str(entry.get("caption_extension") or config.section("dataset")["caption_extension"])
        name = f"{CAPTIONED_DIR}/{number:02d}_{folder.name}"
        for image in images:
            links[f"{name}/{Path(image.path).name}"] = str(Path(image.path).resolve())
            if image.caption is not None:
                captions[f"{name}/{Path(image.path).stem}{extension}"] = image.caption + "\n"
        image_dirs[str(entry["path"])] = str(out / name)
        generated = sum(1 for i in images if i.generated)
        notes.append(
            f"{folder.name} has {generated} generated captions, so sd-scripts reads it from {out / name} (links to the images with every caption beside them); the dataset is unchanged"
        )
    return links, captions, image_dirs


def _write_folder(out: Path, files: Mapping[str, str], links: Mapping[str, str] | None = None) -> None:
    """Write ``files`` (relative path → text) and ``links`` (relative path → target) into a temp
    folder beside ``out`` and rename it to ``out``. The links are made after the files are finished,
    so nothing follows them to change a target's mode."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
        finish_tree(tmp)
        for name, target in (links or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, tmp / name)
        if out.exists():
            out.rmdir()  # empty, checked above; a file appearing since makes this fail and keeps it
        replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dataset_document(config: _Config, class_images: dict[str, Any] | None, metadata: list[Path], image_dirs: Mapping[str, str] | None = None) -> tomlkit.TOMLDocument:
    """sd-scripts' dataset config: DreamBooth-style subsets (image folders with caption files), or
    fine-tuning subsets (``metadata_file``) for a fine-tune, whose schema has no caption
    extension, class tokens or is_reg. Only what the method's script accepts is written:
    textual inversion (train_textual_inversion.py) gets no caption-dropout options; empty
    prefixes are left out."""
    settings = config.settings
    caption_extension = config.section("dataset")["caption_extension"]
    textual_inversion = config.method == "textual_inversion"
    finetune = config.method == "finetune"
    document = tomlkit.document()
    document.add(tomlkit.comment(f"sd-scripts dataset config exported by sdtui from run '{config.name}'"))
    general = tomlkit.table()
    for key in GENERAL_KEYS:
        if (textual_inversion and key in DROPOUT_KEYS) or settings[key] == "":
            continue
        general.add(key, settings[key])
    if not finetune:
        general.add("caption_extension", caption_extension)
    document.add("general", general)
    dataset = tomlkit.table()
    for key in DATASET_KEYS:
        dataset.add(key, settings[key])
    subsets = tomlkit.aot()
    if finetune:
        for path, subset in zip(metadata, [s for s in config.subsets if not s["is_reg"]], strict=True):
            table = tomlkit.table()
            table.add("image_dir", str(subset["path"]))
            table.add("metadata_file", str(path))
            table.add("num_repeats", int(subset["repeats"]))
            _add_own_options(table, subset, textual_inversion)
            subsets.append(table)
    else:
        for subset in [*config.subsets, *([class_images] if class_images else [])]:
            table = tomlkit.table()
            table.add("image_dir", (image_dirs or {}).get(str(subset["path"]), str(subset["path"])))
            table.add("num_repeats", int(subset["repeats"]))
            if subset.get("token"):
                table.add("class_tokens", str(subset["token"]))
            table.add("caption_extension", subset.get("caption_extension") or caption_extension)
            table.add("is_reg", bool(subset.get("is_reg", False)))
            _add_own_options(table, subset, textual_inversion)
            subsets.append(table)
    dataset.add("subsets", subsets)
    datasets = tomlkit.aot()
    datasets.append(dataset)
    document.add("datasets", datasets)
    return document


def _add_own_options(table: Any, subset: Mapping[str, Any], textual_inversion: bool) -> None:
    """A subset's own flip_aug and caption options (sd-scripts' per-subset options; no dropout for
    textual inversion, whose script rejects it)."""
    for key in SUBSET_OPTIONS:
        if key != "caption_extension" and key in subset and not (textual_inversion and key in DROPOUT_KEYS):
            table.add(key, subset[key])


def _run_class_images(config: _Config, run: Path | None, notes: list[str]) -> dict[str, Any] | None:
    """The class images the run generated (``<run>/class_images/``) as a regularisation subset
    captioned with the class prompt, or None when there are none or the method uses none."""
    from core.runs.rundir import CLASS_IMAGES, generated_class_images

    if config.method in ("finetune", "textual_inversion"):
        return None
    if run is None or not generated_class_images(run):
        if config.method == "dreambooth" and config.section("method")["class_prompt"]:
            notes.append("the class images the run generates are not there yet, so only the given class folders are listed; export from the run folder after training starts")
        return None
    return {"path": str((run / CLASS_IMAGES).resolve()), "repeats": 1, "token": config.section("method")["class_prompt"], "is_reg": True}


def _metadata_files(config: _Config, out: Path, notes: list[str]) -> dict[str, dict[str, dict[str, str]]]:
    """fine_tune.py's metadata of each training subset (file name → {image path: {"caption": …}}),
    the captions the scan reads (caption file, else the subset's token); sd-scripts adds the
    prefix and suffix itself."""
    from core.dataset.scan import scan_config

    scan = scan_config(config)
    result: dict[str, dict[str, dict[str, str]]] = {}
    for number, entry in enumerate([s for s in config.subsets if not s["is_reg"]], start=1):
        folder = Path(str(entry["path"])).expanduser().resolve()
        images = [i for s in scan.subsets if not s.is_reg and Path(s.path).resolve().is_relative_to(folder) for i in s.images]
        token = str(entry.get("token") or "")
        name = f"{number:02d}_{folder.name}.json"
        result[name] = {str(Path(i.path).resolve()): {"caption": i.caption if i.caption is not None else token} for i in images}
    if any(s["is_reg"] for s in config.subsets):
        notes.append("fine_tune.py has no regularisation images, so the class folders are left out")
    return result


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
    are taken relative to the file's folder. The first dataset's options become the settings; a
    subset's own keep_tokens, flip_aug and shuffle_caption, and a caption extension other than the
    first subset's, stay with that subset.
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
    for subset, extension in zip(subsets, extensions):
        if extension != caption_extension:
            subset["caption_extension"] = extension
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
    own = {key: table[key] for key in SUBSET_OPTIONS if key != "caption_extension" and table.get(key) is not None}
    subset = {}
    for key, value in (values | own).items():
        try:
            subset[key] = {**SUBSET_KEYS, **SUBSET_OPTIONS}[key].check(value)
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
    from core.runs.listing import slug
    from core.settings import defaults

    dataset = read_kohya(dataset_config)
    family = defaults("model")["family"]
    if model:
        from core.families.detect import detect_family

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
