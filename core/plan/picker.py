"""The recipe picker: which recipes fit the smallest GPU with headroom, fastest first.

A recipe's name is never trusted: each candidate's settings (after the user's overrides) go
through the peak-VRAM estimator (:func:`core.plan.fit.judge`), and the throughput model ranks
those that fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from core.families import spec
from core.memory.estimator import HEADROOM
from core.settings import resolve
from core.units import GIB

from .compose import compose
from .fit import SAME_SPEED, RecipeFit, RunShape, judge, precision_loss, setting_text, worth_speed

#: Resolutions tried, largest first, when the chosen one does not fit.
_LOWER_RESOLUTIONS = (1024, 896, 768, 640, 512, 384, 256)


def rank_recipes(
    family: str,
    method: str,
    gpus: Any,
    recipes: Iterable[Any],
    overrides: Mapping[str, Any] | None = None,
    shape: RunShape = RunShape(),
) -> list[RecipeFit]:
    """Every recipe for ``family`` and ``method``, composed for a run of ``shape`` (``compose``:
    the fastest fitting combination within the recipe): fitting ones first, fastest first.

    Recipes that do not fit even composed (or cannot be judged without a GPU, ``fits`` None)
    follow, the smallest estimate first.
    """
    named = spec(family).name  # a variant planned on its own (sd35-large) takes its family's recipes
    fits = [compose(family, method, gpus, r, overrides, shape) for r in recipes if named in r.families and method in r.methods]
    return sorted(fits, key=_order)


def _order(fit: RecipeFit) -> tuple[float | str, ...]:
    """Fitting recipes at the most pixels first (fewer pixels learn less: a recipe written or
    composed at a lower resolution follows), then fastest first; the others lightest first
    (closest to fitting)."""
    if fit.fits:
        worth = worth_speed(fit)
        speed = -math.floor(math.log(worth) / math.log(1 + SAME_SPEED)) if worth else 0
        return (0, -int(fit.settings["resolution"]), speed, precision_loss(fit.settings), -(fit.images_per_second or 0.0), len(fit.changes), fit.estimate.total_bytes, fit.name)
    return (1, fit.estimate.total_bytes, fit.name)


def pick_recipes(
    family: str,
    method: str,
    gpus: Any,
    recipes: Iterable[Any],
    overrides: Mapping[str, Any] | None = None,
    shape: RunShape = RunShape(),
) -> list[RecipeFit]:
    """The recipes that fit the smallest GPU with at least HEADROOM free (composed), fastest first."""
    return [f for f in rank_recipes(family, method, gpus, recipes, overrides, shape) if f.fits]


def suggest_when_nothing_fits(
    family: str,
    method: str,
    gpus: Any,
    recipes: Iterable[Any],
    settings: Mapping[str, Any],
    shape: RunShape = RunShape(),
) -> list[str]:
    """What would fit when nothing does: fewer pixels, LoRA, memory savers, a bigger GPU.

    ``settings`` are the settings that did not fit (the chosen or the smallest recipe's).
    """
    if gpus.smallest is None:
        return []
    recipes = list(recipes)
    gb = gpus.smallest.vram_total_bytes / GIB
    tips: list[str] = [composed_tip(family, method, gpus, settings, shape)]
    savers = {"gradient_checkpointing": True, "optimizer": "adamw8bit", "cache_latents": True, "batch_size": 1}
    if not settings.get("train_text_encoder"):
        savers["cache_text_encoder_outputs"] = True
    lean = dict(settings)
    helpful: dict[str, Any] = {}
    for key, value in savers.items():
        if lean.get(key) == value:
            continue
        trial = judge(family, method, lean | {key: value}, gpus, shape=shape)
        if trial.estimate.total_bytes < judge(family, method, lean, gpus, shape=shape).estimate.total_bytes:
            lean[key] = value
            helpful[key] = value
    if helpful and judge(family, method, lean, gpus, shape=shape).fits:
        sets = " ".join(f"--set {k}={str(v).lower()}" for k, v in helpful.items())
        tips.append(f"enable the memory savers: {sets}")
    else:
        resolution = int(resolve("settings", settings)["resolution"])
        with_savers = " with the memory savers (gradient checkpointing, 8-bit AdamW, caches, batch 1)" if helpful else ""
        for lower in (r for r in _LOWER_RESOLUTIONS if r < resolution):
            if judge(family, method, lean | {"resolution": lower}, gpus, shape=shape).fits:
                tips.append(f"train on fewer pixels: resolution {lower} (--set resolution={lower}){with_savers}")
                break
    if method != "lora":
        lora = rank_recipes(family, "lora", gpus, recipes, shape=shape)
        if lora and lora[0].fits:
            tips.append(f"train a LoRA instead of {method} (--method lora, recipe {lora[0].name}), which fits in {gb:.0f} GiB")
    bigger = _bigger_gpus(family, method, settings, gb, max(1, gpus.count), shape)
    if bigger:
        tips.append(f"use a GPU with more memory: {', '.join(bigger)} would fit these settings")
    return tips


def composed_tip(family: str, method: str, gpus: Any, settings: Mapping[str, Any], shape: RunShape) -> str:
    """The composer's answer for ``settings`` as they are: the techniques and knobs with which they
    fit (as --set options), or that nothing does and what the closest combination lacks."""
    from core.recipes import Recipe

    own = Recipe(str(settings.get("recipe") or "your settings"), "your settings", [family], [method], "", dict(resolve("settings", settings)))
    fit = compose(family, method, gpus, own, None, shape)
    sets = " ".join(f"--set {k}={setting_text(v)}" for k, v in fit.changes.items() if k != "recipe")
    if fit.fits:
        return f"change {sets}: {fit.explain()}"
    return f"nothing fits on this GPU: the closest combination ({fit.techniques() or 'no technique'}; {sets or 'as set'}) lacks {fit.lacks()}"


def _bigger_gpus(family: str, method: str, settings: Mapping[str, Any], gb: float, count: int, shape: RunShape) -> list[str]:
    """Catalog GPUs larger than ``gb`` on which ``settings`` fit with headroom (smallest first)."""
    from core.gpu import CATALOG
    from core.memory import estimate

    need = estimate(family, method, resolve("settings", settings), num_gpus=count, **shape.options())
    models = sorted({m.name: m for m in CATALOG.values()}.values(), key=lambda m: (m.vram_gb, m.name))
    fitting = [m.name for m in models if m.vram_gb > gb and need.fits(int(m.vram_gb * GIB), headroom=HEADROOM)]
    return fitting[:4]
