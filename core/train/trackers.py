"""TensorBoard event files in ``<run>/tb/`` and Weights & Biases, through accelerate's trackers.

``[logging] tensorboard`` (default on) and ``wandb_project`` choose the trackers; rank 0 logs
``loss``, ``lr`` and ``images_per_s`` per optimizer step, ``validation/loss`` when [validation] is on, and every sample image (under
``samples/p<index>``), so ``tensorboard --logdir runs/`` shows every run. The dashboard stays
the main view: metrics.jsonl is written whatever is chosen here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.launch.preflight import check_wandb
from core.runs.rundir import TB_DIR


def log_with(logging: Mapping[str, Any], run_dir: Path) -> list[Any]:
    """The trackers for ``Accelerator(log_with=...)``: TensorBoard writing to ``<run>/tb/`` itself, and ``wandb``."""
    from accelerate.tracking import TensorBoardTracker

    check_wandb(logging)
    trackers: list[Any] = [TensorBoardTracker("", str(run_dir / TB_DIR))] if logging.get("tensorboard", True) else []
    if str(logging.get("wandb_project", "")).strip():
        trackers.append("wandb")
    return trackers


def start(acc: Any, logging: Mapping[str, Any], run_name: str) -> None:
    """Open the trackers (every rank calls it; accelerate starts them on rank 0 only)."""
    if acc.log_with:
        project = str(logging.get("wandb_project", "")).strip() or "sdtui"
        acc.init_trackers(project, init_kwargs={"wandb": {"name": run_name}})


def follow(acc: Any, run_dir: Path) -> None:
    """The run folder was moved to ``run_dir``: TensorBoard writes its events there from now on (its
    writer opens the event file by path at every flush, so the old one is closed, errors ignored)."""
    for tracker in acc.trackers if acc.log_with else []:
        if tracker.name != "tensorboard":
            continue
        try:
            tracker.writer.close()
        except OSError:
            pass  # its last events were for the old path
        tracker.logging_dir = str(run_dir / TB_DIR)
        tracker.writer = type(tracker.writer)(tracker.logging_dir)


def log_step(acc: Any, step: int, values: Mapping[str, float | None]) -> None:
    """One optimizer step's scalars (None values left out)."""
    if acc.log_with:
        acc.log({k: v for k, v in values.items() if v is not None}, step=step)


def log_validation(acc: Any, step: int, loss: float) -> None:
    """The validation loss after ``step`` (``validation/loss``, beside the training ``loss``)."""
    if acc.log_with:
        acc.log({"validation/loss": loss}, step=step)


def log_samples(acc: Any, step: int, samples: Sequence[tuple[int, Path]]) -> None:
    """The sample PNGs of one step, one image series per prompt."""
    if not acc.log_with or not acc.is_main_process or not samples:
        return
    import numpy as np
    from PIL import Image

    for tracker in acc.trackers:
        for index, path in samples:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            if tracker.name == "tensorboard":
                tracker.log_images({f"samples/p{index:02d}": array[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({f"samples/p{index:02d}": [array]}, step=step)
