"""Snapshots (pytest-textual-snapshot) of every screen at 80×24 (home, each wizard step, the dashboard
running, finished and failed, the dialogs), home and a finished dashboard also at 100×30.

Each snapshot also asserts, on the text the screen shows, that its key columns and buttons are
visible at that size (a cut column fails there, before the picture is compared).

Deterministic: fixed run folders and clock, simulated GPUs, a dataset at a fixed path, the
dark theme and half-block images. Update with ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from core.runs.rundir import RunDir
from tests.conftest import make_kohya
from tests.tui_fixtures import T0, make_runs
from tui.app import SdtuiApp
from tui.context import AppContext

SIZE = (80, 24)
WIDE = (100, 30)
#: A fixed absolute path, so the paths in run.toml are the same on every machine.
DATASET = Path("/tmp/sdtui-snapshot-data/sks")


RECIPES = {
    "snap-lora-fast": ("Speed over memory", '"bf16"', "false", '"adamw"', 4),
    "snap-lora-lean": ("Smallest footprint", '"fp16"', "true", '"adamw8bit"', 1),
}


@pytest.fixture
def snapshot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a fresh folder holding ``runs/`` (shown as a relative path) and two fixed recipes
    (so the shipped recipes can change without changing the snapshots)."""
    monkeypatch.chdir(tmp_path)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    for name, (summary, precision, checkpointing, optimizer, batch) in RECIPES.items():
        (recipes / f"{name}.toml").write_text(
            f'name = "{name}"\ntitle = "{name}"\nfamilies = ["sd1"]\nmethods = ["lora", "dreambooth"]\nsummary = "{summary}"\n\n'
            f"[settings]\nmixed_precision = {precision}\ngradient_checkpointing = {checkpointing}\noptimizer = {optimizer}\n"
            f"batch_size = {batch}\nresolution = 512\nlora_rank = 16\nlora_alpha = 16\n"
        )
    monkeypatch.setenv("SDTUI_RECIPES_DIR", str(recipes))
    import core.gpu

    # the machine a launch would run on (Review says it beside the simulated GPUs): the same everywhere
    monkeypatch.setattr(core.gpu, "probe", lambda: core.gpu.GpuSet([], reason="no NVIDIA driver was found"))
    return tmp_path


@pytest.fixture(scope="session")
def fixed_dataset() -> Path:
    """The snapshot dataset at DATASET, written once (atomically, so parallel workers agree)."""
    if not DATASET.is_dir():
        DATASET.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=DATASET.parent))
        make_kohya(staging, ((10, "sks dog", 4), (5, "sks cat", 3)), size=(512, 512))
        try:
            staging.rename(DATASET)
        except OSError:
            shutil.rmtree(staging)
    return DATASET


def _app(runs: Path, gpus: str = "2x4090", start: str = "home", run: RunDir | None = None) -> SdtuiApp:
    return SdtuiApp(AppContext(runs_dir=runs, gpu_spec=gpus, half_block_images=True, clock=lambda: T0), start=start, run=run, theme="textual-dark")


@pytest.mark.parametrize("size", [SIZE, WIDE], ids=["80x24", "100x30"])
def test_home(snap_compare, snapshot_env: Path, size: tuple[int, int]) -> None:
    app = _app(make_runs(snapshot_env / "runs"))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == 3, "the runs")
        await _until(pilot, lambda: "RTX 4090" in str(pilot.app.screen.query_one("#gpus").render()), "the GPUs")
        await pilot.pause(0.2)
        _shows(pilot, "state", "step", "loss", "updated", "cat-dreambooth-20251009-100000", "1h 58m ago", "24.0 GiB", "n New run", "o Open config")

    assert snap_compare(app, terminal_size=size, run_before=settle)


def test_home_without_gpu_at_80x24(snap_compare, snapshot_env: Path) -> None:
    from core.gpu import GpuSet

    app = _app(snapshot_env / "runs")
    app.context._gpus = GpuSet(gpus=[], reason="no NVIDIA driver was found", simulated=False)

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "No GPU here" in str(pilot.app.screen.query_one("#gpus").render()), "the GPU sentence")
        await _until(pilot, lambda: "No runs" in str(pilot.app.screen.query_one("#runs-empty").render()), "the empty runs line")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


