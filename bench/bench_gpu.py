"""Real-size GPU benchmark: sdtui's trainer against the diffusers-example loop, with memory truth.

For SD1.5 at 512 px and SDXL at 1024 px (LoRA and full fine-tune), and with ``--family flux``
FLUX.1-dev LoRA at 1024 and 512 px (``bench.flux_models`` at real size, against
``bench.reference_flux``, the diffusers FLUX LoRA example's loop), with UNet/VAE/text encoders
built from the family specs (``core/families``) by ``bench.real_models`` (the real architectures, random
weights, built lean on the CPU) and a generated dataset, each case runs twice in a fresh process: the sdtui trainer (in-process ``Trainer`` on a
run folder) and ``bench.reference_loop``. Per side it reports steady-state images/s, MFU (the
UNet's measured training FLOPs per image × images/s against the GPU's dense bf16 peak from
``core.gpu``), ``torch.cuda.max_memory_reserved``, the NVML peak of the device and, for ours,
``core.memory.estimate``'s figure for the same settings and the time to the first step (the
trainer's ``phase`` records). The lines go into ``bench/RESULTS.md`` (a dated section) and each
of ours' measured peaks into the calibration table (``core.memory.record_calibration``: the
NVML device peak, else ``max_memory_reserved``), with a line comparing it to the estimator.
The default run keeps to ``BUDGET_S`` (a case that would end past it is reported as not
measured), so the one command finishes within 8 minutes.

    python -m bench.bench_gpu                      # the four cases at one batch size each (< 8 min on an H100/H200)
    python -m bench.bench_gpu --all                # every batch size (~25 min)
    python -m bench.bench_gpu --family sd1 --method lora --batch 4
    python -m bench.bench_gpu --family flux        # FLUX.1-dev LoRA at 1024 and 512 px (the 12B model takes minutes to build)
    python -m bench.bench_gpu --family sd35        # SD 3.5 Medium LoRA at 1024 and 512 px (bench.sd35_models, against bench.reference_sd3)
    python -m bench.bench_gpu --tiny               # the same code on the CPU with tiny shapes
    python -m bench.bench_gpu --tiny --results R.md --calibration C.json   # … writing both, as on a GPU
    python -m bench.bench_gpu --flops              # what the caches save at real size, in counted FLOPs
    python -m bench.bench_gpu --techniques         # LoRA on bf16/fp8/int8/nf4 bases and swapped blocks, a full fine-tune with and without swap (< 8 min on an H100)
    python -m bench.bench_gpu --techniques --tiny  # the same cases on the CPU with tiny shapes

Without a GPU, ``main()`` (what ``python -m bench`` calls) runs the tiny check of one case, so
the script cannot rot, prints the FLOP-count prediction and says that the real figures were
not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.real_models import build_real, make_dataset

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
#: (family, method, resolution, batch sizes) at real size; the first batch size is the default run's.
CASES: tuple[tuple[str, str, int, tuple[int, ...]], ...] = (
    ("sd1", "lora", 512, (4, 1, 8)),
    ("sd1", "finetune", 512, (4, 1, 8)),
    ("sdxl", "lora", 1024, (2, 1, 4)),
    ("sdxl", "finetune", 1024, (1, 4)),
)
#: FLUX.1-dev at real size (12B transformer; its random model takes minutes to build): run only with ``--family flux``.
FLUX_CASES: tuple[tuple[str, str, int, tuple[int, ...]], ...] = (("flux", "lora", 1024, (1, 2)), ("flux", "lora", 512, (1, 4)))
#: SD 3.5 Medium at real size (its T5-XXL makes the random model take minutes to build): run only with ``--family sd35``.
SD35_CASES: tuple[tuple[str, str, int, tuple[int, ...]], ...] = (("sd35", "lora", 1024, (1, 2)), ("sd35", "lora", 512, (1, 4)))
#: The cases each ``--family`` adds to the default ones.
FAMILY_CASES = {"flux": FLUX_CASES, "sd35": SD35_CASES}
TINY_RESOLUTION = 64
TINY_BATCHES = (1, 2)
STEPS, WARMUP = 24, 8
TINY_STEPS, TINY_WARMUP = 14, 4
#: Seconds the default run may take (8 min on an H100/H200 is the promise; the rest is headroom).
BUDGET_S = 450.0
#: Ours on a big GPU: the speed settings (no memory savers needed at these sizes).
GPU_SETTINGS: dict[str, Any] = {
    "mixed_precision": "bf16",
    "gradient_checkpointing": False,
    "optimizer": "adamw",
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "lora_rank": 16,
    "lora_alpha": 16.0,
    "dataloader_workers": 2,
}


#: The memory techniques at real size: (family, base precision, blocks swapped), a LoRA at batch 1
#: and the family's native resolution, ours only; the order is what matters most first (the
#: budget cuts the tail). FLUX.1 has 57 blocks (0/8/16 swapped), SDXL's UNet 6 (0/2/4).
TECHNIQUE_CASES: tuple[tuple[str, str, int], ...] = (
    ("flux", "bf16", 0),
    ("flux", "fp8", 0),
    ("flux", "int8", 0),
    ("flux", "nf4", 0),
    ("flux", "bf16", 8),
    ("flux", "bf16", 16),
    ("flux", "fp8", 16),
    ("sdxl", "bf16", 0),
    ("sdxl", "fp8", 0),
    ("sdxl", "int8", 0),
    ("sdxl", "nf4", 0),
    ("sdxl", "bf16", 2),
    ("sdxl", "bf16", 4),
)
#: A full fine-tune with swapped blocks (family, blocks swapped): AdamW with an fp32 master at the
#: native resolution, batch 1, so the swapped blocks' gradients come back and step on the CPU
#: (SDXL: 41 GiB estimated unswapped, 21 with 4 of its 6 blocks away).
FULL_SWAP_CASES: tuple[tuple[str, int], ...] = (("sdxl", 0), ("sdxl", 4))
TECHNIQUE_STEPS, TECHNIQUE_WARMUP = 10, 4


# ----------------------------------------------------------------- measurement (in the child)
class NvmlPeak:
    """Samples the device's used memory with NVML every 20 ms in a thread; ``peak`` in bytes or None."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(0).uuid)
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML (CPU machine): the figure is simply absent
            self._handle = None

    def __enter__(self) -> NvmlPeak:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self.peak = used if self.peak is None else max(self.peak, used)
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def transformer_train_flops(family: str, method: str, resolution: int, model_dir: Path, device: str) -> float:
    """FLOPs of one transformer forward+backward per image (the family runtime's ``dummy_inputs``), as torch counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.families import runtime, spec
    from core.families.components import component_class

    family_spec = spec(family)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = component_class(family_spec, family_spec.denoiser).from_pretrained(model_dir, subfolder=family_spec.denoiser, torch_dtype=dtype).to(device)
    model.requires_grad_(method != "lora")
    inputs = runtime(family).dummy_inputs(dict(model.config), 1, resolution, dtype, torch.device(device))
    next(iter(inputs.values())).requires_grad_(method == "lora")
    with FlopCounterMode(display=False) as counter:
        model(**inputs, return_dict=False)[0].float().pow(2).mean().backward()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return float(counter.get_total_flops())


def unet_train_flops(family: str, method: str, resolution: int, model_dir: Path, device: str) -> float:
    """FLOPs of one UNet forward+backward per image, as torch counts them (LoRA: no base weight grads); a transformer family's through :func:`transformer_train_flops`."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    if family in FAMILY_CASES:
        return transformer_train_flops(family, method, resolution, model_dir, device)

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", torch_dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device)
    unet.requires_grad_(method != "lora")
    cfg = unet.config
    side = resolution // 8
    latents = torch.randn(1, cfg.in_channels, side, side, device=device, dtype=unet.dtype, requires_grad=method == "lora")
    hidden = torch.randn(1, 77, cfg.cross_attention_dim, device=device, dtype=unet.dtype)
    kwargs: dict[str, Any] = {}
    if family == "sdxl":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, device=device, dtype=unet.dtype),
            "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=unet.dtype),
        }
    with FlopCounterMode(display=False) as counter:
        out = unet(latents, torch.tensor([500], device=device), hidden, **kwargs).sample
        out.float().pow(2).mean().backward()
    flops = float(counter.get_total_flops())
    del unet
    if device == "cuda":
        torch.cuda.empty_cache()
    return flops


