"""The dashboard: a finished run, a failed one, and a live one tailed by offset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.atomic import read_json
from core.runs import RunDir
from tests.tui_fixtures import T0, make_run, make_runs, sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.widgets.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen


def _app(runs: Path, run: Path) -> SdtuiApp:
    context = AppContext(runs_dir=runs, gpu_spec="1x24GB", clock=lambda: T0)
    return SdtuiApp(context, start="dashboard", run=RunDir(run), theme="textual-dark")


def _text(app: SdtuiApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


@sync
async def test_finished_run_shows_progress_loss_and_samples(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    app = _app(runs, runs / "shapes-lora-20251009-090000")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "step 120 ·" in _text(app, "#sample-caption"))
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert "FINISHED" in _text(app, "#state") and "step 120/120" in _text(app, "#state")
        steps, losses, smoothed = screen.query_one("#loss").data
        assert len(steps) == len(losses) == len(smoothed) == 120
        assert smoothed[-1] < smoothed[0]
        assert "step 120 · prompt 2/2 · 3/3" in _text(app, "#sample-caption")
        await pilot.press("left_square_bracket")
        assert "step 80 · prompt 2/2 · 2/3" in _text(app, "#sample-caption")
        await pilot.press("t")
        assert "step 120 · prompt 1/2 · 3/3" in _text(app, "#sample-caption")
        assert "a red circle" in _text(app, "#sample-caption")
        assert "rank 0 now 0.9, peak 1.2 GiB" in _text(app, "#resources")
        assert not screen.query_one("#error").display
        # the same raw figure home and `sdtui runs` show, labelled, beside the smoothed one
        from core.units import number

        raw = RunDir(runs / "shapes-lora-20251009-090000").last_step_record()["loss"]
        numbers = _text(app, "#numbers")
        assert f"loss raw {number(raw)}\n" in numbers and f"smoothed {number(screen.view.loss)} (10 steps)" in numbers


@sync
async def test_failed_run_shows_the_error_and_the_fix(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    app = _app(runs, runs / "dog-lora-20251009-093000")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#error").display)
        error = app.screen.query_one("#error")
        assert error.display
        assert "out of memory at step 37" in _text(app, "#error")
        assert "sd1-lora-8gb" in _text(app, "#error")
        await pilot.press("s")
        await pilot.pause(0.1)
        assert not (runs / "dog-lora-20251009-093000" / "control.json").exists()


@sync
async def test_a_failed_sample_is_a_notice_line_with_the_reason(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    run = runs / "shapes-lora-20251009-090000"
    reason = "sampling at step 10 failed (SampleError: Input type (float) and bias type (c10::BFloat16) should be the same); training continues"
    RunDir(run).write_status(sample_error=reason)
    app = _app(runs, run)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#error").display)
        shown = " ".join(_text(app, "#error").split())
        assert "Samples: sampling at step 10 failed (SampleError: Input type (float)" in shown
        assert "press m" in shown and not shown.startswith("Error:")


@sync
async def test_live_run_is_tailed_and_controls_reach_control_json(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_run(runs, "live-20251009-120000", "running", steps=10, total=100, created=time.time())
    status = run / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time()}))
    DashboardScreen.REFRESH_S = 0.2
    try:
        app = _app(runs, run)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: "step 10/100" in _text(app, "#state"))
            assert "ETA" in _text(app, "#state")
            size_before = (run / "metrics.jsonl").stat().st_size
            with open(run / "metrics.jsonl", "a") as handle:
                for step in range(11, 21):
                    handle.write(json.dumps({"type": "step", "step": step, "loss": 0.1, "lr": 1e-3, "step_time_s": 0.3}) + "\n")
                handle.write('{"type": "step", "step": 21, "lo')  # a partial line is not read yet
            await until(pilot, lambda: "step 20/100" in _text(app, "#state"))
            assert app.screen.metrics_tail.offset > size_before
            assert len(app.screen.query_one("#loss").data[0]) == 20
            await pilot.press("s", "m", "p")
            await pilot.pause(0.1)
            actions = [r["action"] for r in read_json(run / "control.json")["requests"]]
            assert actions == ["save", "sample", "pause"]
            await pilot.press("x")
            await pilot.pause(0.1)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")
            await pilot.pause(0.1)
            assert isinstance(app.screen, DashboardScreen)
            assert [r["action"] for r in read_json(run / "control.json")["requests"]] == actions
            await pilot.press("d")
            assert isinstance(app.screen, HomeScreen)
    finally:
        DashboardScreen.REFRESH_S = 1.0


@sync
async def test_log_scale_toggles_on_a_long_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_run(runs, "long-20251009-120000", "finished", steps=5000, total=5000)
    app = _app(runs, run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.screen.query_one("#loss").data[0]) == 5000)
        chart = app.screen.query_one("#loss")
        assert len(chart.data[0]) == 5000
        await pilot.press("g")
        assert chart.log_scale
        drawn = str(chart.render())
        assert "(log scale)" in drawn
        losses = [float(v) for v in chart.data[1]]
        assert f"{min(losses):.3g}" in drawn and f"{max(losses):.3g}" in drawn, "the axis shows losses, not their log10"
        await pilot.press("g")
        assert "(log scale)" not in str(chart.render())


def test_log_lines_keep_the_last_state_of_a_progress_bar() -> None:
    from tui.format import terminal_lines

    assert terminal_lines(["Loading: 0%\rLoading: 60%\rLoading: 100%", "done\r"]) == ["Loading: 100%", "done"]


def test_the_eta_holds_while_paused_and_restarts_its_rate_after_a_resume(tmp_path: Path) -> None:
    from core.monitor import MetricsTail
    from tui.run_view import RunView

    path = tmp_path / "metrics.jsonl"
    tail, view = MetricsTail(path), RunView()

    def write(*records: dict) -> None:
        with path.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
        view.update(tail)

    write(*({"type": "step", "step": n, "loss": 0.5, "step_time_s": 1.0} for n in range(1, 11)))
    assert view.eta_s(110) == pytest.approx(100.0)
    assert view.eta_s(110, "paused") is None
    # the rate window restarts at the resume (the trainer times the next step from the resume)
    write({"type": "event", "level": "info", "message": "paused at step 10"}, {"type": "event", "level": "info", "message": "resumed at step 10"})
    write({"type": "step", "step": 11, "loss": 0.5, "step_time_s": 2.0})
    assert view.eta_s(111) == pytest.approx(200.0)  # the window restarted at the resume: 100 steps × 2.0 s
    write({"type": "step", "step": 12, "loss": 0.5, "step_time_s": 2.0})
    assert view.eta_s(112) == pytest.approx(200.0)


@sync
async def test_a_starting_run_shows_its_phase_with_progress_and_time_left(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_run(runs, "starting-20251009-120000", "starting", steps=0, total=100, created=time.time())
    status = run / "status.json"
    phase = {"name": "cache_latents", "label": "caching latents", "done": 312, "total": 1000, "unit": "images", "eta_s": 40.0}
    status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time(), "phase": phase}))
    DashboardScreen.REFRESH_S = 0.2
    try:
        app = _app(runs, run)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: "caching latents" in _text(app, "#state"))
            assert "STARTING   caching latents 312/1000 images, 40s left" in _text(app, "#state")
            bar = app.screen.query_one("#progress")
            assert (bar.total, bar.progress) == (1000, 312)
            loading = {"name": "load_model", "label": "loading the model", "done": 0, "total": 0, "elapsed_s": 12.0}
            status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time(), "phase": loading}))
            await until(pilot, lambda: "loading the model, 12s so far" in _text(app, "#state"))
            assert (bar.total, bar.progress) == (1, 0)  # an uncounted phase: an empty bar, not an animated one
            running = {**json.loads(status.read_text()), "state": "running", "phase": None, "updated_at": time.time()}
            status.write_text(json.dumps(running))
            await until(pilot, lambda: "step 0/100" in _text(app, "#state"))
            assert (bar.total, bar.progress) == (100, 0)
    finally:
        DashboardScreen.REFRESH_S = 1.0


@sync
async def test_the_log_tail_shows_the_newest_lines_without_control_codes(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    run = runs / "shapes-lora-20251009-090000"
    (run / "train.log").write_text("".join(f"line {i}\n" for i in range(50)) + "\x1b[31mred\x1b[0m\tend\n")
    app = _app(runs, run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "end" in _text(app, "#log"))
        shown = _text(app, "#log")
        assert "line 49" in shown and "line 10\n" not in shown  # the tail that fits the pane
        assert "\x1b" not in shown and "\ufffd[31mred" in shown


def test_half_block_samples_never_query_the_terminal_from_inside_the_app(tmp_path: Path) -> None:
    """In tmux/SSH the samples are half-blocks drawn by sdtui: textual-image, imported once the app
    runs, queried the terminal and blocked the UI until the next key (the dashboard showed only after
    Tab) and its answer came in as keys ('[?1;2c': '[' stepped the sample history back)."""
    import subprocess
    import sys

    runs = make_runs(tmp_path / "runs")
    script = f"""
