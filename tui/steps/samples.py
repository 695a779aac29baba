"""Step 6: sample prompts (kohya syntax), how often to render them, and where the run logs (TensorBoard, W&B)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Checkbox, Input, Label, Select, Static, TextArea

from core.settings import SAMPLERS
from tui.steps.base import Step
from tui.widgets.field_input import FieldInput
from tui.widgets.field_select import FieldSelect
from tui.widgets.toggles import Check


class SamplesStep(Step):
    title = "Samples"

    def compose(self) -> ComposeResult:
        yield Static("Sample images", classes="step-title")
        yield Static(
            "One prompt a line, kohya syntax: --n negative  --w/--h size  --s steps  --l guidance  --d seed  --ss sampler (euler_a, ddim, dpmsolver++ …).",
            classes="help",
        )
        yield TextArea(id="prompts", soft_wrap=True, show_line_numbers=False)
        with Horizontal(classes="field"):
            yield Label("every N steps (0 = off)", classes="field-label")
            yield FieldInput(id="sample-every", type="integer", classes="field-input", compact=True)
        yield Check("also at step 0 (before training)", id="sample-at-start", compact=True)
        with Horizontal(classes="field"):
            yield Label("sampler", classes="field-label")
            yield FieldSelect([(name, name) for name in SAMPLERS], id="sampler", value=self.state.sampler, allow_blank=False, classes="field-input", compact=True)
            yield Static("for prompts without --ss", classes="field-help")
        yield Check("TensorBoard event files in the run's tb/ folder", id="tensorboard", compact=True)
        with Horizontal(classes="field"):
            yield Label("W&B project", classes="field-label")
            yield Input(id="wandb-project", placeholder="empty = off", classes="field-input", compact=True)

    def load(self) -> None:
        self.state.sync_prompts()
        self.query_one("#prompts", TextArea).text = "\n".join(self.state.prompts)
        self.query_one("#sample-every", Input).value = str(self.state.schedule["sample_every_steps"])
        self.query_one("#sample-at-start", Checkbox).value = bool(self.state.schedule["sample_at_start"])
        self.query_one("#sampler", Select).value = self.state.sampler
        self.query_one("#tensorboard", Checkbox).value = bool(self.state.logging["tensorboard"])
        self.query_one("#wandb-project", Input).value = self.state.logging["wandb_project"]

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self.apply("prompts", lambda: self.state.set_prompts(event.text_area.text))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "wandb-project":
            self.apply("wandb_project", lambda: self.state.set_logging("wandb_project", event.value))
        else:
            self.apply("sample_every_steps", lambda: self.state.set_schedule("sample_every_steps", event.value))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        if event.checkbox.id == "tensorboard":
            self.apply("tensorboard", lambda: self.state.set_logging("tensorboard", event.value))
        else:
            self.apply("sample_at_start", lambda: self.state.set_schedule("sample_at_start", event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.apply("sampler", lambda: self.state.set_sampler(event.value))
