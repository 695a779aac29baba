"""The schedule maths: what the planner counts is what the trainer's loader really yields."""

from __future__ import annotations

import itertools
import math

import pytest

from core.plan.schedule import (
    batches_per_epoch,
    epoch_batches,
    optimizer_step_due,
    schedule_row,
    shard_batches,
    steps_per_epoch,
    warmup_steps,
)

# Datasets as items per bucket (image × repeats), several subsets already merged in.
DATASETS = [
    {(512, 512): 7},
    {(512, 512): 40, (576, 448): 13, (448, 576): 1},
    {(1024, 1024): 150, (1152, 896): 37, (896, 1152): 22, (1216, 832): 5},
    {(64, 64): 1},
]


def _items(counts: dict) -> dict:
    """Distinct items per bucket, so that batches can be checked for content."""
    return {bucket: [(bucket, i) for i in range(n)] for bucket, n in counts.items()}


def _iterate(counts: dict, batch_size: int, world: int, accumulation: int, seed: int = 1, epoch: int = 0) -> list[int]:
    """Optimizer steps each rank really takes in one epoch, iterating as the trainer does."""
    batches = epoch_batches(_items(counts), batch_size, seed, epoch)
    steps = []
    for rank in range(world):
        mine = shard_batches(batches, rank, world)
        steps.append(sum(optimizer_step_due(i, len(mine), accumulation) for i in range(len(mine))))
    return steps


@pytest.mark.parametrize("counts", DATASETS)
def test_counting_equals_iterating(counts: dict) -> None:
    for batch_size, world, accumulation in itertools.product((1, 2, 3, 4, 8), (1, 2, 3, 4, 8), (1, 2, 4, 5)):
        steps = _iterate(counts, batch_size, world, accumulation)
        assert len(set(steps)) == 1, "every rank must take the same number of optimizer steps"
        assert steps[0] == steps_per_epoch(counts, batch_size, world, accumulation), (batch_size, world, accumulation)


def test_batch_one_is_ceil_items_over_gpus_times_accumulation() -> None:
    # Subsets: 4 images × 10 repeats + 7 × 3 + 1 × 1, spread over three buckets.
    counts = {(512, 512): 40, (576, 448): 21, (448, 576): 1}
    items = 62
    for world, accumulation in itertools.product((1, 2, 3, 4, 8), (1, 2, 3, 4)):
        assert steps_per_epoch(counts, 1, world, accumulation) == math.ceil(items / (world * accumulation))


def test_batches_never_mix_buckets_and_cover_every_item() -> None:
    counts = DATASETS[2]
    for batch_size in (1, 3, 4, 16):
        batches = epoch_batches(_items(counts), batch_size, seed=7, epoch=2)
        assert all(len({bucket for bucket, _ in batch}) == 1 for batch in batches)
        assert all(1 <= len(batch) <= batch_size for batch in batches)
        seen = sorted(item for batch in batches for item in batch)
        assert seen == sorted(item for items in _items(counts).values() for item in items)
        assert len(batches) == batches_per_epoch(counts, batch_size)


def test_epoch_batches_deterministic_per_seed_and_epoch() -> None:
    items = _items(DATASETS[1])
    assert epoch_batches(items, 2, seed=42, epoch=3) == epoch_batches(items, 2, seed=42, epoch=3)
    assert epoch_batches(items, 2, seed=42, epoch=3) != epoch_batches(items, 2, seed=42, epoch=4)
    assert epoch_batches(items, 2, seed=42, epoch=3) != epoch_batches(items, 2, seed=43, epoch=3)


def test_shards_cover_every_batch_with_equal_lengths() -> None:
    for n_batches, world in itertools.product((1, 2, 5, 7, 16, 17), (1, 2, 3, 4, 8)):
        batches = list(range(n_batches))
        shards = [shard_batches(batches, rank, world) for rank in range(world)]
        assert len({len(s) for s in shards}) == 1
        assert set(itertools.chain.from_iterable(shards)) == set(batches)
        # Padding only repeats batches when the count does not divide evenly.
        assert sum(map(len, shards)) == math.ceil(n_batches / world) * world


