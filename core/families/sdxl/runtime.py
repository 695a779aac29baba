"""The SDXL runtime: two CLIP encoders concatenated, a pooled vector and size/crop ids (imported only by the trainer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.families import clip
from core.families.embeddings import TextEmbeddings
from core.families.protocol import FamilyRuntime
from core.families.sd_unet import tiny
from core.families.sd_unet.runtime import SDUNetRuntime
from core.families.sdxl import SPEC


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> Any:
    """SDXL's size/crop conditioning, shape ``[6]``: all three pairs are (height, width) / (top, left)."""
    import torch

    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def time_ids_batch(
    original_sizes: Sequence[tuple[int, int]],
    crop_top_lefts: Sequence[tuple[int, int]],
    target_sizes: Sequence[tuple[int, int]],
) -> Any:
    """:func:`time_ids` for a batch, shape ``[batch, 6]``."""
    import torch

    return torch.stack([time_ids(o, c, t) for o, c, t in zip(original_sizes, crop_top_lefts, target_sizes)])


class SDXLRuntime(SDUNetRuntime):
    """SDXL: CLIP-L + OpenCLIP-bigG, penultimate states, pooled vector and size/crop ids."""

    pipeline_extras: Mapping[str, Any] = {}
    load_extras: Mapping[str, Any] = {}
    kohya_original_unet_names = True

    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """Both encoders' penultimate states (their native layer, so clip_skip 1 and 2 are the same)
        concatenated, and the second encoder's projected pooled output."""
        return clip.encode_concatenated(encoders, token_ids, clip_skip, self.spec.native_clip_layer)

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The UNet's ``added_cond_kwargs``: the pooled text vector and the batch's size/crop ids."""
        ids = time_ids_batch(batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]).to(device)
        pooled = embeddings.pooled_prompt_embeds
        if pooled is None:
            raise ValueError("SDXL's conditioning needs the pooled text vector; encode the captions with this family's encode_text")
        return {"text_embeds": pooled, "time_ids": ids.to(device=pooled.device, dtype=pooled.dtype)}

    def _sample_text(self, pipe: Any, prompt: str, negative: str, clip_skip: int) -> tuple[dict[str, Any], int | None]:
        """The prompts as text; kohya's ``clip_skip`` in the pipeline's terms (layers beyond its native one)."""
        skipped = clip_skip - self.spec.native_clip_layer
        return {"prompt": prompt, "negative_prompt": negative or None}, skipped if skipped > 0 else None

    def _tiny_pipeline(self) -> tuple[type, dict[str, Any]]:
        """A tiny SDXL: two encoders of different widths (as CLIP-L and bigG, which single-file loaders rely on)."""
        import torch
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(tiny.SEED)
        te1 = CLIPTextModel(tiny.text_config(32, "gelu"))
        te2 = CLIPTextModelWithProjection(tiny.text_config(64, "gelu", projection=32))
        unet = tiny.unet(
            96,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        )
        parts = dict(unet=unet, vae=tiny.vae(SPEC.configs["vae"]["scaling_factor"]), text_encoder=te1, text_encoder_2=te2, scheduler=tiny.scheduler("epsilon"))
        return self.pipeline_class(), parts


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = SDXLRuntime(SPEC)
