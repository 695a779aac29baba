"""The dashboard: a finished run, a failed one, and a live one tailed by offset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.atomic import read_json
from core.runs.rundir import RunDir
from tests.tui_fixtures import T0, make_run, make_runs, sync, until
from tui.app import SdtuiApp
from tui.context import AppContext
from tui.screens.dashboard import DashboardScreen, RunNews
from tui.screens.home import HomeScreen
from tui.widgets.confirm import ConfirmScreen


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
        assert f"loss raw {number(raw)}  smoothed {number(screen.view.loss)} (10 steps)\n" in numbers


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
        axis = [line.split("┤")[0].strip() for line in drawn.splitlines() if "┤" in line]
        assert "0.1" in axis and all(float(label) > 0 for label in axis if label), "the axis shows losses, not their log10"
        assert len(set(axis)) == len(axis)
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
from core.runs.rundir import RunDir
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
        await app.workers.wait_for_complete()
        screen.polling = True  # no poll of its own from here: the test hands the news itself
        news = RunNews(True, screen.status, "failed", 120)
        await screen.query_one("#error").remove()
        with pytest.raises(NoMatches):  # a widget missing from a screen that is still up is a bug, and says so
            screen._show_news(news)
        app.push_screen(HomeScreen())
        await pilot.pause()
        await screen.remove()  # the dashboard taken down, as when the app quits
        screen._show_news(news)


@sync
async def test_a_prodigy_run_shows_its_own_step_size_labelled_beside_the_lr(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    run = runs / "shapes-lora-20251009-090000"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["type"] == "step":
            line.update(lr=1.0, step_size=1e-6 * (1 + line["step"]))
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    app = _app(runs, run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "step d×lr" in _text(app, "#numbers"))
        assert "lr 1  step d×lr 1.2e-04" in _text(app, "#numbers")


def _footer(app: SdtuiApp) -> set[str]:
    """The footer's key labels as shown: ``p Pause``, ``esc Detach`` …"""
    return {f"{app.get_key_display(b.binding)} {b.binding.description}" for b in app.screen.active_bindings.values() if b.enabled and b.binding.show}


def _live(runs: Path, state: str = "running") -> Path:
    run = make_run(runs, "live-20251009-120000", state, steps=10, total=100, created=time.time())
    status = run / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time() + 3600}))
    return run


@sync
async def test_the_footer_says_resume_while_paused_and_p_resumes(tmp_path: Path) -> None:
    run = _live(tmp_path / "runs", "paused")
    app = _app(tmp_path / "runs", run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.state == "paused")
        await pilot.pause(0.1)
        assert "p Resume" in _footer(app) and "p Pause" not in _footer(app)
        await pilot.press("p")
        await pilot.pause(0.1)
        assert [r["action"] for r in read_json(run / "control.json")["requests"]] == ["resume"]
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "state": "running"}))
        await until(pilot, lambda: app.screen.state == "running")
        await pilot.pause(0.1)
        assert "p Pause" in _footer(app) and "p Resume" not in _footer(app)


@sync
async def test_q_on_the_dashboard_leaves_sdtui_and_the_training_goes_on(tmp_path: Path, capsys) -> None:
    run = _live(tmp_path / "runs")
    app = _app(tmp_path / "runs", run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.state == "running")
        await pilot.press("q")
        await pilot.pause(0.2)
        assert app._exit
    said = " ".join(capsys.readouterr().err.split())
    assert "the training goes on" in said and "sdtui attach live-20251009-120000" in said
    assert not (run / "control.json").exists()  # nothing asked of the trainer


@sync
async def test_b_shows_the_tensorboard_command_and_the_port_forward(tmp_path: Path, monkeypatch) -> None:
    from tui.widgets.note import NoteScreen

    monkeypatch.setenv("SSH_CONNECTION", "10.1.2.3 51000 203.0.113.9 22")
    runs = make_runs(tmp_path / "runs")
    run = runs / "shapes-lora-20251009-090000"
    app = _app(runs, run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "FINISHED" in _text(app, "#state"))
        await pilot.press("b")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, NoteScreen)  # no tb/ yet: a warning says why
        assert any("[logging] tensorboard = true" in str(n.message) for n in app._notifications)
        (run / "tb").mkdir()
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, NoteScreen))
        lines = _text(app, "#note-lines")
        port = lines.split("--port ")[1].split()[0]
        assert f"tensorboard --logdir {RunDir(run).tb} --port {port}" in lines
        assert f"ssh -N -L {port}:localhost:{port} " in lines and "@203.0.113.9" in lines
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


@sync
async def test_v_shows_every_prompt_across_the_steps_and_pages_older_steps(tmp_path: Path) -> None:
    from tui.screens.sample_grid import SampleGridScreen

    runs = tmp_path / "runs"
    run = make_run(runs, "long-20251009-090000", "finished", steps=400, total=400)
    app = _app(runs, run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "step 400 ·" in _text(app, "#sample-caption"))
        assert "v grid" in _text(app, "#sample-caption")
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, SampleGridScreen))
        await pilot.pause(0.3)
        shown = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        assert "prompt 1: a red circle, simple shape" in shown and "prompt 2: a blue square, simple shape" in shown
        assert "step 400" in shown and "step 40 " not in shown and "older" in shown
        images = [w for w in app.screen.query(".grid-image") if w.image]
        assert len(images) >= 6 and all(w.size.width >= 10 for w in images)
        await pilot.press("left")
        await pilot.pause(0.3)
        shown = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        assert "step 400" not in shown and "newer" in shown
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


