"""Open what the user already has: a run.toml, or a kohya dataset_config.toml with its sample prompts file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static
from textual.worker import Worker, WorkerState

from core.errors import UserError
from tui.widgets.path_input import PathInput


class OpenConfigScreen(ModalScreen[Any]):
    """Returns the filled-in WizardState, or None (escape). A file that cannot be opened keeps the
    dialog open with the sentence."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, base_dir: Path, gpus: Any) -> None:
        super().__init__()
        self.base_dir = base_dir
        self.gpus = gpus

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static("Open a config: a run.toml, or a kohya dataset_config.toml (with its sample prompts file).")
            with Horizontal(classes="dialog-field"):
                yield Label("config", classes="dialog-label")
                yield PathInput(self.base_dir, id="config-file", placeholder="run.toml or dataset_config.toml", compact=True)
            with Horizontal(classes="dialog-field"):
                yield Label("prompts", classes="dialog-label")
                yield PathInput(self.base_dir, id="prompts-file", placeholder="optional, kohya only: sample_prompts.txt", compact=True)
            yield Static("", id="answer-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Open (enter)", variant="primary", id="open", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#answer-error", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._open()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self._open() if event.button.id == "open" else self.dismiss(None)

    def _open(self) -> None:
        self._say("Reading…", error=False)
        self.load(self.query_one("#config-file", Input).value.strip(), self.query_one("#prompts-file", Input).value.strip())

    @work(thread=True, exclusive=True, group="open")
    def load(self, config_text: str, prompts_text: str) -> Any:
        """Read the config and scan its dataset (in a thread); a UserError comes back as its sentence."""
        try:
            return open_config(self._path(config_text), self._path(prompts_text) if prompts_text else None, self.gpus, self.base_dir)
        except UserError as exc:
            return str(exc)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "open" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        result = event.worker.result if event.state == WorkerState.SUCCESS else f"the config could not be opened ({event.worker.error})"
        if isinstance(result, str):
            self._say(result)
        else:
            self.dismiss(result)

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _say(self, text: str, error: bool = True) -> None:
        label = self.query_one("#answer-error", Static)
        label.update(text)
        label.set_class(not error, "-note")
        label.display = True

    def action_cancel(self) -> None:
        self.dismiss(None)


def open_config(path: Path, prompts: Path | None, gpus: Any, base_dir: Path) -> Any:
    """A WizardState from a run.toml or a kohya dataset config (+ prompts file); UserError when neither."""
    from core.config import load_config
    from core.kohya import is_dataset_config, run_config_from_kohya
    from tui.wizard_state import WizardState

    if not str(path) or not path.is_file():
        from tui.format import display_path

        raise UserError(f"{display_path(path)} is not a file; type the path of a run.toml or of a kohya dataset_config.toml")
    if is_dataset_config(path):
        config = run_config_from_kohya(path, prompts)
    elif prompts is not None:
        raise UserError(f"a prompts file goes with a kohya dataset config; {path.name} is a run config, its prompts are in its [samples]")
    else:
        config = load_config(path, complete=False)
    return WizardState.from_config(config, gpus, base_dir)
