"""How fast each optimizer steps parameters on the CPU: what a full fine-tune's swapped blocks cost
per optimizer step (core.plan.throughput.CPU_OPTIMIZER_PARAMS_PER_S).

``python -m bench.measure_cpu_optimizers`` steps one fp32 tensor of ``--params`` parameters (a
4000-wide matrix, as a transformer's linear weights are) with each optimizer as the trainer makes
it (core.train.model.optimizer.make_optimizer), after one warm-up step that creates the state, and
prints millions of parameters per second with torch's thread count; nothing is written.
"""

from __future__ import annotations

import argparse
import time

WIDTH = 4000


def measure(name: str, params: int, repeats: int) -> float:
    """Parameters per second ``name`` steps on the CPU (the mean of ``repeats`` steps after a warm-up)."""
    import torch

    from core.train.model.optimizer import make_optimizer

    weight = torch.nn.Parameter(torch.randn(params // WIDTH, WIDTH))
    weight.grad = torch.randn_like(weight) * 1e-3
    optimizer = make_optimizer(name, [weight], 1e-4)
    optimizer.step()
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    return params * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """Print each optimizer's CPU rate."""
    import torch

    from core.settings import OPTIMIZERS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=20_000_000, help="parameters of the stepped tensor")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per optimizer")
    args = parser.parse_args(argv)
    print(f"{torch.get_num_threads()} CPU threads, {args.params / 1e6:.0f} M parameters")
    for name in OPTIMIZERS:
        print(f"{name:20s} {measure(name, args.params, args.repeats) / 1e6:8.0f} M params/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
