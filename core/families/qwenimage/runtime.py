"""The Qwen-Image runtime: Qwen2.5-VL text states after the chat template, the one-frame Wan VAE, 2×2 packing (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.families import llm_text, lora_files
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit import single_file
from core.families.flow_mmdit.blocks import linear_targets, parse_indices
from core.families.flow_mmdit.latents import pack, unpack
from core.families.flow_mmdit.runtime import FlowRuntime
from core.families.protocol import AdapterWeights, FamilyRuntime, LoraFiles, SamplePromptLike
from core.families.qwenimage import PROMPT, SPEC
from core.families.qwenimage import tiny as tiny_model
from core.families.wrappers import unwrap

#: The text stream's output layers of a block: in the last block their results are dropped.
DEAD_TEXT_OUTPUTS = ("attn.to_add_out", "txt_mlp.")
#: Where the parts of a transformer-only file come from when no diffusers folder is beside it.
HUB_ID = "Qwen/Qwen-Image"


class QwenImageRuntime(FlowRuntime):
    """Qwen-Image: 60 MMDiT blocks over 2×2-packed 16-channel latents and Qwen2.5-VL-7B states.

    The objective is the base's: the model's scheduler config has ``use_dynamic_shifting``
    (base_shift 0.5 at 256 packed tokens … max_shift 0.9 at 8192), which is musubi-tuner's ``qwen_shift``.
    """

    # ---- loading
    def single_file_parts(self, path: Path, config: str, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
        """ComfyUI's transformer-only file: the VAE, text encoder and configs from the diffusers folder beside it (or the hub)."""
        return single_file.denoiser_only_parts(self.spec, path, config, dtypes, HUB_ID, self.denoiser_from_file)

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A transformer file in diffusers' names (ComfyUI's, bf16 or fp8 upcast; a checkpoint prefix allowed) into a copy of ``like``."""
        return single_file.read_denoiser(self.spec, path, like, dtype, dict)

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """The targets' Linear layers in the blocks ``train_double_block_indices`` selects (Qwen-Image's 60
        blocks are all double-stream), and for ``all`` the embedders and final layer too; not the last
        block's text-stream outputs, which reach nothing (the image tokens alone leave the last block,
        so their adapters would never train and DDP would wait for their gradients)."""
        from core.errors import UserError

        ((double, lists),) = self.spec.block_settings.items()  # single-stream selection is refused by settings.family_problem
        plain = unwrap(denoiser)
        chosen = {lists: parse_indices(str(settings.get(double, "") or ""), int(plain.config.num_layers), double)}
        last = f"transformer_blocks.{int(plain.config.num_layers) - 1}."
        names = [
            n
            for n in linear_targets(plain, targets, chosen, str(settings.get("lora_targets", "attn")) == "all")
            if not (n.startswith(last) and n.removeprefix(last).startswith(DEAD_TEXT_OUTPUTS))
        ]
        if not names:
            raise UserError(f"settings.{double} selects no block to train; select at least one block")
        return names

    # ---- latents: the VAE is a video VAE; images are one frame, normalised per channel
    def encode_latents(self, vae: Any, pixels: Any, generator: Any = None) -> Any:
        """fp32 latents ``(z - mean) / std`` per channel of the one-frame encoding, ``[batch, 16, h/8, w/8]``."""
        import torch

        with torch.no_grad():
            posterior = vae.encode(pixels.unsqueeze(2)).latent_dist
            latents = posterior.sample(generator=generator) if generator is not None else posterior.mode()
        mean, std = _channel_stats(vae, latents)
        return ((latents - mean) / std)[:, :, 0].float()

    def decode_latents(self, vae: Any, latents: Any) -> Any:
        """Pixels in ``[-1, 1]`` of latents normalised as :meth:`encode_latents` does."""
        import torch

        frames = latents.to(vae.dtype).unsqueeze(2)
        mean, std = _channel_stats(vae, frames)
        with torch.no_grad():
            return vae.decode(frames * std + mean).sample[:, :, 0]

    # ---- text: QwenImagePipeline's template, the prefix dropped, a mask over the caption tokens
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Any]:
        """The templated captions' ids and attention mask, padded to the prefix plus 1024 tokens."""
        return list(llm_text.tokenize(tokenizers[0], PROMPT, captions))

    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """The last hidden layer over each caption's own tokens (template prefix dropped), padded to the
        longest caption of the batch, with its mask (what ``QwenImagePipeline.encode_prompt`` returns)."""
        return llm_text.encode(encoders[0], PROMPT, token_ids[0], token_ids[1])

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The text tokens' mask (the transformer's ``encoder_hidden_states_mask``)."""
        mask = embeddings.extra.get("attention_mask")
        return {"encoder_hidden_states_mask": mask.to(device)} if mask is not None else None

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """2×2-pack the latents, run the transformer at σ = timesteps / 1000, unpack its velocity."""
        batch, _, height, width = noisy.shape
        packed = pack(noisy)
        mask = (extra or {}).get("encoder_hidden_states_mask")
        out = denoiser(
            hidden_states=packed,
            timestep=(timesteps / 1000).to(packed.dtype),
            encoder_hidden_states=hidden,
            encoder_hidden_states_mask=mask.to(hidden.device) if mask is not None else None,
            img_shapes=[[(1, height // 2, width // 2)]] * batch,
            return_dict=False,
        )[0]
        return unpack(out, height, width)

    # ---- sampling
    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """QwenImagePipeline's call: classifier-free guidance is ``true_cfg_scale`` with a negative prompt (" " when none is given)."""
        guided = prompt.scale > 1
        return {
            "prompt": prompt.prompt,
            "negative_prompt": (prompt.negative or " ") if guided else None,
            "true_cfg_scale": prompt.scale,
            "width": prompt.width,
            "height": prompt.height,
            "num_inference_steps": prompt.steps,
        }

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """QwenImagePipeline encodes the prompt, then the negative prompt where it guides (``true_cfg_scale`` above 1), each with its mask."""
        calls: list[tuple[dict[str, Any], tuple[str | None, ...]]] = [({"prompt": arguments["prompt"]}, ("prompt_embeds", "prompt_embeds_mask"))]
        if arguments["true_cfg_scale"] > 1 and arguments["negative_prompt"] is not None:
            calls.append(({"prompt": arguments["negative_prompt"]}, ("negative_prompt_embeds", "negative_prompt_embeds_mask")))
        return calls

    # ---- files other tools read
    def kohya_base(self, component: str, name: str) -> str:
        """ComfyUI's key of one adapted module: ``diffusion_model.<module>`` (its Qwen-Image names are diffusers')."""
        if component != self.spec.denoiser:
            raise ValueError(f"{self.spec.title} LoRA files hold only the transformer, not {component}")
        return f"diffusion_model.{name}"

    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """ComfyUI's layout (``diffusion_model.<module>.lora_down/lora_up/alpha``) and diffusers' (``transformer.<peft key>``)."""
        return LoraFiles(
            kohya=lora_files.kohya_state_dict(adapters, self.kohya_base),
            diffusers=lora_files.diffusers_state_dict(adapters),
            diffusers_metadata=lora_files.diffusers_metadata(adapters),
        )

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A ComfyUI-layout or diffusers LoRA file's tensors for one adapter, under peft's keys."""
        return lora_files.from_file(tensors, adapter, self.kohya_base)

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The transformer as ComfyUI's ``diffusion_models`` file holds it (the diffusers names; the text encoder and VAE are separate files)."""
        return dict(unwrap(pipe.transformer).state_dict())

    # ---- tiny model and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """The tiny Qwen-Image (real classes at toy size, seeded) with its locally built Qwen2 tokenizer, as a diffusers folder."""
        return tiny_model.build(self.pipeline_class(), out_dir)

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """One transformer forward at ``resolution``: packed latents, σ, a caption's states and mask, the image shape."""
        import torch

        side = resolution // 16
        channels = int(denoiser_config["in_channels"])
        tokens = self.spec.text_tokens
        return {
            "hidden_states": torch.randn(batch, side * side, channels, dtype=dtype, device=device),
            "timestep": torch.full((batch,), 0.5, dtype=dtype, device=device),
            "encoder_hidden_states": torch.randn(batch, tokens, int(denoiser_config["joint_attention_dim"]), dtype=dtype, device=device),
            "encoder_hidden_states_mask": torch.ones(batch, tokens, dtype=torch.long, device=device),
            "img_shapes": [[(1, side, side)]] * batch,
        }


def _channel_stats(vae: Any, like: Any) -> tuple[Any, Any]:
    """The VAE config's per-channel latent mean and std, shaped to broadcast over ``[B, C, T, H, W]``."""
    import torch

    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = QwenImageRuntime(SPEC)
