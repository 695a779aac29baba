"""What a run trains, counted once: the estimator, the throughput model and preflight's disk
check all read :func:`trainable` (from the measured counts in params.json)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.families import spec
from core.families.flow_mmdit.blocks import parse_indices, selects_blocks
from core.settings import FULL_METHODS, SETTINGS, resolve

from . import data

#: The widest layer LoRA adapts (the GEGLU projection's 10240 outputs): its adapter tensor is
#: at most what ``adapter_parameters`` counts for this width.
LORA_WIDEST_LAYER = 10240


@dataclass(frozen=True)
class Trainable:
    """``params``: what the optimizer updates; ``largest``: its largest tensor; ``saved``: the
    learned values the result file holds; ``text_encoders``: whether the text encoders train."""

    params: int
    largest: int
    saved: int
    text_encoders: bool


def settled(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they are when they hold every key already (resolved upstream: the picker
    judges hundreds of combinations), else resolved with the schema defaults."""
    if SETTINGS.keys() <= settings.keys():
        return dict(settings)
    return resolve("settings", settings)


def text_encoder_names(family: str) -> list[str]:
    """The family's text encoders (their component names, as params.json keys them)."""
    return list(spec(family).text_encoder_names)


def adapter_parameters(lora_type: str, rank: int, width: int) -> int:
    """Trainable parameters of a LoRA-style adapter over layers of total ``width`` (Σ in·k·k + out).

    LoRA: rank × width. LoHa: two LoRA pairs, 2 × rank × width. LoKr: peft factors each layer
    into a Kronecker product of two small matrices, about 2·√(out·in) per layer whatever the
    rank (a factor is split by rank only when that is smaller), which is at most ``width``: the
    count used here, an upper bound.
    """
    if lora_type == "loha":
        return 2 * rank * width
    if lora_type == "lokr":
        return width
    return rank * width


def lora_width(family: str, component: str, measured: Mapping[str, Any], s: Mapping[str, Any]) -> int:
    """The LoRA width (params.json's ``lora_width``) of ``component`` under ``settings.lora_targets``, less
    the blocks a block selection leaves out (``FamilySpec.block_settings``: SD 3.5's ``train_block_indices``,
    FLUX.1's double/single lists; per block in params.json's ``lora_block_width``)."""
    targets = str(s["lora_targets"])
    width = int(measured["lora_width"][targets])
    if component != spec(family).denoiser:
        return width
    for key, block_list in spec(family).block_settings.items():
        text = str(s.get(key, "") or "")
        if selects_blocks(text):
            per_block = measured["lora_block_width"][targets][block_list]
            chosen = parse_indices(text, len(per_block), key)
            width -= sum(w for index, w in enumerate(per_block) if index not in chosen)
    return width


def trainable(family: str, method: str, settings: Mapping[str, Any]) -> Trainable:
    """The trained parameters of ``method`` on ``family`` with ``settings``.

    Textual inversion trains each text encoder's whole token-embedding matrix (its gradient
    masked to the new rows, as core/train/model/methods.py sets it up), so that is what the optimizer
    holds; the result holds ``ti_num_vectors`` vectors per encoder.
    """
    s = settled(settings)
    comps = data.params()[family]
    encoders = text_encoder_names(family)
    te = bool(s["train_text_encoder"]) and method != "textual_inversion"
    trained = list(spec(family).trainable_text_encoder_names) if te else []  # never T5
    if method == "lora":
        parts = [spec(family).denoiser, *trained]
        kind, rank = str(s["lora_type"]), int(s["lora_rank"])
        count = sum(adapter_parameters(kind, rank, lora_width(family, c, comps[c], s)) for c in parts)
        return Trainable(count, min(count, adapter_parameters(kind, rank, LORA_WIDEST_LAYER)), count, te)
    if method in FULL_METHODS:
        parts = [spec(family).denoiser, *trained]
        count = sum(comps[c]["params"] for c in parts)
        return Trainable(count, max(comps[c]["largest_param"] for c in parts), count, te)
    count = sum(comps[c]["token_embedding_params"] for c in encoders)
    vectors = int(s["ti_num_vectors"]) * sum(comps[c]["hidden_size"] for c in encoders)
    return Trainable(count, max(comps[c]["token_embedding_params"] for c in encoders), vectors, False)
