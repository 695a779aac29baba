"""Which model family a model is, found cheaply and without torch; the one list of model-file suffixes and the one offline rule.

A diffusers folder is read from its JSON configs (``model_index.json``, the denoiser's
``unet/config.json`` or ``transformer/config.json``, ``text_encoder/config.json``), a single
``.safetensors`` file from its JSON header (the first bytes of the file), a pickled checkpoint
from the key names inside it, and a hub id is guessed from its name. The clues are each
family's spec (``Recognition``), tried in the registry's detection order; a model no family
recognises is a one-sentence UserError (the CLI's exit 2), never a silent guess. Transformer
models of families not registered yet (their checkpoint keys, their denoiser class) get a
sentence naming what they are.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.families import FAMILIES, detection_order, specs, variant_names
from core.families.spec import FamilySpec

#: The single-file checkpoint suffixes sdtui reads: safetensors, and pickled torch checkpoints (zip archives).
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
#: A hub id: ``owner/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
#: The values of ``HF_HUB_OFFLINE`` that switch the hub off (huggingface_hub's own rule).
_OFFLINE_VALUES = ("1", "true", "yes", "on")
#: The denoiser folders of a diffusers model.
DENOISER_FOLDERS = ("unet", "transformer")
#: A safetensors header larger than this is not a model header but a damaged file.
_MAX_HEADER = 100 * 1024 * 1024
_HINT = "give the family instead, e.g. --model sdxl (or set [model] family in run.toml)"
#: Transformer models of families sdtui does not train yet: checkpoint key markers / denoiser classes -> what they are.
_NOT_YET: tuple[tuple[tuple[str, ...], str], ...] = ()


def hub_offline(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``HF_HUB_OFFLINE`` switches the Hugging Face hub off."""
    env = os.environ if environ is None else environ
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when the hub is switched off (:func:`hub_offline`) or cannot be reached quickly."""
    if hub_offline():
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_hub_id(model: str) -> bool:
    """``owner/name`` that is not a relative or home path."""
    return bool(HUB_ID.match(model)) and not model.startswith((".", "/", "~"))


def is_model_file(path: Path) -> bool:
    """Whether ``path``'s suffix is one of :data:`MODEL_FILE_SUFFIXES`."""
    return path.suffix.lower() in MODEL_FILE_SUFFIXES


def detect_family(model: str) -> str:
    """The family of ``model``: a family or ``--model`` variant name, a diffusers folder, a single file or a hub id.

    Raises UserError when the path is missing or unreadable, or no family recognises it.
    """
    if model in FAMILIES:
        return model
    if model in variant_names():
        from core.families import variant

        return variant(model).family
    path = Path(model).expanduser()
    if path.is_dir():
        return family_of_folder(path)
    if path.is_file():
        return family_of_file(path)
    if looks_like_hub_id(model):
        return family_of_hub_id(model)
    raise UserError(f"model '{model}' does not exist; give a diffusers folder, a .safetensors file, a hub id or one of {', '.join((*FAMILIES, *variant_names()))}")


def variant_of_model(model: str, family: str) -> str:
    """The ``--model`` variant of ``model`` without torch: its name, or for a diffusers folder the variant whose
    denoiser config changes it matches (FLUX.2 klein 9B, dev); "" when it is the family's default or unknown."""
    from core.families import spec

    found = spec(family)
    if model in (v.name for v in found.variants):
        return model
    path = Path(model).expanduser()
    config = _read_json(path / found.denoiser / "config.json") if path.is_dir() else None
    if config is None:
        return ""
    for candidate in found.variants:
        changes = candidate.configs.get(found.denoiser, {})
        if changes and all(config.get(k) == v for k, v in changes.items()):
            return candidate.name
    return ""


