"""Trainer throughput: the sdtui trainer against the diffusers-example reference loop.

Both train the same tiny SD1 model (``core.train.tiny``) on the same generated kohya folder
(square images, so both see the same 64×64 crops) with LoRA rank 16 on the UNet attention,
batch 1, one compute thread each. Ours runs as users run it,
``python -m core.train RUN_DIR`` on a run folder, with its default speed settings (latents
and text-encoder outputs cached); the reference is ``bench.reference_loop``. They alternate
(ours, ref, ours, ref …) so machine noise hits both; each run's first steps are warm-up.

Each comparison runs at fp32 and at bf16 autocast on both sides; a third line sets ours'
default (bf16) against the example's default (fp32). The bench watches each child's JSON
lines and takes the wall clock and the CPU seconds (the training process and its loader
workers) from the end of warm-up to the last step, and each step's wall time. On this shared
machine the neighbours' load (printed) stretches some steps by 2-3x, so the ratio is taken at
the median step of all rounds, with the window means and ours' self-reported
``images_per_s`` beside it. ratio = ours / reference images/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import with_bytecode

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 64
STEPS = 30
WARMUP = 6
ROUNDS = 3
TARGET_RATIO = 1.5
#: Precisions both sides run at: fp32, and bf16 autocast (the settings' default; this CPU has
#: AVX512-BF16). "no" is also the diffusers examples' default.
PRECISIONS = ("no", "bf16")
#: Ours: the schema's defaults minus what only saves memory (no checkpointing, plain AdamW like
#: the reference); mixed_precision is set per run from PRECISIONS.
OUR_SETTINGS: dict[str, Any] = {
    "gradient_checkpointing": False,
    "optimizer": "adamw",
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "batch_size": 1,
    "resolution": RESOLUTION,
    "min_bucket_reso": RESOLUTION,
    "max_bucket_reso": 2 * RESOLUTION,
    "bucket_reso_steps": 32,
    "lora_rank": 16,
    "lora_alpha": 16.0,
}
COLOURS = ((220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40), (160, 60, 200), (240, 140, 30), (30, 30, 30), (240, 240, 240))
SHAPES = ("circle", "square")


def make_dataset(root: Path, per_subset: int = 8, size: int = 96) -> Path:
    """A kohya folder of square shape images with captions: ``4_sks shape`` and ``2_ohwx shape``."""
    from PIL import Image, ImageDraw

    for subset, folder in enumerate(("4_sks shape", "2_ohwx shape")):
        target = root / folder
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_subset):
            fg, bg = COLOURS[(i + subset) % len(COLOURS)], COLOURS[(i + 3 + subset) % len(COLOURS)]
            image = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(image)
            box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
            shape = SHAPES[(i + subset) % 2]
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=fg)
            image.save(target / f"img{i:02d}.png")
            (target / f"img{i:02d}.txt").write_text(f"{folder.split('_', 1)[1]}, a {shape}", encoding="utf-8")
    return root


def write_run(run_dir: Path, model: Path, dataset: Path, steps: int, precision: str = "no") -> Path:
    """A run folder with run.toml for the sdtui trainer: step mode, no samples or saves on the way."""
    from core.config import new_config, save_config

    subsets = []
    for folder in sorted(p for p in dataset.iterdir() if p.is_dir()):
        repeats, _, token = folder.name.partition("_")
        subsets.append({"path": str(folder), "repeats": int(repeats), "token": token, "is_reg": False})
    config = new_config(
        name="bench",
        model_path=str(model),
        family="sd1",
        method="lora",
        subsets=subsets,
        settings={**OUR_SETTINGS, "mixed_precision": precision},
        schedule={
            "epochs": 0, "max_steps": steps, "learning_rate": 1e-4, "lr_scheduler": "constant",
            "save_every_epochs": 0, "save_every_steps": 0, "sample_every_steps": 0, "sample_at_start": False,
        },
        prompts=[],
    )
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "run.toml")
    return run_dir


def child_env() -> dict[str, str]:
    """Offline, repo importable, one compute thread each.

    One thread, because this machine's two cores are shared: with two OpenMP threads a busy
    neighbour descheduling one of them makes every parallel region wait (steps measured 4-8 s
    instead of 1 s under a load of 8), and both sides would mostly measure the neighbours.
    """
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return with_bytecode(env)


def run_watched(
    argv: list[str], jsonl: Path, what: str, warmup: int = WARMUP, steps: int = STEPS, env: dict[str, str] | None = None, kill_after: bool = False,
) -> dict[str, float]:
    """Run a training child, watching its JSON lines; wall and CPU seconds over steps ``warmup``..``steps``.

    ``first_seen_s`` is when the first step line appeared. ``kill_after`` ends the child once step ``steps`` is seen (a real-size full fine-tune would
    otherwise spend minutes writing its final model, which nobody measures).

    CPU seconds count the child and every process under it (data loader workers included), so
    the figure holds when other work shares the machine; the wall seconds are what a user waits.
    """
    import psutil

    start = time.perf_counter()
    errors = tempfile.TemporaryFile("w+", encoding="utf-8")  # a file, not a pipe: a chatty child never blocks on it
    proc = subprocess.Popen(argv, cwd=REPO, env=env or child_env(), stdout=subprocess.DEVNULL, stderr=errors, text=True)
    watched = psutil.Process(proc.pid)
    marks: dict[int, tuple[float, float]] = {}
    offset = 0
    first_seen = None
    try:
        while proc.poll() is None and steps not in marks:
            offset, seen = _new_steps(jsonl, offset)
            if seen and first_seen is None:
                first_seen = time.perf_counter() - start
            for step in seen:
                if step in (warmup, steps):
                    marks[step] = (time.perf_counter(), _tree_cpu(watched))
            time.sleep(0.01)
        if kill_after and steps in marks and proc.poll() is None:
            proc.kill()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.seek(0)
        stderr = errors.read()
        errors.close()
    if (proc.returncode != 0 and not (kill_after and len(marks) == 2)) or len(marks) < 2:
        tail = (stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    (t0, c0), (t1, c1) = marks[warmup], marks[steps]
    return {"wall": t1 - t0, "cpu": c1 - c0, "process_s": time.perf_counter() - start, "first_seen_s": first_seen}


def _new_steps(path: Path, offset: int) -> tuple[int, list[int]]:
    """Step numbers of the complete new lines of a JSON lines file since ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return offset, []
    end = data.rfind(b"\n") + 1
    steps = []
    for line in data[:end].splitlines():
        record = json.loads(line)
        if record.get("type", "step") == "step" and "step" in record:
            steps.append(int(record["step"]))
    return offset + end, steps


