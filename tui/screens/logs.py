"""The log of a run, followed live."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Log

from tui.format import terminal_lines


class LogScreen(Screen):
    """train.log of one run, tailed once a second."""

    BINDINGS = [Binding("escape,q", "app.pop_screen", "Back")]

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        yield Header()
        yield Log(id="log", highlight=False, max_lines=5000)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        from core.monitor import LogTail

        self.sub_title = f"{self.run.path.name} — train.log"
        self.tail = LogTail(self.run.log, lines=1000, raw=True)
        self.polling = False
        self.poll()
        self.set_interval(1.0, self.poll)

    def poll(self) -> None:
        """Start a read unless the previous one is still going."""
        if not self.polling:
            self.polling = True
            self.read_lines()

    @work(thread=True)
    def read_lines(self) -> None:
        try:
            lines = self.tail.poll()
        finally:
            self.polling = False
        if lines:
            self.app.call_from_thread(self.query_one(Log).write_lines, terminal_lines(lines))
