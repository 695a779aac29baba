"""What the picker chose and why, in words: the plan's ``Recipe`` and ``Choice`` lines and the
wizard's recipe step (docs/planning.md).

A recipe the composer changed for the GPUs is named as what it is, ``composed for 1 × 12 GiB from
flux-lora-48gb: int8 text encoders, 52 blocks swapped``, never as the recipe alone. When the recipe
written for a card this size (the one that fits as written and uses most of the card) is not the
one chosen, the plan names it (``the heaviest recipe that fits as written``) and says why the
chosen one ranks above it: faster, less lossy, more pixels, or
(a quantized base) faster by more than its precision loss costs. When the chosen one stores its
base or its encoders quantized, the plan says what the lossless combination lacks or costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.units import GIB

from .fit import LOSS_PRICE, RecipeFit, RunShape, describe_techniques, precision_loss
from .throughput import technique_cost

#: The knobs besides the memory techniques the composer turns, with their words.
KNOBS = (("gradient_checkpointing", "checkpointing"), ("batch_size", "batch"), ("resolution", "resolution"))
#: Speeds within this share of each other read "about as fast" (as the plan's Memory line).
ABOUT = 0.05
#: Exposed swap time below this share of a step counts as hidden under the compute.
HIDDEN_SHARE = 0.02
#: The settings a lossless combination sets back.
LOSSLESS = {"base_precision": "auto", "text_encoder_precision": "auto"}


@dataclass(frozen=True)
class Choice:
    """The picker's choice for a plan: ``composed`` (``composed for 1 × 12 GiB from …``, empty for a
    recipe as written) and ``reasons`` (why it ranks above the card's own recipe, what the lossless
    combination lacks)."""

    recipe: str
    composed: str = ""
    reasons: tuple[str, ...] = ()
    over: str = ""

    def to_json(self) -> dict[str, Any]:
        """The plan's ``choice``."""
        return {"recipe": self.recipe, "composed": self.composed, "over": self.over or None, "reasons": list(self.reasons)}


def knob_changes(fit: RecipeFit) -> list[str]:
    """The composer's knob changes in words, e.g. ``batch 2 → 1``, ``checkpointing on``."""
    base = fit.baseline.settings if fit.baseline is not None else {}
    parts = []
    for key, label in KNOBS:
        if key in fit.changes:
            value, before = fit.changes[key], base.get(key)
            if isinstance(value, bool):
                parts.append(f"{label} {'on' if value else 'off'}")
            else:
                parts.append(f"{label} {before} → {value}" if before is not None else f"{label} {value}")
    return parts


def composition(fit: RecipeFit, gpus: Any) -> str:
    """``composed for 1 × 12 GiB from flux-lora-48gb: int8 text encoders, 52 blocks swapped, batch
    2 → 1`` for a recipe the composer changed (``the closest to 1 × 8 GiB from …`` when even that
    does not fit); empty for one as written."""
    if not {k: v for k, v in fit.changes.items() if k != "recipe"}:
        return ""
    parts = [describe_techniques(fit.settings) or "no memory technique", *knob_changes(fit)]
    how = "composed for" if fit.fits is not False else "the closest to fitting"
    return f"{how} {card(gpus)} from {fit.name}: {', '.join(parts)}"


def card(gpus: Any) -> str:
    """``1 × 12 GiB``: the GPU count and the smallest GPU's memory."""
    smallest = gpus.smallest
    return f"{max(1, gpus.count)} × {smallest.vram_total_bytes / GIB:.0f} GiB" if smallest is not None else "no GPU"


def written_for_card(ranked: Sequence[RecipeFit]) -> RecipeFit | None:
    """The recipe written for a card this size: of those that fit as written (nothing composed),
    the one that uses most of the card (recipe names are never read)."""
    written = [f for f in ranked if f.fits and not {k for k in f.changes if k != "recipe"}]
    return max(written, key=lambda f: f.estimate.total_bytes, default=None)


def choose(family: str, method: str, gpus: Any, ranked: Sequence[RecipeFit], overrides: Mapping[str, Any] | None, shape: RunShape) -> Choice | None:
    """The choice of ``ranked`` (rank_recipes' order) in words; None when nothing was ranked."""
    if not ranked:
        return None
    chosen = ranked[0]
    reasons: list[str] = []
    over = written_for_card(ranked) if chosen.fits else None
    if over is not None and over is not chosen:
        reasons.append(ranked_above(family, method, chosen, over, gpus))
    else:
        over = None
    if chosen.fits and precision_loss(chosen.settings):
        reasons.append(lossless_alternative(family, method, chosen, gpus, overrides, shape))
    return Choice(chosen.name, composition(chosen, gpus), tuple(r for r in reasons if r), over.name if over is not None else "")


