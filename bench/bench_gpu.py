"""Real-size GPU benchmark: sdtui's trainer against the diffusers-example loop, with memory truth.

For SD1.5 at 512 px and SDXL at 1024 px (LoRA and full fine-tune), with UNet/VAE/text encoders
built from the family specs' configs (``core/families``) (the real architectures, random weights) and a generated
dataset, each case runs twice in a fresh process: the sdtui trainer (in-process ``Trainer`` on a
run folder) and ``bench.reference_loop``. Per side it reports steady-state images/s, MFU (the
UNet's measured training FLOPs per image × images/s against the GPU's dense bf16 peak from
``core.gpu``), ``torch.cuda.max_memory_reserved``, the NVML peak of the device and, for ours,
``core.memory.estimate``'s figure for the same settings and the time to the first step (the
trainer's ``phase`` records). The lines go into ``bench/RESULTS.md`` (a dated section) and each
of ours' measured peaks into the calibration table (``core.memory.record_calibration``).

    python -m bench.bench_gpu                      # the four cases at one batch size each (< 8 min on an H100/H200)
    python -m bench.bench_gpu --all                # every batch size (~25 min)
    python -m bench.bench_gpu --family sd1 --method lora --batch 4
    python -m bench.bench_gpu --tiny               # the same code on the CPU with tiny shapes
    python -m bench.bench_gpu --flops              # what the caches save at real size, in counted FLOPs

Without a GPU, ``main()`` (what ``python -m bench`` calls) runs the tiny check of one case, so
the script cannot rot, prints the FLOP-count prediction and says that the real figures were
not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
#: (family, method, resolution, batch sizes) at real size; the first batch size is the default run's.
CASES: tuple[tuple[str, str, int, tuple[int, ...]], ...] = (
    ("sd1", "lora", 512, (4, 1, 8)),
    ("sd1", "finetune", 512, (4, 1, 8)),
    ("sdxl", "lora", 1024, (2, 1, 4)),
    ("sdxl", "finetune", 1024, (1, 4)),
)
TINY_RESOLUTION = 64
TINY_BATCHES = (1, 2)
STEPS, WARMUP = 24, 8
TINY_STEPS, TINY_WARMUP = 14, 4
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


# ----------------------------------------------------------------- models and data
def tiny_configs(family: str) -> dict[str, dict[str, Any]]:
    """The real configs of ``family`` shrunk to toy widths and depths (same block structure)."""
    from core.families import spec

    configs = spec(family).component_configs()
    unet = configs["unet"]
    levels = len(unet["block_out_channels"])
    unet.update(block_out_channels=[32] * levels, layers_per_block=1, norm_num_groups=8, cross_attention_dim=32 * (2 if family == "sdxl" else 1))
    unet["attention_head_dim"] = 8 if family == "sd1" else [8] * levels
    if "transformer_layers_per_block" in unet:
        unet["transformer_layers_per_block"] = [1] * levels
    if family == "sdxl":
        unet.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
    configs["vae"].update(block_out_channels=[32] * len(configs["vae"]["block_out_channels"]), layers_per_block=1)
    for name in ("text_encoder", "text_encoder_2"):
        if name in configs:
            configs[name].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=32)
    return configs


def build_model(family: str, out: Path, tiny: bool) -> Path:
    """A diffusers folder with the family's architecture, random weights and the tiny tokenizer."""
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from core.families import spec
    from core.families.sd_unet.tiny import write_tokenizer

    configs = tiny_configs(family) if tiny else spec(family).component_configs()
    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    dtype = torch.float32 if tiny else torch.float16
    torch.manual_seed(0)
    with torch.device(device):
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**configs["unet"]).to(dtype),
            "vae": AutoencoderKL(**configs["vae"]).to(dtype),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).to(dtype),
        }
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])).to(dtype)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(out.parent / f"{out.name}-tokenizer"))
    parts["tokenizer"] = tokenizer
    parts["scheduler"] = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon",
    )
    if family == "sdxl":
        parts["tokenizer_2"] = tokenizer
        pipeline = StableDiffusionXLPipeline(**parts)
    else:
        pipeline = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def build_dataset(out: Path, resolution: int, images: int = 16) -> Path:
    """A kohya folder of ``images`` square noise-and-shape pictures of ``resolution`` px with captions."""
    if out.is_dir():
        return out
    import numpy as np
    from PIL import Image

    folder = out / "1_sks thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text("a photo of sks thing on a beach", encoding="utf-8")
    return out


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


