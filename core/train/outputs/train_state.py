"""Resumable training state in ``checkpoints/step-N``, written atomically, last K kept.

A checkpoint folder holds ``trainable.safetensors`` (the trained tensors only, not the frozen
base model), ``objects.safetensors`` + ``objects.json`` (optimizer, LR scheduler, grad scaler,
EMA and the RNG states of every rank: the tensors in safetensors, the rest as JSON with tagged
tuples, non-string keys and numeric numpy arrays) and ``state.json`` (step, epoch, position in
the epoch, ``manual``). Nothing in a checkpoint is a pickle, so a checkpoint from someone else
cannot run code. It is written into ``checkpoints/.tmp-step-N``, synced to disk and renamed into
place, so a folder named ``step-N`` is complete, also after a power cut; free space is checked
against its size first, and a full disk removes the partial folder and keeps the previous
checkpoint. Rotation (``keep_checkpoints``) deletes only the periodic ones: a checkpoint the
user asked for (``s`` on the dashboard, ``sdtui save``) stays until the user removes it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import finish_tree, replace
from core.errors import UserError
from core.runs.checkpoints import checkpoints, is_manual
from core.train.disk import DiskFull, ensure_space, free_bytes, is_disk_full

TRAINABLE = "trainable.safetensors"
OBJECT_TENSORS = "objects.safetensors"
OBJECT_TREE = "objects.json"
#: numpy dtype kinds a checkpoint may hold (bool, signed, unsigned, float): never objects.
_NUMPY_KINDS = "biuf"


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, Any]
    objects: dict[str, Any]


def encode(obj: Any, tensors: dict[str, Any], seen: dict[int, str] | None = None) -> Any:
    """``obj`` as JSON data, its tensors moved into ``tensors`` (by key); TypeError for anything else."""
    import numpy as np
    import torch

    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen[id(obj)] = f"t{len(tensors)}"
            tensors[seen[id(obj)]] = obj.detach().cpu().contiguous()
        return {"__tensor__": seen[id(obj)]}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMPY_KINDS:
            raise TypeError(f"a checkpoint cannot hold a numpy array of {obj.dtype}")
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, tensors, seen) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, tensors, seen) for k, v in obj.items()}
        return {"__dict__": [[encode(k, tensors, seen), encode(v, tensors, seen)] for k, v in obj.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def decode(data: Any, tensors: dict[str, Any]) -> Any:
    """The inverse of :func:`encode` (ValueError for a tag it does not know)."""
    import numpy as np

    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__ndarray__" in data:
        dtype = np.dtype(str(data["dtype"]))
        if dtype.kind not in _NUMPY_KINDS:
            raise ValueError(f"numpy dtype {dtype} is not allowed in a checkpoint")
        return np.array(data["__ndarray__"], dtype=dtype)
    if "__tuple__" in data:
        return tuple(decode(v, tensors) for v in data["__tuple__"])
    if "__dict__" in data:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in data["__dict__"]}
    if any(k.startswith("__") for k in data):
        raise ValueError(f"unknown tag in a checkpoint: {sorted(data)}")
    return {k: decode(v, tensors) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _nbytes(tensors: dict[str, Any]) -> int:
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors.values())


def save(
    folder: str | os.PathLike[str],
    step: int,
    tensors: dict[str, Any],
    objects: dict[str, Any],
    state: dict[str, Any],
    keep: int,
    manual: bool = False,
) -> Path:
    """Write ``step-<step>`` atomically (temp folder + rename) and delete all but the newest
    ``keep`` periodic checkpoints; ``manual`` ones are never rotated away.

    DiskFull (before writing, or when a write hits ENOSPC) leaves the previous checkpoints as they were.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    trainable = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    object_tensors: dict[str, Any] = {}
    tree = json.dumps(encode(objects, object_tensors))
    needed = _nbytes(trainable) + _nbytes(object_tensors) + len(tree) + 64 * 1024
    ensure_space(root.parent, root, needed, "the checkpoint")
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    manual = manual or (final.exists() and is_manual(final))
    try:
        _write(tmp, trainable, object_tensors, tree, {**state, "step": step, "manual": manual})
        finish_tree(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise DiskFull(root.parent, free_bytes(root), needed, "the checkpoint") from exc
        raise
    if final.exists():
        shutil.rmtree(final)
    replace(tmp, final)
    for old in [c for c in checkpoints(root) if not is_manual(c)][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write(tmp: Path, trainable: dict[str, Any], object_tensors: dict[str, Any], tree: str, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable, str(tmp / TRAINABLE))
    save_file(object_tensors, str(tmp / OBJECT_TENSORS))
    (tmp / OBJECT_TREE).write_text(tree + "\n", encoding="utf-8")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint (data only: safetensors and JSON); a damaged one raises UserError naming the folder and the fix."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / OBJECT_TREE).is_file() and (folder / "objects.pt").is_file():
        raise UserError(
            f"the checkpoint {folder} was written by an older sdtui as a pickle (objects.pt), which is never loaded because it could run code; "
            "delete that folder to resume from another checkpoint, or start the run again"
        )
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / TRAINABLE))
        objects = decode(json.loads((folder / OBJECT_TREE).read_text(encoding="utf-8")), load_file(str(folder / OBJECT_TENSORS)))
        if not isinstance(state, dict) or not isinstance(objects, dict):
            raise ValueError("state.json or objects.json does not hold an object")
    except Exception as exc:  # noqa: BLE001 - any damage means the same fix
        raise UserError(f"the checkpoint {folder} cannot be loaded ({type(exc).__name__}); delete that folder to resume from an older checkpoint or start over") from exc
    return Checkpoint(folder, state, tensors, objects)
