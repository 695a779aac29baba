"""The composer: for one recipe on one GPU set, the fastest combination of base precision, block
swap, gradient checkpointing, batch and resolution that fits with headroom (docs/planning.md).

A recipe is the ceiling: the composer only turns its knobs towards less memory (a quantized
base, more blocks swapped, checkpointing on, a smaller batch, then fewer pixels), never past
what the user set by hand (``overrides``). Among the combinations that fit (VRAM with
HEADROOM, and host RAM when the machine's is known) the throughput model's fastest wins, a
quantized base priced by its loss (picker.LOSS_PRICE); equal speeds go to the less lossy. When none fits, the lightest combination is returned
(``fits`` False) so that the plan can say what it lacks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from core.memory.estimator import HEADROOM
from core.memory.techniques import QUANTIZED, RAM_HEADROOM, max_swappable
from core.settings import technique_problem

from .fit import SAME_SPEED, RecipeFit, RunShape, judge, precision_loss, worth_speed

#: The base precisions tried for a frozen denoiser (LoRA), least lossy first.
BASE_STEPS = ("fp8_scaled", "int8", "nf4")
#: The text-encoder precisions tried when the encoders' own peak (caching, sampling) does not fit.
ENCODER_STEPS = ("int8", "nf4")
#: Resolutions tried, largest first, when nothing fits at the recipe's.
LOWER_RESOLUTIONS = (1024, 896, 768, 640, 512, 384, 256)


def compose(family: str, method: str, gpus: Any, recipe: Any, overrides: Mapping[str, Any] | None, shape: RunShape) -> RecipeFit:
    """The recipe's fastest fitting combination on ``gpus`` (``changes``: what differs from the
    recipe as written, ``baseline``: the recipe as written, judged alike); the recipe as written
    without a GPU; the lightest combination, not fitting, when none fits."""
    fixed = set(overrides or {})
    start = recipe.resolved_settings(dict(overrides or {}))
    written = judge(family, method, start, gpus, recipe, shape)
    if gpus.smallest is None:
        return written
    resolutions = [int(start["resolution"])]
    if "resolution" not in fixed:
        resolutions += [r for r in LOWER_RESOLUTIONS if r < int(start["resolution"])]
    lightest: RecipeFit | None = None
    for resolution in resolutions:
        fitting: list[RecipeFit] = []
        for candidate in _candidates(family, method, gpus, recipe, start | {"resolution": resolution}, fixed, shape):
            if candidate.fits:
                fitting.append(candidate)
            elif lightest is None or shortfall(candidate) < shortfall(lightest):
                lightest = candidate
        if fitting:
            return _finish(max(fitting, key=lambda f: _score(f, fitting)), start, written)
    return _finish(lightest or written, start, written)


def shortfall(fit: RecipeFit) -> int:
    """Bytes a combination lacks: VRAM beyond the usable share, plus host RAM beyond its share
    (the closest combination lacks the least; the first of equals changes the least)."""
    vram = max(0, fit.estimate.total_bytes - int((fit.vram_bytes or 0) * (1 - HEADROOM))) if fit.vram_bytes else 0
    ram = max(0, fit.ram_need_bytes - int(fit.ram_bytes * (1 - RAM_HEADROOM))) if fit.ram_bytes else 0
    return vram + ram


def _finish(fit: RecipeFit, start: dict[str, Any], written: RecipeFit) -> RecipeFit:
    changes = {key: value for key, value in fit.settings.items() if start.get(key) != value}
    return replace(fit, changes=changes, baseline=written)


def _score(fit: RecipeFit, group: list[RecipeFit]) -> tuple[float, ...]:
    """Fastest first once precision loss is priced in (``worth_speed``); within SAME_SPEED of the
    best, the less lossy, then the faster, then the lighter."""
    top = max(worth_speed(f) for f in group)
    close = worth_speed(fit) >= top * (1 - SAME_SPEED)
    return (1.0 if close else 0.0, -precision_loss(fit.settings) if close else worth_speed(fit), fit.images_per_second or 0.0, -fit.estimate.total_bytes)


def _candidates(family: str, method: str, gpus: Any, recipe: Any, start: dict[str, Any], fixed: set[str], shape: RunShape) -> Iterator[RecipeFit]:
    """For each base precision × checkpointing × batch: the fewest swapped blocks that fit the VRAM
    (and the least compressed encoders whose peak fits), judged with the host RAM."""
    for base in _bases(method, start, fixed):
        for checkpointing in _choices(start, fixed, "gradient_checkpointing", [True]):
            for batch in _batches(start, fixed):
                settings = start | {"base_precision": base, "gradient_checkpointing": checkpointing, "batch_size": batch}
                yield _least_swap(family, method, gpus, recipe, settings, fixed, shape)


def _bases(method: str, start: dict[str, Any], fixed: set[str]) -> list[str]:
    """The recipe's base precision, then (LoRA on a frozen base) the quantized ones more compressed."""
    own = str(start.get("base_precision") or "auto")
    if method != "lora" or "base_precision" in fixed:
        return [own]
    steps = list(BASE_STEPS)
    if own in QUANTIZED:
        steps = steps[steps.index(own) + 1 :] if own in steps else []
    return [own, *steps]


