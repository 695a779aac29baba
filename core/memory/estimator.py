"""The peak-VRAM estimate of one training rank, from first principles (see docs/memory.md).

peak = held throughout (weights, optimizer state, EMA, DDP buckets, communication buffers)
       + the largest of the step's phases:
           forward end       autocast copies + kept activations
           backward start    (copies without checkpointing) + kept activations + working set
           backward end      gradients + working set
           optimizer step    gradients + per-tensor temporaries
           VAE encoding      the encoder's widest tensors (latents not cached)
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
from .trainable import trainable

#: Free VRAM an estimate must leave on a GPU to count as fitting (the picker, the plan, preflight, the TUI).
HEADROOM = 0.10
#: CUDA context plus cuBLAS/cuDNN workspaces of one process.
CUDA_CONTEXT_BYTES = int(0.8 * GIB)
#: NCCL's buffers when more than one GPU trains.
NCCL_BYTES = int(0.25 * GIB)
#: DeepSpeed's reduce / all-gather buckets.
DEEPSPEED_BUCKET_BYTES = int(0.5 * GIB)
#: What PyTorch's caching allocator reserves beyond what is allocated.
FRAGMENTATION = 0.05
#: The VAE encoder's peak, in values per pixel: its first stage works on 128 channels at full
#: resolution and holds five such tensors at once (measured on the CPU with the real-size VAE:
#: 5.0 at 256 and 384 px, ``python -m bench.measure_activations --validate``).
VAE_ENCODE_TENSORS = 5 * 128
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
    "autocast_copies",
    "gradients",
    "optimizer_states",
    "ema",
    "ddp_buckets",
    "activations",
    "vae_encode",
    "optimizer_step",
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

    @property
    def gb(self) -> float:
        """The total in GiB (the unit nvidia-smi and the GPU list use)."""
        return self.total_bytes / GIB

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
) -> Estimate:
    """Peak VRAM per GPU for training ``family`` with ``method`` and ``settings`` on ``num_gpus``.

    ``settings`` may be partial (missing keys take the defaults of core.settings.SETTINGS).
    ``backend`` is ddp, deepspeed (``zero_stage`` 1-3, ``offload`` of optimizer state to the CPU)
    or fsdp (full sharding). ``prior_preservation`` (default: on for DreamBooth) doubles the
    images per step, as each instance image is paired with a class image.
    """
    if family not in FAMILIES:
        raise UserError(f"unknown model family '{family}'; use one of {', '.join(FAMILIES)}")
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown distributed backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if num_gpus < 1:
        raise UserError(f"the GPU count must be at least 1 (got {num_gpus})")
    s = resolve("settings", settings)
    raw, phase, notes = _raw(family, method, s, num_gpus, backend, zero_stage, offload, prior_preservation)
    total = sum(raw.values())
    point = match_point(family, method, s, num_gpus, backend)
    if point is not None:
        raw["calibration"] = int(point["measured_peak_bytes"]) - total
        notes.append(f"calibrated to a measured peak ({point.get('source', 'calibration.json')})")
        total = int(point["measured_peak_bytes"])
    return Estimate(total, raw, phase, calibrated=point is not None, notes=notes)


@dataclass(frozen=True)
class _Layout:
    """How one estimate's weights are held: byte widths, sharding, what is trained and what stays on the GPU."""

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
    trained: int
    largest: int


def _layout(family: str, method: str, s: dict[str, Any], n: int, backend: str, zero_stage: int) -> _Layout:
    """The byte widths and sharding of a run. Under DeepSpeed the trained weights are half and the
    fp32 master copy is part of the (sharded) optimizer state."""
    comps = data.params()[family]
    half = s["mixed_precision"] != "no"
    frozen_b = 2 if half else 4
    master_b = 2 if (half and s["full_bf16"]) else 4
    ds = backend == "deepspeed"
    te_trained = s["train_text_encoder"] and method != "textual_inversion"
    counted = trainable(family, method, s)
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
        full=method in FULL_METHODS,
        te_trained=te_trained,
        te_resident=te_trained or method == "textual_inversion" or not s["cache_text_encoder_outputs"] or _captions_change(s),
        trained=counted.params,
        largest=counted.largest,
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


def _weights(lay: _Layout, method: str, s: dict[str, Any]) -> dict[str, int]:
    """The weights as stored: the UNet, the text encoders on the GPU, the VAE when latents are not cached, the adapters."""
    comps = lay.comps
    b: dict[str, int] = {}
    if lay.full:
        b["weights_denoiser"] = comps[lay.denoiser]["params"] * lay.trained_store_b // lay.weight_shard
    else:
        b["weights_denoiser"] = comps[lay.denoiser]["params"] * lay.frozen_b
    b["weights_text_encoders"] = 0
    if lay.te_resident:
        for c in lay.encoders:
            count = comps[c]["params"]
            if lay.full and lay.te_trained and c in lay.trained_encoders:
                b["weights_text_encoders"] += count * lay.trained_store_b // lay.weight_shard
            elif method == "textual_inversion":
                b["weights_text_encoders"] += count * lay.trained_store_b
            else:
                b["weights_text_encoders"] += count * lay.frozen_b
    if not s["cache_latents"]:
        b["weights_vae"] = comps["vae"]["params"] * lay.vae_b
    if method == "lora":
        b["weights_adapters"] = lay.trained * lay.trained_store_b // lay.weight_shard
    return b


