"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set section.key=value`` (repeatable; a bare key means settings.key)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. --set schedule.max_steps=400 or --set batch_size=2",
    )


def runs_dir(args: argparse.Namespace) -> Path:
    """The runs folder: --runs-dir, else $SDTUI_RUNS_DIR, else ./runs."""
    value = getattr(args, "runs_dir", None) or os.environ.get("SDTUI_RUNS_DIR") or "runs"
    return Path(value).expanduser().resolve()


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
