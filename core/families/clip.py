"""CLIP text encoding, shared by the families that condition on CLIP (torch is imported by the callers' tensors).

kohya's ``clip_skip`` counts layers from the end (1 = the last); a skipped layer's states go
through the encoder's final layer norm, as sd-scripts and A1111 do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.families.embeddings import TextEmbeddings
from core.families.wrappers import unwrap


def clip_skip_states(encoder: Any, ids: Any, clip_skip: int) -> Any:
    """One CLIP encoder's hidden states at kohya's ``clip_skip`` (the last layer, or layer ``-clip_skip`` + the final layer norm)."""
    if clip_skip <= 1:
        return encoder(ids, return_dict=True).last_hidden_state
    states = encoder(ids, output_hidden_states=True, return_dict=True).hidden_states[-clip_skip]
    plain = unwrap(encoder)
    return getattr(plain, "text_model", plain).final_layer_norm(states)


def encode_one(encoder: Any, ids: Any, clip_skip: int) -> TextEmbeddings:
    """One CLIP encoder's states at ``clip_skip`` (no pooled vector)."""
    return TextEmbeddings(clip_skip_states(encoder, ids.to(device_of(encoder)), clip_skip))


def encode_concatenated(encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int, native_layer: int) -> TextEmbeddings:
    """Several CLIP encoders' states at ``max(native_layer, clip_skip)`` from the end (no final layer
    norm), concatenated on the feature axis, and the last encoder's projected pooled output."""
    import torch

    hidden = []
    pooled: Any = None
    for encoder, ids in zip(encoders, token_ids):
        out = encoder(ids.to(device_of(encoder)), output_hidden_states=True, return_dict=True)
        hidden.append(out.hidden_states[-max(native_layer, clip_skip)])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    device = hidden[0].device
    return TextEmbeddings(torch.cat([h.to(device) for h in hidden], dim=-1), pooled.to(device))


def device_of(module: Any) -> Any:
    """The device of a module's first parameter."""
    return next(module.parameters()).device