@sync
async def test_output_paths_break_after_a_slash_and_the_sample_is_wide_at_80x24(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "deep" / "folder" / "of" / "runs")
    run = runs / "shapes-lora-20251009-090000"
    (run / "output" / "diffusers").mkdir(parents=True)
    (run / "output" / "shapes.safetensors").write_bytes(b"x")
    (run / "output" / "diffusers" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    app = _app(runs, run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.query_one("#outputs").display and "step 120 ·" in _text(app, "#sample-caption"))
        await pilot.pause(0.2)
        lines = _text(app, "#outputs").split("\n")
        assert all(len(line) <= 78 for line in lines)
        pieces = [line[len("Output: ") :] for line in lines]
        paths = app.screen.outputs
        assert str(RunDir(run).output / "shapes.safetensors") in paths
        assert "".join(pieces) == "".join(paths)  # every path whole, in order
        assert all(piece.endswith("/") or any(path.endswith("/" + piece.split("/")[-1]) for path in paths) for piece in pieces), "\n".join(lines)
        # 6-14 columns before; the output paths take rows from the sample's column, so a longer runs
        # folder (pytest-xdist's deeper temporary folders) leaves it a little narrower
        assert app.screen.query_one("#sample-image").size.width >= 16


def test_log_scale_labels_are_distinct_round_values_at_every_scale() -> None:
    import math

    from tui.widgets.loss_chart import log_ticks

    for low, high in ((1.065, 1.0752), (1.0701, 1.0709), (0.9, 1.2), (0.03, 0.467), (1e-5, 300.0)):
        positions, labels = log_ticks([low, (low + high) / 2, high])
        assert len(labels) >= 2 and len(set(labels)) == len(labels), (low, high, labels)
        values = [float(label) for label in labels]
        assert all(low * 0.999 <= v <= high * 1.001 for v in values)
        assert all(math.isclose(p, math.log10(v), rel_tol=1e-6, abs_tol=1e-9) for p, v in zip(positions, values))
    assert log_ticks([1.065, 1.0752])[1] == ["1.065", "1.07", "1.075"]


@pytest.mark.slow
@sync
async def test_a_live_run_repaints_only_what_changed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = make_run(runs, "live-20251009-120000", "running", steps=10, total=100_000, created=time.time())
    status = run / "status.json"
    status.write_text(json.dumps({**json.loads(status.read_text()), "updated_at": time.time() + 3600}))
    DashboardScreen.REFRESH_S = 0.2
    try:
        app = _app(runs, run)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: "step 10/100000" in _text(app, "#state"))
            await pilot.pause(1.0)
            screen = app.screen
            counts: dict[tuple[str, bool], int] = {}
            for selector in ("#progress", "#numbers", "#resources", "#loss", "#log", "#samples"):
                widget = screen.query_one(selector)

                def counting(*args, _selector=selector, _original=widget.refresh, **kwargs):
                    key = (_selector, bool(kwargs.get("layout")))
                    counts[key] = counts.get(key, 0) + 1
                    return _original(*args, **kwargs)

                widget.refresh = counting
            await pilot.pause(2.0)  # ten polls with nothing new
            assert counts == {}
            with open(run / "metrics.jsonl", "a") as handle:  # steps that move neither the bar nor its percentage
                for step in range(11, 31):
                    handle.write(json.dumps({"type": "step", "step": step, "loss": 0.1 + step / 1000, "lr": 1e-3, "step_time_s": 0.3}) + "\n")
                    handle.flush()
                    await pilot.pause(0.1)
            await until(pilot, lambda: "step 30/100000" in _text(app, "#state"))
            await pilot.pause(0.5)
            assert ("#progress", False) not in counts and ("#progress", True) not in counts
            assert ("#numbers", True) not in counts and counts.get(("#numbers", False))  # new numbers, no layout pass
    finally:
        DashboardScreen.REFRESH_S = 1.0


@sync
async def test_the_loss_chart_shows_the_validation_loss_beside_the_training_loss(tmp_path: Path) -> None:
    runs = make_runs(tmp_path / "runs")
    run = runs / "shapes-lora-20251009-090000"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    out = []
    for line in lines:
        out.append(line)
        if line["type"] == "step" and line["step"] % 40 == 0:
            out.append({"type": "validation", "time": line["time"], "step": line["step"], "loss": 0.5 - line["step"] / 1000})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in out))
    app = _app(runs, run)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: "val " in _text(app, "#numbers"))
        chart = app.screen.query_one("#loss")
        assert list(chart.validation[0]) == [40.0, 80.0, 120.0] and list(chart.validation[1]) == pytest.approx([0.46, 0.42, 0.38])
        assert _text(app, "#numbers").endswith("epoch 2  val 0.38")  # the last validation loss
        drawn = chart.plt.build()
        assert "validation" in drawn and "training" in drawn  # the legend names both series
        assert "◆" in drawn  # the validation series has its own marker
