"""The caption layer: generated and edited captions beside the scan caches, never in the dataset.

One small JSON file per image content (``captions/<hash[:2]>/<hash>.json`` in the user's cache
folder), so a caption survives a rename and is found again for a copy of the image. A file holds
the captions of every captioner run on that image (keyed by captioner, model and prompt, so a
second run with the same choice reuses them) and the user's own edit, which wins. Files are
written atomically and read defensively (a damaged one counts as empty).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import userdirs
from core.atomic import read_json, write_atomic
from core.dataset.images import content_digest

_VERSION = 1
#: Where a caption of the scan came from: a caption file beside the image, a captioner, the user's edit in the wizard.
SOURCES = ("file", "generated", "edited")


def content_hash(path: str | Path) -> str:
    """The image's content hash (blake2b of the whole file, as the scan's duplicate check)."""
    with open(path, "rb") as handle:
        return content_digest(handle)


@dataclass(frozen=True)
class CaptionerKey:
    """What made a caption: the captioner, its model (path or hub id), its prompt and its options
    (the tagger's thresholds and exclusions, :meth:`core.captions.captioners.TagOptions.key`)."""

    captioner: str
    model: str
    prompt: str = ""
    options: str = ""

    @property
    def id(self) -> str:
        """A short stable key of the four (of the three without options)."""
        text = json.dumps([self.captioner, self.model, self.prompt, *([self.options] if self.options else [])])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LayerCaption:
    """The caption the layer gives an image: its text and its source (``generated`` or ``edited``)."""

    text: str
    source: str
    captioner: str = ""


def layer_dir() -> Path:
    """``captions/`` in the user's cache folder, beside ``scan/``."""
    return userdirs.cache_dir() / "captions"


class CaptionLayer:
    """Reads and writes the layer under ``root`` (default :func:`layer_dir`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else layer_dir()

    def file(self, digest: str) -> Path:
        """The layer file of one image content."""
        return self.root / digest[:2] / f"{digest}.json"

    def _read(self, digest: str) -> dict[str, Any]:
        data = read_json(self.file(digest), {})
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("generated"), dict):
            return {"version": _VERSION, "generated": {}}
        return data

    def _write(self, digest: str, data: dict[str, Any]) -> None:
        write_atomic(self.file(digest), json.dumps(data, ensure_ascii=False, indent=1))

    def caption(self, digest: str) -> LayerCaption | None:
        """The user's edit if there is one, else the newest generated caption, else None."""
        data = self._read(digest)
        edited = data.get("edited")
        if isinstance(edited, dict) and isinstance(edited.get("caption"), str):
            return LayerCaption(edited["caption"], "edited")
        entries = [e for e in data["generated"].values() if isinstance(e, dict) and isinstance(e.get("caption"), str)]
        if not entries:
            return None
        newest = max(entries, key=lambda e: float(e.get("at") or 0))
        return LayerCaption(newest["caption"], "generated", str(newest.get("captioner") or ""))

    def generated(self, digest: str, key: CaptionerKey) -> str | None:
        """The caption this captioner (model, prompt) made for the image before, or None."""
        entry = self._read(digest)["generated"].get(key.id)
        return entry["caption"] if isinstance(entry, dict) and isinstance(entry.get("caption"), str) else None

    def put(self, digest: str, key: CaptionerKey, caption: str) -> None:
        """Store a generated caption (atomically)."""
        data = self._read(digest)
        data["generated"][key.id] = {
            "caption": caption,
            "captioner": key.captioner,
            "model": key.model,
            "prompt": key.prompt,
            **({"options": key.options} if key.options else {}),
            "at": time.time(),
        }
        self._write(digest, data)

    def edit(self, digest: str, caption: str) -> None:
        """Store the user's own edit of the image's caption; it wins over every generated one."""
        data = self._read(digest)
        data["edited"] = {"caption": caption.strip(), "at": time.time()}
        self._write(digest, data)
