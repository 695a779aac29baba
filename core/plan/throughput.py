"""A throughput model: images per second per GPU, multi-GPU scaling and the ETA.

Time per image = training FLOPs per image × (1 / (dense tensor FLOP/s × matmul efficiency)
+ 1 / (arithmetic intensity × memory bandwidth)) / batch efficiency, plus the optimizer step
(memory-bound, once per optimizer step). The numbers and
their sources are in docs/planning.md; they are estimates, good to tens of percent, meant to
rank recipes and to size a run, not to replace a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.families import spec
from core.memory.trainable import settled, trainable
from core.settings import FULL_METHODS
from core.units import GIB

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
#: Host-to-device bytes/s from pinned memory by PCIe generation (x16, what a copy on a side
#: stream reaches: about 80 % of the link's 16 / 32 / 64 GB/s); device to host alike (the
#: link is full duplex: gradients going back share no bandwidth with weights coming in).
PCIE_BYTES_PER_S = {3: 12e9, 4: 25e9, 5: 50e9}
#: Parameters per second each optimizer steps on the CPU (a full fine-tune's swapped blocks),
#: measured with ``python -m bench.measure_cpu_optimizers`` on 2 shared CPU threads (a floor:
#: torch's fused AdamW is one vectorised kernel and scales with the cores and the memory
#: bandwidth; Adafactor, Prodigy, schedule-free AdamW and Lion run per-tensor torch ops;
#: bitsandbytes' 8-bit optimizers its slow CPU fallback).
CPU_OPTIMIZER_PARAMS_PER_S = {"adamw": 330e6, "adamw8bit": 10e6, "lion": 31e6, "lion8bit": 13e6, "adafactor": 21e6, "prodigy": 19e6, "schedulefree_adamw": 45e6}
#: The compute capability from which GPUs have fp8 tensor cores (Ada 8.9, Hopper 9.0, Blackwell).
FP8_COMPUTE_CAPABILITY = (8, 9)
#: Share of the memory bandwidth a dequantization pass reaches: torchao's int8 / fp8 upcast is a
#: plain scaled cast (small per-layer launches: half the bandwidth); bitsandbytes' nf4 looks each
#: 4-bit code up in its table and rescales per block (a quarter). To be calibrated by bench_gpu.
DEQUANT_EFFICIENCY = {"fp8": 0.5, "fp8_scaled": 0.5, "int8": 0.5, "nf4": 0.25}
#: Throughput kept per doubling of the GPU count: (full weights, adapters) × (one node, across nodes).
SCALING_PER_DOUBLING = {("full", False): 0.92, ("full", True): 0.85, ("adapter", False): 0.97, ("adapter", True): 0.93}


def training_tflops_per_image(family: str, method: str, settings: dict[str, Any]) -> float:
    """TFLOPs one training image costs: the denoiser's forward+backward (its linear part grows with the
    pixels, a transformer's attention with their square), plus what is not cached."""
    settings = settled(settings)
    resolution = int(settings["resolution"])
    family_spec = spec(family)
    pixel_scale = (resolution / family_spec.native_resolution) ** 2
    attention = family_spec.denoiser_attention_tflops
    forward = (family_spec.denoiser_tflops - attention) * pixel_scale + attention * pixel_scale**2
    # Full weights: backward = 2 forwards (input and weight gradients). Frozen base (LoRA,
    # textual inversion): only input gradients flow, about 1 forward.
    passes = 3.0 if method in FULL_METHODS else 2.0
    if settings["gradient_checkpointing"]:
        passes += 1.0
    total = forward * passes
    if not settings["cache_latents"]:
        total += VAE_ENCODE_TFLOPS_512 * (resolution / 512) ** 2
    text = family_spec.text_encoder_tflops
    if settings["train_text_encoder"] or method == "textual_inversion":
        total += text * (3.0 if settings["train_text_encoder"] and method in FULL_METHODS else 2.0)
    elif not settings["cache_text_encoder_outputs"]:
        total += text
    return total


def batch_efficiency(family: str, settings: dict[str, Any]) -> float:
    """Fraction of the saturated MFU reached with this batch and resolution (0.35 … 1)."""
    settings = settled(settings)
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


def _known(family: str) -> bool:
    """Whether ``family`` names a family or a variant planned on its own (``sd35-large``)."""
    try:
        spec(family)
    except UserError:
        return False
    return True