def component_flops(family: str, resolution: int) -> dict[str, float]:
    """Forward FLOPs per image of the real-size UNet, VAE encoder and text encoder(s), counted on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.families import spec

    configs = spec(family).component_configs()

    def count(fn: Any) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return float(counter.get_total_flops())

    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        encoders = [CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])))
        side = resolution // 8
        kwargs: dict[str, Any] = {}
        if family == "sdxl":
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
        hidden = torch.randn(1, 77, unet.config.cross_attention_dim)
        ids = torch.zeros(1, 77, dtype=torch.long)
        return {
            "unet": count(lambda: unet(torch.randn(1, 4, side, side), torch.tensor([500]), hidden, **kwargs)),
            "vae_encode": count(lambda: vae.encode(torch.randn(1, 3, resolution, resolution))),
            "text_encoders": sum(count(lambda e=e: e(ids)) for e in encoders),
        }


def flops_lines() -> list[str]:
    """What the caches save at real size, from counted FLOPs (a prediction: nothing is timed).

    Per image the reference runs the UNet forward and backward (≈2× forward for LoRA, whose
    frozen weights get no gradients; ≈3× for a full fine-tune), the VAE encoder and the text
    encoder(s); ours with cached latents and text outputs runs the UNet only. ratio = the
    reference's FLOPs / ours, the speed-up at equal kernel efficiency.
    """
    lines = []
    for family, _, resolution, _ in CASES[::2]:
        parts = component_flops(family, resolution)
        for method, passes in (("lora", 2), ("finetune", 3)):
            ours = passes * parts["unet"]
            ref = ours + parts["vae_encode"] + parts["text_encoders"]
            lines.append(
                f"flops_{family}_{method}_{resolution}px: UNet forward {parts['unet'] / 1e9:.0f} GFLOP ×{passes}, VAE encode "
                f"{parts['vae_encode'] / 1e9:.0f} GFLOP, text encoder(s) {parts['text_encoders'] / 1e9:.0f} GFLOP per image; "
                f"ours {ours / 1e9:.0f} vs reference {ref / 1e9:.0f} GFLOP/img (predicted, not measured) ratio={ref / ours:.2f}"
            )
    return lines


def _steady(times: list[float], images: list[int], warmup: int) -> float:
    return sum(images[warmup:]) / sum(times[warmup:])


def measure_ours(case: dict[str, Any], model: Path, dataset: Path, workdir: Path) -> dict[str, Any]:
    """Train ``case`` with the sdtui Trainer in this process; throughput and memory."""
    import torch

    from bench.runs import read_jsonl, write_run
    from core.train.loop import Trainer

    settings = {**GPU_SETTINGS, "batch_size": case["batch"], "resolution": case["resolution"], **case.get("settings", {})}
    if case["tiny"]:
        settings.update(mixed_precision="no", min_bucket_reso=case["resolution"], dataloader_workers=0)
    run_dir = write_run(workdir / f"ours-{case['family']}-{case['method']}-{case['resolution']}-{case['batch']}", model, dataset, case["family"], case["method"], settings, case["steps"])
    trainer = Trainer(run_dir)
    with NvmlPeak() as nvml:
        trainer.setup()
        trainer.train()
    records = read_jsonl(run_dir / "metrics.jsonl")
    steps = [s for s in records if s.get("type") == "step"]
    first = next((r for r in records if r.get("type") == "phase" and r.get("phase") == "first_step"), {})
    times = [s["step_time_s"] for s in steps]
    images = [round(s["images_per_s"] * s["step_time_s"]) for s in steps]
    return {
        "ips": _steady(times, images, case["warmup"]),
        "reserved": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
        "allocated": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "step_s": sum(times[case["warmup"] :]) / max(1, len(times) - case["warmup"]),
        "nvml_peak": nvml.peak,
        "estimate": estimate_bytes(case, {**trainer.session.settings}),
        "settings": dict(trainer.session.settings),
        "first_step_s": first.get("since_start_s"),
        "phases": first.get("phases", {}),
    }


def measure_reference(case: dict[str, Any], model: Path, dataset: Path) -> dict[str, Any]:
    """Train ``case`` with the reference loop in this process; throughput and memory."""
    import torch

    from bench.reference_loop import ReferenceSettings, kohya_items, load_components, train_reference

    cuda = torch.cuda.is_available() and not case["tiny"]
    if case["family"] in FAMILY_CASES:
        from bench.reference_flux import train_flux_reference
        from bench.reference_sd3 import train_sd3_reference

        reference = train_sd3_reference if case["family"] == "sd35" else train_flux_reference
        with NvmlPeak() as nvml:
            out = Path(case["workdir"]) / f"ref-{case['family']}-{case['resolution']}-{case['batch']}.jsonl"
            flux_records = reference(
                str(model), str(dataset), case["steps"], case["resolution"], int(GPU_SETTINGS["lora_rank"]), "bf16" if cuda else "no", out, device="cuda" if cuda else "cpu"
            )
        return {
            "ips": _steady([r.step_time_s for r in flux_records], [1] * len(flux_records), case["warmup"]),
            "reserved": torch.cuda.max_memory_reserved() if cuda else None,
            "nvml_peak": nvml.peak,
        }
    settings = ReferenceSettings(
        resolution=case["resolution"],
        batch_size=case["batch"],
        learning_rate=1e-5,
        lora=case["method"] == "lora",
        rank=int(GPU_SETTINGS["lora_rank"]),
        mixed_precision="bf16" if cuda else "no",
    )
    components = load_components(model, case["family"])
    with NvmlPeak() as nvml:
        records = train_reference(components, kohya_items(dataset), settings, case["steps"], "cuda" if cuda else "cpu")
    return {
        "ips": _steady([r.step_time_s for r in records], [case["batch"]] * len(records), case["warmup"]),
        "reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "nvml_peak": nvml.peak,
    }


def estimate_bytes(case: dict[str, Any], settings: dict[str, Any]) -> int | None:
    """core.memory.estimate's peak for the case (None at tiny size, where it does not apply)."""
    if case["tiny"]:
        return None
    from core.memory import estimate

    return int(estimate(case["family"], case["method"], settings).total_bytes)


