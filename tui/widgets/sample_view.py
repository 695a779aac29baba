"""The newest sample image, rendered in the terminal, with the history per prompt to step through."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from core.monitor.samples import Sample


def image_class(half_blocks: bool) -> type[Widget]:
    """Half-blocks drawn by sdtui (tmux, SSH without graphics), else the best the terminal supports
    through textual-image (imported by ``tui.app.prepare_images`` before Textual starts)."""
    if half_blocks:
        from tui.widgets.halfblock import HalfBlockImage

        return HalfBlockImage
    from textual_image.widget import Image

    return Image


class SampleView(Vertical):
    """One sample at a time: ``[``/``]`` go back and forth in its prompt's history, ``t`` changes the prompt."""

    def __init__(self, run_path: Path, half_blocks: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.run_path = Path(run_path)
        self.half_blocks = half_blocks
        self.history: dict[int, list[Sample]] = {}
        self.prompt_index = 0
        self.position = -1
        self.follow = True
        self.caption: object = None

    def compose(self) -> ComposeResult:
        yield image_class(self.half_blocks)(id="sample-image")
        yield Static("No samples yet.", id="sample-caption")

    def set_samples(self, history: dict[int, list[Sample]], newest: Sample | None) -> None:
        """New history; when following, jump to the newest sample."""
        self.history = history
        if newest is not None and self.follow:
            self.prompt_index = newest.prompt_index
            self.position = len(history.get(newest.prompt_index, [])) - 1
        self._show()

    def step_history(self, delta: int) -> None:
        """Older (-1) or newer (+1) sample of the current prompt; following stops until the newest is reached."""
        samples = self.history.get(self.prompt_index, [])
        if not samples:
            return
        self.position = min(max(self.position + delta, 0), len(samples) - 1)
        self.follow = self.position == len(samples) - 1
        self._show()

    def next_prompt(self) -> None:
        """Show the newest sample of the next prompt."""
        prompts = sorted(self.history)
        if not prompts:
            return
        i = prompts.index(self.prompt_index) if self.prompt_index in prompts else -1
        self.prompt_index = prompts[(i + 1) % len(prompts)]
        self.position = len(self.history[self.prompt_index]) - 1
        self.follow = True
        self._show()

    def _show(self) -> None:
        samples = self.history.get(self.prompt_index, [])
        if not samples or not 0 <= self.position < len(samples):
            self._caption("No samples yet.")
            return
        sample = samples[self.position]
        image = self.query_one("#sample-image")
        path = self.run_path / sample.path
        if path.is_file() and image.image != str(path):
            image.image = str(path)
        prompt = sample.prompt.split(" --")[0]
        self._caption(
            Text.assemble(
                f"step {sample.step} · prompt {sample.prompt_index + 1}/{len(self.history)} · {self.position + 1}/{len(samples)}\n",
                ("[ ] history  t prompt  v grid\n", "dim"),
                prompt,
            )
        )

    def _caption(self, content: str | Text) -> None:
        """Update the caption only when it changed (each update is a layout pass)."""
        if content != self.caption:
            self.caption = content
            self.query_one("#sample-caption", Static).update(content)
