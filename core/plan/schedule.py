"""Schedule maths: how many batches and optimizer steps an epoch really has.

This is the one implementation. The trainer builds its epochs with :func:`epoch_batches`
and :func:`shard_batches`; the planner counts them with :func:`steps_per_epoch`. Both
agree by construction:

* each bucket's items (image × repeats) are shuffled and cut into batches of
  ``batch_size``; a bucket's last batch may be short (it is kept);
* the batches of all buckets are shuffled together;
* every rank takes ``batches[rank::world]``, padded by wrapping around, so each rank has
  ``ceil(batches / world)`` of them;
* an optimizer step happens every ``accumulation`` batches and at the end of the epoch
  (as accelerate's gradient accumulation does), so an epoch has
  ``ceil(batches_per_rank / accumulation)`` steps;
* the images a run sees (:func:`images_consumed`) are the items of the batches the ranks
  really take: the padding batches count, a bucket's short last batch counts short, and a
  run that stops inside an epoch counts that epoch's first steps only.
* a validation split holds out the same images in the plan and the trainer
  (:func:`held_out`), and the validation loss is computed at :func:`validation_steps`.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")


def batches_per_epoch(counts: Mapping[object, int], batch_size: int) -> int:
    """Batches one epoch has over all GPUs: Σ over buckets of ceil(items / batch_size)."""
    return sum(math.ceil(n / batch_size) for n in counts.values() if n > 0)


def batches_per_rank(batches: int, world: int) -> int:
    """Batches each rank sees in one epoch."""
    return math.ceil(batches / world) if batches else 0


def steps_per_epoch(counts: Mapping[object, int], batch_size: int, world: int, accumulation: int) -> int:
    """Optimizer steps in one epoch, exactly as the trainer's loader yields them."""
    per_rank = batches_per_rank(batches_per_epoch(counts, batch_size), world)
    return math.ceil(per_rank / accumulation)


def epoch_batches(items_by_bucket: Mapping[object, Sequence[T]], batch_size: int, seed: int, epoch: int) -> list[list[T]]:
    """The batches of one epoch, in order, before sharding (same seed and epoch → same batches)."""
    rng = random.Random(seed * 100_003 + epoch)
    batches: list[list[T]] = []
    for bucket in sorted(items_by_bucket, key=repr):
        items = list(items_by_bucket[bucket])
        rng.shuffle(items)
        batches.extend(items[i : i + batch_size] for i in range(0, len(items), batch_size))
    rng.shuffle(batches)
    return batches


