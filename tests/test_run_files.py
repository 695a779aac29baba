"""Every reader of a run-folder file that another process writes survives any bytes (property
tests), and the damaged folder is named in one sentence while the other runs stay listed."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import UserError
from core.launch.control import request, status_fields
from core.monitor import MetricsSeries, MetricsTail
from core.runs.control_file import ControlReader, stop_requested
from core.runs.listing import list_runs
from core.runs.readers import STEP_PROBE_BYTES, last_step, newest_step, tail_records
from core.runs.rundir import RunDir
from tests.test_launch_support import sdtui

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = ["state", "step", "total_steps", "pids", "trainer_pids", "created_at", "updated_at", "attempt", "attempt_id", "log_tail", "control_done", "error"]
STATUS = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8)
CONTROL = st.fixed_dictionaries({"requests": st.lists(st.dictionaries(st.sampled_from(["id", "action", "at", "attempt"]), JSON | st.sampled_from(["stop", "save"])), max_size=4)})
METRIC_LINE = st.dictionaries(
    st.sampled_from(["type", "step", "loss", "resume_step", "step_time_s", "path", "prompt_index", "state", "mem"]),
    JSON | st.sampled_from(["step", "attempt", "end", "sample", "checkpoint"]),
    max_size=6,
)
BYTES = st.binary(max_size=300) | STATUS.map(lambda d: json.dumps(d).encode()) | st.just(b'\xff\xfe{"state": "running"')


def folder(status: bytes, control: bytes = b"", metrics: bytes = b"", plan: bytes = b"") -> RunDir:
    root = Path(tempfile.mkdtemp(prefix="sdtui-prop-"))
    run = RunDir(root / "run")
    run.path.mkdir()
    run.run_toml.write_text('name = "x"\n')
    for path, data in ((run.status_json, status), (run.control_json, control), (run.metrics, metrics), (run.plan_json, plan)):
        if data:
            path.write_bytes(data)
    return run


def read_everything(run: RunDir) -> None:
    """Every reader a user's command or the trainer runs on these files."""
    run.read_status()
    summary = run.summary()
    assert summary["state"] in ("queued", "starting", "running", "paused", "stopping", "finished", "failed", "stopped", "lost", "stalled")
    assert isinstance(summary["step"], int)
    fields = status_fields(run)
    assert fields["id"] == run.id
    run.last_step_record()
    run.rebuild_status()
    ControlReader(run.control_json, run.read_status().get("control_done"), attempt="a", since=0.0).pending()
    stop_requested(run.control_json, "a", 0.0)
    series = MetricsSeries()
    series.update(MetricsTail(run.metrics))
    assert len(series.steps) == len(series.loss)
    from tui.sources import RunsWatcher, total_steps

    total_steps(run, run.read_status())
    RunsWatcher(run.path.parent).rows()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=BYTES, control=st.binary(max_size=200) | CONTROL.map(lambda d: json.dumps(d).encode()), plan=st.binary(max_size=100) | JSON.map(lambda d: json.dumps(d).encode()))
@pytest.mark.slow
def test_status_control_and_plan_readers_survive_any_bytes(status: bytes, control: bytes, plan: bytes) -> None:
    read_everything(folder(status, control, plan=plan))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.binary(max_size=60) | METRIC_LINE.map(lambda d: json.dumps(d).encode()), max_size=12), tail=st.binary(max_size=40))
@pytest.mark.slow
def test_metrics_readers_survive_any_lines(lines: list[bytes], tail: bytes) -> None:
    read_everything(folder(b"", metrics=b"\n".join(lines) + b"\n" + tail))


STEP_LINE = st.fixed_dictionaries({"type": st.just("step"), "step": st.integers(0, 99), "loss": st.floats(0, 1)}, optional={"pad": st.text(max_size=3000)})
ATTEMPT_LINE = st.fixed_dictionaries({"type": st.just("attempt"), "resume_step": st.integers(0, 99) | JSON})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(st.binary(max_size=60) | (METRIC_LINE | STEP_LINE | ATTEMPT_LINE).map(lambda d: json.dumps(d).encode()), max_size=30),
    tail_bytes=st.sampled_from([40, 300, STEP_PROBE_BYTES, 65536]),
)
@pytest.mark.slow
def test_the_newest_step_read_from_the_end_is_the_one_the_whole_tail_gives(lines: list[bytes], tail_bytes: int) -> None:
    """The home screen's quick read of the last step agrees with reading the whole tail, whatever the lines."""
    path = Path(tempfile.mkdtemp(prefix="sdtui-prop-")) / "metrics.jsonl"
    path.write_bytes(b"\n".join(lines))
    assert newest_step(path, tail_bytes) == last_step(tail_records(path, tail_bytes))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200))
def test_a_request_replaces_a_junk_control_file(data: bytes) -> None:
    run = folder(json.dumps({"state": "running", "attempt_id": "a1"}).encode(), control=data)
    rid = request(run, "save")
    assert ControlReader(run.control_json, attempt="a1").pending()[-1]["id"] == rid


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200), name=st.sampled_from(["state.json", "objects.json", "trainable.safetensors", "objects.safetensors"]))
def test_a_damaged_checkpoint_is_one_sentence(data: bytes, name: str) -> None:
    from core.train.outputs.train_state import load

    root = Path(tempfile.mkdtemp(prefix="sdtui-ckpt-"))
    for part in ("state.json", "objects.json", "trainable.safetensors", "objects.safetensors"):
        (root / part).write_bytes(b"{}")
    (root / name).write_bytes(data)
    with pytest.raises(UserError, match="cannot be loaded"):
        load(root)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=200))
def test_junk_accelerate_yaml_and_run_toml_are_user_errors(data: bytes) -> None:
    from core.config import load_config
    from core.launch.command import read_accelerate_config

    run = folder(b"")
    run.accelerate_yaml.write_bytes(data)
    try:
        assert isinstance(read_accelerate_config(run.accelerate_yaml), dict)
    except UserError as exc:
        assert "accelerate.yaml" in str(exc)  # noqa: PT017 - either it reads, or the error names the file
    run.run_toml.write_bytes(data)
    try:
        load_config(run.run_toml)
    except UserError as exc:
        assert "run.toml" in str(exc)  # noqa: PT017 - either it reads, or the error names the file


def test_runs_lists_every_other_run_when_one_folder_is_damaged(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, state in (("good-a", "finished"), ("good-b", "stopped")):
        run = RunDir(runs / name)
        run.path.mkdir(parents=True)
        run.write_status(state=state, created_at=time.time(), step=3, total_steps=3)
    bad = RunDir(runs / "bad")
    bad.path.mkdir()
    bad.run_toml.write_text('name = "bad"\n')
    bad.status_json.write_bytes(b"\xff\xfe\x00junk{")
    bad.control_json.write_bytes(b"\x80\x81")
    listed = sdtui(["runs", "--runs-dir", str(runs)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    assert "good-a" in listed.stdout and "good-b" in listed.stdout
    assert f"{bad.status_json} is not valid JSON" in listed.stdout
    status = sdtui(["status", "bad", "--runs-dir", str(runs)], tmp_path)
    assert status.returncode == 0 and "rebuilt from the run folder" in status.stdout
    saved = sdtui(["save", "bad", "--runs-dir", str(runs)], tmp_path)
    assert saved.returncode == 2 and "Traceback" not in saved.stderr and "lost" in saved.stderr
    assert [r.id for r in list_runs(runs)] and all(isinstance(r.summary(), dict) for r in list_runs(runs))
