"""Captions as the trainer feeds them: sd-scripts' prefix and suffix, dropout, tag shuffling and tag dropout."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from core.settings import SETTINGS


def setting(settings: Mapping[str, Any], key: str) -> Any:
    """A caption setting from ``settings``, else its default."""
    return settings.get(key, SETTINGS[key].default)


def with_prefix_suffix(caption: str, settings: Mapping[str, Any]) -> str:
    """``caption_prefix caption caption_suffix`` joined by spaces, as sd-scripts does (before shuffling)."""
    prefix, suffix = str(setting(settings, "caption_prefix")).strip(), str(setting(settings, "caption_suffix")).strip()
    return " ".join(part for part in (prefix, caption, suffix) if part)


def process_caption(caption: str, settings: Mapping[str, Any], rng: random.Random) -> str:
    """sd-scripts' per-step caption: dropout, then tag shuffling and tag dropout behind the first ``keep_tokens`` tags."""
    rate = float(setting(settings, "caption_dropout_rate"))
    if rate > 0 and rng.random() < rate:
        return ""
    shuffle = bool(setting(settings, "shuffle_caption"))
    tag_rate = float(setting(settings, "caption_tag_dropout_rate"))
    if (shuffle or tag_rate > 0) and "," in caption:
        tags = [t.strip() for t in caption.split(",") if t.strip()]
        keep = int(setting(settings, "keep_tokens"))
        head, tail = tags[:keep], tags[keep:]
        if shuffle:
            rng.shuffle(tail)
        if tag_rate > 0:
            tail = [tag for tag in tail if rng.random() >= tag_rate]
        return ", ".join(head + tail)
    return caption
