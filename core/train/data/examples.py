"""Loading one training image: upright RGB, fitted to its bucket (cover, crop, flip) with its loss mask."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from core.dataset.buckets import Bucket, crop_box
from core.train.masks import mask_image, mask_tensor


@dataclass
class Example:
    """One loaded image fitted to its bucket."""

    pixels: Any  # [3, H, W] float in [-1, 1]
    original_size: tuple[int, int]  # (height, width) of the source image
    crop_top_left: tuple[int, int]  # (top, left) in the scaled image
    target_size: tuple[int, int]  # (height, width) of the bucket
    mask: Any = None  # [1, H, W] float in [0, 1] when the image has a loss mask


def open_rgb(path: str) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as RGB; transparency goes onto white."""
    with Image.open(path) as raw:
        image = ImageOps.exif_transpose(raw)
        image.load()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_example(
    path: str,
    bucket: Bucket,
    random_crop: bool = False,
    flip: bool = False,
    rng: random.Random | None = None,
    mask_path: str = "",
    alpha_mask: bool = False,
) -> Example:
    """Resize ``path`` to cover ``bucket``, crop it (center or random) and optionally mirror it; its
    loss mask (``mask_path``, else the alpha channel with ``alpha_mask``) goes through the same crop and flip."""
    rng = rng or random.Random(0)
    image = open_rgb(path)
    width, height = image.size
    fx, fy = (rng.random(), rng.random()) if random_crop else (0.5, 0.5)
    box = crop_box(width, height, bucket, fx, fy)
    image, (top, left) = fit_to_bucket(image, box, flip, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32)
    pixels = torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
    mask = mask_image(path, mask_path, alpha_mask) if (mask_path or alpha_mask) else None
    fitted = mask_tensor(fit_to_bucket(mask, box, flip, Image.Resampling.BILINEAR)[0]) if mask is not None else None
    return Example(pixels.contiguous(), (height, width), (top, left), (bucket[1], bucket[0]), fitted)


def fit_to_bucket(image: Image.Image, box: tuple[int, int, int, int, int, int], flip: bool, resample: Image.Resampling) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` scaled, cropped to ``box`` (``core.dataset.buckets.crop_box``) and optionally mirrored,
    with the crop's (top, left): the one path an image and its mask both take."""
    sw, sh, left, top, right, bottom = box
    image = image.resize((sw, sh), resample).crop((left, top, right, bottom))
    if flip:
        image = ImageOps.mirror(image)
        left = sw - right
    return image, (top, left)
