"""Which model family a model is, found cheaply and without torch.

A diffusers folder is read from its JSON configs, a single ``.safetensors`` file from its
JSON header (the first bytes of the file), a ``.ckpt`` from the key names inside its pickle,
and a hub id is guessed from its name. The clues are each family's spec
(``core/families``, ``Recognition``), tried in the registry's detection order.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

from typing import Any

from .errors import UserError
from .families import FAMILIES, detection_order, specs
from .families.spec import FamilySpec

#: A safetensors header larger than this is not a model header but a damaged file.
_MAX_HEADER = 100 * 1024 * 1024
_HINT = "give the family instead, e.g. --model sdxl (or set [model] family in run.toml)"


def detect_family(model: str) -> str:
    """The family of ``model``: a family name, a diffusers folder, a single file or a hub id.

    Raises UserError when the path is missing or unreadable, or a hub id's name gives no clue.
    """
    if model in FAMILIES:
        return model
    path = Path(model).expanduser()
    if path.is_dir():
        return family_of_folder(path)
    if path.is_file():
        return family_of_file(path)
    if _looks_like_hub_id(model):
        return family_of_hub_id(model)
    raise UserError(f"model '{model}' does not exist; give a diffusers folder, a .safetensors file, a hub id or one of {', '.join(FAMILIES)}")


#: The libraries a model part may come from: model_index.json names a module per part and loading
#: the part imports it, so any other name is refused before anything is imported.
LOADABLE_LIBRARIES = ("diffusers", "transformers")


def model_parts(family_spec: FamilySpec) -> tuple[str, ...]:
    """The parts of a diffusers folder the trainer loads for one family."""
    return (family_spec.denoiser, "vae", *family_spec.text_encoder_names, *family_spec.tokenizer_names, "scheduler")


#: The parts of a diffusers folder the trainer loads, over every family (the safety checker and feature extractor are left out).
LOADED_PARTS = tuple(dict.fromkeys(p for family_spec in specs() for p in model_parts(family_spec)))


def check_loadable(index: Any, path: Path) -> None:
    """Refuse a model_index.json whose loaded parts name a module outside diffusers and transformers.

    Diffusers' own loader imports only the libraries it loads components from; sdtui loads each
    part itself (``core/train/models.py``), so it holds the same rule here, before any import.
    """
    for name in LOADED_PARTS:
        entry = index.get(name) if isinstance(index, dict) else None
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        if library not in LOADABLE_LIBRARIES or not isinstance(class_name, str) or not class_name.isidentifier() or class_name.startswith("_"):
            raise UserError(
                f"{path / 'model_index.json'} names {library!r}.{class_name!r} for its {name}, but model parts are loaded only from "
                f"{' or '.join(LOADABLE_LIBRARIES)} (importing another module would run its code); fix the entry or use a model folder saved by diffusers"
            )


def family_of_folder(path: Path) -> str:
    """The family of a diffusers folder, from ``model_index.json`` and ``unet/config.json``.

    A model_index.json naming a module outside diffusers and transformers is refused (``check_loadable``).
    """
    index = _read_json(path / "model_index.json")
    unet = _read_json(path / "unet" / "config.json")
    if index is None and unet is None:
        raise UserError(f"'{path}' is not a diffusers model folder (no model_index.json or unet/config.json); {_HINT}")
    check_loadable(index, path)
    parts = {p.name for p in path.iterdir() if p.is_dir()}
    return family_of_configs(parts, str((index or {}).get("_class_name", "")), unet or {})


def family_of_configs(parts: set[str], pipeline_class: str, unet: dict[str, Any], text_encoder: dict[str, Any] | None = None) -> str:
    """The family of a model from its component names, pipeline class name and UNet (and text-encoder) config."""
    order = detection_order()
    for candidate in order:
        clue = candidate.recognition
        if (clue.folder_parts and set(clue.folder_parts) <= parts) or (clue.pipeline_mark and clue.pipeline_mark in pipeline_class):
            return candidate.name
    for candidate in order:
        if candidate.recognition.cross_attention_dim and unet.get("cross_attention_dim") == candidate.recognition.cross_attention_dim:
            return candidate.name
    for candidate in order:
        marks = {**candidate.recognition.unet_marks, **{f"text:{k}": v for k, v in candidate.recognition.text_marks.items()}}
        found = {**unet, **{f"text:{k}": v for k, v in (text_encoder or {}).items()}}
        if any(found.get(key) == value for key, value in marks.items()):
            return candidate.name
    return order[-1].name


def family_of_file(path: Path) -> str:
    """The family of a single checkpoint file (``.safetensors`` header or ``.ckpt`` key names)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        keys = _safetensors_keys(path)
    elif suffix in (".ckpt", ".pt", ".pth"):
        keys = _ckpt_key_text(path)
    else:
        raise UserError(f"model file '{path}' is neither .safetensors nor .ckpt; give a diffusers folder or a .safetensors file")
    return _family_of_keys(keys)


def family_of_hub_id(model_id: str) -> str:
    """Guess the family from a hub id's name (no download); UserError when the name gives no clue."""
    name = model_id.lower()
    for candidate in detection_order():
        if candidate.recognition.hub_pattern and re.search(candidate.recognition.hub_pattern, name):
            return candidate.name
    raise UserError(f"cannot tell the family of hub model '{model_id}' from its name; {_HINT}")


def _looks_like_hub_id(model: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model)) and not model.startswith((".", "/", "~"))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read '{path}' ({exc}); repair the file or give the family, e.g. --model sdxl") from None
    return data if isinstance(data, dict) else None


def _safetensors_keys(path: Path) -> str:
    """The tensor names of a safetensors file, one per line (only the header is read)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("file too short")
            (size,) = struct.unpack("<Q", raw)
            if not 0 < size <= _MAX_HEADER:
                raise ValueError("header size out of range")
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        raise UserError(f"'{path}' is not a readable safetensors file ({exc}); re-download it or give a diffusers folder") from None
    if not isinstance(header, dict):
        raise UserError(f"'{path}' has no safetensors header; re-download it or give a diffusers folder")
    return "\n".join(k for k in header if k != "__metadata__")


def _ckpt_key_text(path: Path) -> str:
    """The pickled data of a ``.ckpt`` (a zip), where the state-dict key names appear as text."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                raise ValueError("no data.pkl inside")
            return archive.read(name).decode("latin-1")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"'{path}' is not a readable .ckpt file ({exc}); convert it to .safetensors or give the family, e.g. --model sd1") from None


def _family_of_keys(keys: str) -> str:
    order = detection_order()
    for candidate in order:
        if any(marker in keys for marker in candidate.recognition.checkpoint_keys):
            return candidate.name
    return order[-1].name
