"""Thinning a long series to a chart's width without hiding spikes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def downsample(values: Sequence[float], width: int) -> list[float]:
    """At most ``width`` values: the series cut into ``width // 2`` buckets, each giving its minimum
    and its maximum in their original order (NaNs skipped), so peaks and dips survive."""
    return [values[i] for i in downsample_index(values, width)]


def downsample_index(values: Sequence[float], width: int) -> list[int]:
    """The indices :func:`downsample` keeps, increasing (numpy: a million points in milliseconds).

    Per bucket: the first minimum and the first maximum (NaNs skipped), one index when they
    coincide, the bucket's first index when it holds only NaNs.
    """
    n = len(values)
    if width <= 0 or n == 0:
        return []
    if n <= width:
        return list(range(n))
    buckets = max(1, width // 2)
    data = np.asarray(values, dtype=np.float64)
    starts = np.arange(buckets, dtype=np.int64) * n // buckets
    segment = np.repeat(np.arange(buckets), np.diff(np.append(starts, n)))
    nan = np.isnan(data)
    low = np.where(nan, np.inf, data)
    high = np.where(nan, -np.inf, data)
    first_min = _first_where(low == np.minimum.reduceat(low, starts)[segment], segment, buckets)
    first_max = _first_where(high == np.maximum.reduceat(high, starts)[segment], segment, buckets)
    empty = np.logical_and.reduceat(nan, starts)
    kept: list[int] = []
    for b in range(buckets):
        lo_i, hi_i = int(first_min[b]), int(first_max[b])
        if empty[b]:
            kept.append(int(starts[b]))
        elif lo_i == hi_i:
            kept.append(lo_i)
        else:
            kept.extend(sorted((lo_i, hi_i)))
    return kept


def _first_where(mask: np.ndarray, segment: np.ndarray, buckets: int) -> np.ndarray:
    """The first index of each segment where ``mask`` holds."""
    hits = np.flatnonzero(mask)
    first = np.zeros(buckets, dtype=np.int64)
    seg, at = np.unique(segment[hits], return_index=True)
    first[seg] = hits[at]
    return first


def downsample_xy(xs: Sequence[float], ys: Sequence[float], width: int) -> tuple[list[float], list[float]]:
    """Thin ``(xs, ys)`` by the y values, keeping the pairs together."""
    index = downsample_index(ys, width)
    return [xs[i] for i in index], [ys[i] for i in index]
