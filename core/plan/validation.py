"""The validation loss in the plan: which images it measures, how often, and what it costs.

The held-out images come from the shared split (``core.plan.schedule.held_out``), so the
planner's items per epoch are the trainer's; the trainer (``core.train.validation``) measures
at the same :data:`TIMESTEP_SHARES` and :func:`core.plan.schedule.validation_steps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .schedule import held_out, validation_steps

#: Where on the schedule the validation loss is measured: sd-scripts' timesteps 10, 350, 500,
#: 650 and 990 of 1000 (σ of the same shares for flow-matching families).
TIMESTEP_SHARES = (0.01, 0.35, 0.5, 0.65, 0.99)
#: A forward pass without backward costs about this share of a training image (forward + backward).
FORWARD_SHARE = 1 / 3


@dataclass(frozen=True)
class ValidationPlan:
    """The validation of a run: held-out training images (by path), folder images, how often."""

    held: frozenset[str]
    folder_images: int
    every_n_steps: int
    source: str

    @property
    def images(self) -> int:
        """Images the validation loss is the mean over."""
        return len(self.held) + self.folder_images

    def runs(self, total_steps: int) -> int:
        """How many times the run computes the validation loss."""
        return len(validation_steps(total_steps, self.every_n_steps)) if self.images else 0

    def seconds(self, total_steps: int, ips_per_gpu: float | None, gpus: int) -> float | None:
        """Time the validation adds to a run of ``total_steps`` on ``gpus`` GPUs (None without a speed)."""
        if not ips_per_gpu:
            return None
        forwards = self.runs(total_steps) * self.images * len(TIMESTEP_SHARES)
        return forwards * FORWARD_SHARE / (ips_per_gpu * max(1, gpus))

    def to_json(self, total_steps: int, ips_per_gpu: float | None, gpus: int) -> dict[str, Any]:
        """The plan's ``validation`` entry for the run's row."""
        cost = self.seconds(total_steps, ips_per_gpu, gpus)
        return {
            "source": self.source,
            "images": self.images,
            "held_out": len(self.held),
            "folder_images": self.folder_images,
            "every_n_steps": self.every_n_steps,
            "runs": self.runs(total_steps),
            "timesteps": len(TIMESTEP_SHARES),
            "cost_s": round(cost, 1) if cost is not None else None,
        }


def plan_validation(section: Mapping[str, Any], scan: Any, settings: Mapping[str, Any]) -> ValidationPlan | None:
    """The validation of ``[validation]`` over ``scan``'s training images (None when it is off)."""
    split, folder = float(section["split"]), str(section["folder"]).strip()
    if split <= 0 and not folder:
        return None
    paths = [image.path for subset in scan.subsets if not subset.is_reg for image in subset.images] if scan is not None else []
    held = frozenset(held_out(paths, split))
    count = _folder_images(folder, settings) if folder else 0
    source = "+".join(name for name, on in (("split", split > 0), ("folder", bool(folder))) if on)
    return ValidationPlan(held, count, int(section["every_n_steps"]), source)


def _folder_images(folder: str, settings: Mapping[str, Any]) -> int:
    from core.dataset.scan import scan_dataset

    return scan_dataset(folder, resolution=int(settings["resolution"]), bucket_settings=settings).images