def _autocast_copies(lay: _Layout, method: str) -> int:
    """Autocast keeps a half copy of every fp32 trained weight a matmul or conv uses, from the
    forward pass until the backward pass has used it (for textual inversion: of the fp32 text
    encoders' layers, kept for the backward pass to the embeddings)."""
    if not (lay.half and lay.master_b == 4 and not lay.ds):
        return 0
    if method == "textual_inversion":
        layers: int = sum(lay.comps[c]["params"] - lay.comps[c]["token_embedding_params"] for c in lay.encoders)
        return layers * 2
    return lay.trained * 2


def _gradients(lay: _Layout, s: dict[str, Any], zero_stage: int, offload: bool, backend: str) -> int:
    """Gradients (not held in the forward pass: the trainer frees them after each step); a fused
    backward pass holds the largest tensor's only."""
    if s["fused_backward_pass"] and not lay.ds:
        return min(lay.trained, lay.largest) * lay.grad_b
    grad_shard = lay.n if ((lay.ds and zero_stage >= 2) or backend == "fsdp") else 1
    return 0 if (lay.ds and offload and zero_stage >= 2) else lay.trained * lay.grad_b // grad_shard


def _held_state(lay: _Layout, s: dict[str, Any], offload: bool, backend: str) -> dict[str, int]:
    """What is held throughout: the optimizer state, EMA, DDP buckets and the communication buffers."""
    b: dict[str, int] = {}
    state = _optimizer_state_bytes(s["optimizer"], lay.trained, 4 if lay.ds else lay.master_b, lay.comps, lay.full, lay.te_trained, lay.trained_encoders, lay.denoiser)
    if lay.ds:
        state += lay.trained * 4 if lay.half else 0
        b["optimizer_states"] = 0 if offload else state // lay.n
    else:
        b["optimizer_states"] = state // lay.shard
    if s["ema"]:
        b["ema"] = lay.trained * lay.master_b // lay.shard
    if lay.n > 1 and backend == "ddp":
        b["ddp_buckets"] = lay.trained * lay.grad_b
    if lay.n > 1:
        b["communication"] = NCCL_BYTES + (DEEPSPEED_BUCKET_BYTES if lay.ds else 0)
    return b


def _activations(lay: _Layout, family: str, method: str, s: dict[str, Any], images: int, notes: list[str]) -> tuple[int, int]:
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


def _phases(lay: _Layout, s: dict[str, Any], copies: int, grads: int, kept: int, working: int, images: int) -> dict[str, dict[str, int]]:
    """What the step holds besides the weights and the state, in each of its phases."""
    # The optimizer's temporaries: the trainer's optimizers work one tensor at a time; Adafactor
    # holds a few fp32 copies of the tensor, the fused and 8-bit kernels about one.
    step = lay.largest * 4 * (STEP_TEMPORARIES if s["optimizer"] == "adafactor" else 1)
    # With checkpointing the half copies are dropped after the forward pass and remade block by
    # block; without it the backward pass frees them with the activations.
    copies_in_backward = 0 if s["gradient_checkpointing"] else copies
    phases: dict[str, dict[str, int]] = {
        "forward": {"autocast_copies": copies, "activations": kept},
        # gradients appear as activations (and copies) are freed: the peak is at either end
        "backward (start)": {"autocast_copies": copies_in_backward, "activations": kept + working},
        "backward (end)": {"gradients": grads, "activations": working},
    }
    if s["fused_backward_pass"] and not lay.ds:
        for phase in ("backward (start)", "backward (end)"):
            phases[phase] = {**phases[phase], "gradients": grads, "optimizer_step": step}
    else:
        phases["optimizer step"] = {"gradients": grads, "optimizer_step": step}
    if not s["cache_latents"]:
        phases["VAE encoding"] = {"vae_encode": VAE_ENCODE_TENSORS * s["resolution"] ** 2 * lay.vae_b * images}
    return phases


def _raw(family: str, method: str, s: dict[str, Any], n: int, backend: str, zero_stage: int, offload: bool, prior: bool | None) -> tuple[dict[str, int], str, list[str]]:
    """The breakdown at the peak phase (before calibration), that phase, and the notes."""
    lay = _layout(family, method, s, n, backend, zero_stage)
    notes = _caching_notes(method, s, lay.te_trained)
    b: dict[str, int] = dict.fromkeys(BREAKDOWN_KEYS, 0)
    b.update(_weights(lay, method, s))
    b.update(_held_state(lay, s, offload, backend))
    prior = method == "dreambooth" if prior is None else prior
    images = s["batch_size"] * (2 if prior else 1)
    kept, working = _activations(lay, family, method, s, images, notes)
    phases = _phases(lay, s, _autocast_copies(lay, method), _gradients(lay, s, zero_stage, offload, backend), kept, working, images)
    peak_phase = max(phases, key=lambda name: sum(phases[name].values()))
    b.update(phases[peak_phase])
    b["fragmentation"] = int(FRAGMENTATION * sum(b.values()))
    b["cuda_context"] = CUDA_CONTEXT_BYTES
    return b, peak_phase, notes


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
