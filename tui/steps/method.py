"""Step 3: the training method, each with what it is for and what it costs."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import RadioButton, RadioSet, Static

from core.settings import METHODS
from tui.steps.base import Step
from tui.wizard_state import METHOD_TEXT


class MethodStep(Step):
    title = "Method"

    def compose(self) -> ComposeResult:
        yield Static("Method", classes="step-title")
        with RadioSet(id="method", compact=True):
            for method in METHODS:
                yield RadioButton(METHOD_TEXT[method][0], value=method == self.state.method, id=f"method-{method}")
        for method in METHODS:
            title, line = METHOD_TEXT[method]
            yield Static(f"[b]{title}[/b]: {line}", classes="method-line")

    def load(self) -> None:
        self.query_one(f"#method-{self.state.method}", RadioButton).value = True

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        method = (event.pressed.id or "").removeprefix("method-")
        if method != self.state.method:
            self.state.method = method
            self.state.recipe = ""
        self.changed()
