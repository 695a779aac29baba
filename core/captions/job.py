"""The work of ``sdtui caption``: caption a dataset's images that have no caption file, into the
caption layer, reporting progress as events (torch-free: the caller passes the captioner's
loader, core/captions/runtime.py's ``load``, from the captioning process).

An image is captioned when it has no caption file beside it and no edit of the user's in the
layer; a caption the same captioner, model and prompt made before is reused, not made again.
The dataset is only read, except with ``write=True``, which adds ``<stem>.txt`` beside an image
that has none (an existing file is never replaced). Regularisation subsets are left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.captions.captioners import TAGGER, Captioner, TagOptions
from core.captions.captioners import captioner as find_captioner
from core.captions.layer import CaptionerKey, CaptionLayer
from core.dataset.scan import ImageEntry, scan_dataset
from core.errors import UserError

#: Images per batch by default.
DEFAULT_BATCH = 4
Emit = Callable[[dict[str, Any]], None]
#: Loads a captioner: (captioner, model, prompt, tagger options) → an object whose ``caption(images)`` returns captions.
Loader = Callable[[Captioner, str, str, TagOptions], Any]


@dataclass
class CaptionResult:
    """What a run did: images captioned now, captions reused from the layer, files written with ``write``."""

    captioned: int = 0
    reused: int = 0
    kept_edits: int = 0
    written: list[str] = field(default_factory=list)
    not_written: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary as the ``done`` event and ``--json`` carry it."""
        return {
            "type": "done",
            "captioned": self.captioned,
            "reused": self.reused,
            "kept_edits": self.kept_edits,
            "written": self.written,
            "not_written": self.not_written,
            "elapsed_s": round(self.elapsed_s, 2),
        }


def eta_s(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the pace so far (None before the first caption)."""
    return elapsed_s / done * (total - done) if done else None


def uncaptioned(dataset: str | os.PathLike[str], layer: CaptionLayer) -> list[ImageEntry]:
    """The training images without a caption file (their layer caption, if any, on the entry)."""
    scan = scan_dataset(dataset, caption_layer=layer)
    return [image for subset in scan.subsets if not subset.is_reg for image in subset.images if image.caption_source != "file"]


def caption_dataset(
    dataset: str | os.PathLike[str],
    captioner: str,
    load: Loader,
    model: str | None = None,
    prompt: str | None = None,
    write: bool = False,
    batch_size: int = DEFAULT_BATCH,
    emit: Emit = lambda event: None,
    layer: CaptionLayer | None = None,
    tags: TagOptions | None = None,
) -> CaptionResult:
    """Caption the images of ``dataset`` that need it with the captioner ``load`` gives, emitting
    ``start``, ``loading``, ``caption`` and ``done`` events; ``tags`` are the tagger's options."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} is not allowed; give a whole number of at least 1")
    chosen = find_captioner(captioner)
    options = tags or TagOptions()
    key = CaptionerKey(chosen.name, model or chosen.default_model, chosen.default_prompt if prompt is None else prompt, options.key() if chosen.name == TAGGER else "")
    store = layer or CaptionLayer()
    started = time.monotonic()
    result = CaptionResult()
    captions: dict[str, str] = {}
    todo: list[ImageEntry] = []
    for image in uncaptioned(dataset, store):
        if image.content_hash is None:
            continue
        if image.caption_source == "edited" and image.caption is not None:
            result.kept_edits += 1
            captions[image.path] = image.caption
            continue
        before = store.generated(image.content_hash, key)
        if before is not None:
            result.reused += 1
            captions[image.path] = before
        else:
            todo.append(image)
    emit({"type": "start", "total": len(todo), "reused": result.reused, "kept_edits": result.kept_edits, "captioner": key.captioner, "model": key.model, "prompt": key.prompt})
    if todo:
        _run(lambda: load(chosen, key.model, key.prompt, options), key, todo, batch_size, store, captions, result, emit)
    if write:
        _write_files(captions, result)
    result.elapsed_s = time.monotonic() - started
    emit(result.to_json())
    return result


def _run(load: Callable[[], Any], key: CaptionerKey, todo: list[ImageEntry], batch_size: int, store: CaptionLayer, captions: dict[str, str], result: CaptionResult, emit: Emit) -> None:
    emit({"type": "loading", "model": key.model})
    runner = load()
    note = getattr(runner, "note", "")
    if note:
        emit({"type": "note", "text": note})
    started = time.monotonic()
    for first in range(0, len(todo), batch_size):
        batch = todo[first : first + batch_size]
        pictures = [picture(image.path) for image in batch]
        for image, text in zip(batch, runner.caption(pictures)):
            assert image.content_hash is not None
            store.put(image.content_hash, key, text)
            captions[image.path] = text
            result.captioned += 1
            elapsed = time.monotonic() - started
            emit(
                {
                    "type": "caption",
                    "path": image.path,
                    "caption": text,
                    "done": result.captioned,
                    "total": len(todo),
                    "elapsed_s": round(elapsed, 2),
                    "eta_s": _rounded(eta_s(result.captioned, len(todo), elapsed)),
                }
            )


def picture(path: str) -> Any:
    """The image as an RGB PIL image, transparent parts on white (as the taggers were trained)."""
    from PIL import Image

    with Image.open(path) as opened:
        if opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info:
            flat = Image.new("RGBA", opened.size, (255, 255, 255, 255))
            flat.alpha_composite(opened.convert("RGBA"))
            return flat.convert("RGB")
        return opened.convert("RGB")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _write_files(captions: dict[str, str], result: CaptionResult) -> None:
    """``<stem>.txt`` beside each image that has a layer caption; an existing file is never replaced."""
    for path, text in sorted(captions.items()):
        target = Path(path).with_suffix(".txt")
        try:
            with open(target, "x", encoding="utf-8") as handle:
                handle.write(text + "\n")
            result.written.append(str(target))
        except FileExistsError:
            result.not_written.append(str(target))
