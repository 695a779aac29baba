"""Captions to text-encoder conditioning, for SD1/SD2 (one encoder) and SDXL (two).

SDXL takes the penultimate hidden states of both encoders concatenated on the feature axis
and the pooled (projected) output of the second encoder, plus the size/crop ``time_ids``.
Gradients flow through the encoders when they are trained (LoRA on the text encoder,
textual inversion): nothing here detaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.train.models import Components, unwrap


@dataclass
class TextEmbeddings:
    """The UNet's text conditioning for a batch."""

    prompt_embeds: Any
    pooled_prompt_embeds: Any | None = None

    def to(self, device: Any = None, dtype: Any = None) -> TextEmbeddings:
        """A copy on ``device`` / in ``dtype``."""
        pooled = self.pooled_prompt_embeds
        return TextEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            pooled.to(device=device, dtype=dtype) if pooled is not None else None,
        )


def tokenize(components: Components, captions: Sequence[str]) -> list[Any]:
    """Token ids ``[batch, 77]`` for each tokenizer, padded to its maximum length and truncated."""
    ids = []
    for tokenizer in components.tokenizers:
        out = tokenizer(
            list(captions),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids.append(out.input_ids)
    return ids


def encode_text(components: Components, token_ids: Sequence[Any], text_encoders: Sequence[Any] | None = None, clip_skip: int = 1) -> TextEmbeddings:
    """Run the text encoder(s) on ``token_ids`` (from :func:`tokenize`).

    ``text_encoders`` may be the training-wrapped encoders (DDP, PEFT); by default the
    components' own. ``clip_skip`` counts layers from the end as kohya does: SD1/SD2 take
    hidden state ``-clip_skip`` (1 = the last) and, when skipping, the final layer norm, as
    sd-scripts and A1111 do; SDXL takes the penultimate hidden states (its native layer, so
    clip_skip 1 and 2 are the same) of both encoders concatenated and the projected pooled
    output of the second.
    """
    import torch

    encoders = list(text_encoders) if text_encoders is not None else components.text_encoders
    if not components.is_sdxl:
        encoder = encoders[0]
        ids = token_ids[0].to(_device_of(encoder))
        return TextEmbeddings(clip_skip_states(encoder, ids, clip_skip))
    hidden = []
    pooled = None
    for encoder, ids in zip(encoders, token_ids):
        out = encoder(ids.to(_device_of(encoder)), output_hidden_states=True, return_dict=True)
        hidden.append(out.hidden_states[-max(2, clip_skip)])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    device = hidden[0].device
    return TextEmbeddings(torch.cat([h.to(device) for h in hidden], dim=-1), pooled.to(device))


def clip_skip_states(encoder: Any, ids: Any, clip_skip: int) -> Any:
    """One CLIP encoder's hidden states at kohya's ``clip_skip`` (the last layer, or layer ``-clip_skip`` + the final layer norm)."""
    if clip_skip <= 1:
        return encoder(ids, return_dict=True).last_hidden_state
    states = encoder(ids, output_hidden_states=True, return_dict=True).hidden_states[-clip_skip]
    plain = unwrap(encoder)
    return getattr(plain, "text_model", plain).final_layer_norm(states)


def encode_captions(components: Components, captions: Sequence[str], text_encoders: Sequence[Any] | None = None, clip_skip: int = 1) -> TextEmbeddings:
    """:func:`tokenize` then :func:`encode_text`."""
    return encode_text(components, tokenize(components, captions), text_encoders, clip_skip)


def pipeline_clip_skip(clip_skip: int, is_sdxl: bool) -> int | None:
    """kohya's ``clip_skip`` in diffusers pipelines' terms (layers skipped beyond the one the pipeline uses)."""
    skipped = clip_skip - (2 if is_sdxl else 1)
    return skipped if skipped > 0 else None


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> Any:
    """SDXL's size/crop conditioning, shape ``[6]``: all three pairs are (height, width) / (top, left)."""
    import torch

    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def sdxl_time_ids_batch(
    original_sizes: Sequence[tuple[int, int]],
    crop_top_lefts: Sequence[tuple[int, int]],
    target_sizes: Sequence[tuple[int, int]],
) -> Any:
    """:func:`sdxl_time_ids` for a batch, shape ``[batch, 6]``."""
    import torch

    return torch.stack([sdxl_time_ids(o, c, t) for o, c, t in zip(original_sizes, crop_top_lefts, target_sizes)])


def unet_added_conditions(embeddings: TextEmbeddings, time_ids: Any) -> dict[str, Any] | None:
    """The UNet's ``added_cond_kwargs`` for SDXL (``None`` for SD1/SD2)."""
    if embeddings.pooled_prompt_embeds is None:
        return None
    pooled = embeddings.pooled_prompt_embeds
    return {"text_embeds": pooled, "time_ids": time_ids.to(device=pooled.device, dtype=pooled.dtype)}


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """The tokens a textual-inversion placeholder stands for: ``tok``, ``tok_1`` … (diffusers' naming)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_placeholder_tokens(components: Components, token: str, num_vectors: int = 1, init_word: str = "") -> list[list[int]]:
    """Add a textual-inversion token (``num_vectors`` vectors) to every tokenizer and encoder.

    The new embedding rows start from ``init_word``'s first token (or the mean embedding when
    it is empty). The embedding table grows when the tokenizer outgrows it and never shrinks.
    Returns the new token ids per encoder. Raises ValueError if the token exists.
    """
    import torch

    tokens = placeholder_tokens(token, num_vectors)
    ids_per_encoder = []
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        added = tokenizer.add_tokens(tokens)
        if added != len(tokens):
            raise ValueError(f"the placeholder token '{token}' is already a word of the tokenizer; choose a rare made-up word")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if len(tokenizer) > encoder.get_input_embeddings().weight.shape[0]:  # never shrink: the table may be larger than the vocabulary
            encoder.resize_token_embeddings(len(tokenizer))
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            init_ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word else []
            start = table[init_ids[0]].clone() if init_ids else table[: min(ids)].mean(dim=0)
            for i in ids:
                table[i] = start
        ids_per_encoder.append(ids)
    return ids_per_encoder


def _device_of(module: Any) -> Any:
    return next(module.parameters()).device
