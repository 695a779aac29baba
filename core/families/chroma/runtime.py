"""The Chroma runtime: FLUX.1's blocks, BFL layout and kohya rules, T5-XXL alone with its padding masked (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.families import t5
from core.families.chroma import SPEC
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit import latents
from core.families.flow_mmdit.runtime import split_tokens
from core.families.flux.runtime import FluxRuntime
from core.families.objectives import FlowObjective
from core.families.protocol import FamilyRuntime, SamplePromptLike

#: Chroma's modules outside the blocks (BFL -> diffusers): no time/vector/guidance embedders, no final modulation.
CHROMA_GLOBAL = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out"}


def transformer_mask(text_mask: Any, image_tokens: int, dtype: Any) -> Any:
    """The transformer's attention mask as ChromaPipeline builds it: the caption's tokens and its first
    pad token (all later padding hidden), then every image token."""
    import torch

    lengths = text_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(text_mask.shape[1], device=text_mask.device)[None, :]
    text = (positions <= lengths).to(dtype)
    return torch.cat([text, torch.ones(text_mask.shape[0], image_tokens, device=text_mask.device, dtype=torch.bool)], dim=1)


class ChromaRuntime(FluxRuntime):
    """Chroma: the FLUX.1 runtime with T5 alone (masked), no guidance embedding and its approximator."""

    def global_modules(self, config: Mapping[str, Any]) -> dict[str, str]:
        """The BFL linear modules outside the blocks, the approximator's included (its layer count from the config)."""
        table = {**CHROMA_GLOBAL, "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj", "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj"}
        for n in range(int(config.get("approximator_layers", 5))):
            table[f"distilled_guidance_layer.layers.{n}.in_layer"] = f"distilled_guidance_layer.layers.{n}.linear_1"
            table[f"distilled_guidance_layer.layers.{n}.out_layer"] = f"distilled_guidance_layer.layers.{n}.linear_2"
        return table

    def extra_names(self, config: Mapping[str, Any]) -> dict[str, str]:
        """The approximator's RMSNorm gains (``.scale`` in BFL, ``.weight`` in diffusers)."""
        return {f"distilled_guidance_layer.norms.{n}.scale": f"distilled_guidance_layer.norms.{n}.weight" for n in range(int(config.get("approximator_layers", 5)))}

    def variant_of(self, denoiser_config: Mapping[str, Any]) -> str:
        """Chroma has one variant."""
        return self.spec.variant().name

    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:
        """The flow objective; UserError for ``clip_skip`` and a training guidance (Chroma has neither CLIP nor a guidance embedding)."""
        if int(settings.get("clip_skip", 1) or 1) != 1:
            raise UserError("settings.clip_skip picks a CLIP layer, and Chroma has no CLIP encoder; set clip_skip = 1")
        if float(settings.get("guidance_scale", 1.0)) != 1.0:
            raise UserError("settings.guidance_scale is FLUX.1-dev's embedded guidance, and Chroma embeds none; remove it (samples take their own --l)")
        return super(FluxRuntime, self).objective(prediction_type, noise_scheduler, settings)

    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """T5-XXL's states with its padding masked, and the mask (for the transformer's attention)."""
        ids, masks = split_tokens(self.spec, token_ids)
        name = self.spec.text_encoder_names[0]
        hidden = t5.encode(encoders[0], ids[name], masks[name])
        return TextEmbeddings(hidden, None, {"attention_mask": masks[name].to(hidden.device)})

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The T5 padding mask."""
        return {"text_mask": embeddings.extra["attention_mask"].to(device)}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """Pack, run the transformer with ids and the padding mask, unpack."""
        if extra is None:
            raise ValueError("Chroma's transformer needs the T5 padding mask; pass extra_conditioning's output")
        height, width = int(noisy.shape[-2]), int(noisy.shape[-1])
        tokens = latents.pack(noisy)
        out = denoiser(
            hidden_states=tokens,
            encoder_hidden_states=hidden,
            timestep=(timesteps.float() / 1000).to(tokens.dtype),
            img_ids=latents.image_ids(height, width, tokens.device, tokens.dtype),
            txt_ids=latents.text_ids(hidden.shape[1], tokens.device, tokens.dtype),
            attention_mask=transformer_mask(extra["text_mask"], tokens.shape[1], tokens.dtype),
            return_dict=False,
        )[0]
        return latents.unpack(out, height, width)

    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """ChromaPipeline's call: prompt and negative prompt (real guidance), size, steps, T5 at 512 tokens."""
        return {
            "prompt": prompt.prompt,
            "negative_prompt": prompt.negative or "",
            "width": prompt.width,
            "height": prompt.height,
            "num_inference_steps": prompt.steps,
            "guidance_scale": prompt.scale,
            "max_sequence_length": self.spec.max_tokens(self.spec.text_encoder_names[0]),
        }

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """ChromaPipeline encodes prompt and negative prompt in one call (classifier-free above 1), with their T5 masks."""
        keywords = {
            "prompt": arguments["prompt"],
            "negative_prompt": arguments["negative_prompt"],
            "do_classifier_free_guidance": arguments["guidance_scale"] > 1,
            "max_sequence_length": arguments["max_sequence_length"],
        }
        names = ("prompt_embeds", None, "prompt_attention_mask", "negative_prompt_embeds", None, "negative_prompt_attention_mask")
        return [(keywords, names)]

    def tiny_transformer_of(self, text_width: int) -> Any:
        """A seeded Chroma transformer at toy size (1 double, 2 single blocks, a 2-layer approximator)."""
        import torch
        from diffusers import ChromaTransformer2DModel

        torch.manual_seed(2357)
        return ChromaTransformer2DModel(
            patch_size=1,
            in_channels=self.spec.latent_channels * 4,
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_width,
            axes_dims_rope=(4, 6, 6),
            approximator_num_channels=16,
            approximator_hidden_dim=32,
            approximator_layers=2,
        )

    def tiny_parts(self, out_dir: Path) -> dict[str, Any]:
        """The tiny model's modules and tokenizer by component name."""
        from transformers import T5TokenizerFast

        from core.families.flow_mmdit import tiny as flow_tiny
        from core.families.sd_unet import tiny as sd_tiny

        vae = self.spec.configs["vae"]
        return {
            "transformer": self.tiny_transformer_of(t5.TINY_WIDTH),
            "vae": flow_tiny.vae16(float(vae["scaling_factor"]), float(vae["shift_factor"])),
            "text_encoder": t5.tiny_encoder(sd_tiny.WORDS),
            "tokenizer": T5TokenizerFast.from_pretrained(t5.write_tokenizer(out_dir / "tokenizer", sd_tiny.WORDS, self.spec.max_tokens("text_encoder"))),
            "scheduler": flow_tiny.scheduler(self.spec.scheduler_config()),
        }


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = ChromaRuntime(SPEC)
