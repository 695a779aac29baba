"""The hooks every flow-matching transformer family shares, composed from this package's functions (imported only by the trainer).

A family's runtime subclasses :class:`FlowRuntime` and adds what is its own: ``encode_text``,
``extra_conditioning``, ``predict``, ``sample_arguments``, the file layouts (``lora_files``,
``lora_from_file``, ``to_original``, ``denoiser_from_file``), ``variant_of`` and the tiny model.
Everything here reads the family's facts from its spec; nothing asks which family it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import loading, t5
from core.families.flow_mmdit import PATCH, blocks, latents, models
from core.families.flow_mmdit.objective import flow_objective
from core.families.objectives import FlowObjective, check_objective_settings
from core.families.protocol import LoadedModel, ModelSource
from core.families.spec import FamilySpec, TextEncoder

#: The text encoder kinds whose tokenizers are T5's (ids and a padding mask).
T5_KINDS = ("t5xxl",)


class FlowRuntime:
    """Loading, objective, latents, schedulers, tokenizing and sampling defaults of a flow transformer family."""

    #: Transformers gain nothing from channels-last memory (their activations are token sequences).
    supports_channels_last = False
    #: Extra arguments of the pipeline class (besides the modules) and of its loaders.
    pipeline_extras: Mapping[str, Any] = {}

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec

    # ---- loading
    def pipeline_class(self) -> Any:
        """The diffusers pipeline class (imported on first use)."""
        import diffusers

        return getattr(diffusers, self.spec.pipeline_class)

    def load(self, source: ModelSource, dtypes: Mapping[str, Any] | None = None) -> LoadedModel:
        """The model's modules from a diffusers folder, hub id, single file or split files, and the variant they are."""
        parts = loading.load_source(self.spec, source, self.pipeline_class(), dtypes, self.pipeline_extras, self.single_file_parts, self.denoiser_from_file)
        denoiser = parts[self.spec.denoiser]
        return LoadedModel(
            family=self.spec.name,
            denoiser=denoiser,
            vae=parts["vae"],
            text_encoders=[parts[n] for n in self.spec.text_encoder_names],
            tokenizers=[parts[n] for n in self.spec.tokenizer_names],
            scheduler=parts["scheduler"],
            source=source,
            variant=self.variant_of(dict(denoiser.config)),
        )

    def single_file_parts(self, path: Path, config: str, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every part of one single file: diffusers' ``from_single_file`` (a family with denoiser-only files overrides this)."""
        return loading.load_single_file(path, self.pipeline_class(), config, dtypes, self.pipeline_extras)

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A denoiser file in the family's original layout, into a copy of ``like`` (diffusers' loader by default)."""
        return loading.load_part_file("denoiser", self.spec.denoiser, str(path), like, dtype, "model.denoiser")

    def variant_of(self, denoiser_config: Mapping[str, Any]) -> str:
        """The variant a denoiser config is (the family's default unless the family tells them apart)."""
        return self.spec.variant().name

    def load_pipeline(self, model_dir: str) -> Any:
        """A diffusers folder of this family as its pipeline (for conversion)."""
        return self.pipeline_class().from_pretrained(model_dir, local_files_only=True, **self.pipeline_extras)

    # ---- objective and schedulers
    def prediction_type(self, scheduler_config: Mapping[str, Any], denoiser_config: Mapping[str, Any]) -> str:
        """Always ``flow``: these families train with flow matching only."""
        return "flow"

    def noise_scheduler(self, scheduler_config: Mapping[str, Any], prediction_type: str) -> Any:
        """The model's flow-matching Euler scheduler (its config carries the shift rule)."""
        return models.flow_scheduler(scheduler_config)

    def inference_scheduler(self, scheduler: Any, prediction_type: str) -> Any:
        """A fresh copy of the model's own flow-matching scheduler."""
        return type(scheduler).from_config(dict(scheduler.config))

    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:
        """The flow objective of the model's scheduler config and the run's flow settings; UserError for settings it cannot honour."""
        check_objective_settings(self.spec, prediction_type, settings)
        return flow_objective(dict(noise_scheduler.config), settings, PATCH)

    # ---- denoiser
    def set_attention(self, denoiser: Any, attention: str) -> None:
        """``sdpa`` or ``eager`` attention in every block."""
        models.set_attention(denoiser, attention)

    def enable_gradient_checkpointing(self, denoiser: Any) -> None:
        """Checkpoint every transformer block."""
        models.enable_gradient_checkpointing(denoiser)

    def add_adapter(self, denoiser: Any, config: Any) -> None:
        """peft's adapter through diffusers' ``add_adapter``."""
        models.add_adapter(denoiser, config)

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """The ``lora_targets`` suffixes themselves; for a family with one block selection setting per block
        list (``FamilySpec.block_settings``: SD 3.5's ``train_block_indices``), the full names of the targets
        in the selected blocks and of those outside every block list. UserError when nothing is selected."""
        if not self.spec.block_settings:
            return list(targets)
        from core.errors import UserError
        from core.families.wrappers import unwrap

        plain = unwrap(denoiser)
        chosen = {lists: blocks.parse_indices(str(settings.get(key, "") or ""), len(plain.get_submodule(lists)), key) for key, lists in self.spec.block_settings.items()}
        names = blocks.linear_targets(plain, targets, chosen, outside=True)
        if not names:
            settings_named = " and ".join(f"settings.{key}" for key in self.spec.block_settings)
            raise UserError(f"{settings_named} select no block to train; select at least one block (e.g. all)")
        return names

    # ---- latents
    def encode_latents(self, vae: Any, pixels: Any, generator: Any = None) -> Any:
        """16-channel latents ``(z - shift) * scaling``."""
        return latents.encode_latents(vae, pixels, generator)

    def decode_latents(self, vae: Any, latents_in: Any) -> Any:
        """Pixels of normalised latents."""
        return latents.decode_latents(vae, latents_in)

    # ---- text
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Any]:
        """The ids of each tokenizer at the variant's token limit, then the padding mask of each encoder that uses one (:func:`split_tokens` reads them back)."""
        ids: list[Any] = []
        masks: list[Any] = []
        for tokenizer, te in zip(tokenizers, self.spec.text_encoders):
            limit = self.spec.max_tokens(te.name, variant)
            if te.kind in T5_KINDS:
                token_ids, mask = t5.tokenize(tokenizer, captions, limit)
                ids.append(token_ids)
                if te.attention_mask:
                    masks.append(mask)
            else:
                ids.append(tokenizer(list(captions), padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids)
        return ids + masks

    def pipeline(self, modules: Mapping[str, Any]) -> Any:
        """An inference pipeline of ``modules``."""
        pipe = self.pipeline_class()(**modules, **self.pipeline_extras)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_defaults(self, variant: str = "") -> tuple[int, float]:
        """The variant's sampling steps and guidance (schnell: 4 steps, no guidance)."""
        chosen = self.spec.variant(variant)
        return chosen.sample_steps, chosen.guidance_scale

    def sample_text(self, pipe: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The call's prompt text as the embeddings its pipeline makes of it: each ``encode_prompt`` call of
        :meth:`sample_text_calls` run as the pipeline runs it, its results named as the call's keywords."""
        found: dict[str, Any] = {}
        for keywords, names in self.sample_text_calls(pipe, arguments):
            values = pipe.encode_prompt(device=pipe._execution_device, **keywords)
            found.update({name: value for name, value in zip(names, values) if name and value is not None and not (isinstance(value, list) and not value)})
        return found

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """Each ``encode_prompt`` call the family's pipeline makes for a call with ``arguments``: its keywords
        (the device aside), and the call keyword each of its results is (None: one the pipeline remakes
        itself, such as FLUX.1's text ids). A family with ``spec.samples_from_embeddings`` overrides this."""
        raise NotImplementedError(f"{self.spec.title} samples from the prompt text (spec.samples_from_embeddings is false)")

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """``ss_base_model_version`` and ``modelspec.*`` of the variant (``spec.modelspec_architectures`` by variant name, else its ``epsilon`` entry)."""
        name = self.spec.variant(variant).name
        return {
            "ss_base_model_version": self.spec.kohya_base_version,
            "ss_v2": str(self.spec.kohya_v2),
            "modelspec.architecture": f"{self.spec.modelspec_architectures.get(name, self.spec.modelspec_architectures['epsilon'])}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
            "modelspec.prediction_type": "flow",
        }


def split_tokens(spec: FamilySpec, tokens: Sequence[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """:meth:`FlowRuntime.tokenize`'s tensors as ``(ids by encoder name, masks by encoder name)``."""
    names = spec.text_encoder_names
    ids = dict(zip(names, tokens[: len(names)]))
    masked = [te.name for te in spec.text_encoders if te.attention_mask]
    return ids, dict(zip(masked, tokens[len(names) :]))


def encoder_of(spec: FamilySpec, kind: str) -> TextEncoder:
    """The family's text encoder of ``kind`` (``clip_l``, ``t5`` …)."""
    return next(te for te in spec.text_encoders if te.kind == kind)
