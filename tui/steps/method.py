"""Step 3: the training method, what it is for, and what that method needs (rank, token, class prompt …)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import RadioButton, RadioSet, Static

from core.settings import METHODS, SCHEMA, SETTINGS
from tui.steps.base import Step
from tui.widgets.setting_field import SettingField
from tui.widgets.toggles import Radio
from tui.wizard_state import METHOD_FIELDS, METHOD_TEXT


class MethodStep(Step):
    title = "Method"

    def compose(self) -> ComposeResult:
        yield Static("Method", classes="step-title")
        with RadioSet(id="method", compact=True):
            for method in METHODS:
                title, _ = METHOD_TEXT[method]
                yield Radio(title, value=method == self.state.method, id=f"method-{method}")
        yield Static("", id="method-line", classes="method-line")
        for method in METHODS:
            options, settings = METHOD_FIELDS[method]
            with Vertical(id=f"fields-{method}", classes="method-fields"):
                for key in options:
                    yield SettingField(SCHEMA["method"][key], self.state.method_options[key], id=f"m-{key}")
                for key in settings:
                    yield SettingField(SETTINGS[key], self.state.settings[key], id=f"m-{key}")

    def load(self) -> None:
        offered = self.state.methods()
        for method in METHODS:  # only the family's methods are offered (and reached with the arrow keys)
            button = self.query_one(f"#method-{method}", RadioButton)
            button.display = method in offered
            button.disabled = method not in offered
        if self.state.method not in offered:
            self._choose(offered[0])
        self.query_one(f"#method-{self.state.method}", RadioButton).value = True
        for field in self.query(SettingField):
            key = field.setting.key
            field.set_value(self.state.method_options[key] if key in self.state.method_options else self.state.settings.get(key, field.setting.default))
        self._show_method()

    def _show_method(self) -> None:
        title, line = METHOD_TEXT[self.state.method]
        self.query_one("#method-line", Static).update(f"[b]{title}[/b]: {line}")
        for method in METHODS:
            self.query_one(f"#fields-{method}").display = method == self.state.method

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        event.stop()
        self._choose((event.pressed.id or "").removeprefix("method-"))
        self._show_method()
        self.changed()

    def _choose(self, method: str) -> None:
        """Make ``method`` the run's (a recipe picked for another method is dropped)."""
        if method != self.state.method:
            self.state.method = method
            self.state.recipe = ""
            self.state.sync_prompts()

    def on_setting_field_edited(self, event: SettingField.Edited) -> None:
        event.stop()
        self.apply(event.key, lambda: self.state.set_method_field(event.key, event.value))
