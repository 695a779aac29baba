"""A progress bar with its percentage that repaints only when what it shows changes.

Textual's ProgressBar runs a one-second timer for its ETA and repaints on it even with the ETA
hidden, and animates while its total is unknown: on a dashboard that follows a run for hours
that is a redraw a second for nothing.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.format import bar

#: Cells the percentage takes after the bar (`` 100%``).
PERCENT_CELLS = 5


class StepBar(Widget):
    """``total`` and ``progress`` as Textual's ProgressBar has them; an unknown total (None) shows an empty bar."""

    DEFAULT_CSS = "StepBar { height: 1; color: $accent; }"

    def __init__(self, total: float | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.total = total
        self.progress = 0.0
        self.drawn: tuple[int, str] | None = None

    def update(self, total: float | None, progress: float) -> None:
        """New numbers; a repaint only when the bar's cells or the percentage change."""
        self.total, self.progress = total, progress
        if self._cells(self.size.width) != self.drawn:
            self.refresh()

    def _cells(self, width: int) -> tuple[int, str]:
        fraction = self.progress / self.total if self.total else 0.0
        eighths = round(min(max(fraction, 0.0), 1.0) * max(width - PERCENT_CELLS, 1) * 8)
        return eighths, f"{fraction:>4.0%}" if self.total else ""

    def render(self) -> Text:
        width = self.size.width
        self.drawn = self._cells(width)
        fraction = self.progress / self.total if self.total else 0.0
        return Text(bar(fraction, max(width - PERCENT_CELLS, 1)) + " " + self.drawn[1].rjust(PERCENT_CELLS - 1))