def test_epoch_mode_keeps_images_seen_whatever_the_gpu_count() -> None:
    counts = {(1024, 1024): 300, (1152, 896): 60}
    rows = [schedule_row(counts, batch_size=2, accumulation=2, gpus=g, epochs=10) for g in (1, 2, 4, 8)]
    # 180 batches of 2: 1, 2 and 4 GPUs share them evenly; 8 GPUs pad to 23 each (184 batches)
    assert [r.images_seen for r in rows] == [3600, 3600, 3600, 3680]
    assert {r.epochs for r in rows} == {10}
    assert [r.effective_batch for r in rows] == [4, 8, 16, 32]
    assert [r.total_steps for r in rows] == [r.steps_per_epoch * 10 for r in rows]
    # More GPUs, fewer steps: about 1/N of them.
    assert rows[0].total_steps == 900 and rows[1].total_steps == 450 and rows[3].total_steps == 120  # 180 batches → 23 per rank → 12 steps


def test_step_mode_grows_epochs_with_gpus() -> None:
    counts = {(512, 512): 100}
    rows = [schedule_row(counts, batch_size=1, accumulation=1, gpus=g, epochs=10, max_steps=400) for g in (1, 2, 4)]
    assert [r.total_steps for r in rows] == [400, 400, 400]
    assert [r.epochs for r in rows] == [4.0, 8.0, 16.0]
    assert [r.images_seen for r in rows] == [400, 800, 1600]


def test_warmup_in_optimizer_steps_of_the_run() -> None:
    assert warmup_steps(1000, 0.1) == 100
    assert warmup_steps(1000, 50) == 50
    assert warmup_steps(30, 50) == 30
    assert warmup_steps(1000, 0) == 0
    # Warm-up given as a fraction follows the GPU count's real step total.
    one, two = (schedule_row({(512, 512): 100}, 1, 1, g, 10) for g in (1, 2))
    assert warmup_steps(one.total_steps, 0.05) == 50 and warmup_steps(two.total_steps, 0.05) == 25


def _trainer_images(counts: dict, batch_size: int, world: int, accumulation: int, total_steps: int, seed: int) -> int:
    """Images every rank's loop takes until ``total_steps`` optimizer steps, iterating as core/train/loop.py does."""
    taken, step, epoch = 0, 0, 0
    while step < total_steps:
        batches = epoch_batches(_items(counts), batch_size, seed, epoch)
        shards = [shard_batches(batches, rank, world) for rank in range(world)]
        for index in range(len(shards[0])):
            taken += sum(len(shard[index]) for shard in shards)
            if optimizer_step_due(index, len(shards[0]), accumulation):
                step += 1
                if step >= total_steps:
                    break
        epoch += 1
    return taken


@pytest.mark.parametrize("counts", DATASETS)
@pytest.mark.parametrize("max_steps", [0, 7, 60])
def test_images_seen_are_what_the_trainers_loop_takes_on_every_gpu_count(counts: dict, max_steps: int) -> None:
    for batch_size, accumulation, gpus in itertools.product((1, 3, 4), (1, 4), (1, 2, 4, 8)):
        row = schedule_row(counts, batch_size, accumulation, gpus, epochs=3, max_steps=max_steps, seed=11)
        assert row.images_seen == _trainer_images(counts, batch_size, gpus, accumulation, row.total_steps, 11), (batch_size, accumulation, gpus)


def test_eight_gpus_at_effective_batch_32_see_32_images_a_step() -> None:
    # the case: 60 steps on 8 GPUs, batch 1 × accumulation 4 = 32 images a step, every step full
    row = schedule_row({(512, 512): 480}, batch_size=1, accumulation=4, gpus=8, epochs=4)
    assert (row.total_steps, row.effective_batch, row.images_seen) == (60, 32, 1920)
    padded = schedule_row({(512, 512): 450}, batch_size=1, accumulation=4, gpus=8, epochs=4)
    assert padded.total_steps == 60 and padded.images_seen == 1824  # 57 batches a rank: the last step of an epoch takes 1 each
