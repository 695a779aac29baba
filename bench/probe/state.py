"""Damaged state (issue 19): shared cache entries, status.json and metrics.jsonl of finished and
live runs, planted and unfinished checkpoint folders, the disk messages.

Each check runs the real program (``sdtui train/runs/status/resume/stop`` through the supervisor
and the tiny trainer) in its scratch folder, with its own XDG folders so the caches it damages
are its own. One finished run is trained once per probe process and copied where a check needs it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.probe.base import Check

REPO = Path(__file__).resolve().parents[2]
_SHARED: dict[str, Path] = {}


class Lab:
    """A scratch folder with its own user folders, the tiny model, a dataset and the CLI."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.runs = scratch / "runs"
        self.cache = scratch / "xdg" / "cache" / "sdtui"
        self.env = dict(os.environ)
        self.env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = str(REPO) + os.pathsep + self.env.get("PYTHONPATH", "")
        for kind in ("DATA", "CACHE", "STATE"):
            self.env[f"XDG_{kind}_HOME"] = str(scratch / "xdg" / kind.lower())
        self.env.pop("SDTUI_RUNS_DIR", None)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``sdtui ARGS --runs-dir RUNS`` as a subprocess."""
        argv = [sys.executable, "-m", "cli", *args, "--runs-dir", str(self.runs)]
        return subprocess.run(argv, cwd=self.scratch, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def config(self, images: int, schedule: dict[str, Any], settings: dict[str, Any] | None = None, name: str = "probe") -> Path:
        """A run.toml for the tiny model on a dataset of ``images`` images (repeats 1)."""
        from core.config import new_config, save_config
        from tests.conftest import make_kohya
        from tests.test_launch_support import TINY_SETTINGS

        data = make_kohya(self.scratch / "data", ((1, "sks dog", images),))
        subsets = [{"path": str(p), "repeats": 1, "token": "sks dog"} for p in sorted(data.iterdir()) if p.is_dir()]
        config = new_config(
            name,
            tiny_model(),
            "sd1",
            "lora",
            subsets,
            {**TINY_SETTINGS, **(settings or {})},
            {"epochs": 1, "save_every_epochs": 0, "sample_every_steps": 0, "lr_scheduler": "constant", **schedule},
            [],
            {},
        )
        path = self.scratch / f"{name}.toml"
        save_config(config, path)
        return path

    def train(self, config: Path) -> Any:
        """Start a run with ``sdtui train`` (detached, as a user does); its RunDir."""
        from core.runs.listing import list_runs

        before = {r.id for r in list_runs(self.runs)}
        started = self.cli("train", str(config))
        if started.returncode != 0:
            raise RuntimeError(f"sdtui train failed: {started.stderr.strip()[-400:]}")
        return next(r for r in list_runs(self.runs) if r.id not in before)

    def ended(self, run: Any, timeout: float = 300) -> dict[str, Any]:
        """Wait for ``run`` to end; its status.json."""
        wait(lambda: run.read_status().get("state") in ("finished", "failed", "stopped") and not run.alive_processes(), timeout)
        return run.read_status()


def wait(predicate: Callable[[], Any], timeout: float) -> Any:
    """Poll ``predicate`` until it is truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"waited {timeout:.0f} s")


def _shared_dir() -> Path:
    if "root" not in _SHARED:
        _SHARED["root"] = Path(tempfile.mkdtemp(prefix="sdtui-probe-state-"))
        atexit.register(shutil.rmtree, _SHARED["root"], True)
    return _SHARED["root"]


def tiny_model() -> Path:
    """The tiny SD1 model, built once per probe process."""
    if "model" not in _SHARED:
        from core.train.model.tiny import build_tiny

        _SHARED["model"] = build_tiny("sd1", _shared_dir() / "model")
    return _SHARED["model"]


def finished_run(lab: Lab) -> Any:
    """A copy in ``lab``'s runs folder of a finished run of 6 steps (checkpoints every 3), trained once."""
    from core.runs.rundir import RunDir

    if "finished" not in _SHARED:
        first = Lab(_shared_dir() / "finished")
        first.scratch.mkdir()
        run = first.train(first.config(6, {"save_every_steps": 3}))
        if first.ended(run)["state"] != "finished":
            raise RuntimeError(f"the tiny run did not finish: {run.read_status().get('error')}")
        _SHARED["finished"] = run.path
    target = lab.runs / _SHARED["finished"].name
    shutil.copytree(_SHARED["finished"], target, symlinks=True)
    return RunDir(target)


