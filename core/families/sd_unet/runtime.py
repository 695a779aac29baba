"""The trainer-side runtime shared by the SD-UNet families (sd1, sd2, sdxl); heavy imports inside the methods.

A family's ``runtime.py`` makes one :class:`SDUNetRuntime` (or a subclass) from its spec; the
trainer reaches it as ``components.runtime`` and never asks which family it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.families import clip
from core.families.embeddings import TextEmbeddings
from core.families.objectives import DdpmObjective
from core.families.sd_unet import layout
from core.families.spec import FamilySpec
from core.families.wrappers import unwrap

#: What an SD1/SD2 pipeline is built with besides its modules: no safety checker.
NO_SAFETY_CHECKER: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class SDUNetRuntime:
    """Load, encode, condition, denoise, sample, convert and build tiny for one SD-UNet family."""

    #: Extra arguments of the pipeline class (besides the modules), and of its ``from_pretrained`` / ``from_single_file``.
    pipeline_extras: Mapping[str, Any] = NO_SAFETY_CHECKER
    load_extras: Mapping[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    #: kohya names the UNet's LoRA modules with the original (SGM) names instead of diffusers'.
    kohya_original_unet_names = False

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec

    # ---- loading
    def pipeline_class(self) -> type:
        """The diffusers pipeline class (imported on first use: the pipelines cost 10 s of imports)."""
        import diffusers

        return getattr(diffusers, self.spec.pipeline_class)

    def prediction_type(self, scheduler_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str:
        """epsilon or v_prediction: the scheduler config's value, else the spec's v-prediction UNet size
        (SD2 768-v, which some configs declare as epsilon), else the spec's default objective."""
        declared = scheduler_config.get("prediction_type")
        v_sized = bool(self.spec.v_prediction_sample_size) and int(unet_config.get("sample_size") or 0) >= self.spec.v_prediction_sample_size
        if declared in self.spec.objectives:
            return "v_prediction" if declared == "epsilon" and v_sized else declared
        return "v_prediction" if v_sized else self.spec.objective

    def noise_scheduler(self, scheduler_config: Mapping[str, Any], prediction_type: str) -> Any:
        """The training noise schedule: a DDPM scheduler from the model's scheduler config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(dict(scheduler_config), prediction_type=prediction_type)

    def objective(self, prediction_type: str, noise_scheduler: Any) -> DdpmObjective:
        """The training objective over the model's DDPM noise schedule."""
        return DdpmObjective(noise_scheduler, prediction_type)

    def pipeline(self, modules: Mapping[str, Any]) -> Any:
        """An inference pipeline of ``modules`` (component name -> module, tokenizers and scheduler included)."""
        pipe = self.pipeline_class()(**modules, **self.pipeline_extras)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---- text
    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """The denoiser's text conditioning: the one CLIP encoder's states at kohya's ``clip_skip``."""
        return clip.encode_one(encoders[0], token_ids[0], clip_skip)

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any) -> dict[str, Any] | None:
        """The denoiser's conditioning besides the text states, per batch (none for SD1/SD2)."""
        return None

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """The denoiser's forward: its prediction for the noisy latents."""
        kwargs: dict[str, Any] = {"added_cond_kwargs": extra} if extra is not None else {}
        return denoiser(noisy, timesteps, hidden, **kwargs).sample

    def sample_text(self, pipe: Any, prompt: str, negative: str, clip_skip: int) -> tuple[dict[str, Any], int | None]:
        """The pipeline's text arguments for a sample and its own ``clip_skip``.

        At a skipped layer the embeddings are computed here (diffusers' own ``clip_skip``
        expects a ``text_model`` attribute that transformers 5's CLIPTextModel no longer has).
        """
        if clip_skip <= 1:
            return {"prompt": prompt, "negative_prompt": negative or None}, None
        return {"prompt_embeds": self._skipped_embeds(pipe, prompt, clip_skip), "negative_prompt_embeds": self._skipped_embeds(pipe, negative, clip_skip)}, None

    def _skipped_embeds(self, pipe: Any, text: str, clip_skip: int) -> Any:
        tokens = pipe.tokenizer([text], padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        encoder = pipe.text_encoder
        return clip.clip_skip_states(encoder, tokens.input_ids.to(clip.device_of(encoder)), clip_skip)

    # ---- files other tools read
    def kohya_unet_module(self, name: str, unet_config: Mapping[str, Any]) -> str:
        """A UNet module path as kohya names it in LoRA keys."""
        return layout.unet_module_name(name, unet_config) if self.kohya_original_unet_names else name

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The pipeline's weights as one state dict in the family's original single-file layout."""
        encoders = [getattr(pipe, name) for name in self.spec.text_encoder_names]
        return layout.to_original(unwrap(pipe.unet), pipe.vae, encoders, self.spec.text_encoders)

    def load_pipeline(self, model_dir: str) -> Any:
        """A diffusers folder of this family as its pipeline (for conversion)."""
        return self.pipeline_class().from_pretrained(model_dir, local_files_only=True, **self.load_extras)

    # ---- tiny
    def tiny_pipeline(self) -> tuple[type, dict[str, Any]]:
        """The pipeline class and the seeded random modules of this family's tiny model (no tokenizers)."""
        raise NotImplementedError(f"the {self.spec.name} family has no tiny model")
