"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.runs.folder import RunsFolder, resolve


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: machine-readable output."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set section.key=value`` (repeatable; a bare key means settings.key)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
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
    """The runs folder of this command and why (see core/runs/folder.py); ``own`` is the command's own.

    UserError when it is there but is a file or cannot be listed (a missing one just has no runs yet).
    """
    folder = resolve(getattr(args, "runs_dir", None), Path.cwd(), os.environ, own)
    if folder.path.exists() and not folder.path.is_dir():
        raise UserError(f"the runs folder {folder.path} ({folder.reason}) is a file, not a folder; give a folder with --runs-dir DIR")
    if folder.path.is_dir() and not os.access(folder.path, os.R_OK | os.X_OK):
        raise UserError(f"the runs folder {folder.path} ({folder.reason}) cannot be read; make it readable (chmod u+rx) or give another with --runs-dir DIR")
    return folder


def writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder this user can write into, made if missing; UserError naming ``what`` otherwise."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {folder} cannot be created ({exc.strerror or exc}); give a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder} is not writable; make it writable (chmod u+w) or give another folder")
    return folder


def whole_number(option: str, minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for ``option``: a whole number of at least ``minimum``.

    A bad value is a UserError (one sentence, exit 2), which argparse lets through.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise UserError(f"{option} {text} is not allowed; give a whole number of at least {minimum}")
        return value

    return parse


def amount(option: str) -> Callable[[str], float]:
    """An argparse ``type`` for ``option``: a finite number of at least 0 (seconds, a price); else a UserError."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{option} {text} is not allowed; give a finite number of at least 0")
        return value

    return parse


#: What to do about an operating-system error on a path the user gave, by errno.
_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "it is a folder; give a file",
    errno.EACCES: "make it accessible to you (chmod) or choose another path",
    errno.EPERM: "make it accessible to you (chmod) or choose another path",
    errno.EROFS: "it is on a read-only file system; copy it somewhere writable or choose another path",
    errno.ENOSPC: "free some disk space there or choose another path",
    errno.EDQUOT: "free some of your disk quota or choose another path",
}


def describe_os_error(exc: OSError) -> str:
    """An operating-system error as the one sentence the CLI prints: the path, what failed, the fix."""
    where = exc.filename if exc.filename is not None else "a file"
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and its permissions")
    return f"{where}: {exc.strerror or exc}; {fix}"


def runs_dir(args: argparse.Namespace) -> Path:
    """The runs folder of this command."""
    return runs_folder(args).path


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
