"""Real architectures on the CPU: sdtui's trainer against the reference loop on SD1.5 and SDXL.

The models are the real SD1.5 and SDXL architectures (the family specs, ``core/families``) with random
weights, built once by ``bench.real_models`` into ``--models`` (default: the user cache folder,
``~/.cache/sdtui/bench-models``, 8.5 GB). Both sides train at 128 px, batch 1, bf16 autocast, one
compute thread each, no data-loader workers, on the same 8 generated images: ours is
``python -m core.train RUN_DIR`` with the default LoRA settings minus the memory savers that
cost speed (no gradient checkpointing, plain AdamW, like the reference); the reference is
``bench.reference_loop`` (the diffusers examples' loop). Each case alternates ours, reference,
ours, reference, so the neighbours' load falls on both; the ratio is the reference's median
step time over ours (every step after warm-up of both rounds).

Each ours-run also reports its time to the first step (``phase`` records of metrics.jsonl):
the first round starts with an empty latent cache, the second finds the first's.

A case that needs more memory than the machine has free is skipped with the figure.

    python -m bench.bench_real_cpu [--models DIR] [--all | --only sd1_lora ...]

``make bench`` runs the two LoRA cases (SD1.5 carries the 1.5x target); ``--all`` adds the full
fine-tunes (SD1.5: 10+ min here; SDXL needs about 46 GB of memory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import quick
from bench.real_models import build_real, make_dataset
from bench.runs import child_env, read_jsonl, run_watched, write_run

RESOLUTION = 128
#: Alternating rounds (one under ``--quick``).
ROUNDS = 1 if quick() else 2
#: (family, method) -> (steps per run, warm-up steps left out).
CASES: dict[tuple[str, str], tuple[int, int]] = {
    ("sd1", "lora"): (6, 2),
    ("sd1", "finetune"): (5, 2),
    ("sdxl", "lora"): (4, 1),
    ("sdxl", "finetune"): (4, 1),
}
TARGETS = {("sd1", "lora"): 1.5}
#: What ``make bench`` runs (the full fine-tunes take 10+ min each here: ``--all`` or ``--only``); ``--quick``: SD1.5 LoRA.
DEFAULT_CASES = (("sd1", "lora"), ("sdxl", "lora"))
GB = 1e9
#: Memory beyond the weights and optimizer state: activations, the interpreter, torch.
HEADROOM_BYTES = 3 * GB
SETTINGS: dict[str, Any] = {
    "mixed_precision": "bf16",
    "gradient_checkpointing": False,
    "optimizer": "adamw",
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "batch_size": 1,
    "resolution": RESOLUTION,
    "min_bucket_reso": RESOLUTION,
    "max_bucket_reso": 2 * RESOLUTION,
    "bucket_reso_steps": 64,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "dataloader_workers": 0,
}


def default_models_dir() -> Path:
    """``<user cache dir>/bench-models`` (``core.userdirs``)."""
    from core.userdirs import cache_dir

    return cache_dir() / "bench-models"


def folder_bytes(path: Path, part: str | None = None) -> int:
    """Bytes of the safetensors files of a model folder (of one component when ``part`` is given)."""
    root = path / part if part else path
    return sum(f.stat().st_size for f in root.rglob("*.safetensors"))


def needed_bytes(model: Path, method: str) -> int:
    """Peak memory of a case: bf16 weights, plus fp32 weights, gradients and AdamW state (16 B/param) of a trained UNet."""
    total = folder_bytes(model)
    if method == "finetune":
        unet_params = folder_bytes(model, "unet") // 2
        total += 16 * unet_params - 2 * unet_params
    return int(total + HEADROOM_BYTES)


def warm_page_cache(model: Path) -> None:
    """Read the model's files once, so that neither side's first round pays the disk for both."""
    for path in model.rglob("*.safetensors"):
        with open(path, "rb") as handle:
            while handle.read(64 * 1024 * 1024):
                pass


def ours(work: Path, model: Path, dataset: Path, family: str, method: str, index: int, env: dict[str, str]) -> dict[str, Any]:
    """One sdtui trainer run: its step times after warm-up and its start-up phases."""
    steps, warmup = CASES[(family, method)]
    run = write_run(work / f"ours-{family}-{method}-{index}", model, dataset, family, method, SETTINGS, steps)
    result: dict[str, Any] = run_watched([sys.executable, "-m", "core.train", str(run)], run / "metrics.jsonl", "the sdtui trainer", warmup, steps, env, kill_after=True)
    records = read_jsonl(run / "metrics.jsonl")
    stamps = [r["time"] for r in records if r.get("type") == "step"]
    result["steps_s"] = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:])]
    first = next((r for r in records if r.get("type") == "phase" and r.get("phase") == "first_step"), {})
    latents = next((r for r in records if r.get("phase") == "cache_latents" and r.get("state") == "done"), {})
    result["first_step_s"] = first.get("since_start_s")
    result["phases"] = first.get("phases", {})
    result["latents"] = (latents.get("encoded"), latents.get("reused"))
    return result


def reference(work: Path, model: Path, dataset: Path, family: str, method: str, index: int, env: dict[str, str]) -> dict[str, Any]:
    """One reference-loop run: its step times after warm-up and the seconds to its first step."""
    steps, warmup = CASES[(family, method)]
    out = work / f"ref-{family}-{method}-{index}.jsonl"
    argv = [
        sys.executable,
        "-m",
        "bench.reference_loop",
        "--model",
        str(model),
        "--data",
        str(dataset),
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--resolution",
        str(RESOLUTION),
        "--batch-size",
        "1",
        "--rank",
        str(SETTINGS["lora_rank"]),
        "--mixed-precision",
        "bf16",
        "--lean-load",
    ] + (["--full"] if method == "finetune" else [])
    result: dict[str, Any] = run_watched(argv, out, "the reference loop", warmup, steps, env, kill_after=True)
    records = read_jsonl(out)
    result["steps_s"] = [r["step_time_s"] for r in records[warmup:steps]]
    result["first_step_s"] = result["first_seen_s"]
    return result


def predicted(family: str, method: str) -> float:
    """The counted-FLOPs ratio at this resolution (reference: UNet passes + VAE encode + text encoders; ours: the UNet passes)."""
    from bench.bench_gpu import component_flops

    parts = component_flops(family, RESOLUTION)
    passes = 2 if method == "lora" else 3
    return (passes * parts["unet"] + parts["vae_encode"] + parts["text_encoders"]) / (passes * parts["unet"])


def measure(family: str, method: str, models: Path, work: Path) -> list[str]:
    """Alternate both sides ``ROUNDS`` times on one case; the ratio line and the time-to-first-step line."""
    import psutil

    label = f"real_{family}_{method}_{RESOLUTION}px"
    model = build_real(family, models / family)
    need = needed_bytes(model, method)
    free = psutil.virtual_memory().available
    if need > free:
        return [
            f"{label}: not measured: needs about {need / GB:.0f} GB of memory (weights, gradients and AdamW state), "
            f"{free / GB:.0f} GB free of {psutil.virtual_memory().total / GB:.0f} GB ratio=n/a"
        ]
    dataset = make_dataset(work / "images", RESOLUTION)
    warm_page_cache(model)
    env = {**child_env(), "XDG_CACHE_HOME": str(work / "cache")}  # the first ours-run starts with an empty latent cache
    mine, theirs = [], []
    for index in range(ROUNDS):
        mine.append(ours(work, model, dataset, family, method, index, env))
        theirs.append(reference(work, model, dataset, family, method, index, env))
    our_step = statistics.median(t for r in mine for t in r["steps_s"])
    ref_step = statistics.median(t for r in theirs for t in r["steps_s"])
    ratio = ref_step / our_step
    target = TARGETS.get((family, method))
    verdict = f"; target {target}x {'met' if ratio >= target else f'missed by {target - ratio:.2f}'}" if target else ""
    count = sum(len(r["steps_s"]) for r in mine)
    load = os.getloadavg()[1]
    window = CASES[(family, method)][0] - CASES[(family, method)][1]
    our_cpu, ref_cpu = (statistics.median(r["cpu"] / window for r in side) for side in (mine, theirs))
    lines = [
        f"{label}: ours {our_step:.2f} s/step vs reference {ref_step:.2f} s/step (median of {count} steps each, "
        f"{ROUNDS} alternating rounds; ours {_steps(mine)}, reference {_steps(theirs)}); CPU {our_cpu:.2f} vs {ref_cpu:.2f} s/step "
        f"(CPU ratio {ref_cpu / our_cpu:.2f}: steadier than the wall clock when neighbours load the machine); bf16, batch 1, 1 thread, "
        f"load avg {load:.1f}; counted-FLOPs prediction at {RESOLUTION}px {predicted(family, method):.2f}{verdict} ratio={ratio:.2f}",
    ]
    cold, warm = mine[0], mine[-1]
    ref_first = statistics.median(r["first_step_s"] for r in theirs)
    lines.append(
        f"first_step_{family}_{method}: ours {cold['first_step_s']:.1f} s from process start with empty latent and text caches "
        f"({_phases(cold)}; {cold['latents'][0]} images encoded)"
        + (f", {warm['first_step_s']:.1f} s with the caches of the run before ({_phases(warm)}; {warm['latents'][1]} reused)" if len(mine) > 1 else "")
        + f" vs reference {ref_first:.1f} s (it caches nothing; "
        f"its first step includes the VAE and text encoders) ratio={ref_first / cold['first_step_s']:.2f}"
    )
    return lines


def _steps(results: list[dict[str, Any]]) -> str:
    return "/".join(f"{t:.2f}" for r in results for t in r["steps_s"])


def _phases(result: dict[str, Any]) -> str:
    names = {"process_start": "start", "load_model": "load", "cache_latents": "latents", "cache_text": "text", "class_images": "class images"}
    return ", ".join(f"{names.get(k, k)} {v:.1f} s" for k, v in result["phases"].items())


def main(argv: list[str] | None = None) -> list[str]:
    """Every case (or ``--only``), one after another; two lines per measured case."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_real_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="where the real-size random models are built (reused)")
    parser.add_argument("--only", nargs="*", default=[], help="cases such as sd1_lora sdxl_finetune")
    parser.add_argument("--all", action="store_true", help="the full fine-tunes too (10+ min each on 2 cores)")
    args = parser.parse_args([] if argv is None else argv)
    if args.only:
        wanted = [case for case in CASES if f"{case[0]}_{case[1]}" in args.only]
    elif args.all:
        wanted = list(CASES)
    else:
        wanted = list(DEFAULT_CASES[:1] if quick() else DEFAULT_CASES)
    models = args.models or default_models_dir()
    lines = []
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-real-") as tmp:
        for family, method in wanted:
            try:
                found = measure(family, method, models, Path(tmp) / f"{family}-{method}")
            except RuntimeError as exc:
                found = [f"real_{family}_{method}_{RESOLUTION}px: failed ({exc}) ratio=n/a"]
            for line in found:
                print(line, file=sys.stderr, flush=True)
            lines += found
    return lines


if __name__ == "__main__":
    for result in main(sys.argv[1:]):
        print(result)
