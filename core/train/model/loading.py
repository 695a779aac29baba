"""Loading the base model for training: a diffusers folder, a single checkpoint file, or a hub id.

:func:`load_components` returns the parts the training loop needs (denoiser, VAE, text encoders,
tokenizers, the noise scheduler) plus the detected family's runtime, its prediction type and
objective.
Every failure is an exception whose message is one sentence naming the model and the fix.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.families import FAMILIES, runtime, spec
from core.families.wrappers import unwrap
from core.model_family import LOADED_PARTS, check_loadable, family_of_configs, family_of_file, family_of_folder, model_parts

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelLoadError(UserError):
    """The base model could not be loaded; the message names the model and the fix."""


@dataclass
class Components:
    """The modules of a model, as the trainer uses them, with its family's runtime and objective."""

    family: str
    prediction_type: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    model_path: str
    runtime: Any
    objective: Any
    scheduler: Any = None

    @property
    def spec(self) -> Any:
        """The family's spec (core/families)."""
        return self.runtime.spec

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders' component names, in the order of ``text_encoders``."""
        return self.spec.text_encoder_names

    @property
    def pipeline_class(self) -> type:
        """The diffusers pipeline class of the family (imported on first use: the pipelines cost 10 s of imports)."""
        return self.runtime.pipeline_class()

    def pipeline(self, unet: Any = None, text_encoders: list[Any] | None = None) -> Any:
        """An inference pipeline sharing these modules (or the given, possibly training-wrapped, ones)."""
        encoders = [unwrap(m) for m in (text_encoders if text_encoders is not None else self.text_encoders)]
        modules: dict[str, Any] = {
            self.spec.denoiser: unwrap(unet if unet is not None else self.unet),
            "vae": self.vae,
            **dict(zip(self.spec.text_encoder_names, encoders)),
            **dict(zip(self.spec.tokenizer_names, self.tokenizers)),
            "scheduler": self.scheduler if self.scheduler is not None else self.noise_scheduler,
        }
        return self.runtime.pipeline(modules)


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when the hub is switched off (HF_HUB_OFFLINE) or cannot be reached quickly."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


#: The parts of a diffusers folder the trainer loads, over every family (the safety checker and feature extractor are left out).
FOLDER_PARTS = LOADED_PARTS


def _load_folder(path: Path, family: str, dtypes: Mapping[str, Any] | None) -> Any:
    """Each part named in ``model_index.json`` with its own class, as the diffusers examples load them.

    Not through the pipeline class: importing the diffusers pipelines costs about 10 s before the
    first weight is read (they are imported later, when sampling or saving needs them).
    """
    import importlib
    from types import SimpleNamespace

    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    check_loadable(index, path)
    parts: dict[str, Any] = {}
    for name in FOLDER_PARTS:
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        cls = getattr(importlib.import_module(library), class_name)
        kwargs: dict[str, Any] = {"subfolder": name, "local_files_only": True}
        dtype = (dtypes or {}).get(name, (dtypes or {}).get("default"))
        if dtype is not None and not name.startswith(("tokenizer", "scheduler")):
            kwargs["dtype" if library == "transformers" else "torch_dtype"] = dtype
        parts[name] = cls.from_pretrained(str(path), **kwargs)
    missing = [n for n in model_parts(spec(family)) if n not in parts]
    if missing:
        raise ModelLoadError(f"The diffusers folder {path} has no {', '.join(missing)} in model_index.json; give a complete {spec(family).title} folder.")
    return SimpleNamespace(**parts)


def _config_for_single_file(path: Path, config_path: str) -> str | None:
    """A local diffusers folder describing a single file's architecture, if one is known."""
    if config_path:
        return config_path
    for candidate in (path.with_suffix(""), path.parent):
        index = candidate / "model_index.json"
        if index.is_file():
            check_loadable(json.loads(index.read_text(encoding="utf-8")), candidate)
            return str(candidate)
    return None


def _load_single_file(path: Path, family: str, config_path: str, dtypes: Mapping[str, Any] | None) -> Any:
    family_runtime = runtime(family)
    config = _config_for_single_file(path, config_path)
    online = config is None and hub_reachable()
    if config is None and not online:
        raise ModelLoadError(
            f"The single-file model {path} needs its diffusers config (from the Hugging Face hub, which is offline here); "
            f"put a diffusers folder of the same architecture next to it named '{path.stem}' or load it once with network access."
        )
    kwargs: dict[str, Any] = {"config": config, "local_files_only": not online}
    if dtypes and len(set(dtypes.values())) == 1:  # from_single_file takes one dtype for every part
        kwargs["torch_dtype"] = dtypes["default"]
    kwargs.update(family_runtime.load_extras)
    return family_runtime.pipeline_class().from_single_file(str(path), **kwargs)


