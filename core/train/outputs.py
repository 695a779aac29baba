"""The training results in ``output/``, in the formats other tools load.

* LoRA: ``<name>.safetensors`` in kohya's format (what A1111, ComfyUI and diffusers' kohya
  loader read) with ``ss_*`` metadata, and ``diffusers/pytorch_lora_weights.safetensors``
  (what ``pipeline.load_lora_weights(dir)`` reads, with peft's adapter config as metadata so
  alpha survives).
* Full models (DreamBooth, fine-tune): ``diffusers/`` (the whole pipeline) and
  ``<name>.safetensors``, one file in the original LDM/SGM layout (:func:`to_original`;
  diffusers only converts the other way, so the mapping is written here).
* Textual inversion: ``<token>.safetensors`` (A1111: ``emb_params``, or ``clip_l``/``clip_g``
  for SDXL) and ``diffusers/learned_embeds.safetensors`` (+ ``learned_embeds_2`` for SDXL).

Every file is written atomically (temp file + rename; folders via a temp folder + rename).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import finish_tree, replace, write_atomic
from core.train.kohya_metadata import with_hashes
from core.train.models import Components, unwrap

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
    """``(kohya prefix, module, unet config)`` for the UNet and each text encoder."""
    te_prefixes = ["lora_te1", "lora_te2"] if components.is_sdxl else ["lora_te"]
    return [("lora_unet", unet, dict(unwrap(unet).config))] + [(p, te, None) for p, te in zip(te_prefixes, text_encoders)]


def kohya_key(prefix: str, name: str, components: Components, unet_config: Mapping[str, Any] | None) -> str:
    """The kohya key base (``lora_unet_…`` / ``lora_te…_text_model_…``) of a peft module path."""
    if prefix == "lora_unet":
        module = unet_module_name(name, unet_config) if components.is_sdxl and unet_config is not None else name
    else:
        module = name if name.startswith("text_model.") else f"text_model.{name}"
    return f"{prefix}_{module.replace('.', '_')}"


def kohya_lora_state_dict(components: Components, unet: Any = None, text_encoders: Sequence[Any] | None = None) -> dict[str, Any]:
    """The LoRA / LoHa / LoKr of the (trained) UNet and text encoders in kohya's (LyCORIS') key layout.

    Keys are ``lora_unet_<module>`` (SDXL: the SGM module names kohya's SDXL trainer uses;
    SD1/SD2: the diffusers names kohya uses), ``lora_te_<module>`` (SD1/SD2) or
    ``lora_te1_``/``lora_te2_`` (SDXL), each with ``.alpha`` (the trained alpha) and:

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
    """``ss_network_args`` as sd-scripts / LyCORIS write them: the algorithm and the conv rank of LoCon-style targets."""
    kind = str(settings.get("lora_type", "lora"))
    rank = int(settings.get("lora_rank", 16))
    args: dict[str, str] = {}
    if kind != "lora":
        args["algo"] = kind
    elif settings.get("use_dora"):
        args["algo"] = "dora"
    if settings.get("lora_targets") == "all":
        args["conv_dim"] = str(rank)
        args["conv_alpha"] = str(settings.get("lora_alpha", rank))
    return args


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
    ``<out_dir>/peft/<unet|text_encoder|text_encoder_2>/`` (``adapter_config.json`` +
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
        return SavedFiles(kohya_file, _save_peft_folders(out / PEFT_DIR, {"unet": unet, **dict(zip(("text_encoder", "text_encoder_2"), encoders))}, dtype))
    unet_state = _cast(unet_state, dtype)
    kwargs: dict[str, Any] = {
        "unet_lora_layers": unet_state,
        "unet_lora_adapter_metadata": _lora_config_metadata(unet_config),
    }
    te_names = ["text_encoder", "text_encoder_2"]
    for te_name, encoder in zip(te_names, encoders):
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


def _save_peft_folders(target: Path, modules: Mapping[str, Any], dtype: Any) -> Path:
    """peft's adapter folder (config + weights) for each module that has an adapter, written atomically."""

    def build(tmp: Path) -> None:
        for part, module in modules.items():
            state, config = adapter_state(module)
            if config is None:
                continue
            folder = tmp / part
            folder.mkdir()
            config.save_pretrained(str(folder))
            _save_safetensors(folder / "adapter_model.safetensors", _cast(state, dtype), {"format": "pt"})

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
    single = _write_original(pipe, components.family, out / f"{name}.safetensors", dtype, components.prediction_type)
    return SavedFiles(single, folder)


def _write_original(pipe: Any, family: str, target: Path, dtype: Any = None, prediction_type: str = "") -> Path:
    tensors = to_original(pipe, family)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": "pt", "sdtui_family": family}
    if prediction_type:
        meta["sdtui_prediction_type"] = prediction_type
    _save_safetensors(target, tensors, meta)
    return target


def save_original_file(model_dir: str | Path, family: str, target: str | Path, dtype: Any = None) -> Path:
    """Convert a diffusers model folder of ``family`` into one original-layout ``.safetensors`` file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir), local_files_only=True)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, safety_checker=None, requires_safety_checker=False)
    return _write_original(pipe, family, Path(target), dtype, str(pipe.scheduler.config.get("prediction_type", "")))


def save_embeddings(components: Components, out_dir: str | Path, token: str, vectors: Sequence[Any], dtype: Any = None) -> SavedFiles:
    """Write a textual-inversion embedding (``vectors``: ``[num_vectors, dim]`` per text encoder).

    A1111: ``<out_dir>/<token>.safetensors`` with ``emb_params`` (SD1/SD2) or ``clip_l`` and
    ``clip_g`` (SDXL). diffusers: ``diffusers/learned_embeds.safetensors`` ({token: vectors})
    and for SDXL ``learned_embeds_2.safetensors`` for the second encoder.
    """
    out = Path(out_dir)
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in token).strip("._") or "embedding"
    vectors = [v.detach().to("cpu").float() if dtype is None else v.detach().to("cpu", dtype) for v in vectors]
    if components.is_sdxl:
        a1111 = {"clip_l": vectors[0], "clip_g": vectors[1]}
    else:
        a1111 = {"emb_params": vectors[0]}
    single = out / f"{safe_name}.safetensors"
    meta = {"sdtui_token": token, "sdtui_family": components.family}
    _save_safetensors(single, a1111, meta)
    folder = out / DIFFUSERS_DIR
    _save_safetensors(folder / "learned_embeds.safetensors", {token: vectors[0]}, meta)
    if components.is_sdxl:
        _save_safetensors(folder / "learned_embeds_2.safetensors", {token: vectors[1]}, meta)
    return SavedFiles(single, folder / "learned_embeds.safetensors")


# --- the original (CompVis LDM / Stability SGM) single-file layout -------------------------

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")
_SAMPLER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _resnet_inner(rest: str | None) -> str | None:
    if not rest:
        return rest
    head, _, tail = rest.partition(".")
    return _join(_UNET_RESNET.get(head, head), tail)


def unet_module_name(name: str, config: Mapping[str, Any]) -> str:
    """A diffusers UNet module/parameter path in the original LDM/SGM naming (without ``model.diffusion_model.``)."""
    per_level = int(config["layers_per_block"] if not isinstance(config["layers_per_block"], (list, tuple)) else config["layers_per_block"][0]) + 1
    for diffusers_name, original in _UNET_TOP.items():
        if name == diffusers_name or name.startswith(diffusers_name + "."):
            return original + name[len(diffusers_name):]
    match = _BLOCK.match(name)
    if match:
        side, level, kind, index, rest = match.groups()
        level, index = int(level), int(index)
        block = 1 + level * per_level + index if side == "down_blocks" else level * per_level + index
        group = "input_blocks" if side == "down_blocks" else "output_blocks"
        if kind == "resnets":
            return _join(f"{group}.{block}.0", _resnet_inner(rest))
        return _join(f"{group}.{block}.1", rest)
    match = _SAMPLER.match(name)
    if match:
        side, level, _, rest = match.groups()
        level = int(level)
        if side == "down_blocks":
            return _join(f"input_blocks.{(level + 1) * per_level}.0.op", rest)
        has_attention = str(config["up_block_types"][level]).startswith("CrossAttn")
        return _join(f"output_blocks.{level * per_level + per_level - 1}.{2 if has_attention else 1}.conv", rest)
    match = _MID.match(name)
    if match:
        kind, index, rest = match.groups()
        if kind == "attentions":
            return _join("middle_block.1", rest)
        return _join(f"middle_block.{0 if int(index) == 0 else 2}", _resnet_inner(rest))
    raise ValueError(f"no original-layout name for the UNet module {name}")


def vae_to_original(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the original ``first_stage_model.`` layout."""
    levels = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for old, ldm in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")):
                new = new.replace("attn_1." + old, "attn_1." + ldm)
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        out["first_stage_model." + new] = tensor
    return out


def clip_to_original(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text encoder state dict under ``prefix`` with the ``text_model.`` names."""
    return {prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()}


_OPEN_CLIP = (
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm.", "ln_final."),
    ("encoder.layers.", "transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)


def open_clip_to_original(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text encoder state dict in OpenCLIP's layout (fused ``in_proj``) under ``prefix``."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        name = key.removeprefix("text_model.")
        if name == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        match = re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name)
        if match:
            layer, which, kind = match.groups()
            qkv.setdefault(f"transformer.resblocks.{layer}.attn.in_proj_{kind}", {})[which] = tensor
            continue
        for old, new in _OPEN_CLIP:
            name = name.replace(old, new)
        out[prefix + name] = tensor
    for name, parts in qkv.items():
        out[prefix + name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_original(pipe: Any, family: str) -> dict[str, Any]:
    """The pipeline's weights as one state dict in the original single-file layout of ``family``.

    SD1: ``model.diffusion_model.``, ``first_stage_model.``, ``cond_stage_model.transformer.``;
    SD2: the text encoder in OpenCLIP form under ``cond_stage_model.model.``; SDXL:
    ``conditioner.embedders.0.transformer.`` (CLIP-L) and ``conditioner.embedders.1.model.``
    (OpenCLIP bigG with its projection). This is what A1111, ComfyUI and diffusers'
    ``from_single_file`` read.
    """
    unet_config = dict(pipe.unet.config)
    out: dict[str, Any] = {}
    for key, tensor in pipe.unet.state_dict().items():
        module, _, param = key.rpartition(".")
        out["model.diffusion_model." + _join(unet_module_name(module, unet_config), param)] = tensor
    out.update(vae_to_original(pipe.vae.state_dict(), dict(pipe.vae.config)))
    if family == "sdxl":
        out.update(clip_to_original(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        out.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    elif family == "sd2":
        out.update(open_clip_to_original(pipe.text_encoder.state_dict(), "cond_stage_model.model."))
    else:
        out.update(clip_to_original(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return out
