"""The typed contract between the trainer and a family runtime: every hook ``core/train/`` may call.

A family's ``runtime.py`` defines ``RUNTIME``, an object satisfying :class:`FamilyRuntime`
(``core.families.runtime(name)`` returns it typed so; this module is ``protocol`` because ``runtime`` is that function). The trainer reaches a model only
through these hooks and the small containers below, never through a pipeline's attributes
(``pipe.unet``, ``unet_lora_layers=``, ``AttnProcessor2_0``, ``text_model.``): a transformer
family adds a package that implements them, not a branch in the trainer. The SD-UNet families
implement them in ``core/families/sd_unet/runtime.py``; docs/adding-a-family.md walks through
them one by one.

Torch types are named for mypy only (``TYPE_CHECKING``): importing this module costs no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.families.embeddings import TextEmbeddings
from core.families.spec import FamilySpec

if TYPE_CHECKING:
    from torch import Generator, Tensor
    from torch import device as Device
    from torch import dtype as DType
    from torch.nn import Module


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are: the whole model, or a denoiser-only file plus separate parts.

    ``path`` is a diffusers folder, a hub id or one single file holding every part. With split
    files (what FLUX and SD3.5 users download) ``denoiser`` is the denoiser-only file and
    ``vae`` / ``text_encoders`` (component name -> file or folder) replace those parts of
    ``path``, which then only has to describe the architecture (a diffusers folder or hub id).
    ``config`` is a diffusers folder describing a single file's architecture (offline loading).
    """

    path: str
    denoiser: str = ""
    vae: str = ""
    text_encoders: Mapping[str, str] = field(default_factory=dict)
    config: str = ""


@dataclass
class LoadedModel:
    """The modules of a loaded model, by role, as the trainer uses them."""

    family: str
    denoiser: Module
    vae: Module
    text_encoders: list[Module]
    tokenizers: list[Any]
    scheduler: Any
    source: ModelSource
    #: The family variant the weights are (FLUX.1-dev or -schnell, from the denoiser's config); "" = the family's default.
    variant: str = ""


@dataclass(frozen=True)
class AdapterWeights:
    """One trained component's adapter: its name (the denoiser's or a text encoder's), peft's
    state dict (keys without the adapter name) and peft's config of it."""

    component: str
    state: Mapping[str, Tensor]
    config: Any


@dataclass(frozen=True)
class LoraFiles:
    """A trained LoRA in the two layouts other tools load: kohya/LyCORIS keys, and diffusers'
    (``<component>.<peft key>``, with the safetensors metadata ``load_lora_weights`` reads alpha from)."""

    kohya: dict[str, Tensor]
    diffusers: dict[str, Tensor]
    diffusers_metadata: dict[str, str]


#: The keywords of a pipeline call that carry prompt text; :meth:`FamilyRuntime.sample_text`'s embeddings replace them.
PROMPT_KEYWORDS = ("prompt", "negative_prompt", "prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3")