def _choices(start: dict[str, Any], fixed: set[str], key: str, lighter: list[Any]) -> list[Any]:
    own = start[key]
    return [own] if key in fixed else [own, *(v for v in lighter if v != own)]


def _batches(start: dict[str, Any], fixed: set[str]) -> list[int]:
    """The recipe's batch, then halved down to 1."""
    batch = int(start["batch_size"])
    if "batch_size" in fixed:
        return [batch]
    out = [batch]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def _least_swap(family: str, method: str, gpus: Any, recipe: Any, settings: dict[str, Any], fixed: set[str], shape: RunShape) -> RecipeFit:
    """These settings with the fewest blocks swapped (at least the recipe's) and the least
    compressed text encoders that fit the GPU; the lightest of them when none does."""
    encoders = [settings.get("text_encoder_precision") or "auto"]
    if "text_encoder_precision" not in fixed and not settings["train_text_encoder"] and method != "textual_inversion":
        encoders += [p for p in ENCODER_STEPS if p != encoders[0]]
    for encoder in encoders:
        trial = settings | {"text_encoder_precision": encoder}
        fit = judge(family, method, trial, gpus, recipe, shape)
        if not fit.fits and _vram_short(fit):
            fit = _swap_until_fits(family, method, gpus, recipe, trial, fixed, shape, fit)
        if fit.fits or fit.estimate.phase not in ("caching", "sampling") or encoder == encoders[-1]:
            break
    return fit


def _vram_short(fit: RecipeFit) -> bool:
    return fit.vram_bytes is not None and not fit.estimate.fits(fit.vram_bytes)


def _swap_until_fits(family: str, method: str, gpus: Any, recipe: Any, settings: dict[str, Any], fixed: set[str], shape: RunShape, unswapped: RecipeFit) -> RecipeFit:
    """The fewest swapped blocks with which ``settings`` fit the VRAM (a binary search: more
    blocks away never need more VRAM), or all of them when even that does not fit; not where
    core.settings.technique_problem refuses block swap (torch_compile, FSDP, a full fine-tune
    under DeepSpeed or on several GPUs). A full fine-tune's swapped blocks take their gradients
    and optimizer state to host memory, so more blocks need more RAM: the fewest that fit the
    VRAM is also the least RAM, and a combination short of RAM does not fit."""
    own = int(settings.get("blocks_to_swap", 0) or 0)
    top = max_swappable(family)
    if "blocks_to_swap" in fixed or top <= own or technique_problem(method, settings | {"blocks_to_swap": top}, shape.backend, max(1, gpus.count)):
        return unswapped
    most = judge(family, method, settings | {"blocks_to_swap": top}, gpus, recipe, shape)
    if _vram_short(most):
        return most
    low, high = own, top
    while high - low > 1:
        middle = (low + high) // 2
        if _vram_short(judge(family, method, settings | {"blocks_to_swap": middle}, gpus, recipe, shape)):
            low = middle
        else:
            high = middle
    return judge(family, method, settings | {"blocks_to_swap": high}, gpus, recipe, shape)
