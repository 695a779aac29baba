"""FLUX.1 at real width and reduced depth on the CPU: sdtui's trainer against the diffusers FLUX LoRA example's loop.

The model (``bench.flux_models``): FLUX.1-dev's transformer at its real width with 2 double + 4
single blocks (1.3 B parameters), the real VAE and CLIP-L, T5-XXL at real width with 2 layers;
random weights, built once into ``--models`` (default ``~/.cache/sdtui/bench-models/flux-2x4``).
Both sides train a rank-16 LoRA at 128 px, batch 1, bf16 autocast, one compute thread, on the
same 8 generated images, alternating ours, reference, ours, reference; the ratio is the
reference's median step time over ours. Ours is ``python -m core.train RUN_DIR`` with
``lora_targets = attn`` (the example's q/k/v/out plus the text stream's, which it also adapts
in the single blocks) and its caches on; the reference (``bench.reference_flux``) encodes the
images and captions every step, as the example does with per-image captions.

    python -m bench.bench_flux_cpu [--models DIR] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import quick
from bench.bench_real_cpu import default_models_dir, warm_page_cache
from bench.flux_models import build_flux
from bench.real_models import make_dataset
from bench.runs import child_env, read_jsonl, run_watched, write_run

RESOLUTION = 128
ROUNDS = 1 if quick() else 2
WARMUP = 2
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
    "lora_targets": "attn",
    "dataloader_workers": 0,
}


def ours(work: Path, model: Path, dataset: Path, index: int, steps: int, env: dict[str, str]) -> list[float]:
    """One sdtui trainer run: its step times after warm-up."""
    run = write_run(work / f"ours-{index}", model, dataset, "flux", "lora", SETTINGS, steps)
    run_watched([sys.executable, "-m", "core.train", str(run)], run / "metrics.jsonl", "the sdtui trainer", WARMUP, steps, env, kill_after=True)
    stamps = [r["time"] for r in read_jsonl(run / "metrics.jsonl") if r.get("type") == "step"]
    return [b - a for a, b in zip(stamps[WARMUP - 1 :], stamps[WARMUP:])]


def reference(work: Path, model: Path, dataset: Path, index: int, steps: int, env: dict[str, str]) -> list[float]:
    """One reference-loop run: its step times after warm-up."""
    out = work / f"ref-{index}.jsonl"
    argv = [sys.executable, "-m", "bench.reference_flux", "--model", str(model), "--data", str(dataset), "--steps", str(steps), "--out", str(out), "--resolution", str(RESOLUTION)]
    run_watched(argv, out, "the FLUX reference loop", WARMUP, steps, env, kill_after=True)
    return [r["step_time_s"] for r in read_jsonl(out)[WARMUP:steps]]


def measure(models: Path, work: Path, steps: int) -> str:
    """Alternate both sides; the ratio line."""
    model = build_flux(models / "flux-2x4")
    dataset = make_dataset(work / "images", RESOLUTION)
    warm_page_cache(model)
    env = {**child_env(), "XDG_CACHE_HOME": str(work / "cache")}
    mine: list[float] = []
    theirs: list[float] = []
    for index in range(ROUNDS):
        mine += ours(work, model, dataset, index, steps, env)
        theirs += reference(work, model, dataset, index, steps, env)
    our_step, ref_step = statistics.median(mine), statistics.median(theirs)
    return (
        f"real_flux_2x4_lora_{RESOLUTION}px: ours {our_step:.2f} s/step vs diffusers FLUX LoRA example loop {ref_step:.2f} s/step "
        f"(median of {len(mine)} and {len(theirs)} steps, {ROUNDS} alternating rounds; FLUX.1-dev width, 2 double + 4 single blocks, "
        f"T5 2 layers; bf16, batch 1, 1 thread) ratio={ref_step / our_step:.2f}"
    )


def main(argv: list[str] | None = None) -> list[str]:
    """The one case; its line."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flux_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="where the model is built (reused)")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first two are warm-up)")
    args = parser.parse_args([] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-flux-") as tmp:
        try:
            line = measure(args.models or default_models_dir(), Path(tmp), args.steps)
        except RuntimeError as exc:
            line = f"real_flux_2x4_lora_{RESOLUTION}px: failed ({exc}) ratio=n/a"
    print(line, file=sys.stderr, flush=True)
    return [line]


if __name__ == "__main__":
    main(sys.argv[1:])
