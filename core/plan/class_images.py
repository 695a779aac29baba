"""Prior preservation's class images: how many a run uses and how many the trainer generates.

The one rule the planner (``plan --json`` ``dataset.class_images``, the ETA), the wizard's
schedule and review steps and the trainer (``core.train.data.class_images``) all follow:

* the class images *given* are the images of the class (regularisation) subsets;
* DreamBooth with ``method.class_prompt`` and ``settings.generate_class_images`` (default true)
  wants ``settings.class_images_per_instance`` × instance images and generates the missing ones
  with the base model before training (those of an earlier start of the run count as made);
* otherwise (``generate_class_images = false``, no class prompt, another method) the run uses
  the given class images only, each paired in turn with the instance images;
* prior preservation is on when the run has any class image (and is not textual inversion).

Generating costs ``GENERATE_STEPS`` sampler steps with classifier-free guidance per image, at
the training resolution; :func:`core.plan.throughput.sample_seconds_per_image` prices it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.units import duration

#: Sampler steps, guidance scale and batch of the class-image generation (the trainer's pipeline call).
GENERATE_STEPS = 25
GENERATE_GUIDANCE = 7.5
GENERATE_BATCH = 4


@dataclass(frozen=True)
class ClassImages:
    """The class images of a run: ``given`` in the class folders, ``wanted`` in all (``given`` when
    nothing is generated), ``to_generate`` by the trainer before the first step."""

    given: int
    wanted: int
    to_generate: int
    generates: bool

    @property
    def total(self) -> int:
        """Class images the run trains with."""
        return self.given + self.to_generate if self.generates else self.given


def class_images(method: str, settings: Mapping[str, Any], class_prompt: str, given: int, instance_images: int, generated: int = 0) -> ClassImages:
    """The rule of the module docstring; ``generated``: images an earlier start of the run already made."""
    per_instance = int(settings["class_images_per_instance"])
    generates = method == "dreambooth" and bool(settings["generate_class_images"]) and bool(class_prompt.strip()) and per_instance > 0
    if not generates:
        return ClassImages(given, given, 0, False)
    wanted = max(given, per_instance * instance_images)
    return ClassImages(given, wanted, max(0, wanted - given - generated), True)


def describe(images: ClassImages, generate_s: float | None) -> str:
    """One sentence for the plan and the wizard: what the run uses and what generating costs."""
    if images.to_generate:
        cost = f", about {duration(generate_s)} before the first step" if generate_s is not None else ""
        return (
            f"{images.wanted} class images: {images.given} given, {images.to_generate} generated from method.class_prompt{cost} "
            "(settings.generate_class_images = false uses the given ones only; settings.class_images_per_instance sets the count)"
        )
    if images.given:
        return f"{images.given} class images given, each paired in turn with the instance images; none are generated"
    return ""
