"""Lines to read or copy, as a modal (the TensorBoard command, for one)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class NoteScreen(ModalScreen[None]):
    """A title and some lines, shown whole (long lines fold, never cut); Esc, Enter or q closes it."""

    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, title: str, lines: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.title_text, classes="section-title")
            yield Static("\n".join(self.lines), id="note-lines")
            yield Static("Esc closes; select with the mouse (or Shift+drag in tmux) to copy.", id="note-help")
