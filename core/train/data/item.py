"""One item of the trainer's data (an instance or a class image with its caption and bucket)."""

from __future__ import annotations

from dataclasses import dataclass

from core.dataset.buckets import Bucket

#: The two kinds of item: an instance image of the dataset, a class image (prior preservation).
INSTANCE, CLASS = "i", "c"


@dataclass(frozen=True)
class TrainItem:
    """One image of the dataset with its caption, size and bucket."""

    path: str
    caption: str
    width: int
    height: int
    bucket: Bucket
    repeats: int
    is_reg: bool
    subset: int
    #: The image's mask file in [dataset] mask_dir ("" = none: the alpha channel or the whole image).
    mask: str = ""
