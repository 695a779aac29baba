"""Loading the base model for training through its family's runtime: a diffusers folder, a single checkpoint file, or a hub id.

:func:`load_components` detects the family (``core.families.loading.detect``), has its runtime
load the modules (``FamilyRuntime.load``) and returns the parts the training loop needs
(denoiser, VAE, text encoders, tokenizers, the noise scheduler) with the runtime, the
prediction type and the objective built from the run's settings.
Every failure is an exception whose message is one sentence naming the model and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.families import FAMILIES, runtime
from core.families.loading import ModelLoadError, detect, short
from core.families.protocol import FamilyRuntime, ModelSource, Objective
from core.families.spec import FamilySpec
from core.families.wrappers import unwrap

__all__ = ["Components", "ModelLoadError", "load_components"]


@dataclass
class Components:
    """The modules of a model, as the trainer uses them, with its family's runtime and objective."""

    family: str
    prediction_type: str
    denoiser: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    model_path: str
    runtime: FamilyRuntime
    objective: Objective
    scheduler: Any = None
    #: The family variant of the weights (``LoadedModel.variant``; "" = the family's default).
    variant: str = ""

    @property
    def spec(self) -> FamilySpec:
        """The family's spec (core/families)."""
        return self.runtime.spec

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders' component names, in the order of ``text_encoders``."""
        return self.spec.text_encoder_names

    def pipeline(self, denoiser: Any = None, text_encoders: list[Any] | None = None) -> Any:
        """An inference pipeline sharing these modules (or the given, possibly training-wrapped, ones); a text
        encoder that is not there (freed after caching) is None in it, and the samples pass embeddings instead."""
        encoders = [unwrap(m) for m in (text_encoders if text_encoders is not None else self.text_encoders)]
        modules: dict[str, Any] = {
            self.spec.denoiser: unwrap(denoiser if denoiser is not None else self.denoiser),
            "vae": self.vae,
            **dict.fromkeys(self.spec.text_encoder_names),
            **dict(zip(self.spec.text_encoder_names, encoders)),
            **dict(zip(self.spec.tokenizer_names, self.tokenizers)),
            "scheduler": self.scheduler if self.scheduler is not None else self.noise_scheduler,
        }
        return self.runtime.pipeline(modules)


def source_of(family_spec: FamilySpec, model_path: str, vae_path: str, config_path: str, split_files: Mapping[str, str]) -> ModelSource:
    """The :class:`ModelSource` of ``[model]``: the whole model, and the split files it names (a text
    encoder's key is its kind); UserError for a split file the family has no part for."""
    kinds = {te.kind: te.name for te in family_spec.text_encoders}
    encoders: dict[str, str] = {}
    for key, file in split_files.items():
        if not file or key == "denoiser":
            continue
        if key not in kinds:
            raise UserError(f"model.{key} names a text encoder {family_spec.title} does not have; remove it (its text encoders: {', '.join(kinds)})")
        encoders[kinds[key]] = file
    return ModelSource(model_path, denoiser=split_files.get("denoiser", ""), vae=vae_path, text_encoders=encoders, config=config_path)


def load_components(
    model_path: str,
    prediction_type: str = "auto",
    vae_path: str = "",
    config_path: str = "",
    dtypes: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    split_files: Mapping[str, str] | None = None,
) -> Components:
    """Load a model of any registered family for training.

    ``model_path`` is a diffusers folder, a single ``.safetensors``/``.ckpt`` file in the
    original layout (its diffusers config from ``config_path``, a folder named like the file
    beside it, or the hub), or a hub id. The family is detected from the weights;
    ``prediction_type="auto"`` reads the scheduler config. ``dtypes``
    (component name or ``"default"`` -> torch dtype) reads the weights straight into those dtypes
    (memory-mapped safetensors, no full fp32 copy on the way); without it they load in fp32.
    ``settings`` (the run's) are checked against the family's objective (a UserError for one it cannot honour);
    their ``merge_lora`` is fused into the weights (``core.train.model.merge``).
    ``split_files`` are ``[model]``'s separate parts: ``denoiser`` and each text encoder by its kind
    (``clip_l``, ``clip_g``, ``t5xxl``, ``qwen3``), empty ones ignored.
    """
    if not model_path:
        raise ModelLoadError("No base model is set; put a diffusers folder, a .safetensors file or a hub id in model.path of run.toml.")
    try:
        family_runtime = runtime(detect(model_path))
        loaded = family_runtime.load(source_of(family_runtime.spec, model_path, vae_path, config_path, split_files or {}), dtypes)
    except UserError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"The model {model_path} could not be loaded ({short(exc)}); check that it is a complete checkpoint or diffusers folder of a model family sdtui trains ({', '.join(FAMILIES)})."
        ) from exc
    family_spec = family_runtime.spec
    scheduler_config = dict(loaded.scheduler.config)
    resolved = prediction_type if prediction_type in family_spec.objectives else family_runtime.prediction_type(scheduler_config, dict(loaded.denoiser.config))
    noise_scheduler = family_runtime.noise_scheduler(scheduler_config, resolved)
    components = Components(
        family=loaded.family,
        prediction_type=resolved,
        denoiser=loaded.denoiser,
        vae=loaded.vae,
        text_encoders=loaded.text_encoders,
        tokenizers=loaded.tokenizers,
        noise_scheduler=noise_scheduler,
        model_path=str(model_path),
        runtime=family_runtime,
        objective=family_runtime.objective(resolved, noise_scheduler, settings or {}),
        scheduler=family_runtime.inference_scheduler(loaded.scheduler, resolved),
        variant=loaded.variant,
    )
    if settings and settings.get("merge_lora"):
        from core.train.model.merge import merge_lora

        merge_lora(components, str(settings["merge_lora"]))
    return components