def child(args: argparse.Namespace) -> int:
    """One side of one case in this process; the result as JSON on the last stdout line."""
    import torch

    case = json.loads(args.child)
    workdir = Path(case["workdir"])
    model = Path(case["model"])
    dataset = Path(case["dataset"])
    try:
        if case["side"] == "ours":
            result = measure_ours(case, model, dataset, workdir)
        elif case["side"] == "technique":
            return _print(measure_ours(case, model, dataset, workdir))
        else:
            result = measure_reference(case, model, dataset)
        if case["side"] == "ours":
            device = "cuda" if torch.cuda.is_available() and not case["tiny"] else "cpu"
            result["flops_per_image"] = unet_train_flops(case["family"], case["method"], case["resolution"], model, device)
    except torch.OutOfMemoryError:
        result = {"oom": True, "reserved": torch.cuda.max_memory_reserved()}
    return _print(result)


def _print(result: dict[str, Any]) -> int:
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------- orchestration
def run_side(case: dict[str, Any]) -> dict[str, Any]:
    """Run one side of a case in a fresh process (so memory peaks are its own)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if case["tiny"]:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_gpu", "--child", json.dumps(case)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def peak_tflops() -> tuple[str, float | None]:
    """The GPU's name and dense bf16 TFLOP/s from core.gpu's catalog (None on the CPU or unknown)."""
    import torch

    if not torch.cuda.is_available():
        return "CPU", None
    from core.gpu import find_model

    name = torch.cuda.get_device_name(0)
    total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    model = find_model(name, total_gb)
    return name, (model.tflops_bf16 if model else None)


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.1f}GiB"


def describe(label: str, ours: dict[str, Any], ref: dict[str, Any], tflops: float | None) -> str:
    """One result line for a case: both sides' figures and ratio = ours / reference images/s."""

    def side(result: dict[str, Any], flops: float | None) -> str:
        if "error" in result:
            return f"failed ({result['error']})"
        if result.get("oom"):
            return f"out of memory (reserved {_gib(result.get('reserved'))})"
        mfu = f"{100 * flops * result['ips'] / (tflops * 1e12):.1f}%" if flops and tflops else "n/a"
        text = f"{result['ips']:.2f} img/s MFU {mfu} reserved {_gib(result.get('reserved'))} nvml {_gib(result.get('nvml_peak'))}"
        if "estimate" in result:
            text += f" estimate {_gib(result.get('estimate'))}"
        if result.get("first_step_s") is not None:
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.get("phases", {}).items())
            text += f" first step after {result['first_step_s']:.1f}s ({phases})"
        return text

    flops = ours.get("flops_per_image")
    ratio = ours["ips"] / ref["ips"] if "ips" in ours and "ips" in ref else None
    return (
        f"{label}: ours {side(ours, flops)} vs reference {side(ref, flops)}"
        f"{f' (UNet training {flops / 1e9:.3g} GFLOP/img)' if flops else ''} ratio={'n/a' if ratio is None else f'{ratio:.2f}'}"
    )


