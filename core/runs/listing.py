"""The runs of a runs folder: which folders are runs, listing, finding one by id or path, new run
ids and folders, and deleting one."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from core.errors import UserError
from core.runs.locks import is_locked, lock
from core.runs.readers import mtime, number
from core.runs.rundir import RunDir
from core.runs.states import LIVE_STATES


def is_run_dir(path: Path) -> bool:
    """True for a folder that looks like a run folder (has run.toml or status.json)."""
    return path.is_dir() and ((path / "run.toml").is_file() or (path / "status.json").is_file())


def list_runs(runs_dir: str | os.PathLike[str]) -> list[RunDir]:
    """The run folders in ``runs_dir``, newest first (a missing folder has none)."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(child) for child in root.iterdir() if not child.name.startswith(".") and is_run_dir(child)]
    return sorted(runs, key=lambda r: (number(r.read_status().get("created_at")) or mtime(r.path), r.id), reverse=True)


def resolve_run(ref: str, runs_dir: str | os.PathLike[str]) -> RunDir:
    """A run id in ``runs_dir`` (or a unique prefix of one), or the path of a run folder."""
    candidate = Path(ref).expanduser()
    if is_run_dir(candidate):
        return RunDir(candidate)
    root = Path(runs_dir).expanduser()
    if ref and "/" not in ref and is_run_dir(root / ref):
        return RunDir(root / ref)
    matches = [r for r in list_runs(root) if ref and r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(r.id for r in matches[:5])
        raise UserError(f"'{ref}' matches several runs ({names}); give the full run id")
    raise UserError(f"there is no run '{ref}' in {root}; `sdtui runs` lists the runs (or pass --runs-dir or a run folder path)")


def slug(name: str) -> str:
    """A file-name-safe form of a run name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return cleaned or "run"


def new_run_id(name: str, when: float | None = None) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>`` (local time)."""
    return f"{slug(name)}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def create_run_dir(runs_dir: str | os.PathLike[str], name: str) -> RunDir:
    """Create a new, empty run folder; a taken id gets a ``-2``, ``-3`` … suffix."""
    root = Path(runs_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"the runs folder {root} cannot be created ({exc.strerror}); pass a writable --runs-dir") from exc
    base = new_run_id(name)
    for n in range(1, 1000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"the runs folder {root} is not writable ({exc.strerror}); pass a writable --runs-dir") from exc
        return RunDir(path)
    raise UserError(f"too many runs named {base} in {root}; choose another name")


def delete_run(run: RunDir) -> None:
    """Remove a run folder and nothing else (the dataset, caches and exports outside it stay).

    UserError for a folder that is not a run folder and for a live run (its processes or another
    sdtui own it): stop it first. The folder's supervisor lock is held while it is removed, so a
    resume cannot start in it meanwhile.
    """
    if not is_run_dir(run.path):
        raise UserError(f"{run.path} is not a run folder (no run.toml or status.json); nothing was deleted")
    deadline = time.monotonic() + 1.0
    while (held := lock(run.supervisor_lock)) is None and time.monotonic() < deadline:
        time.sleep(0.05)  # a reader probing the lock holds it for microseconds
    try:
        state = run.derive_state(run.read_status())
        if held is None or is_locked(run.trainer_lock) or state in LIVE_STATES:
            raise UserError(f"run {run.id} is {state if state in LIVE_STATES else 'in use'}; stop it first (sdtui stop {run.id}), then delete it")
        try:
            shutil.rmtree(run.path)
        except OSError as exc:
            raise UserError(f"{run.path} could not be deleted ({exc.strerror}); check its permissions") from exc
    finally:
        if held is not None:
            held.close()
