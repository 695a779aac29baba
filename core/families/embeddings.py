"""The denoiser's text conditioning for a batch, as every family's runtime returns it (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TextEmbeddings:
    """The denoiser's text conditioning for a batch: per-token states and, where the family has one, a pooled vector."""

    prompt_embeds: Any
    pooled_prompt_embeds: Any | None = None

    def to(self, device: Any = None, dtype: Any = None) -> TextEmbeddings:
        """A copy on ``device`` / in ``dtype``."""
        pooled = self.pooled_prompt_embeds
        return TextEmbeddings(
            self.prompt_embeds.to(device=device, dtype=dtype),
            pooled.to(device=device, dtype=dtype) if pooled is not None else None,
        )
