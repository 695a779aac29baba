"""Incremental readers: metrics tail (partial lines, replacement), series, log tail, samples, downsampling."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from core.monitor import LogTail, MetricsSeries, MetricsTail, SampleIndex, downsample, downsample_xy


def line(**fields: object) -> str:
    return json.dumps(fields) + "\n"


def test_metrics_tail_returns_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.poll() == []
    path.write_text(line(type="step", step=1, loss=0.5) + '{"type": "step", "st')
    assert [r["step"] for r in tail.poll()] == [1]
    with open(path, "a") as handle:
        handle.write('ep": 2, "loss": 0.4}\n' + line(type="event", level="info", message="hi"))
    records = tail.poll()
    assert [r["type"] for r in records] == ["step", "event"] and records[0]["step"] == 2
    assert tail.poll() == [] and not tail.reset


def test_metrics_tail_restarts_when_the_file_is_replaced_or_truncated(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(type="step", step=1) + line(type="step", step=2))
    tail = MetricsTail(path)
    assert len(tail.poll()) == 2
    replacement = tmp_path / "new.jsonl"
    replacement.write_text(line(type="step", step=7))
    os.replace(replacement, path)
    assert [r["step"] for r in tail.poll()] == [7] and tail.reset
    path.write_text("")
    assert tail.poll() == [] and tail.reset
    path.write_text(line(type="step", step=9))
    assert [r["step"] for r in tail.poll()] == [9]


def test_metrics_tail_skips_a_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(type="step", step=1) + "garbage{\n" + line(type="step", step=2))
    tail = MetricsTail(path)
    assert [r["step"] for r in tail.poll()] == [1, 2] and tail.skipped == 1


def test_series_from_tail_and_reset(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        line(type="step", step=1, loss=0.9, lr=1e-4, images_per_s=2.0, mem=[{"allocated": 1, "peak": 2}])
        + line(type="step", step=2, loss=None, lr=1e-4, images_per_s=2.5)
        + line(type="sample", step=2, prompt_index=0, prompt="a dog", path="samples/x.png")
        + line(type="checkpoint", step=2, path="checkpoints/step-2")
    )
    tail, series = MetricsTail(path), MetricsSeries()
    assert series.update(tail) == 4
    assert list(series.steps) == [1.0, 2.0] and series.loss[0] == 0.9 and math.isnan(series.loss[1])
    assert series.samples[0]["prompt"] == "a dog" and series.checkpoints[0]["step"] == 2
    assert series.last_step["step"] == 2
    path.write_text(line(type="step", step=1, loss=0.1))
    series.update(tail)
    assert list(series.steps) == [1.0] and list(series.loss) == [0.1]


def test_series_keeps_the_last_step_memory(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(type="step", step=5, loss=0.2, mem=[{"allocated": 10, "peak": 20}]))
    series = MetricsSeries()
    series.update(MetricsTail(path))
    assert series.last_step == {"type": "step", "step": 5, "loss": 0.2, "mem": [{"allocated": 10, "peak": 20}]}


def test_log_tail_first_poll_gives_last_lines_then_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = LogTail(path, lines=5)
    assert tail.poll() == [f"line {i}" for i in range(995, 1000)]
    with open(path, "a") as handle:
        handle.write("new 1\nprogress 10%\rprogress 20%\npartial")
    assert tail.poll() == ["new 1", "progress 10%", "progress 20%"]
    with open(path, "a") as handle:
        handle.write(" done\n")
    assert tail.poll() == ["partial done"]
    path.write_text("fresh\n")
    assert tail.poll() == ["fresh"] and tail.reset
    assert list(tail.recent) == ["fresh"]


def test_log_tail_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert LogTail(tmp_path / "nope.log").poll() == []


def test_sample_index_finds_new_finished_pngs(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    index = SampleIndex(samples)
    assert index.poll() == []
    samples.mkdir()
    for name in ("step000010_p00.png", "step000010_p01.png", "step-000020_p0.png", ".step000030_p00.png.x1y2.tmp", "notes.txt"):
        (samples / name).write_bytes(b"x")
    new = index.poll()
    assert [(s.step, s.prompt_index) for s in new] == [(10, 0), (10, 1), (20, 0)]
    assert index.poll() == []
    assert index.latest().step == 20
    assert [s.step for s in index.by_prompt()[0]] == [10, 20]


def test_downsample_keeps_spikes_and_width() -> None:
    values = [1.0] * 10_000
    values[1234] = 50.0
    values[7777] = -3.0
    thin = downsample(values, 100)
    assert len(thin) <= 100 and max(thin) == 50.0 and min(thin) == -3.0
    assert downsample([1.0, 2.0], 10) == [1.0, 2.0]
    assert downsample([], 10) == []
    xs, ys = downsample_xy(list(range(10_000)), values, 50)
    assert 1234 in xs and ys[xs.index(1234)] == 50.0 and xs == sorted(xs)


def test_downsample_skips_nan() -> None:
    values = [float("nan")] * 50 + [float(i) for i in range(50)]
    thin = downsample(values, 10)
    assert 49.0 in thin and 0.0 in thin


def test_downsample_keeps_each_buckets_first_minimum_and_maximum():
    """The numpy thinning against the rule spelled out in plain Python, on random series with NaNs."""
    import math
    import random

    from core.monitor.downsample import downsample_index

    def by_hand(values, width):
        n = len(values)
        if width <= 0 or n == 0:
            return []
        if n <= width:
            return list(range(n))
        buckets = max(1, width // 2)
        kept = []
        for b in range(buckets):
            lo, hi = b * n // buckets, (b + 1) * n // buckets
            finite = [i for i in range(lo, hi) if not math.isnan(values[i])]
            if not finite:
                kept.append(lo)
                continue
            low = min(finite, key=lambda i: (values[i], i))
            high = min(finite, key=lambda i: (-values[i], i))
            kept.extend(sorted({low, high}))
        return kept

    rng = random.Random(7)
    for _ in range(500):
        values = [rng.choice([math.nan, float(rng.randint(0, 3)), rng.random()]) for _ in range(rng.randint(0, 200))]
        width = rng.randint(0, 40)
        assert downsample_index(values, width) == by_hand(values, width)


def _long_run(path: Path, attempts: list[tuple[int, int, float]]) -> None:
    """A metrics file over the preview size: each attempt ``(resume_step, last_step, loss)``."""
    with path.open("w", encoding="utf-8") as out:
        for resume, last, loss in attempts:
            out.write(line(type="attempt", resume_step=resume, time=0.0))
            for step in range(resume + 1, last + 1):
                out.write(line(type="step", step=step, loss=loss, lr=1e-4, time=float(step), note="x" * 40))


def test_preview_of_a_resumed_run_shows_only_the_latest_attempts_steps(tmp_path: Path) -> None:
    from core.monitor.preview import PREVIEW_MIN_BYTES, sampled_steps

    path = tmp_path / "metrics.jsonl"
    # the first attempt reached step 80,000 and was resumed from the checkpoint at step 50,000
    _long_run(path, [(0, 80_000, 1.0), (50_000, 90_000, 2.0)])
    assert path.stat().st_size > PREVIEW_MIN_BYTES

    lines = sampled_steps(path)

    steps = [int(x.step) for x in lines]
    assert steps == sorted(set(steps)) and len(steps) > 500
    assert steps[-1] == 90_000
    assert all(x.loss == (2.0 if x.step > 50_000 else 1.0) for x in lines)


def test_preview_of_a_small_or_missing_file_leaves_it_to_the_full_read(tmp_path: Path) -> None:
    from core.monitor.preview import sampled_steps

    small = tmp_path / "metrics.jsonl"
    _long_run(small, [(0, 100, 1.0)])
    assert sampled_steps(small) is None
    assert sampled_steps(tmp_path / "absent.jsonl") is None


#: What torchao's import logged on a CPU-only torch (diffusers imports torchao), one line each.
TORCHAO_IMPORT_NOISE = [
    "Failed to load /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library: /venv/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so",
    "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`",
    "W1206 22:35:25.810000 10865 torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an opaque value type. Calling register_constant() on Enum subclasses is deprecated and will be an error in a future release.",
]


def test_torchaos_import_noise_is_known_noise_and_a_real_failure_is_not() -> None:
    from core.monitor.logs import is_noise

    assert all(is_noise(line) for line in TORCHAO_IMPORT_NOISE)
    assert not is_noise("OSError: Failed to load /data/model/unet/diffusion_pytorch_model.safetensors")
    assert not is_noise("RuntimeError: CUDA out of memory")


def test_importing_diffusers_after_quieting_prints_none_of_the_noise() -> None:
    """What the trainer and the CLI do first: the lines are dropped where they are logged, so
    train.log (the trainer's stderr) and the terminal never get them."""
    import subprocess
    import sys

    from core.monitor.logs import is_noise

    code = "from core.monitor.logs import quiet_library_loggers; quiet_library_loggers(); import diffusers, torchao; from diffusers import UNet2DConditionModel; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True, cwd=Path(__file__).resolve().parents[1])
    assert "imported" in done.stdout
    assert not [line for line in done.stderr.splitlines() if is_noise(line) or "torchao" in line or "_pytree" in line], done.stderr
