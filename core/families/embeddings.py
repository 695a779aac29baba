"""The denoiser's text conditioning for a batch, as every family's runtime returns it (no torch import).

A :class:`TextEmbeddings` is a small set of named tensors of varying length: the per-token
``hidden_states``, and where the family has them a ``pooled`` vector, ``attention_mask`` and
``position_ids`` (T5 and LLM encoders). :meth:`TextEmbeddings.named` and
:meth:`TextEmbeddings.from_named` are what a cache stores and reads back.

A position whose ``attention_mask`` is 0 is padding the denoiser does not read (a family whose
denoiser reads its padding, as FLUX.2 reads the LLM's, returns no mask). So one caption's row is
stored at its own length (:func:`trim_row`) and a batch of rows of different lengths is padded
again to the longest (``core.train.data.text_cache.stack_rows``): the variable-length LLM outputs of Z-Image and
Qwen-Image cost the cache their captions' length, not the token limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The names of the tensors a family may return besides the hidden states and the pooled vector.
EXTRA_NAMES = ("attention_mask", "position_ids")
#: The per-token tensors (``[tokens, …]`` in one caption's row) that a mask's padding is cut from and padded to.
TOKEN_NAMES = ("hidden_states", "attention_mask", "position_ids")


@dataclass
class TextEmbeddings:
    """The denoiser's text conditioning for a batch: per-token states and, where the family has them,
    a pooled vector and further named tensors (``attention_mask``, ``position_ids``)."""

    prompt_embeds: Any
    pooled_prompt_embeds: Any | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: Any = None, dtype: Any = None) -> TextEmbeddings:
        """A copy on ``device``; the floating-point tensors also in ``dtype`` (masks and ids keep theirs)."""
        pooled = self.pooled_prompt_embeds
        return TextEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            pooled.to(device=device, dtype=dtype) if pooled is not None else None,
            {name: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device) for name, t in self.extra.items()},
        )

    def named(self) -> dict[str, Any]:
        """The tensors by name (``hidden_states``, ``pooled`` and the extras present), for a cache."""
        out = {"hidden_states": self.prompt_embeds, **self.extra}
        if self.pooled_prompt_embeds is not None:
            out["pooled"] = self.pooled_prompt_embeds
        return out

    @classmethod
    def from_named(cls, tensors: Mapping[str, Any]) -> TextEmbeddings:
        """The inverse of :meth:`named`; ValueError naming an unknown tensor name."""
        unknown = set(tensors) - {"hidden_states", "pooled", *EXTRA_NAMES}
        if unknown or "hidden_states" not in tensors:
            raise ValueError(f"text embeddings need hidden_states and may hold pooled, {', '.join(EXTRA_NAMES)}; got {sorted(tensors)}")
        return cls(tensors["hidden_states"], tensors.get("pooled"), {n: tensors[n] for n in EXTRA_NAMES if n in tensors})


def trim_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One caption's named tensors without the padding after its last valid token, when its
    ``attention_mask`` is a prefix of ones (the layout :mod:`core.families.llm_text` returns); as is otherwise."""
    mask = row.get("attention_mask")
    if mask is None or mask.ndim != 1:
        return dict(row)
    length = int(mask.bool().sum())
    if length == 0 or not bool(mask[:length].bool().all()):
        return dict(row)
    return {name: t[:length] if name in TOKEN_NAMES and t.shape[0] == mask.shape[0] else t for name, t in row.items()}
