"""What every wizard step has: the shared state and a message when its values change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.containers import VerticalScroll
from textual.message import Message

from core.errors import UserError
from tui.wizard_state import WizardState


class Step(VerticalScroll):
    """One page of the wizard. ``load`` fills the widgets from the state when the page is shown."""

    title = ""

    class Changed(Message):
        """The step changed the state: the wizard checks it again."""

    def __init__(self, state: WizardState, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.state = state

    def load(self) -> None:
        """Fill the widgets from the state (the page is being shown)."""

    def changed(self) -> None:
        """Tell the wizard to check this step again."""
        self.post_message(self.Changed())

    def apply(self, field: str, change: Callable[[], Any]) -> bool:
        """Run ``change`` (a state setter); a UserError is kept as this field's error until fixed."""
        key = f"{self.title}:{field}"
        try:
            change()
        except UserError as exc:
            self.state.field_errors[key] = str(exc)
            ok = False
        else:
            self.state.field_errors.pop(key, None)
            ok = True
        self.changed()
        return ok
