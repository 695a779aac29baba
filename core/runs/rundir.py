"""Run folders: paths, status.json, discovery, the derived ``lost`` and ``stalled`` states, the
state rebuilt from the folder, the folder locks and run ids.

A run folder is ``<runs dir>/<run id>/`` (see DESIGN.md for the files). ``status.json`` is
written by the supervisor and by the trainer; this module merges into it under a lock so
the two never drop each other's fields. Any bytes in it read as missing: the state is then
rebuilt from metrics.jsonl, plan.json, the checkpoints and the locks (``rebuild_status``).
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
from typing import IO, Any

from core.atomic import write_json_atomic
from core.errors import UserError
from core.runs.readers import TAIL_BYTES, current_attempt, integer, last_step, load_json_object, newest_step, number, tail_records

STATES = ("queued", "starting", "running", "paused", "stopping", "finished", "failed", "stopped")
FINAL_STATES = ("finished", "failed", "stopped")
#: A run whose processes all died without a final state (the machine went down, kill -9).
LOST = "lost"
#: A live run that has made no step and no heartbeat for too long (hung, or stopped with SIGSTOP).
STALLED = "stalled"
#: The states a run is shown in (``RunDir.state``): still going, or ended (no process of it is left).
LIVE_STATES = tuple(state for state in STATES if state not in FINAL_STATES) + (STALLED,)
ENDED_STATES = FINAL_STATES + (LOST,)
#: How long a run may sit without any recorded process before it counts as lost.
_START_GRACE_S = 30.0
#: Stalled after this many usual step times without a step or heartbeat, and never sooner than
#: STALL_MIN_S; before the first step (model loading, caching) after STALL_START_S.
STALL_FACTOR = 10.0
#: The run's folder of generated class images (DreamBooth prior preservation), named class_<n>.png.
CLASS_IMAGES = "class_images"
STALL_MIN_S = 15.0
STALL_START_S = 300.0
#: The run folder's TensorBoard event files (written by the trainer's tracker).
TB_DIR = "tb"


class RunDir:
    """One run folder and what it holds. Everything is resolved from the folder itself, so a
    moved, copied or unpacked folder is the same run at its new path."""

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
        self.class_images = self.path / CLASS_IMAGES
        self.tb = self.path / TB_DIR
        self.accelerate_yaml = self.path / "accelerate.yaml"
        self.supervisor_lock = self.path / "supervisor.lock"
        self.trainer_lock = self.path / "trainer.lock"
        self.heartbeat = self.path / "heartbeat"
        self.stop_lock = self.path / "stop.lock"
        self._status_lock = self.path / ".status.lock"
        #: The sentence naming status.json when the last read found it damaged, else None.
        self.status_problem: str | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def relocate(self, path: str | os.PathLike[str]) -> None:
        """Point every path of this object at ``path``, where the folder was moved while in use."""
        self.__init__(path)  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def id(self) -> str:
        """The run id (the folder name)."""
        return self.path.name

    def read_status(self) -> dict[str, Any]:
        """status.json ({} when missing, half-written or damaged; ``status_problem`` then says which)."""
        data, self.status_problem = load_json_object(self.status_json)
        return data

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into status.json atomically (a ``None`` value removes the key); return the result.

        A damaged status.json is replaced by what the folder holds (``rebuild_status``) plus ``fields``.
        """
        with self._locked(self._status_lock):
            data = self.read_status()
            if self.status_problem is not None:
                data = self.rebuild_status()
            if "state" in fields:
                data.pop("rebuilt", None)
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
        records = [r for key in ("pids", "trainer_pids") if isinstance(status.get(key), list) for r in status[key]]
        unique = {
            (r["pid"], r["create_time"]): r
            for r in records
            if isinstance(r, dict) and isinstance(r.get("pid"), int) and number(r.get("create_time")) is not None
        }
        return list(unique.values())

    def alive_processes(self, status: dict[str, Any] | None = None) -> list[Any]:
        """The recorded processes that are still running (psutil.Process objects), while this folder
        is owned (its supervisor or trainer lock held): the processes recorded in a copied folder
        belong to the original, so for the copy they are none."""
        from core.procs import alive

        found = alive(self.processes(status))
        return found if found and self.owned() else []

    def owned(self) -> bool:
        """True while a supervisor or a trainer holds the folder's lock."""
        return is_locked(self.supervisor_lock) or is_locked(self.trainer_lock)

    def derive_state(self, status: dict[str, Any]) -> str:
        """The state to show: status.json's, ``lost`` when no process of a live state is left,
        ``stalled`` when a live run has made no step and no heartbeat for too long. A status.json
        without a state (damaged, truncated) is rebuilt from the folder."""
        if not has_state(status):
            status = self.rebuild_status()
        state = status["state"]
        if state in FINAL_STATES or state == LOST:
            return state
        if self.alive_processes(status) or (not self.processes(status) and self.owned()):
            return STALLED if state in ("starting", "running") and self.stalled_for(status) is not None else state
        if not self.processes(status):
            since = number(status.get("updated_at")) or number(status.get("created_at")) or _mtime(self.path)
            if time.time() - since < _START_GRACE_S:
                return state
        return "finished" if self.finished_by_evidence(integer(status.get("total_steps"))) else LOST

    @property
    def state(self) -> str:
        """The current state, with ``lost`` and ``stalled`` derived."""
        return self.derive_state(self.read_status())

    def outputs(self, status: dict[str, Any] | None = None) -> list[Path]:
        """The results with their full paths: what the trainer's last save wrote (status.json's
        ``outputs``: the kohya/A1111 file and the diffusers file or folder), else what ``output/`` holds."""
        status = self.read_status() if status is None else status
        listed = status.get("outputs")
        if isinstance(listed, list) and all(isinstance(p, str) for p in listed):
            found = [Path(p) for p in listed if Path(p).exists()]
            if found:  # a moved or copied folder: its recorded paths are elsewhere, output/ is here
                return found
        try:
            return sorted(p.resolve() for p in self.output.iterdir() if not p.name.startswith("."))
        except OSError:
            return []

    def stalled_for(self, status: dict[str, Any]) -> float | None:
        """Seconds since the last step or heartbeat when that is over ``STALL_FACTOR`` × the usual step
        time (at least ``STALL_MIN_S``; ``STALL_START_S`` before the first step), else None."""
        activity = max(_mtime(self.metrics, 0.0), _mtime(self.heartbeat, 0.0), number(status.get("updated_at"), 0.0) or 0.0)
        idle = time.time() - activity
        if not activity or idle <= STALL_MIN_S:
            return None  # no limit is below STALL_MIN_S: a run active since then is not stalled, whatever its step time
        _, steps = current_attempt(tail_records(self.metrics))
        times = sorted(t for r in steps if r.get("type") == "step" and (t := number(r.get("step_time_s"))) is not None)
        limit = max(STALL_MIN_S, STALL_FACTOR * times[len(times) // 2]) if times else STALL_START_S
        return idle if idle > limit else None

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (unfinished ``.tmp-*`` folders are ignored)."""
        from core.runs.checkpoints import latest

        return latest(self.checkpoints)

    def last_step_record(self, tail_bytes: int = TAIL_BYTES) -> dict[str, Any] | None:
        """The newest ``step`` line of the latest attempt in metrics.jsonl, read from the end of the file only."""
        return newest_step(self.metrics, tail_bytes)

    def rebuild_status(self) -> dict[str, Any]:
        """The status as the folder shows it when status.json is damaged or empty: the metrics'
        last lines (attempt, steps, end), the checkpoints and outputs, plan.json, train.log and the locks.

        Every field a live run's status.json holds is rebuilt from the file that holds it too, so the
        next merge-write keeps them all. A run whose newest checkpoint is its last step and whose
        outputs were written with it is finished, whatever else was damaged.
        """
        from core.runs.checkpoints import read_state

        found = tail_records(self.metrics)
        attempt, after = current_attempt(found)
        end = next((r for r in reversed(after) if r.get("type") == "end"), None)
        checkpoint = self.latest_checkpoint()
        saved = read_state(checkpoint) if checkpoint else {}
        plan = plan_row(self.plan_json)
        total = integer((attempt or {}).get("total_steps")) or integer(plan.get("total_steps")) or integer(saved.get("total_steps"))
        owned = self.owned()
        if end and end.get("state") in FINAL_STATES:
            state = str(end["state"])
        elif owned:
            state = "running"
        else:
            state = "finished" if self.finished_by_evidence(total) else LOST
        rebuilt: dict[str, Any] = {
            "state": state,
            "run_id": self.id,
            "created_at": _mtime(self.run_toml, _mtime(self.path)),
            "step": max(integer((last_step(found) or {}).get("step")), integer(saved.get("step"))),
            "rebuilt": f"{self.status_json} was damaged or empty; this state was rebuilt from the run folder",
        }
        extra = {
            "total_steps": total,
            "steps_per_epoch": integer(plan.get("steps_per_epoch")) or integer((attempt or {}).get("steps_per_epoch")),
            "world_size": integer(plan.get("gpus")) or integer(saved.get("world")),
            "attempt": integer(attempt.get("attempt"), 1) if attempt is not None else 0,
            "attempt_id": (attempt or {}).get("id") if isinstance((attempt or {}).get("id"), str) else None,
            "command": last_command(self.log),
        }
        rebuilt.update({key: value for key, value in extra.items() if value})
        if state == "finished":
            rebuilt["outputs"] = [str(p) for p in self.outputs({})]
            rebuilt["outputs_step"] = integer(saved.get("step"))
        if end is not None:
            for key in ("error", "hint", "exit_code"):
                if end.get(key) is not None:
                    rebuilt[key] = end[key]
        holders = lock_holders(self)
        if holders:
            rebuilt["pids"] = [r for r in holders if not str(r.get("role", "")).startswith("trainer")]
            rebuilt["trainer_pids"] = [r for r in holders if str(r.get("role", "")).startswith("trainer")]
        return rebuilt

    def finished_by_evidence(self, total: int = 0) -> bool:
        """True when the newest checkpoint is the run's last step (of ``total``, else of plan.json or
        the checkpoint's own record) and output/ holds the outputs written with it: the run finished,
        whatever its status.json says (killed between its last save and its final state, damaged)."""
        from core.runs.checkpoints import read_state

        checkpoint = self.latest_checkpoint()
        if checkpoint is None:
            return False
        saved = read_state(checkpoint)
        total = total or plan_total(self.plan_json) or integer(saved.get("total_steps"))
        step = integer(saved.get("step"))
        if not total or step < total or integer(saved.get("total_steps"), total) > step:
            return False
        written = _mtime(checkpoint, 0.0)
        outputs = self.outputs({})
        return bool(outputs) and all(_mtime(p, 0.0) >= written - 1.0 for p in outputs)

    def summary(self) -> dict[str, Any]:
        """What ``sdtui runs`` shows: id, state, step/total, last loss, age, path (any bytes in the files)."""
        status = self.read_status()
        problem = self.status_problem
        if not has_state(status):
            status = self.rebuild_status()
        state = self.derive_state(status)
        last = self.last_step_record()
        created = number(status.get("created_at")) or _mtime(self.path)
        steps = [integer(v) for v in (status.get("step"), (last or {}).get("step")) if number(v) is not None]
        row = {
            "id": self.id,
            "state": state,
            "step": max(steps) if steps and state in ("running", "paused", "stopping", STALLED) else (steps[0] if steps else 0),
            "total_steps": integer(status.get("total_steps")) or None,
            "loss": number((last or {}).get("loss")),
            "age_s": round(time.time() - created, 1),
            "updated_at": number(status.get("updated_at")),
            "path": str(self.path),
        }
        if state == STALLED:
            row["stalled_s"] = round(self.stalled_for(status) or 0.0, 1)
        if problem:
            row["problem"] = problem
        return row


def generated_class_images(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The class images a run generated into its ``class_images/`` folder, in order."""
    return sorted((Path(run_dir) / CLASS_IMAGES).glob("class_*.png"))


def has_state(status: dict[str, Any]) -> bool:
    """True when status.json names one of the run states (else the state is rebuilt from the folder)."""
    return status.get("state") in STATES


def _mtime(path: Path, default: float | None = None) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time() if default is None else default


def plan_row(plan_json: Path) -> dict[str, Any]:
    """plan.json's schedule row of the run (``run``: the row for the processes it was launched with;
    in older files the row for its GPU count); {} when unknown or damaged."""
    plan, _ = load_json_object(plan_json)
    if isinstance(plan.get("run"), dict):
        return plan["run"]
    count = integer((plan.get("gpu") if isinstance(plan.get("gpu"), dict) else {}).get("count"), 1)
    rows = plan.get("schedule") if isinstance(plan.get("schedule"), list) else []
    return next((r for r in rows if isinstance(r, dict) and integer(r.get("gpus")) == count), {})


def plan_total(plan_json: Path) -> int:
    """plan.json's total steps for the GPU count it was made for (0 when unknown or damaged)."""
    return integer(plan_row(plan_json).get("total_steps"))


#: The line the supervisor writes into train.log at the start of each attempt, ending in the command.
_ATTEMPT_LINE = re.compile(rb"^\[sdtui\] attempt \d+ at [^\n]*? in [^\n]*?: (.+)$", re.MULTILINE)


def last_command(log: Path, tail_bytes: int = 1024 * 1024) -> str:
    """The launch command of the newest attempt as train.log records it ("" when not found)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            raw = handle.read()
    except OSError:
        return ""
    found = _ATTEMPT_LINE.findall(raw)
    return found[-1].decode("utf-8", "replace").strip() if found else ""


def lock(path: Path) -> IO[str] | None:
    """Take an exclusive lock (fcntl) on ``path``; None when another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 - held by the caller for as long as it owns the folder
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def hold(handle: IO[str], record: dict[str, Any]) -> None:
    """Write the holder's process record (pid, create time, role) into a held lock file."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()


def lock_holders(run: RunDir) -> list[dict[str, Any]]:
    """The process records written into the run's held locks (supervisor, trainer)."""
    found = []
    for path in (run.supervisor_lock, run.trainer_lock):
        if is_locked(path):
            record, _ = load_json_object(path)
            if isinstance(record.get("pid"), int) and number(record.get("create_time")) is not None:
                found.append(record)
    return found


def is_locked(path: Path) -> bool:
    """True while some process holds the lock on ``path`` (a missing file is not locked)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_run_dir(path: Path) -> bool:
    """True for a folder that looks like a run folder (has run.toml or status.json)."""
    return path.is_dir() and ((path / "run.toml").is_file() or (path / "status.json").is_file())


def list_runs(runs_dir: str | os.PathLike[str]) -> list[RunDir]:
    """The run folders in ``runs_dir``, newest first (a missing folder has none)."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(child) for child in root.iterdir() if not child.name.startswith(".") and is_run_dir(child)]
    return sorted(runs, key=lambda r: (number(r.read_status().get("created_at")) or _mtime(r.path), r.id), reverse=True)


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
    import shutil

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


def phase_text(phase: dict[str, Any]) -> str:
    """A start-up phase from status.json as the dashboard and ``sdtui status`` show it:
    ``caching latents 312/1000 images, 40s left, 1m 05s so far``. The time so far counts up every
    few seconds (the trainer's heartbeat), so a slow phase reads apart from a hung one."""
    from core.units import duration

    text = str(phase.get("label") or phase.get("name") or "starting")
    done, total = phase.get("done"), phase.get("total")
    if isinstance(total, int) and total > 0 and isinstance(done, int):
        text += f" {done}/{total}" + (f" {phase['unit']}" if phase.get("unit") else "")
    eta = phase.get("eta_s")
    if isinstance(eta, (int, float)):
        text += f", {duration(eta)} left"
    if isinstance(phase.get("elapsed_s"), (int, float)):
        text += f", {duration(phase['elapsed_s'])} so far"
    return text
