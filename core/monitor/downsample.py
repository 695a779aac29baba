"""Thinning a long series to a chart's width without hiding spikes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def downsample(values: Sequence[float], width: int) -> list[float]:
    """At most ``width`` values: the series cut into ``width // 2`` buckets, each giving its minimum
    and its maximum in their original order (NaNs skipped), so peaks and dips survive."""
    return [values[i] for i in downsample_index(values, width)]


def downsample_index(values: Sequence[float], width: int) -> list[int]:
    """The indices :func:`downsample` keeps, increasing."""
    n = len(values)
    if width <= 0 or n == 0:
        return []
    if n <= width:
        return list(range(n))
    buckets = max(1, width // 2)
    kept: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        best_min = best_max = None
        for i in range(lo, hi):
            v = values[i]
            if isinstance(v, float) and math.isnan(v):
                continue
            if best_min is None or v < values[best_min]:
                best_min = i
            if best_max is None or v > values[best_max]:
                best_max = i
        if best_min is None:
            kept.append(lo)
        elif best_min == best_max:
            kept.append(best_min)
        else:
            kept.extend(sorted((best_min, best_max)))
    return kept


def downsample_xy(xs: Sequence[float], ys: Sequence[float], width: int) -> tuple[list[float], list[float]]:
    """Thin ``(xs, ys)`` by the y values, keeping the pairs together."""
    index = downsample_index(ys, width)
    return [xs[i] for i in index], [ys[i] for i in index]
