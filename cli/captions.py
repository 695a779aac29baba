"""``sdtui caption``: caption a dataset's images that have no caption, into the caption layer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.common import add_json, amount, whole_number

#: Captions printed in full as they come (a preview); after that only the progress.
PREVIEW = 5


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``caption``."""
    from core.captions.captioners import DEFAULT, NAMES, TagOptions
    from core.captions.job import DEFAULT_BATCH

    caption = sub.add_parser(
        "caption",
        help="caption the images without a caption with a local model (into the cache; the dataset is not changed)",
        description="Captions go to the caption layer in the cache folder, which the scan and the trainer read after "
        "the dataset's own caption files; --write also writes .txt files beside the images, never replacing one.",
    )
    caption.add_argument("dataset", metavar="DATASET", help="the dataset folder")
    caption.add_argument("--captioner", default=DEFAULT, metavar="NAME", help=f"{' | '.join(NAMES)} (default {DEFAULT})")
    caption.add_argument("--model", default=None, metavar="PATH_OR_HUB_ID", help="the captioner's model folder or hub id (default: the captioner's own)")
    caption.add_argument("--prompt", default=None, metavar="TEXT", help="what to ask the captioner (qwen-vl; Florence-2 takes a task such as <MORE_DETAILED_CAPTION>)")
    caption.add_argument("--write", action="store_true", help="also write <image>.txt beside each image that has no caption file")
    caption.add_argument(
        "--threshold", type=amount("--threshold"), default=TagOptions.threshold, metavar="P", help=f"wd14: keep general tags at least this likely (default {TagOptions.threshold})"
    )
    caption.add_argument(
        "--character-threshold",
        type=amount("--character-threshold"),
        default=TagOptions.character_threshold,
        metavar="P",
        help=f"wd14: keep character tags at least this likely (default {TagOptions.character_threshold})",
    )
    caption.add_argument("--exclude", default="", metavar="TAGS", help="wd14: comma-separated tags never to write, e.g. 'simple background, white background'")
    caption.add_argument("--batch-size", type=whole_number("--batch-size", 1), default=DEFAULT_BATCH, metavar="N", help=f"images per batch (default {DEFAULT_BATCH})")
    add_json(caption)
    caption.set_defaults(func=cmd_caption)


def cmd_caption(args: argparse.Namespace) -> int:
    """Caption the dataset; with --json one JSON event a line (start, loading, note, caption, done)."""
    from core.captions.captioners import TagOptions, parse_tags
    from core.captions.job import caption_dataset
    from core.captions.runtime import load

    tags = TagOptions(args.threshold, args.character_threshold, parse_tags(args.exclude))
    emit = _json_line if args.json else _Printer()
    caption_dataset(args.dataset, args.captioner, load, args.model, args.prompt, args.write, args.batch_size, emit, tags=tags)
    return 0


def _json_line(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Printer:
    """Progress for a person: the first captions in full, then a count with the time left."""

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            reused = f"; {event['reused']} reused from the caption layer" if event["reused"] else ""
            print(f"{event['total']} images to caption with {event['captioner']} ({event['model']}){reused}", flush=True)
        elif kind == "loading":
            print(f"loading {event['model']}…", flush=True)
        elif kind == "note":
            print(event["text"], flush=True)
        elif kind == "caption":
            if event["done"] <= PREVIEW:
                print(f"  {Path(event['path']).name}: {event['caption']}", flush=True)
            if event["done"] == event["total"] or event["done"] % 10 == 0:
                print(f"{event['done']}/{event['total']} captioned, {_duration(event['eta_s'])} left", flush=True)
        elif kind == "done":
            print(
                f"done: {event['captioned']} captioned, {event['reused']} reused, {event['kept_edits']} edits kept "
                f"({_duration(event['elapsed_s'])}); they are in the caption layer"
                + (f"; wrote {len(event['written'])} .txt files" if event["written"] else "")
                + (f"; {len(event['not_written'])} .txt files already there, left alone" if event["not_written"] else ""),
                flush=True,
            )
