"""Which runs folder a command uses, and remembering where runs were launched from.

The rule, first match wins:

1. ``--runs-dir DIR``;
2. ``$SDTUI_RUNS_DIR``;
3. the command's own folder where it has one (``sdtui demo`` keeps its runs in ``DIR/runs``);
4. the runs folder the last run launched from this working folder went into (remembered in the
   user's state folder, ``$XDG_STATE_HOME/sdtui/runs-folders.json``), if it still exists;
5. ``./runs``.

So after ``make demo`` (runs in ``demo/runs``), ``sdtui runs``, ``sdtui attach`` and the home
screen started in the same folder find the demo's runs; every command that lists runs says
which folder it read and why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core import userdirs
from core.atomic import write_json_atomic

ENV = "SDTUI_RUNS_DIR"
DEFAULT = "runs"
#: Working folders remembered at most (the oldest are forgotten first).
KEEP = 200

#: Why a folder was chosen, as the commands print it.
OPTION, ENVIRONMENT, OWN, REMEMBERED, DEFAULTED = "--runs-dir", ENV, "own", "remembered", "default"
_REASONS = {
    OPTION: "from --runs-dir",
    ENVIRONMENT: f"from ${ENV}",
    OWN: "the demo's",
    REMEMBERED: "last used from this folder",
    DEFAULTED: "the default",
}


@dataclass(frozen=True)
class RunsFolder:
    """The runs folder in use and why (one of OPTION, ENVIRONMENT, OWN, REMEMBERED, DEFAULTED)."""

    path: Path
    source: str

    @property
    def reason(self) -> str:
        """Why this folder, in words: "from --runs-dir", "last used from this folder" …"""
        return _REASONS[self.source]


def memory_file() -> Path:
    """The file that maps working folders to the runs folder last launched into from there."""
    return userdirs.state_dir() / "runs-folders.json"


def _remembered_folders() -> dict[str, str]:
    try:
        doc = json.loads(memory_file().read_bytes())
    except (OSError, ValueError):
        return {}
    folders = doc.get("folders") if isinstance(doc, dict) else None
    if not isinstance(folders, dict):
        return {}
    return {k: v for k, v in folders.items() if isinstance(k, str) and isinstance(v, str)}


def remembered(cwd: str | os.PathLike[str]) -> Path | None:
    """The runs folder last launched into from ``cwd``, if it is still a folder."""
    value = _remembered_folders().get(str(Path(cwd).resolve()))
    return Path(value) if value and Path(value).is_dir() else None


def remember(runs_dir: str | os.PathLike[str], cwd: str | os.PathLike[str]) -> None:
    """Note that a run was launched into ``runs_dir`` from ``cwd``; never fails a launch."""
    folders = _remembered_folders()
    key = str(Path(cwd).resolve())
    folders.pop(key, None)
    folders[key] = str(Path(runs_dir).expanduser().resolve())
    try:
        write_json_atomic(memory_file(), {"version": 1, "folders": dict(list(folders.items())[-KEEP:])})
    except OSError:
        pass


def resolve(
    option: str | os.PathLike[str] | None,
    cwd: str | os.PathLike[str],
    environ: Mapping[str, str],
    own: str | os.PathLike[str] | None = None,
) -> RunsFolder:
    """The runs folder for a command run in ``cwd``: ``option`` (--runs-dir), ``environ``'s
    SDTUI_RUNS_DIR, the command's ``own`` folder, the remembered one, or ``cwd/runs``."""
    base = Path(cwd)
    if option:
        return RunsFolder((base / Path(option).expanduser()).resolve(), OPTION)
    if environ.get(ENV):
        return RunsFolder((base / Path(environ[ENV]).expanduser()).resolve(), ENVIRONMENT)
    if own is not None:
        return RunsFolder((base / Path(own)).resolve(), OWN)
    found = remembered(base)
    if found is not None:
        return RunsFolder(found, REMEMBERED)
    return RunsFolder((base / DEFAULT).resolve(), DEFAULTED)