def _tree_cpu(proc: Any) -> float:
    """User + system seconds of ``proc``, its reaped children and its live descendants."""
    import psutil

    total = 0.0
    try:
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


def ours(workdir: Path, model: Path, dataset: Path, precision: str, index: int) -> dict[str, Any]:
    """One run of the sdtui trainer, measured over steps WARMUP..STEPS."""
    run_dir = write_run(workdir / f"ours-{precision}-{index}", model, dataset, STEPS, precision)
    result: dict[str, Any] = run_watched([sys.executable, "-m", "core.train", str(run_dir)], run_dir / "metrics.jsonl", "the sdtui trainer")
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("type") == "step"]
    result["reported_ips"] = statistics.median(r["images_per_s"] for r in records[WARMUP:] if r.get("images_per_s"))
    stamps = [r["time"] for r in records[WARMUP - 1:]]
    result["steps_s"] = [b - a for a, b in zip(stamps, stamps[1:])]
    return result


def reference(workdir: Path, model: Path, dataset: Path, precision: str, index: int) -> dict[str, Any]:
    """One run of the reference loop, measured over steps WARMUP..STEPS."""
    out = workdir / f"ref-{precision}-{index}.jsonl"
    result: dict[str, Any] = run_watched(
        [sys.executable, "-m", "bench.reference_loop", "--model", str(model), "--data", str(dataset), "--steps", str(STEPS),
         "--out", str(out), "--resolution", str(RESOLUTION), "--batch-size", str(OUR_SETTINGS["batch_size"]),
         "--rank", str(OUR_SETTINGS["lora_rank"]), "--mixed-precision", precision],
        out, "the reference loop",
    )
    result["steps_s"] = [r["step_time_s"] for r in read_jsonl(out)[WARMUP:]]
    return result


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def demo_first_step(workdir: Path) -> str:
    """Launch to first step on the tiny demo, as the TUI's Launch does it (``start_run``: supervisor, accelerate launch, trainer).

    The trainer's ``first_step`` record gives its phases and its seconds since its own process
    started; the rest of the time from the call is the launcher (supervisor, accelerate's CLI).
    """
    from core.demo import prepare_demo
    from core.launch.control import stop_run
    from core.launch.start import start_run

    demo = prepare_demo(workdir / "demo")
    start = time.time()
    run = start_run(demo.config, demo.runs, overrides=["schedule.sample_at_start=false"])
    first: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 300
        while not first and time.monotonic() < deadline:
            time.sleep(0.2)
            if run.metrics.is_file():
                text = run.metrics.read_text(encoding="utf-8")
                records = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
                first = next((r for r in records if r.get("type") == "phase" and r.get("phase") == "first_step"), {})
    finally:
        stop_run(run)
    if not first:
        return "first_step_tiny_demo: no first step within 300 s ratio=n/a"
    total = float(first["time"]) - start
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in first.get("phases", {}).items())
    launcher = total - float(first["since_start_s"])
    return (
        f"first_step_tiny_demo: Launch to the first optimizer step {total:.1f} s: launcher (supervisor, accelerate launch) "
        f"{launcher:.1f} s, then the trainer {first['since_start_s']:.1f} s ({phases}); load avg {os.getloadavg()[0]:.1f} "
        f"(no reference: the examples have no launcher) ratio=n/a"
    )


