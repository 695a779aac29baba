"""Loading an SAI single file of SD 3.5 (``sd3.5_large.safetensors``, ComfyUI's all-in-one files, fp8 ones too).

Each part is found by its prefix (``core/families/sd35/layout.py``): the MMDiT and the VAE go
through diffusers' own converters, the text encoders are in transformers' names already. fp8
tensors (``float8_e4m3fn``/``e5m2``, what ComfyUI users keep, and ComfyUI's scaled fp8 with a
``scale_weight`` per weight) are dequantized to the part's dtype (fp32 when none is asked for) by
the flow families' shared reader (``core/families/scaled_fp8.py``): the trainer
computes in bf16/fp16/fp32, and each part keeps the file's fp8 scales for ``base_precision = "fp8"``. A part the file lacks
comes from its split file (run.toml ``[model]``), else from the diffusers folder that describes
the file when that holds weights; otherwise one sentence names the part and where to give it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.families import loading, scaled_fp8
from core.families.detect import hub_reachable
from core.families.protocol import ModelSource
from core.families.sd35 import layout
from core.families.spec import FamilySpec

#: The hub repository describing each variant's architecture (offline: a folder beside the file).
HUB_CONFIGS = {24: "stabilityai/stable-diffusion-3.5-medium", 38: "stabilityai/stable-diffusion-3.5-large"}
_TEXT_NAMES = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}


def read_dequantized(path: Path, dtypes: Mapping[str, Any] | None) -> scaled_fp8.Dequantized:
    """Every tensor of a safetensors file; fp8 ones (plain or scaled) dequantized to the default dtype (fp32 without one)."""
    import torch

    tensors, metadata = scaled_fp8.read(path)
    return scaled_fp8.dequantize(tensors, (dtypes or {}).get("default") or torch.float32, str(path), metadata)


def _scales_of(found: scaled_fp8.Dequantized, prefix: str, convert: Callable[[dict[str, Any]], dict[str, Any]] = dict) -> dict[str, float]:
    """The file's fp8 scales of the part under ``prefix``, in the names ``convert`` gives its weights."""
    part = scaled_fp8.Dequantized({k.removeprefix(prefix): v for k, v in found.tensors.items() if k.startswith(prefix)})
    part.scales = {k.removeprefix(prefix): v for k, v in found.scales.items() if k.startswith(prefix)}
    return scaled_fp8.converted_scales(part, convert)


def config_folder(path: Path, source: ModelSource, num_layers: int) -> str:
    """The diffusers folder (or hub id) describing the file's architecture."""
    local = loading.config_for_single_file(path, source.config)
    if local is not None:
        return local
    if hub_reachable() and num_layers in HUB_CONFIGS:
        return HUB_CONFIGS[num_layers]
    raise loading.ModelLoadError(
        f"The single-file model {path} needs its diffusers config (from the Hugging Face hub, which is offline here); "
        f"put a diffusers folder of the same SD 3.5 variant next to it named '{path.stem}' or load it once with network access."
    )