import asyncio, sys
from core.runs import RunDir
from tui.app import SdtuiApp
from tui.context import AppContext

async def main():
    app = SdtuiApp(AppContext(runs_dir={str(runs)!r}, gpu_spec="1x24GB", half_block_images=True), start="dashboard",
                   run=RunDir({str(runs / "shapes-lora-20251009-090000")!r}), theme="textual-dark")
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if "step 120" in str(app.screen.query_one("#sample-caption").render()):
                break
        image = app.screen.query_one("#sample-image")
        print(type(image).__name__, image.image.endswith("step-000120_p1.png"))
    print(sorted(m for m in sys.modules if m.startswith("textual_image")))

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.splitlines() == ["HalfBlockImage True", "[]"], out


@sync
async def test_a_run_with_a_long_metrics_file_shows_a_thinned_chart_then_every_step(tmp_path: Path) -> None:
    from core.monitor.preview import PREVIEW_MIN_BYTES

    runs = tmp_path / "runs"
    run = make_run(runs, "huge-20251009-120000", "finished", steps=10, total=10)
    pad = "x" * 200
    steps = PREVIEW_MIN_BYTES // 240 + 1000
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"type": "step", "time": T0 + step, "step": step, "loss": 0.1 + (step % 7) / 100, "note": pad}) + "\n")
    app = _app(runs, run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: len(app.screen.query_one("#loss").data[0]) == steps, timeout=30)
        assert "FINISHED" in _text(app, "#state")


@sync
async def test_a_poll_that_lands_after_the_dashboard_is_gone_is_dropped_not_a_crash(tmp_path: Path) -> None:
    from textual.css.query import NoMatches

    runs = make_runs(tmp_path / "runs")
    app = _app(runs, runs / "dog-lora-20251009-093000")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#error").display)
        screen = app.screen
        news = (True, screen.status, "failed", 120, [], None, [])
        await screen.query_one("#error").remove()
        with pytest.raises(NoMatches):  # a widget missing from a screen that is still up is a bug, and says so
            screen._show_news(*news)
        app.push_screen(HomeScreen())
        await pilot.pause()
        await screen.remove()  # the dashboard taken down, as when the app quits
        screen._show_news(*news)