def run_cases(
    tiny: bool, family: str | None, method: str | None, batch: int | None, workdir: Path, every_batch: bool = False, budget_s: float = BUDGET_S, calibration: Path | None = None
) -> list[str]:
    """Run the selected cases, ours then reference each; one line per case; ours' peaks go into the calibration table.

    A case is not started when the cases so far leave less than the longest of them took within
    ``budget_s`` (its line then says so), so the whole command keeps to its time.
    """
    name, tflops = peak_tflops()
    lines = []
    start = time.monotonic()
    longest = 0.0
    seen: set[tuple[str, str, int]] = set()
    for fam, meth, resolution, batches in CASES + FAMILY_CASES.get(family or "", ()):
        if (family and fam != family) or (method and meth != method):
            continue
        resolution = TINY_RESOLUTION if tiny else resolution
        if (fam, meth, resolution) in seen:  # the tiny mode runs every resolution at one size: once
            continue
        seen.add((fam, meth, resolution))
        sizes = TINY_BATCHES if tiny else (batches if every_batch or batch else batches[:1])
        for size in sizes:
            if batch and size != batch:
                continue
            label = f"gpu_{fam}_{meth}_{resolution}px_b{size}" + ("_tiny_cpu (checks the script; not a GPU figure)" if tiny else f" [{name}]")
            spent = time.monotonic() - start
            if spent + longest > budget_s:
                lines.append(
                    f"{label}: not measured: {spent:.0f} s of the {budget_s:.0f} s budget spent and the longest case took "
                    f"{longest:.0f} s (run it alone with --family/--method/--batch) ratio=n/a"
                )
                continue
            began = time.monotonic()
            model = model_for(fam, workdir / f"model-{fam}{'-tiny' if tiny else ''}", tiny)
            dataset = make_dataset(workdir / f"data-{resolution}", resolution, 16)
            case = {
                "family": fam,
                "method": meth,
                "resolution": resolution,
                "batch": size,
                "tiny": tiny,
                "steps": TINY_STEPS if tiny else STEPS,
                "warmup": TINY_WARMUP if tiny else WARMUP,
                "model": str(model),
                "dataset": str(dataset),
                "workdir": str(workdir),
            }
            ours = run_side({**case, "side": "ours"})
            ref = run_side({**case, "side": "reference"})
            lines.append(describe(label, ours, ref, tflops))
            print(lines[-1], file=sys.stderr, flush=True)
            if ours.get("reserved"):
                lines.append(calibrate(fam, meth, ours, name, calibration))
            longest = max(longest, time.monotonic() - began)
    return lines


