"""The last lines of a log in a fixed-height pane: a new line repaints the pane, never the screen's layout.

Textual's ``Log`` grows its virtual size with every line, and each growth is a layout pass of
the whole screen: following a run that writes a line a second cost more than the rest of the
dashboard together. The full, scrollable log is one key away (``LogScreen``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.widget import Widget

#: Control characters (colour escapes, bells …) a process may write: shown as � so they cannot move the cursor.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class LogTail(Widget):
    """Shows the newest lines that fit, each cropped to the width."""

    def __init__(self, keep: int = 200, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.lines: deque[str] = deque(maxlen=keep)

    def write_lines(self, lines: Iterable[str]) -> None:
        """Append lines and repaint (no layout)."""
        self.lines.extend(_CONTROL.sub("\ufffd", line.expandtabs()) for line in lines)
        self.refresh()

    def render(self) -> Text:
        height = max(self.content_size.height, 1)
        shown = list(self.lines)[-height:]
        return Text("\n".join(shown), no_wrap=True, overflow="crop", end="")
