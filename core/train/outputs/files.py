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
from core.families.lora_files import adapter_kind
from core.families.protocol import AdapterWeights, LoraFiles
from core.families.wrappers import unwrap
from core.train.model.loading import Components
from core.train.outputs.kohya_metadata import with_hashes

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


#: The ``ss_network_module`` each adapter type is written as (what LyCORIS files say).
NETWORK_MODULE = {"lora": "networks.lora", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}


def adapters(components: Components, denoiser: Any = None, text_encoders: Sequence[Any] | None = None) -> list[AdapterWeights]:
    """The adapter of the denoiser and of each text encoder that has one, by component name (the given, possibly
    training-wrapped, modules or the components' own)."""
    modules = {components.spec.denoiser: denoiser if denoiser is not None else components.denoiser}
    modules.update(zip(components.text_encoder_names, text_encoders if text_encoders is not None else components.text_encoders))
    found = []
    for name, module in modules.items():
        state, config = adapter_state(module)
        if config is not None:
            found.append(AdapterWeights(name, state, config))
    return found


def lora_files(components: Components, denoiser: Any = None, text_encoders: Sequence[Any] | None = None) -> LoraFiles:
    """The trained adapters in the kohya/LyCORIS and diffusers layouts, as the family lays them out (its ``lora_files``).

    kohya keys are ``<kohya prefix>_<module>`` per component (the family's key tables)
    with ``.alpha`` and LoRA's ``lora_down``/``lora_up`` (DoRA's ``dora_scale`` shaped ``[out, 1]``),
    LoHa's ``hada_*`` or LoKr's ``lokr_*`` (``core/families/lora_files.py`` says how each is scaled).
    """
    denoiser = denoiser if denoiser is not None else components.denoiser
    return components.runtime.lora_files(adapters(components, denoiser, text_encoders), dict(unwrap(denoiser).config))


def network_args(settings: Mapping[str, Any]) -> dict[str, str]:
    """``ss_network_args`` as sd-scripts / LyCORIS write them: the network arguments sd-scripts
    would be given for this adapter (``core.kohya_args.network``: the algorithm, LoKr's factor,
    DoRA's ``dora_wd`` and the conv rank and alpha of LoCon-style targets)."""
    from core.kohya_args import network

    _, args = network(settings)
    return dict(arg.split("=", 1) for arg in args)


def save_lora(
    components: Components,
    out_dir: str | Path,
    name: str,
    metadata: Mapping[str, str] | None = None,
    denoiser: Any = None,
    text_encoders: Sequence[Any] | None = None,
    dtype: Any = None,
) -> SavedFiles:
    """Write ``<out_dir>/<name>.safetensors`` (kohya/LyCORIS keys) and the diffusers-side file.

    LoRA: ``<out_dir>/diffusers/pytorch_lora_weights.safetensors`` (``load_lora_weights``; the
    family's diffusers layout with peft's configs as metadata, so alpha survives).
    LoHa / LoKr, which diffusers cannot load: peft's own adapter folders
    ``<out_dir>/peft/<component>/`` (``adapter_config.json`` +
    ``adapter_model.safetensors``; ``PeftModel.from_pretrained`` / ``inject_adapter_in_model``).
    ``dtype`` (``save_precision``) casts every floating-point tensor written.
    """
    out = Path(out_dir)
    denoiser = denoiser if denoiser is not None else components.denoiser
    encoders = list(text_encoders) if text_encoders is not None else components.text_encoders
    trained = adapters(components, denoiser, encoders)
    files = components.runtime.lora_files(trained, dict(unwrap(denoiser).config))
    kohya_file = out / f"{name}.safetensors"
    kohya = _cast(files.kohya, dtype)
    if not kohya:
        raise ValueError("the model has no LoRA adapter to save; the LoRA method adds one before training")
    _save_safetensors(kohya_file, kohya, with_hashes(kohya, metadata) if metadata else None)
    if any(adapter_kind(adapter.config) != "lora" for adapter in trained):
        modules = {components.spec.denoiser: denoiser, **dict(zip(components.text_encoder_names, encoders))}
        return SavedFiles(kohya_file, _save_peft_folders(out / PEFT_DIR, modules, dtype))
    target = out / DIFFUSERS_DIR / LORA_WEIGHT_NAME
    _save_safetensors(target, _cast(files.diffusers, dtype), files.diffusers_metadata)
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
    denoiser: Any = None,
    text_encoders: Sequence[Any] | None = None,
    dtype: Any = None,
) -> SavedFiles:
    """Write the whole pipeline as ``diffusers/`` and as ``<name>.safetensors`` in the original layout.

    ``dtype`` (e.g. ``torch.float16``) casts the single file's tensors; the diffusers folder
    keeps the training dtype.
    """
    out = Path(out_dir)
    pipe = components.pipeline(denoiser=denoiser, text_encoders=text_encoders)
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
