"""One run.toml setting as a form row: a switch, a choice or a text field, with its help."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Checkbox, Input, Label, Select, Static

from core.settings import Setting
from tui.widgets.field_input import FieldInput
from tui.widgets.field_select import FieldSelect
from tui.widgets.toggles import Check


class SettingField(Horizontal):
    """Posts ``SettingField.Edited(key, value)`` when the user changes the value."""

    class Edited(Message):
        def __init__(self, key: str, value: Any) -> None:
            super().__init__()
            self.key = key
            self.value = value

    def __init__(self, setting: Setting, value: Any, **kwargs: Any) -> None:
        super().__init__(classes="field", **kwargs)
        self.setting = setting
        self.value = value

    def compose(self) -> ComposeResult:
        s = self.setting
        yield Label(s.key, classes="field-label")
        if s.type is bool:
            yield Check("", bool(self.value), id=f"v-{s.key}", compact=True)
        elif s.choices:
            yield FieldSelect([(str(c), c) for c in s.choices], value=self.value, allow_blank=False, id=f"v-{s.key}", classes="field-input", compact=True)
        else:
            yield FieldInput(_text(self.value), id=f"v-{s.key}", classes="field-input", compact=True)
        yield Static(s.help, classes="field-help")

    def set_value(self, value: Any) -> None:
        """Show ``value`` without posting Edited."""
        self.value = value
        widget = self.query_one(f"#v-{self.setting.key}")
        with widget.prevent(Input.Changed, Checkbox.Changed, Select.Changed):
            if isinstance(widget, Checkbox):
                widget.value = bool(value)
            elif isinstance(widget, Select):
                widget.value = value
            else:
                widget.value = _text(value)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self._edited(event.value)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._edited(event.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._edited(event.value)

    def _edited(self, value: Any) -> None:
        if value == self.value or (isinstance(value, str) and value == _text(self.value)):
            return
        self.value = value
        self.post_message(self.Edited(self.setting.key, value))


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