def ranked_above(family: str, method: str, chosen: RecipeFit, other: RecipeFit, gpus: Any) -> str:
    """Why ``chosen`` ranks above ``other``, the recipe written for this card, e.g. ``chosen over
    flux-lora-12gb, the heaviest recipe that fits as written (fp8_scaled base, …: 10.1 GiB, 0.039 img/s):
    about as fast (0.040 img/s; the 52 swapped blocks' copies hide under the compute), with the
    base in bf16 instead of fp8_scaled``."""
    what = describe_techniques(other.settings) or "no memory technique"
    head = f"chosen over {other.name}, the heaviest recipe that fits as written ({what}: {other.estimate.gb:.1f} GiB{_speed(other)})"
    why: list[str] = []
    mine, theirs = int(chosen.settings["resolution"]), int(other.settings["resolution"])
    if mine != theirs:
        why.append(f"it trains at {mine} px instead of {theirs}")
    swap = _swap_words(family, method, chosen, gpus)
    why.append(_pace(chosen, other, swap))
    why += _precision_words(chosen, other)
    if len(why) == 1 and chosen.estimate.total_bytes < other.estimate.total_bytes:
        why.append(f"and lighter ({chosen.estimate.gb:.1f} GiB)")
    return f"{head}: {', '.join(why)}"


def lossless_alternative(family: str, method: str, chosen: RecipeFit, gpus: Any, overrides: Mapping[str, Any] | None, shape: RunShape) -> str:
    """Why the chosen combination stores something quantized: what the same recipe composed with
    the base and encoders in the mixed precision lacks, or how much slower it is."""
    from .compose import compose

    if chosen.recipe is None:
        return ""
    plain = compose(family, method, gpus, chosen.recipe, dict(overrides or {}) | LOSSLESS, shape)
    lossy = describe_techniques({k: chosen.settings.get(k) for k in LOSSLESS})
    what = plain.techniques() or "no memory technique"
    if not plain.fits:
        return f"{lossy}: without them nothing fits, the closest ({what}) lacks {plain.lacks()}"
    resolution = int(plain.settings["resolution"])
    if resolution < int(chosen.settings["resolution"]):
        return f"{lossy}: without them it fits only at {resolution} px ({what})"
    if plain.images_per_second and chosen.images_per_second:
        pace = _pace(chosen, plain)
        return f"{lossy}: {pace} than without them ({what}), a quantized store must be {LOSS_PRICE:g}× faster per step of precision loss"
    return ""


def _speed(fit: RecipeFit) -> str:
    return f", {fit.images_per_second:.3f} img/s" if fit.images_per_second else ""


def _pace(chosen: RecipeFit, other: RecipeFit, why: str = "") -> str:
    """``about as fast (0.040 img/s; why)``, ``1.5× faster (…)`` or ``2.6× slower (…)``."""
    if not chosen.images_per_second or not other.images_per_second:
        return "its speed unknown" + (f" ({why})" if why else "")
    ratio = chosen.images_per_second / other.images_per_second
    detail = f"{chosen.images_per_second:.3f} img/s" + (f"; {why}" if why else "")
    if ratio >= 1 + ABOUT:
        return f"{ratio:.1f}× faster ({detail})"
    if ratio <= 1 / (1 + ABOUT):
        return f"{1 / ratio:.1f}× slower ({detail})"
    return f"about as fast ({detail})"


def _swap_words(family: str, method: str, fit: RecipeFit, gpus: Any) -> str:
    """``the 30 swapped blocks' copies hide under the compute`` or what they cost a step."""
    count = int(fit.settings.get("blocks_to_swap", 0) or 0)
    if not count or gpus.smallest is None or not fit.images_per_second:
        return ""
    exposed = technique_cost(family, method, fit.settings, gpus.smallest).swap_s
    step = int(fit.settings["batch_size"]) / fit.images_per_second
    if exposed <= HIDDEN_SHARE * step:
        return f"the {count} swapped blocks' copies hide under the compute"
    return f"the {count} swapped blocks cost {exposed:.2f} s of a {step:.1f} s step"


def _precision_words(chosen: RecipeFit, other: RecipeFit) -> list[str]:
    """How the stored precisions differ: ``with the base in bf16 instead of fp8_scaled``."""
    out = []
    mixed = str(chosen.settings.get("mixed_precision"))
    for key, what in (("base_precision", "base"), ("text_encoder_precision", "text encoders")):
        mine, theirs = str(chosen.settings.get(key) or "auto"), str(other.settings.get(key) or "auto")
        if mine != theirs:
            out.append(f"with the {what} in {mixed if mine == 'auto' else mine} instead of {mixed if theirs == 'auto' else theirs}")
    return out