def _cache_files(lab: Lab, kind: str) -> list[Path]:
    return sorted((lab.cache / kind).rglob("*.safetensors"))


def _damage(files: list[Path]) -> None:
    """Truncate the first file and overwrite the second with junk of its own length."""
    files[0].write_bytes(files[0].read_bytes()[: files[0].stat().st_size // 2])
    files[1].write_bytes(os.urandom(files[1].stat().st_size))


def damaged_cache(kind: str) -> Callable[[Path], str | None]:
    """Two tiny runs in this process (as tests/train_helpers.py trains) on one dataset; between
    them two entries of the ``kind`` cache are damaged."""
    phase = {"latents": "cache_latents", "text": "cache_text"}[kind]

    def check(scratch: Path) -> str | None:
        from unittest import mock

        from core.runs.readers import records
        from tests.conftest import make_kohya
        from tests.train_helpers import make_run, train

        lab = Lab(scratch)
        data = make_kohya(scratch / "data", ((1, "sks dog", 4),))
        settings = {"cache_latents": True, "cache_text_encoder_outputs": True}
        schedule = {"max_steps": 1, "epochs": 0}
        with mock.patch.dict(os.environ, {k: v for k, v in lab.env.items() if k.startswith("XDG_")}):
            if train(make_run(scratch / "first", tiny_model(), data, settings=settings, schedule=schedule)) != 0:
                return "the first run failed"
            files = _cache_files(lab, kind)
            if len(files) < 3:
                return f"the first run left {len(files)} {kind} cache files"
            _damage(files)
            second = make_run(scratch / "second", tiny_model(), data, settings=settings, schedule=schedule)
            code = train(second)
        done = [r for r in records((second / "metrics.jsonl").read_bytes()) if r.get("type") == "phase" and r.get("phase") == phase and r.get("state") == "done"]
        if code != 0 or not done:
            return f"the second run exited {code}"
        if (done[-1].get("encoded"), done[-1].get("entries")) != (2, len(files)):
            return f"the second run encoded {done[-1].get('encoded')} and held {done[-1].get('entries')} of {len(files)} entries (2 damaged)"
        if any(p.stat().st_size < 64 for p in files) or _cache_files(lab, kind) != files:
            return "the damaged cache files were not replaced"
        return None

    return check


def finished_stays_finished(scratch: Path) -> str | None:
    """Junk status.json plus 2 MB of newline-free junk in metrics.jsonl of a finished run."""
    lab = Lab(scratch)
    run = finished_run(lab)
    outputs = {p: p.stat().st_mtime_ns for p in run.output.rglob("*") if p.is_file()}
    run.status_json.write_bytes(b"\x00\xffjunk")
    with open(run.metrics, "ab") as handle:
        handle.write(os.urandom(2 * 1024 * 1024).replace(b"\n", b"x"))
    listed = lab.cli("runs").stdout
    if f"{run.id}  finished" not in listed or "6/6" not in listed:
        return f"`sdtui runs` shows {listed.splitlines()[-1].strip() if listed.strip() else 'nothing'}"
    resumed = lab.cli("resume", run.id)
    if resumed.returncode != 2 or "--again" not in resumed.stderr:
        return f"resume of the finished run exited {resumed.returncode}: {(resumed.stdout + resumed.stderr).strip()[:200]}"
    if {p: p.stat().st_mtime_ns for p in run.output.rglob("*") if p.is_file()} != outputs:
        return "the outputs were rewritten"
    if run.rebuild_status().get("attempt") != 1:
        return f"the rebuilt attempt counter is {run.rebuild_status().get('attempt')}, not 1"
    return None


FIELDS = ("total_steps", "steps_per_epoch", "world_size", "attempt", "attempt_id", "trainer_pids", "command")


def live_status_keeps_fields(scratch: Path) -> str | None:
    """status.json of a live run damaged between two steps: the next write must hold every field."""
    lab = Lab(scratch)
    run = lab.train(lab.config(40, {"save_every_steps": 0}))
    try:
        before = wait(lambda: (s := run.read_status()).get("state") == "running" and (s.get("step") or 0) >= 2 and s, 240)
        run.status_json.write_bytes(b'{"state": "runn')
        after = wait(lambda: (s := run.read_status()).get("state") == "running" and (s.get("step") or 0) > before["step"] and s, 240)
        lost = [key for key in FIELDS if not after.get(key)]
        if lost:
            return f"the next write of status.json lost {', '.join(lost)}"
        shown = lab.cli("status", run.id).stdout
        if f"/{before['total_steps']}" not in shown:
            return "`sdtui status` shows the step without the total"
        return None
    finally:
        lab.cli("stop", run.id)
        lab.ended(run, 120)


def metrics_records_on_fresh_lines(scratch: Path) -> str | None:
    """Junk appended to a live metrics.jsonl, then two more records from the trainer's writer."""
    from core.runs.readers import records
    from core.train.metrics_writer import MetricsWriter

    path = scratch / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write("step", step=1)
    with open(path, "ab") as other:
        other.write(b"\x00junk{")
    writer.write("step", step=2)
    writer.close()
    found = [r.get("step") for r in records(path.read_bytes())]
    return None if found == [1, 2] else f"the reader finds steps {found} of [1, 2]"


def disk_messages(scratch: Path) -> str | None:
    """The full-disk sentences of the trainer and of the launch checks."""
    from unittest import mock

    from core.errors import UserError
    from core.launch.preflight import check_disk
    from core.train.disk import DiskFull

    trainer = str(DiskFull(scratch, 1_150_000, 100_000, "the output"))
    if "kept free" not in trainer or "0.1 MB" in trainer:
        return f"the trainer says: {trainer}"
    usage = shutil.disk_usage(scratch)._replace(free=1000)
    with mock.patch("shutil.disk_usage", return_value=usage):
        try:
            check_disk(scratch, 4_000_000)
        except UserError as exc:
            launch = str(exc)
        else:
            return "check_disk passed 1000 free bytes"
    return None if "0.00 GiB" not in launch and "1000 B" in launch else f"the launch check says: {launch}"


def checkpoints_follow_evidence(scratch: Path) -> str | None:
    """A planted ``step-999`` and a ``.tmp-step-4`` a killed save left, then a resume."""
    lab = Lab(scratch)
    run = finished_run(lab)
    run.write_status(state="stopped")
    shutil.rmtree(run.checkpoints / "step-6")
    shutil.copytree(run.checkpoints / "step-3", run.checkpoints / "step-999")
    shutil.copytree(run.checkpoints / "step-3", run.checkpoints / ".tmp-step-4")
    shown = lab.cli("status", run.id).stdout
    if "999" in shown.replace(str(run.path), ""):
        return "`sdtui status` shows the planted step-999"
    resumed = lab.cli("resume", run.id)
    if resumed.returncode != 0 or "from step-3" not in resumed.stdout:
        return f"resume said: {(resumed.stdout + resumed.stderr).strip()[:200]}"
    final = lab.ended(run)
    if final.get("state") != "finished" or final.get("step") != 6:
        return f"the resumed run ended {final.get('state')} at step {final.get('step')}"
    if (run.checkpoints / ".tmp-step-4").exists():
        return ".tmp-step-4 is still there after the resumed run started"
    listed = lab.cli("runs").stdout
    return "`sdtui runs` shows 999" if "999" in listed.replace(str(run.path), "") else None


CHECKS = [
    Check("state: a damaged latent cache entry is encoded again, no image dropped", damaged_cache("latents"), slow=True),
    Check("state: a damaged text cache entry is encoded again", damaged_cache("text"), slow=True),
    Check("state: a finished run with junk status and metrics stays finished; resume keeps its outputs", finished_stays_finished, slow=True),
    Check("state: a damaged status.json of a live run keeps every field", live_status_keeps_fields, slow=True),
    Check("state: junk appended to metrics.jsonl swallows no record", metrics_records_on_fresh_lines),
    Check("state: disk messages name the reserve and show their numbers", disk_messages),
    Check("state: planted and unfinished checkpoints do not count and are cleaned", checkpoints_follow_evidence, slow=True),
]
