"""The training results in ``output/``, in the formats other tools load.

* LoRA: ``<name>.safetensors`` in kohya's format (what A1111, ComfyUI and diffusers' kohya
  loader read) with ``ss_*`` metadata, and ``diffusers/pytorch_lora_weights.safetensors``
  (what ``pipeline.load_lora_weights(dir)`` reads, with peft's adapter config as metadata so
  alpha survives).
* Full models (DreamBooth, fine-tune): ``diffusers/`` (the whole pipeline) and
  ``<name>.safetensors``, one file in the family's original single-file layout (the family
  runtime's ``to_original``).
* Textual inversion: ``<token>.safetensors`` (A1111: one key per text encoder, named by the
  family's spec: ``emb_params``, or ``clip_l``/``clip_g``) and the diffusers files the spec
  names (``diffusers/learned_embeds.safetensors``, ``learned_embeds_2`` for a second encoder).

Which prefixes, key names and layouts a family uses is its spec's and runtime's (core/families).

Every file is written atomically (temp file + rename; folders via a temp folder + rename).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import finish_tree, replace, write_atomic
from core.families import runtime
from core.families.wrappers import unwrap
from core.train.outputs.kohya_metadata import with_hashes
from core.train.model.loading import Components

DIFFUSERS_DIR = "diffusers"
PEFT_DIR = "peft"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class SavedFiles:
    """What one save wrote: the kohya/A1111 file and the diffusers file or folder."""

    single_file: Path
    diffusers: Path


def _save_safetensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, save(data, metadata=dict(metadata) if metadata else None))


def adapter_state(module: Any, adapter: str = "default") -> tuple[dict[str, Any], Any]:
    """peft's state dict of ``module``'s LoRA adapter (names without the adapter) and its config."""
    from peft.utils import get_peft_model_state_dict

    module = unwrap(module)
    config = getattr(module, "peft_config", {}).get(adapter)
    if config is None:
        return {}, None
    return get_peft_model_state_dict(module, adapter_name=adapter), config


def alpha_for(config: Any, module_name: str) -> float:
    """The trained alpha of one module, honouring peft's per-module patterns."""
    for pattern, value in (getattr(config, "alpha_pattern", None) or {}).items():
        if module_name.endswith(pattern):
            return float(value)
    return float(config.lora_alpha if hasattr(config, "lora_alpha") else config.alpha)


def rank_for(config: Any, module_name: str) -> int:
    """The trained rank of one module, honouring peft's per-module patterns."""
    for pattern, value in (getattr(config, "rank_pattern", None) or {}).items():
        if module_name.endswith(pattern):
            return int(value)
    return int(config.r)


#: peft parameter suffixes → kohya/LyCORIS key suffixes, per adapter type.
KOHYA_SUFFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "lora": ((".lora_A.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_up.weight"), (".lora_magnitude_vector", ".dora_scale")),
    "loha": tuple((f".hada_{n}", f".hada_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")),
    "lokr": tuple((f".lokr_{n}", f".lokr_{n}") for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")),
}
#: The ``ss_network_module`` each adapter type is written as (what LyCORIS files say).
NETWORK_MODULE = {"lora": "networks.lora", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}


