"""The FLUX.2 runtime: stacked hidden layers of Qwen3 (klein) or Mistral Small 3 (dev), the batch-normalised
2×2-patchified VAE latents, 4-axis position ids (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import llm_text
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit import single_file
from core.families.flow_mmdit.blocks import linear_targets, parse_indices
from core.families.flow_mmdit.objective import flow_objective
from core.families.flow_mmdit.runtime import FlowRuntime
from core.families.flux2 import DEV_PROMPT, KLEIN_PROMPT, SPEC, layout
from core.families.flux2 import lora as lora_layout
from core.families.flux2 import tiny as tiny_model
from core.families.lora_files import diffusers_metadata, diffusers_state_dict
from core.families.objectives import FlowObjective, check_objective_settings
from core.families.protocol import AdapterWeights, FamilyRuntime, LoraFiles, SamplePromptLike
from core.families.wrappers import unwrap

#: The denoiser sizes of the variants: (double blocks, single blocks) -> variant name.
VARIANT_SIZES = {(5, 20): "flux2-klein-4b", (8, 24): "flux2-klein-9b", (8, 48): "flux2-dev"}
#: Where the parts of a transformer-only file come from when no diffusers folder is beside it, per variant.
HUB_IDS = {"flux2-klein-4b": "black-forest-labs/FLUX.2-klein-base-4B", "flux2-klein-9b": "black-forest-labs/FLUX.2-klein-base-9B", "flux2-dev": "black-forest-labs/FLUX.2-dev"}
#: The latents are patchified by the VAE step already: one token per latent pixel.
PATCH = 1
#: musubi-tuner's ``flux2_shift`` (kohya-ss/musubi-tuner hv_train_network.py): σ logit-normal, then
#: shifted by exp(μ), μ linear in the image tokens from 256 (0.5) to 4096 (1.15).
TRAIN_SHIFT: dict[str, Any] = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


class Flux2Runtime(FlowRuntime):
    """FLUX.2: double- then single-stream blocks over 128-channel latent tokens and an LLM's stacked states."""

    def pipeline_class_of(self, text_encoder: Any) -> Any:
        """``Flux2Pipeline`` for dev's Mistral encoder, ``Flux2KleinPipeline`` for klein's Qwen3."""
        import diffusers

        return diffusers.Flux2Pipeline if _is_mistral(text_encoder) else diffusers.Flux2KleinPipeline

    def pipeline(self, modules: Mapping[str, Any]) -> Any:
        """The family pipeline of the text encoder in ``modules``; without one (freed after caching), of the transformer's variant."""
        import diffusers

        encoder = modules["text_encoder"]
        if encoder is not None:
            pipeline_class = self.pipeline_class_of(encoder)
        else:
            dev = self.variant_of(dict(unwrap(modules[self.spec.denoiser]).config)) == "flux2-dev"
            pipeline_class = diffusers.Flux2Pipeline if dev else diffusers.Flux2KleinPipeline
        pipe = pipeline_class(**modules)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load_pipeline(self, model_dir: str) -> Any:
        """A diffusers folder of a FLUX.2 model as its own pipeline class (klein or dev)."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(model_dir, local_files_only=True)

    def single_file_parts(self, path: Path, config: str, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
        """ComfyUI's transformer-only file (Black Forest Labs' layout): the VAE, text encoder and configs from the
        diffusers folder beside it, or the hub model of the file's size."""
        return single_file.denoiser_only_parts(self.spec, path, config, dtypes, HUB_IDS.get(self._file_variant(path), ""), self.denoiser_from_file)

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A transformer file in Black Forest Labs' layout (bf16, or fp8 upcast) into a copy of ``like``."""
        from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

        return single_file.read_denoiser(self.spec, path, like, dtype, convert_flux2_transformer_checkpoint_to_diffusers)

    @staticmethod
    def _file_variant(path: Path) -> str:
        """The variant of an original-layout file, from its block counts."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = single_file.strip_prefix(dict.fromkeys(handle.keys()))
        count = {head: 1 + max((int(k.split(".")[1]) for k in keys if k.startswith(head + ".")), default=-1) for head in ("double_blocks", "single_blocks")}
        return VARIANT_SIZES.get((count["double_blocks"], count["single_blocks"]), "")

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """The targets' Linear layers in the double and single blocks sd-scripts' ``train_double_block_indices`` /
        ``train_single_block_indices`` select, and for ``all`` the embedders and modulations too."""
        from core.errors import UserError

        plain = unwrap(denoiser)
        counts = {"transformer_blocks": int(plain.config.num_layers), "single_transformer_blocks": int(plain.config.num_single_layers)}
        chosen = {lists: parse_indices(str(settings.get(key, "") or ""), counts[lists], key) for key, lists in self.spec.block_settings.items()}
        names = linear_targets(plain, targets, chosen, str(settings.get("lora_targets", "attn")) == "all")
        if not names:
            raise UserError("settings.train_double_block_indices and train_single_block_indices select no block to train; select at least one block")
        return names

    def variant_of(self, denoiser_config: Mapping[str, Any]) -> str:
        """klein 4B, klein 9B or dev, from the transformer's block counts (another size: dev when it embeds guidance)."""
        size = (int(denoiser_config.get("num_layers", 0)), int(denoiser_config.get("num_single_layers", 0)))
        return VARIANT_SIZES.get(size, "flux2-dev" if denoiser_config.get("guidance_embeds") else self.spec.variant().name)

    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:
        """The flow objective with musubi-tuner's ``flux2_shift`` (``settings.flow_shift`` > 0 fixes the shift instead)."""
        check_objective_settings(self.spec, prediction_type, settings)
        return flow_objective({**dict(noise_scheduler.config), **TRAIN_SHIFT}, settings, PATCH)

    # ---- latents: 32 VAE channels, 2×2-patchified to 128, normalised by the VAE's batch-norm statistics
    def encode_latents(self, vae: Any, pixels: Any, generator: Any = None) -> Any:
        """fp32 latents ``[batch, 128, h/16, w/16]``: patchified, then ``(z - running_mean) / sqrt(running_var + eps)``."""
        import torch

        with torch.no_grad():
            posterior = vae.encode(pixels).latent_dist
            latents = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        patches = patchify(latents)
        mean, std = _bn_stats(vae, patches)
        return ((patches - mean) / std).float()

    def decode_latents(self, vae: Any, latents: Any) -> Any:
        """Pixels in ``[-1, 1]`` of latents normalised as :meth:`encode_latents` does."""
        import torch

        patches = latents.to(vae.dtype)
        mean, std = _bn_stats(vae, patches)
        with torch.no_grad():
            return vae.decode(unpatchify(patches * std + mean)).sample

    # ---- text
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Any]:
        """Each caption in its pipeline's chat template (klein: the user turn with thinking off; dev: its
        system prompt), padded to 512 tokens: the ids and the attention mask."""
        tokenizer = getattr(tokenizers[0], "tokenizer", tokenizers[0])  # dev's Pixtral processor holds the tokenizer
        prompt = DEV_PROMPT if "[INST]" in tokenizer.get_vocab() else KLEIN_PROMPT
        return list(llm_text.tokenize(tokenizer, prompt, captions))

    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """Three hidden layers of the encoder (klein 9/18/27, dev 10/20/30) side by side per token, ``[batch, 512, 3·width]``."""
        prompt = DEV_PROMPT if _is_mistral(encoders[0]) else KLEIN_PROMPT
        return llm_text.encode(encoders[0], prompt, token_ids[0], token_ids[1])

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The text tokens' position ids ``(0, 0, 0, l)`` and the embedded guidance dev trains with (``settings.guidance_scale``)."""
        import torch

        hidden = embeddings.prompt_embeds
        tokens = torch.arange(hidden.shape[1], device=device, dtype=torch.long)
        txt_ids = torch.zeros(hidden.shape[1], 4, device=device, dtype=torch.long)
        txt_ids[:, 3] = tokens
        guidance = torch.full((hidden.shape[0],), float(settings.get("guidance_scale", 1.0)), device=device)
        return {"txt_ids": txt_ids, "guidance": guidance}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """Latent pixels as tokens with ids ``(0, row, column, 0)``, the transformer at σ = timesteps / 1000, back to ``[B, 128, h, w]``."""
        import torch

        batch, channels, height, width = noisy.shape
        tokens = noisy.reshape(batch, channels, height * width).permute(0, 2, 1)
        extra = dict(extra or {})
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(height), torch.arange(width), torch.arange(1)).to(noisy.device)
        guided = bool(unwrap(denoiser).config.guidance_embeds)
        out = denoiser(
            hidden_states=tokens,
            encoder_hidden_states=hidden,
            timestep=(timesteps / 1000).to(tokens.dtype),
            img_ids=img_ids,
            txt_ids=extra["txt_ids"],
            guidance=extra["guidance"].to(tokens.dtype) if guided else None,
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1).reshape(batch, channels, height, width)

    # ---- sampling
    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """The pipeline's call: prompt, size, steps and guidance (klein: classifier-free above 1, against the empty
        prompt, as ``Flux2KleinPipeline`` guides: it takes no negative prompt, so ``--n`` has no effect; dev: embedded)."""
        return {"prompt": prompt.prompt, "width": prompt.width, "height": prompt.height, "num_inference_steps": prompt.steps, "guidance_scale": prompt.scale}

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """Both pipelines encode the prompt (their text ids are remade); klein's then the empty prompt where it guides
        (above 1, on a model not distilled), at each pipeline's own token limit and hidden layers."""
        calls: list[tuple[dict[str, Any], tuple[str | None, ...]]] = [({"prompt": arguments["prompt"]}, ("prompt_embeds", None))]
        if type(pipe).__name__ == "Flux2KleinPipeline" and arguments["guidance_scale"] > 1 and not pipe.config.is_distilled:
            calls.append(({"prompt": ""}, ("negative_prompt_embeds", None)))
        return calls

    # ---- files other tools read
    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """ComfyUI's layout (original module names, q/k/v fused) and diffusers' (``transformer.<peft key>``)."""
        return LoraFiles(
            kohya=lora_layout.comfy_state_dict(adapters, self.spec.denoiser),
            diffusers=diffusers_state_dict(adapters),
            diffusers_metadata=diffusers_metadata(adapters),
        )

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A ComfyUI-layout or diffusers LoRA file's tensors for one adapter, under peft's keys."""
        return lora_layout.from_comfy(tensors, adapter)

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The transformer in Black Forest Labs' layout (ComfyUI's ``diffusion_models`` file; the VAE and text encoder are separate files)."""
        return layout.to_original(unwrap(pipe.transformer).state_dict())

    # ---- tiny model and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """The tiny FLUX.2 klein (real classes at toy size, seeded) with its locally built Qwen2 tokenizer."""
        return tiny_model.build_klein(out_dir)

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """One transformer forward at ``resolution``: latent tokens, σ, 512 text states, 4-axis ids (and dev's guidance)."""
        import torch

        side = resolution // 16
        tokens = self.spec.text_tokens
        img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(side), torch.arange(side), torch.arange(1)).to(device)
        txt_ids = torch.zeros(tokens, 4, dtype=torch.long, device=device)
        txt_ids[:, 3] = torch.arange(tokens, device=device)
        inputs = {
            "hidden_states": torch.randn(batch, side * side, int(denoiser_config["in_channels"]), dtype=dtype, device=device),
            "encoder_hidden_states": torch.randn(batch, tokens, int(denoiser_config["joint_attention_dim"]), dtype=dtype, device=device),
            "timestep": torch.full((batch,), 0.5, dtype=dtype, device=device),
            "img_ids": img_ids,
            "txt_ids": txt_ids,
        }
        if denoiser_config.get("guidance_embeds"):
            inputs["guidance"] = torch.full((batch,), 1.0, dtype=dtype, device=device)
        return inputs


def patchify(latents: Any) -> Any:
    """``[B, C, H, W]`` -> ``[B, 4C, H/2, W/2]`` (each 2×2 patch's values as channels, the pipelines' ``_patchify_latents``)."""
    batch, channels, height, width = latents.shape
    grid = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return grid.reshape(batch, channels * 4, height // 2, width // 2)


def unpatchify(latents: Any) -> Any:
    """The inverse of :func:`patchify`."""
    batch, channels, height, width = latents.shape
    grid = latents.reshape(batch, channels // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return grid.reshape(batch, channels // 4, height * 2, width * 2)


def _bn_stats(vae: Any, like: Any) -> tuple[Any, Any]:
    """The VAE's batch-norm running mean and std over the patchified channels, broadcastable to ``like``."""
    import torch

    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def _is_mistral(text_encoder: Any) -> bool:
    return str(getattr(unwrap(text_encoder).config, "model_type", "")) == "mistral3"


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = Flux2Runtime(SPEC)
