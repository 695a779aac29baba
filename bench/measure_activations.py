"""Measure the denoiser's activation memory per image and write core/memory/activations.json.

``python -m bench.measure_activations`` runs one forward pass of the real-size denoiser of each
family on the **meta device** (shapes and dtypes only: no memory, no arithmetic, seconds on
any CPU) inside ``torch.autograd.graph.saved_tensors_hooks`` and adds up, per image:

- ``saved``: every tensor autograd keeps for the backward pass (deduplicated by base tensor,
  parameters left out: the estimator counts weights itself);
- ``recompute``: with gradient checkpointing, what the largest checkpointed block saves while
  it is re-run in the backward pass (the checkpointed blocks themselves keep only their inputs,
  which ``saved`` counts);
- ``largest``: the largest single saved tensor; the backward pass holds about two tensors of
  that size (the incoming and the outgoing gradient) on top of the saved ones.

Mixed precision is emulated the way CUDA autocast runs it: convolutions, linear layers,
matmuls and attention in half precision, group/layer norm and softmax in fp32. "sdpa"
attention is modelled as the fused (flash / memory-efficient) kernels save it: q, k, v, the
output and the per-row log-sum-exp; "eager" runs diffusers' classic ``AttnProcessor``, which
keeps the full attention matrix (quadratic in tokens). Two training modes: ``full`` (every UNet
weight trained) and ``lora`` (weights frozen except the attention projections LoRA adapts, so
their inputs are kept as LoRA keeps them; LoRA's own rank-sized tensors are left out; textual
inversion, which back-propagates through the frozen UNet to the text conditioning, uses it too).

Per (family, mode, precision, checkpointing, attention) three resolutions are measured and
``bytes(A) = c0 + c1·A + c2·A²`` fitted exactly, A being the latent pixels (resolution / 8)²
(a packed transformer's tokens are A / 4). The text encoders' activations (each at its token
limit: CLIP 77, T5 512) are measured the same way. The tables are keyed by the denoiser's
component name (``unet``, ``transformer``); naming families measures only those and merges
them into the stored file. See docs/memory.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

from core.atomic import write_json_atomic
from core.families import FAMILIES, runtime, spec
from core.families.components import build_component
from core.families.sd_unet import is_lora_target

ACTIVATIONS_JSON = Path(__file__).resolve().parents[1] / "core" / "memory" / "activations.json"
#: Resolutions measured per family, as fractions of its native resolution (multiples of 64).
SCALES = (0.5, 0.75, 1.0)
MODES = ("full", "lora")
PRECISIONS = ("half", "fp32")
ATTENTIONS = ("sdpa", "eager")


class SavedTally:
    """A saved-tensors pack hook that adds up the bytes autograd keeps, once per base tensor."""

    def __init__(self, param_ids: set[int]) -> None:
        self.param_ids = param_ids
        self.sizes: dict[int, int] = {}
        self.keep: list[Any] = []

    def add(self, tensor: Any) -> None:
        """Count ``tensor`` (its base, if it is a view) unless it is a parameter."""
        base = tensor._base if tensor._base is not None else tensor
        if id(base) in self.param_ids or id(base) in self.sizes:
            return
        self.sizes[id(base)] = base.numel() * base.element_size()
        self.keep.append(base)

    def pack(self, tensor: Any) -> Any:
        self.add(tensor)
        return tensor

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes.values(), default=0)


def autocast_emulation(half: Any) -> Any:
    """A TorchFunctionMode that runs ops in the dtypes CUDA autocast picks (works on meta)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    lower = {F.conv2d, F.linear, torch.bmm, torch.baddbmm, torch.matmul, torch.Tensor.__matmul__, F.scaled_dot_product_attention}
    upper = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax}

    def cast(dtype: Any) -> Any:
        return lambda x: x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype else x

    class Emulation(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            if func in lower:
                args, kwargs = tree_map(cast(half), (args, kwargs))
            elif func in upper:
                args, kwargs = tree_map(cast(torch.float32), (args, kwargs))
                kwargs.pop("dtype", None)
            return func(*args, **kwargs)

    return Emulation()


def fused_attention_mode() -> Any:
    """A TorchFunctionMode that replaces SDPA with a function saving what the fused kernels save."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):  # noqa: ANN001
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001
            q, k, v, _, _ = ctx.saved_tensors
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if func is F.scaled_dot_product_attention:
                named = kwargs or {}
                q, k, v = (*args, *(named[n] for n in ("query", "key", "value") if n in named))[:3]
                return FusedAttention.apply(q, k, v)
            return func(*args, **(kwargs or {}))

    return Mode()


def _train_mode(family: str, denoiser: Any, mode: str) -> None:
    """Make trainable what ``mode`` trains: every weight (full) or the attention projections (lora)."""
    denoiser.requires_grad_(mode == "full")
    if mode == "lora":
        targets = spec(family).lora_targets["denoiser"]["attn"]
        for name, module in denoiser.named_modules():
            if is_lora_target(name, targets) and hasattr(module, "weight"):  # a suffix may also name a module list (FLUX.2's to_out)
                module.weight.requires_grad_(True)


def _denoiser_inputs(family: str, config: dict[str, Any], resolution: int, mode: str, dtype: Any, device: str) -> dict[str, Any]:
    """One image's forward inputs from the family runtime's ``dummy_inputs``; the latents need a gradient when only adapters train."""
    import torch

    inputs = runtime(family).dummy_inputs(config, 1, resolution, dtype, torch.device(device))
    latents = next(iter(inputs.values()))  # the latents come first (``sample``, ``hidden_states``, Z-Image's list ``x``)
    for tensor in latents if isinstance(latents, list) else [latents]:
        tensor.requires_grad_(mode == "lora")
    return inputs


def _build_denoiser(family: str, config: dict[str, Any], mode: str, attention: str, dtype: Any = None) -> Any:
    """The family's denoiser from its spec's class, trainable as ``mode`` trains, with ``attention``."""
    family_spec = spec(family)
    denoiser = build_component(family_spec, family_spec.denoiser, config)
    if dtype is not None:
        denoiser = denoiser.to(dtype)
    _train_mode(family, denoiser, mode)
    if attention == "eager":
        runtime(family).set_attention(denoiser, "eager")
    return denoiser


def denoiser_activation(family: str, resolution: int, mode: str, precision: str, checkpointing: bool, attention: str, config: dict[str, Any] | None = None) -> dict[str, int]:
    """Saved, recompute and largest bytes of one denoiser forward at ``resolution`` for one image (meta device)."""
    import contextlib

    import torch

    family_spec = spec(family)
    cfg = config or family_spec.component_configs()[family_spec.denoiser]
    dtype = torch.float16 if precision == "half" else torch.float32
    with torch.device("meta"):
        denoiser = _build_denoiser(family, cfg, mode, attention, dtype)
    tally = SavedTally({id(p) for p in denoiser.parameters()})
    state = {"recompute": 0, "largest": 0}

    def checkpoint(module: Any, *args: Any) -> Any:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                tally.add(arg)
        inner = SavedTally(tally.param_ids)
        with torch.autograd.graph.saved_tensors_hooks(inner.pack, lambda t: t):
            out = module(*args)
        state["recompute"] = max(state["recompute"], inner.total)
        state["largest"] = max(state["largest"], inner.largest)
        return out

    if checkpointing:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint)
    kwargs = _denoiser_inputs(family, cfg, resolution, mode, dtype, "meta")
    modes = [fused_attention_mode()] if attention == "sdpa" else []
    if precision == "half":
        modes.append(autocast_emulation(dtype))
    with contextlib.ExitStack() as stack:
        for m in modes:
            stack.enter_context(m)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(tally.pack, lambda t: t))
        denoiser(**kwargs)
    return {"saved": tally.total, "recompute": state["recompute"], "largest": max(tally.largest, state["largest"])}


#: A small UNet with SD 1.5's layout (four levels, cross-attention, 8 heads) for the CPU check.
SMALL_SD1_UNET: dict[str, Any] = {
    **spec("sd1").component_configs()[spec("sd1").denoiser],
    "block_out_channels": [64, 128, 256, 256],
    "cross_attention_dim": 64,
}


def has_mallinfo2() -> bool:
    """Whether glibc's mallinfo2 (allocated bytes, 64-bit) is available here."""
    import ctypes

    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def cpu_peak(run: Any) -> int:
    """Bytes allocated above the starting point at the peak of ``run()`` on the CPU.

    The figure is glibc's allocated total (``mallinfo2``), sampled after every aten op by a
    TorchDispatchMode, so it sees forward, backward and every recomputation.
    """
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    if not has_mallinfo2():
        raise RuntimeError("measuring a CPU peak needs glibc 2.33+ (mallinfo2)")
    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def allocated() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    class Peak(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.peak = allocated()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, allocated())
            return out

    base = allocated()
    with Peak() as peak:
        run()
    return peak.peak - base


def measured_peak(family: str, config: dict[str, Any], resolution: int, mode: str, checkpointing: bool, attention: str = "sdpa") -> tuple[int, int]:
    """Really run forward + backward of ``family``'s denoiser on the CPU in fp32; return (peak bytes above the weights, gradient bytes)."""
    import torch

    torch.manual_seed(0)
    denoiser = _build_denoiser(family, config, mode, attention)
    if checkpointing:
        runtime(family).enable_gradient_checkpointing(denoiser)
    kwargs = _denoiser_inputs(family, config, resolution, mode, torch.float32, "cpu")
    grads = sum(p.numel() * 4 for p in denoiser.parameters() if p.requires_grad)
    return cpu_peak(lambda: denoiser(**kwargs).sample.pow(2).mean().backward()), grads


def vae_encode_peak(resolution: int) -> int:
    """Peak bytes above the weights of the real-size VAE encoding one image on the CPU in fp32."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(spec("sd1").component_configs()["vae"]).eval()
    image = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        return cpu_peak(lambda: vae.encode(image).latent_dist.sample())


def validate(resolution: int = 512) -> list[str]:
    """Compare the meta-device count (as the estimator combines it) with a real CPU peak."""
    lines = []
    cases = [(mode, ckpt, "sdpa") for mode, ckpt in itertools.product(MODES, (False, True))]
    cases += [("full", False, "eager"), ("full", True, "eager")]
    for mode, ckpt, attention in cases:
        real, grads = measured_peak("sd1", SMALL_SD1_UNET, resolution, mode, ckpt, attention)
        count = denoiser_activation("sd1", resolution, mode, "fp32", ckpt, attention, SMALL_SD1_UNET)
        working = count["recompute"] + 2 * count["largest"]
        predicted = max(count["saved"] + working, grads + working)
        lines.append(
            f"small SD1-shaped UNet @{resolution}px fp32 {mode} {attention} checkpointing={'on' if ckpt else 'off'}: "
            f"CPU peak {real / 2**20:.0f} MiB, predicted {predicted / 2**20:.0f} MiB (predicted/real {predicted / real:.2f})"
        )
    for vae_resolution in (256, 384):
        real = vae_encode_peak(vae_resolution)
        tensor = 128 * vae_resolution**2 * 4
        lines.append(f"real-size VAE encoding one {vae_resolution}px image, fp32: CPU peak {real / 2**20:.0f} MiB = {real / tensor:.2f} full-resolution 128-channel tensors")
    return lines


def text_encoder_activation(family: str, component: str, variant: str = "") -> int:
    """Bytes one caption's text-encoder forward keeps for backward (half precision, trained)."""
    import torch

    cfg = spec(family).component_configs(variant)[component]
    with torch.device("meta"):
        model = build_component(spec(family), component, cfg, variant).to(torch.float16)
    tally = SavedTally({id(p) for p in model.parameters()})
    ids = torch.zeros(1, spec(family).max_tokens(component), dtype=torch.long, device="meta")
    with autocast_emulation(torch.float16), torch.autograd.graph.saved_tensors_hooks(tally.pack, lambda t: t):
        model(ids, output_hidden_states=True)
    return tally.total + 2 * tally.largest


def fit(points: list[tuple[int, int]]) -> list[float]:
    """Exact c0, c1, c2 of c0 + c1·A + c2·A² through three (A, bytes) points."""
    import numpy as np

    a = np.array([[1.0, x, float(x) * x] for x, _ in points])
    b = np.array([float(y) for _, y in points])
    return [float(c) for c in np.linalg.solve(a, b)]


def measure(selected: tuple[str, ...]) -> dict[str, Any]:
    """The activations.json document for ``selected`` families."""
    import diffusers
    import torch

    doc: dict[str, Any] = {
        "generated_by": "bench/measure_activations.py",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "formula": "per image: c0 + c1*A + c2*A^2 with A = (resolution/8)^2 latent tokens",
        "text_encoders": {},
    }
    for family in selected:
        native = spec(family).native_resolution
        resolutions = [int(native * s) // 64 * 64 for s in SCALES]
        denoiser = spec(family).denoiser
        for name, variant in ((family, ""), *((v, v) for v in spec(family).sized_variants)):  # a variant of its own size under its name
            configs = spec(family).component_configs(variant)
            entries: dict[str, Any] = {}
            for mode, precision, ckpt, attention in itertools.product(MODES, PRECISIONS, (True, False), ATTENTIONS):
                rows = {r: denoiser_activation(family, r, mode, precision, ckpt, attention, configs[denoiser]) for r in resolutions}
                key = f"{mode}/{precision}/{'ckpt' if ckpt else 'nockpt'}/{attention}"
                entries[key] = {part: fit([((r // 8) ** 2, row[part]) for r, row in rows.items()]) for part in ("saved", "recompute", "largest")}
                entries[key]["points"] = {str(r): row for r, row in rows.items()}
                top = rows[native]
                print(f"{name} {key} @{native}: saved {top['saved'] / 2**30:.2f} GiB, recompute {top['recompute'] / 2**30:.2f} GiB, largest {top['largest'] / 2**20:.0f} MiB", flush=True)
            doc.setdefault(denoiser, {})[name] = entries
            doc["text_encoders"][name] = {comp: text_encoder_activation(family, comp, variant) for comp in configs if comp.startswith("text_encoder")}
    return doc


def merged(stored: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """``fresh`` over ``stored``: the measured families replace theirs, the others' entries stay."""
    out = {**stored, **{k: v for k, v in fresh.items() if not isinstance(v, dict)}}
    for key, table in fresh.items():
        if isinstance(table, dict):
            out[key] = {**stored.get(key, {}), **table}
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every family (or those named) and write activations.json (merged: other families' entries kept)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES), help="families to measure, each with its variants of their own size (default all)")
    parser.add_argument("--dry-run", action="store_true", help="print the figures without writing the file")
    parser.add_argument("--validate", action="store_true", help="only compare the method with real CPU peaks of a small UNet")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.validate:
        for line in validate():
            print(line, flush=True)
        return 0
    doc = measure(tuple(args.families))
    if not args.dry_run:
        write_json_atomic(ACTIVATIONS_JSON, merged(json.loads(ACTIVATIONS_JSON.read_text()) if ACTIVATIONS_JSON.exists() else {}, doc))
    print(f"measured in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
