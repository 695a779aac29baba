"""Run folders with fixed contents and timestamps for the TUI tests and snapshots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

T0 = 1_760_000_000.0  # a fixed "now" for ages in snapshots
PROMPTS = ["a red circle, simple shape --w 64 --h 64", "a blue square, simple shape --w 64 --h 64"]


def sample_png(path: Path, step: int, prompt_index: int) -> Path:
    """A deterministic 64×64 sample: the shape gets sharper with the step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), (235, 235, 240))
    draw = ImageDraw.Draw(image)
    blur = max(0, 20 - step // 6)
    colour = (220, 40 + blur * 5, 40) if prompt_index == 0 else (40, 80, 220 - blur * 5)
    box = (12 - blur // 2, 12 - blur // 2, 52 + blur // 2, 52 + blur // 2)
    (draw.ellipse if prompt_index == 0 else draw.rectangle)(box, fill=colour)
    image.save(path)
    return path


def make_run(runs_dir: Path, run_id: str, state: str = "finished", steps: int = 120, total: int = 120, error: str | None = None, hint: str | None = None, created: float = T0 - 3600) -> Path:
    """A run folder as the trainer leaves it: status, metrics with a falling loss, samples, log."""
    run = runs_dir / run_id
    (run / "samples").mkdir(parents=True, exist_ok=True)
    (run / "run.toml").write_text(f'name = "{run_id}"\n')
    lines = []
    for step in range(1, steps + 1):
        loss = 0.05 + 0.4 * math.exp(-step / 30) + 0.03 * math.sin(step * 1.7)
        lines.append(
            {
                "type": "step",
                "time": created + step,
                "step": step,
                "epoch": 1 + step // 61,
                "loss": round(loss, 5),
                "lr": 1e-3,
                "images_per_s": 6.5,
                "step_time_s": 0.31,
                "mem": [{"rank": 0, "allocated": 900 * 2**20, "peak": 1200 * 2**20}],
            }
        )
        if step % 40 == 0:
            for p, prompt in enumerate(PROMPTS):
                name = f"samples/step-{step:06d}_p{p}.png"
                sample_png(run / name, step, p)
                lines.append({"type": "sample", "time": created + step, "step": step, "prompt_index": p, "prompt": prompt, "path": name})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run / "train.log").write_text("".join(f"step {s}: loss {ln['loss']}\n" for s, ln in enumerate(entry for entry in lines if entry["type"] == "step")))
    status = {"state": state, "step": steps, "total_steps": total, "created_at": created, "updated_at": created + steps, "pids": []}
    if error:
        status.update(error=error, hint=hint)
    (run / "status.json").write_text(json.dumps(status))
    return run


def make_runs(runs_dir: Path) -> Path:
    """Three runs: finished, failed with a hint, stopped."""
    make_run(runs_dir, "shapes-lora-20251009-090000", "finished", created=T0 - 7200)
    make_run(
        runs_dir,
        "dog-lora-20251009-093000",
        "failed",
        steps=37,
        total=400,
        created=T0 - 5400,
        error="out of memory at step 37",
        hint="restart with the recipe 'sd1-lora-8gb', which fits this GPU",
    )
    make_run(runs_dir, "cat-dreambooth-20251009-100000", "stopped", steps=80, total=300, created=T0 - 3600)
    return runs_dir


def sync(test):
    """Run an ``async def`` test with asyncio.run (no async pytest plugin needed)."""
    import asyncio
    import functools

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


async def until(pilot, condition, timeout: float = 20.0) -> None:
    """Wait (polling) until ``condition()`` is true: worker threads finish when they finish."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout:.0f} s"
        await pilot.pause(0.05)
