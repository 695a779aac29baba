"""The trainer-side runtime shared by the SD-UNet families (sd1, sd2, sdxl); heavy imports inside the methods.

A family's ``runtime.py`` makes one :class:`SDUNetRuntime` (or a subclass) from its spec; the
trainer reaches it as ``components.runtime`` and never asks which family it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import clip, loading, lora_files
from core.families.embeddings import TextEmbeddings
from core.families.keymaps import KeyMap
from core.families.objectives import DdpmObjective, check_objective_settings
from core.families.protocol import AdapterWeights, LoadedModel, LoraFiles, ModelSource, SamplePromptLike
from core.families.sd_unet import layout
from core.families.spec import FamilySpec
from core.families.wrappers import unwrap

#: A CLIP text encoder's LoRA module names in kohya files: under ``text_model.`` (transformers' own root).
TEXT_MODULES = KeyMap((("text_model.{*}", "text_model.{*}"), ("{*}", "text_model.{*}")))

#: What an SD1/SD2 pipeline is built with besides its modules: no safety checker.
NO_SAFETY_CHECKER: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class SDUNetRuntime:
    """Load, encode, condition, denoise, sample, convert and build tiny for one SD-UNet family."""

    #: Extra arguments of the pipeline class (besides the modules), and of its ``from_pretrained`` / ``from_single_file``.
    pipeline_extras: Mapping[str, Any] = NO_SAFETY_CHECKER
    load_extras: Mapping[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    #: kohya names the UNet's LoRA modules with the original (SGM) names instead of diffusers'.
    kohya_original_unet_names = False
    #: UNet convolutions gain from channels-last memory on a GPU.
    supports_channels_last = True

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec

    # ---- loading
    def pipeline_class(self) -> Any:
        """The diffusers pipeline class (imported on first use: the pipelines cost 10 s of imports; diffusers is untyped here)."""
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

    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> DdpmObjective:
        """The training objective over the model's DDPM noise schedule; UserError for run ``settings`` the objective cannot honour."""
        check_objective_settings(self.spec, prediction_type, settings)
        return DdpmObjective(noise_scheduler, prediction_type)

    def inference_scheduler(self, scheduler: Any, prediction_type: str) -> Any:
        """The model's own sampling scheduler, set to ``prediction_type``."""
        return type(scheduler).from_config(dict(scheduler.config), prediction_type=prediction_type)

    def load(self, source: ModelSource, dtypes: Mapping[str, Any] | None = None) -> LoadedModel:
        """The model's modules: ``source.path`` whole (folder, hub id, single file), its parts replaced by the split files given."""
        parts = loading.load_source(self.spec, source, self.pipeline_class(), dtypes, self.load_extras)
        return LoadedModel(
            family=self.spec.name,
            denoiser=parts[self.spec.denoiser],
            vae=parts["vae"],
            text_encoders=[parts[n] for n in self.spec.text_encoder_names],
            tokenizers=[parts[n] for n in self.spec.tokenizer_names],
            scheduler=parts["scheduler"],
            source=source,
        )

    def set_attention(self, denoiser: Any, attention: str) -> None:
        """``sdpa`` (torch's scaled dot-product attention) or ``eager`` on every UNet attention."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        denoiser.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())

    def enable_gradient_checkpointing(self, denoiser: Any) -> None:
        """diffusers' gradient checkpointing of the UNet blocks."""
        denoiser.enable_gradient_checkpointing()

    def add_adapter(self, denoiser: Any, config: Any) -> None:
        """peft's adapter through diffusers' ``add_adapter``."""
        denoiser.add_adapter(config)

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """The ``lora_targets`` suffixes themselves (every UNet block is adapted)."""
        return list(targets)

    # ---- latents
    @staticmethod
    def _normalisation(vae: Any) -> tuple[float, Any, Any, Any]:
        """``(scaling, shift or None, per-channel mean or None, per-channel std or None)`` of a VAE config."""
        config = vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        return float(config.scaling_factor), getattr(config, "shift_factor", None), mean, std

    def encode_latents(self, vae: Any, pixels: Any, generator: Any = None) -> Any:
        """fp32 latents ``(z - shift) * scaling`` (per channel ``(z - mean) * scaling / std`` where the VAE has them);
        a posterior sample with ``generator``, its mode without."""
        import torch

        with torch.no_grad():
            posterior = vae.encode(pixels).latent_dist
            latents = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        scaling, shift, mean, std = self._normalisation(vae)
        if mean is not None and std is not None:
            shape = (1, -1, *([1] * (latents.ndim - 2)))
            mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).reshape(shape)
            std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).reshape(shape)
            return ((latents - mean_t) * scaling / std_t).float()
        if shift is not None:
            latents = latents - shift
        return (latents * scaling).float()

    def decode_latents(self, vae: Any, latents: Any) -> Any:
        """Pixels in ``[-1, 1]`` of latents normalised as :meth:`encode_latents` does."""
        import torch

        scaling, shift, mean, std = self._normalisation(vae)
        latents = latents.to(vae.dtype)
        if mean is not None and std is not None:
            shape = (1, -1, *([1] * (latents.ndim - 2)))
            latents = latents * torch.tensor(std, device=latents.device, dtype=latents.dtype).reshape(shape) / scaling + torch.tensor(
                mean, device=latents.device, dtype=latents.dtype
            ).reshape(shape)
        else:
            latents = latents / scaling + (shift if shift is not None else 0)
        with torch.no_grad():
            return vae.decode(latents).sample

    # ---- text
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Any]:
        """Token ids ``[batch, max_tokens]`` per tokenizer: padded and truncated to the spec's ``max_tokens``."""
        return [
            tokenizer(list(captions), padding="max_length", max_length=te.max_tokens, truncation=True, return_tensors="pt").input_ids
            for tokenizer, te in zip(tokenizers, self.spec.text_encoders)
        ]

    def pipeline(self, modules: Mapping[str, Any]) -> Any:
        """An inference pipeline of ``modules`` (component name -> module, tokenizers and scheduler included)."""
        pipe = self.pipeline_class()(**modules, **self.pipeline_extras)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---- text
    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """The denoiser's text conditioning: the one CLIP encoder's states at kohya's ``clip_skip``."""
        return clip.encode_one(encoders[0], token_ids[0], clip_skip)

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The denoiser's conditioning besides the text states, per batch (none for SD1/SD2)."""
        return None

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """The denoiser's forward: its prediction for the noisy latents."""
        kwargs: dict[str, Any] = {"added_cond_kwargs": extra} if extra is not None else {}
        return denoiser(noisy, timesteps, hidden, **kwargs).sample

    def _sample_text(self, pipe: Any, prompt: str, negative: str, clip_skip: int) -> tuple[dict[str, Any], int | None]:
        """The pipeline's text arguments for a sample and its own ``clip_skip``.

        At a skipped layer the embeddings are computed here (diffusers' own ``clip_skip``
        expects a ``text_model`` attribute that transformers 5's CLIPTextModel no longer has).
        """
        if clip_skip <= 1:
            return {"prompt": prompt, "negative_prompt": negative or None}, None
        return {"prompt_embeds": self._skipped_embeds(pipe, prompt, clip_skip), "negative_prompt_embeds": self._skipped_embeds(pipe, negative, clip_skip)}, None

    def sample_defaults(self, variant: str = "") -> tuple[int, float]:
        """The variant's sampling steps and guidance scale (``parse_prompt_line``'s ``steps`` / ``scale``)."""
        chosen = self.spec.variant(variant)
        return chosen.sample_steps, chosen.guidance_scale

    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """Every keyword of the pipeline call but the generator: text, size, steps, guidance, and
        ``clip_skip`` only where the family's pipeline takes it."""
        text, skip = self._sample_text(pipe, prompt.prompt, prompt.negative, clip_skip)
        call = {**text, "width": prompt.width, "height": prompt.height, "num_inference_steps": prompt.steps, "guidance_scale": prompt.scale}
        if self.spec.pipeline_clip_skip:
            call["clip_skip"] = skip
        return call

    def sample_text(self, pipe: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Not offered: the UNet families sample from the prompt text with their (small) CLIP encoders kept
        for the run (``spec.samples_from_embeddings`` is false)."""
        raise NotImplementedError(f"{self.spec.title} samples from the prompt text (spec.samples_from_embeddings is false)")

    def _skipped_embeds(self, pipe: Any, text: str, clip_skip: int) -> Any:
        tokens = pipe.tokenizer([text], padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        encoder = pipe.text_encoder
        return clip.clip_skip_states(encoder, tokens.input_ids.to(clip.device_of(encoder)), clip_skip)

    # ---- files other tools read
    def _kohya_denoiser_module(self, name: str, unet_config: Mapping[str, Any]) -> str:
        """A UNet module path as kohya names it in LoRA keys."""
        return layout.unet_module_name(name, unet_config) if self.kohya_original_unet_names else name

    def kohya_base(self, component: str, name: str, denoiser_config: Mapping[str, Any]) -> str:
        """The kohya key base of one adapted module: ``lora_unet_<module>`` or ``<te prefix>_text_model_<module>``."""
        if component == self.spec.denoiser:
            return f"lora_unet_{self._kohya_denoiser_module(name, denoiser_config).replace('.', '_')}"
        prefix = next(te.kohya_prefix for te in self.spec.text_encoders if te.name == component)
        return f"{prefix}_{TEXT_MODULES.to_theirs(name).replace('.', '_')}"

    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """The adapters in kohya/LyCORIS keys and in diffusers' ``<component>.<peft key>`` layout."""
        return LoraFiles(
            kohya=lora_files.kohya_state_dict(adapters, lambda component, name: self.kohya_base(component, name, denoiser_config)),
            diffusers=lora_files.diffusers_state_dict(adapters),
            diffusers_metadata=lora_files.diffusers_metadata(adapters),
        )

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A kohya or diffusers LoRA file's tensors for one adapter, under peft's keys, through the same key tables."""
        return lora_files.from_file(tensors, adapter, lambda component, name: self.kohya_base(component, name, denoiser_config))

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """The family's ``ss_*`` / ``modelspec.*`` values, as sd-scripts writes them."""
        return {
            "ss_base_model_version": self.spec.base_model_version(v_prediction),
            "ss_v2": str(self.spec.kohya_v2),
            "modelspec.architecture": f"{self.spec.architecture(v_prediction)}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
            "modelspec.prediction_type": "v" if v_prediction else "epsilon",
        }

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """A UNet forward's inputs: latents at ``resolution / 8``, timesteps, text states (and SDXL's added conditioning)."""
        import torch

        side = resolution // 8
        cross = int(denoiser_config["cross_attention_dim"])
        inputs: dict[str, Any] = {
            "sample": torch.randn(batch, int(denoiser_config.get("in_channels", 4)), side, side, dtype=dtype, device=device),
            "timestep": torch.full((batch,), 500, device=device),
            "encoder_hidden_states": torch.randn(batch, self.spec.text_tokens, cross, dtype=dtype, device=device),
        }
        if denoiser_config.get("addition_embed_type") == "text_time":
            pooled = int(denoiser_config["projection_class_embeddings_input_dim"]) - 6 * int(denoiser_config["addition_time_embed_dim"])
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch, pooled, dtype=dtype, device=device),
                "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch, dtype=dtype, device=device),
            }
        return inputs

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The pipeline's weights as one state dict in the family's original single-file layout."""
        encoders = [getattr(pipe, name) for name in self.spec.text_encoder_names]
        return layout.to_original(unwrap(pipe.unet), pipe.vae, encoders, self.spec.text_encoders)

    def load_pipeline(self, model_dir: str) -> Any:
        """A diffusers folder of this family as its pipeline (for conversion)."""
        return self.pipeline_class().from_pretrained(model_dir, local_files_only=True, **self.load_extras)

    # ---- tiny
    def _tiny_pipeline(self) -> tuple[type, dict[str, Any]]:
        """The pipeline class and the seeded random modules of this family's tiny model (no tokenizers)."""
        raise NotImplementedError(f"the {self.spec.name} family has no tiny model")

    def tiny_tokenizers(self, folder: Path) -> dict[str, Any]:
        """The tiny model's tokenizers by component name: the tiny CLIP tokenizer, written to ``folder`` and read back."""
        from transformers import CLIPTokenizer

        from core.families.sd_unet.tiny import write_tokenizer

        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(folder))
        return dict.fromkeys(self.spec.tokenizer_names, tokenizer)

    def build_tiny(self, out_dir: Path) -> Path:
        """Write the tiny model with its tokenizers as a diffusers folder (deterministic, loadable offline)."""
        pipeline_class, parts = self._tiny_pipeline()
        parts.update(self.tiny_tokenizers(out_dir / "tokenizer"))
        pipeline_class(**parts, **self.pipeline_extras).save_pretrained(out_dir, safe_serialization=True)
        return out_dir
