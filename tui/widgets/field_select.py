"""A dropdown that leaves the focus where a burst of keys moved it.

Keys that arrive in one burst (``Enter Tab Tab 3`` over SSH) are all routed to the open list, the
widget focused when they arrived. Textual's list then kept the typed text for its type-to-search,
and the Select took the focus back when the list closed, a message after the Tabs had moved it on:
the Tabs and the text were lost. Here the list hands on the keys it gets after the focus left it,
and closes without taking the focus back from a field the user has since moved to.
"""

from __future__ import annotations

from typing import Any

from textual import events, on
from textual.app import ComposeResult
from textual.widgets import Select
from textual.widgets._select import SelectCurrent, SelectOverlay

from tui.widgets.field_input import route_key


class _FieldOverlay(SelectOverlay):
    """The open list; keys that reach it after the focus left go to the focused widget."""

    async def _on_key(self, event: events.Key) -> None:
        if not await route_key(self, event):
            await super()._on_key(event)


class FieldSelect(Select[Any]):
    """A Select whose closing list refocuses it only while the focus is still inside it."""

    async def _on_key(self, event: events.Key) -> None:
        if not await route_key(self, event):
            await super()._on_key(event)

    def compose(self) -> ComposeResult:
        yield SelectCurrent(self.prompt)
        yield _FieldOverlay(type_to_search=self._type_to_search).data_bind(compact=Select.compact)

    def _focus_still_here(self) -> bool:
        focused = self.screen.focused
        return focused is None or focused is self or self in focused.ancestors

    @on(SelectOverlay.UpdateSelection)
    def _chosen(self, event: SelectOverlay.UpdateSelection) -> None:
        event.stop()
        event.prevent_default()
        value = self._options[event.option_index][1]
        if value != self.value:
            self.value = value
        if self._focus_still_here():
            self.focus()
        self.expanded = False

    @on(SelectOverlay.Dismiss)
    def _dismissed(self, event: SelectOverlay.Dismiss) -> None:
        event.stop()
        event.prevent_default()
        self.expanded = False
        if not event.lost_focus and self._focus_still_here():
            self.focus()