def run_techniques(tiny: bool, family: str | None, workdir: Path, budget_s: float = BUDGET_S) -> list[str]:
    """The technique cases of the registered families (``TECHNIQUE_CASES``, then the full fine-tunes
    of ``FULL_SWAP_CASES``), each in a fresh process; one line each: step time,
    ``max_memory_allocated``/``reserved``, the NVML device peak and the estimate."""
    from core.families import FAMILIES, spec

    name, _ = peak_tflops()
    lines: list[str] = []
    start, longest = time.monotonic(), 0.0
    cases = [(fam, "lora", precision, swap) for fam, precision, swap in TECHNIQUE_CASES]
    cases += [(fam, "finetune", "bf16", swap) for fam, swap in FULL_SWAP_CASES]
    for fam, method, precision, swap in cases:
        if fam not in FAMILIES or (family and fam != family):
            continue
        resolution = TINY_RESOLUTION if tiny else spec(fam).native_resolution
        suffix = f"_{resolution}px_b1" + ("_tiny_cpu (checks the script; not a GPU figure)" if tiny else f" [{name}]")
        kind = precision if method == "lora" else method
        spent = time.monotonic() - start
        if spent + longest > budget_s:
            lines.append(f"tech_{fam}_{kind}_swap{swap}{suffix}: not measured: {spent:.0f} s of the {budget_s:.0f} s budget spent and the longest case took {longest:.0f} s")
            continue
        began = time.monotonic()
        model = model_for(fam, workdir / f"model-{fam}{'-tiny' if tiny else ''}", tiny)
        swap = min(swap, _block_count(fam, model) - 1)  # a tiny model has fewer blocks
        label = f"tech_{fam}_{kind}_swap{swap}{suffix}"
        case = {
            "family": fam,
            "method": method,
            "resolution": resolution,
            "batch": 1,
            "tiny": tiny,
            "steps": TINY_STEPS if tiny else TECHNIQUE_STEPS,
            "warmup": TINY_WARMUP if tiny else TECHNIQUE_WARMUP,
            "model": str(model),
            "dataset": str(make_dataset(workdir / f"data-{resolution}", resolution, 16)),
            "workdir": str(workdir / f"tech-{fam}-{kind}-swap{swap}"),  # each case its own run folder
            "side": "technique",
            "settings": {"base_precision": "auto" if precision == "bf16" else precision, "blocks_to_swap": swap, "gradient_checkpointing": True},
        }
        lines.append(f"{label}: {_technique(run_side(case))}")
        print(lines[-1], file=sys.stderr, flush=True)
        longest = max(longest, time.monotonic() - began)
    return lines