def split_key(key: str, suffixes: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """``(module name, kohya suffix)`` of a peft state-dict key, or None when it is no adapter tensor."""
    for marker, suffix in suffixes:
        if key.endswith(marker):
            return key[: -len(marker)], suffix
    return None


def kohya_module_names(components: Components, unet: Any, text_encoders: Sequence[Any]) -> list[tuple[str, Any, Any]]:
    """``(kohya prefix, module, unet config)`` for the UNet and each text encoder (its spec's ``kohya_prefix``)."""
    te_prefixes = [te.kohya_prefix for te in components.spec.text_encoders]
    return [("lora_unet", unet, dict(unwrap(unet).config))] + [(p, te, None) for p, te in zip(te_prefixes, text_encoders)]


def kohya_key(prefix: str, name: str, components: Components, unet_config: Mapping[str, Any] | None) -> str:
    """The kohya key base (``lora_unet_…`` / ``lora_te…_text_model_…``) of a peft module path."""
    if prefix == "lora_unet":
        module = components.runtime.kohya_unet_module(name, unet_config) if unet_config is not None else name
    else:
        module = name if name.startswith("text_model.") else f"text_model.{name}"
    return f"{prefix}_{module.replace('.', '_')}"


def kohya_lora_state_dict(components: Components, unet: Any = None, text_encoders: Sequence[Any] | None = None) -> dict[str, Any]:
    """The LoRA / LoHa / LoKr of the (trained) UNet and text encoders in kohya's (LyCORIS') key layout.

    Keys are ``lora_unet_<module>`` (the module names kohya uses for the family: the runtime's
    ``kohya_unet_module``) and ``<kohya prefix>_<module>`` per text encoder (``lora_te``, or
    ``lora_te1``/``lora_te2``: the spec's), each with ``.alpha`` (the trained alpha) and:

    * LoRA: ``.lora_down.weight``, ``.lora_up.weight`` and, for DoRA, ``.dora_scale`` (peft's
      per-output-row magnitude shaped ``[out, 1]``, as ComfyUI reads it; diffusers drops
      ``dora_scale`` from kohya files, so DoRA loads in diffusers from the diffusers file);
    * LoHa: ``.hada_w1_a``, ``.hada_w1_b``, ``.hada_w2_a``, ``.hada_w2_b`` (delta =
      (w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha / rank, as ComfyUI and A1111 compute it, and as peft does);
    * LoKr: ``.lokr_w1`` and ``.lokr_w2`` or ``.lokr_w2_a``/``.lokr_w2_b`` (delta = w1 ⊗ w2, scaled
      by alpha / rank only when a factor is decomposed; when none is, ComfyUI and A1111 apply no
      scale, so peft's alpha / rank is folded into ``lokr_w1``).
    """
    import torch

    unet = unet if unet is not None else components.unet
    encoders = list(text_encoders) if text_encoders is not None else components.text_encoders
    out: dict[str, Any] = {}
    for prefix, module, unet_config in kohya_module_names(components, unet, encoders):
        state, config = adapter_state(module)
        if config is None:
            continue
        kind = adapter_kind(config)
        grouped: dict[str, dict[str, Any]] = {}
        for key, tensor in state.items():
            split = split_key(key, KOHYA_SUFFIXES[kind])
            if split is not None:
                grouped.setdefault(split[0], {})[split[1]] = tensor
        for name, tensors in grouped.items():
            base = kohya_key(prefix, name, components, unet_config)
            alpha = alpha_for(config, name)
            if kind == "lora" and ".dora_scale" in tensors:
                up = tensors[".lora_up.weight"]
                tensors[".dora_scale"] = tensors[".dora_scale"].reshape(up.shape[0], *([1] * (up.ndim - 1)))
            if kind == "lokr" and not any(k in tensors for k in (".lokr_w1_a", ".lokr_w2_a")):
                tensors[".lokr_w1"] = tensors[".lokr_w1"] * (alpha / rank_for(config, name))
            for suffix, tensor in tensors.items():
                out[base + suffix] = tensor
            out[base + ".alpha"] = torch.tensor(alpha)
    return out


def adapter_kind(config: Any) -> str:
    """``lora``, ``loha`` or ``lokr`` from a peft config."""
    return {"LORA": "lora", "LOHA": "loha", "LOKR": "lokr"}[str(getattr(config.peft_type, "value", config.peft_type)).upper()]


def network_args(settings: Mapping[str, Any]) -> dict[str, str]:
    """``ss_network_args`` as sd-scripts / LyCORIS write them: the network arguments sd-scripts
    would be given for this adapter (``core.kohya_args.network``: the algorithm, LoKr's factor,
    DoRA's ``dora_wd`` and the conv rank and alpha of LoCon-style targets)."""
    from core.kohya_args import network

    _, args = network(settings)
    return dict(arg.split("=", 1) for arg in args)


def _lora_config_metadata(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    data = config.to_dict()
    for key, value in list(data.items()):
        if isinstance(value, set):
            data[key] = sorted(value)
    return data


def save_lora(
    components: Components,
    out_dir: str | Path,
    name: str,
    metadata: Mapping[str, str] | None = None,
    unet: Any = None,
    text_encoders: Sequence[Any] | None = None,
    dtype: Any = None,
) -> SavedFiles:
    """Write ``<out_dir>/<name>.safetensors`` (kohya/LyCORIS keys) and the diffusers-side file.

    LoRA: ``<out_dir>/diffusers/pytorch_lora_weights.safetensors`` (``load_lora_weights``).
    LoHa / LoKr, which diffusers cannot load: peft's own adapter folders
    ``<out_dir>/peft/<component>/`` (``adapter_config.json`` +
    ``adapter_model.safetensors``; ``PeftModel.from_pretrained`` / ``inject_adapter_in_model``).
    ``dtype`` (``save_precision``) casts every floating-point tensor written.
    """
    out = Path(out_dir)
    unet = unet if unet is not None else components.unet
    encoders = list(text_encoders) if text_encoders is not None else components.text_encoders
    kohya_file = out / f"{name}.safetensors"
    kohya = _cast(kohya_lora_state_dict(components, unet, encoders), dtype)
    if not kohya:
        raise ValueError("the model has no LoRA adapter to save; the LoRA method adds one before training")
    _save_safetensors(kohya_file, kohya, with_hashes(kohya, metadata) if metadata else None)

    unet_state, unet_config = adapter_state(unet)
    if adapter_kind(unet_config) != "lora":
        return SavedFiles(kohya_file, _save_peft_folders(out / PEFT_DIR, {"unet": unet, **dict(zip(components.text_encoder_names, encoders))}, dtype))
    unet_state = _cast(unet_state, dtype)
    kwargs: dict[str, Any] = {
        "unet_lora_layers": unet_state,
        "unet_lora_adapter_metadata": _lora_config_metadata(unet_config),
    }
    for te_name, encoder in zip(components.text_encoder_names, encoders):
        state, config = adapter_state(encoder)
        if state:
            kwargs[f"{te_name}_lora_layers"] = _cast(state, dtype)
            kwargs[f"{te_name}_lora_adapter_metadata"] = _lora_config_metadata(config)
    target = out / DIFFUSERS_DIR / LORA_WEIGHT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lora-", dir=target.parent) as tmp:
        components.pipeline_class.save_lora_weights(tmp, weight_name=LORA_WEIGHT_NAME, **kwargs)
        finish_tree(tmp)
        replace(Path(tmp) / LORA_WEIGHT_NAME, target)
    return SavedFiles(kohya_file, target)


def _cast(tensors: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    if dtype is None:
        return dict(tensors)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


#: The prefix ``PeftModel`` gives its wrapped model's keys (``PeftModel.base_model.model``), which
#: ``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained`` expects.
PEFT_MODEL_PREFIX = "base_model.model."


def _save_peft_folders(target: Path, modules: Mapping[str, Any], dtype: Any) -> Path:
    """peft's adapter folder for each module that has an adapter, as ``PeftModel.save_pretrained``
    writes it (``adapter_config.json``, ``adapter_model.safetensors`` with the ``base_model.model.``
    key prefix), written atomically."""

    def build(tmp: Path) -> None:
        for part, module in modules.items():
            state, config = adapter_state(module)
            if config is None:
                continue
            folder = tmp / part
            folder.mkdir()
            config.save_pretrained(str(folder))
            tensors = {f"{PEFT_MODEL_PREFIX}{key}": tensor for key, tensor in _cast(state, dtype).items()}
            _save_safetensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})

    return replace_folder(build, target)


def replace_folder(build: Any, target: Path) -> Path:
    """Write a folder atomically: ``build(tmp_dir)`` fills a temp folder that is renamed to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        finish_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(target, old)
        replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_full_model(
    components: Components,
    out_dir: str | Path,
    name: str,
    unet: Any = None,
    text_encoders: Sequence[Any] | None = None,
    dtype: Any = None,
) -> SavedFiles:
    """Write the whole pipeline as ``diffusers/`` and as ``<name>.safetensors`` in the original layout.

    ``dtype`` (e.g. ``torch.float16``) casts the single file's tensors; the diffusers folder
    keeps the training dtype.
    """
    out = Path(out_dir)
    pipe = components.pipeline(unet=unet, text_encoders=text_encoders)
    folder = replace_folder(lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), out / DIFFUSERS_DIR)
    single = _write_original(pipe, components.runtime, out / f"{name}.safetensors", dtype, components.prediction_type)
    return SavedFiles(single, folder)


def _write_original(pipe: Any, family_runtime: Any, target: Path, dtype: Any = None, prediction_type: str = "") -> Path:
    family = family_runtime.spec.name
    tensors = family_runtime.to_original(pipe)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": "pt", "sdtui_family": family}
    if prediction_type:
        meta["sdtui_prediction_type"] = prediction_type
    _save_safetensors(target, tensors, meta)
    return target


def save_original_file(model_dir: str | Path, family: str, target: str | Path, dtype: Any = None) -> Path:
    """Convert a diffusers model folder of ``family`` into one original-layout ``.safetensors`` file."""
    family_runtime = runtime(family)
    pipe = family_runtime.load_pipeline(str(model_dir))
    return _write_original(pipe, family_runtime, Path(target), dtype, str(pipe.scheduler.config.get("prediction_type", "")))


def save_embeddings(components: Components, out_dir: str | Path, token: str, vectors: Sequence[Any], dtype: Any = None) -> SavedFiles:
    """Write a textual-inversion embedding (``vectors``: ``[num_vectors, dim]`` per text encoder).

    A1111: ``<out_dir>/<token>.safetensors`` with one key per encoder (the spec's
    ``embedding_key``: ``emb_params``, or ``clip_l`` and ``clip_g``). diffusers:
    ``diffusers/<embedding_file>`` ({token: vectors}) per encoder.
    """
    out = Path(out_dir)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in token).strip("._") or "embedding"
    vectors = [v.detach().to("cpu").float() if dtype is None else v.detach().to("cpu", dtype) for v in vectors]
    encoders = components.spec.text_encoders
    a1111 = {te.embedding_key: v for te, v in zip(encoders, vectors)}
    single = out / f"{safe_name}.safetensors"
    meta = {"sdtui_token": token, "sdtui_family": components.family}
    _save_safetensors(single, a1111, meta)
    folder = out / DIFFUSERS_DIR
    for te, v in zip(encoders, vectors):
        _save_safetensors(folder / te.embedding_file, {token: v}, meta)
    return SavedFiles(single, folder / encoders[0].embedding_file)
