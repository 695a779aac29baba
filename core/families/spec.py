"""What a model family is, as data: the torch-free spec the planner, estimator, CLI and TUI read.

A family package (``core/families/<name>/``) defines one :class:`FamilySpec` in its
``__init__.py`` and a runtime in ``runtime.py`` (heavy imports, only for the trainer).
"""

from __future__ import annotations

from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

#: The objectives a family spec may name (``core.families.objectives`` implements them).
OBJECTIVES = ("epsilon", "v_prediction", "flow")


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a family: its component names, token limit and the names other tools give it.

    ``kind`` (``clip_l``, ``clip_g``, ``t5xxl``) is also the ``[model]`` key naming its split file."""

    name: str
    tokenizer: str
    kind: str
    max_tokens: int
    kohya_prefix: str
    original_prefix: str
    original_layout: str
    embedding_key: str
    embedding_file: str
    #: Whether the encoder (and the denoiser's attention) hides the padding tokens (Chroma's T5);
    #: FLUX.1 and SD 3.x attend to T5's pad tokens as they were trained.
    attention_mask: bool = False
    #: Whether ``train_text_encoder`` may train it (T5-XXL never is: peers freeze it, and it is 4.7B parameters).
    trainable: bool = True


@dataclass(frozen=True)
class Recognition:
    """How a family's files are told apart without torch (``core/families/detect.py`` reads these in registry order).

    Every field is one clue; the first family with a matching clue wins, and the last family
    of the registry is the plain layout the others extend (it matches what nothing else does).
    """

    folder_parts: tuple[str, ...] = ()
    pipeline_mark: str = ""
    cross_attention_dim: int = 0
    unet_marks: Mapping[str, Any] = field(default_factory=dict)
    text_marks: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_keys: tuple[str, ...] = ()
    hub_pattern: str = ""
    #: Models of the family's shape that it does not train: (lower-case mark in the pipeline class,
    #: file name or hub id, what the model is) -> detection refuses them with that sentence.
    refused: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LrDefault:
    """A learning-rate default (AdamW family): denoiser, text encoder, scheduler, warm-up steps."""

    learning_rate: float
    text_encoder_lr: float
    lr_scheduler: str
    lr_warmup_steps: int


@dataclass(frozen=True)
class Variant:
    """A named model of a family (a ``--model`` name such as ``flux-schnell`` or ``sd35-large``):
    the family package it belongs to, its config changes and how its samples are drawn.

    ``configs`` are merged over the family's (component name -> changed keys);
    ``sample_steps`` and ``guidance_scale`` are the sampling defaults (a distilled model: few
    steps and ``guidance_scale = 0``, i.e. no classifier-free guidance); ``max_tokens`` changes
    text encoders' token limits (encoder name -> tokens: FLUX.1-schnell's T5 takes 256, dev's 512).
    ``name_pattern`` (a regex) tells the variant from a model's folder, file or hub name where its
    configs cannot (Z-Image Turbo and Base share them); ``training_note`` is the advice for
    training on it (a distilled model), which ``sdtui plan`` shows as a warning.
    """

    name: str
    family: str
    title: str
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    native_resolution: int = 0
    sample_steps: int = 30
    guidance_scale: float = 7.5
    max_tokens: Mapping[str, int] = field(default_factory=dict)
    #: Components of another class in this variant (name -> ``library.Class``: FLUX.2-dev's Mistral
    #: text encoder); their ``configs`` replace the family's config instead of changing it.
    component_classes: Mapping[str, str] = field(default_factory=dict)
    #: The variant's forward TFLOPs at the native resolution where its size differs from the family's
    #: (SD 3.5 Large against Medium, FLUX.2 klein 9B and dev); 0 = the family's figures.
    denoiser_tflops: float = 0.0
    denoiser_attention_tflops: float = 0.0
    text_encoder_tflops: float = 0.0
    #: The variant's scheduler config where it differs from the family's (FLUX.1-schnell: no shift).
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    name_pattern: str = ""
    training_note: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """Everything about a model family that does not need torch.

    ``objective`` is what a model of the family trains with when neither its scheduler config
    nor its size says otherwise; ``objectives`` are the ones it may be trained with
    (``[model] prediction_type``); ``methods`` the training methods it supports.
    """

    name: str
    title: str
    native_resolution: int
    latent_channels: int
    denoiser: str
    text_encoders: tuple[TextEncoder, ...]
    objective: str
    objectives: tuple[str, ...]
    methods: tuple[str, ...]
    lora_targets: Mapping[str, Mapping[str, tuple[str, ...]]]
    configs: Mapping[str, Mapping[str, Any]]
    component_classes: Mapping[str, str]
    denoiser_tflops: float
    text_encoder_tflops: float
    kohya_base_version: str
    kohya_v_suffix: str
    kohya_v2: bool
    modelspec_architectures: Mapping[str, str]
    modelspec_implementation: str
    pipeline_class: str
    recognition: Recognition
    full_weight_rates: Mapping[str, LrDefault] = field(default_factory=dict)
    v_prediction_sample_size: int = 0
    native_clip_layer: int = 1
    #: The named models of the family; the first is the default (named like the family).
    variants: tuple[Variant, ...] = ()
    #: Whether the family's pipeline takes ``clip_skip=``.
    pipeline_clip_skip: bool = True
    #: Pixels a bucket side must be a multiple of: the VAE's downscale (8), times 2 where the
    #: denoiser packs 2×2 latent patches into one token (16: FLUX, SD 3.x).
    bucket_step: int = 8
    #: The denoiser's blocks ``settings.blocks_to_swap`` streams from CPU memory: the attribute
    #: path of each ``ModuleList`` (``transformer_blocks``, ``single_transformer_blocks``), in the
    #: order its forward runs them, -> the denoiser config key that counts its blocks (an int, or a
    #: list whose length is the count). Empty: the family does not swap blocks.
    swap_blocks: Mapping[str, str] = field(default_factory=dict)
    #: Component name -> module-name patterns (``fnmatch`` on the name inside the component) that
    #: keep the compute precision when ``settings.base_precision`` / ``text_encoder_precision``
    #: quantize it: norms, embeddings, modulation, the input and output layers. Only linear
    #: layers are ever quantized; these patterns exempt some of them.
    high_precision: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The part of ``denoiser_tflops`` (at the native resolution) that grows with the square of the
    #: image tokens: a transformer's attention (FLUX.1: 15 of 125). The rest grows with the pixels.
    denoiser_attention_tflops: float = 0.0
    #: The original single file holds only the denoiser (FLUX.1's and Chroma's releases): the VAE and
    #: text encoders come from the diffusers folder beside it or as split files.
    original_denoiser_only: bool = False
    #: Block selection settings the family takes -> the denoiser's block list each selects in
    #: (FLUX.1: sd-scripts' ``train_double_block_indices`` -> ``transformer_blocks``; SD 3.5:
    #: ``train_block_indices`` -> ``transformer_blocks``). Each list is one of ``swap_blocks``.
    block_settings: Mapping[str, str] = field(default_factory=dict)
    #: The reference scheduler config (a flow family's shift rule lives in it; the tiny models use it).
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    #: Whether the family's runtime renders samples from prompt embeddings encoded once at start-up
    #: (``FamilyRuntime.sample_text``): a LoRA run whose text outputs are cached then frees its text
    #: encoders after caching (:meth:`encoders_leave`). False: the encoders stay for the samples.
    samples_from_embeddings: bool = False

    def encoders_leave(self, method: str, cached: bool) -> bool:
        """Whether a ``method`` run whose text-encoder outputs are ``cached`` frees its text encoders
        once the caches and the sample prompts are encoded: a LoRA run of a family that samples from
        stored embeddings (a full fine-tune saves its encoders; textual inversion trains through them)."""
        return cached and method == "lora" and self.samples_from_embeddings

    def swap_block_count(self, variant: str = "") -> int:
        """How many denoiser blocks ``settings.blocks_to_swap`` may name (0: the family does not swap)."""
        config = self.component_configs(variant).get(self.denoiser, {})
        counts = (config.get(key, 0) for key in self.swap_blocks.values())
        return sum(len(count) if isinstance(count, (list, tuple)) else int(count) for count in counts)

    def block_depth(self, block_list: str, variant: str = "") -> int:
        """How many blocks the denoiser's ``block_list`` holds in ``variant`` (its ``swap_blocks`` config key)."""
        count = self.component_configs(variant).get(self.denoiser, {}).get(self.swap_blocks[block_list], 0)
        return len(count) if isinstance(count, (list, tuple)) else int(count)

    def keeps_precision(self, component: str, module_name: str) -> bool:
        """Whether ``module_name`` of ``component`` stays in the compute precision under a quantized base."""
        return any(fnmatchcase(module_name, pattern) for pattern in self.high_precision.get(component, ()))

    def component_configs(self, variant: str = "") -> dict[str, dict[str, Any]]:
        """A fresh (deep) copy of the real-size component configs (of ``variant``, default the family's), to build or change."""
        configs = deepcopy({name: dict(config) for name, config in self.configs.items()})
        if not variant:
            return configs
        chosen = self.variant(variant)
        for name, changes in chosen.configs.items():
            if name in chosen.component_classes:
                configs[name] = deepcopy(dict(changes))
            else:
                configs.setdefault(name, {}).update(deepcopy(dict(changes)))
        return configs

    def measured_as(self, variant: str = "") -> str:
        """The name the measured tables keep ``variant`` under: the first variant of its size (configs
        and FLOP figures) where that differs from the family's (SD 3.5 Large and Large Turbo: ``sd35-large``),
        else the family's own name."""
        chosen = self.variant(variant) if variant else None
        if chosen is None or not chosen.denoiser_tflops:
            return self.name
        return next(v.name for v in self.variants if (v.configs, v.denoiser_tflops) == (chosen.configs, chosen.denoiser_tflops))

    @property
    def sized_variants(self) -> tuple[str, ...]:
        """The variants measured on their own (:meth:`measured_as` names them)."""
        return tuple(dict.fromkeys(self.measured_as(v.name) for v in self.variants if v.denoiser_tflops))

    def sized(self, variant: str = "") -> FamilySpec:
        """This spec as ``variant`` is sized (its configs, component classes and FLOP figures; the same name):
        what the planner and the estimator read for a variant measured on its own (SD 3.5 Large, FLUX.2 dev)."""
        if not variant:
            return self
        chosen = self.variant(variant)
        return replace(
            self,
            configs=self.component_configs(variant),
            component_classes=self.component_class_names(variant),
            denoiser_tflops=chosen.denoiser_tflops or self.denoiser_tflops,
            denoiser_attention_tflops=chosen.denoiser_attention_tflops or self.denoiser_attention_tflops,
            text_encoder_tflops=chosen.text_encoder_tflops or self.text_encoder_tflops,
        )

    def component_class_names(self, variant: str = "") -> dict[str, str]:
        """Component name -> ``library.Class`` of ``variant`` (default: the family's)."""
        return {**self.component_classes, **(self.variant(variant).component_classes if variant else {})}

    def scheduler_config(self, variant: str = "") -> dict[str, Any]:
        """The scheduler config of ``variant`` (default: the family's): the variant's own where it has one."""
        return dict(self.variant(variant).scheduler or self.scheduler) if variant else dict(self.scheduler)

    def variant(self, name: str = "") -> Variant:
        """The variant ``name`` (default: the first); KeyError when the family has none by that name."""
        if not self.variants:
            return Variant(self.name, self.name, self.title)
        if not name:
            return self.variants[0]
        for found in self.variants:
            if found.name == name:
                return found
        raise KeyError(name)

    def variant_of_name(self, model: str) -> Variant:
        """The variant a model's name says: a variant's own name, else the first whose ``name_pattern``
        matches the (lower-cased) folder, file or hub name, else the default."""
        import re

        for found in self.variants:
            if found.name == model:
                return found
        lowered = model.lower()
        return next((v for v in self.variants if v.name_pattern and re.search(v.name_pattern, lowered)), self.variant())

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The component names of the text encoders (``text_encoder``, ``text_encoder_2`` …), in order."""
        return tuple(te.name for te in self.text_encoders)

    @property
    def trainable_text_encoder_names(self) -> tuple[str, ...]:
        """The text encoders ``train_text_encoder`` trains (CLIP-L for FLUX.1; never T5)."""
        return tuple(te.name for te in self.text_encoders if te.trainable)

    @property
    def tokenizer_names(self) -> tuple[str, ...]:
        """The component names of the tokenizers, in the text encoders' order."""
        return tuple(te.tokenizer for te in self.text_encoders)

    def max_tokens(self, encoder: str, variant: str = "") -> int:
        """The token limit of text encoder ``encoder`` in ``variant`` (default: the family's)."""
        limit = next(te.max_tokens for te in self.text_encoders if te.name == encoder)
        return int(self.variant(variant).max_tokens.get(encoder, limit))

    @property
    def text_tokens(self) -> int:
        """The text sequence length the denoiser cross-attends to."""
        return max(te.max_tokens for te in self.text_encoders)

    def check_method(self, method: str) -> None:
        """UserError when the family does not train with ``method``."""
        if method not in self.methods:
            from core.errors import UserError

            raise UserError(f"the {self.name} family does not train with {method}; use one of {', '.join(self.methods)}")

    def lora_targets_of(self, component: str, targets: str) -> tuple[str, ...]:
        """The module names the ``lora_targets`` setting ``targets`` adapts in ``component`` (the denoiser or a text encoder)."""
        kind = "denoiser" if component == self.denoiser else "text_encoder"
        return self.lora_targets[kind][targets]

    def base_model_version(self, v_prediction: bool) -> str:
        """``ss_base_model_version`` as sd-scripts writes it."""
        return self.kohya_base_version + (self.kohya_v_suffix if v_prediction else "")

    def architecture(self, v_prediction: bool) -> str:
        """``modelspec.architecture`` without the adapter suffix."""
        table = self.modelspec_architectures
        return table["v_prediction"] if v_prediction and "v_prediction" in table else table["epsilon"]
