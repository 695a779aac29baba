"""The new-run wizard: one screen, seven steps the user can go back to; Next only when the step is valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, ContentSwitcher, Footer, Header, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from core.errors import UserError
from tui.format import display_path
from tui.steps.base import Step
from tui.steps.dataset import DatasetStep
from tui.steps.method import MethodStep
from tui.steps.model import ModelStep
from tui.steps.recipe import RecipeStep
from tui.steps.review import ReviewStep
from tui.steps.samples import SamplesStep
from tui.steps.schedule import ScheduleStep
from tui.wizard_state import STEPS, WizardState

STEP_CLASSES = (ModelStep, DatasetStep, MethodStep, RecipeStep, ScheduleStep, SamplesStep, ReviewStep)


@dataclass
class Draft:
    """A wizard the user left before launching: its choices and how far it got."""

    state: WizardState
    index: int
    reached: int

    def summary(self) -> str:
        """``model …, dataset …, step Recipe`` for the question that offers it again."""
        parts = [f"model {self.state.model}" if self.state.model else "", f"dataset {self.state.dataset}" if self.state.dataset else ""]
        return ", ".join([p for p in parts if p] + [f"at step {self.index + 1} {STEPS[self.index]}"])


class WizardScreen(Screen):
    """Model → dataset → method → recipe → schedule → samples → review."""

    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+b", "back", "Back", priority=True),
        Binding("ctrl+s", "save", "Save config", priority=True),
        Binding("ctrl+l", "launch", "Launch", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, state: WizardState | None = None, index: int = 0, reached: int = 0) -> None:
        super().__init__()
        self.state = state
        self.index = index
        self.reached = max(reached, index)
        self.error: str | None = None
        self.launching = False

    def compose(self) -> ComposeResult:
        if self.state is None:
            self.state = new_state(self.app.context)
        yield Header()
        with Horizontal(id="wizard-body"):
            yield OptionList(*[Option(f"{n + 1} {name}", id=f"nav-{n}") for n, name in enumerate(STEPS)], id="step-list")
            with ContentSwitcher(initial="step-0", id="pages"):
                for n, cls in enumerate(STEP_CLASSES):
                    yield cls(self.state, id=f"step-{n}")
        with Vertical(id="wizard-bottom"):
            yield Static("", id="field-help")
            yield Static("", id="step-error")
            with Horizontal(id="nav"):
                yield Button("◀ Back (ctrl+b)", id="back", compact=True)
                yield Button("Next (ctrl+n) ▶", id="next", variant="primary", compact=True)
                yield Button("Save config (ctrl+s)", id="save", compact=True)
                yield Button("Launch (ctrl+l)", id="launch", variant="success", compact=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "new run"
        self.show_step(self.index)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Save and Launch are keys of the Review step, Next of the others (the footer fits 80 columns)."""
        review = self.index == len(STEPS) - 1
        if action in ("save", "launch"):
            return review
        if action == "next":
            return not review
        return True

    @property
    def step(self) -> Step:
        return self.query_one(f"#step-{self.index}", Step)

    def show_step(self, index: int) -> None:
        """Show a step, fill it from the state and check it."""
        self.index = index
        self.reached = max(self.reached, index)
        self.refresh_bindings()
        self.query_one("#pages", ContentSwitcher).current = f"step-{index}"
        self.step.load()
        self.query_one("#step-list", OptionList).highlighted = index
        self.validate()
        focusable = self.step.query("Input, TextArea, OptionList, RadioSet, DataTable").first() if self.step.query("Input, TextArea, OptionList, RadioSet, DataTable") else None
        if focusable is not None:
            focusable.focus()

    def validate(self) -> bool:
        """Check the current step; show its sentence and enable Next only when it passes."""
        try:
            self.state.check(self.index)
            self.error = None
        except UserError as exc:
            self.error = str(exc)
        error = self.query_one("#step-error", Static)
        error.update(self.error or "")
        error.display = self.error is not None
        review = self.index == len(STEPS) - 1
        self.query_one("#next", Button).disabled = self.error is not None or review
        self.query_one("#next", Button).display = not review
        self.query_one("#save", Button).display = review
        self.query_one("#launch", Button).display = review
        self.query_one("#back", Button).disabled = self.index == 0
        self._mark_steps()
        return self.error is None

    def _mark_steps(self) -> None:
        """▶ the current step, ✓ every step reached that checks out (also after going back)."""
        options = self.query_one("#step-list", OptionList)
        for n, name in enumerate(STEPS):
            if n == self.index:
                mark = "▶"
            else:
                mark = "✓" if n <= self.reached and self._checks_out(n) else " "
            options.replace_option_prompt_at_index(n, f"{mark} {n + 1} {name}")
            options.get_option_at_index(n).disabled = n > self.reached

    def _checks_out(self, step: int) -> bool:
        try:
            self.state.check(step)
        except UserError:
            return False
        return True

    def on_step_changed(self, event: Step.Changed) -> None:
        event.stop()
        self.validate()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id != "step-list":
            return
        event.stop()
        target = int((event.option.id or "nav-0").removeprefix("nav-"))
        if target <= self.reached and target != self.index:
            self.show_step(target)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"next": self.action_next, "back": self.action_back, "save": self.action_save, "launch": self.action_launch}
        if event.button.id in actions:
            actions[event.button.id]()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """The help of the focused setting in one line above the buttons (narrow terminals hide the help column)."""
        from tui.widgets.setting_field import SettingField

        # the widget focused now, not the event's: in a burst of Tabs the event comes after the focus moved on
        focused = self.focused
        field = next((node for node in focused.ancestors_with_self if isinstance(node, SettingField)), None) if focused is not None else None
        self.query_one("#field-help", Static).update(f"{field.setting.key}: {field.setting.help}" if field is not None else "")

    def action_next(self) -> None:
        if self.index == len(STEPS) - 1:
            return
        if not self.validate():
            self.notify(self.error or "", severity="error", timeout=8)
            return
        self.show_step(self.index + 1)

    def action_back(self) -> None:
        if self.index > 0:
            self.show_step(self.index - 1)

    def action_cancel(self) -> None:
        """Ask before leaving; what was chosen is kept, and New run offers it again."""
        if self.launching:
            self.notify("The run is being launched; its dashboard opens in a moment.", severity="warning")
            return
        from tui.widgets.confirm import ConfirmScreen

        def answered(leave: bool | None) -> None:
            if leave:
                self.app.context.draft = Draft(self.state, self.index, self.reached)
                self.app.pop_screen()

        question = "Leave the wizard? Your choices are kept: New run (n on home) offers them again."
        self.app.push_screen(ConfirmScreen(question, yes="Leave", no="Stay", danger=False), answered)

    def _ready(self) -> bool:
        """Every step checks out; otherwise go to the first that does not."""
        for n in range(len(STEPS)):
            try:
                self.state.check(n)
            except UserError as exc:
                if n != self.index and n <= self.reached:
                    self.show_step(n)
                self.notify(f"{STEPS[n]}: {exc}", severity="error", timeout=10)
                return False
        return True

    def action_save(self) -> Path | None:
        """Write run.toml without launching."""
        if self.index != len(STEPS) - 1 or not self._ready():
            return None
        from core.config import save_config

        try:
            path = save_config(self.state.to_config(), self.state.resolved_config_path())
        except (UserError, OSError) as exc:
            self.notify(f"could not save the config: {exc}", severity="error", timeout=10)
            return None
        self.notify(f"Saved {display_path(path)}: Launch starts it now, or later from any terminal: sdtui train {display_path(path)}")
        return path

    def action_launch(self) -> None:
        if self.index != len(STEPS) - 1:
            return
        try:
            self.state.check_launch()
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        path = self.action_save()
        if path is not None:
            self.query_one("#launch", Button).disabled = True
            self.launching = True
            self.launch(path)

    @work(thread=True, exclusive=True, group="launch")
    def launch(self, path: Path, allow_concurrent: bool = False) -> Any:
        """Start the detached run (validation and preflight can take a moment); the result comes back
        as this worker's state change, handled on the UI thread (``on_worker_state_changed``). A live
        run of the same config comes back as ``AlreadyLive``: the user is asked before a second starts."""
        from core.launch.start import ConcurrentRun, start_run

        try:
            return start_run(path, self.app.context.runs_dir, [], allow_concurrent=allow_concurrent)
        except ConcurrentRun as exc:
            return AlreadyLive(str(exc), exc.run_id, path)
        except UserError as exc:
            return LaunchFailed(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown with the way out instead of ending the app
            return LaunchFailed(f"the launch failed ({exc}); the config is saved in {path}, start it with: sdtui train {path}")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "launch" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        result = event.worker.result if event.state == WorkerState.SUCCESS else LaunchFailed(f"the launch failed ({event.worker.error})")
        if isinstance(result, AlreadyLive):
            self.ask_concurrent(result)
            return
        if isinstance(result, LaunchFailed):
            self.launching = False
            self.query_one("#launch", Button).disabled = False
            self.notify(result.message, severity="error", timeout=15)
            return
        self.launched(result)

    def ask_concurrent(self, live: AlreadyLive) -> None:
        """A run of the same config is live on the same GPUs: launch a second one only when the user says so."""
        from tui.widgets.confirm import ConfirmScreen

        def answered(second: bool | None) -> None:
            if second:
                self.launch(live.path, allow_concurrent=True)
                return
            self.launching = False
            self.query_one("#launch", Button).disabled = False
            self.notify(f"Not launched: run {live.run_id} of this config is still live; its dashboard is on home.", timeout=8)

        question = f"Run {live.run_id} of the same config is live on the same GPUs (two runs share their memory and may both run out). Start a second one beside it?"
        self.app.push_screen(ConfirmScreen(question, yes="Launch a second", no="Cancel", danger=True), answered)

    def launched(self, run: Any) -> None:
        """The run is detached: the wizard is done, its dashboard takes this screen's place."""
        from tui.screens.dashboard import DashboardScreen

        context = self.app.context
        context.draft = None
        context.launched = run.id
        self.app.switch_screen(DashboardScreen(run))


@dataclass(frozen=True)
class LaunchFailed:
    """Why a launch did not start (the sentence for the notification)."""

    message: str


@dataclass(frozen=True)
class AlreadyLive:
    """The launch found a live run of the same config (``run_id``); ``path`` is the saved config to launch anyway."""

    message: str
    run_id: str
    path: Path


def new_state(context: Any) -> WizardState:
    """A fresh wizard state, filled in with the demo when the session has one."""
    demo = context.demo
    if demo is None:
        return WizardState(gpus=context.gpus(), base_dir=Path.cwd())
    from core.captions.captioners import TAGGER
    from core.config import load_config
    from core.demo import CAPTIONER

    state = WizardState.from_config(load_config(demo.config), context.gpus(), demo.root)
    state.captioner_models = {CAPTIONER: str(demo.captioner), TAGGER: str(demo.tagger)}
    return state
