"""What a run trains, counted once: the estimator, the throughput model and preflight's disk
check all read :func:`trainable` (from the measured counts in params.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.model_configs import adapter_parameters
from core.settings import resolve

from . import data

#: The widest layer LoRA adapts (the GEGLU projection's 10240 outputs): its adapter tensor is
#: at most what ``adapter_parameters`` counts for this width.
LORA_WIDEST_LAYER = 10240
FULL_METHODS = ("dreambooth", "finetune")


@dataclass(frozen=True)
class Trainable:
    """``params``: what the optimizer updates; ``largest``: its largest tensor; ``saved``: the
    learned values the result file holds; ``text_encoders``: whether the text encoders train."""

    params: int
    largest: int
    saved: int
    text_encoders: bool


def text_encoder_names(family: str) -> list[str]:
    """The family's text encoders, as params.json names them."""
    return [c for c in data.params()[family] if c.startswith("text_encoder")]


def trainable(family: str, method: str, settings: Mapping[str, Any]) -> Trainable:
    """The trained parameters of ``method`` on ``family`` with ``settings``.

    Textual inversion trains each text encoder's whole token-embedding matrix (its gradient
    masked to the new rows, as core/train/methods.py sets it up), so that is what the optimizer
    holds; the result holds ``ti_num_vectors`` vectors per encoder.
    """
    s = resolve("settings", settings)
    comps = data.params()[family]
    encoders = text_encoder_names(family)
    te = bool(s["train_text_encoder"]) and method != "textual_inversion"
    if method == "lora":
        parts = ["unet", *(encoders if te else [])]
        kind, rank = str(s["lora_type"]), int(s["lora_rank"])
        count = sum(adapter_parameters(kind, rank, comps[c]["lora_width"][s["lora_targets"]]) for c in parts)
        return Trainable(count, min(count, adapter_parameters(kind, rank, LORA_WIDEST_LAYER)), count, te)
    if method in FULL_METHODS:
        parts = ["unet", *(encoders if te else [])]
        count = sum(comps[c]["params"] for c in parts)
        return Trainable(count, max(comps[c]["largest_param"] for c in parts), count, te)
    count = sum(comps[c]["token_embedding_params"] for c in encoders)
    vectors = int(s["ti_num_vectors"]) * sum(comps[c]["hidden_size"] for c in encoders)
    return Trainable(count, max(comps[c]["token_embedding_params"] for c in encoders), vectors, False)
