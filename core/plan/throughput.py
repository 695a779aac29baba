"""A throughput model: images per second per GPU, multi-GPU scaling and the ETA.

Time per image = training FLOPs per image × (1 / (dense tensor FLOP/s × matmul efficiency)
+ 1 / (arithmetic intensity × memory bandwidth)) / batch efficiency, plus the optimizer step
(memory-bound, once per optimizer step). The numbers and
their sources are in docs/planning.md; they are estimates, good to tens of percent, meant to
rank recipes and to size a run, not to replace a measurement.
"""

from __future__ import annotations

import math
from typing import Any

from core.families import FAMILIES, spec
from core.memory.trainable import trainable
from core.settings import FULL_METHODS, resolve

#: VAE encoder forward, TFLOPs per 512×512 image (same architecture for all families).
VAE_ENCODE_TFLOPS_512 = 1.1
#: VAE decoder forward, TFLOPs per 512×512 image (the decoder is about twice the encoder).
VAE_DECODE_TFLOPS_512 = 2.5
#: Share of the dense tensor peak the matmuls and convolutions reach at a saturating batch.
MATMUL_EFFICIENCY = 0.5
#: FLOPs per byte of memory traffic over a whole training step (GroupNorm, SiLU, residual
#: adds and attention softmax are memory-bound; this bounds fast-compute GPUs).
ARITHMETIC_INTENSITY = 50.0
#: Latent pixels per step (batch × latent area) from which the GPU is saturated.
SATURATING_LATENT_PIXELS = 16384
#: Exponent of the batch-efficiency curve below saturation.
BATCH_EFFICIENCY_EXPONENT = 0.3
#: Bytes read and written per trainable parameter by one optimizer step.
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "adamw8bit": 20, "lion": 20, "lion8bit": 14, "adafactor": 24}
#: Memory bandwidth assumed per dense fp16 TFLOP/s when the GPU has no catalog figure (bytes/s).
BANDWIDTH_PER_TFLOPS = 6e9
#: Throughput kept per doubling of the GPU count: (full weights, adapters) × (one node, across nodes).
SCALING_PER_DOUBLING = {("full", False): 0.92, ("full", True): 0.85, ("adapter", False): 0.97, ("adapter", True): 0.93}


def training_tflops_per_image(family: str, method: str, settings: dict[str, Any], variant: str = "") -> float:
    """TFLOPs one training image costs: the denoiser's forward+backward (its linear part grows with the
    pixels, a transformer's attention with their square), plus what is not cached (of the model ``variant``)."""
    settings = resolve("settings", settings)
    resolution = int(settings["resolution"])
    family_spec = spec(family)
    pixel_scale = (resolution / family_spec.native_resolution) ** 2
    denoiser, attention, text = family_spec.tflops(variant)
    forward = (denoiser - attention) * pixel_scale + attention * pixel_scale**2
    # Full weights: backward = 2 forwards (input and weight gradients). Frozen base (LoRA,
    # textual inversion): only input gradients flow, about 1 forward.
    passes = 3.0 if method in FULL_METHODS else 2.0
    if settings["gradient_checkpointing"]:
        passes += 1.0
    total = forward * passes
    if not settings["cache_latents"]:
        total += VAE_ENCODE_TFLOPS_512 * (resolution / 512) ** 2
    if settings["train_text_encoder"] or method == "textual_inversion":
        total += text * (3.0 if settings["train_text_encoder"] and method in FULL_METHODS else 2.0)
    elif not settings["cache_text_encoder_outputs"]:
        total += text
    return total