def main() -> list[str]:
    """Alternate ours and the reference at each precision, ``ROUNDS`` times; one line per comparison."""
    from core.demo import build_model

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-trainer-") as tmp:
        workdir = Path(tmp)
        model = build_model(workdir / "model")
        dataset = make_dataset(workdir / "dataset")
        for index in range(ROUNDS):
            for precision in PRECISIONS:
                results.setdefault(("ours", precision), []).append(ours(workdir, model, dataset, precision, index))
                results.setdefault(("ref", precision), []).append(reference(workdir, model, dataset, precision, index))
    images = (STEPS - WARMUP) * int(OUR_SETTINGS["batch_size"])
    for runs in results.values():
        for result in runs:
            result["ips"] = images / result["wall"]
            result["ipcs"] = images / result["cpu"]
    load = os.getloadavg()[1]
    lines = [compare(f"trainer_tiny_sd1_lora_{p}", results[("ours", p)], results[("ref", p)], f"both {p}", load) for p in PRECISIONS]
    lines.append(compare(
        "trainer_tiny_sd1_lora_defaults", results[("ours", "bf16")], results[("ref", "no")],
        "ours bf16 (the settings' default) vs the example's default fp32", load,
    ))
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-demo-") as tmp:
        lines.append(demo_first_step(Path(tmp)))
    return lines


def compare(label: str, mine: list[dict[str, Any]], theirs: list[dict[str, Any]], what: str, load: float) -> str:
    """One result line; ratio = ours / reference images/s at the median step of all their rounds.

    The median step (wall time from one step record to the next, so everything the loop does
    counts) shrugs off the steps a neighbour's burst stretched; the window means (images over
    the whole steady window, wall and CPU) are printed beside it.
    """
    batch = int(OUR_SETTINGS["batch_size"])
    our_step, ref_step = (statistics.median(t for r in side for t in r["steps_s"]) for side in (mine, theirs))
    our_ips, ref_ips = (statistics.median(r["ips"] for r in side) for side in (mine, theirs))
    our_cpu, ref_cpu = (statistics.median(r["ipcs"] for r in side) for side in (mine, theirs))
    ratio = ref_step / our_step
    verdict = "met" if ratio >= TARGET_RATIO else f"missed by {TARGET_RATIO - ratio:.2f}"
    return (
        f"{label}: ours {batch / our_step:.2f} img/s at the median step (window {our_ips:.2f} img/s, runs {_runs(mine)}; "
        f"{our_cpu:.2f} img/CPU-s; self-reported {statistics.median(r['reported_ips'] for r in mine):.2f}; "
        f"process {statistics.median(r['process_s'] for r in mine):.0f} s) vs reference {batch / ref_step:.2f} img/s "
        f"(window {ref_ips:.2f} img/s, runs {_runs(theirs)}; {ref_cpu:.2f} img/CPU-s; process "
        f"{statistics.median(r['process_s'] for r in theirs):.0f} s); {what}, {RESOLUTION}px batch {batch}, 1 thread, "
        f"steps {WARMUP + 1}-{STEPS}, {len(mine)} alternating rounds, load avg {load:.1f}; window ratio {our_ips / ref_ips:.2f}; "
        f"target {TARGET_RATIO}x {verdict} ratio={ratio:.2f}"
    )


def _runs(results: list[dict[str, float]]) -> str:
    return "/".join(f"{r['ips']:.2f}" for r in results)


if __name__ == "__main__":
    for line in main():
        print(line)
