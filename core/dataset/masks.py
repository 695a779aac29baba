"""Loss masks in a folder of their own (``[dataset] mask_dir``): one mask image per training image, same stem.

A mask is any image format; white trains, black is ignored, grey weighs in between. The
folder is only read. :func:`mask_problems` tells the user which images have no mask (they
train on the whole image) and which masks have no image (they are not used).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .images import IMAGE_EXTENSIONS
from .problems import Problem, group_problems


def masks_in(folder: str | os.PathLike[str]) -> dict[str, str]:
    """``stem → mask path`` of the images in ``folder`` (not recursive; the first by name wins a shared stem)."""
    root = Path(folder).expanduser()
    found: dict[str, str] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name) if root.is_dir() else []:
        if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file():
            found.setdefault(entry.stem, str(entry))
    return found


def mask_of(image: str, masks: dict[str, str]) -> str:
    """The mask file of ``image`` (same stem), or "" when it has none."""
    return masks.get(Path(image).stem, "")


def mask_problems(images: Iterable[str], mask_dir: str | os.PathLike[str]) -> list[Problem]:
    """Warnings for training images without a mask in ``mask_dir`` and masks without an image."""
    masks = masks_in(mask_dir)
    paths = list(images)
    stems = {Path(p).stem for p in paths}
    problems = [
        Problem(
            "warning",
            image,
            "the image has no mask in the mask folder, so it trains on the whole image",
            f"add a mask with the same name to {mask_dir} (white = train) if part of it should not train",
        )
        for image in paths
        if Path(image).stem not in masks
    ]
    problems += [
        Problem("warning", path, "the mask has no training image with the same name, so it is not used", "rename it to the stem of its image or remove it from the mask folder")
        for stem, path in masks.items()
        if stem not in stems
    ]
    return group_problems(problems)