class SamplePromptLike(Protocol):
    """One sample prompt as the sampling hook reads it (``core.sample_prompts.SamplePrompt`` is one)."""

    @property
    def prompt(self) -> str: ...
    @property
    def negative(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def scale(self) -> float: ...


@runtime_checkable
class Objective(Protocol):
    """What noise is added, what the denoiser predicts and how the loss weighs (``core/families/objectives.py``)."""

    def timesteps(self, batch_size: int, generator: Generator, device: Device, latent_size: tuple[int, int] | None = None) -> Tensor:
        """The denoiser timesteps of a batch whose latents are ``latent_size`` (height, width): FLUX.1's shift depends on it."""

    def noisy(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The latents noised to ``timesteps``."""

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the denoiser is trained to predict."""

    def loss_weights(self, timesteps: Tensor, settings: Mapping[str, Any]) -> Tensor | None:
        """Per-sample loss weights, or None."""


@runtime_checkable
class FamilyRuntime(Protocol):
    """Every hook the trainer calls on a family (heavy imports happen inside the implementations)."""

    spec: FamilySpec

    # ---- loading
    def load(self, source: ModelSource, dtypes: Mapping[str, DType] | None = None) -> LoadedModel:
        """The model's modules from a diffusers folder, hub id, single file, or split files."""

    def prediction_type(self, scheduler_config: Mapping[str, Any], denoiser_config: Mapping[str, Any]) -> str:
        """The objective name a loaded model trains with when the run does not set one."""

    def noise_scheduler(self, scheduler_config: Mapping[str, Any], prediction_type: str) -> Any:
        """The training noise schedule."""

    def inference_scheduler(self, scheduler: Any, prediction_type: str) -> Any:
        """The sampling scheduler of the loaded model, set to ``prediction_type``."""

    def set_attention(self, denoiser: Module, attention: str) -> None:
        """Use the attention implementation ``attention`` (``sdpa`` | ``eager``) in the denoiser."""

    def enable_gradient_checkpointing(self, denoiser: Module) -> None:
        """Recompute the denoiser's activations in backward."""

    def add_adapter(self, denoiser: Module, config: Any) -> None:
        """Add peft adapter ``config`` to the denoiser."""

    def lora_target_modules(self, denoiser: Module, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """The denoiser's module names peft adapts for the ``lora_targets`` names ``targets`` (suffixes, as
        ``spec.lora_targets`` lists them): the suffixes themselves, or full names where the run
        selects blocks (FLUX.1's ``train_double_block_indices``); UserError for a selection the family cannot make."""

    supports_channels_last: bool

    # ---- objective
    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> Objective:
        """The training objective; UserError for settings the family's objective cannot honour."""

    # ---- latents
    def encode_latents(self, vae: Module, pixels: Tensor, generator: Generator | None = None) -> Tensor:
        """Normalised fp32 latents of ``pixels`` (a sample of the posterior with ``generator``, its mode without)."""

    def decode_latents(self, vae: Module, latents: Tensor) -> Tensor:
        """Pixels of normalised latents (the inverse of :meth:`encode_latents`' normalisation)."""

    # ---- text
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Tensor]:
        """Token tensors ``[batch, …]`` per tokenizer at the variant's token limit (``spec.max_tokens``): the ids,
        and after them the padding mask where the family encodes with one (T5). The trainer only
        slices their rows and hands them back to :meth:`encode_text`."""

    def encode_text(self, encoders: Sequence[Module], token_ids: Sequence[Tensor], clip_skip: int) -> TextEmbeddings:
        """The denoiser's text conditioning (named tensors a cache can store) from :meth:`tokenize`'s tensors."""

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Device, settings: Mapping[str, Any]) -> dict[str, Tensor] | None:
        """Per-batch conditioning besides the text states (SDXL's size/crop ids; FLUX.1's pooled vector,
        text mask and ``settings.guidance_scale``)."""

    def predict(self, denoiser: Module, noisy: Tensor, timesteps: Tensor, hidden: Tensor, extra: Mapping[str, Tensor] | None) -> Tensor:
        """The denoiser's forward: its prediction for the noisy latents."""

    # ---- sampling
    def pipeline(self, modules: Mapping[str, Any]) -> Any:
        """An inference pipeline of ``modules`` (component name -> module, tokenizers and scheduler included)."""

    def sample_defaults(self, variant: str = "") -> tuple[int, float]:
        """``(steps, guidance scale)`` a sample prompt without ``--s`` / ``--l`` gets (a distilled variant: few steps, 0 = no CFG)."""

    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """Every keyword of the pipeline call for one sample prompt (text, size, steps, guidance …)."""

    def sample_text(self, pipe: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The text of one sample's pipeline call (:meth:`sample_arguments`' ``arguments``) encoded now by the
        pipeline's encoders, as the keywords that replace its :data:`PROMPT_KEYWORDS` (``prompt_embeds``,
        ``pooled_prompt_embeds``, masks, the negative ones where the call guides with a negative prompt;
        tensors, or lists of them where the pipeline takes unpadded states, as Z-Image's):
        what the samples render from once the encoders are gone (``spec.samples_from_embeddings``)."""

    # ---- files other tools read
    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """The trained adapters in kohya/LyCORIS and diffusers layouts."""

    def lora_from_file(self, tensors: Mapping[str, Tensor], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Tensor]:
        """A LoRA file's tensors for one adapter under peft's keys (kohya names converted, alpha folded in)."""

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """The family's ``ss_*`` and ``modelspec.*`` values (of ``variant``: FLUX.1-dev and -schnell differ)."""

    def to_original(self, pipe: Any) -> dict[str, Tensor]:
        """A pipeline's weights in the family's original single-file layout."""

    def load_pipeline(self, model_dir: str) -> Any:
        """A diffusers folder of this family as its pipeline (for conversion)."""

    # ---- tiny model and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """Write the tiny model (real architecture at toy size, seeded) with its tokenizers as a diffusers folder."""

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: DType, device: Device) -> dict[str, Tensor]:
        """Keyword inputs of one denoiser forward at ``resolution`` (for the measurement tools)."""