def unet_train_flops(family: str, method: str, resolution: int, model_dir: Path, device: str) -> float:
    """FLOPs of one UNet forward+backward per image, as torch counts them (LoRA: no base weight grads)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

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

    from core.config import new_config, save_config
    from core.train.loop import Trainer

    settings = {**GPU_SETTINGS, "batch_size": case["batch"], "resolution": case["resolution"]}
    if case["tiny"]:
        settings.update(mixed_precision="no", min_bucket_reso=case["resolution"], dataloader_workers=0)
    subsets = [{"path": str(p), "repeats": 1, "token": p.name.partition("_")[2], "is_reg": False} for p in sorted(dataset.iterdir())]
    config = new_config(
        name="bench-gpu", model_path=str(model), family=case["family"], method=case["method"], subsets=subsets, settings=settings,
        schedule={"epochs": 0, "max_steps": case["steps"], "learning_rate": 1e-5, "lr_scheduler": "constant",
                  "save_every_epochs": 0, "sample_every_steps": 0, "sample_at_start": False},
    )
    run_dir = workdir / f"ours-{case['family']}-{case['method']}-{case['batch']}"
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "run.toml")
    trainer = Trainer(run_dir)
    with NvmlPeak() as nvml:
        trainer.setup()
        trainer.train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [s for s in records if s.get("type") == "step"]
    first = next((r for r in records if r.get("type") == "phase" and r.get("phase") == "first_step"), {})
    times = [s["step_time_s"] for s in steps]
    images = [round(s["images_per_s"] * s["step_time_s"]) for s in steps]
    return {
        "ips": _steady(times, images, case["warmup"]),
        "reserved": torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None,
        "nvml_peak": nvml.peak,
        "estimate": estimate_bytes(case, {**trainer.settings}),
        "settings": dict(trainer.settings),
        "first_step_s": first.get("since_start_s"),
        "phases": first.get("phases", {}),
    }


def measure_reference(case: dict[str, Any], model: Path, dataset: Path) -> dict[str, Any]:
    """Train ``case`` with the reference loop in this process; throughput and memory."""
    import torch

    from bench.reference_loop import ReferenceSettings, kohya_items, load_components, train_reference

    cuda = torch.cuda.is_available() and not case["tiny"]
    settings = ReferenceSettings(
        resolution=case["resolution"], batch_size=case["batch"], learning_rate=1e-5, lora=case["method"] == "lora",
        rank=int(GPU_SETTINGS["lora_rank"]), mixed_precision="bf16" if cuda else "no",
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
        else:
            result = measure_reference(case, model, dataset)
        if case["side"] == "ours":
            device = "cuda" if torch.cuda.is_available() and not case["tiny"] else "cpu"
            result["flops_per_image"] = unet_train_flops(case["family"], case["method"], case["resolution"], model, device)
    except torch.OutOfMemoryError:
        result = {"oom": True, "reserved": torch.cuda.max_memory_reserved()}
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
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
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


def run_cases(tiny: bool, family: str | None, method: str | None, batch: int | None, workdir: Path, every_batch: bool = False) -> list[str]:
    """Run the selected cases, ours then reference each; one line per case; ours' peaks go into the calibration table."""
    name, tflops = peak_tflops()
    lines = []
    for fam, meth, resolution, batches in CASES:
        if (family and fam != family) or (method and meth != method):
            continue
        resolution = TINY_RESOLUTION if tiny else resolution
        model = build_model(fam, workdir / f"model-{fam}{'-tiny' if tiny else ''}", tiny)
        dataset = build_dataset(workdir / f"data-{resolution}", resolution)
        sizes = TINY_BATCHES if tiny else (batches if every_batch or batch else batches[:1])
        for size in sizes:
            if batch and size != batch:
                continue
            case = {
                "family": fam, "method": meth, "resolution": resolution, "batch": size, "tiny": tiny,
                "steps": TINY_STEPS if tiny else STEPS, "warmup": TINY_WARMUP if tiny else WARMUP,
                "model": str(model), "dataset": str(dataset), "workdir": str(workdir),
            }
            ours = run_side({**case, "side": "ours"})
            ref = run_side({**case, "side": "reference"})
            label = f"gpu_{fam}_{meth}_{resolution}px_b{size}" + ("_tiny_cpu (checks the script; not a GPU figure)" if tiny else f" [{name}]")
            lines.append(describe(label, ours, ref, tflops))
            print(lines[-1], file=sys.stderr, flush=True)
            if not tiny and ours.get("reserved"):
                calibrate(fam, meth, ours, name)
    return lines


def calibrate(family: str, method: str, ours: dict[str, Any], gpu_name: str) -> None:
    """Record ours' measured peak (``max_memory_reserved``) for its settings in the calibration table."""
    from core.memory import record_calibration

    record_calibration(family, method, ours["settings"], int(ours["reserved"]), source=f"bench_gpu on {gpu_name}")


def write_results(lines: list[str], gpu_name: str, results: Path = REPO / "bench" / "RESULTS.md") -> None:
    """Append a dated section with the lines to bench/RESULTS.md (written atomically)."""
    import datetime
    import subprocess as sp

    from core.atomic import write_atomic

    commit = sp.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip() or "?"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## GPU run of {stamp} on {gpu_name} (commit {commit}, `python -m bench.bench_gpu`)\n\n```\n" + "\n".join(lines) + "\n```\n"
    before = results.read_text(encoding="utf-8") if results.is_file() else "# Benchmark results\n"
    write_atomic(results, before.rstrip("\n") + "\n" + section)


def main(argv: list[str] | None = None) -> list[str]:
    """Real-size cases on a GPU; without one, the tiny CPU check of one case and a not-measured note."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy widths on the CPU (checks the script, not the GPU)")
    parser.add_argument("--family", choices=("sd1", "sdxl"))
    parser.add_argument("--method", choices=("lora", "finetune"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--workdir", help="keep models and data here (default: a temporary folder)")
    parser.add_argument("--flops", action="store_true", help="only count the real-size FLOPs the caches save (no GPU, seconds)")
    parser.add_argument("--all", action="store_true", help="every batch size of every case (~25 min on an H100)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not touch bench/RESULTS.md or the calibration table")
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
        lines = run_cases(tiny, *selected, workdir, every_batch=args.all)
    if not tiny and not args.no_write:
        write_results(lines, peak_tflops()[0])
    if tiny and not args.tiny:
        lines += flops_lines()
        lines.append("gpu_real_size: not measured: no CUDA GPU on this machine (run `python -m bench.bench_gpu` where one is) ratio=n/a")
    return lines


if __name__ == "__main__":
    for result in main(sys.argv[1:]):
        print(result)
