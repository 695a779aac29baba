"""Caption statistics the wizard's dataset step shows (torch-free): images without a caption,
generated ones, captions longer than the family's token limit, the most frequent tags or words.

Token counts are estimates without the tokenizer (a word or a punctuation mark is one token, plus
the start and end tokens): CLIP splits rare words further, so a caption over the estimate's limit
is surely cut, one near it may be.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"[^\W\d_][\w'-]*")
#: Words too common to say anything about a dataset.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "with",
        "and",
        "or",
        "to",
        "at",
        "by",
        "for",
        "from",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "as",
        "into",
        "over",
        "under",
        "while",
        "has",
        "have",
        "there",
        "their",
        "his",
        "her",
        "he",
        "she",
        "they",
        "them",
        "image",
        "photo",
        "picture",
        "shows",
        "showing",
    ]
)
#: How many frequent tags or words are listed.
TOP = 8


def estimated_tokens(caption: str) -> int:
    """The caption's token count, estimated: words and punctuation marks, plus the start and end tokens."""
    return len(_TOKEN.findall(caption)) + 2


def is_tag_list(captions: list[str]) -> bool:
    """Whether the captions are booru-style tag lists (comma-separated, a few words a tag)."""
    parts = [p.strip() for c in captions for p in c.split(",") if p.strip()]
    return bool(parts) and len(parts) >= 2 * len(captions) and sum(len(p.split()) for p in parts) <= 3 * len(parts)


@dataclass(frozen=True)
class CaptionStats:
    """The caption facts of the training images of one scan."""

    images: int
    without_caption: int
    generated: int
    token_limit: int | None
    #: (image path, estimated tokens) of the captions over the limit, longest first.
    over_limit: list[tuple[str, int]] = field(default_factory=list)
    longest: int = 0
    tags: bool = False
    frequent: list[tuple[str, int]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The statistics as the dataset step shows them, one fact a line."""
        lines = [
            f"{self.images - self.without_caption} of {self.images} images have a caption"
            + (f" ({self.generated} generated)" if self.generated else "")
            + (f"; {self.without_caption} without one" if self.without_caption else "")
        ]
        if self.token_limit is not None and self.longest:
            over = f"; {len(self.over_limit)} over the limit of {self.token_limit} and cut in training" if self.over_limit else f", within the limit of {self.token_limit}"
            lines.append(f"longest caption ~{self.longest} tokens{over}")
        if self.frequent:
            lines.append(("most frequent tags: " if self.tags else "most frequent words: ") + ", ".join(f"{w} ({n})" for w, n in self.frequent))
        return lines


def caption_stats(scan: Any, token_limit: int | None = None) -> CaptionStats:
    """The statistics of a DatasetScan's training images; ``token_limit`` is the family's (None: no check)."""
    images = [image for subset in scan.subsets if not subset.is_reg for image in subset.images]
    captions = [(image.path, image.caption.strip()) for image in images if image.caption and image.caption.strip()]
    texts = [text for _, text in captions]
    counts = {path: estimated_tokens(text) for path, text in captions}
    over = sorted(((p, n) for p, n in counts.items() if token_limit is not None and n > token_limit), key=lambda item: -item[1])
    tags = is_tag_list(texts)
    if tags:
        counter = Counter(p.strip().lower() for text in texts for p in text.split(",") if p.strip())
    else:
        counter = Counter(w for text in texts for w in (m.lower() for m in _WORD.findall(text)) if w not in STOPWORDS)
    return CaptionStats(
        images=len(images),
        without_caption=len(images) - len(captions),
        generated=sum(1 for i in images if i.generated),
        token_limit=token_limit,
        over_limit=over,
        longest=max(counts.values(), default=0),
        tags=tags,
        frequent=counter.most_common(TOP),
    )


def token_limit(family: str | None) -> int | None:
    """The family's caption limit: the longest of its text encoders' token limits, the one the denoiser
    reads the caption's words through (T5's 512 for FLUX.1, CLIP's 77 for SD) (None without a family)."""
    if not family:
        return None
    from core.families import spec

    return spec(family).text_tokens


def caption_advice(family: str | None) -> str | None:
    """What captions suit a family that reads them with a language model (T5, an LLM), not only CLIP:
    natural-language sentences; None for a CLIP-only family or without a family."""
    if not family:
        return None
    from core.families import spec

    found = spec(family)
    if all(te.kind.startswith(("clip", "open_clip")) for te in found.text_encoders):
        return None
    return f"{found.title} reads captions with a language-model text encoder: natural-language sentences (what, where, style) teach more than tag lists."
