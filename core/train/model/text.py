"""Captions to the denoiser's text conditioning, through the family's runtime, and textual-inversion tokens.

How the encoders' outputs combine is the family's (``core/families``, ``encode_text``).
Gradients flow through the encoders when they are trained (LoRA on the text encoder,
textual inversion): nothing here detaches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.families.embeddings import TextEmbeddings
from core.train.model.loading import Components


def tokenize(components: Components, captions: Sequence[str]) -> list[Any]:
    """Token tensors for each tokenizer (ids ``[batch, max_tokens]``, and a T5 padding mask where the family uses one), at the loaded variant's token limit."""
    return components.runtime.tokenize(components.tokenizers, captions, components.variant)


def encode_text(components: Components, token_ids: Sequence[Any], text_encoders: Sequence[Any] | None = None, clip_skip: int = 1) -> TextEmbeddings:
    """The denoiser's text conditioning from token ids, as the family's runtime encodes it.

    ``text_encoders`` are the (possibly training-wrapped) encoders to run, in the components'
    order; ``clip_skip`` is kohya's (1 = the last layer).
    """
    encoders = list(text_encoders) if text_encoders is not None else components.text_encoders
    if not encoders:
        raise RuntimeError("the text encoders were freed once every caption was in the text cache, but a caption is missing from it; start the run again to rebuild the cache")
    return components.runtime.encode_text(encoders, token_ids, clip_skip)


def encode_captions(components: Components, captions: Sequence[str], text_encoders: Sequence[Any] | None = None, clip_skip: int = 1) -> TextEmbeddings:
    """:func:`tokenize` then :func:`encode_text`."""
    return encode_text(components, tokenize(components, captions), text_encoders, clip_skip)


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
