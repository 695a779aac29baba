"""FLUX.1 at real width and reduced depth on the CPU: sdtui's trainer against the diffusers FLUX LoRA example's loop.

The model (``bench.flux_models``): FLUX.1-dev's transformer at its real width with 2 double + 4
single blocks (1.3 B parameters), the real VAE and CLIP-L, T5-XXL at real width with 2 layers;
random weights, built once into ``--models`` (default ``~/.cache/sdtui/bench-models/flux-2x4``).
Both sides train a rank-16 LoRA at 128 px, batch 1, bf16 autocast (fp32 on a CPU whose bf16
matrix products are no faster path than a reference loop: without AVX-512 BF16 / AMX, torch's CPU
bf16 GEMM ran 200x slower than fp32 here, so a bf16 run would measure that, not the trainers),
one compute thread, on the same 8 generated images, alternating ours, reference, ours, reference; the ratio is the
reference's median step time over ours. Ours is ``python -m core.train RUN_DIR`` with
``lora_targets = attn`` (the example's q/k/v/out plus the text stream's, which it also adapts
in the single blocks) and its caches on; the reference (``bench.reference_flux``) encodes the
images and captions every step, as the example does with per-image captions.

    python -m bench.bench_flux_cpu [--models DIR] [--steps 5] [--precision auto|bf16|no]
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


#: bf16 runs when a bf16 matrix product costs at most this many times an fp32 one on this CPU.
BF16_SLOWDOWN_LIMIT = 4.0


def fast_precision() -> str:
    """``bf16`` where this CPU multiplies bf16 matrices about as fast as fp32 ones (one thread), else ``no`` (fp32)."""
    import time

    import torch

    torch.set_num_threads(1)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(128, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b
        start = time.perf_counter()
        a @ b
        seconds[dtype] = time.perf_counter() - start
    return "bf16" if seconds[torch.bfloat16] <= BF16_SLOWDOWN_LIMIT * seconds[torch.float32] else "no"


def ours(work: Path, model: Path, dataset: Path, index: int, steps: int, env: dict[str, str], precision: str) -> list[float]:
    """One sdtui trainer run: its step times after warm-up."""
    run = write_run(work / f"ours-{index}", model, dataset, "flux", "lora", {**SETTINGS, "mixed_precision": precision}, steps)
    run_watched([sys.executable, "-m", "core.train", str(run)], run / "metrics.jsonl", "the sdtui trainer", WARMUP, steps, env, kill_after=True)
    stamps = [r["time"] for r in read_jsonl(run / "metrics.jsonl") if r.get("type") == "step"]
    return [b - a for a, b in zip(stamps[WARMUP - 1 :], stamps[WARMUP:])]


def reference(work: Path, model: Path, dataset: Path, index: int, steps: int, env: dict[str, str], precision: str) -> list[float]:
    """One reference-loop run: its step times after warm-up."""
    out = work / f"ref-{index}.jsonl"
    argv = [sys.executable, "-m", "bench.reference_flux", "--model", str(model), "--data", str(dataset), "--steps", str(steps), "--out", str(out), "--resolution", str(RESOLUTION)]
    argv += ["--mixed-precision", precision]
    run_watched(argv, out, "the FLUX reference loop", WARMUP, steps, env, kill_after=True)
    return [r["step_time_s"] for r in read_jsonl(out)[WARMUP:steps]]


def measure(models: Path, work: Path, steps: int, precision: str) -> str:
    """Alternate both sides in ``precision`` (``bf16`` or ``no``); the ratio line."""
    model = build_flux(models / "flux-2x4")
    dataset = make_dataset(work / "images", RESOLUTION)
    warm_page_cache(model)
    env = {**child_env(), "XDG_CACHE_HOME": str(work / "cache")}
    mine: list[float] = []
    theirs: list[float] = []
    for index in range(ROUNDS):
        mine += ours(work, model, dataset, index, steps, env, precision)
        theirs += reference(work, model, dataset, index, steps, env, precision)
    our_step, ref_step = statistics.median(mine), statistics.median(theirs)
    return (
        f"real_flux_2x4_lora_{RESOLUTION}px: ours {our_step:.2f} s/step vs diffusers FLUX LoRA example loop {ref_step:.2f} s/step "
        f"(median of {len(mine)} and {len(theirs)} steps, {ROUNDS} alternating rounds; FLUX.1-dev width, 2 double + 4 single blocks, "
        f"T5 2 layers; {'bf16' if precision == 'bf16' else 'fp32'}, batch 1, 1 thread) ratio={ref_step / our_step:.2f}"
    )


def main(argv: list[str] | None = None) -> list[str]:
    """The one case; its line."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_flux_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="where the model is built (reused)")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first two are warm-up)")
    parser.add_argument("--precision", choices=("auto", "bf16", "no"), default="auto", help="both sides' mixed precision (auto: bf16 where this CPU computes it fast, else fp32)")
    args = parser.parse_args([] if argv is None else argv)
    precision = fast_precision() if args.precision == "auto" else args.precision
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-flux-") as tmp:
        try:
            line = measure(args.models or default_models_dir(), Path(tmp), args.steps, precision)
        except RuntimeError as exc:
            line = f"real_flux_2x4_lora_{RESOLUTION}px: failed ({exc}) ratio=n/a"
    print(line, file=sys.stderr, flush=True)
    return [line]


if __name__ == "__main__":
    main(sys.argv[1:])
