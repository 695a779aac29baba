"""The SD 3.5 runtime: three text encoders, pooled projections, the MMDiT, SAI files and fused-qkv LoRAs (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import lora_files, t5
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit.runtime import FlowRuntime, split_tokens
from core.families.keymaps import split_suffix
from core.families.protocol import AdapterWeights, FamilyRuntime, LoadedModel, LoraFiles, ModelSource, SamplePromptLike
from core.families.sd35 import SPEC, TEXT_SEQUENCE, layout, lora, single_file, tiny
from core.families.sd_unet.layout import vae_to_original
from core.families.sd_unet.runtime import TEXT_MODULES
from core.families.wrappers import unwrap

#: sd-scripts' model type of each variant (its ``ss_base_model_version`` and the ``modelspec.architecture`` suffix).
SD_SCRIPTS_TYPES = {"sd35-medium": "5-medium", "sd35-large": "5-large", "sd35-large-turbo": "5-large"}


class SD35Runtime(FlowRuntime):
    """SD 3.5 Medium/Large: CLIP-L + CLIP-G + T5-XXL, rectified flow with shift 3, an MMDiT."""

    # ---- loading
    def load(self, source: ModelSource, dtypes: Mapping[str, Any] | None = None) -> LoadedModel:
        """A diffusers folder or hub id through the flow base; an SAI single file by its prefixes (fp8 upcast, split files for the parts it lacks)."""
        path = Path(source.path).expanduser()
        if not path.is_file():
            return super().load(source, dtypes)
        parts = single_file.load(path, source, self.spec, dtypes)
        return LoadedModel(
            family=self.spec.name,
            denoiser=parts[self.spec.denoiser],
            vae=parts["vae"],
            text_encoders=[parts[n] for n in self.spec.text_encoder_names],
            tokenizers=[parts[n] for n in self.spec.tokenizer_names],
            scheduler=parts["scheduler"],
            source=source,
            variant=self.variant_of(dict(parts[self.spec.denoiser].config)),
        )

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """An SAI MMDiT file (``model.diffusion_model.``, ComfyUI's bare keys too; fp8 upcast) into a copy of ``like``."""
        return single_file.denoiser_into(path, like, dtype)

    def variant_of(self, denoiser_config: Mapping[str, Any]) -> str:
        """``sd35-medium`` (an MMDiT-X: dual attention layers) or ``sd35-large`` (Turbo has Large's weights' shape)."""
        return "sd35-medium" if denoiser_config.get("dual_attention_layers") else "sd35-large"

    # ---- text
    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """SD3's conditioning: CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's
        width, followed on the token axis by T5's states (its padding visible, as SD3 was trained);
        pooled = both CLIPs' projected outputs side by side."""
        import torch
        import torch.nn.functional as F

        from core.families.clip import device_of

        ids, masks = split_tokens(self.spec, token_ids)
        by_name = dict(zip(self.spec.text_encoder_names, encoders))
        clip_l, clip_g, t5_name = self.spec.text_encoder_names
        states, pooled = [], []
        for name in (clip_l, clip_g):
            out = by_name[name](ids[name].to(device_of(by_name[name])), output_hidden_states=True, return_dict=True)
            states.append(out.hidden_states[-max(self.spec.native_clip_layer, clip_skip)])
            pooled.append(out.text_embeds)
        t5_states = t5.encode(by_name[t5_name], ids[t5_name], masks.get(t5_name))
        device = t5_states.device
        clip = torch.cat([s.to(device) for s in states], dim=-1)
        clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip.to(t5_states.dtype), t5_states], dim=-2)
        return TextEmbeddings(hidden, torch.cat([p.to(device) for p in pooled], dim=-1))

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The MMDiT's pooled projections (both CLIPs' pooled vectors); SD3 has no embedded guidance."""
        pooled = embeddings.pooled_prompt_embeds
        if pooled is None:
            raise ValueError("SD 3.5's conditioning needs the pooled text vector; encode the captions with this family's encode_text")
        return {"pooled_projections": pooled.to(device)}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """The MMDiT's velocity prediction for 16-channel latents (it patchifies them itself)."""
        if extra is None:
            raise ValueError("SD 3.5's MMDiT needs the pooled text vector; pass extra_conditioning's output")
        pooled = extra["pooled_projections"].to(hidden.dtype)
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]

    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """StableDiffusion3Pipeline's call: prompts, size, steps, guidance, T5's length, and kohya's
        ``clip_skip`` as layers beyond SD3's penultimate one."""
        skipped = clip_skip - self.spec.native_clip_layer
        return {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative or None,
            "width": prompt.width,
            "height": prompt.height,
            "num_inference_steps": prompt.steps,
            "guidance_scale": prompt.scale,
            "max_sequence_length": self.spec.max_tokens(self.spec.text_encoder_names[-1]),
            "clip_skip": skipped if skipped > 0 else None,
        }

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """StableDiffusion3Pipeline encodes prompt and negative prompt in one call (classifier-free above 1), at the call's clip skip."""
        keywords = {
            "prompt": arguments["prompt"],
            "prompt_2": None,
            "prompt_3": None,
            "negative_prompt": arguments["negative_prompt"],
            "do_classifier_free_guidance": arguments["guidance_scale"] > 1,
            "clip_skip": arguments["clip_skip"],
            "max_sequence_length": arguments["max_sequence_length"],
        }
        return [(keywords, ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"))]

    # ---- files other tools read
    def _working_base(self, component: str, name: str, denoiser_config: Mapping[str, Any], kind: str) -> str:
        if component == self.spec.denoiser:
            return lora.working_base(name, kind, int(denoiser_config["num_layers"]))
        prefix = next(te.kohya_prefix for te in self.spec.text_encoders if te.name == component)
        return f"{prefix}_{TEXT_MODULES.to_theirs(name).replace('.', '_')}"

    def _namer(self, adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> Callable[[str, str], str]:
        """The working-layout key base of each module of ``adapter`` (:mod:`core.families.sd35.lora`)."""
        kind = lora_files.adapter_kind(adapter.config)

        def base(component: str, name: str) -> str:
            return self._working_base(component, name, denoiser_config, kind)

        return base

    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """kohya: fused q/k/v under SAI names (sd-scripts, ComfyUI; LoHa/LoKr under diffusers names); diffusers: ``<component>.<peft key>``."""
        kohya: dict[str, Any] = {}
        for adapter in adapters:
            kohya.update(lora.fuse(lora_files.kohya_state_dict([adapter], self._namer(adapter, denoiser_config))))
        return LoraFiles(kohya=kohya, diffusers=lora_files.diffusers_state_dict(adapters), diffusers_metadata=lora_files.diffusers_metadata(adapters))

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A kohya (fused: ours or sd-scripts' own rank) or diffusers LoRA file's tensors for one adapter, under peft's keys."""
        kind = lora_files.adapter_kind(adapter.config)
        base = self._namer(adapter, denoiser_config)
        ranks = {base(adapter.component, split[0]): lora_files.rank_for(adapter.config, split[0]) for key in adapter.state if (split := split_suffix(key, kind)) is not None}
        return lora_files.from_file(lora.split(tensors, ranks), adapter, base)

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """sd-scripts' SD3 values: ``ss_base_model_version`` its model type (``5-medium``, ``5-large``), the architecture ``stable-diffusion-3-<type>``."""
        model_type = SD_SCRIPTS_TYPES[self.spec.variant(variant).name]
        return {
            "ss_base_model_version": model_type,
            "ss_v2": str(self.spec.kohya_v2),
            "modelspec.architecture": f"stable-diffusion-3-{model_type}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
        }

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The pipeline as one SAI file: the MMDiT, the VAE and the three text encoders (ComfyUI's all-in-one layout)."""
        transformer = unwrap(pipe.transformer)
        out = layout.transformer_to_original(transformer.state_dict(), int(transformer.config.num_layers))
        out.update(vae_to_original(pipe.vae.state_dict(), dict(pipe.vae.config)))
        for te in self.spec.text_encoders:
            out.update(layout.text_encoder_to_original(unwrap(getattr(pipe, te.name)).state_dict(), te.original_prefix))
        return out

    # ---- tiny and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """The tiny SD 3.5 (an MMDiT-X with a dual-attention block, tiny CLIP-L/G and T5) with its tokenizers."""
        return tiny.build(self.pipeline_class(), self.spec, out_dir)

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


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = SD35Runtime(SPEC)
