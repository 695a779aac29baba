"""Loading a model for training, for any family: a diffusers folder, a hub id, one single file, or split files.

Which parts a family has, its pipeline class and its loader extras come from the runtime; the
rest is the same for every family. Each part is read straight into the dtype it trains or runs
in (``dtypes``: component name or ``"default"`` -> torch dtype). Every failure is a
``ModelLoadError`` whose message is one sentence naming the model and the fix.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.families.detect import DENOISER_FOLDERS, family_of_configs, family_of_file, family_of_folder, hub_reachable, is_model_file, looks_like_hub_id
from core.families.spec import FamilySpec

if TYPE_CHECKING:
    from core.families.protocol import ModelSource

#: A family's reader of one single file: ``(path, config folder, dtypes) -> parts``.
SingleFileReader = Callable[[Path, str, "Mapping[str, Any] | None"], dict[str, Any]]
#: A family's reader of a denoiser-only file in its original layout: ``(file, the base model's denoiser, dtype) -> denoiser``.
DenoiserReader = Callable[[Path, Any, Any], Any]


class ModelLoadError(UserError):
    """The base model could not be loaded; the message names the model and the fix."""


def parts_of(spec: FamilySpec) -> tuple[str, ...]:
    """The components of a family's diffusers folder the trainer loads."""
    return (spec.denoiser, "vae", *spec.text_encoder_names, *spec.tokenizer_names, "scheduler")


def detect(path_or_id: str) -> str:
    """The family of a model path (folder or single file) or hub id, as loading sees it."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"The folder {path} is not a diffusers model (no model_index.json); give a diffusers folder or a single .safetensors file.")
        return family_of_folder(path)
    if path.is_file():
        if not is_model_file(path):
            raise ModelLoadError(f"The model file {path} is not a checkpoint; give a .safetensors or .ckpt file or a diffusers folder.")
        return family_of_file(path)
    if looks_like_hub_id(path_or_id):
        return family_of_hub_model(path_or_id)
    raise ModelLoadError(f"The model path {path_or_id} does not exist; fix model.path in run.toml (a diffusers folder, a .safetensors file or a hub id).")


def family_of_hub_model(model_id: str) -> str:
    """The family of a hub model from its JSON configs (downloaded, or from the local cache when the hub is offline)."""
    from huggingface_hub import hf_hub_download

    online = hub_reachable()

    def config(name: str) -> dict[str, Any] | None:
        try:
            data = json.loads(Path(hf_hub_download(model_id, name, local_files_only=not online)).read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - a part the model does not have, or cannot be fetched: told apart below
            return None
        return data if isinstance(data, dict) else None

    index = config("model_index.json")
    if index is None:
        if not online:
            raise ModelLoadError(
                f"The model '{model_id}' is a hub id but the Hugging Face hub is offline here and it is not in the local cache; "
                "download it on a machine with network access (huggingface-cli download) and give its folder as the model path."
            )
        raise ModelLoadError(f"The hub model '{model_id}' has no readable model_index.json; check the id and your access to it, or give a diffusers folder.")
    denoiser = next((c for c in (config(f"{d}/config.json") for d in DENOISER_FOLDERS) if c is not None), {})
    parts = {name for name, entry in index.items() if isinstance(entry, list) and len(entry) == 2 and entry[0] is not None}
    return family_of_configs(parts, str(index.get("_class_name", "")), denoiser, config("text_encoder/config.json") or {}, where=f"'{model_id}'")


def load_folder(path: Path, spec: FamilySpec, dtypes: Mapping[str, Any] | None, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each part named in ``model_index.json`` with its own class (the pipelines cost 10 s of imports);
    the parts in ``skip`` are left out (read from elsewhere: a single file's denoiser)."""
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    parts: dict[str, Any] = {}
    for name in parts_of(spec):
        if name in skip:
            continue
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        if name.startswith("tokenizer") and class_name.endswith("Processor"):
            parts[name] = tokenizer_of_processor(path, name, class_name)
            continue
        cls = getattr(importlib.import_module(library), class_name)
        kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": True}
        dtype = (dtypes or {}).get(name, (dtypes or {}).get("default"))
        if dtype is not None and not name.startswith(("tokenizer", "scheduler")):
            kwargs["dtype" if library == "transformers" else "torch_dtype"] = dtype
        parts[name] = cls.from_pretrained(str(path), **kwargs)
    missing = [n for n in parts_of(spec) if n not in parts and n not in skip]
    if missing:
        raise ModelLoadError(f"The diffusers folder {path} has no {', '.join(missing)} in model_index.json; give a complete {spec.title} folder.")
    return parts


#: The files a multimodal processor's folder may keep its chat template in (the tokenizer's own config first).
PROCESSOR_CHAT_TEMPLATES = ("chat_template.jinja", "chat_template.json")


