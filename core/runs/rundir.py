"""A run folder (``RunDir``): its paths, status.json merged under a lock, the state shown with
``lost`` and ``stalled`` derived, and the state rebuilt from the folder.

A run folder is ``<runs dir>/<run id>/`` (see DESIGN.md for the files). ``status.json`` is
written by the supervisor and by the trainer; this module merges into it under a lock so
the two never drop each other's fields. Any bytes in it read as missing: the state is then
rebuilt from metrics.jsonl, plan.json, the checkpoints and the locks (``rebuild_status``).
The states are ``core.runs.states``, the locks ``core.runs.locks``, the listing ``core.runs.listing``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.atomic import write_json_atomic
from core.runs.locks import is_locked, lock_holders
from core.runs.readers import TAIL_BYTES, current_attempt, integer, last_command, last_step, load_json_object, mtime, newest_step, number, plan_row, plan_total, tail_records
from core.runs.states import FINAL_STATES, LOST, STALL_FACTOR, STALL_MIN_S, STALL_START_S, STALLED, has_state

#: How long a run may sit without any recorded process before it counts as lost.
_START_GRACE_S = 30.0
#: The run's folder of generated class images (DreamBooth prior preservation), named class_<n>.png.
CLASS_IMAGES = "class_images"
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
        unique = {(r["pid"], r["create_time"]): r for r in records if isinstance(r, dict) and isinstance(r.get("pid"), int) and number(r.get("create_time")) is not None}
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
            since = number(status.get("updated_at")) or number(status.get("created_at")) or mtime(self.path)
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
        activity = max(mtime(self.metrics, 0.0), mtime(self.heartbeat, 0.0), number(status.get("updated_at"), 0.0) or 0.0)
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
            "created_at": mtime(self.run_toml, mtime(self.path)),
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
        holders = lock_holders(self.supervisor_lock, self.trainer_lock)
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
        written = mtime(checkpoint, 0.0)
        outputs = self.outputs({})
        return bool(outputs) and all(mtime(p, 0.0) >= written - 1.0 for p in outputs)

    def summary(self) -> dict[str, Any]:
        """What ``sdtui runs`` shows: id, state, step/total, last loss, age, path (any bytes in the files)."""
        status = self.read_status()
        problem = self.status_problem
        if not has_state(status):
            status = self.rebuild_status()
        state = self.derive_state(status)
        last = self.last_step_record()
        created = number(status.get("created_at")) or mtime(self.path)
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
