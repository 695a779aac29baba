"""The SD 3.5 runtime: three text encoders, pooled projections, the MMDiT, SAI files and fused-qkv LoRAs (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import lora_files
from core.families.embeddings import TextEmbeddings
from core.families.objectives import FlowObjective, check_objective_settings
from core.families.protocol import AdapterWeights, FamilyRuntime, LoadedModel, LoraFiles, ModelSource
from core.families.sd35 import SPEC, TEXT_SEQUENCE, layout, lora, single_file, tiny
from core.families.sd_unet.layout import vae_to_original
from core.families.sd_unet.runtime import TEXT_MODULES, SDUNetRuntime
from core.families.spec import FamilySpec
from core.families.wrappers import unwrap

#: sd-scripts' model type of each variant (its ``ss_base_model_version`` and the ``modelspec.architecture`` suffix).
_SD_SCRIPTS_TYPES = {"sd35-medium": "5-medium", "sd35-large": "5-large", "sd35-large-turbo": "5-large"}


def variant_of(denoiser_config: Mapping[str, Any]) -> str:
    """``sd35-medium`` (an MMDiT-X: dual attention layers) or ``sd35-large`` from a transformer config."""
    return "sd35-medium" if denoiser_config.get("dual_attention_layers") else "sd35-large"


class SD35Runtime(SDUNetRuntime):
    """SD 3.5 Medium/Large: CLIP-L + CLIP-G + T5-XXL, rectified flow with shift 3, an MMDiT."""

    pipeline_extras: Mapping[str, Any] = {}
    load_extras: Mapping[str, Any] = {}
    supports_channels_last = False

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__(spec)
        self._variant = spec.variant().name

    # ---- loading
    def load(self, source: ModelSource, dtypes: Mapping[str, Any] | None = None) -> LoadedModel:
        """A diffusers folder or hub id as the SD families load it; an SAI single file by its prefixes (fp8 upcast), split files replacing parts."""
        path = Path(source.path).expanduser()
        if not path.is_file():
            loaded = super().load(source, dtypes)
        else:
            parts = single_file.load(path, source, self.spec, dtypes)
            loaded = LoadedModel(
                family=self.spec.name,
                denoiser=parts[self.spec.denoiser],
                vae=parts["vae"],
                text_encoders=[parts[n] for n in self.spec.text_encoder_names],
                tokenizers=[parts[n] for n in self.spec.tokenizer_names],
                scheduler=parts["scheduler"],
                source=source,
            )
        self._variant = variant_of(dict(loaded.denoiser.config))
        return loaded

    def prediction_type(self, scheduler_config: Mapping[str, Any], denoiser_config: Mapping[str, Any]) -> str:
        """Always ``flow``."""
        return "flow"

    def noise_scheduler(self, scheduler_config: Mapping[str, Any], prediction_type: str) -> Any:
        """The model's flow-matching Euler scheduler (shift 3.0 in SD 3.5's config)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))

    def inference_scheduler(self, scheduler: Any, prediction_type: str) -> Any:
        """The model's own scheduler, unchanged."""
        return type(scheduler).from_config(dict(scheduler.config))

    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:  # type: ignore[override]
        """Rectified flow with the scheduler's shift (3.0), σ logit-normal as diffusers' SD3 scripts draw it."""
        check_objective_settings(self.spec, prediction_type, settings)
        return FlowObjective(shift=float(noise_scheduler.config.get("shift", 3.0)), num_train_timesteps=int(noise_scheduler.config.num_train_timesteps))

    def set_attention(self, denoiser: Any, attention: str) -> None:
        """SD3's joint attention runs on torch's scaled dot-product attention either way (diffusers has no other)."""

    # ---- text
    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """SD3's conditioning: CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's
        width, followed on the token axis by T5's states; pooled = both CLIPs' projected outputs."""
        import torch
        import torch.nn.functional as F

        from core.families.clip import device_of

        states, pooled = [], []
        for encoder, ids in zip(encoders[:2], token_ids[:2]):
            out = encoder(ids.to(device_of(encoder)), output_hidden_states=True, return_dict=True)
            states.append(out.hidden_states[-max(self.spec.native_clip_layer, clip_skip)])
            pooled.append(out.text_embeds)
        t5 = encoders[2](token_ids[2].to(device_of(encoders[2])), return_dict=True).last_hidden_state
        device = t5.device
        clip = torch.cat([s.to(device) for s in states], dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip.to(t5.dtype), t5], dim=-2)
        return TextEmbeddings(hidden, torch.cat([p.to(device) for p in pooled], dim=-1))

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any) -> dict[str, Any] | None:
        """The MMDiT's pooled projections (both CLIPs' pooled vectors)."""
        pooled = embeddings.pooled_prompt_embeds
        if pooled is None:
            raise ValueError("SD 3.5's conditioning needs the pooled text vector; encode the captions with this family's encode_text")
        return {"pooled_projections": pooled}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """The MMDiT's velocity prediction."""
        pooled = (extra or {})["pooled_projections"]
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden, pooled_projections=pooled.to(hidden.dtype), return_dict=False)[0]

    def _sample_text(self, pipe: Any, prompt: str, negative: str, clip_skip: int) -> tuple[dict[str, Any], int | None]:
        """The prompts as text; kohya's ``clip_skip`` as layers beyond SD3's penultimate one."""
        skipped = clip_skip - self.spec.native_clip_layer
        return {"prompt": prompt, "negative_prompt": negative or None}, skipped if skipped > 0 else None

    def sample_defaults(self, variant: str = "") -> tuple[int, float]:
        """The loaded variant's sampling steps and guidance (Medium 40 / 4.5, Large 28 / 3.5)."""
        return super().sample_defaults(variant or self._variant)

    # ---- files other tools read
    def _working_base(self, component: str, name: str, denoiser_config: Mapping[str, Any], kind: str) -> str:
        if component == self.spec.denoiser:
            return lora.working_base(name, kind, int(denoiser_config["num_layers"]))
        prefix = next(te.kohya_prefix for te in self.spec.text_encoders if te.name == component)
        return f"{prefix}_{TEXT_MODULES.to_theirs(name).replace('.', '_')}"

    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """kohya: fused q/k/v under SAI names (sd-scripts, ComfyUI); diffusers: ``<component>.<peft key>``."""
        kohya: dict[str, Any] = {}
        for adapter in adapters:
            kind = lora_files.adapter_kind(adapter.config)
            working = lora_files.kohya_state_dict([adapter], lambda component, name, kind=kind: self._working_base(component, name, denoiser_config, kind))
            kohya.update(lora.fuse(working))
        return LoraFiles(kohya=kohya, diffusers=lora_files.diffusers_state_dict(adapters), diffusers_metadata=lora_files.diffusers_metadata(adapters))

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A kohya (fused, sd-scripts' or ours) or diffusers LoRA file's tensors for one adapter, under peft's keys."""
        kind = lora_files.adapter_kind(adapter.config)

        def base(component: str, name: str) -> str:
            return self._working_base(component, name, denoiser_config, kind)

        bases = {base(adapter.component, split[0]): lora_files.rank_for(adapter.config, split[0]) for key in adapter.state if (split := _module_of(key, kind)) is not None}
        return lora_files.from_file(lora.split(tensors, int(denoiser_config.get("num_layers", 0)), bases), adapter, base)

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora") -> dict[str, str]:
        """sd-scripts' SD3 values: ``ss_base_model_version`` its model type, ``modelspec.architecture`` ``stable-diffusion-3-<type>``."""
        model_type = _SD_SCRIPTS_TYPES[self._variant]
        return {
            "ss_base_model_version": model_type,
            "ss_v2": "False",
            "modelspec.architecture": f"stable-diffusion-3-{model_type}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
            "modelspec.prediction_type": "flow",
        }

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The pipeline as one SAI file: MMDiT, VAE and the three text encoders."""
        transformer = unwrap(pipe.transformer)
        out = layout.transformer_to_original(transformer.state_dict(), int(transformer.config.num_layers))
        out.update(vae_to_original(pipe.vae.state_dict(), dict(pipe.vae.config)))
        for te in self.spec.text_encoders:
            out.update(layout.text_encoder_to_original(unwrap(getattr(pipe, te.name)).state_dict(), te.original_prefix))
        return out

    # ---- tiny and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """The tiny SD 3.5 (an MMDiT-X with a dual-attention block, tiny CLIP-L/G and T5) with its tokenizers."""
        return tiny.build(self.pipeline_class(), out_dir)

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """One MMDiT forward's inputs at ``resolution``: 16-channel latents, 77 + 256 text tokens, pooled vectors."""
        import torch

        side = resolution // 8
        return {
            "hidden_states": torch.randn(batch, int(denoiser_config["in_channels"]), side, side, dtype=dtype, device=device),
            "timestep": torch.full((batch,), 500.0, device=device),
            "encoder_hidden_states": torch.randn(batch, TEXT_SEQUENCE, int(denoiser_config["joint_attention_dim"]), dtype=dtype, device=device),
            "pooled_projections": torch.randn(batch, int(denoiser_config["pooled_projection_dim"]), dtype=dtype, device=device),
        }


def _module_of(key: str, kind: str) -> tuple[str, str] | None:
    from core.families.keymaps import split_suffix

    return split_suffix(key, kind)


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = SD35Runtime(SPEC)