@pytest.mark.parametrize("size", [SIZE, WIDE], ids=["80x24", "100x30"])
def test_dashboard_of_a_finished_run(snap_compare, snapshot_env: Path, size: tuple[int, int]) -> None:
    # at a fixed absolute path: the dashboard shows the output files with their full paths
    runs = Path(f"/tmp/sdtui-snapshot-runs/finished-{size[0]}x{size[1]}")
    shutil.rmtree(runs, ignore_errors=True)
    make_runs(runs)
    run = runs / "shapes-lora-20251009-090000"
    (run / "output").mkdir()
    (run / "output" / "shapes.safetensors").write_bytes(b"x")
    app = _app(runs, start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "step 120 ·" in str(pilot.app.screen.query_one("#sample-caption").render()), "the samples")
        await _until(pilot, lambda: "esc Detach" in screen_text(pilot.app), "the footer")
        await pilot.pause(0.3)
        _shows(pilot, "FINISHED", "step 120/120", "Output: /tmp/sdtui-snapshot-runs/", "step 120 · prompt 2/2 · 3/3", "[ ] history  t prompt", "esc Detach")
        _hides(pilot, "s Save", "p Pause")

    assert snap_compare(app, terminal_size=size, run_before=settle)


def test_dashboard_of_a_running_run_at_80x24(snap_compare, snapshot_env: Path) -> None:
    import json
    import time

    from tests.tui_fixtures import make_run

    run = make_run(snapshot_env / "runs", "live-lora-20251009-120000", "running", steps=60, total=200, created=T0 - 600)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "updated_at": time.time() + 3600}))
    app = _app(snapshot_env / "runs", start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "step 40 ·" in str(pilot.app.screen.query_one("#sample-caption").render()), "the samples")
        await _until(pilot, lambda: "esc Detach" in screen_text(pilot.app), "the footer")
        await pilot.pause(0.3)
        _shows(pilot, "RUNNING", "step 60/200", "ETA", "s Save", "m Sample", "p Pause", "x Stop", "esc Detach", "step 40 · prompt 2/2 · 1/1")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_stop_dialog_at_80x24(snap_compare, snapshot_env: Path) -> None:
    import json
    import time

    from tests.tui_fixtures import make_run

    run = make_run(snapshot_env / "runs", "live-lora-20251009-120000", "running", steps=60, total=200, created=T0 - 600)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "updated_at": time.time() + 3600}))
    app = _app(snapshot_env / "runs", start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: pilot.app.screen.state == "running", "the running state")
        await pilot.press("x")
        await pilot.pause(0.3)
        _shows(pilot, "Stop live-lora-20251009-120000?", "saves a checkpoint", "Stop (y)", "No (n)")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_dashboard_of_a_failed_run_at_80x24(snap_compare, snapshot_env: Path) -> None:
    runs = make_runs(snapshot_env / "runs")
    app = _app(runs, start="dashboard", run=RunDir(runs / "dog-lora-20251009-093000"))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: pilot.app.screen.query_one("#error").display, "the error")
        await _until(pilot, lambda: "esc Detach" in screen_text(pilot.app), "the footer")
        await pilot.pause(0.3)
        _shows(pilot, "FAILED", "Error: out of memory at step 37", "Fix: restart with the recipe", "esc Detach")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def screen_text(app) -> str:
    """The characters the screen shows, line by line (what a user at this size can read)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def _shows(pilot, *texts: str) -> None:
    shown = screen_text(pilot.app)
    import os

    if os.environ.get("SDTUI_SCREEN_DUMP"):
        with open(os.environ["SDTUI_SCREEN_DUMP"], "a", encoding="utf-8") as dump:
            dump.write(f"==== {os.environ.get('PYTEST_CURRENT_TEST')}\n{shown}\n")
    missing = [t for t in texts if t not in shown]
    assert not missing, f"not visible at {pilot.app.size}: {missing}\n{shown}"


def _hides(pilot, *texts: str) -> None:
    shown = screen_text(pilot.app)
    assert not [t for t in texts if t in shown], shown


async def _until(pilot, condition, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _drive(pilot, step: int, dataset: Path) -> None:
    """From a fresh wizard to ``step`` (0-based) with sd1, the fixed dataset and one prompt."""
    screen = pilot.app.screen
    await pilot.pause(0.2)
    screen.query_one("#model-path").value = "sd1"
    await _until(pilot, lambda: screen.error is None, "the model step to check out")
    if step > 0:
        await pilot.press("ctrl+n")
        await _until(pilot, lambda: screen.index == 1, "the dataset step")
        screen.query_one("#dataset-path").value = str(dataset)
        await _until(pilot, lambda: screen.state.scan is not None and screen.error is None, "the scan")
        if step == 1:
            await _until(pilot, lambda: screen.query_one("#subsets").row_count > 0 and str(screen.query_one("#scan-summary").render()), "the scan table")
    for n in range(2, step + 1):
        if n == 6:
            screen.query_one("#prompts").text = "a photo of sks dog --w 512 --h 512 --d 1"
            await _until(pilot, lambda: screen.error is None, "the prompts to check out")
        await pilot.press("ctrl+n")
        await _until(pilot, lambda n=n: screen.index == n, f"step {n + 1}")
    if step == 5:
        screen.query_one("#prompts").text = "a photo of sks dog --w 512 --h 512 --d 1"
        await _until(pilot, lambda: screen.error is None, "the prompts to check out")
    await _steady(pilot)


async def _steady(pilot) -> None:
    """Stop the cursors blinking (a blink would make the snapshot depend on timing), then settle."""
    from textual.widgets import Input, TextArea

    for widget in pilot.app.screen.query("Input, TextArea"):
        if isinstance(widget, (Input, TextArea)):
            widget.cursor_blink = False
    await pilot.pause(0.3)


#: What each wizard step must show at 80×24 (the footer keys are checked on every step).
VISIBLE = {
    0: ("Base model", "Detected family: sd1"),
    1: ("subset", "images", "repeats", "captions", "sizes", "buckets", "10_sks dog", "No problems found."),
    2: ("LoRA", "Textual inversion", "lora_rank", "lora_alpha"),
    3: ("snap-lora-fast", "snap-lora-lean", "fits", "img/s", "Your settings", "mixed_precision"),
    4: ("GPUs", "batch", "steps/ep", "epochs", "steps", "images", "ETA", "cost", "2 *", "8 "),
    5: ("Sample images", "every N steps", "also at step 0"),
    6: ("run name", "save config to", "run.toml", "Save config (ctrl+s)", "Launch (ctrl+l)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("step", range(7), ids=["model", "dataset", "method", "recipe", "schedule", "samples", "review"])
def test_wizard_step(snap_compare, snapshot_env: Path, fixed_dataset: Path, step: int) -> None:
    app = _app(snapshot_env / "runs", start="wizard")

    async def drive(pilot) -> None:
        await _drive(pilot, step, fixed_dataset)
        _shows(pilot, *VISIBLE[step], "◀ Back (ctrl+b)", "esc Cancel", "^p palette")

    assert snap_compare(app, terminal_size=SIZE, run_before=drive)


@pytest.mark.slow
def test_repeats_dialog_with_its_sentence_at_80x24(snap_compare, snapshot_env: Path, fixed_dataset: Path) -> None:
    app = _app(snapshot_env / "runs", start="wizard")

    async def drive(pilot) -> None:
        await _drive(pilot, 1, fixed_dataset)
        pilot.app.screen.query_one("#subsets").focus()
        await pilot.press("e")
        await pilot.pause(0.2)
        pilot.app.screen.query_one("#answer").value = "0"
        await pilot.press("enter")
        await _steady(pilot)
        _shows(pilot, "Repeats of 10_sks dog", "must be at least 1, not 0", "Enter to apply, Esc to cancel")

    assert snap_compare(app, terminal_size=SIZE, run_before=drive)


@pytest.mark.slow
def test_leave_wizard_dialog_at_80x24(snap_compare, snapshot_env: Path, fixed_dataset: Path) -> None:
    app = _app(snapshot_env / "runs", start="wizard")

    async def drive(pilot) -> None:
        await _drive(pilot, 0, fixed_dataset)
        await pilot.press("escape")
        await _steady(pilot)
        _shows(pilot, "Leave the wizard?", "Leave (y)", "Stay (n)")

    assert snap_compare(app, terminal_size=SIZE, run_before=drive)


def test_open_config_dialog_at_80x24(snap_compare, snapshot_env: Path) -> None:
    app = _app(make_runs(snapshot_env / "runs"))

    async def drive(pilot) -> None:
        await _until(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == 3, "the runs")
        await pilot.press("o")
        await pilot.pause(0.2)
        pilot.app.screen.query_one("#config-file").value = "nowhere.toml"
        await pilot.press("enter")
        await _until(pilot, lambda: "is not a file" in str(pilot.app.screen.query_one("#answer-error").render()), "the sentence")
        await _steady(pilot)
        _shows(pilot, "Open a config", "config", "prompts", "Open (enter)", "Cancel (esc)", "is not a file")

    assert snap_compare(app, terminal_size=SIZE, run_before=drive)


def test_dashboard_of_a_paused_run_at_80x24(snap_compare, snapshot_env: Path) -> None:
    import json
    import time

    from tests.tui_fixtures import make_run

    run = make_run(snapshot_env / "runs", "live-lora-20251009-120000", "paused", steps=60, total=200, created=T0 - 600)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "updated_at": time.time() + 3600}))
    app = _app(snapshot_env / "runs", start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "step 40 ·" in str(pilot.app.screen.query_one("#sample-caption").render()), "the samples")
        await _until(pilot, lambda: "p Resume" in screen_text(pilot.app), "the footer")
        await pilot.pause(0.3)
        _shows(pilot, "PAUSED", "ETA on hold while paused", "p Resume", "x Stop", "esc Detach")
        _hides(pilot, "p Pause")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_sample_grid_at_80x24(snap_compare, snapshot_env: Path) -> None:
    from tests.tui_fixtures import make_run

    run = make_run(snapshot_env / "runs", "grid-lora-20251009-090000", "finished", steps=400, total=400)
    app = _app(snapshot_env / "runs", start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "step 400 ·" in str(pilot.app.screen.query_one("#sample-caption").render()), "the samples")
        await pilot.press("v")
        await _until(pilot, lambda: "prompt 2:" in screen_text(pilot.app), "the grid")
        await pilot.pause(0.3)
        _shows(pilot, "10 sample steps", "older", "prompt 1: a red circle, simple shape", "prompt 2: a blue square", "step 400", "esc Back")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_tensorboard_dialog_at_80x24(snap_compare, snapshot_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    import core.monitor.tensorboard as tensorboard

    monkeypatch.setattr(tensorboard, "free_port", lambda: 6006)
    monkeypatch.setattr(getpass, "getuser", lambda: "ana")
    monkeypatch.setenv("SSH_CONNECTION", "10.1.2.3 51000 203.0.113.9 2222")
    runs = Path("/tmp/sdtui-snapshot-runs/tensorboard")
    shutil.rmtree(runs, ignore_errors=True)
    make_runs(runs)
    run = runs / "shapes-lora-20251009-090000"
    (run / "tb").mkdir()
    app = _app(runs, start="dashboard", run=RunDir(run))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: "step 120 ·" in str(pilot.app.screen.query_one("#sample-caption").render()), "the samples")
        await pilot.press("b")
        await _until(pilot, lambda: "tensorboard --logdir" in screen_text(pilot.app), "the dialog")
        await pilot.pause(0.3)
        _shows(pilot, "shapes-lora-20251009-090000/tb", "--port", "ssh -N -L 6006:localhost:6006 -p 2222 ana@203.0.113.9", "http://localhost:6006")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_home_resume_and_delete_dialogs_at_80x24(snap_compare, snapshot_env: Path) -> None:
    app = _app(make_runs(snapshot_env / "runs"))

    async def settle(pilot) -> None:
        await _until(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == 3, "the runs")
        await pilot.press("down")
        await pilot.pause(0.2)
        _shows(pilot, "r Resume", "del Delete", "q Quit")
        await pilot.press("r")
        await _until(pilot, lambda: "Resume dog-lora" in screen_text(pilot.app), "the resume dialog")
        _shows(pilot, "Resume dog-lora-20251009-093000 from the start (it has", "no checkpoint)?")
        await pilot.press("escape")
        await pilot.press("delete")
        await _until(pilot, lambda: "Delete dog-lora" in screen_text(pilot.app), "the delete dialog")
        await pilot.pause(0.3)
        _shows(pilot, "Delete dog-lora-20251009-093000?", "the dataset stays", "Delete (y)")

    assert snap_compare(app, terminal_size=SIZE, run_before=settle)
