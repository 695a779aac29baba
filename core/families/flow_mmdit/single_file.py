"""Reading the denoiser-only files ComfyUI users keep (``models/diffusion_models/*.safetensors``, bf16 or fp8) for
the flow transformer families whose releases ship the transformer, the VAE and the text encoders as separate files.

The other parts come from a diffusers folder of the same model (beside the file, named like it, or
``model.config``) or, with network access, from the hub; the file's tensors are read as ComfyUI
writes them (plain or scaled fp8 dequantized to the training dtype, ``core/families/scaled_fp8.py``), renamed
by the family (``to_diffusers``) and loaded into the folder's transformer, which keeps the file's
fp8 scales for ``settings.base_precision = "fp8"``. Torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.families import loading, scaled_fp8
from core.families.detect import hub_reachable
from core.families.spec import FamilySpec

#: The prefixes checkpoint files put before the transformer's own names (ComfyUI's and the original repos').
PREFIXES = ("model.diffusion_model.", "diffusion_model.")

ToDiffusers = Callable[[dict[str, Any]], dict[str, Any]]


def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """The transformer's tensors without a checkpoint prefix (:data:`PREFIXES`; other parts of a full checkpoint dropped)."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def read_denoiser(spec: FamilySpec, path: Path, like: Any, dtype: Any, to_diffusers: ToDiffusers) -> Any:
    """A copy of ``like`` with the file's weights: fp8 ones dequantized to ``dtype`` (fp32 without one), renamed by ``to_diffusers``.

    The module carries the file's per-tensor fp8 scales under its own weight names (``scaled_fp8.FILE_SCALES``)."""
    import copy

    import torch

    target = dtype if dtype is not None else torch.float32
    try:
        tensors, metadata = scaled_fp8.read(path)
        found = scaled_fp8.dequantize(strip_prefix(tensors), target, str(path), metadata)
        state = to_diffusers(dict(found.tensors))
        scales = scaled_fp8.converted_scales(found, to_diffusers)
    except loading.ModelLoadError:
        raise
    except Exception as exc:
        raise loading.ModelLoadError(f"The transformer file {path} could not be read ({loading.short(exc)}); give a {spec.title} .safetensors file.") from exc
    module = copy.deepcopy(like)
    missing, unexpected = module.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise loading.ModelLoadError(
            f"The transformer file {path} does not fit the model's {type(like).__name__} ({len(missing)} weights missing, {len(unexpected)} unexpected); "
            f"give a {spec.title} transformer file of the same model as model.path."
        )
    return scaled_fp8.mark(module.to(dtype=target), scales)


def denoiser_only_parts(spec: FamilySpec, path: Path, config: str, dtypes: Mapping[str, Any] | None, hub_id: str, read: Callable[[Path, Any, Any], Any]) -> dict[str, Any]:
    """Every part for a denoiser-only file: the others from the diffusers folder beside it (or ``config``, or
    the hub model ``hub_id``), the denoiser from the file through ``read(path, like, dtype)``."""
    import diffusers

    folder = loading.config_for_single_file(path, config)
    if folder is not None:
        parts = loading.load_folder(Path(folder), spec, dtypes, skip=(spec.denoiser,))
        cls = getattr(diffusers, spec.component_classes[spec.denoiser].rpartition(".")[2])
        like = cls.from_config(cls.load_config(str(Path(folder) / spec.denoiser)))
    elif hub_id and hub_reachable():
        parts, _ = loading.load_hub(hub_id, dtypes, {})
        like = parts[spec.denoiser]
    else:
        raise loading.ModelLoadError(
            f"The {spec.title} file {path} holds only the transformer and the hub is offline here; put a diffusers folder of the model "
            f"(its VAE, text encoder and configs) next to it named '{path.stem}', or set model.config to one."
        )
    get = (dtypes or {}).get
    parts[spec.denoiser] = read(path, like, get(spec.denoiser, get("default")))
    return parts
