"""The caption options of one subset (prefix, suffix, shuffle, kept tags, dropout, tag dropout) as
a modal: the dataset step's ``c`` key. Enter applies them (a wrong value keeps it open with its
sentence), Esc cancels; what is typed is checked by the caller's ``apply``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from core.errors import UserError
from tui.widgets.field_input import FieldInput

#: The fields: option key and label, in the order they apply to a caption.
FIELDS = (
    ("caption_prefix", "prefix"),
    ("caption_suffix", "suffix"),
    ("shuffle_caption", "shuffle tags"),
    ("keep_tokens", "keep first"),
    ("caption_dropout_rate", "dropout"),
    ("caption_tag_dropout_rate", "tag dropout"),
)


def shown(value: Any) -> str:
    """An option's value as its field shows it (booleans as yes/no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def summary(values: dict[str, Any]) -> str:
    """The options in one line: only what changes a caption."""
    parts = [f"prefix {values['caption_prefix']!r}" if values["caption_prefix"] else "", f"suffix {values['caption_suffix']!r}" if values["caption_suffix"] else ""]
    if values["shuffle_caption"]:
        parts.append(f"tags shuffled (first {values['keep_tokens']} kept)" if values["keep_tokens"] else "tags shuffled")
    if values["caption_dropout_rate"]:
        parts.append(f"dropout {values['caption_dropout_rate']:g}")
    if values["caption_tag_dropout_rate"]:
        parts.append(f"tag dropout {values['caption_tag_dropout_rate']:g}")
    return ", ".join(p for p in parts if p) or "as written"


class SubsetCaptionScreen(ModalScreen[bool]):
    """Returns True when the options were applied, False on Esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, subset: str, values: dict[str, Any], apply: Callable[[dict[str, str]], None]) -> None:
        super().__init__()
        self.subset, self.values, self.apply = subset, values, apply

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"Captions of {self.subset}", classes="step-title")
            for key, label in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label, classes="field-label")
                    yield FieldInput(shown(self.values[key]), id=f"opt-{key}", classes="field-input", compact=True)
            yield Static("", id="options-error")
            yield Static("Applied to this subset's captions when training (the caption files are not changed). Enter applies, Esc cancels.", classes="help")

    def on_mount(self) -> None:
        self.query_one("#options-error", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        typed = {key: self.query_one(f"#opt-{key}", Input).value for key, _ in FIELDS}
        try:
            self.apply(typed)
        except UserError as exc:
            error = self.query_one("#options-error", Static)
            error.update(f"[b red]{exc}[/]")
            error.display = True
            return
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)
