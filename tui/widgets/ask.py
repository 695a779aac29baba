"""A one-field question as a modal; a check keeps it open with its sentence until the answer is valid."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from core.errors import UserError
from tui.widgets.field_input import FieldInput


class AskScreen(ModalScreen[str | None]):
    """Returns the typed text (Enter) or None (escape).

    ``check`` raises UserError for an answer that cannot be used: the dialog stays open with
    that sentence under the field.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str = "", check: Callable[[str], object] | None = None, help: str = "Enter to apply, Esc to cancel") -> None:
        super().__init__()
        self.question = question
        self.value = value
        self.check = check
        self.help = help

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question)
            yield FieldInput(self.value, id="answer", compact=True)
            yield Static("", id="answer-error")
            yield Static(self.help, classes="help")

    def on_mount(self) -> None:
        self.query_one("#answer-error", Static).display = False

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#answer-error", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.check is not None:
            try:
                self.check(event.value)
            except UserError as exc:
                error = self.query_one("#answer-error", Static)
                error.update(str(exc))
                error.display = True
                return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
