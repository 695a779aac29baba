"""An Input that applies its editing keys in the order they arrive, also in a burst.

Textual runs a widget's key bindings (backspace, delete, home, end …) after the key has
bubbled up to the app, while a printable key is inserted at once: a burst such as a slow SSH
link delivers (backspace then a digit in one read) used to insert the digit first and then
delete it. Here the Input's own bindings run where the key arrives, Tab moves the focus at once,
and a key of the burst routed here before that (the field no longer has the focus) goes on to the
field that has it.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class FieldInput(Input):
    """A text field whose edits keep the order of the keys."""

    async def _on_key(self, event: events.Key) -> None:
        focused = self.screen.focused
        if focused is not None and focused is not self:
            event.stop()
            event.prevent_default()
            focused.post_message(events.Key(event.key, event.character))
            return
        if event.key in ("tab", "shift+tab"):
            event.stop()
            event.prevent_default()
            self.screen.focus_next() if event.key == "tab" else self.screen.focus_previous()
            return
        bindings = self._bindings.key_to_bindings.get(event.key)
        if bindings and not event.is_printable:
            event.stop()
            event.prevent_default()
            self._restart_blink()
            await self.run_action(bindings[0].action)
            return
        await super()._on_key(event)