def batch_efficiency(family: str, settings: dict[str, Any]) -> float:
    """Fraction of the saturated MFU reached with this batch and resolution (0.35 … 1)."""
    settings = resolve("settings", settings)
    latent_pixels = (int(settings["resolution"]) // 8) ** 2 * int(settings["batch_size"])
    efficiency: float = (latent_pixels / SATURATING_LATENT_PIXELS) ** BATCH_EFFICIENCY_EXPONENT
    return max(0.35, min(1.0, efficiency))


def dense_tflops(gpu: Any, mixed_precision: str) -> float | None:
    """The GPU's dense tensor TFLOP/s for the precision; None when there is no figure.

    ``gpu`` is a probed or simulated ``GpuInfo`` (its own rule: bf16 without support runs as
    fp16, fp32 at a quarter of fp16) or a catalog ``GpuModel``.
    """
    if callable(getattr(gpu, "tflops", None)):
        return float(gpu.tflops(mixed_precision)) or None
    fp16 = float(getattr(gpu, "tflops_fp16", 0) or 0)
    bf16 = float(getattr(gpu, "tflops_bf16", 0) or 0)
    if mixed_precision == "bf16" and bf16:
        return bf16
    return (fp16 / 4 if mixed_precision == "no" else fp16) or None


def images_per_second(family: str, method: str, settings: dict[str, Any], gpu: Any, accumulation: int = 1, variant: str = "") -> float | None:
    """Training images per second on one GPU; None without a known GPU (e.g. on the CPU)."""
    if gpu is None or family not in FAMILIES:
        return None
    settings = resolve("settings", settings)
    tflops = dense_tflops(gpu, str(settings["mixed_precision"]))
    if not tflops:
        return None
    bandwidth = memory_bandwidth(gpu)
    flops = training_tflops_per_image(family, method, settings, variant) * 1e12
    seconds_per_flop = 1 / (tflops * 1e12 * MATMUL_EFFICIENCY) + 1 / (ARITHMETIC_INTENSITY * bandwidth)
    compute_s = flops * seconds_per_flop / batch_efficiency(family, settings)
    optimizer = str(settings["optimizer"])
    step_s = trainable(family, method, settings, variant).params * OPTIMIZER_BYTES_PER_PARAM.get(optimizer, 28) / bandwidth
    images_per_step = int(settings["batch_size"]) * max(1, accumulation)
    return 1.0 / (compute_s + step_s / images_per_step)


def scaling_factor(gpus: int, method: str = "lora", num_machines: int = 1) -> float:
    """Share of linear speed-up kept on ``gpus`` GPUs (DDP): a fixed loss per doubling.

    Full-weight methods all-reduce the whole model's gradients each step; adapters (LoRA,
    textual inversion) only a few megabytes, so they scale better. Across machines the
    network is slower than NVLink/PCIe inside a node.
    """
    if gpus <= 1:
        return 1.0
    kind = "full" if method in FULL_METHODS else "adapter"
    factor: float = SCALING_PER_DOUBLING[(kind, num_machines > 1)] ** math.log2(gpus)
    return factor


def eta_seconds(total_steps: int, effective_batch: int, ips_per_gpu: float | None, gpus: int, method: str = "lora", num_machines: int = 1) -> float | None:
    """Seconds the run takes: images processed / (per-GPU rate × GPUs × scaling)."""
    if not ips_per_gpu or gpus < 1:
        return None
    return total_steps * effective_batch / (ips_per_gpu * gpus * scaling_factor(gpus, method, num_machines))


def memory_bandwidth(gpu: Any) -> float:
    """Memory bandwidth in bytes/s: the catalog's figure, else 6 GB/s per dense fp16 TFLOP/s."""
    model = gpu if hasattr(gpu, "bandwidth_gbs") else getattr(gpu, "model", None)
    gbps = float(getattr(model, "bandwidth_gbs", 0) or 0)
    return gbps * 1e9 if gbps else (dense_tflops(gpu, "fp16") or 30.0) * BANDWIDTH_PER_TFLOPS


def sample_seconds_per_image(family: str, settings: dict[str, Any], gpu: Any, steps: int, guidance: bool = True) -> float | None:
    """Seconds one GPU takes to render one image at the training resolution (a sample, a class
    image): ``steps`` denoiser forwards (two with classifier-free ``guidance``), the text encoders
    once, the VAE decoder once; None without a known GPU."""
    if gpu is None or family not in FAMILIES:
        return None
    settings = resolve("settings", settings)
    tflops = dense_tflops(gpu, str(settings["mixed_precision"]))
    if not tflops:
        return None
    resolution = int(settings["resolution"])
    family_spec = spec(family)
    forward = family_spec.denoiser_tflops * (resolution / family_spec.native_resolution) ** 2
    flops = (forward * steps * (2 if guidance else 1) + family_spec.text_encoder_tflops + VAE_DECODE_TFLOPS_512 * (resolution / 512) ** 2) * 1e12
    seconds_per_flop = 1 / (tflops * 1e12 * MATMUL_EFFICIENCY) + 1 / (ARITHMETIC_INTENSITY * memory_bandwidth(gpu))
    return flops * seconds_per_flop / batch_efficiency(family, settings)