def load(path: Path, source: ModelSource, spec: FamilySpec, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every part of SD 3.5 from an SAI file, its split files and its config folder, by component name."""
    found = read_dequantized(path, dtypes)
    tensors = found.tensors
    denoiser = {k: v for k, v in tensors.items() if k.startswith(layout.DENOISER_PREFIX)}
    layers = len({k.split(".")[3] for k in denoiser if k.startswith(layout.DENOISER_PREFIX + "joint_blocks.")})
    config = config_folder(path, source, layers)
    get = (dtypes or {}).get
    parts: dict[str, Any] = {}
    if source.denoiser:
        like = _empty(spec, spec.denoiser, config)
        parts[spec.denoiser] = denoiser_into(Path(source.denoiser).expanduser(), like, get(spec.denoiser, get("default")))
    elif denoiser:
        part = _diffusers_part(spec, spec.denoiser, denoiser, config, get(spec.denoiser, get("default")))
        parts[spec.denoiser] = scaled_fp8.mark(part, _scales_of(found, layout.DENOISER_PREFIX, _sd3_to_diffusers))
    else:
        raise loading.ModelLoadError(f"The file {path} holds no SD 3.5 MMDiT (no {layout.DENOISER_PREFIX}joint_blocks.*); give the model file itself as model.path.")
    vae = {k: v for k, v in tensors.items() if k.startswith(layout.VAE_PREFIX)}
    if source.vae:
        parts["vae"] = _split_part(spec, "VAE", "vae", source.vae, config, get("vae", get("default")), "model.vae")
    elif vae:
        parts["vae"] = _diffusers_part(spec, "vae", vae, config, get("vae", get("default")))
    else:
        parts["vae"] = _from_folder(spec, "vae", "VAE", path, config, get("vae", get("default")), "model.vae")
    for te in spec.text_encoders:
        dtype = get(te.name, get("default"))
        own = {k[len(te.original_prefix) :]: v for k, v in tensors.items() if k.startswith(te.original_prefix)}
        setting = f"model.{te.kind}"
        if te.name in source.text_encoders:
            parts[te.name] = _split_part(spec, f"{_TEXT_NAMES.get(te.kind, te.kind)} text encoder", te.name, source.text_encoders[te.name], config, dtype, setting)
        elif own:
            parts[te.name] = scaled_fp8.mark(text_encoder(spec, te.name, own, config, dtype, str(path)), _scales_of(found, te.original_prefix))
        else:
            parts[te.name] = _from_folder(spec, te.name, f"{_TEXT_NAMES.get(te.kind, te.kind)} text encoder", path, config, dtype, setting)
    for name in (*spec.tokenizer_names, "scheduler"):
        parts[name] = _load_class(spec, name, config).from_pretrained(config, subfolder=name, local_files_only=not hub_reachable())
    return parts


def denoiser_into(path: Path, like: Any, dtype: Any) -> Any:
    """An SAI MMDiT file (``model.diffusion_model.`` keys or ComfyUI's bare ones; fp8 and scaled fp8 dequantized) read into a copy of ``like``."""
    import copy

    found = read_dequantized(path, {"default": dtype} if dtype is not None else None)
    found.tensors = {k: v for k, v in found.tensors.items() if k.startswith((layout.DENOISER_PREFIX, "joint_blocks.")) or "." not in k or k.split(".")[0] in _TOP}
    module = copy.deepcopy(like)
    try:
        module.load_state_dict(_sd3_to_diffusers(dict(found.tensors)))
    except (KeyError, RuntimeError, IndexError) as exc:
        raise loading.ModelLoadError(f"The denoiser file {path} is no SD 3.5 MMDiT of this model's size ({loading.short(exc)}); give the transformer file that belongs to it.") from exc
    module = module.to(dtype=dtype) if dtype is not None else module
    return scaled_fp8.mark(module, scaled_fp8.converted_scales(found, _sd3_to_diffusers))


def _sd3_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' conversion of an SAI MMDiT state dict (``model.diffusion_model.`` prefix or none)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return dict(convert_sd3_transformer_checkpoint_to_diffusers(state))


#: The top-level module names of an SAI MMDiT without its prefix (ComfyUI writes files so).
_TOP = ("pos_embed", "x_embedder", "t_embedder", "y_embedder", "context_embedder", "final_layer")


def _component_class(spec: FamilySpec, name: str) -> Any:
    library, _, class_name = spec.component_classes[name].rpartition(".")
    return getattr(importlib.import_module(library), class_name)


def _load_class(spec: FamilySpec, name: str, config: str) -> Any:
    """The class model_index.json names for a tokenizer or the scheduler (a local folder), else the SD 3.5 repository's."""
    index_path = Path(config) / "model_index.json"
    if index_path.is_file():
        entry = json.loads(index_path.read_text(encoding="utf-8")).get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] in ("diffusers", "transformers"):
            return getattr(importlib.import_module(entry[0]), entry[1])
    defaults = {
        "tokenizer": "transformers.CLIPTokenizer",
        "tokenizer_2": "transformers.CLIPTokenizer",
        "tokenizer_3": "transformers.T5TokenizerFast",
        "scheduler": "diffusers.FlowMatchEulerDiscreteScheduler",
    }
    library, _, class_name = defaults[name].rpartition(".")
    return getattr(importlib.import_module(library), class_name)


def _diffusers_part(spec: FamilySpec, name: str, state: dict[str, Any], config: str, dtype: Any) -> Any:
    extra = {"torch_dtype": dtype} if dtype is not None else {}
    return _component_class(spec, name).from_single_file(state, config=config, subfolder=name, local_files_only=not hub_reachable(), **extra)


def _empty(spec: FamilySpec, name: str, config: str) -> Any:
    cls = _component_class(spec, name)
    return cls(cls.config_class.from_pretrained(config, subfolder=name, local_files_only=not hub_reachable())).eval()


def text_encoder(spec: FamilySpec, name: str, state: Mapping[str, Any], config: str, dtype: Any, where: str) -> Any:
    """A text encoder from its weights in transformers' names. CLIP-L's projection is the identity
    (SD3 pools CLIP-L unprojected: SAI's reference, ComfyUI, and diffusers reading SAI files), and a
    CLIP-G file without one gets it too; T5 files without the tied ``encoder.embed_tokens`` share ``shared``."""
    import torch

    module = _empty(spec, name, config)
    weights = dict(state)
    kind = next(te.kind for te in spec.text_encoders if te.name == name)
    if hasattr(module, "text_projection") and (kind == "clip_l" or "text_projection.weight" not in weights):
        weights["text_projection.weight"] = torch.eye(module.text_projection.weight.shape[0], module.text_projection.weight.shape[1])
    if "encoder.embed_tokens.weight" not in weights and "shared.weight" in weights:
        weights["encoder.embed_tokens.weight"] = weights["shared.weight"]
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise loading.ModelLoadError(
            f"The text encoder {name} in {where} does not fit SD 3.5's ({len(missing)} weights missing, {len(unexpected)} unexpected); give the file of that encoder."
        )
    return module.to(dtype=dtype) if dtype is not None else module


def _split_part(spec: FamilySpec, kind: str, name: str, file: str, config: str, dtype: Any, setting: str) -> Any:
    """A part given as its own file or folder (run.toml ``[model]``): transformers/diffusers names or SAI's, fp8 upcast."""
    path = Path(file).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        found = read_dequantized(path, {"default": dtype} if dtype is not None else None)
        state = found.tensors
        if name.startswith("text_encoder"):
            prefix = next(te.original_prefix for te in spec.text_encoders if te.name == name)
            module = text_encoder(spec, name, {k.removeprefix(prefix): v for k, v in state.items()}, config, dtype, str(path))
            return scaled_fp8.mark(module, _scales_of(found, "", lambda views: {k.removeprefix(prefix): v for k, v in views.items()}))
        like = _empty(spec, name, config)
        if set(state) <= set(like.state_dict()):
            like.load_state_dict(state)
            return like.to(dtype=dtype) if dtype is not None else like
        return _diffusers_part(spec, name, state, config, dtype)
    return loading.load_part_file(kind, name, file, _empty(spec, name, config), dtype, setting)


def _from_folder(spec: FamilySpec, name: str, what: str, path: Path, config: str, dtype: Any, setting: str) -> Any:
    """A part the file lacks, from the config folder's own weights; one sentence when it has none."""
    folder = Path(config) / name
    if folder.is_dir() and any(folder.glob("*.safetensors")):
        extra = {"dtype" if name.startswith("text_encoder") else "torch_dtype": dtype} if dtype is not None else {}
        return _component_class(spec, name).from_pretrained(config, subfolder=name, local_files_only=True, **extra)
    raise loading.ModelLoadError(f"The single file {path} holds no {what}; name its file in {setting} of run.toml or use a file that includes it.")
