"""Resumable training state in ``checkpoints/step-N``, written atomically, last K kept.

A checkpoint folder holds ``trainable.safetensors`` (the trained tensors only, not the frozen
base model), ``objects.pt`` (optimizer, LR scheduler, grad scaler, EMA and the RNG states of
every rank) and ``state.json`` (step, epoch, position in the epoch, ``manual``). It is written
into ``checkpoints/.tmp-step-N``, synced to disk and renamed into place, so a folder named
``step-N`` is complete, also after a power cut. Rotation (``keep_checkpoints``) deletes only the
periodic ones: a checkpoint the user asked for (``s`` on the dashboard, ``sdtui save``) stays
until the user removes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import finish_tree, replace
from core.errors import UserError

_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, Any]
    objects: dict[str, Any]


def checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest(folder: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = checkpoints(folder)
    return found[-1] if found else None


def is_manual(path: Path) -> bool:
    """Whether a checkpoint was asked for by the user (kept out of the rotation)."""
    try:
        return bool(json.loads((path / "state.json").read_text(encoding="utf-8")).get("manual"))
    except (OSError, ValueError, AttributeError):
        return False


def save(
    folder: str | os.PathLike[str], step: int, tensors: dict[str, Any], objects: dict[str, Any], state: dict[str, Any], keep: int,
    manual: bool = False,
) -> Path:
    """Write ``step-<step>`` atomically (temp folder + rename) and delete all but the newest
    ``keep`` periodic checkpoints; ``manual`` ones are never rotated away."""
    import torch
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
    torch.save(objects, tmp / "objects.pt")
    manual = manual or (final.exists() and is_manual(final))
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "manual": manual}, indent=2) + "\n", encoding="utf-8")
    finish_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    replace(tmp, final)
    for old in [c for c in checkpoints(root) if not is_manual(c)][:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint; a damaged one raises UserError naming the folder and the fix."""
    import torch
    from safetensors.torch import load_file

    folder = Path(path)
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "trainable.safetensors"))
        objects = torch.load(folder / "objects.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any damage means the same fix
        raise UserError(
            f"the checkpoint {folder} cannot be loaded ({type(exc).__name__}); delete that folder to resume from an older checkpoint or start over"
        ) from exc
    return Checkpoint(folder, state, tensors, objects)
