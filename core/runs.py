"""Run folders: paths, status.json, discovery, the derived ``lost`` state and run ids.

A run folder is ``<runs dir>/<run id>/`` (see DESIGN.md for the files). ``status.json`` is
written by the supervisor and by the trainer; this module merges into it under a lock so
the two never drop each other's fields.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.atomic import read_json, write_json_atomic
from core.errors import UserError

STATES = ("queued", "starting", "running", "paused", "stopping", "finished", "failed", "stopped")
FINAL_STATES = ("finished", "failed", "stopped")
#: A run whose processes all died without a final state (the machine went down, kill -9).
LOST = "lost"
#: How long a run may sit without any recorded process before it counts as lost.
_START_GRACE_S = 30.0


class RunDir:
    """One run folder and what it holds."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        self.run_toml = self.path / "run.toml"
        self.plan_json = self.path / "plan.json"
        self.status_json = self.path / "status.json"
        self.control_json = self.path / "control.json"
        self.metrics = self.path / "metrics.jsonl"
        self.log = self.path / "train.log"
        self.samples = self.path / "samples"
        self.checkpoints = self.path / "checkpoints"
        self.output = self.path / "output"
        self.accelerate_yaml = self.path / "accelerate.yaml"
        self.supervisor_lock = self.path / "supervisor.lock"
        self.stop_lock = self.path / "stop.lock"
        self._status_lock = self.path / ".status.lock"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        """The run id (the folder name)."""
        return self.path.name

    def read_status(self) -> dict[str, Any]:
        """status.json ({} when missing or half-written)."""
        data = read_json(self.status_json, {})
        return data if isinstance(data, dict) else {}

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json atomically (a ``None`` value removes the key); return the result."""
        with self._locked(self._status_lock):
            data = self.read_status()
            for key, value in fields.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            data["updated_at"] = round(time.time(), 3)
            write_json_atomic(self.status_json, data)
        return data

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def processes(self, status: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The recorded processes of the run (supervisor, launcher, workers, trainer ranks) with their create times."""
        status = self.read_status() if status is None else status
        records = list(status.get("pids") or []) + list(status.get("trainer_pids") or [])
        unique = {(r.get("pid"), r.get("create_time")): r for r in records if isinstance(r, dict) and "pid" in r and "create_time" in r}
        return list(unique.values())

    def alive_processes(self, status: dict[str, Any] | None = None) -> list[Any]:
        """The recorded processes that are still running (psutil.Process objects)."""
        from core.launch.procs import alive

        return alive(self.processes(status))

    def derive_state(self, status: dict[str, Any]) -> str:
        """The state to show: status.json's, or ``lost`` when no process of a live state is left."""
        state = str(status.get("state", "queued"))
        if state in FINAL_STATES:
            return state
        if self.alive_processes(status):
            return state
        if not self.processes(status):
            since = float(status.get("updated_at") or status.get("created_at") or _mtime(self.path))
            if time.time() - since < _START_GRACE_S:
                return state
        return LOST

    @property
    def state(self) -> str:
        """The current state, with ``lost`` derived."""
        return self.derive_state(self.read_status())

    def outputs(self, status: dict[str, Any] | None = None) -> list[Path]:
        """The results with their full paths: what the trainer's last save wrote (status.json's
        ``outputs``: the kohya/A1111 file and the diffusers file or folder), else what ``output/`` holds."""
        status = self.read_status() if status is None else status
        listed = status.get("outputs")
        if isinstance(listed, list) and all(isinstance(p, str) for p in listed):
            return [Path(p) for p in listed if Path(p).exists()]
        try:
            return sorted(p.resolve() for p in self.output.iterdir() if not p.name.startswith("."))
        except OSError:
            return []

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (unfinished ``.tmp-*`` folders are ignored)."""
        from core.train.checkpoint import latest

        return latest(self.checkpoints)

    def last_step_record(self, tail_bytes: int = 65536) -> dict[str, Any] | None:
        """The newest ``step`` line of metrics.jsonl, read from the end of the file only."""
        try:
            with open(self.metrics, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - tail_bytes))
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return None
        for raw in reversed(lines):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("type") == "step":
                return record
        return None

    def summary(self) -> dict[str, Any]:
        """What ``sdtui runs`` shows: id, state, step/total, last loss, age, path."""
        status = self.read_status()
        state = self.derive_state(status)
        last = self.last_step_record()
        created = float(status.get("created_at") or _mtime(self.path))
        step = status.get("step", last.get("step") if last else 0)
        return {
            "id": self.id,
            "state": state,
            "step": int(step or 0),
            "total_steps": status.get("total_steps"),
            "loss": last.get("loss") if last else None,
            "age_s": round(time.time() - created, 1),
            "updated_at": status.get("updated_at"),
            "path": str(self.path),
        }


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def is_run_dir(path: Path) -> bool:
    """True for a folder that looks like a run folder (has run.toml or status.json)."""
    return path.is_dir() and ((path / "run.toml").is_file() or (path / "status.json").is_file())


def list_runs(runs_dir: str | os.PathLike[str]) -> list[RunDir]:
    """The run folders in ``runs_dir``, newest first (a missing folder has none)."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(child) for child in root.iterdir() if not child.name.startswith(".") and is_run_dir(child)]
    return sorted(runs, key=lambda r: (float(r.read_status().get("created_at") or _mtime(r.path)), r.id), reverse=True)


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
