"""Where a training step's time goes: torch.profiler's top operators, sdtui's trainer beside the reference loop.

On the real SD1.5 or SDXL architecture (``bench.real_models``) at 128 px, batch 1, one thread,
bf16: each side is set up in this process, takes ``WARMUP`` steps, then ``STEPS`` steps under
``torch.profiler``; the table lists the operators by self CPU time per step. A tool for
``docs/performance.md``, not a benchmark (it prints no ratio).

    python -m bench.profile_step [--family sd1|sdxl] [--method lora|finetune]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

WARMUP, STEPS = 1, 3
ROWS = 15


def table(prof: Any, steps: int, rows: int = ROWS) -> tuple[list[tuple[str, float, int]], float]:
    """(operator, self CPU ms per step, calls per step) of the ``rows`` costliest operators, and all operators' ms per step."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [(e.key, e.self_cpu_time_total / 1000 / steps, e.count // steps) for e in events[:rows]]
    return top, sum(e.self_cpu_time_total for e in events) / 1000 / steps


def profile_ours(model: Path, dataset: Path, family: str, method: str, work: Path) -> Any:
    """Set up the sdtui Trainer on a run folder and profile ``STEPS`` optimizer steps after ``WARMUP``."""
    from torch.profiler import ProfilerActivity, profile

    from bench.bench_real_cpu import SETTINGS
    from bench.runs import write_run
    from core.train.loop import Trainer

    trainer = Trainer(write_run(work / "ours", model, dataset, family, method, SETTINGS, WARMUP + STEPS))
    trainer.setup()
    data = trainer.session.data
    batches = list(data.iterate(0, data.for_epoch(0), 0))

    def step(n: int) -> None:
        _, batch, _ = batches[n % len(batches)]
        trainer.stepper.micro_step(batch, n, True, 1)
        trainer.stepper.optimizer_step()

    for n in range(WARMUP):
        step(n)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for n in range(WARMUP, WARMUP + STEPS):
            step(n)
    trainer.metrics.close()
    return prof


def profile_reference(model: Path, dataset: Path, family: str, method: str) -> Any:
    """The reference loop with the profiler started after ``WARMUP`` steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.bench_real_cpu import RESOLUTION
    from bench.reference_loop import ReferenceSettings, kohya_items, load_components, train_reference

    lora = method == "lora"
    components = load_components(model, family, load_dtype=torch.bfloat16, lora=lora)
    settings = ReferenceSettings(resolution=RESOLUTION, batch_size=1, lora=lora, mixed_precision="bf16")
    prof = profile(activities=[ProfilerActivity.CPU])

    def on_step(record: Any) -> None:
        if record.step == WARMUP:
            prof.start()
        elif record.step == WARMUP + STEPS:
            prof.stop()

    train_reference(components, kohya_items(dataset), settings, WARMUP + STEPS, on_step=on_step)
    return prof


def main(argv: list[str] | None = None) -> list[str]:
    """Both tables, side by side in markdown."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    from bench.bench_real_cpu import RESOLUTION, default_models_dir
    from bench.real_models import build_real, make_dataset

    parser = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1", choices=("sd1", "sdxl"))
    parser.add_argument("--method", default="lora", choices=("lora", "finetune"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = build_real(args.family, default_models_dir() / args.family)
    with tempfile.TemporaryDirectory(prefix="sdtui-profile-") as tmp:
        work = Path(tmp)
        dataset = make_dataset(work / "images", RESOLUTION)
        ours = table(profile_ours(model, dataset, args.family, args.method, work), STEPS)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        ref = table(profile_reference(model, dataset, args.family, args.method), STEPS)
    lines = [
        f"{args.family} {args.method}, 128 px, batch 1, bf16, 1 thread: self CPU ms per step (calls per step)",
        "",
        "| sdtui operator | ms | calls | reference operator | ms | calls |",
        "|---|---|---|---|---|---|",
    ]
    for (a, ams, acalls), (b, bms, bcalls) in zip(ours[0], ref[0]):
        lines.append(f"| `{a}` | {ams:.0f} | {acalls} | `{b}` | {bms:.0f} | {bcalls} |")
    lines.append(f"| all operators | {ours[1]:.0f} | | all operators | {ref[1]:.0f} | |")
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
