"""One protocol for the caches that the ranks of a DDP run fill together: latents, text-encoder
outputs and class images.

Every rank cuts the same job list the same way, job ``n`` to rank ``n mod world`` whatever is on
disk yet (a rank that is quick to write its share cannot change another rank's share, which would
leave jobs undone). Each rank reuses the valid entries of its share, makes the rest, all wait once
at the barrier for the slowest share, then every rank adopts the entries of the whole list.
Nobody waits through the whole list's work at a collective (the NCCL time-out sd-scripts users
meet when rank 0 caches alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Job = TypeVar("Job")


def fill_shared(
    jobs: Sequence[Job],
    rank: int,
    world: int,
    barrier: Callable[[], None] | None,
    make: Callable[[list[Job]], None],
    adopt: Callable[[Job], None],
    reuse: Callable[[Job], object | None] | None = None,
) -> int:
    """Run the share/reuse/barrier protocol over ``jobs``; return how many of this rank's share were reused.

    ``reuse(job)`` keeps a valid existing entry of one job of this rank's share and returns it, or
    returns None when the job must be made (not there, or damaged: it is made again and replaced);
    without ``reuse`` every job of the share is made. ``make(missing)`` makes this rank's missing
    jobs (in batches of its choosing; called with an empty list too). ``barrier`` is called once
    when ``world`` > 1. ``adopt(job)`` is then called for every job in order, this rank's too, and
    skips what this rank holds already.
    """
    missing: list[Job] = []
    reused = 0
    for job in jobs[rank::world]:
        if reuse is None or reuse(job) is None:
            missing.append(job)
        else:
            reused += 1
    make(missing)
    if world > 1 and barrier is not None:
        barrier()
    for job in jobs:
        adopt(job)
    return reused
