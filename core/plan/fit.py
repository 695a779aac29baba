"""One recipe judged for a run: its settings through the peak-VRAM estimator and the throughput
model (:func:`judge`), the run's shape, and the prices the picker and the composer rank by."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.memory.estimator import HEADROOM
from core.memory.techniques import RAM_HEADROOM
from core.settings import resolve
from core.units import GIB

from .throughput import images_per_second, technique_cost

if TYPE_CHECKING:
    from core.memory.estimator import Estimate
    from core.recipes import Recipe


@dataclass(frozen=True)
class RecipeFit:
    """One recipe judged for a GPU set: its resolved settings (the recipe's, with the picker's
    ``changes``), the VRAM and host-RAM estimate, the fit and the speed.

    ``fits`` is None without a GPU; ``ram_fits`` None when the machine's RAM is unknown.
    ``baseline`` is the recipe's own settings judged alike (what the changes are priced against).
    """

    recipe: Recipe
    settings: dict[str, Any]
    estimate: Estimate
    fits: bool | None
    images_per_second: float | None
    changes: dict[str, Any] = field(default_factory=dict)
    ram_bytes: int | None = None
    ram_fits: bool | None = None
    vram_bytes: int | None = None
    cost_notes: tuple[str, ...] = ()
    baseline: RecipeFit | None = None

    @property
    def name(self) -> str:
        """The recipe's name."""
        return self.recipe.name if self.recipe is not None else ""

    @property
    def ram_need_bytes(self) -> int:
        """Host RAM the run needs on this machine (0 when not estimated)."""
        return self.estimate.host.total_bytes if self.estimate.host is not None else 0

    def techniques(self) -> str:
        """The memory techniques of these settings, e.g. ``fp8_scaled base, 8 blocks swapped``
        (empty when none is used)."""
        return describe_techniques(self.settings)

    def slowdown(self) -> float | None:
        """How many times slower than the recipe's own settings, when the picker changed them
        and both speeds are known."""
        base = self.baseline
        if not self.changes or base is None or not base.images_per_second or not self.images_per_second:
            return None
        return base.images_per_second / self.images_per_second

    def lacks(self) -> str:
        """What a combination that does not fit lacks (VRAM, host RAM), in words; empty when it fits."""
        parts = []
        if self.vram_bytes and not self.estimate.fits(self.vram_bytes):
            usable = self.vram_bytes * (1 - HEADROOM)
            parts.append(f"{(self.estimate.total_bytes - usable) / GIB:.1f} GiB of VRAM (needs {self.estimate.gb:.1f}, {usable / GIB:.1f} usable)")
        if self.ram_fits is False and self.ram_bytes:
            usable = self.ram_bytes * (1 - RAM_HEADROOM)
            parts.append(f"{(self.ram_need_bytes - usable) / GIB:.1f} GiB of RAM (needs {self.ram_need_bytes / GIB:.1f}, {usable / GIB:.1f} usable)")
        return " and ".join(parts)

    def explain(self) -> str:
        """One line on the choice and its cost, e.g. ``fp8_scaled base, 8 blocks swapped: fits
        15.1 of 16 GiB, RAM 21 of 64 GiB, about 1.4× slower than flux-lora-24gb as written (27.3 GiB)``."""
        what = self.techniques() or "no memory technique"
        changed = ", ".join(f"{k} {setting_text(self.baseline.settings.get(k)) if self.baseline else '?'} → {setting_text(v)}" for k, v in self.changes.items() if k not in TECHNIQUE_KEYS)
        line = what + (f" ({changed})" if changed else "")
        if self.vram_bytes:
            verdict = "fits" if self.fits else "does not fit"
            line += f": {verdict} {self.estimate.gb:.1f} of {self.vram_bytes / GIB:.0f} GiB"
        else:
            line += f": about {self.estimate.gb:.1f} GiB"
        if self.ram_need_bytes:
            line += f", RAM {self.ram_need_bytes / GIB:.1f}" + (f" of {self.ram_bytes / GIB:.0f} GiB" if self.ram_bytes else " GiB")
        slower = self.slowdown()
        if slower is not None and self.baseline is not None:
            pace = f"about {slower:.1f}× slower" if slower >= 1.05 else f"about {1 / slower:.1f}× faster" if slower <= 0.95 else "about as fast"
            line += f", {pace} {'as' if pace == 'about as fast' else 'than'} {self.baseline.name or 'the settings'} as written ({self.baseline.estimate.gb:.1f} GiB)"
        return line

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (what the TUI's recipe list and ``--json`` show)."""
        return {
            "recipe": self.name,
            "title": getattr(self.recipe, "title", ""),
            "summary": getattr(self.recipe, "summary", ""),
            "vram_estimate_gb": round(self.estimate.total_bytes / GIB, 2),
            "ram_estimate_gb": round(self.ram_need_bytes / GIB, 2),
            "fits": self.fits,
            "ram_fits": self.ram_fits,
            "images_per_second": round(self.images_per_second, 3) if self.images_per_second else None,
            "changes": dict(self.changes),
            "techniques": self.techniques(),
            "slowdown": round(s, 2) if (s := self.slowdown()) is not None else None,
            "explain": self.explain(),
            "cost_notes": list(self.cost_notes),
        }


def setting_text(value: Any) -> str:
    """A setting's value as ``--set`` and the plan write it."""
    return str(value).lower() if isinstance(value, bool) else str(value)


#: Speeds within this share of each other count as equal (the less lossy precision ranks first).
SAME_SPEED = 0.02
#: How lossy a stored precision is (0: none).
LOSS = {"fp8_scaled": 1, "int8": 1, "fp8": 2, "nf4": 3}
#: What one step of precision loss must buy in speed to be chosen: a quantized base costs
#: fidelity, so it wins only where it is this much faster per LOSS point than the lossless
#: combination that fits, or where nothing lossless fits at all (T5-XXL's caption pass on 8 or
#: 12 GB). Streaming bf16 blocks is about free where a block's compute outlasts its copy (FLUX.1
#: at 1024 px on 16 and 24 GB cards: the bf16 base with more blocks swapped is as fast as an fp8
#: one, whose weights are upcast at every use), so there the lossless base is kept; see
#: tests/test_picker_choice.py.
LOSS_PRICE = 1.5


def worth_speed(fit: RecipeFit) -> float:
    """A combination's speed less the price of its precision loss (images/s ÷ LOSS_PRICE^loss)."""
    return (fit.images_per_second or 0.0) / LOSS_PRICE ** precision_loss(fit.settings)


def precision_loss(settings: Mapping[str, Any]) -> int:
    """How lossy the base and text-encoder precisions of ``settings`` are together (0: none)."""
    return LOSS.get(str(settings.get("base_precision")), 0) + LOSS.get(str(settings.get("text_encoder_precision")), 0)


#: The settings that name a memory technique (described together, not as changes).
TECHNIQUE_KEYS = ("base_precision", "text_encoder_precision", "blocks_to_swap")


def describe_techniques(settings: Mapping[str, Any]) -> str:
    """``fp8_scaled base, int8 text encoders, 8 blocks swapped`` for the techniques in use."""
    parts = []
    base = str(settings.get("base_precision") or "auto")
    if base != "auto":
        parts.append(f"{base} base")
    encoders = str(settings.get("text_encoder_precision") or "auto")
    if encoders != "auto":
        parts.append(f"{encoders} text encoders")
    swap = int(settings.get("blocks_to_swap", 0) or 0)
    if swap:
        parts.append(f"{swap} blocks swapped")
    return ", ".join(parts)


@dataclass(frozen=True)
class RunShape:
    """What decides the fit besides the settings and the GPUs: the same for the picker, the plan,
    the wizard, preflight and the trainer's out-of-memory advice.

    ``prior_preservation``: each instance image is paired with a class image (the batch doubles).
    ``backend``, ``zero_stage``, ``offload``: the distributed setup ([distributed]).
    ``ram_bytes``: the machine's RAM (None: unknown, not judged). ``sampling``: the run draws
    samples (the encoders and the VAE come back to the GPU for them).
    """

    prior_preservation: bool = False
    backend: str = "ddp"
    zero_stage: int = 2
    offload: bool = False
    ram_bytes: int | None = None
    sampling: bool = False

    def options(self) -> dict[str, Any]:
        """The estimator's keyword arguments."""
        return {"backend": self.backend, "zero_stage": self.zero_stage, "offload": self.offload, "prior_preservation": self.prior_preservation, "sampling": self.sampling}


def run_shape(method: str, class_images: int | None, distributed: Mapping[str, Any] | None = None, ram_bytes: int | None = None, sampling: bool = False) -> RunShape:
    """The shape of a run of ``method`` with ``class_images`` class images and this [distributed],
    on a machine with ``ram_bytes`` of RAM (None: unknown), drawing samples or not.

    ``class_images`` None means no dataset is known yet (planning from a family name): then
    DreamBooth is taken to pair class images, as it usually trains.
    """
    dist = resolve("distributed", distributed)
    prior = method == "dreambooth" if class_images is None else uses_prior_preservation(method, class_images)
    return RunShape(prior, str(dist["backend"]), int(dist["zero_stage"]), bool(dist["offload"]), ram_bytes, sampling)


def uses_prior_preservation(method: str, class_images: int) -> bool:
    """Whether class (regularisation) images are paired with instance images in each step.

    As in kohya's sd-scripts, any method that trains the UNet uses them when there are some;
    textual inversion does not.
    """
    return class_images > 0 and method != "textual_inversion"


def judge(family: str, method: str, settings: Mapping[str, Any], gpus: Any, recipe: Any = None, shape: RunShape = RunShape()) -> RecipeFit:
    """Estimate one set of settings on the smallest GPU of ``gpus`` (fits is None without a GPU)
    and, when ``shape`` knows the machine's RAM, its host memory.

    ``shape`` (prior preservation, backend, RAM) is the run's, so that every caller judges alike.
    A combination whose host memory does not fit the RAM does not fit.
    """
    from core.memory import estimate

    smallest = gpus.smallest
    num_gpus = max(1, gpus.count)
    resolved = resolve("settings", settings)
    result = estimate(family, method, resolved, num_gpus=num_gpus, **shape.options())
    ram_fits = result.host.fits(shape.ram_bytes) if (shape.ram_bytes and result.host is not None) else None
    vram = smallest.vram_total_bytes if smallest is not None else None
    fits = (result.fits(vram, headroom=HEADROOM) and ram_fits is not False) if vram is not None else None
    speed = images_per_second(family, method, resolved, smallest) if smallest is not None else None
    notes = technique_cost(family, method, resolved, smallest).notes if smallest is not None else ()
    return RecipeFit(recipe, resolved, result, fits, speed, ram_bytes=shape.ram_bytes, ram_fits=ram_fits, vram_bytes=vram, cost_notes=notes)
