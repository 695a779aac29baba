"""The dashboard of one run: progress, loss, LR, speed, GPUs, samples, log; controls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from core.errors import UserError
from core.runs.phase import phase_text
from core.runs.states import LIVE_STATES, has_state
from tui.format import GIB, bar, break_lines, duration, gib, number, terminal_lines
from tui.run_view import RunView
from tui.sources import gpu_rows, total_steps, vram_text
from tui.widgets.log_tail import LogTail
from tui.widgets.loss_chart import LossChart
from tui.widgets.sample_view import SampleView
from tui.widgets.step_bar import StepBar

#: The label before the first output path (the others line up under it).
OUTPUT_LABEL = "Output: "


@dataclass(frozen=True)
class RunNews:
    """What one poll of the run folder found, handed from the reading worker to the UI thread."""

    #: True when the metrics brought new steps or samples (the chart and the samples follow).
    changed: bool
    #: status.json (rebuilt from the folder when damaged).
    status: dict[str, Any]
    #: The state shown, with ``lost`` and ``stalled`` derived.
    state: str
    total: int | None
    #: New lines of train.log.
    lines: list[str] = field(default_factory=list)
    #: The GPUs probed now (None when not probed: an ended run, no GPU).
    gpus: Any = None
    #: The result files with full paths, once the run has ended.
    outputs: list[str] = field(default_factory=list)


class DashboardScreen(Screen):
    """Attach to any run, live or ended; detaching leaves the training running."""

    BINDINGS = [
        Binding("s", "control('save')", "Save", tooltip="Save a checkpoint now (kept beyond keep_checkpoints)"),
        Binding("m", "control('sample')", "Sample", tooltip="Render the samples now"),
        Binding("p", "pause", "Pause", tooltip="Pause the training (p again resumes it)"),
        Binding("p", "resume", "Resume", tooltip="Resume the paused training"),
        Binding("x", "stop", "Stop", tooltip="Stop the run (asks first; it saves first)"),
        Binding("g", "log_scale", "Log y", tooltip="Loss chart: log or linear scale"),
        Binding("l", "logs", "Log", tooltip="The whole train.log, scrollable"),
        Binding("left_square_bracket", "sample(-1)", "Older sample", key_display="[", show=False),
        Binding("right_square_bracket", "sample(1)", "Newer sample", key_display="]", show=False),
        Binding("t", "next_prompt", "Next prompt", show=False),
        Binding("v", "sample_grid", "Sample grid", show=False, tooltip="Every prompt's samples across the steps"),
        Binding("b", "tensorboard", "TB", tooltip="TensorBoard: the command to start it and the SSH port forward"),
        Binding("escape,d", "detach", "Detach", tooltip="Back to the runs; the training goes on"),
        Binding("q", "quit", "Quit", show=False, tooltip="Leave sdtui; the training goes on"),
    ]
    REFRESH_S = 1.0
    #: The loss chart is the costliest redraw: at most once per this many seconds.
    CHART_S = 3.0

    def __init__(self, run: Any, live_gpus: bool = True) -> None:
        super().__init__()
        self.run = run
        self.view = RunView()
        self.live_gpus = live_gpus
        self.status: dict[str, Any] = {}
        self.state = "queued"
        self.polling = False
        self.shown: dict[str, Text] = {}
        self.chart_pending = False
        self.chart_drawn_at = 0.0
        self.first_read = True
        self.chart_preview = False
        self.outputs: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="progress-row"):
            yield Static("", id="state")
            yield StepBar(total=1, id="progress")
        yield Static("", id="error")
        yield Static("", id="outputs")
        with Horizontal(id="middle"):
            with Vertical(id="main"):
                yield LossChart(id="loss")
                yield Static("", id="numbers")
                yield Static("", id="resources")
            with Vertical(id="side"):
                yield SampleView(self.run.path, half_blocks=self.app.context.half_block_images, id="samples")
        yield LogTail(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        from core.monitor import LogTail, MetricsTail

        self.sub_title = self.run.path.name
        self.metrics_tail = MetricsTail(self.run.metrics)
        self.log_tail = LogTail(self.run.log, lines=200)
        self.query_one("#error", Static).display = False
        self.query_one("#outputs", Static).display = False
        self.poll()
        self.set_interval(self.REFRESH_S, self.poll)

    def poll(self) -> None:
        """Start a read unless the previous one is still going (the tails keep offsets, so one at a time)."""
        if not self.polling:
            self.polling = True
            self.read_news()

    @work(thread=True, group="poll")
    def read_news(self) -> None:
        """Read what is new (offsets kept by the tails) and hand it to the UI thread."""
        try:
            self._read_news()
        except OSError as exc:
            self.app.call_from_thread(self.notify, f"reading the run folder failed ({exc}); check that {self.run.path} is readable", severity="error")
        finally:
            self.polling = False

    def _read_news(self) -> None:
        status = self.run.read_status()
        if self.first_read:
            self.first_read = False
            if self.view.preview(self.run.metrics):  # a long run: a thinned chart now, the full one after the read
                state = self.run.derive_state(status)
                self.app.call_from_thread(self._show_news, RunNews(True, status, state, total_steps(self.run, status)))
        changed = self.view.update(self.metrics_tail)
        status = self.run.read_status()
        if not has_state(status):
            status = self.run.rebuild_status()
        state = self.run.derive_state(status)
        total = total_steps(self.run, status)
        lines = self.log_tail.poll()
        gpus = self._gpus(state)
        outputs = [str(path) for path in self.run.outputs(status)] if state not in LIVE_STATES else []
        self.app.call_from_thread(self._show_news, RunNews(changed, status, state, total, lines, gpus, outputs))

    def _gpus(self, state: str) -> Any:
        if not self.live_gpus or state not in LIVE_STATES:
            return None
        from core.gpu import probe

        found = probe()
        if not found.gpus:
            self.live_gpus = False
        return found

    #: The keys that act on a live run only (hidden from the footer and the palette otherwise).
    LIVE_ACTIONS = ("control", "stop")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":
            return self.state in LIVE_STATES and self.state != "paused"
        if action == "resume":
            return self.state == "paused"
        return self.state in LIVE_STATES if action in self.LIVE_ACTIONS else True

    def _show_news(self, news: RunNews) -> None:
        """``show`` a poll's news, unless the screen is being taken down: a poll that lands while
        the app quits or the screen is popped finds its widgets already gone."""
        try:
            self.show(news)
        except NoMatches:
            if self.is_attached and self.display:
                raise

    def show(self, news: RunNews) -> None:
        """Update the widgets with one poll's news."""
        if news.state != self.state:
            self.state = news.state
            self.refresh_bindings()
        self.status = news.status
        self._show_state(news.status, news.state, news.total)
        self._show_error(news.status, news.state)
        self._show_outputs(news.outputs)
        self._show_metrics(news.changed, news.state)
        self._put("#resources", self._resources(news.gpus))
        if news.lines:
            self.query_one("#log", LogTail).write_lines(terminal_lines(news.lines))

    def _show_state(self, status: dict[str, Any], state: str, total: int | None) -> None:
        """The state, and the start-up phase or the step with its ETA, with the progress bar."""
        view = self.view
        step = max(view.step, int(status.get("step") or 0))
        phase = status.get("phase") if state in ("queued", "starting") else None
        state_text = Text()
        state_text.append(f" {state.upper()} ", style=f"reverse {state_style(state)}")
        if isinstance(phase, dict):
            bar_total, bar_done = phase_progress(phase)
            state_text.append(f"  {phase_text(phase)}")
        else:
            bar_total, bar_done = total or None, step
            eta = view.eta_s(total, state) if state in LIVE_STATES else None
            state_text.append(f"  step {step}/{total or '?'}")
            if eta is not None:
                state_text.append(f"  ETA {duration(eta)}")
            elif state == "paused":
                state_text.append("  ETA on hold while paused")
        self.query_one("#progress", StepBar).update(bar_total, bar_done)
        self._put("#state", state_text)

    def _show_error(self, status: dict[str, Any], state: str) -> None:
        """A failed, lost or stalled run's error with its fix, a damaged status.json, or the samples' failure."""
        error = self.query_one("#error", Static)
        problem = self.run.status_problem
        sample_error = status.get("sample_error")
        error.display = state in ("failed", "lost", "stalled") or bool(problem) or bool(sample_error)
        if state in ("failed", "lost", "stalled") or problem:
            message, hint = problem_text(state, status, problem, self.run.path.name)
            self._put("#error", Text.assemble(("Error: ", "bold red"), message, "\n", ("Fix: ", "bold"), hint))
        elif sample_error:
            self._put("#error", Text.assemble(("Samples: ", "bold yellow"), str(sample_error), "\n", ("Fix: ", "bold"), SAMPLE_ERROR_HINT))

    def _show_metrics(self, changed: bool, state: str) -> None:
        """The samples, the loss chart (redrawn at most every CHART_S while live) and the numbers."""
        view = self.view
        if changed:
            self.chart_pending = True
            self.query_one("#samples", SampleView).set_samples(view.samples, view.newest_sample)
            self._update_grid()
        now = time.monotonic()
        filled_in = self.chart_preview and not view.previewing  # the full series replaces the sampled one at once
        if self.chart_pending and (now - self.chart_drawn_at >= self.CHART_S or state not in LIVE_STATES or filled_in):
            self.chart_pending, self.chart_drawn_at, self.chart_preview = False, now, view.previewing
            series = view.series
            self.query_one("#loss", LossChart).set_data(series.steps, series.loss, view.smoothed, (series.validation_steps, series.validation_loss))
        self._put("#numbers", self._numbers())

    def _show_outputs(self, outputs: list[str]) -> None:
        """Where the results are, with full paths, once the run has ended: a path too long for a line
        goes on after a ``/``, never in the middle of a name."""
        self.outputs = outputs
        widget = self.query_one("#outputs", Static)
        widget.display = bool(outputs)
        self.set_class(bool(outputs), "-outputs")
        if outputs:
            width = self.size.width - 2 - len(OUTPUT_LABEL)
            lines = [(OUTPUT_LABEL if n == 0 and i == 0 else " " * len(OUTPUT_LABEL), piece) for n, path in enumerate(outputs) for i, piece in enumerate(break_lines(path, width, after="/"))]
            text = Text("\n").join(Text.assemble((label, "bold"), piece) for label, piece in lines)
            self._put("#outputs", text)

    def on_resize(self) -> None:
        if self.outputs:
            self._show_outputs(self.outputs)

    def _put(self, selector: str, text: Text) -> None:
        """Update a Static only when its text changed (a repaint), with a layout only when its shape
        changed: its line count, or its line widths where its width follows its text."""
        before = self.shown.get(selector)
        if before != text:
            self.shown[selector] = text
            widget = self.query_one(selector, Static)
            auto = widget.styles.width is not None and widget.styles.width.is_auto
            width = 0 if auto else widget.content_size.width
            widget.update(text, layout=before is None or text_shape(before, width) != text_shape(text, width))

    def _numbers(self) -> Text:
        view = self.view
        epoch = view.last("epoch")
        own = view.last("step_size")  # Prodigy's own step size, which grows over the first steps
        step_size = "" if own is None else f"  step d×lr {number(own, 3)}"
        validation = view.series.validation_loss
        held_out = f"  val {number(validation[-1])}" if validation else ""  # the last validation loss
        return Text(
            f"loss raw {number(view.raw_loss)}  smoothed {number(view.loss)} ({view.window} steps)\n"
            f"lr {number(view.last('lr'), 3)}{step_size}  {number(view.last('images_per_s'), 3)} img/s  epoch {'–' if epoch is None else epoch}{held_out}"
        )

    def _resources(self, gpus: Any) -> Text:
        text = Text()
        rows = gpu_rows(gpus) if gpus is not None else []
        for row in rows:
            util = "" if row.utilization is None else f" {row.utilization:>3d}%"
            text.append(f"GPU{row.index} {bar(row.fraction, 10)} {vram_text(row)}{util}\n")
        for rank, (allocated, peak) in sorted(self.view.rank_memory().items()):
            text.append(f"rank {rank} now {allocated / GIB:.1f}, peak {gib(peak)}\n")
        return text

    def action_control(self, action: str) -> None:
        if self.state not in LIVE_STATES:
            self.notify(f"The run is {self.state}: nothing to {action}.", severity="warning")
            return
        from core.launch.control import ask

        try:
            ask(self.run, action)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.notify(f"Asked the trainer to {action}.")

    def action_pause(self) -> None:
        self.action_control("pause")

    def action_resume(self) -> None:
        self.action_control("resume")

    def action_stop(self) -> None:
        if self.state not in LIVE_STATES:
            self.notify(f"The run is already {self.state}.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.stop_now()

        from tui.widgets.confirm import ConfirmScreen

        self.app.push_screen(ConfirmScreen(f"Stop {self.run.path.name}? It saves a checkpoint first.", yes="Stop"), answered)

    @work(thread=True, exclusive=True, group="stop")
    def stop_now(self) -> None:
        from core.launch.control import stop_run

        self.app.call_from_thread(self.notify, "Stopping: saving first…")
        try:
            stop_run(self.run)
        except UserError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)

    def action_logs(self) -> None:
        from tui.screens.logs import LogScreen

        self.app.push_screen(LogScreen(self.run))

    def action_log_scale(self) -> None:
        self.query_one("#loss", LossChart).toggle_log()

    def action_sample(self, delta: int) -> None:
        self.query_one("#samples", SampleView).step_history(delta)

    def action_next_prompt(self) -> None:
        self.query_one("#samples", SampleView).next_prompt()

    def action_detach(self) -> None:
        if self.state in LIVE_STATES:
            self.notify("Detached: the training goes on. sdtui attach " + self.run.path.name)
        self.app.pop_screen()

    def action_quit(self) -> None:
        """Leave sdtui as home's q does; a live run goes on, and the terminal says how to come back."""
        live = self.state in LIVE_STATES
        self.app.exit(message=f"Detached from {self.run.path.name}: the training goes on. sdtui attach {self.run.path.name}" if live else None)

    def action_tensorboard(self) -> None:
        """The command that serves this run's TensorBoard files and the port forward to see it from the laptop."""
        import getpass
        import os
        import socket

        from core.monitor.tensorboard import free_port, tensorboard_lines
        from tui.widgets.note import NoteScreen

        if not self.run.tb.is_dir():
            self.notify(f"{self.run.path.name} has no TensorBoard files yet (tb/ appears at the first step when [logging] tensorboard = true).", severity="warning", timeout=10)
            return
        lines = tensorboard_lines(self.run.tb, free_port(), getpass.getuser(), os.environ.get("SSH_CONNECTION"), socket.gethostname())
        self.app.push_screen(NoteScreen(f"TensorBoard for {self.run.path.name}", lines))

    def _update_grid(self) -> None:
        """The sample grid, when it is open over this dashboard, follows the new samples."""
        from tui.screens.sample_grid import SampleGridScreen

        if isinstance(self.app.screen, SampleGridScreen):
            self.app.screen.set_history(self.view.samples)

    def action_sample_grid(self) -> None:
        """Every prompt's samples across the steps, newest steps first in view."""
        from tui.screens.sample_grid import SampleGridScreen

        if not self.view.samples:
            self.notify("No samples yet: the grid fills in as the trainer writes them.", severity="warning")
            return
        self.app.push_screen(SampleGridScreen(self.run.path, self.view.samples))


