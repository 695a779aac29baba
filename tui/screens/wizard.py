"""The new-run wizard: one screen, seven steps the user can go back to; Next only when the step is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, ContentSwitcher, Footer, Header, OptionList, Static
from textual.widgets.option_list import Option

from core.errors import UserError
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


class WizardScreen(Screen):
    """Model → dataset → method → recipe → schedule → samples → review."""

    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+b", "back", "Back", priority=True),
        Binding("ctrl+s", "save", "Save config", priority=True),
        Binding("ctrl+l", "launch", "Launch", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, state: WizardState | None = None) -> None:
        super().__init__()
        self.state = state
        self.index = 0
        self.reached = 0
        self.error: str | None = None

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
            yield Static("", id="step-error")
            with Horizontal(id="nav"):
                yield Button("◀ Back (ctrl+b)", id="back", compact=True)
                yield Button("Next (ctrl+n) ▶", id="next", variant="primary", compact=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "new run"
        self.show_step(0)

    @property
    def step(self) -> Step:
        return self.query_one(f"#step-{self.index}", Step)

    def show_step(self, index: int) -> None:
        """Show a step, fill it from the state and check it."""
        self.index = index
        self.reached = max(self.reached, index)
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
        self.query_one("#step-error", Static).update(self.error or "")
        self.query_one("#next", Button).disabled = self.error is not None or self.index == len(STEPS) - 1
        self.query_one("#back", Button).disabled = self.index == 0
        self._mark_steps()
        return self.error is None

    def _mark_steps(self) -> None:
        options = self.query_one("#step-list", OptionList)
        for n, name in enumerate(STEPS):
            mark = "▶" if n == self.index else ("✓" if n < self.reached or (n == self.index and not self.error) else " ")
            options.replace_option_prompt_at_index(n, f"{mark} {n + 1} {name}")
            options.get_option_at_index(n).disabled = n > self.reached

    def on_step_changed(self, event: Step.Changed) -> None:
        event.stop()
        self.reached = self.index
        self.validate()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id != "step-list":
            return
        event.stop()
        target = int((event.option.id or "nav-0").removeprefix("nav-"))
        if target <= self.reached and target != self.index:
            self.show_step(target)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            self.action_next()
        elif event.button.id == "back":
            self.action_back()

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
        self.app.pop_screen()

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
            if self.index != len(STEPS) - 1:
                self.notify("Save is on the Review step: press ctrl+n until you get there.", severity="warning")
            return None
        from core.config import save_config

        try:
            path = save_config(self.state.to_config(), self.state.resolved_config_path())
        except (UserError, OSError) as exc:
            self.notify(f"could not save the config: {exc}", severity="error", timeout=10)
            return None
        self.notify(f"Saved {path}. Start it later with: sdtui train {path}")
        return path

    def action_launch(self) -> None:
        if self.index != len(STEPS) - 1:
            self.notify("Launch is on the Review step: press ctrl+n until you get there.", severity="warning")
            return
        try:
            self.state.check_launch()
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        path = self.action_save()
        if path is not None:
            self.query_one("#launch", Button).disabled = True
            self.launch(path)

    @work(thread=True, exclusive=True, group="launch")
    def launch(self, path: Path) -> None:
        """Start the detached run (validation and preflight can take a moment), then open its dashboard."""
        from core.launch.start import start_run

        try:
            run = start_run(path, self.app.context.runs_dir, [])
        except UserError as exc:
            self.app.call_from_thread(self.launch_failed, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - shown with the way out instead of ending the app
            self.app.call_from_thread(self.launch_failed, f"the launch failed ({exc}); the config is saved in {path}, start it with: sdtui train {path}")
            return
        self.app.call_from_thread(self.launched, run)

    def launch_failed(self, message: str) -> None:
        self.query_one("#launch", Button).disabled = False
        self.notify(message, severity="error", timeout=15)

    def launched(self, run: Any) -> None:
        self.app.pop_screen()
        self.app.open_dashboard(run)


def new_state(context: Any) -> WizardState:
    """A fresh wizard state, filled in with the demo when the session has one."""
    state = WizardState(gpus=context.gpus(), base_dir=Path.cwd())
    demo = context.demo
    if demo is not None:
        from core.config import load_config

        config = load_config(demo.config)
        state.base_dir = demo.root
        state.name = config.name
        state.set_model(str(demo.model))
        state.dataset = str(demo.dataset)
        state.scan_dataset()
        state.method = config.method
        state.settings.update(config.settings)
        state.keep_settings = True
        state.recipe = str(config.settings.get("recipe") or "")
        state.schedule.update(config.schedule)
        state.prompts = list(config.prompts)
        state.config_path = str(demo.config)
    return state
