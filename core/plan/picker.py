"""The recipe picker: which recipes fit the smallest GPU with headroom, fastest first.

A recipe's name is never trusted: each candidate's settings (after the user's overrides) go
through the peak-VRAM estimator, and the throughput model ranks those that fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.memory.estimator import HEADROOM
from core.settings import resolve
from core.units import GIB

from .throughput import images_per_second

if TYPE_CHECKING:
    from core.memory.estimator import Estimate
    from core.recipes import Recipe

#: Resolutions tried, largest first, when the chosen one does not fit.
_LOWER_RESOLUTIONS = (1024, 896, 768, 640, 512, 384, 256)


@dataclass(frozen=True)
class RecipeFit:
    """One recipe judged for a GPU set: its resolved settings, estimate, fit and speed."""

    recipe: Recipe
    settings: dict[str, Any]
    estimate: Estimate
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
            "vram_estimate_gb": round(self.estimate.total_bytes / GIB, 2),
            "fits": self.fits,
            "images_per_second": round(self.images_per_second, 3) if self.images_per_second else None,
        }


@dataclass(frozen=True)
class RunShape:
    """What decides the fit besides the settings and the GPUs: the same for the picker, the plan,
    the wizard, preflight and the trainer's out-of-memory advice.

    ``prior_preservation``: each instance image is paired with a class image (the batch doubles).
    ``backend``, ``zero_stage``, ``offload``: the distributed setup ([distributed]).
    """

    prior_preservation: bool = False
    backend: str = "ddp"
    zero_stage: int = 2
    offload: bool = False
    #: The ``--model`` variant, which sizes the model where it differs from the family's default (FLUX.2 klein 9B, dev).
    variant: str = ""

    def options(self) -> dict[str, Any]:
        """The estimator's keyword arguments."""
        return {"backend": self.backend, "zero_stage": self.zero_stage, "offload": self.offload, "prior_preservation": self.prior_preservation, "variant": self.variant}


def run_shape(method: str, class_images: int | None, distributed: Mapping[str, Any] | None = None, variant: str = "") -> RunShape:
    """The shape of a run of ``method`` with ``class_images`` class images and this [distributed], of the model ``variant``.

    ``class_images`` None means no dataset is known yet (planning from a family name): then
    DreamBooth is taken to pair class images, as it usually trains.
    """
    dist = resolve("distributed", distributed)
    prior = method == "dreambooth" if class_images is None else uses_prior_preservation(method, class_images)
    return RunShape(prior, str(dist["backend"]), int(dist["zero_stage"]), bool(dist["offload"]), variant)


def uses_prior_preservation(method: str, class_images: int) -> bool:
    """Whether class (regularisation) images are paired with instance images in each step.

    As in kohya's sd-scripts, any method that trains the UNet uses them when there are some;
    textual inversion does not.
    """
    return class_images > 0 and method != "textual_inversion"


def judge(family: str, method: str, settings: Mapping[str, Any], gpus: Any, recipe: Any = None, shape: RunShape = RunShape()) -> RecipeFit:
    """Estimate one set of settings on the smallest GPU of ``gpus`` (fits is None without a GPU).

    ``shape`` (prior preservation, backend) is the run's, so that every caller judges alike.
    """
    from core.memory import estimate

    smallest = gpus.smallest
    num_gpus = max(1, gpus.count)
    resolved = resolve("settings", settings)
    result = estimate(family, method, resolved, num_gpus=num_gpus, **shape.options())
    fits = result.fits(smallest.vram_total_bytes, headroom=HEADROOM) if smallest is not None else None
    speed = images_per_second(family, method, resolved, smallest, variant=shape.variant) if smallest is not None else None
    return RecipeFit(recipe, resolved, result, fits, speed)


def rank_recipes(
    family: str,
    method: str,
    gpus: Any,
    recipes: Iterable[Any],
    overrides: Mapping[str, Any] | None = None,
    shape: RunShape = RunShape(),
) -> list[RecipeFit]:
    """Every recipe for ``family`` and ``method``, judged for a run of ``shape``: fitting ones
    first, fastest first.

    Recipes that do not fit (or cannot be judged without a GPU, ``fits`` None) follow, the
    smallest estimate first.
    """
    fits = [judge(family, method, r.resolved_settings(dict(overrides or {})), gpus, r, shape) for r in recipes if family in r.families and method in r.methods]
    return sorted(fits, key=_order)


def _order(fit: RecipeFit) -> tuple[float | str, ...]:
    """Fitting recipes fastest first; the others lightest first (closest to fitting)."""
    if fit.fits:
        return (0, -(fit.images_per_second or 0.0), fit.estimate.total_bytes, fit.name)
    return (1, fit.estimate.total_bytes, fit.name)


def pick_recipes(
    family: str,
    method: str,
    gpus: Any,
    recipes: Iterable[Any],
    overrides: Mapping[str, Any] | None = None,
    shape: RunShape = RunShape(),
) -> list[RecipeFit]:
    """The recipes that fit the smallest GPU with at least HEADROOM free, fastest first."""
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
    tips: list[str] = []
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


def _bigger_gpus(family: str, method: str, settings: Mapping[str, Any], gb: float, count: int, shape: RunShape) -> list[str]:
    """Catalog GPUs larger than ``gb`` on which ``settings`` fit with headroom (smallest first)."""
    from core.gpu import CATALOG
    from core.memory import estimate

    need = estimate(family, method, resolve("settings", settings), num_gpus=count, **shape.options())
    models = sorted({m.name: m for m in CATALOG.values()}.values(), key=lambda m: (m.vram_gb, m.name))
    fitting = [m.name for m in models if m.vram_gb > gb and need.fits(int(m.vram_gb * GIB), headroom=HEADROOM)]
    return fitting[:4]
