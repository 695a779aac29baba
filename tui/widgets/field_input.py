"""An Input that applies its editing keys in the order they arrive, also in a burst.

Textual runs a widget's key bindings (backspace, delete, home, end …) after the key has
bubbled up to the app, while a printable key is inserted at once: a burst such as a slow SSH
link delivers (backspace then a digit in one read) used to insert the digit first and then
delete it. Here the Input's own bindings run where the key arrives, Tab moves the focus at once,
and a key of the burst routed here before that (the field no longer has the focus) goes on to the
field that has it (``route_key``, also used by the wizard's dropdowns and checkboxes).
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget
from textual.widgets import Input


async def route_key(widget: Widget, event: events.Key) -> bool:
    """Deal with a key where it arrives, in the order of the burst; True when it was dealt with here.

    A burst routes every key to the widget focused when it arrived, and a key a widget does not
    handle travels up to the screen's bindings a message later. So a key that reaches ``widget``
    after the focus moved on goes to the widget focused now, Tab moves the focus at once, and the
    widget's own key bindings (Enter, Space, arrows) run at once.
    """
    focused = widget.screen.focused
    if focused is not None and focused is not widget and widget not in focused.ancestors:
        event.stop()
        event.prevent_default()
        focused.post_message(events.Key(event.key, event.character))
        return True
    if focused is not widget:
        return False
    if event.key in ("tab", "shift+tab"):
        event.stop()
        event.prevent_default()
        widget.screen.focus_next() if event.key == "tab" else widget.screen.focus_previous()
        return True
    bindings = widget._bindings.key_to_bindings.get(event.key)
    if bindings and not event.is_printable:
        event.stop()
        event.prevent_default()
        await widget.run_action(bindings[0].action)
        return True
    return False


class FieldInput(Input):
    """A text field whose edits keep the order of the keys."""

    async def _on_key(self, event: events.Key) -> None:
        if await route_key(self, event):
            self._restart_blink()
            return
        await super()._on_key(event)
