"""Trainer throughput: the sdtui trainer against the diffusers-example reference loop.

Both train the same tiny SD1 model (``core.train.tiny``) on the same generated kohya folder
(square images, so both see the same 64×64 crops) with LoRA rank 16 on the UNet attention,
batch 1, fp32 weights. Ours runs as users run it, ``python -m core.train RUN_DIR`` on a run
folder, with its default speed settings (latents and text-encoder outputs cached); the
reference is ``bench.reference_loop``. They alternate (ours, ref, ours, ref …) so machine
noise hits both; each run's first steps are warm-up and skipped. Throughput is measured on
the wall clock between step records (ours also reports its own ``images_per_s``, printed
beside it). ratio = ours / reference images/s.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 64
STEPS = 50
WARMUP = 10
ROUNDS = 2
TARGET_RATIO = 1.5
#: Ours: the schema's defaults with what a CPU can use (no autocast dtype faster than fp32 here,
#: no memory pressure so no checkpointing, plain AdamW like the reference).
OUR_SETTINGS: dict[str, Any] = {
    "mixed_precision": "no",
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


def write_run(run_dir: Path, model: Path, dataset: Path, steps: int) -> Path:
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
        settings=dict(OUR_SETTINGS),
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
    """Offline, repo importable, torch free to use both cores (as a user's run would)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("OMP_NUM_THREADS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_checked(argv: list[str], what: str) -> float:
    """Run a child to the end; raise with its last error line if it fails. Returns wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    return time.perf_counter() - start


def ours(workdir: Path, model: Path, dataset: Path, index: int) -> dict[str, float]:
    """One run of the sdtui trainer; its steady-state throughput."""
    run_dir = write_run(workdir / f"ours-{index}", model, dataset, STEPS)
    wall = run_checked([sys.executable, "-m", "core.train", str(run_dir)], "the sdtui trainer")
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("type") == "step"]
    result = steady_state(records, "time")
    result["reported_ips"] = statistics.median(r["images_per_s"] for r in records[WARMUP:] if r.get("images_per_s"))
    result["process_s"] = wall
    return result


def reference(workdir: Path, model: Path, dataset: Path, index: int) -> dict[str, float]:
    """One run of the reference loop; its steady-state throughput."""
    out = workdir / f"ref-{index}.jsonl"
    wall = run_checked(
        [sys.executable, "-m", "bench.reference_loop", "--model", str(model), "--data", str(dataset), "--steps", str(STEPS),
         "--out", str(out), "--resolution", str(RESOLUTION), "--batch-size", str(OUR_SETTINGS["batch_size"]),
         "--rank", str(OUR_SETTINGS["lora_rank"])],
        "the reference loop",
    )
    records = read_jsonl(out)
    clock = 0.0
    for record in records:
        clock += record["step_time_s"]
        record["clock"] = clock
    result = steady_state(records, "clock")
    result["process_s"] = wall
    return result


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def steady_state(records: list[dict[str, Any]], clock_key: str) -> dict[str, float]:
    """Images/s on the wall clock from the end of warm-up step ``WARMUP`` to the last step."""
    if len(records) <= WARMUP + 1:
        raise RuntimeError(f"only {len(records)} step records; the run needs more than {WARMUP + 1}")
    window = records[WARMUP:]
    images = sum(_images(r) for r in window[1:])
    seconds = window[-1][clock_key] - window[0][clock_key]
    return {"ips": images / seconds, "step_s": seconds / (len(window) - 1)}


def _images(record: dict[str, Any]) -> float:
    ips, step_s = record.get("images_per_s"), record.get("step_time_s")
    return round(ips * step_s) if ips and step_s else int(OUR_SETTINGS["batch_size"])


def main() -> list[str]:
    """Alternate ours and the reference ``ROUNDS`` times; one result line."""
    from core.demo import build_model

    with tempfile.TemporaryDirectory(prefix="sdtui-bench-trainer-") as tmp:
        workdir = Path(tmp)
        model = build_model(workdir / "model")
        dataset = make_dataset(workdir / "dataset")
        mine, theirs = [], []
        for index in range(ROUNDS):
            mine.append(ours(workdir, model, dataset, index))
            theirs.append(reference(workdir, model, dataset, index))
    our_ips = statistics.median(r["ips"] for r in mine)
    ref_ips = statistics.median(r["ips"] for r in theirs)
    ratio = our_ips / ref_ips
    verdict = "met" if ratio >= TARGET_RATIO else f"missed by {TARGET_RATIO - ratio:.2f}"
    return [
        f"trainer_tiny_sd1_lora: ours {our_ips:.2f} img/s ({_fmt(mine, 'ips')}; self-reported {statistics.median(r['reported_ips'] for r in mine):.2f}; "
        f"process {statistics.median(r['process_s'] for r in mine):.1f} s) vs reference {ref_ips:.2f} img/s ({_fmt(theirs, 'ips')}; "
        f"process {statistics.median(r['process_s'] for r in theirs):.1f} s), {RESOLUTION}px batch {OUR_SETTINGS['batch_size']}, "
        f"steps {WARMUP + 1}-{STEPS} of {STEPS}, {ROUNDS} alternating rounds; target {TARGET_RATIO}x {verdict} ratio={ratio:.2f}"
    ]


def _fmt(results: list[dict[str, float]], key: str) -> str:
    return "runs " + "/".join(f"{r[key]:.2f}" for r in results)


if __name__ == "__main__":
    for line in main():
        print(line)