def block_depths(model: str, family: str) -> dict[str, int]:
    """How many blocks each of the family's selectable block lists (``FamilySpec.block_settings``) holds in
    ``model`` without torch: a diffusers folder's denoiser config, else its variant's (a ``--model``
    name, a folder of a sized variant), else the deepest variant's (an original single file: the
    trainer checks the loaded model's own)."""
    from core.families import spec

    found = spec(family)
    path = Path(model).expanduser() if model else None
    config = _read_json(path / found.denoiser / "config.json") if path is not None and path.is_dir() else None
    variant = variant_of_model(model, family) if model else ""
    depths = {}
    for block_list in found.block_settings.values():
        if config is not None and found.swap_blocks[block_list] in config:
            count = config[found.swap_blocks[block_list]]
            depths[block_list] = len(count) if isinstance(count, list) else int(count)
        elif variant:
            depths[block_list] = found.block_depth(block_list, variant)
        else:
            depths[block_list] = max([found.block_depth(block_list, v.name) for v in found.variants] or [found.block_depth(block_list)])
    return depths


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
    part itself, so it holds the same rule here, before any import.
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
    """The family of a diffusers folder, from ``model_index.json`` and its denoiser's and text encoder's configs.

    A model_index.json naming a module outside diffusers and transformers is refused (``check_loadable``).
    """
    index = _read_json(path / "model_index.json")
    denoiser = next((c for c in (_read_json(path / d / "config.json") for d in DENOISER_FOLDERS) if c is not None), None)
    if index is None and denoiser is None:
        raise UserError(f"'{path}' is not a diffusers model folder (no model_index.json, unet/config.json or transformer/config.json); {_HINT}")
    check_loadable(index, path)
    parts = {p.name for p in path.iterdir() if p.is_dir()}
    text = _read_json(path / "text_encoder" / "config.json") or {}
    return family_of_configs(parts, str((index or {}).get("_class_name", "")), denoiser or {}, text, where=str(path))


def family_of_configs(parts: set[str], pipeline_class: str, denoiser: dict[str, Any], text_encoder: dict[str, Any] | None = None, where: str = "the model") -> str:
    """The family of a model from its component names, pipeline class name and denoiser (and text-encoder) config."""
    found = _first(lambda clue: bool((clue.folder_parts and set(clue.folder_parts) <= parts) or (clue.pipeline_mark and clue.pipeline_mark in pipeline_class)))
    if found is None:
        _refuse_not_yet(f"{pipeline_class}\n{denoiser.get('_class_name', '')}", where)
    found = found or _first(lambda clue: bool(clue.cross_attention_dim) and denoiser.get("cross_attention_dim") == clue.cross_attention_dim)
    flat = {**denoiser, **{f"text:{k}": v for k, v in (text_encoder or {}).items()}}
    found = found or _first(lambda clue: any(flat.get(k) == v for k, v in {**clue.unet_marks, **{f"text:{k}": v for k, v in clue.text_marks.items()}}.items()))
    if found is None:
        raise UserError(f"{where} is no model family sdtui recognises ({', '.join(FAMILIES)}); {_HINT}")
    _refuse_variant(found, pipeline_class, where)
    return found.name


def family_of_file(path: Path) -> str:
    """The family of a single checkpoint file (``.safetensors`` header or a pickled checkpoint's key names)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        keys = _safetensors_keys(path)
    elif suffix in MODEL_FILE_SUFFIXES:
        keys = _ckpt_key_text(path)
    else:
        raise UserError(f"model file '{path}' is not a checkpoint ({', '.join(MODEL_FILE_SUFFIXES)}); give a diffusers folder or a .safetensors file")
    found = _first(lambda clue: any(marker in keys for marker in clue.checkpoint_keys))
    if found is None:
        _refuse_not_yet(keys, f"'{path}'")
        raise UserError(f"'{path}' holds no model family sdtui recognises ({', '.join(FAMILIES)}); {_HINT}")
    _refuse_variant(found, path.name, f"'{path}'")
    return found.name


def family_of_hub_id(model_id: str) -> str:
    """Guess the family from a hub id's name (no download); UserError when the name gives no clue."""
    name = model_id.lower()
    found = _first(lambda clue: bool(clue.hub_pattern) and re.search(clue.hub_pattern, name) is not None)
    if found is None:
        raise UserError(f"cannot tell the family of hub model '{model_id}' from its name; {_HINT}")
    _refuse_variant(found, model_id, f"'{model_id}'")
    return found.name


def _first(matches: Any) -> FamilySpec | None:
    return next((candidate for candidate in detection_order() if matches(candidate.recognition)), None)


def _refuse_not_yet(text: str, where: str) -> None:
    for markers, what in _NOT_YET:
        if any(marker in text for marker in markers):
            raise UserError(f"{where} is {what}, which sdtui does not train yet; use a model of one of {', '.join(FAMILIES)}")


def _refuse_variant(found: FamilySpec, text: str, where: str) -> None:
    """UserError for a model of ``found``'s shape that the family does not train (its ``recognition.refused`` marks in ``text``)."""
    lowered = text.lower()
    for mark, what in found.recognition.refused:
        if mark in lowered:
            raise UserError(f"{where} is {what}")


def _read_json(path: Path) -> dict[str, Any] | None:
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
    """The pickled data of a torch checkpoint (a zip), where the state-dict key names appear as text."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if name is None:
                raise ValueError("no data.pkl inside")
            return archive.read(name).decode("latin-1")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"'{path}' is not a readable checkpoint file ({exc}); convert it to .safetensors or give the family, e.g. --model sd1") from None