def _block_count(family: str, model: Path) -> int:
    """How many blocks the denoiser of the model folder has in the family's swap lists."""
    from core.families import spec

    found = spec(family)
    config = json.loads((model / found.denoiser / "config.json").read_text(encoding="utf-8"))
    return sum(len(config[key]) if isinstance(config[key], list) else int(config[key]) for key in found.swap_blocks.values())


def _technique(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"failed ({result['error']})"
    if result.get("oom"):
        return f"out of memory (reserved {_gib(result.get('reserved'))})"
    return (
        f"step {result['step_s']:.3f}s allocated {_gib(result.get('allocated'))} reserved {_gib(result.get('reserved'))} "
        f"nvml {_gib(result.get('nvml_peak'))} estimate {_gib(result.get('estimate'))}"
    )


def model_for(family: str, out: Path, tiny: bool) -> Path:
    """The benchmark model of ``family``: ``bench.real_models`` for the UNets, FLUX.1-dev at real size (or the tiny one) for ``flux``."""
    if family not in FAMILY_CASES:
        return build_real(family, out, tiny)
    if tiny:
        from core.train.model.tiny import build_tiny

        return out if (out / "model_index.json").is_file() else build_tiny(family, out)
    if family == "sd35":
        from bench.sd35_models import build_sd35

        return build_sd35(out)
    from bench.flux_models import build_flux

    return build_flux(out, None, None, None)


def calibrate(family: str, method: str, ours: dict[str, Any], gpu_name: str, path: Path | None = None) -> str:
    """Record ours' measured peak for its settings in the calibration table (the user's, or ``path``); a line saying so.

    The peak is the device's (NVML: what the GPU really held, CUDA context included) when it was
    sampled, else ``max_memory_reserved``.
    """
    from core.memory import record_calibration

    peak, how = (ours["nvml_peak"], "NVML device peak") if ours.get("nvml_peak") else (ours["reserved"], "max_memory_reserved")
    record_calibration(family, method, ours["settings"], int(peak), source=f"bench_gpu on {gpu_name} ({how})", path=path)
    estimate = ours.get("estimate")
    against = f", estimator {_gib(estimate)} (measured/estimated {peak / estimate:.2f})" if estimate else ""
    return f"calibration_{family}_{method}: recorded {_gib(peak)} ({how}) for batch {ours['settings'].get('batch_size')}{against}"


def write_results(lines: list[str], gpu_name: str, results: Path = REPO / "bench" / "RESULTS.md") -> None:
    """Add a dated section with the lines and the machine to bench/RESULTS.md (newest first)."""
    from bench.results import add_section, machine

    body = f"- **Machine:** {gpu_name}; {machine()}\n\n```\n" + "\n".join(lines) + "\n```"
    add_section("GPU run, `python -m bench.bench_gpu`", body, results)


def main(argv: list[str] | None = None) -> list[str]:
    """Real-size cases on a GPU; without one, the tiny CPU check of one case and a not-measured note."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy widths on the CPU (checks the script, not the GPU)")
    parser.add_argument("--family", choices=("sd1", "sdxl", *FAMILY_CASES))
    parser.add_argument("--method", choices=("lora", "finetune"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--workdir", help="keep models and data here (default: a temporary folder)")
    parser.add_argument("--flops", action="store_true", help="only count the real-size FLOPs the caches save (no GPU, seconds)")
    parser.add_argument("--all", action="store_true", help="every batch size of every case (~25 min on an H100)")
    parser.add_argument("--budget-s", type=float, help=f"start no case that would end past this (default {BUDGET_S:.0f} s, --all 3600 s)")
    parser.add_argument("--results", type=Path, help="append the lines here (default bench/RESULTS.md on a GPU; --tiny writes only when given)")
    parser.add_argument("--calibration", type=Path, help="the calibration table to add to (default: the user's)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch bench/RESULTS.md or the calibration table")
    parser.add_argument("--techniques", action="store_true", help="LoRA on bf16/fp8/int8/nf4 bases and with swapped blocks, ours only (< 8 min on an H100)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.child:
        raise SystemExit(child(args))
    if args.flops:
        return flops_lines()
    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    selected = (args.family, args.method, args.batch)
    if tiny and not args.tiny:
        selected = ("sd1", "lora", 1)
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-gpu-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.techniques:
            lines = run_techniques(tiny, args.family, workdir, args.budget_s or BUDGET_S)
            if not args.no_write and (not tiny or args.results):
                write_results(lines, peak_tflops()[0], args.results or REPO / "bench" / "RESULTS.md")
            return lines
        lines = run_cases(tiny, *selected, workdir, every_batch=args.all, budget_s=args.budget_s or (3600.0 if args.all else BUDGET_S), calibration=args.calibration)
    if not args.no_write and (not tiny or args.results):
        write_results(lines, peak_tflops()[0], args.results or REPO / "bench" / "RESULTS.md")
    if tiny and not args.tiny:
        lines += flops_lines()
        lines.append("gpu_real_size: not measured: no CUDA GPU on this machine (run `python -m bench.bench_gpu` where one is) ratio=n/a")
    return lines


if __name__ == "__main__":
    for result in main(sys.argv[1:]):
        print(result)