#: What to do about a sample that failed to render (the run trains on).
SAMPLE_ERROR_HINT = "training goes on without samples; fix the cause, then press m to render them again"


def text_shape(text: Text, width: int = 0) -> tuple[int, ...]:
    """The cell width of each line, or with a fixed ``width`` the rows each line wraps to: when it is
    unchanged, new text needs no layout pass (a widget of fixed width only changes with its rows)."""
    lines = text.split("\n")
    return tuple(-(-line.cell_len // width) or 1 for line in lines) if width > 0 else tuple(line.cell_len for line in lines)


def phase_progress(phase: dict[str, Any]) -> tuple[int | None, int]:
    """(total, done) for the progress bar; an uncounted phase shows an empty bar, not an animated one."""
    done, total = phase.get("done"), phase.get("total")
    if isinstance(total, int) and total > 0 and isinstance(done, int):
        return total, min(done, total)
    return 1, 0


def state_style(state: str) -> str:
    """The colour of a state."""
    return {"running": "green", "paused": "yellow", "finished": "blue", "failed": "red", "lost": "red", "stalled": "red", "stopped": "magenta"}.get(state, "cyan")


def problem_text(state: str, status: dict[str, Any], problem: str | None, run_id: str) -> tuple[str, str]:
    """The error line and its fix for a failed, lost or stalled run or a damaged status.json."""
    if state == "stalled":
        return "no step and no heartbeat for a long while: the trainer is hung or stopped (e.g. SIGSTOP)", f"sdtui stop {run_id} (it saves first if it can), then sdtui resume {run_id}"
    if state in ("failed", "lost"):
        message = status.get("error") or ("the training processes are gone without a final state" if state == "lost" else "the run failed")
        damaged = f" ({problem}; the state was rebuilt from the run folder)" if problem else ""
        return f"{message}{damaged}", str(status.get("hint") or ("sdtui resume " + run_id if state == "lost" else "see the log below"))
    return str(problem), "the state shown was rebuilt from the run folder; the trainer rewrites status.json at its next update"
