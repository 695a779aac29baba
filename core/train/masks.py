"""Masked loss: a weight per pixel from the image's alpha channel or a mask file, applied on the latent grid.

``settings.alpha_mask`` takes the mask from the image's alpha channel (an image without one
trains everywhere), ``[dataset] mask_dir`` from a mask image with the image's stem
(``core.dataset.masks``; a mask file wins over the alpha channel). The mask is fitted to the
bucket by the same crop and flip as its image (``core.train.data.examples.fit_to_bucket``) and
downsampled to the latent grid by area averaging when the loss is weighted, as sd-scripts'
``apply_masked_loss`` does: the squared error is multiplied by the mask and averaged over
the whole latent, so an all-ones mask gives exactly the unmasked loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from core.train.data.item import INSTANCE


def mask_image(path: str, mask_path: str, alpha: bool) -> Image.Image | None:
    """The mask of the image at ``path`` as a greyscale image of its (upright) size, or None when it has none."""
    if mask_path:
        with Image.open(mask_path) as raw:
            mask = ImageOps.exif_transpose(raw).convert("L")
        with Image.open(path) as raw:
            size = ImageOps.exif_transpose(raw).size
        return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)
    if alpha:
        with Image.open(path) as raw:
            image = ImageOps.exif_transpose(raw)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                return image.convert("RGBA").getchannel("A")
    return None


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """A fitted greyscale mask as a ``[1, H, W]`` float tensor in [0, 1] (white = 1)."""
    import numpy as np

    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None].contiguous()


def on_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``mask`` [B, 1, H, W] area-averaged onto a ``size`` (h, w) grid (unchanged when it is that size)."""
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="area")


def per_sample_loss(pred: Any, target: Any, mask: Any = None) -> Any:
    """Mean squared error per sample; with ``mask`` [B, 1, H, W] each latent position weighted by
    the mask on the latent grid (masked-out positions contribute nothing, not even to the gradient)."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is not None:
        loss = loss * on_grid(mask.to(loss.device), tuple(loss.shape[-2:]))
    return loss.mean(dim=tuple(range(1, loss.dim())))


def with_masks(mask_dir: str, items: list[Any], validation_items: list[Any]) -> tuple[list[Any], list[Any]]:
    """The training and validation items with their mask files from ``mask_dir`` (same stem); each
    image without a mask and each mask without an image is logged as a warning (``core.dataset.masks``)."""
    import logging
    from dataclasses import replace

    from core.dataset.masks import mask_of, mask_problems, masks_in

    masks = masks_in(mask_dir)
    log = logging.getLogger("core.train.data.items")
    for problem in mask_problems([i.path for i in items + validation_items], mask_dir):
        log.warning("%s: %s; %s", problem.path if problem.count == 1 else f"{problem.count} files in {problem.path}", problem.message, problem.fix)
    return [replace(i, mask=mask_of(i.path, masks)) for i in items], [replace(i, mask=mask_of(i.path, masks)) for i in validation_items]


def batch_masks(examples: list[Any], stacked: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` masks of a batch's examples on the grid of ``stacked`` (pixels or cached
    latents); an example without a mask (no alpha channel, no mask file, a class image) is all ones."""
    size = tuple(stacked.shape[-2:])
    ones = torch.ones((1, *size))
    return torch.stack([on_grid(e.mask[None], size)[0] if e.mask is not None else ones for e in examples])


def mask_tag(item: Any, kind: str, masked: bool, alpha: bool) -> str:
    """What a latent cache key adds for the loss mask of ``item``: the mask file (path, size,
    modification time), ``alpha`` for the alpha channel, "" when the entry has no mask."""
    import os

    if not masked or kind != INSTANCE:
        return ""
    if item.mask:
        stat = os.stat(item.mask)
        return f"{os.path.abspath(item.mask)}:{stat.st_size}:{stat.st_mtime_ns}"
    return "alpha" if alpha else ""