def images_per_second(family: str, method: str, settings: dict[str, Any], gpu: Any, accumulation: int = 1) -> float | None:
    """Training images per second on one GPU, the memory techniques priced in; None without a
    known GPU (e.g. on the CPU)."""
    if gpu is None or not _known(family):
        return None
    settings = settled(settings)
    tflops = dense_tflops(gpu, str(settings["mixed_precision"]))
    if not tflops:
        return None
    bandwidth = memory_bandwidth(gpu)
    flops = training_tflops_per_image(family, method, settings) * 1e12
    seconds_per_flop = 1 / (tflops * 1e12 * MATMUL_EFFICIENCY) + 1 / (ARITHMETIC_INTENSITY * bandwidth)
    compute_s = flops * seconds_per_flop / batch_efficiency(family, settings)
    optimizer = str(settings["optimizer"])
    on_gpu = trainable(family, method, settings).params - _cpu_stepped(family, method, settings)
    step_s = on_gpu * OPTIMIZER_BYTES_PER_PARAM.get(optimizer, 28) / bandwidth
    images_per_step = int(settings["batch_size"]) * max(1, accumulation)
    cost = technique_cost(family, method, settings, gpu)
    per_image = compute_s + (step_s + cost.seconds_per_step * max(1, accumulation) + cost.optimizer_s) / images_per_step
    return 1.0 / per_image


def _cpu_stepped(family: str, method: str, settings: dict[str, Any]) -> int:
    """Parameters the optimizer steps on the CPU: a full fine-tune's swapped blocks (0 otherwise)."""
    from core.memory.techniques import swap_of

    if method not in FULL_METHODS:
        return 0
    return swap_of(family, int(settings.get("blocks_to_swap", 0) or 0)).params


@dataclass(frozen=True)
class TechniqueCost:
    """What the memory techniques cost on one GPU: per micro-batch ``swap_s`` the exposed (not
    hidden) PCIe time of the swapped blocks, ``dequant_s`` the weight dequantization; per
    optimizer step ``optimizer_s``, a full fine-tune's swapped blocks stepped on the CPU;
    ``notes`` say why (the matmuls themselves keep the compute dtype's rate: the trainer's
    quantized bases are weight-only)."""

    swap_s: float = 0.0
    dequant_s: float = 0.0
    notes: tuple[str, ...] = ()
    optimizer_s: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        """Seconds added to each micro-batch."""
        return self.swap_s + self.dequant_s


def has_fp8_compute(gpu: Any) -> bool:
    """Whether the GPU has fp8 tensor cores (compute capability 8.9, Ada, and later)."""
    cc = _compute_capability(gpu)
    return cc is not None and cc >= FP8_COMPUTE_CAPABILITY


def _compute_capability(gpu: Any) -> tuple[int, int] | None:
    """A probed GPU's or catalog model's compute capability (None when unknown)."""
    cc = getattr(gpu, "compute_capability", None) or getattr(getattr(gpu, "model", None), "compute_capability", None)
    return (int(cc[0]), int(cc[1])) if cc else None


def pcie_bytes_per_second(gpu: Any) -> float:
    """Host-to-device bandwidth from pinned memory: PCIe 5 from Hopper on (9.0+), 4 for Ampere
    and Ada (8.x), 3 before; the RTX 50 series (12.x) is PCIe 5 too."""
    cc = _compute_capability(gpu)
    major = cc[0] if cc else 8
    return PCIE_BYTES_PER_S[5 if major >= 9 else 4 if major == 8 else 3]


