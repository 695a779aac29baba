"""Loading the base model for training: a diffusers folder, a single checkpoint file, or a hub id.

:func:`load_components` returns the parts the training loop needs (UNet, VAE, text encoders,
tokenizers, a DDPM noise scheduler for training) plus the detected family and prediction type.
Every failure is an exception whose message is one sentence naming the model and the fix.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.model_family import family_of_file, family_of_folder

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelLoadError(UserError):
    """The base model could not be loaded; the message names the model and the fix."""


@dataclass
class Components:
    """The modules of a Stable Diffusion model, as the trainer uses them."""

    family: str
    prediction_type: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    model_path: str
    scheduler: Any = None

    @property
    def pipeline_class(self) -> type:
        """The diffusers pipeline class of the family (imported on first use: the pipelines cost 10 s of imports)."""
        return _pipeline_class(self.family)

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL (two text encoders, size/crop conditioning)."""
        return self.family == "sdxl"

    def pipeline(self, unet: Any = None, text_encoders: list[Any] | None = None) -> Any:
        """An inference pipeline sharing these modules (or the given, possibly training-wrapped, ones)."""
        unet = unwrap(unet if unet is not None else self.unet)
        encoders = [unwrap(m) for m in (text_encoders if text_encoders is not None else self.text_encoders)]
        parts: dict[str, Any] = {
            "unet": unet,
            "vae": self.vae,
            "text_encoder": encoders[0],
            "tokenizer": self.tokenizers[0],
            "scheduler": self.scheduler if self.scheduler is not None else self.noise_scheduler,
        }
        if self.is_sdxl:
            parts["text_encoder_2"] = encoders[1]
            parts["tokenizer_2"] = self.tokenizers[1]
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = self.pipeline_class(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def unwrap(module: Any) -> Any:
    """The plain model inside DDP / torch.compile / PeftModel wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif type(module).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(module, "module"):
            module = module.module
        elif type(module).__name__ == "PeftModel" and hasattr(module, "get_base_model"):
            module = module.get_base_model()
        else:
            return module


def detect_prediction_type(family: str, scheduler_config: dict[str, Any], unet_config: dict[str, Any]) -> str:
    """epsilon or v_prediction: the scheduler config's value, else SD2 768-v by the UNet's sample size."""
    declared = scheduler_config.get("prediction_type")
    if declared in ("epsilon", "v_prediction"):
        if family == "sd2" and declared == "epsilon" and int(unet_config.get("sample_size") or 0) >= 96:
            return "v_prediction"
        return declared
    if family == "sd2" and int(unet_config.get("sample_size") or 0) >= 96:
        return "v_prediction"
    return "epsilon"


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


def _pipeline_class(family: str) -> type:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


#: The parts of a diffusers folder the trainer loads (the safety checker and feature extractor are left out).
FOLDER_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def _load_folder(path: Path, dtypes: Mapping[str, Any] | None) -> Any:
    """Each part named in ``model_index.json`` with its own class, as the diffusers examples load them.

    Not through the pipeline class: importing the diffusers pipelines costs about 10 s before the
    first weight is read (they are imported later, when sampling or saving needs them).
    """
    import importlib
    import json
    from types import SimpleNamespace

    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
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
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if n not in parts]
    if missing:
        raise ModelLoadError(f"The diffusers folder {path} has no {', '.join(missing)} in model_index.json; give a complete Stable Diffusion folder.")
    return SimpleNamespace(**parts)


def _config_for_single_file(path: Path, config_path: str) -> str | None:
    """A local diffusers folder describing a single file's architecture, if one is known."""
    if config_path:
        return config_path
    for candidate in (path.with_suffix(""), path.parent):
        if (candidate / "model_index.json").is_file():
            return str(candidate)
    return None


def _load_single_file(path: Path, family: str, config_path: str, dtypes: Mapping[str, Any] | None) -> Any:
    cls = _pipeline_class(family)
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
    if family != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return cls.from_single_file(str(path), **kwargs)


def _load_hub(model_id: str, family: str | None, dtypes: Mapping[str, Any] | None) -> tuple[Any, str]:
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
    detected = "sdxl" if hasattr(pipe, "text_encoder_2") else family_from_config(pipe.text_encoder.config.to_dict(), dict(pipe.unet.config))
    return pipe, detected or family or "sd1"


def family_from_config(text_config: dict[str, Any], unet_config: dict[str, Any]) -> str:
    """sd1 or sd2 from a loaded text encoder and UNet config."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if text_config.get("hidden_size") == 1024 or text_config.get("hidden_act") == "gelu":
        return "sd2"
    return "sd1"


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
    family: str | None = None,
    prediction_type: str = "auto",
    vae_path: str = "",
    config_path: str = "",
    dtypes: Mapping[str, Any] | None = None,
) -> Components:
    """Load a Stable Diffusion model for training.

    ``model_path`` is a diffusers folder, a single ``.safetensors``/``.ckpt`` file in the
    original layout (its diffusers config from ``config_path``, a folder named like the file
    beside it, or the hub), or a hub id. The family is detected from the weights (``family``
    is only the fallback); ``prediction_type="auto"`` reads the scheduler config. ``dtypes``
    (component name or ``"default"`` -> torch dtype) reads the weights straight into those dtypes
    (memory-mapped safetensors, no full fp32 copy on the way); without it they load in fp32.
    """
    from diffusers import DDPMScheduler

    if not model_path:
        raise ModelLoadError("No base model is set; put a diffusers folder, a .safetensors file or a hub id in model.path of run.toml.")
    path = Path(model_path).expanduser()
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"The folder {path} is not a diffusers model (no model_index.json); give a diffusers folder or a single .safetensors file.")
            detected = family_of_folder(path)
            pipe = _load_folder(path, dtypes)
        elif path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"The model file {path} is not a checkpoint; give a .safetensors or .ckpt file or a diffusers folder.")
            detected = family_of_file(path)
            pipe = _load_single_file(path, detected, config_path, dtypes)
        elif _HUB_ID.match(model_path) and not model_path.startswith((".", "/", "~")):
            pipe, detected = _load_hub(model_path, family, dtypes)
        else:
            raise ModelLoadError(f"The model path {model_path} does not exist; fix model.path in run.toml (a diffusers folder, a .safetensors file or a hub id).")
    except UserError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"The model {model_path} could not be loaded ({_short(exc)}); check that it is a complete Stable Diffusion 1/2/XL checkpoint or diffusers folder."
        ) from exc

    vae = _load_vae(vae_path, (dtypes or {}).get("vae")) if vae_path else pipe.vae
    scheduler_config = dict(pipe.scheduler.config)
    resolved = prediction_type if prediction_type in ("epsilon", "v_prediction") else detect_prediction_type(detected, scheduler_config, dict(pipe.unet.config))
    noise_scheduler = DDPMScheduler.from_config(scheduler_config, prediction_type=resolved)
    inference = type(pipe.scheduler).from_config(scheduler_config, prediction_type=resolved)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if detected == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if detected == "sdxl" else [])
    return Components(
        family=detected,
        prediction_type=resolved,
        unet=pipe.unet,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
        model_path=str(model_path),
        scheduler=inference,
    )
