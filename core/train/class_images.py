"""DreamBooth prior preservation: the class images, generated with the base model when too few exist.

Generated images go to ``<run dir>/class_images/`` (never into the user's folders) and are
reused when the run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.dataset.buckets import assign_bucket
from core.errors import UserError
from core.train.data import TrainData, TrainItem
from core.train.sampling import png_bytes

log = logging.getLogger(__name__)

FOLDER = "class_images"


def generated_class_images(run_dir: str | Path) -> list[Path]:
    """The class images a previous start of this run already generated, in order."""
    return sorted((Path(run_dir) / FOLDER).glob("class_*.png"))


def prepare_class_images(
    components: Any,
    train_data: TrainData,
    run_dir: str | Path,
    class_prompt: str,
    per_instance: int,
    device: Any = "cpu",
    dtype: Any = None,
    seed: int = 0,
    size: int | None = None,
    steps: int = 25,
    guidance_scale: float = 7.5,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Make sure ``per_instance`` × instance images class images exist and return all their paths.

    Existing class images are the regularisation subsets' images plus those generated earlier
    into ``<run_dir>/class_images/``; the missing ones are generated from ``class_prompt`` at
    ``size`` (default: the training resolution). New images are added to
    ``train_data.class_items`` with ``class_prompt`` as caption. ``progress(ready)`` follows the
    count of class images ready.
    """
    import torch

    from core.atomic import write_atomic

    wanted = per_instance * len(train_data.items)
    existing = [Path(item.path) for item in train_data.class_items]
    known = {str(p) for p in existing}
    generated = generated_class_images(run_dir)
    size = int(size or train_data.settings.get("resolution", 512))
    for path in generated:
        if str(path) not in known and len(existing) < wanted:
            _add_item(train_data, path, class_prompt, size)
            existing.append(path)
    missing = wanted - len(existing)
    if missing <= 0:
        return existing
    if not class_prompt.strip():
        raise UserError(
            f"prior preservation wants {wanted} class images but {len(existing)} exist; set method.class_prompt in run.toml "
            "(e.g. 'a photo of a dog') to generate the rest, or add a regularisation subset with more images"
        )
    log.info("generating %d class images for '%s' into %s", missing, class_prompt, Path(run_dir) / FOLDER)
    pipe = components.pipeline()
    pipe.set_progress_bar_config(disable=True)
    modules = [m for m in (pipe.unet, pipe.vae, *components.text_encoders) if m is not None]
    for module in modules:
        module.to(device)
    start = len(generated)
    made = 0
    with torch.no_grad():
        while made < missing:
            count = min(batch_size, missing - made)
            generator = torch.Generator(device="cpu").manual_seed(seed + start + made)
            images = pipe(
                [class_prompt] * count,
                width=size,
                height=size,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=generator,
            ).images
            for image in images:
                path = Path(run_dir) / FOLDER / f"class_{start + made:05d}.png"
                write_atomic(path, png_bytes(image, class_prompt))
                _add_item(train_data, path, class_prompt, size)
                existing.append(path)
                made += 1
            if progress is not None:
                progress(len(existing))
    return existing


def _add_item(train_data: TrainData, path: Path, caption: str, size: int) -> None:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    bucket = assign_bucket(width, height, train_data.buckets)
    train_data.class_items.append(TrainItem(str(path), caption, width, height, bucket, 1, True, -1))
