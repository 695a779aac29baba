"""Home: the GPUs, the runs with their live state, and the keys to start or attach."""

from __future__ import annotations

import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from core.errors import UserError
from core.runs.states import ENDED_STATES, LIVE_STATES
from tui.format import break_lines, display_path, duration, number
from tui.sources import RunRow, RunsWatcher
from tui.widgets.gpu_panel import GpuPanel
from tui.wizard_state import STEPS

STATE_STYLE = {
    "running": "bold green",
    "starting": "green",
    "queued": "cyan",
    "paused": "yellow",
    "stopping": "yellow",
    "finished": "blue",
    "failed": "bold red",
    "stopped": "magenta",
    "lost": "red",
}


class HomeScreen(Screen):
    """The first screen: hardware and runs."""

    BINDINGS = [
        Binding("n", "new_run", "New run", tooltip="Open the wizard for a new training run"),
        Binding("o", "open_config", "Open config", tooltip="Open a run.toml or a kohya dataset_config.toml in the wizard"),
        Binding("enter,a", "attach", "Attach", tooltip="Open the dashboard of the selected run"),
        Binding("r", "resume", "Resume", tooltip="Resume a paused run, or continue a stopped or failed one (asks first)"),
        Binding("x", "stop", "Stop", tooltip="Stop the selected run (asks first; it saves first)"),
        Binding("delete", "delete", "Delete", key_display="del", tooltip="Delete the selected ended run's folder (asks first)"),
        Binding("l", "logs", "Logs", tooltip="The train.log of the selected run"),
        Binding("d", "demo", "Demo", tooltip="The CPU demo: a tiny model and a generated dataset"),
        Binding("q", "app.quit", "Quit"),
    ]
    #: The columns after the run's name with their widths; the name takes what is left.
    COLUMNS = (("state", "state", 8), ("step", "step", 9), ("loss", "raw loss", 8), ("updated", "updated", 11))
    REFRESH_S = 1.5
    #: Step, loss and age cells change on every refresh of a live run, and any changed cell repaints
    #: every visible row of the table: they are brought up to date at most this often (states at once).
    PROGRESS_S = 5.0
    GPU_REFRESH_S = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[RunRow] = []
        #: The selected run and its state when the footer was last fitted to it.
        self.footer_for: tuple[str, str] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="gpus-box"):
            yield Static("GPUs", classes="section-title")
            yield GpuPanel(id="gpus")
        with Vertical(id="runs-box"):
            yield Static("Runs", id="runs-title", classes="section-title")
            yield Static("", id="runs-empty")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        context = self.app.context
        where = f"Runs in {display_path(context.runs_dir)}"
        self.query_one("#runs-title", Static).update(f"{where} ({context.runs_reason})" if context.runs_reason else where)
        self.watcher = RunsWatcher(context.runs_dir)
        self.refreshing = False
        self.cells: dict[str, tuple] = {}
        self.progress_at = 0.0
        self.run_width = 34
        table = self.query_one("#runs", DataTable)
        table.add_column("run", key="run", width=self.run_width)
        for key, label, width in self.COLUMNS:
            table.add_column(label, key=key, width=width)
        self.load_gpus()
        self.call_after_refresh(self.refresh_runs)  # the first frame is drawn before the folder is read
        self.set_interval(self.REFRESH_S, self.refresh_runs)
        self.set_interval(self.GPU_REFRESH_S, self.refresh_gpus)

    @property
    def on_top(self) -> bool:
        """Whether this screen is the one shown (Textual's ``is_current`` also counts it under a dashboard)."""
        return self.app.screen is self

    @work(thread=True, exclusive=True, group="gpus")
    def load_gpus(self, refresh: bool = False) -> None:
        """Probe (or parse the simulated spec) and show the GPUs."""
        try:
            gpus = self.app.context.gpus(refresh=refresh)
        except UserError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        self.app.call_from_thread(self.query_one("#gpus", GpuPanel).show, gpus)

    def refresh_gpus(self) -> None:
        """Real GPUs: probe again for the VRAM in use (simulated ones do not change)."""
        if self.app.context.gpu_spec is None and self.on_top:
            self.load_gpus(refresh=True)

    def refresh_runs(self) -> None:
        """Start a refresh unless the previous one is still going or another screen is on top."""
        if not self.refreshing and self.on_top:
            self.refreshing = True
            self.read_runs()

    @work(thread=True, group="runs")
    def read_runs(self) -> None:
        try:
            rows = self.watcher.rows()
        except (UserError, OSError) as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        finally:
            self.refreshing = False
        self.app.call_from_thread(self.show_runs, rows)

    def show_runs(self, rows: list[RunRow]) -> None:
        """Update the runs table in place, keeping the cursor on the same run."""
        from rich.text import Text

        table = self.query_one("#runs", DataTable)
        now = self.app.context.clock()
        selected = self.selected()
        if [k.value for k in table.rows] != [r.run_id for r in rows]:
            table.clear()
            self.cells = {}
        progress_due = time.monotonic() - self.progress_at >= self.PROGRESS_S
        if progress_due:
            self.progress_at = time.monotonic()
        for row in rows:
            step = "–" if row.step is None else f"{row.step}/{row.total_steps or '?'}"
            age = "–" if row.updated_at is None else duration(row.age(now)) + " ago"
            cells = (run_id_cell(row.run_id, self.run_width), Text(row.state, style=STATE_STYLE.get(row.state, "")), step, number(row.loss), age)
            before = self.cells.get(row.run_id)
            if before is None:
                table.add_row(*cells, key=row.run_id, height=len(cells[0].split("\n")))
            elif cells[1] != before[1] or progress_due:  # only the cells that changed
                for column, value, old in zip(("run", "state", "step", "loss", "updated"), cells, before):
                    if value != old:
                        table.update_cell(row.run_id, column, value)
            else:
                continue
            self.cells[row.run_id] = cells
        self.rows = rows
        empty = self.query_one("#runs-empty", Static)
        empty.display = not rows
        table.display = bool(rows)
        if not rows:
            empty.update(f"No runs in {display_path(self.app.context.runs_dir)} yet. Press n to start one, d for the CPU demo.")
        launched = self.app.context.launched
        if launched is not None and launched in table.rows:
            self.app.context.launched = None
            table.move_cursor(row=table.get_row_index(launched))
        elif selected is not None and selected.run_id in table.rows:
            table.move_cursor(row=table.get_row_index(selected.run_id))
        self.fit_footer()

    def fit_footer(self) -> None:
        """Offer resume, stop and delete as the selected run allows, refreshing the footer only when
        the selection or its state changed (a footer refresh is a repaint)."""
        row = self.selected()
        key = (row.run_id, row.state) if row is not None else None
        if key != self.footer_for:
            self.footer_for = key
            self.refresh_bindings()

    def selected(self) -> RunRow | None:
        """The run under the cursor."""
        table = self.query_one("#runs", DataTable)
        if not self.rows or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((r for r in self.rows if r.run_id == key), None)

    def _run_dir(self):
        row = self.selected()
        if row is None:
            self.notify("No run selected: press n to start one.", severity="warning")
            return None
        from core.runs.rundir import RunDir

        return RunDir(row.path)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Stop and delete show only for a selected run they apply to; resume for any selected run."""
        if action not in ("resume", "stop", "delete"):
            return True
        row = self.selected() if self.rows else None
        if row is None:
            return False
        if action == "resume":
            return True  # on a run that cannot resume, r says why and what to do instead
        return row.state in LIVE_STATES if action == "stop" else row.state in ENDED_STATES

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.fit_footer()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_attach()

    def on_resize(self) -> None:
        """The run column takes the width the others leave (the ids are long; every column stays visible)."""
        table = self.query_one("#runs", DataTable)
        fixed = sum(width for _, _, width in self.COLUMNS) + 2 * table.cell_padding * (len(self.COLUMNS) + 1) + 4
        column = table.columns[next(iter(table.columns))]
        width = max(16, self.size.width - fixed)
        if column.width != width:
            column.width = width
            self.run_width = width
            if self.rows:  # the run ids are broken into lines for this width: the rows again
                table.clear()
                self.cells = {}
                self.show_runs(self.rows)
            table.refresh(layout=True)

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def action_new_run(self) -> None:
        """A new wizard, or the one left unfinished when the user wants it back."""
        draft = self.app.context.draft
        if draft is None:
            self.app.open_wizard()
            return
        from tui.widgets.confirm import ConfirmScreen

        def answered(resume: bool | None) -> None:
            if resume is None:
                return
            self.app.context.draft = None
            if resume:
                self.app.open_wizard(draft.state, draft.index, draft.reached)
            else:
                self.app.open_wizard()

        question = f"Continue the wizard you left ({draft.summary()})?"
        self.app.push_screen(ConfirmScreen(question, yes="Continue", no="Start over", danger=False), answered)

    def action_open_config(self) -> None:
        """Open a run.toml or a kohya dataset config in the wizard, everything filled in."""
        from pathlib import Path

        from tui.screens.open_config import OpenConfigScreen

        def opened(state: object) -> None:
            if state is not None:
                self.app.open_wizard(state, state.landing_step(), reached=len(STEPS) - 1)

        self.app.push_screen(OpenConfigScreen(Path.cwd(), self.app.context.gpus()), opened)

    def action_attach(self) -> None:
        run = self._run_dir()
        if run is not None:
            self.app.open_dashboard(run)

    def action_logs(self) -> None:
        run = self._run_dir()
        if run is not None:
            from tui.screens.logs import LogScreen

            self.app.push_screen(LogScreen(run))

    def action_resume(self) -> None:
        """Resume a paused run, or, once the user agrees, continue an ended one in its folder from its
        newest checkpoint (or from the start when it has none)."""
        run = self._run_dir()
        if run is None:
            return
        state = run.state
        if state == "paused":
            self._ask_trainer(run, "resume")
            return
        from core.launch.start import resume_point
        from tui.widgets.confirm import ConfirmScreen

        point = resume_point(run)
        if state == "finished" or state not in ENDED_STATES:
            self._resume(run, point)  # refused with the sentence that says what to do instead
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._resume(run, point)

        self.app.push_screen(ConfirmScreen(f"Resume {run.id} {point}?", yes="Resume", danger=False), answered)

    def _ask_trainer(self, run, action: str) -> None:
        from core.launch.control import ask

        try:
            ask(run, action)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.notify(f"Asked {run.id} to {action}.")

    def _resume(self, run, point: str) -> None:
        from core.launch.start import resume_run

        try:
            resume_run(run)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.notify(f"Resuming {run.id} {point}.")
        self.app.open_dashboard(run)

    def action_stop(self) -> None:
        """Stop the selected live run once the user agrees (the trainer saves first)."""
        run = self._run_dir()
        if run is None:
            return
        from tui.widgets.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self.stop_run(run)

        self.app.push_screen(ConfirmScreen(f"Stop {run.id}? It saves a checkpoint first.", yes="Stop"), answered)

    @work(thread=True, group="stop")
    def stop_run(self, run) -> None:
        from core.launch.control import stop_run

        self.app.call_from_thread(self.notify, f"Stopping {run.id}: saving first…")
        try:
            result = stop_run(run)
        except UserError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", timeout=10)
            return
        self.app.call_from_thread(self.notify, f"{run.id} is {result.state}.")

    def action_delete(self) -> None:
        """Delete the selected ended run's folder once the user agrees (only that folder)."""
        run = self._run_dir()
        if run is None:
            return
        from tui.widgets.confirm import ConfirmScreen

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(run)

        question = f"Delete {run.id}? Its folder {display_path(run.path)} goes (checkpoints, samples, outputs); the dataset stays."
        self.app.push_screen(ConfirmScreen(question, yes="Delete"), answered)

    def _delete(self, run) -> None:
        from core.runs.listing import delete_run

        try:
            delete_run(run)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        self.notify(f"Deleted {run.id}.")
        self.refresh_runs()

    def action_demo(self) -> None:
        """Build the demo (tiny model, generated dataset) in ./demo, then open the wizard filled in with it."""
        self.notify("Preparing the CPU demo in ./demo (tiny model, generated dataset)…")
        self.prepare_demo()

    @work(thread=True, exclusive=True, group="demo")
    def prepare_demo(self) -> None:
        from core.demo import prepare_demo

        try:
            demo = prepare_demo(self.app.context.workdir or "demo")
        except Exception as exc:  # noqa: BLE001 - shown to the user with the fix, never a crash
            self.app.call_from_thread(self.notify, f"The demo could not be prepared: {exc}", severity="error", timeout=15)
            return
        self.app.call_from_thread(self._open_demo, demo)

    def _open_demo(self, demo: object) -> None:
        self.app.context.demo = demo
        self.app.open_wizard()


def run_id_cell(run_id: str, width: int):
    """The run id in the run column, whole: broken after a ``-`` into lines that fit ``width``."""
    from rich.text import Text

    return Text("\n".join(break_lines(run_id, width, after="-_.")))
