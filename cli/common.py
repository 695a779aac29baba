"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.runs_folder import RunsFolder, resolve


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set section.key=value`` (repeatable; a bare key means settings.key)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. --set schedule.max_steps=400 or --set batch_size=2",
    )


GPUS_HELP = "auto, or simulated hardware such as 2x4090, 1x24GB, 8xH100"
RUNS_DIR_HELP = "runs folder (default: $SDTUI_RUNS_DIR, else the one last launched into from this folder, else ./runs)"


def add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--runs-dir`` and ``--gpus``, accepted before the subcommand (``top``) and after it.

    A subcommand's copy has no default, so a value given before the subcommand is kept.
    """
    parser.add_argument("--runs-dir", default=None if top else argparse.SUPPRESS, metavar="DIR", help=RUNS_DIR_HELP)
    parser.add_argument("--gpus", default="auto" if top else argparse.SUPPRESS, metavar="SPEC", help=GPUS_HELP)


def runs_folder(args: argparse.Namespace, own: Path | None = None) -> RunsFolder:
    """The runs folder of this command and why (see core/runs_folder.py); ``own`` is the command's own."""
    return resolve(getattr(args, "runs_dir", None), Path.cwd(), os.environ, own)


def runs_dir(args: argparse.Namespace) -> Path:
    """The runs folder of this command."""
    return runs_folder(args).path


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