def tokenizer_of_processor(folder: Path, name: str, class_name: str) -> Any:
    """The tokenizer inside a multimodal processor's folder (FLUX.2-dev's ``tokenizer`` is a ``PixtralProcessor``).

    Training reads captions only, so the image processor is never built: ``PixtralProcessor``
    needs torchvision, which sdtui does not install. The tokenizer takes the processor's chat
    template where its own config has none (what the pipeline applies when it samples).
    """
    from transformers import AutoTokenizer

    part = folder / name
    where = f"The {class_name} in {part}"
    if not any((part / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelLoadError(f"{where} has no tokenizer (tokenizer.json / tokenizer_config.json); copy the model's whole {name} folder from its hub repository.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), subfolder=name, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{where} has a tokenizer that could not be read ({short(exc)}); copy the model's whole {name} folder from its hub repository.") from exc
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _processor_chat_template(part)
    if not tokenizer.chat_template:
        raise ModelLoadError(
            f"{where} has no chat template ({', '.join(PROCESSOR_CHAT_TEMPLATES)}), which the pipeline applies to every caption; copy the model's whole {name} folder from its hub repository."
        )
    return tokenizer


def _hub_processor_tokenizers(model_id: str, online: bool) -> dict[str, Any]:
    """The tokenizer parts a hub model's ``model_index.json`` names as multimodal processors, each read as its
    tokenizer alone (:func:`tokenizer_of_processor`), to hand to the pipeline instead of the processor."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        index = json.loads(Path(hf_hub_download(model_id, "model_index.json", local_files_only=not online)).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - no index: the pipeline's own loading says why
        return {}
    names = {n: str(e[1]) for n, e in index.items() if n.startswith("tokenizer") and isinstance(e, list) and len(e) == 2 and str(e[1]).endswith("Processor")}
    if not names:
        return {}
    folder = Path(snapshot_download(model_id, allow_patterns=[f"{n}/*" for n in names], local_files_only=not online))
    return {name: tokenizer_of_processor(folder, name, cls) for name, cls in names.items()}


def _processor_chat_template(part: Path) -> str | None:
    """A processor folder's chat template (``chat_template.jinja``, or the ``chat_template`` of ``chat_template.json``)."""
    jinja, packed = (part / f for f in PROCESSOR_CHAT_TEMPLATES)
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if packed.is_file():
        template = json.loads(packed.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def config_for_single_file(path: Path, config_path: str) -> str | None:
    """A local diffusers folder describing a single file's architecture, if one is known."""
    if config_path:
        return config_path
    for candidate in (path.with_suffix(""), path.parent):
        if (candidate / "model_index.json").is_file():
            return str(candidate)
    return None


def load_single_file(path: Path, pipeline_class: Any, config_path: str, dtypes: Mapping[str, Any] | None, extras: Mapping[str, Any]) -> dict[str, Any]:
    """Every part of one single file in the family's original layout (its diffusers config beside it, given, or from the hub)."""
    config = config_for_single_file(path, config_path)
    online = config is None and hub_reachable()
    if config is None and not online:
        raise ModelLoadError(
            f"The single-file model {path} needs its diffusers config (from the Hugging Face hub, which is offline here); "
            f"put a diffusers folder of the same architecture next to it named '{path.stem}' or load it once with network access."
        )
    kwargs: dict[str, Any] = {"config": config, "local_files_only": not online, **extras}
    if dtypes and len(set(dtypes.values())) == 1:  # from_single_file takes one dtype for every part
        kwargs["torch_dtype"] = dtypes["default"]
    return dict(pipeline_class.from_single_file(str(path), **kwargs).components)


def load_hub(model_id: str, dtypes: Mapping[str, Any] | None, extras: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A hub model's parts and the family its configs show."""
    from diffusers import DiffusionPipeline

    online = hub_reachable()
    extra: dict[str, Any] = {"torch_dtype": dict(dtypes)} if dtypes else {}
    try:
        given = _hub_processor_tokenizers(model_id, online)  # diffusers takes no tokenizer in a processor's place: left out, put back below
        pipe = DiffusionPipeline.from_pretrained(model_id, local_files_only=not online, **extras, **extra, **dict.fromkeys(given))
    except ModelLoadError:
        raise
    except Exception as exc:
        if not online:
            raise ModelLoadError(
                f"The model '{model_id}' is a hub id but the Hugging Face hub is offline here and it is not in the local cache; "
                "download it on a machine with network access (huggingface-cli download) and give its folder as the model path."
            ) from exc
        raise ModelLoadError(f"The hub model '{model_id}' could not be loaded ({short(exc)}); check the id and your access to it.") from exc
    parts = {**dict(pipe.components), **given}
    denoiser = next((parts[n] for n in ("unet", "transformer") if parts.get(n) is not None), None)
    text = parts["text_encoder"].config.to_dict() if parts.get("text_encoder") is not None else {}
    family = family_of_configs({n for n, m in parts.items() if m is not None}, type(pipe).__name__, dict(denoiser.config) if denoiser is not None else {}, text, where=f"'{model_id}'")
    return parts, family


def load_source(
    spec: FamilySpec,
    source: ModelSource,
    pipeline_class: Any,
    dtypes: Mapping[str, Any] | None,
    extras: Mapping[str, Any],
    single_file: SingleFileReader | None = None,
    denoiser_file: DenoiserReader | None = None,
) -> dict[str, Any]:
    """A model's parts by component name: ``source.path`` whole (folder, hub id, single file), then
    the split files of ``source`` in place of those parts.

    ``single_file`` reads a single file where diffusers' ``from_single_file`` does not fit the
    family (FLUX.1's transformer-only files); ``denoiser_file`` reads a denoiser file in the
    family's original layout (fp8 files upcast). Both default to diffusers' own loaders.
    """
    path = Path(source.path).expanduser()
    if path.is_dir():
        parts = load_folder(path, spec, dtypes)
    elif path.is_file():
        if single_file is not None:
            parts = single_file(path, source.config, dtypes)
        else:
            parts = load_single_file(path, pipeline_class, source.config, dtypes, extras)
    else:
        parts, _family = load_hub(source.path, dtypes, extras)
    get = (dtypes or {}).get
    if source.denoiser:
        dtype = get(spec.denoiser, get("default"))
        denoiser_path = Path(source.denoiser).expanduser()
        if denoiser_file is not None and denoiser_path.is_file() and not keys_fit(denoiser_path, parts[spec.denoiser]):
            parts[spec.denoiser] = denoiser_file(denoiser_path, parts[spec.denoiser], dtype)
        else:
            parts[spec.denoiser] = load_part_file("denoiser", spec.denoiser, source.denoiser, parts[spec.denoiser], dtype, "model.denoiser")
    if source.vae:
        parts["vae"] = load_part_file("VAE", "vae", source.vae, parts["vae"], get("vae", get("default")), "model.vae")
    for name, file in source.text_encoders.items():
        if name not in spec.text_encoder_names:
            raise ModelLoadError(f"{spec.title} has no text encoder '{name}'; name one of {', '.join(spec.text_encoder_names)}.")
        parts[name] = load_part_file(f"text encoder {name}", name, file, parts[name], get(name, get("default")), f"model.text_encoders.{name}")
    return parts


def keys_fit(path: Path, like: Any) -> bool:
    """Whether a safetensors file's tensor names are all ``like``'s own (diffusers / transformers names)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys()) <= set(like.state_dict())


def load_part_file(kind: str, component: str, path_text: str, like: Any, dtype: Any, setting: str) -> Any:
    """A separately given part (split files): a diffusers folder of it (or of a whole model holding it), or one file.

    ``like`` is the part of the base model it replaces (its class and config); ``setting`` is
    the run.toml key that names the part (for the error sentences). A file in
    diffusers / transformers names is read into a copy of ``like``; a file in the original
    layout through the class's ``from_single_file`` with the base model's config of it.
    """
    path = Path(path_text).expanduser()
    extra: dict[str, Any] = {"torch_dtype": dtype} if dtype is not None else {}
    cls = type(like)
    try:
        if path.is_dir():
            sub = {"subfolder": component} if (path / component / "config.json").is_file() else {}
            return cls.from_pretrained(str(path), local_files_only=True, **sub, **extra)
        if path.is_file():
            if keys_fit(path, like):
                return _from_state_dict(path, like, dtype)
            if not hasattr(cls, "from_single_file"):
                raise ModelLoadError(f"The {kind} {path_text} is not in {cls.__name__}'s own key names; convert it to a diffusers folder of the {kind}.")
            base = getattr(like.config, "_name_or_path", "")
            return cls.from_single_file(str(path), config=str(base), subfolder=component, local_files_only=not hub_reachable(), **extra)
    except UserError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"The {kind} {path_text} could not be loaded ({short(exc)}); give a diffusers folder of it or its .safetensors file.") from exc
    raise ModelLoadError(f"The {kind} {path_text} does not exist; fix {setting} in run.toml or leave it empty to use the model's own.")


def _from_state_dict(path: Path, like: Any, dtype: Any) -> Any:
    """A copy of ``like`` with the file's weights (every weight of the module must be in it)."""
    import copy

    from safetensors.torch import load_file

    module = copy.deepcopy(like)
    missing, unexpected = module.load_state_dict(load_file(str(path)), strict=False)
    state = module.state_dict()
    given = {state[k].data_ptr() for k in state if k not in missing}
    missing = [k for k in missing if state[k].data_ptr() not in given]  # a tied weight (T5's embed_tokens = shared) comes with its twin
    if missing or unexpected:
        raise ModelLoadError(
            f"The file {path} does not fit the model's {type(like).__name__} ({len(missing)} weights missing, {len(unexpected)} unexpected); give the part that belongs to this model."
        )
    return module.to(dtype=dtype) if dtype is not None else module


def short(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
