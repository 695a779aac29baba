"""The memory techniques of a run, from first principles: how many bytes a stored parameter takes
at each base precision, which blocks a block swap keeps off the GPU and what it needs there
instead, and what host RAM the run holds (see docs/memory.md).

Pure arithmetic on the measured counts of params.json (bench/measure_params.py): no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.families import spec
from core.settings import QUANTIZED_PRECISIONS
from core.units import GIB

#: Values per block of nf4's absmax (bitsandbytes' default blocksize).
SCALE_BLOCK = 64
#: bitsandbytes' double quantization (``compress_statistics``, Params4bit's default): each block's
#: absmax is stored in 1 byte, with an fp32 scale per 256 of those.
NF4_ABSMAX_BYTES = 1 + 4 / 256
#: Blocks a block swap holds on the GPU besides the resident ones: the swapped block being
#: computed and the next one arriving on the side stream (prefetched one block ahead).
PREFETCH_BLOCKS = 2
#: Host memory of one training process before any model is loaded: the Python interpreter,
#: torch and the CUDA libraries (cuBLAS, cuDNN, NCCL) mapped in (about 2.5 GiB resident).
PROCESS_RAM_BYTES = int(2.5 * GIB)
#: Share of the machine's RAM a plan leaves free (the OS, the page cache the data loader reads
#: through, other users).
RAM_HEADROOM = 0.15


@dataclass(frozen=True)
class Storage:
    """How one precision stores a quantized layer: bytes per value plus its scales (``per`` says
    what one scale covers: a ``row`` of the weight, a ``block`` of SCALE_BLOCK values, or nothing)."""

    value_bytes: float
    scale_bytes: float
    per: str
    library: str


#: The storage of each quantized precision, as core/train/model/quantize.py stores it (the
#: torchao figures measured with its ``quantized_bytes`` on a 512×1024 layer):
#: fp8 = e4m3 bytes, no scale (a cast, upcast per matmul); fp8_scaled = torchao's Float8Tensor,
#: an fp32 scale per output row; int8 = torchao's Int8Tensor, an fp32 scale and an int8 zero
#: point per row; nf4 = bitsandbytes' 4-bit NormalFloat, two values a byte, a double-quantized
#: absmax per block of 64.
STORAGE: dict[str, Storage] = {
    "fp8": Storage(1.0, 0, "", "a cast"),
    "fp8_scaled": Storage(1.0, 4, "row", "torchao"),
    "int8": Storage(1.0, 5, "row", "torchao"),
    "nf4": Storage(0.5, NF4_ABSMAX_BYTES, "block", "bitsandbytes"),
}
#: The quantized precisions (one source: core.settings).
QUANTIZED = QUANTIZED_PRECISIONS


def precision_of(value: Any, mixed_precision: str) -> str:
    """The precision a component is stored in: ``auto`` (or empty) follows the run's mixed
    precision (``no``: fp32)."""
    text = str(value or "auto")
    if text != "auto":
        return text
    return "fp32" if mixed_precision == "no" else mixed_precision


def plain_bytes(precision: str) -> int:
    """Bytes of one unquantized value in ``precision`` (fp32 4, bf16/fp16 2; a quantized
    precision's layers that stay in high precision: 2)."""
    return 4 if precision == "fp32" else 2


def stored_bytes(comp: Mapping[str, Any], precision: str, params: int | None = None) -> int:
    """Bytes of a component (or ``params`` of it, at its average density) stored in ``precision``.

    Only its quantizable Linear weights (``quantizable_params``, ``quantizable_rows``: the
    nn.Linear weights outside the spec's high-precision patterns) are quantized; norms,
    embeddings, modulation, convolutions and biases stay in bf16.
    """
    total = int(comp["params"])
    count = total if params is None else params
    if precision not in STORAGE:
        return count * plain_bytes(precision)
    store = STORAGE[precision]
    quantizable = int(comp.get("quantizable_params", 0))
    scales = 0
    if store.per == "row":
        scales = int(comp.get("quantizable_rows", 0))
    elif store.per == "block":
        scales = -(-quantizable // SCALE_BLOCK)
    whole = int(quantizable * store.value_bytes + scales * store.scale_bytes + (total - quantizable) * 2)
    return whole if params is None else int(whole * count / max(1, total))


def dequant_buffer_bytes(comp: Mapping[str, Any], precision: str) -> int:
    """The bf16 copy of the largest quantized layer a weight-only quantized forward or backward
    holds while it multiplies (0 unquantized)."""
    if precision not in STORAGE:
        return 0
    return int(comp.get("largest_linear", 0)) * 2


@dataclass(frozen=True)
class Swap:
    """A block swap of ``count`` blocks: the parameters that live in host memory (``params``),
    the largest swapped block (``largest_block``), of ``total_blocks``, and the parameters the
    GPU holds for them in flight (``buffer_params``: the largest PREFETCH_BLOCKS consecutive
    swapped blocks, the one computing and the one arriving)."""

    count: int
    params: int
    largest_block: int
    total_blocks: int
    buffer_params: int = 0
    #: Parameters of each swapped block, in forward order.
    blocks: tuple[int, ...] = ()


def denoiser_blocks(family: str) -> list[int]:
    """Parameter counts of the denoiser's swappable blocks in the order they run (its spec's
    block lists, measured on the meta device into params.json ``blocks``)."""
    from . import data

    blocks = data.params()[family][spec(family).denoiser].get("blocks", {})
    return [int(n) for name in blocks for n in blocks[name]]


def max_swappable(family: str) -> int:
    """How many blocks a swap can take away: all but one (one block must compute on the GPU)."""
    return max(0, len(denoiser_blocks(family)) - 1)


def swap_of(family: str, count: int) -> Swap:
    """The swap of the last ``count`` blocks (as musubi-tuner and sd-scripts swap: the blocks
    last in the forward pass, first in the backward pass); 0 blocks: no swap."""
    blocks = denoiser_blocks(family)
    count = max(0, min(int(count), max(0, len(blocks) - 1)))
    swapped = blocks[len(blocks) - count :] if count else []
    window = min(PREFETCH_BLOCKS, len(swapped))
    buffer = max((sum(swapped[i : i + window]) for i in range(len(swapped) - window + 1)), default=0)
    return Swap(count, sum(swapped), max(swapped, default=0), len(blocks), buffer, tuple(swapped))


@dataclass
class HostEstimate:
    """Host RAM the run holds on one machine at its peak (``phase``: loading or training), with a
    breakdown of that phase and of training (``training``, what stays while it trains), bytes."""

    total_bytes: int
    breakdown: dict[str, int]
    phase: str
    training: dict[str, int] = field(default_factory=dict)

    @property
    def gb(self) -> float:
        """The total in GiB."""
        return self.total_bytes / GIB

    def fits(self, ram_bytes: int, headroom: float = RAM_HEADROOM) -> bool:
        """Whether the run's host memory fits in ``ram_bytes`` leaving ``headroom`` free."""
        return self.total_bytes <= ram_bytes * (1.0 - headroom)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: total bytes and GiB, the breakdown, the phase."""
        return {"total_bytes": self.total_bytes, "gb": round(self.gb, 2), "breakdown": dict(self.breakdown), "phase": self.phase, "training": dict(self.training)}


def parse_ram(text: str) -> int:
    """``64GB``, ``64G``, ``64GiB``, ``64`` (GiB) or ``0.5TB`` as bytes (GiB, the unit memory is
    counted in); ValueError naming the form otherwise."""
    value = str(text).strip().upper().replace(" ", "")
    for suffix, scale in (("TIB", 1024), ("TB", 1024), ("T", 1024), ("GIB", 1), ("GB", 1), ("G", 1)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], scale
            break
    else:
        factor = 1
    try:
        amount = float(value)
    except ValueError:
        raise ValueError(f"'{text}' is not a memory size; write it like 64GB") from None
    if not amount > 0 or amount != amount:
        raise ValueError(f"'{text}' is not a memory size above zero; write it like 64GB")
    return int(amount * factor * GIB)
