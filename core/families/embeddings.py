"""The denoiser's text conditioning for a batch, as every family's runtime returns it (no torch import).

A :class:`TextEmbeddings` is a small set of named tensors of varying length: the per-token
``hidden_states``, and where the family has them a ``pooled`` vector, ``attention_mask`` and
``position_ids`` (T5 and LLM encoders). :meth:`TextEmbeddings.named` and
:meth:`TextEmbeddings.from_named` are what a cache stores and reads back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The names of the tensors a family may return besides the hidden states and the pooled vector.
EXTRA_NAMES = ("attention_mask", "position_ids")


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
