"""The peak-VRAM estimate of one training rank, from first principles (see docs/memory.md).

peak = held throughout (weights, optimizer state, EMA, DDP buckets, communication buffers)
       + the largest of the step's phases:
           forward end       autocast copies + kept activations
           backward start    (copies without checkpointing) + kept activations + working set
           backward end      gradients + working set
           optimizer step    gradients + per-tensor temporaries
           VAE encoding      the encoder's widest tensors (latents not cached)
           sampling          what a sample brings back: encoders, inference activations, VAE decoder
       (or, when larger, the caching before training: encoders and VAE without the denoiser)
       + fragmentation + CUDA context,
replaced by a measured peak when calibration.json has one for the same setup.
No torch import: the TUI calls this on every keystroke of a settings override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from core.errors import UserError
from core.families import FAMILIES, spec
from core.settings import BACKENDS, FULL_METHODS, METHODS, resolve
from core.units import GIB

from . import data
from .calibration import match_point
from .techniques import PREFETCH_BLOCKS, PROCESS_RAM_BYTES, STORAGE, HostEstimate, Swap, dequant_buffer_bytes, max_swappable, precision_of, stored_bytes, swap_of
from .trainable import trainable

#: Free VRAM an estimate must leave on a GPU to count as fitting (the picker, the plan, preflight, the TUI).
HEADROOM = 0.10
#: CUDA context plus cuBLAS/cuDNN workspaces of one process.
CUDA_CONTEXT_BYTES = int(0.8 * GIB)
#: NCCL's buffers when more than one GPU trains.
NCCL_BYTES = int(0.25 * GIB)
#: DeepSpeed's reduce / all-gather buckets.
DEEPSPEED_BUCKET_BYTES = int(0.5 * GIB)
#: Parameters DeepSpeed ZeRO-3 gathers ahead of the module computing (stage3_prefetch_bucket_size).
DEEPSPEED_PREFETCH_PARAMS = 50_000_000
#: What PyTorch's caching allocator reserves beyond what is allocated.
FRAGMENTATION = 0.05
#: The VAE encoder's peak, in values per pixel: its first stage works on 128 channels at full
#: resolution and holds five such tensors at once (measured on the CPU with the real-size VAE:
#: 5.0 at 256 and 384 px, ``python -m bench.measure_activations --validate``).
VAE_ENCODE_TENSORS = 5 * 128
#: The VAE decoder's peak for one sample, in values per pixel: its last two stages run at full
#: resolution (256 channels after the upsampling of the third, then 128), about twice the
#: encoder's first stage (not measured: the decoder is twice the encoder's FLOPs too).
VAE_DECODE_TENSORS = 2 * VAE_ENCODE_TENSORS
#: fp32 temporaries Adafactor's step holds for its tensor (gradient, its square, the update,
#: the parameter for rounding back to bf16).
STEP_TEMPORARIES = 4
#: Image pixels per latent pixel side: every family's VAE downsamples 8× (the activation fits are in latent pixels).
VAE_DOWNSCALE = 8
#: Adapted layers of one transformer block (self- and cross-attention q, k, v, out; the
#: feed-forward adds two): how many LoHa/LoKr deltas a checkpointed block rebuilds at once.
DELTA_LAYERS_PER_BLOCK = 10

BREAKDOWN_KEYS = (
    "weights_denoiser",
    "weights_text_encoders",
    "weights_vae",
    "weights_adapters",
    "weights_swap_buffers",
    "autocast_copies",
    "gradients",
    "optimizer_states",
    "ema",
    "ddp_buckets",
    "activations",
    "vae_encode",
    "optimizer_step",
    "dequantization",
    "fsdp_gather",
    "sampling",
    "caching",
    "communication",
    "fragmentation",
    "cuda_context",
    "calibration",
)


@dataclass
class Estimate:
    """A peak-VRAM estimate per GPU: the total, what is in memory at that moment (bytes), and
    the ``phase`` of the step where the peak falls (forward, backward (start|end), optimizer
    step, VAE encoding)."""

    total_bytes: int
    breakdown: dict[str, int]
    phase: str = ""
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)
    host: HostEstimate | None = None

    @property
    def gb(self) -> float:
        """The total in GiB (the unit nvidia-smi and the GPU list use)."""
        return self.total_bytes / GIB

    @property
    def allocated_bytes(self) -> int:
        """The tensors alone at the peak: what ``torch.cuda.max_memory_allocated`` reads."""
        return self.total_bytes - self.reserved_extra_bytes - self.breakdown.get("cuda_context", 0)

    @property
    def reserved_extra_bytes(self) -> int:
        """What the caching allocator reserves beyond the tensors (fragmentation)."""
        return self.breakdown.get("fragmentation", 0)

    @property
    def reserved_bytes(self) -> int:
        """Allocated plus the allocator's slack: what ``torch.cuda.max_memory_reserved`` reads."""
        return self.total_bytes - self.breakdown.get("cuda_context", 0)

    def fits(self, vram_bytes: int, headroom: float = HEADROOM) -> bool:
        """Whether the peak fits in ``vram_bytes`` leaving ``headroom`` (a fraction) free."""
        return self.total_bytes <= vram_bytes * (1.0 - headroom)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: total bytes and GiB, the breakdown, calibration and notes."""
        return {
            "total_bytes": self.total_bytes,
            "gb": round(self.gb, 2),
            "breakdown": dict(self.breakdown),
            "phase": self.phase,
            "calibrated": self.calibrated,
            "notes": list(self.notes),
            "peaks": {
                "nvidia_smi_bytes": self.total_bytes,
                "reserved_bytes": self.reserved_bytes,
                "allocated_bytes": self.allocated_bytes,
            },
            "host": self.host.to_json() if self.host is not None else None,
        }


def _poly(coeffs: list[float], tokens: float) -> float:
    c0, c1, c2 = coeffs
    return max(0.0, c0 + c1 * tokens + c2 * tokens * tokens)


def unet_activation_parts(family: str, mode: str, half: bool, checkpointing: bool, attention: str, resolution: int) -> tuple[int, int]:
    """Activation bytes of one image through the UNet: (kept for backward, backward working set).

    The working set is the checkpointed block being recomputed plus two tensors of the largest
    activation's size (the incoming and outgoing gradient).
    """
    key = f"{mode}/{'half' if half else 'fp32'}/{'ckpt' if checkpointing else 'nockpt'}/{attention}"
    fit = data.activations()[spec(family).denoiser][family][key]
    tokens = (resolution / VAE_DOWNSCALE) ** 2
    return int(_poly(fit["saved"], tokens)), int(_poly(fit["recompute"], tokens) + 2 * _poly(fit["largest"], tokens))


def text_encoder_activations(family: str, encoders: list[str], half: bool, checkpointing: bool) -> int:
    """Bytes one caption keeps for the backward pass through the text encoders.

    Without checkpointing every layer's saved tensors (measured, activations.json); with it, as
    the trainer checkpoints trained text encoders, only each layer's input (the fp32 residual
    stream, the encoder's tokens × width) plus one layer being recomputed.
    """
    total = 0
    for name in encoders:
        saved = data.activations()["text_encoders"][family][name] * (1 if half else 2)
        if checkpointing:
            layers, width = _text_encoder_shape(family, name)
            saved = layers * spec(family).max_tokens(name) * width * 4 + saved // layers
        total += saved
    return total


@cache
def _text_encoder_shape(family: str, name: str) -> tuple[int, int]:
    """(layers, hidden width) of one text encoder of ``family`` (its spec's config: CLIP's or T5's names)."""
    config = spec(family).configs[name]
    return int(config.get("num_hidden_layers", config.get("num_layers", 0))), int(config.get("hidden_size", config.get("d_model", 0)))


def estimate(
    family: str,
    method: str,
    settings: dict[str, Any] | None = None,
    num_gpus: int = 1,
    backend: str = "ddp",
    *,
    zero_stage: int = 2,
    offload: bool = False,
    prior_preservation: bool | None = None,
    sampling: bool = False,
) -> Estimate:
    """Peak VRAM per GPU for training ``family`` with ``method`` and ``settings`` on ``num_gpus``.

    ``settings`` may be partial (missing keys take the defaults of core.settings.SETTINGS).
    ``backend`` is ddp, deepspeed (``zero_stage`` 1-3, ``offload`` of optimizer state to the CPU)
    or fsdp (full sharding). ``prior_preservation`` (default: on for DreamBooth) doubles the
    images per step, as each instance image is paired with a class image. ``sampling``: the run
    draws samples, so the encoders and the VAE come back to the GPU for them (counted).

    ``total_bytes`` is what nvidia-smi shows for the process at its peak: the tensors
    (``allocated_bytes``, torch's max_memory_allocated), the allocator's slack (``reserved_bytes``,
    max_memory_reserved) and the CUDA context. ``host`` is the host RAM the run needs.
    """
    if family not in FAMILIES and family not in {s for f in FAMILIES for s in spec(f).sized_variants}:
        raise UserError(f"unknown model family '{family}'; use one of {', '.join(FAMILIES)}")
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown distributed backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if num_gpus < 1:
        raise UserError(f"the GPU count must be at least 1 (got {num_gpus})")
    s = resolve("settings", settings)
    raw, phase, notes, host = _raw(family, method, s, num_gpus, backend, zero_stage, offload, prior_preservation, sampling)
    total = sum(raw.values())
    point = match_point(family, method, s, num_gpus, backend)
    if point is not None:
        raw["calibration"] = int(point["measured_peak_bytes"]) - total
        notes.append(f"calibrated to a measured peak ({point.get('source', 'calibration.json')})")
        total = int(point["measured_peak_bytes"])
    return Estimate(total, raw, phase, calibrated=point is not None, notes=notes, host=host)


@dataclass(frozen=True)
class _Layout:
    """How one estimate's weights are held: byte widths and precisions, sharding, the swap, what
    is trained and what stays on the GPU."""

    comps: dict[str, Any]
    denoiser: str
    #: The text encoders ``train_text_encoder`` trains (never T5).
    trained_encoders: list[str]
    encoders: list[str]
    n: int
    ds: bool
    half: bool
    frozen_b: int
    master_b: int
    trained_store_b: int
    grad_b: int
    vae_b: int
    shard: int
    weight_shard: int
    full: bool
    te_trained: bool
    te_resident: bool
    #: The text encoders are freed once the caches and the sample prompts are encoded (``FamilySpec.encoders_leave``).
    te_freed: bool
    trained: int
    largest: int
    base: str
    te_precision: str
    swap: Swap

    @property
    def gpu_trained(self) -> int:
        """Trained parameters whose weights, gradients and optimizer state stay on the GPU: a full
        fine-tune's swapped blocks keep theirs in host memory."""
        return self.trained - self.swap.params if self.full else self.trained


def _layout(family: str, method: str, s: dict[str, Any], n: int, backend: str, zero_stage: int) -> _Layout:
    """The byte widths and sharding of a run. Under DeepSpeed the trained weights are half and the
    fp32 master copy is part of the (sharded) optimizer state; FSDP and ZeRO-3 shard every weight."""
    comps = data.params()[family]
    half = s["mixed_precision"] != "no"
    frozen_b = 2 if half else 4
    master_b = 2 if (half and s["full_bf16"]) else 4
    ds = backend == "deepspeed"
    te_trained = s["train_text_encoder"] and method != "textual_inversion"
    counted = trainable(family, method, s)
    full = method in FULL_METHODS
    te_resident = te_trained or method == "textual_inversion" or not s["cache_text_encoder_outputs"] or _captions_change(s)
    return _Layout(
        comps=comps,
        denoiser=spec(family).denoiser,
        trained_encoders=list(spec(family).trainable_text_encoder_names),
        encoders=[c for c in comps if c.startswith("text_encoder")],
        n=n,
        ds=ds,
        half=half,
        frozen_b=frozen_b,
        master_b=master_b,
        trained_store_b=frozen_b if ds else master_b,
        grad_b=2 if ds else master_b,
        vae_b=2 if s["mixed_precision"] == "bf16" else 4,
        shard=n if (ds or backend == "fsdp") else 1,
        weight_shard=n if (backend == "fsdp" or (ds and zero_stage == 3)) else 1,
        full=full,
        te_trained=te_trained,
        te_resident=te_resident,
        te_freed=spec(family).encoders_leave(method, cached=not te_resident),
        trained=counted.params,
        largest=counted.largest,
        base=precision_of(s.get("base_precision"), s["mixed_precision"]),
        te_precision=precision_of(s.get("text_encoder_precision"), s["mixed_precision"]),
        swap=swap_of(family, int(s.get("blocks_to_swap", 0) or 0)),
    )


def _captions_change(s: dict[str, Any]) -> bool:
    return bool(s["shuffle_caption"] or s["caption_tag_dropout_rate"] > 0)


def _caching_notes(method: str, s: dict[str, Any], te_trained: bool) -> list[str]:
    """Why text-encoder outputs asked to be cached are not."""
    if s["cache_text_encoder_outputs"] and (te_trained or method == "textual_inversion"):
        return ["text-encoder outputs cannot be cached while the text encoder is trained; it stays on the GPU"]
    if s["cache_text_encoder_outputs"] and _captions_change(s):
        return ["shuffled or tag-dropped captions change every step, so text-encoder outputs are not cached; it stays on the GPU"]
    return []


def _frozen_encoder_bytes(lay: _Layout) -> int:
    """The text encoders, frozen, at ``text_encoder_precision``."""
    return sum(stored_bytes(lay.comps[c], lay.te_precision) for c in lay.encoders)


# ---- the terms -------------------------------------------------------------------------------


def weights_term(lay: _Layout, method: str, s: dict[str, Any]) -> dict[str, int]:
    """The weights on the GPU: the denoiser (at its base precision, less the swapped blocks, plus
    the blocks in flight), the text encoders unless their outputs are cached, the VAE unless the
    latents are, the adapters."""
    comps = lay.comps
    den = comps[lay.denoiser]
    b: dict[str, int] = {}
    if lay.full:
        b["weights_denoiser"] = (den["params"] - lay.swap.params) * lay.trained_store_b // lay.weight_shard
        b["weights_swap_buffers"] = lay.swap.buffer_params * lay.trained_store_b
    else:
        b["weights_denoiser"] = (stored_bytes(den, lay.base) - stored_bytes(den, lay.base, lay.swap.params)) // lay.weight_shard
        b["weights_swap_buffers"] = stored_bytes(den, lay.base, lay.swap.buffer_params)
    b["weights_text_encoders"] = 0
    if lay.te_resident:
        for c in lay.encoders:
            count = comps[c]["params"]
            if lay.full and lay.te_trained and c in lay.trained_encoders:
                b["weights_text_encoders"] += count * lay.trained_store_b // lay.weight_shard
            elif method == "textual_inversion":
                b["weights_text_encoders"] += count * lay.trained_store_b
            else:
                b["weights_text_encoders"] += stored_bytes(comps[c], lay.te_precision) // lay.weight_shard
    if not s["cache_latents"]:
        b["weights_vae"] = comps["vae"]["params"] * lay.vae_b
    if method == "lora":
        b["weights_adapters"] = lay.trained * lay.trained_store_b // lay.weight_shard
    return b


def autocast_copies_term(lay: _Layout, method: str, s: dict[str, Any]) -> int:
    """Autocast keeps a half copy of every fp32 trained weight a matmul or conv uses, from the
    forward pass until the backward pass has used it (for textual inversion: of the fp32 text
    encoders' layers, kept for the backward pass to the embeddings)."""
    if not (lay.half and lay.master_b == 4 and not lay.ds):
        return 0
    if method == "textual_inversion":
        layers: int = sum(lay.comps[c]["params"] - lay.comps[c]["token_embedding_params"] for c in lay.encoders)
        return layers * 2
    if lay.full and lay.swap.params:
        # a swapped block's copies are made from its device copy: without checkpointing the backward
        # keeps them all (saved tensors); with it the swap clears autocast's cache as each swapped
        # block ends, so the resident blocks' copies and one swapped block's remain
        return (lay.trained if not s["gradient_checkpointing"] else lay.gpu_trained + lay.swap.largest_block) * 2
    return lay.gpu_trained * 2


def gradients_term(lay: _Layout, s: dict[str, Any], zero_stage: int, offload: bool, backend: str) -> int:
    """Gradients (not held in the forward pass: the trainer frees them after each step); a fused
    backward pass holds the largest tensor's only."""
    if s["fused_backward_pass"] and not lay.ds:
        return min(lay.trained, lay.largest) * lay.grad_b
    grad_shard = lay.n if ((lay.ds and zero_stage >= 2) or backend == "fsdp") else 1
    # a full fine-tune's swapped block holds its gradients on the GPU until they have gone to host memory
    in_flight = lay.swap.largest_block * lay.grad_b if lay.full else 0
    return 0 if (lay.ds and offload and zero_stage >= 2) else lay.gpu_trained * lay.grad_b // grad_shard + in_flight


def optimizer_term(lay: _Layout, s: dict[str, Any], offload: bool, backend: str) -> dict[str, int]:
    """What is held throughout: the optimizer state, EMA, DDP buckets and the communication buffers."""
    b: dict[str, int] = {}
    state = _optimizer_state_bytes(s["optimizer"], lay.trained, 4 if lay.ds else lay.master_b, lay.comps, lay.full, lay.te_trained, lay.trained_encoders, lay.denoiser)
    if lay.full and lay.swap.params:  # the swapped blocks' share lives in host memory
        state = state * lay.gpu_trained // max(1, lay.trained)
    if lay.ds:
        state += lay.gpu_trained * 4 if lay.half else 0
        b["optimizer_states"] = 0 if offload else state // lay.n
    else:
        b["optimizer_states"] = state // lay.shard
    if s["ema"]:
        b["ema"] = lay.gpu_trained * lay.master_b // lay.shard
    if lay.n > 1 and backend == "ddp":
        b["ddp_buckets"] = lay.gpu_trained * lay.grad_b
    if lay.n > 1:
        b["communication"] = NCCL_BYTES + (DEEPSPEED_BUCKET_BYTES if lay.ds else 0)
    return b


def gather_term(lay: _Layout, family: str) -> int:
    """FSDP2 / ZeRO-3: the unsharded copies of the units being computed. FSDP2 (core/launch/
    accelerate_config.py) shards each block the model names in ``_no_split_modules`` (FLUX's double
    and single blocks, the UNets' cross-attention up blocks and transformer and ResNet blocks) and
    gathers the next while one computes: the largest two consecutive blocks of the spec's block
    lists (the largest tensor's two without lists). DeepSpeed gathers its prefetch bucket
    (``stage3_prefetch_bucket_size``, 5e7 parameters) beside the module computing."""
    if lay.weight_shard <= 1:
        return 0
    largest = int(lay.comps[lay.denoiser]["largest_param"])
    if lay.ds:
        units = DEEPSPEED_PREFETCH_PARAMS + largest
    else:
        units = swap_of(family, max_swappable(family)).buffer_params or PREFETCH_BLOCKS * largest
    return units * lay.frozen_b  # gathered in the compute dtype (accelerate's mixed-precision policy)


def activations_term(lay: _Layout, family: str, method: str, s: dict[str, Any], images: int, notes: list[str]) -> tuple[int, int]:
    """Activations, measured per image (bench/measure_activations.py), times the images per step:
    ``kept`` for the backward pass, ``working`` the backward pass's own (recomputed block, gradients)."""
    kept, working = unet_activation_parts(family, "full" if lay.full else "lora", lay.half, s["gradient_checkpointing"], s["attention"], s["resolution"])
    kept *= images
    working *= images
    if lay.te_trained or method == "textual_inversion":
        kept += text_encoder_activations(family, lay.encoders if method == "textual_inversion" else lay.trained_encoders, lay.half, s["gradient_checkpointing"]) * images
    if method == "lora" and s["lora_type"] != "lora":
        # LoHa / LoKr build each adapted layer's full delta weight in the forward pass (fp32, plus
        # its autocast copy) and keep it for the backward pass: with checkpointing one block's worth
        adapted = [lay.denoiser, *(lay.trained_encoders if lay.te_trained else [])]
        delta = sum(lay.comps[c]["lora_weight_params"][s["lora_targets"]] for c in adapted) * (4 + (2 if lay.half else 0))
        layers = sum(lay.comps[c]["lora_layers"][s["lora_targets"]] for c in adapted)
        if s["gradient_checkpointing"]:
            working += delta * min(layers, DELTA_LAYERS_PER_BLOCK) // max(1, layers)
        else:
            kept += delta
        notes.append(f"{s['lora_type']} builds every adapted layer's delta weight each step (counted with the activations)")
    return kept, working


def caches_term(lay: _Layout, s: dict[str, Any], working_per_image: int, resolution: int) -> int:
    """What a sample brings back to the GPU between steps: the text encoders whose outputs are
    cached (off the GPU while training) to encode the prompt, then the denoiser's inference
    activations (two images: classifier-free guidance), then the VAE decoder; one at a time,
    each leaving before the next comes (0 when nothing is off the GPU). Freed encoders do not come
    back: the prompts were encoded at start-up."""
    encoders = 0 if lay.te_resident or lay.te_freed else _frozen_encoder_bytes(lay)
    vae = 0 if not s["cache_latents"] else lay.comps["vae"]["params"] * lay.vae_b
    if not encoders and not vae:
        return 0
    decode = lay.comps["vae"]["params"] * lay.vae_b + VAE_DECODE_TENSORS * resolution**2 * lay.vae_b
    return max(encoders, 2 * working_per_image, decode if vae else 0)


def phases_term(lay: _Layout, s: dict[str, Any], copies: int, grads: int, kept: int, working: int, images: int, dequant: int, sample: int) -> dict[str, dict[str, int]]:
    """What the step holds besides the weights and the state, in each of its phases."""
    # The optimizer's temporaries: the trainer's optimizers work one tensor at a time; Adafactor
    # holds a few fp32 copies of the tensor, the fused and 8-bit kernels about one.
    step = lay.largest * 4 * (STEP_TEMPORARIES if s["optimizer"] == "adafactor" else 1)
    # With checkpointing the half copies are dropped after the forward pass and remade block by
    # block; without it the backward pass frees them with the activations.
    copies_in_backward = 0 if s["gradient_checkpointing"] else copies
    phases: dict[str, dict[str, int]] = {
        "forward": {"autocast_copies": copies, "activations": kept, "dequantization": dequant},
        # gradients appear as activations (and copies) are freed: the peak is at either end
        "backward (start)": {"autocast_copies": copies_in_backward, "activations": kept + working, "dequantization": dequant},
        "backward (end)": {"gradients": grads, "activations": working, "dequantization": dequant},
    }
    if s["fused_backward_pass"] and not lay.ds:
        for phase in ("backward (start)", "backward (end)"):
            phases[phase] = {**phases[phase], "gradients": grads, "optimizer_step": step}
    else:
        phases["optimizer step"] = {"gradients": grads, "optimizer_step": step}
    if not s["cache_latents"]:
        phases["VAE encoding"] = {"vae_encode": VAE_ENCODE_TENSORS * s["resolution"] ** 2 * lay.vae_b * images}
    if sample:
        phases["sampling"] = {"sampling": sample, "dequantization": dequant}
    return phases


def caching_term(lay: _Layout, s: dict[str, Any]) -> int:
    """The text encoders (at their precision) and the VAE encoding the caches before training,
    when the denoiser is not yet on the GPU (it moves there after the caches, as sd-scripts and
    musubi-tuner do)."""
    if lay.te_resident and not s["cache_latents"]:
        return 0
    encoders = 0 if lay.te_resident else _frozen_encoder_bytes(lay)
    vae = int(lay.comps["vae"]["params"]) * lay.vae_b
    encode = VAE_ENCODE_TENSORS * int(s["resolution"]) ** 2 * lay.vae_b if s["cache_latents"] else 0
    return encoders + vae + encode


def host_term(lay: _Layout, s: dict[str, Any], offload: bool) -> HostEstimate:
    """Host RAM of the run on one machine (every rank, ``lay.n`` processes): the processes, the
    swapped blocks in pinned memory (a full fine-tune's with their gradients and optimizer
    state), the encoders and VAE off the GPU kept for the samples (not the encoders a LoRA run
    frees after caching), DeepSpeed's offloaded state; or, at start-up (``loading``: until the
    caches are built), each rank's denoiser and text encoders read in bf16 before they are
    quantized or moved."""
    den = lay.comps[lay.denoiser]
    b: dict[str, int] = {"processes": PROCESS_RAM_BYTES * lay.n}
    if lay.full:
        # the master weights and their gradients (pinned), the optimizer state and the EMA (pageable):
        # the swapped blocks' share of the trained parameters' state
        state = _optimizer_state_bytes(s["optimizer"], lay.trained, lay.master_b, lay.comps, lay.full, lay.te_trained, lay.trained_encoders, lay.denoiser)
        b["swapped_blocks"] = lay.swap.params * lay.master_b * lay.n
        b["swapped_gradients"] = lay.swap.params * lay.grad_b * lay.n
        b["swapped_optimizer_state"] = state * lay.swap.params // max(1, lay.trained) * lay.n
        b["swapped_ema"] = lay.swap.params * lay.master_b * lay.n if s["ema"] else 0
    else:
        b["swapped_blocks"] = stored_bytes(den, lay.base, lay.swap.params) * lay.n
    off_gpu = 0 if lay.te_resident or lay.te_freed or s["cache_text_encoder_outputs_to_disk"] else _frozen_encoder_bytes(lay)
    off_gpu += lay.comps["vae"]["params"] * lay.vae_b if s["cache_latents"] else 0
    b["offloaded_models"] = off_gpu * lay.n
    if lay.ds and offload:
        b["optimizer_offload"] = _optimizer_state_bytes(s["optimizer"], lay.trained, 4, lay.comps, lay.full, lay.te_trained, lay.trained_encoders, lay.denoiser) + lay.trained * 4
    training = sum(v for k, v in b.items() if k != "processes")
    loading = den["params"] * 2 * lay.n
    encoders = sum(int(lay.comps[c]["params"]) * 2 for c in lay.encoders) * lay.n  # read in bf16, then quantized or moved
    if loading + encoders > training:
        return HostEstimate(b["processes"] + loading + encoders, {"processes": b["processes"], "loading": loading, "text_encoders": encoders}, "loading", b)
    return HostEstimate(sum(b.values()), b, "training", b)


def _raw(
    family: str, method: str, s: dict[str, Any], n: int, backend: str, zero_stage: int, offload: bool, prior: bool | None, sampling: bool
) -> tuple[dict[str, int], str, list[str], HostEstimate]:
    """The breakdown at the peak phase (before calibration), that phase, the notes and the host RAM."""
    lay = _layout(family, method, s, n, backend, zero_stage)
    notes = _caching_notes(method, s, lay.te_trained) + _technique_notes(lay)
    b: dict[str, int] = dict.fromkeys(BREAKDOWN_KEYS, 0)
    b.update(weights_term(lay, method, s))
    b.update(optimizer_term(lay, s, offload, backend))
    b["fsdp_gather"] = gather_term(lay, family)
    prior = method == "dreambooth" if prior is None else prior
    images = s["batch_size"] * (2 if prior else 1)
    kept, working = activations_term(lay, family, method, s, images, notes)
    dequant = 0 if lay.full else dequant_buffer_bytes(lay.comps[lay.denoiser], lay.base)
    sample = caches_term(lay, s, working // max(1, images), s["resolution"]) if sampling else 0
    grads = gradients_term(lay, s, zero_stage, offload, backend)
    phases = phases_term(lay, s, autocast_copies_term(lay, method, s), grads, kept, working, images, dequant, sample)
    peak_phase = max(phases, key=lambda name: sum(phases[name].values()))
    b.update(phases[peak_phase])
    caching = caching_term(lay, s)
    if caching > sum(b.values()):
        b = dict.fromkeys(BREAKDOWN_KEYS, 0) | {"caching": caching}
        peak_phase = "caching"
    b["fragmentation"] = int(FRAGMENTATION * sum(b.values()))
    b["cuda_context"] = CUDA_CONTEXT_BYTES
    return b, peak_phase, notes, host_term(lay, s, offload)


def _technique_notes(lay: _Layout) -> list[str]:
    """One line per memory technique in use: what it stores and where."""
    notes = []
    if not lay.full and lay.base in STORAGE:
        notes.append(f"{lay.base} base ({STORAGE[lay.base].library}): the denoiser's Linear weights are stored in {lay.base}, norms, embeddings and modulation in bf16")
    if lay.swap.count and lay.full:
        notes.append(
            f"{lay.swap.count} of {lay.swap.total_blocks} blocks swapped: their master weights and gradients live in pinned host memory, "
            f"their optimizer state beside them, and the optimizer steps them on the CPU; they come to the GPU on their turn, {PREFETCH_BLOCKS} at a time"
        )
    elif lay.swap.count:
        notes.append(f"{lay.swap.count} of {lay.swap.total_blocks} blocks swapped: they live in pinned host memory and come to the GPU on their turn, {PREFETCH_BLOCKS} at a time")
    return notes


def _optimizer_state_bytes(optimizer: str, trained: int, param_b: int, comps: dict[str, Any], full: bool, te_trained: bool, encoders: list[str], denoiser: str) -> int:
    """Optimizer state of the trained parameters, unsharded (Prodigy: two moments, s and the start point p0; schedule-free AdamW: z and the second moment; Lion: one moment)."""
    if optimizer in ("adamw", "schedulefree_adamw"):
        return trained * 2 * param_b
    if optimizer == "prodigy":
        return trained * 4 * param_b
    if optimizer == "adamw8bit":
        return trained * 2
    if optimizer == "lion":
        return trained * param_b
    if optimizer == "lion8bit":
        return trained
    if full:
        floats: int = comps[denoiser]["adafactor_state_floats"]
        if te_trained:
            floats += sum(comps[c]["adafactor_state_floats"] for c in encoders)
        return floats * 4
    return trained * 4