def shard_batches(batches: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share: ``batches[rank::world]`` padded by wrapping so all ranks are equal."""
    if not batches:
        return []
    per_rank = batches_per_rank(len(batches), world)
    padded = list(batches) + [batches[i % len(batches)] for i in range(per_rank * world - len(batches))]
    return padded[rank::world]


def optimizer_step_due(batch_index: int, batches_in_epoch: int, accumulation: int) -> bool:
    """True after the batch at ``batch_index`` (0-based, this rank) ends an optimizer step."""
    return (batch_index + 1) % accumulation == 0 or batch_index + 1 == batches_in_epoch


def images_consumed(counts: Mapping[object, int], batch_size: int, world: int, accumulation: int, total_steps: int, seed: int = 0) -> int:
    """Images (items) the trainer's loader yields over ``total_steps`` optimizer steps on ``world`` ranks.

    Rank ``r`` takes ``padded[r::world]``, so the first ``k`` batches of every rank are
    ``padded[:k * world]``; an epoch cut short after ``s`` steps takes ``s × accumulation``
    batches per rank. With every batch full (batch size 1, or buckets that divide evenly) this
    is ``batches × batch_size``; otherwise the batch sizes of each epoch's shuffled order count.
    """
    spe = steps_per_epoch(counts, batch_size, world, accumulation)
    if spe == 0 or total_steps <= 0:
        return 0
    per_rank = batches_per_rank(batches_per_epoch(counts, batch_size), world)
    full_epochs, rest = divmod(total_steps, spe)
    taken = [(epoch, per_rank) for epoch in range(full_epochs)] + ([(full_epochs, min(per_rank, rest * accumulation))] if rest else [])
    if all(n % batch_size == 0 for n in counts.values()):
        return sum(k for _, k in taken) * world * batch_size
    key = tuple(sorted(((repr(b), n) for b, n in counts.items() if n > 0)))
    return sum(sum(_padded_sizes(key, batch_size, world, seed, epoch)[: k * world]) for epoch, k in taken)


@lru_cache(maxsize=256)
def _padded_sizes(key: tuple[tuple[str, int], ...], batch_size: int, world: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The sizes of one epoch's batches in the order the ranks take them, padding included."""
    sizes = [len(batch) for batch in epoch_batches({name: range(n) for name, n in key}, batch_size, seed, epoch)]
    padded = sizes + [sizes[i % len(sizes)] for i in range(batches_per_rank(len(sizes), world) * world - len(sizes))]
    return tuple(padded)


@dataclass(frozen=True)
class ScheduleRow:
    """What a run looks like on ``gpus`` GPUs."""

    gpus: int
    effective_batch: int
    steps_per_epoch: int
    epochs: float
    total_steps: int
    images_seen: int


def schedule_row(
    counts: Mapping[object, int],
    batch_size: int,
    accumulation: int,
    gpus: int,
    epochs: int,
    max_steps: int = 0,
    seed: int = 0,
) -> ScheduleRow:
    """One row of the GPU-count table (``seed``: the run's, which orders the batches).

    Epoch mode (``max_steps == 0``): the images seen stay about ``epochs × items`` whatever the
    GPU count (more only by the batches that pad the ranks to equal shares), so more GPUs mean
    fewer steps. Step mode: the step count is fixed, so epochs and images seen grow with the
    GPU count. Images seen are :func:`images_consumed`, what the trainer really takes.
    """
    spe = steps_per_epoch(counts, batch_size, gpus, accumulation)
    effective = batch_size * gpus * accumulation
    total = max_steps if max_steps > 0 else spe * epochs
    run_epochs = round(max_steps / spe, 3) if max_steps > 0 and spe else (0.0 if max_steps > 0 else float(epochs))
    return ScheduleRow(gpus, effective, spe, run_epochs, total, images_consumed(counts, batch_size, gpus, accumulation, total, seed))


def image_key(path: str) -> str:
    """What identifies an image for the validation split: its folder's name and its file name
    (the same whether the planner or the trainer scanned it, from whatever root)."""
    parent, name = os.path.split(os.path.normpath(path))
    return f"{os.path.basename(parent)}/{name}"


def held_out(paths: Sequence[str], split: float) -> set[str]:
    """The paths a validation ``split`` holds out: ``ceil(split × n)`` of the ``n`` images (leaving at
    least one to train on), those whose keys' digests sort first. Deterministic, independent of
    the seed, the order of ``paths`` and the other images' presence."""
    unique = sorted(set(paths))
    if split <= 0 or len(unique) < 2:
        return set()
    count = min(math.ceil(split * len(unique)), len(unique) - 1)
    ranked = sorted(unique, key=lambda p: (hashlib.blake2b(image_key(p).encode(), digest_size=8).digest(), p))
    return set(ranked[:count])


def validation_steps(total_steps: int, every_n_steps: int) -> list[int]:
    """The optimizer steps after which the validation loss is computed: every ``every_n_steps``."""
    return list(range(every_n_steps, total_steps + 1, every_n_steps)) if every_n_steps > 0 else []


def warmup_steps(total_steps: int, warmup: int | float) -> int:
    """Warm-up in optimizer steps of the actual run (a value below 1 is a fraction of the total)."""
    if 0 < warmup < 1:
        return int(round(total_steps * warmup))
    return min(int(warmup), total_steps)
