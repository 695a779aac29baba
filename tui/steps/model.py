"""Step 1: the base model — a path, a hub id, or a family for planning only."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Input, Static

from core.errors import UserError
from core.families import variant_names
from tui.steps.base import Step
from tui.widgets.path_input import PathInput


class ModelStep(Step):
    title = "Model"

    def compose(self) -> ComposeResult:
        yield Static("Base model", classes="step-title")
        yield Static(
            "A diffusers folder, a single .safetensors/.ckpt file, a hub id (org/name), or a model name to plan without weights (sdxl, flux-dev, qwen-image, …). → completes paths and model names.",
            classes="help",
        )
        yield PathInput(self.state.base_dir, names=variant_names(), id="model-path", placeholder="/models/sd_xl_base_1.0.safetensors", compact=True)
        yield Static("", id="model-family")

    def load(self) -> None:
        field = self.query_one("#model-path", PathInput)
        if field.value != self.state.model:
            field.value = self.state.model
        self._detect(self.state.model)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._detect(event.value)
        self.changed()

    def _detect(self, text: str) -> None:
        label = self.query_one("#model-family", Static)
        try:
            family = self.state.set_model(text)
        except UserError:
            label.update("")
            return
        note = " — planning only: Launch needs real weights" if self.state.planning_only else ""
        label.update(f"Detected family: [b]{family}[/b]{note}")
