"""Step 7: the run.toml as it will be written and the exact launch command."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Label, Static, TextArea

from core.errors import UserError
from tui.format import display_path
from tui.steps.base import Step
from tui.widgets.field_input import FieldInput


class ReviewStep(Step):
    title = "Review"

    def compose(self) -> ComposeResult:
        yield Static("Review", classes="step-title")
        with Horizontal(classes="field"):
            yield Label("run name", classes="field-label")
            yield FieldInput(id="run-name", classes="field-input", compact=True)
        with Horizontal(classes="field"):
            yield Label("save config to", classes="field-label")
            yield FieldInput(id="config-path", classes="field-input", compact=True)
        yield Static("run.toml", classes="subtitle")
        yield TextArea(id="toml", read_only=True, show_line_numbers=True)
        yield Static("Launch runs, detached (it survives this terminal):", classes="subtitle")
        yield Static("", id="launch-note")
        yield Static("", id="command")

    auto_name: str | None = None

    def load(self) -> None:
        auto = self.state.default_name()
        if not self.state.name or self.state.name == self.auto_name:
            if self.state.config_path in ("", f"{self.state.name}.toml"):
                self.state.config_path = f"{auto}.toml"
            self.state.name = auto
        self.auto_name = auto
        if not self.state.config_path:
            self.state.config_path = f"{self.state.name}.toml"
        for selector, value in (("#run-name", self.state.name), ("#config-path", self.state.config_path)):
            field = self.query_one(selector, Input)
            if field.value != value:
                with field.prevent(Input.Changed):
                    field.value = value
        self.show_config()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "run-name":
            old_default = f"{self.state.name}.toml"
            self.state.name = event.value
            if self.state.config_path == old_default:
                self.state.config_path = f"{event.value}.toml"
                with self.query_one("#config-path", Input).prevent(Input.Changed):
                    self.query_one("#config-path", Input).value = self.state.config_path
        else:
            self.state.config_path = event.value
        self.show_config()
        self.changed()

    def show_config(self) -> None:
        """The TOML text and the command, or the reason there is none yet."""
        toml = self.query_one("#toml", TextArea)
        command = self.query_one("#command", Static)
        try:
            config = self.state.to_config()
        except UserError as exc:
            toml.text = f"# {exc}"
            command.update("")
            return
        from core.config import config_text

        toml.text = config_text(config, self.state.config_path or "run.toml")
        note, text = self.query_one("#launch-note", Static), self.state.launch_note()
        note.update(text)
        note.display = bool(text)
        command.update(self.command_text(config))

    def command_text(self, config: object) -> str:
        """``sdtui train CONFIG`` and the accelerate command it starts (with a placeholder run folder)."""
        from core.launch.accelerate_config import accelerate_config
        from core.launch.command import format_command, launch_command, launch_env

        path = self.state.config_path or "run.toml"
        use_cpu = self.state.machine_gpus().count == 0
        try:
            accel = accelerate_config(config.distributed, config.settings.get("mixed_precision", "no"), use_cpu)
        except UserError as exc:
            return f"sdtui train {path}\n({exc})"
        run_dir = Path(display_path(self.app.context.runs_dir)) / "<run id>"
        argv = launch_command(run_dir, accel, python="python")
        return f"sdtui train {path}\n  → {format_command(argv, launch_env(use_cpu, threads=None) if use_cpu else None)}"
