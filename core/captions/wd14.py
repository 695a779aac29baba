"""The WD14 booru tagger (SmilingWolf's v3 taggers): its ONNX model through onnxruntime, no torch.

A model is a folder (or a hub repository, fetched with huggingface_hub) holding ``model.onnx`` and
``selected_tags.csv`` (``tag_id,name,category,count``; category 0 general, 4 character, 9 rating).
An image is prepared as the taggers were trained: composited on white, padded to a square on
white, resized (bicubic) to the side the model's input names, float 0–255 in BGR channel order,
NHWC. The model's outputs are probabilities; general and character tags above their thresholds
are kept, rating tags never, and the caption is the tags joined by commas, characters first,
underscores written as spaces except in kaomoji (``^_^``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.captions.captioners import TagOptions
from core.errors import UserError

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
#: Tags that are faces drawn with underscores: kept as they are, not spaced out.
KAOMOJIS = frozenset(["0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"])
#: The padding colour: the taggers saw transparent and letterboxed areas as white.
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Tag:
    """One of the model's outputs: the tag as written in a caption and its category."""

    name: str
    category: int


def written(name: str) -> str:
    """A tag as a caption writes it: underscores as spaces, except in kaomoji."""
    return name if name in KAOMOJIS else name.replace("_", " ")


def read_tags(path: Path) -> list[Tag]:
    """The tags of ``selected_tags.csv``, in the model's output order; UserError for a file that is not one."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [Tag(written(row["name"]), int(row["category"])) for row in rows]
    except (OSError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} is not a tagger's tag list (columns tag_id,name,category,count); download the model's {TAGS_FILE} again") from None


def model_files(model: str) -> tuple[Path, Path]:
    """``model.onnx`` and ``selected_tags.csv`` of a local folder, or of a hub repository (downloaded
    to the hub cache); UserError naming what is missing."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
        if missing:
            raise UserError(
                f"the tagger folder {model} has no {' and no '.join(missing)}; give a folder holding {MODEL_FILE} and {TAGS_FILE} (as in SmilingWolf/wd-vit-tagger-v3) with --model"
            )
        return folder / MODEL_FILE, folder / TAGS_FILE
    if folder.exists() or model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise UserError(f"the tagger model {model} is not a folder; give a folder holding {MODEL_FILE} and {TAGS_FILE} or a hub id such as SmilingWolf/wd-vit-tagger-v3 with --model")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model, MODEL_FILE)), Path(hf_hub_download(model, TAGS_FILE))
    except (OSError, ValueError, EntryNotFoundError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"the tagger {model} could not be downloaded ({reason[:160]}); check the hub id and the network, or give a local folder holding {MODEL_FILE} and {TAGS_FILE} with --model"
        ) from None


def prepare(image: Any, side: int) -> Any:
    """One PIL image as the tagger's input row: on white, padded to a square, ``side``×``side``, BGR float 0–255."""
    import numpy as np
    from PIL import Image

    rgba = image.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (*WHITE, 255))
    flat.alpha_composite(rgba)
    largest = max(flat.size)
    square = Image.new("RGB", (largest, largest), WHITE)
    square.paste(flat.convert("RGB"), ((largest - flat.width) // 2, (largest - flat.height) // 2))
    if largest != side:
        square = square.resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def select(probabilities: Sequence[float], tags: Sequence[Tag], options: TagOptions) -> str:
    """The caption of one image: the character tags, then the general tags, above their thresholds,
    each most likely first, without the excluded and the rating tags."""
    excluded = options.excluded
    kept: dict[int, list[tuple[float, str]]] = {CHARACTER: [], GENERAL: []}
    for tag, probability in zip(tags, probabilities):
        limit = options.character_threshold if tag.category == CHARACTER else options.threshold
        if tag.category in kept and probability >= limit and tag.name.lower() not in excluded:
            kept[tag.category].append((float(probability), tag.name))
    return ", ".join(name for category in (CHARACTER, GENERAL) for _, name in sorted(kept[category], key=lambda item: -item[0]))


class Tagger:
    """A loaded tagger: ``caption(images)`` returns one comma-separated tag list per PIL image."""

    def __init__(self, model: str, options: TagOptions) -> None:
        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile

        onnx_path, tags_path = model_files(model)
        self.tags = read_tags(tags_path)
        self.options = options
        wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]
        try:
            self.session = onnxruntime.InferenceSession(str(onnx_path), providers=wanted)
        except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"the tagger model {onnx_path} could not be loaded ({reason[:160]}); download {MODEL_FILE} again or give another model with --model") from None
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        single = self.session.get_inputs()[0]
        batch, height, width, channels = single.shape
        if not isinstance(height, int) or height != width or channels != 3:
            raise UserError(f"the tagger model {onnx_path} takes {single.shape}, not square BGR images (batch, side, side, 3); give a WD14 v3 tagger with --model")
        self.input, self.side = single.name, height
        #: Images a run may take: 1 for a model exported with a fixed batch of one.
        self.batch = batch if isinstance(batch, int) else None
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.tags):
            raise UserError(f"the tagger's {TAGS_FILE} lists {len(self.tags)} tags but its model gives {outputs[-1]}; put the model's own {TAGS_FILE} beside it")

    def caption(self, images: Sequence[Any]) -> list[str]:
        """The tag lists of a batch of PIL images."""
        import numpy as np

        rows = np.stack([prepare(image, self.side) for image in images])
        step = self.batch or len(rows)
        probabilities = np.concatenate([self.session.run(None, {self.input: rows[i : i + step]})[0] for i in range(0, len(rows), step)])
        return [select(row, self.tags, self.options) for row in probabilities]
