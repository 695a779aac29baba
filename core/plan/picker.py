"""The recipe picker: which recipes fit the smallest GPU with headroom, fastest first.

A recipe's name is never trusted: each candidate's settings (after the user's overrides) go
through the peak-VRAM estimator, and the throughput model ranks those that fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.settings import defaults

from .throughput import images_per_second

#: Free VRAM a recipe must leave on the smallest GPU.
HEADROOM = 0.10
#: Resolutions tried, largest first, when the chosen one does not fit.
_LOWER_RESOLUTIONS = (1024, 896, 768, 640, 512, 384, 256)


@dataclass(frozen=True)
class RecipeFit:
    """One recipe judged for a GPU set: its resolved settings, estimate, fit and speed."""

    recipe: Any
    settings: dict[str, Any]
    estimate: Any
    fits: bool | None
    images_per_second: float | None

    @property
    def name(self) -> str:
        """The recipe's name."""
        return self.recipe.name

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (what the TUI's recipe list and ``--json`` show)."""
        return {
            "recipe": self.recipe.name,
            "title": getattr(self.recipe, "title", ""),
            "summary": getattr(self.recipe, "summary", ""),
            "vram_estimate_gb": round(self.estimate.total_bytes / 1024**3, 2),
            "fits": self.fits,
            "images_per_second": round(self.images_per_second, 3) if self.images_per_second else None,
        }


def resolve_settings(recipe_settings: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, recipe_name: str = "") -> dict[str, Any]:
    """Schema defaults, then the recipe's settings, then the user's overrides."""
    settings = defaults("settings") | dict(recipe_settings) | dict(overrides or {})
    if recipe_name:
        settings["recipe"] = recipe_name
    return settings


def judge(family: str, method: str, settings: Mapping[str, Any], gpus: Any, recipe: Any = None, **options: Any) -> RecipeFit:
    """Estimate one set of settings on the smallest GPU of ``gpus`` (fits is None without a GPU).

    ``options`` go to the estimator: ``backend``, ``zero_stage``, ``offload``, ``prior_preservation``.
    """
    from core.memory import estimate

    smallest = gpus.smallest
    num_gpus = max(1, gpus.count)
    result = estimate(family, method, dict(settings), num_gpus=num_gpus, **options)
    fits = result.fits(smallest.vram_total_bytes, headroom=HEADROOM) if smallest is not None else None
    speed = images_per_second(family, method, settings, smallest) if smallest is not None else None
    return RecipeFit(recipe, dict(settings), result, fits, speed)


def rank_recipes(family: str, method: str, gpus: Any, recipes: Iterable[Any], overrides: Mapping[str, Any] | None = None) -> list[RecipeFit]:
    """Every recipe for ``family`` and ``method``, judged: fitting ones first, fastest first.

    Recipes that do not fit (or cannot be judged without a GPU, ``fits`` None) follow, the
    smallest estimate first.
    """
    fits = [
        judge(family, method, resolve_settings(r.settings, overrides, r.name), gpus, r)
        for r in recipes
        if family in r.families and method in r.methods
    ]
    return sorted(fits, key=_order)


def _order(fit: RecipeFit) -> tuple:
    """Fitting recipes fastest first; the others lightest first (closest to fitting)."""
    if fit.fits:
        return (0, -(fit.images_per_second or 0.0), fit.estimate.total_bytes, fit.name)
    return (1, fit.estimate.total_bytes, fit.name)


def pick_recipes(family: str, method: str, gpus: Any, recipes: Iterable[Any], overrides: Mapping[str, Any] | None = None) -> list[RecipeFit]:
    """The recipes that fit the smallest GPU with at least 10% headroom, fastest first."""
    return [f for f in rank_recipes(family, method, gpus, recipes, overrides) if f.fits]


def suggest_when_nothing_fits(family: str, method: str, gpus: Any, recipes: Iterable[Any], settings: Mapping[str, Any]) -> list[str]:
    """What would fit when nothing does: fewer pixels, LoRA, memory savers, a bigger GPU.

    ``settings`` are the settings that did not fit (the chosen or the smallest recipe's).
    """
    if gpus.smallest is None:
        return []
    recipes = list(recipes)
    gb = gpus.smallest.vram_total_bytes / 1024**3
    tips: list[str] = []
    savers = {"gradient_checkpointing": True, "optimizer": "adamw8bit", "cache_latents": True, "batch_size": 1}
    if not settings.get("train_text_encoder"):
        savers["cache_text_encoder_outputs"] = True
    lean = dict(settings)
    helpful: dict[str, Any] = {}
    for key, value in savers.items():
        if lean.get(key) == value:
            continue
        trial = judge(family, method, lean | {key: value}, gpus)
        if trial.estimate.total_bytes < judge(family, method, lean, gpus).estimate.total_bytes:
            lean[key] = value
            helpful[key] = value
    if helpful and judge(family, method, lean, gpus).fits:
        sets = " ".join(f"--set {k}={str(v).lower()}" for k, v in helpful.items())
        tips.append(f"enable the memory savers: {sets}")
    else:
        resolution = int(settings.get("resolution") or 512)
        with_savers = " with the memory savers (gradient checkpointing, 8-bit AdamW, caches, batch 1)" if helpful else ""
        for lower in (r for r in _LOWER_RESOLUTIONS if r < resolution):
            if judge(family, method, lean | {"resolution": lower}, gpus).fits:
                tips.append(f"train on fewer pixels: resolution {lower} (--set resolution={lower}){with_savers}")
                break
    if method != "lora":
        lora = rank_recipes(family, "lora", gpus, recipes)
        if lora and lora[0].fits:
            tips.append(f"train a LoRA instead of {method} (--method lora, recipe {lora[0].name}), which fits in {gb:.0f} GB")
    bigger = _bigger_gpus(family, method, settings, gb)
    if bigger:
        tips.append(f"use a GPU with more memory: {', '.join(bigger)} would fit these settings")
    return tips


def _bigger_gpus(family: str, method: str, settings: Mapping[str, Any], gb: float) -> list[str]:
    """Catalog GPUs larger than ``gb`` on which ``settings`` fit with headroom (smallest first)."""
    from core.gpu import CATALOG
    from core.memory import estimate

    need = estimate(family, method, dict(settings))
    models = sorted({m.name: m for m in CATALOG.values()}.values(), key=lambda m: (m.vram_gb, m.name))
    fitting = [m.name for m in models if m.vram_gb > gb and need.fits(int(m.vram_gb * 1024**3), headroom=HEADROOM)]
    return fitting[:4]
