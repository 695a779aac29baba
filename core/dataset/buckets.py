"""Aspect-ratio buckets: the one implementation the scanner, planner and trainer share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Bucket = tuple[int, int]

#: The settings (core/settings.py names) that shape the buckets, besides ``resolution``.
BUCKET_KEYS = ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")


def make_buckets(
    resolution: int,
    min_reso: int = 256,
    max_reso: int = 2048,
    step: int = 64,
    enable: bool = True,
) -> list[Bucket]:
    """All (width, height) buckets whose area fits ``resolution``², sides multiples of ``step``.

    With bucketing off there is one square bucket of ``resolution``.
    """
    side = max(step, resolution // step * step)
    if not enable:
        return [(side, side)]
    area = resolution * resolution
    lo = max(step, min_reso // step * step)
    hi = max(lo, max_reso // step * step)
    found: set[Bucket] = {(side, side)}
    width = lo
    while width <= hi:
        height = min(hi, area // width // step * step)
        if height >= lo:
            found.add((width, height))
            found.add((height, width))
        width += step
    return sorted(found, key=lambda b: (b[0] / b[1], b[0]))


def assign_bucket(width: int, height: int, buckets: Iterable[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to the image's (ties go to the larger area)."""
    ratio = width / height
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - ratio), -b[0] * b[1]))


def no_upscale_bucket(width: int, height: int, resolution: int, step: int) -> Bucket:
    """kohya's ``bucket_no_upscale`` bucket: the image's own size (shrunk to the area of ``resolution``²
    when larger, keeping its aspect ratio), each side rounded down to a multiple of ``step``."""
    area = resolution * resolution

    def round_to_step(x: float) -> int:
        value = int(x + 0.5)
        return value - value % step

    if width * height > area:
        ratio = width / height
        scaled_w = (area * ratio) ** 0.5
        scaled_h = area / scaled_w
        by_width = round_to_step(scaled_w)
        by_height = round_to_step(scaled_h)
        error_w = abs(by_width / max(step, round_to_step(by_width / ratio)) - ratio)
        error_h = abs(max(step, round_to_step(by_height * ratio)) / by_height - ratio)
        width, height = (by_width, int(by_width / ratio + 0.5)) if error_w < error_h else (int(by_height * ratio + 0.5), by_height)
    return max(step, width - width % step), max(step, height - height % step)


def bucket_selector(settings: Mapping[str, Any]) -> Callable[[int, int], Bucket]:
    """The function that gives an image size its bucket under these settings (planner and trainer use it)."""
    from core.settings import SETTINGS

    values = {k: SETTINGS[k].default for k in ("resolution", *BUCKET_KEYS)} | dict(settings)
    if values["bucket_no_upscale"] and values["enable_bucket"]:
        resolution, step = int(values["resolution"]), int(values["bucket_reso_steps"])
        return lambda width, height: no_upscale_bucket(width, height, resolution, step)
    buckets = buckets_for(values)
    return lambda width, height: assign_bucket(width, height, buckets)


def bucket_counts(
    sizes: Iterable[tuple[int, int, int]],
    buckets: list[Bucket] | Callable[[int, int], Bucket],
) -> dict[Bucket, int]:
    """Items per bucket for one epoch from ``(width, height, repeats)`` of each image (buckets: a list or a selector)."""
    select = buckets if callable(buckets) else (lambda w, h: assign_bucket(w, h, buckets))
    counts: dict[Bucket, int] = {}
    for width, height, repeats in sizes:
        bucket = select(width, height)
        counts[bucket] = counts.get(bucket, 0) + repeats
    return counts


def crop_box(width: int, height: int, bucket: Bucket, left_frac: float = 0.5, top_frac: float = 0.5) -> tuple[int, int, int, int, int, int]:
    """How an image is fitted to its bucket: scale to cover, then crop.

    Returns ``(scaled_w, scaled_h, left, top, right, bottom)`` in scaled pixels; the crop's
    top-left is what SDXL's crop conditioning receives. ``left_frac``/``top_frac`` in [0, 1]
    place the crop (0.5 = center, random values = random crop).
    """
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    sw, sh = max(bw, round(width * scale)), max(bh, round(height * scale))
    left = int(round((sw - bw) * left_frac))
    top = int(round((sh - bh) * top_frac))
    return sw, sh, left, top, left + bw, top + bh


def buckets_for(settings: Mapping[str, Any]) -> list[Bucket]:
    """The buckets a run's settings ask for (missing keys take their defaults)."""
    from core.settings import resolve

    values = resolve("settings", settings)
    return make_buckets(
        int(values["resolution"]),
        int(values["min_bucket_reso"]),
        int(values["max_bucket_reso"]),
        int(values["bucket_reso_steps"]),
        bool(values["enable_bucket"]),
    )
