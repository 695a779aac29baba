"""The FLUX.1 runtime (dev, schnell): CLIP-L pooled + T5-XXL, packed latents, embedded guidance, BFL files (imported only by the trainer).

Chroma's runtime extends this one (same blocks, same BFL layout). The BFL layout tables are
``flux/layout.py``; the kohya LoRA layout (``lora_unet_double_blocks_N_img_attn_qkv``, q/k/v
fused as sd-scripts writes them) is ``flux/kohya.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.families import loading, t5
from core.families.detect import hub_reachable
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit import latents, single_file
from core.families.flow_mmdit.blocks import parse_indices
from core.families.flow_mmdit.runtime import FlowRuntime, split_tokens
from core.families.flux import SPEC, kohya, layout
from core.families.objectives import FlowObjective
from core.families.protocol import AdapterWeights, FamilyRuntime, LoraFiles, SamplePromptLike
from core.families.wrappers import unwrap

#: The hub models a FLUX.1 single file's other parts come from when no diffusers folder is beside it.
HUB_MODELS = {"flux-dev": "black-forest-labs/FLUX.1-dev", "flux-schnell": "black-forest-labs/FLUX.1-schnell"}


class FluxRuntime(FlowRuntime):
    """FLUX.1: the shared flow hooks plus its text encoding, packing, guidance, files and tiny model."""

    def global_modules(self, config: Mapping[str, Any]) -> dict[str, str]:
        """The BFL linear modules outside the blocks -> diffusers' (Chroma has its own)."""
        return dict(layout.FLUX_GLOBAL)

    def extra_names(self, config: Mapping[str, Any]) -> dict[str, str]:
        """BFL names of weights outside the linear-module and norm tables -> diffusers' (none for FLUX.1)."""
        return {}

    # ---- loading
    def variant_of(self, denoiser_config: Mapping[str, Any]) -> str:
        """``flux-dev`` when the transformer embeds guidance, ``flux-schnell`` when it does not."""
        return "flux-dev" if denoiser_config.get("guidance_embeds", True) else "flux-schnell"

    def bfl_to_diffusers(self, state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        """A BFL transformer state dict (a checkpoint prefix allowed) in diffusers' names."""
        return layout.to_diffusers(layout.strip_prefix(state), config, self.global_modules(config), self.extra_names(config))

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A BFL transformer file (bf16, fp16, or ComfyUI's fp8 and scaled fp8, dequantized to ``dtype`` or fp32) into a copy of ``like``."""
        return single_file.read_denoiser(self.spec, path, like, dtype, lambda state: self.bfl_to_diffusers(state, dict(like.config)))

    def single_file_parts(self, path: Path, config: str, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
        """A BFL transformer-only file: the other parts from the diffusers folder beside it (or given, or the hub)."""
        folder = loading.config_for_single_file(path, config)
        if folder is not None:
            parts = loading.load_folder(Path(folder), self.spec, dtypes, skip=(self.spec.denoiser,))
            transformer = self._empty_denoiser(Path(folder) / self.spec.denoiser)
        elif hub_reachable():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
            hub_id = HUB_MODELS["flux-dev" if any("guidance_in." in k for k in keys) else "flux-schnell"]
            parts, _ = loading.load_hub(hub_id, dtypes, self.pipeline_extras)
            transformer = parts[self.spec.denoiser]
        else:
            raise loading.ModelLoadError(
                f"The {self.spec.title} file {path} holds only the transformer and the hub is offline here; put a diffusers folder of the model "
                f"(its VAE, text encoders and configs) next to it named '{path.stem}', or set model.config to one."
            )
        get = (dtypes or {}).get
        parts[self.spec.denoiser] = self.denoiser_from_file(path, transformer, get(self.spec.denoiser, get("default")))
        return parts

    def _empty_denoiser(self, folder: Path) -> Any:
        """The transformer of a config folder, built from its config (its weights come from the single file)."""
        import diffusers

        cls = getattr(diffusers, self.spec.component_classes[self.spec.denoiser].rpartition(".")[2])
        return cls.from_config(cls.load_config(str(folder)))

    # ---- objective
    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:
        """The flow objective; UserError for ``clip_skip`` (FLUX.1 reads CLIP-L's pooled output only)."""
        if int(settings.get("clip_skip", 1) or 1) != 1:
            raise UserError(f"settings.clip_skip picks a CLIP layer, and {self.spec.title} reads only CLIP-L's pooled output; set clip_skip = 1")
        return super().objective(prediction_type, noise_scheduler, settings)

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """Full module names: the targets inside the selected double and single blocks (sd-scripts'
        ``train_double_block_indices`` / ``train_single_block_indices``), and for ``all`` the
        embedders and final layer too. UserError when the selection adapts nothing."""
        config = unwrap(denoiser).config
        counts = {"transformer_blocks": int(config.num_layers), "single_transformer_blocks": int(config.num_single_layers)}
        chosen = {lists: parse_indices(str(settings.get(key, "") or ""), counts[lists], key) for key, lists in self.spec.block_settings.items()}
        outside = str(settings.get("lora_targets", "attn")) == "all"
        names = []
        for name, module in unwrap(denoiser).named_modules():
            if not any(name == t or name.endswith("." + t) for t in targets) or not hasattr(module, "weight") or module.weight.ndim != 2:
                continue
            head, _, rest = name.partition(".")
            if head in chosen:
                if int(rest.split(".", 1)[0]) in chosen[head]:
                    names.append(name)
            elif outside:
                names.append(name)
        if not names:
            raise UserError("settings.train_double_block_indices and train_single_block_indices select no block to train; select at least one block")
        return names

    # ---- text
    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """T5-XXL's states (the padding visible, as FLUX.1 was trained) and CLIP-L's pooled output."""
        ids, masks = split_tokens(self.spec, token_ids)
        by_name = dict(zip(self.spec.text_encoder_names, encoders))
        clip_name, t5_name = self.spec.text_encoder_names
        clip_encoder = by_name[clip_name]
        pooled = clip_encoder(ids[clip_name].to(next(clip_encoder.parameters()).device), return_dict=True).pooler_output
        hidden = t5.encode(by_name[t5_name], ids[t5_name], masks.get(t5_name))
        return TextEmbeddings(hidden, pooled.to(hidden.device))

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The pooled CLIP-L vector and ``settings.guidance_scale`` (used where the transformer embeds guidance)."""
        import torch

        pooled = embeddings.pooled_prompt_embeds
        if pooled is None:
            raise ValueError("FLUX.1's conditioning needs CLIP-L's pooled vector; encode the captions with this family's encode_text")
        guidance = float(settings.get("guidance_scale", 1.0))
        return {"pooled": pooled.to(device), "guidance": torch.full((pooled.shape[0],), guidance, device=device, dtype=torch.float32)}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """Pack the latents into 2×2 tokens, run the transformer with image/text ids (and guidance on dev), unpack."""
        if extra is None:
            raise ValueError("FLUX.1's transformer needs the pooled text vector; pass extra_conditioning's output")
        height, width = int(noisy.shape[-2]), int(noisy.shape[-1])
        config = unwrap(denoiser).config
        tokens = latents.pack(noisy)
        guidance = extra["guidance"].to(tokens.dtype) if config.guidance_embeds else None
        out = denoiser(
            hidden_states=tokens,
            encoder_hidden_states=hidden,
            pooled_projections=extra["pooled"].to(tokens.dtype),
            timestep=(timesteps.float() / 1000).to(tokens.dtype),
            img_ids=latents.image_ids(height, width, tokens.device, tokens.dtype),
            txt_ids=latents.text_ids(hidden.shape[1], tokens.device, tokens.dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return latents.unpack(out, height, width)

    # ---- sampling
    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """FluxPipeline's call: the prompt, size, steps, embedded guidance (dev) and the variant's T5 length."""
        variant = self.variant_of(dict(pipe.transformer.config))
        return {
            "prompt": prompt.prompt,
            "width": prompt.width,
            "height": prompt.height,
            "num_inference_steps": prompt.steps,
            "guidance_scale": prompt.scale,
            "max_sequence_length": self.spec.max_tokens(self.spec.text_encoder_names[-1], variant),
        }

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """FluxPipeline encodes the prompt once (CLIP-L pooled, T5 states; its text ids are zeros it remakes)."""
        keywords = {"prompt": arguments["prompt"], "prompt_2": None, "max_sequence_length": arguments["max_sequence_length"]}
        return [(keywords, ("prompt_embeds", "pooled_prompt_embeds", None))]

    # ---- files other tools read
    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """The kohya/ComfyUI file (fused BFL names; LoHa/LoKr/DoRA under diffusers names) and the diffusers file."""
        from core.families import lora_files

        return LoraFiles(
            kohya=kohya.kohya_state_dict(adapters, denoiser_config, self.spec, self.global_modules(denoiser_config)),
            diffusers=lora_files.diffusers_state_dict(adapters),
            diffusers_metadata=lora_files.diffusers_metadata(adapters),
        )

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A kohya (fused or not) or diffusers LoRA file's tensors for one adapter under peft's keys."""
        return kohya.from_file(tensors, adapter, denoiser_config, self.spec, self.global_modules(denoiser_config))

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """``ss_base_model_version`` and ``modelspec.*`` as sd-scripts writes them for FLUX.1 (architecture per variant)."""
        name = self.spec.variant(variant).name
        return {
            "ss_base_model_version": self.spec.kohya_base_version,
            "ss_v2": str(self.spec.kohya_v2),
            "modelspec.architecture": f"{self.spec.modelspec_architectures.get(name, self.spec.modelspec_architectures['epsilon'])}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
        }

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The transformer in the BFL layout (what ``flux1-dev.safetensors`` holds and ComfyUI loads)."""
        transformer = unwrap(pipe.transformer)
        config = dict(transformer.config)
        return layout.to_original(transformer.state_dict(), config, self.global_modules(config), self.extra_names(config))

    # ---- tiny model and measurement
    def tiny_transformer(self, text_width: int, pooled_width: int) -> Any:
        """A seeded FLUX.1 transformer at toy size (1 double, 2 single blocks, 2 heads of 16)."""
        import torch
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(1357)
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=self.spec.latent_channels * 4,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_width,
            pooled_projection_dim=pooled_width,
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        )

    def tiny_parts(self, out_dir: Path) -> dict[str, Any]:
        """The tiny model's modules and tokenizers by component name."""
        import torch
        from transformers import CLIPTextModel, CLIPTokenizer, T5TokenizerFast

        from core.families.flow_mmdit import tiny as flow_tiny
        from core.families.sd_unet import tiny as sd_tiny

        torch.manual_seed(sd_tiny.SEED)
        clip_encoder = CLIPTextModel(sd_tiny.text_config(32, "quick_gelu"))
        t5_encoder = t5.tiny_encoder(sd_tiny.WORDS)
        vae = self.spec.configs["vae"]
        return {
            "transformer": self.tiny_transformer(t5.TINY_WIDTH, 32),
            "vae": flow_tiny.vae16(float(vae["scaling_factor"]), float(vae["shift_factor"])),
            "text_encoder": clip_encoder,
            "text_encoder_2": t5_encoder,
            "tokenizer": CLIPTokenizer.from_pretrained(sd_tiny.write_tokenizer(out_dir / "tokenizer")),
            "tokenizer_2": T5TokenizerFast.from_pretrained(t5.write_tokenizer(out_dir / "tokenizer_2", sd_tiny.WORDS, self.spec.max_tokens("text_encoder_2"))),
            "scheduler": flow_tiny.scheduler(self.spec.scheduler_config()),
        }

    def build_tiny(self, out_dir: Path) -> Path:
        """Write the tiny model (seeded, its locally built CLIP and T5 tokenizers included) as a diffusers folder."""
        self.pipeline_class()(**self.tiny_parts(out_dir), **self.pipeline_extras).save_pretrained(out_dir, safe_serialization=True)
        return out_dir

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """One transformer forward's inputs at ``resolution``: packed latents, T5 states at 512 tokens, pooled vector, ids, guidance."""
        import torch

        side = resolution // 8
        tokens = (side // 2) ** 2
        text = self.spec.text_tokens
        inputs = {
            "hidden_states": torch.randn(batch, tokens, int(denoiser_config["in_channels"]), dtype=dtype, device=device),
            "encoder_hidden_states": torch.randn(batch, text, int(denoiser_config["joint_attention_dim"]), dtype=dtype, device=device),
            "timestep": torch.full((batch,), 0.5, dtype=dtype, device=device),
            "img_ids": latents.image_ids(side, side, device, dtype),
            "txt_ids": latents.text_ids(text, device, dtype),
        }
        if "pooled_projection_dim" in denoiser_config:
            inputs["pooled_projections"] = torch.randn(batch, int(denoiser_config["pooled_projection_dim"]), dtype=dtype, device=device)
        if denoiser_config.get("guidance_embeds"):
            inputs["guidance"] = torch.full((batch,), 3.5, dtype=dtype, device=device)
        return inputs


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = FluxRuntime(SPEC)