def _load_hub(model_id: str, dtypes: Mapping[str, Any] | None) -> tuple[Any, str]:
    from diffusers import DiffusionPipeline

    online = hub_reachable()
    extra: dict[str, Any] = {"torch_dtype": dict(dtypes)} if dtypes else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(model_id, local_files_only=not online, safety_checker=None, **extra)
    except Exception as exc:
        if not online:
            raise ModelLoadError(
                f"The model '{model_id}' is a hub id but the Hugging Face hub is offline here and it is not in the local cache; "
                "download it on a machine with network access (huggingface-cli download) and give its folder as the model path."
            ) from exc
        raise ModelLoadError(f"The hub model '{model_id}' could not be loaded ({_short(exc)}); check the id and your access to it.") from exc
    parts = {name for name in FOLDER_PARTS if getattr(pipe, name, None) is not None}
    text = pipe.text_encoder.config.to_dict() if getattr(pipe, "text_encoder", None) is not None else {}
    return pipe, family_of_configs(parts, type(pipe).__name__, dict(pipe.unet.config), text)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _load_vae(vae_path: str, dtype: Any = None) -> Any:
    from diffusers import AutoencoderKL

    path = Path(vae_path).expanduser()
    extra: dict[str, Any] = {"torch_dtype": dtype} if dtype is not None else {}
    try:
        if path.is_dir():
            sub = path / "vae" if (path / "vae" / "config.json").is_file() else path
            return AutoencoderKL.from_pretrained(str(sub), local_files_only=True, **extra)
        if path.is_file():
            return AutoencoderKL.from_single_file(str(path), local_files_only=not hub_reachable(), **extra)
    except Exception as exc:
        raise ModelLoadError(f"The VAE {vae_path} could not be loaded ({_short(exc)}); give a diffusers VAE folder or a VAE .safetensors file.") from exc
    raise ModelLoadError(f"The VAE {vae_path} does not exist; fix model.vae in run.toml or leave it empty to use the model's own VAE.")


def load_components(
    model_path: str,
    prediction_type: str = "auto",
    vae_path: str = "",
    config_path: str = "",
    dtypes: Mapping[str, Any] | None = None,
) -> Components:
    """Load a Stable Diffusion model for training.

    ``model_path`` is a diffusers folder, a single ``.safetensors``/``.ckpt`` file in the
    original layout (its diffusers config from ``config_path``, a folder named like the file
    beside it, or the hub), or a hub id. The family is detected from the weights;
    ``prediction_type="auto"`` reads the scheduler config. ``dtypes``
    (component name or ``"default"`` -> torch dtype) reads the weights straight into those dtypes
    (memory-mapped safetensors, no full fp32 copy on the way); without it they load in fp32.
    """
    if not model_path:
        raise ModelLoadError("No base model is set; put a diffusers folder, a .safetensors file or a hub id in model.path of run.toml.")
    path = Path(model_path).expanduser()
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"The folder {path} is not a diffusers model (no model_index.json); give a diffusers folder or a single .safetensors file.")
            detected = family_of_folder(path)
            pipe = _load_folder(path, detected, dtypes)
        elif path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"The model file {path} is not a checkpoint; give a .safetensors or .ckpt file or a diffusers folder.")
            detected = family_of_file(path)
            pipe = _load_single_file(path, detected, config_path, dtypes)
        elif _HUB_ID.match(model_path) and not model_path.startswith((".", "/", "~")):
            pipe, detected = _load_hub(model_path, dtypes)
        else:
            raise ModelLoadError(f"The model path {model_path} does not exist; fix model.path in run.toml (a diffusers folder, a .safetensors file or a hub id).")
    except UserError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"The model {model_path} could not be loaded ({_short(exc)}); check that it is a complete checkpoint or diffusers folder of a model family sdtui trains ({', '.join(FAMILIES)})."
        ) from exc

    vae = _load_vae(vae_path, (dtypes or {}).get("vae")) if vae_path else pipe.vae
    scheduler_config = dict(pipe.scheduler.config)
    family_runtime = runtime(detected)
    family_spec = family_runtime.spec
    denoiser = getattr(pipe, family_spec.denoiser)
    resolved = prediction_type if prediction_type in family_spec.objectives else family_runtime.prediction_type(scheduler_config, dict(denoiser.config))
    noise_scheduler = family_runtime.noise_scheduler(scheduler_config, resolved)
    inference = type(pipe.scheduler).from_config(scheduler_config, prediction_type=resolved)
    return Components(
        family=detected,
        prediction_type=resolved,
        unet=denoiser,
        vae=vae,
        text_encoders=[getattr(pipe, name) for name in family_spec.text_encoder_names],
        tokenizers=[getattr(pipe, name) for name in family_spec.tokenizer_names],
        noise_scheduler=noise_scheduler,
        model_path=str(model_path),
        runtime=family_runtime,
        objective=family_runtime.objective(resolved, noise_scheduler),
        scheduler=inference,
    )