def technique_cost(family: str, method: str, settings: dict[str, Any], gpu: Any) -> TechniqueCost:
    """The price of the base precision and the block swap on ``gpu`` (see docs/planning.md).

    Block swap: each swapped block crosses PCIe twice a step (forward and backward, host to
    device only: the frozen copy on the GPU is dropped, not copied back), one block ahead of
    the compute; a transfer longer than the block it overlaps costs the difference. A full
    fine-tune's block moves its master weights (fp32, or bf16 with full_bf16), and in backward
    its gradients go back to host memory on the other direction of the link, hidden behind the
    block's backward (input and weight gradients) as far as it lasts; the optimizer then steps
    the swapped blocks on the CPU (CPU_OPTIMIZER_PARAMS_PER_S), once per optimizer step.
    A quantized base is weight-only (core/train/model/quantize.py): each use of a weight (forward,
    backward, a checkpointed recompute) first writes its compute-dtype copy, a memory-bound pass
    over the layer; the matmul itself runs at the compute dtype's rate on every GPU, fp8 tensor
    cores (Ada and later) unused.
    """
    from core.memory.data import params
    from core.memory.techniques import STORAGE, precision_of, stored_bytes, swap_of

    settings = settled(settings)
    tflops = dense_tflops(gpu, str(settings["mixed_precision"]))
    if not tflops or (method in FULL_METHODS and not int(settings.get("blocks_to_swap", 0) or 0)):
        return TechniqueCost()
    comp = params()[family][spec(family).denoiser]
    base = precision_of(settings.get("base_precision"), str(settings["mixed_precision"])) if method not in FULL_METHODS else "bf16"
    batch = int(settings["batch_size"])
    forward_s = spec(family).denoiser_tflops * (int(settings["resolution"]) / spec(family).native_resolution) ** 2 * 1e12 * batch / (tflops * 1e12 * MATMUL_EFFICIENCY)
    notes: list[str] = []
    swap_s = optimizer_s = 0.0
    swap = swap_of(family, int(settings.get("blocks_to_swap", 0) or 0))
    full = method in FULL_METHODS
    if swap.count:
        pcie = pcie_bytes_per_second(gpu)
        # backward: input gradients (plus weight gradients when the weights train), plus the recompute
        backward_passes = (2.0 if full else 1.0) + (1.0 if settings["gradient_checkpointing"] else 0.0)
        master = 2 if settings["full_bf16"] and settings["mixed_precision"] != "no" else 4
        moved = 0
        for block in swap.blocks:
            block_bytes = block * master if full else stored_bytes(comp, base, block)
            grad_bytes = block * master if full else 0
            moved += 2 * block_bytes + grad_bytes
            compute = forward_s * block / max(1, int(comp["params"]))
            swap_s += max(0.0, block_bytes / pcie - compute) + max(0.0, max(block_bytes, grad_bytes) / pcie - compute * backward_passes)
        notes.append(f"{swap.count} blocks swapped: {moved / GIB:.1f} GiB over PCIe per step at {pcie / GIB:.0f} GiB/s, {swap_s:.2f} s of it not hidden by compute")
        if full:
            optimizer = str(settings["optimizer"])
            rate = CPU_OPTIMIZER_PARAMS_PER_S.get(optimizer, min(CPU_OPTIMIZER_PARAMS_PER_S.values()))
            optimizer_s = swap.params / rate
            fastest = max(CPU_OPTIMIZER_PARAMS_PER_S, key=lambda name: CPU_OPTIMIZER_PARAMS_PER_S[name])
            hint = f"; {fastest} steps {CPU_OPTIMIZER_PARAMS_PER_S[fastest] / rate:.0f}× faster there (torch's fused kernel)" if optimizer != fastest else ""
            notes.append(f"the swapped blocks' {swap.params / 1e9:.1f} B parameters step on the CPU: {optimizer_s:.1f} s per optimizer step ({optimizer}){hint}")
    dequant_s = 0.0
    if base in STORAGE:
        uses = 2.0 + (1.0 if settings["gradient_checkpointing"] else 0.0)
        quantized = int(comp.get("quantizable_params", 0))
        dequant_s = uses * quantized * (STORAGE[base].value_bytes + 2 * 2) / (memory_bandwidth(gpu) * DEQUANT_EFFICIENCY[base])
        notes.append(f"{base} base: weight-only, each use of a weight is upcast to the compute dtype for its matmul ({dequant_s:.2f} s a step)")
        if base.startswith("fp8"):
            notes.append(
                "fp8 matmuls are not used: the weights are only stored in fp8"
                + (", as this GPU has no fp8 compute (before Ada) anyway" if not has_fp8_compute(gpu) else " (this GPU's fp8 tensor cores stay idle)")
            )
    return TechniqueCost(swap_s, dequant_s, tuple(notes), optimizer_s)


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
    if gpu is None or not _known(family):
        return None
    settings = settled(settings)
    tflops = dense_tflops(gpu, str(settings["mixed_precision"]))
    if not tflops:
        return None
    resolution = int(settings["resolution"])
    family_spec = spec(family)
    forward = family_spec.denoiser_tflops * (resolution / family_spec.native_resolution) ** 2
    flops = (forward * steps * (2 if guidance else 1) + family_spec.text_encoder_tflops + VAE_DECODE_TFLOPS_512 * (resolution / 512) ** 2) * 1e12
    seconds_per_flop = 1 / (tflops * 1e12 * MATMUL_EFFICIENCY) + 1 / (ARITHMETIC_INTENSITY * memory_bandwidth(gpu))
    return flops * seconds_per_flop / batch_efficiency(family, settings)
