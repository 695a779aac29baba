"""A checkbox and a radio button whose mark reads on and off without colour (NO_COLOR, a monochrome
terminal, a colour-blind user): Textual draws the same ``X`` / ``●`` either way and only recolours it."""

from __future__ import annotations

from textual import events
from textual.widgets import Checkbox, RadioButton

from tui.widgets.field_input import route_key


class Check(Checkbox):
    """A checkbox showing ``✓`` when on and a blank when off; a key of a burst that reaches it after
    the focus moved on goes to the focused widget."""

    async def _on_key(self, event: events.Key) -> None:
        if not await route_key(self, event):
            await super()._on_key(event)

    @property
    def BUTTON_INNER(self) -> str:  # Textual reads the mark from this name
        return "✓" if self.value else " "


class Radio(RadioButton):
    """A radio button showing ``●`` when chosen and a blank otherwise."""

    @property
    def BUTTON_INNER(self) -> str:  # Textual reads the mark from this name
        return "●" if self.value else " "
