"""The samples of every prompt across the steps: one row per prompt, one column per sample step."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from core.monitor.samples import Sample
from tui.widgets.halfblock import HalfBlockImage

#: The smallest sample drawn, in terminal rows (two pixel rows each); fewer prompts get taller ones.
MIN_ROWS = 5
#: Columns between two samples.
GAP = 1


class SampleGridScreen(Screen):
    """``←``/``→`` page to older or newer steps; the newest steps are in view first. Half-block images,
    so it works in tmux and over SSH."""

    BINDINGS = [
        Binding("left", "page(-1)", "Older steps", priority=True),
        Binding("right", "page(1)", "Newer steps", priority=True),
        Binding("escape,v,q", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_path: Path, history: dict[int, list[Sample]]) -> None:
        super().__init__()
        self.run_path = Path(run_path)
        self.history = history
        self.end: int | None = None  # the index after the last step column shown; None: the newest
        self.drawn: tuple = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="grid-range")
        yield VerticalScroll(id="grid")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_path.name}: samples over the steps"

    def on_resize(self) -> None:
        self.redraw()

    def set_history(self, history: dict[int, list[Sample]]) -> None:
        """New samples from the dashboard: redrawn when they add a step or a prompt."""
        self.history = history
        self.redraw()

    def steps(self) -> list[int]:
        """Every step that has a sample of some prompt, oldest first."""
        return sorted({sample.step for samples in self.history.values() for sample in samples})

    def layout_size(self) -> tuple[int, int, int]:
        """(image rows, image columns, step columns that fit) for this screen size and prompt count."""
        prompts = max(1, len(self.history))
        room = max(self.size.height - 4, MIN_ROWS + 2)  # header, range line, footer, a spare row
        rows = max(MIN_ROWS, room // prompts - 2)  # each prompt: its line, the images, their step line
        columns = rows * 2
        fit = max(1, (self.size.width - 1) // (columns + GAP))
        return rows, columns, fit

    def action_page(self, direction: int) -> None:
        steps = self.steps()
        _, _, fit = self.layout_size()
        end = len(steps) if self.end is None else self.end
        end = min(max(end + direction * fit, min(fit, len(steps))), len(steps))
        self.end = None if end == len(steps) else end
        self.redraw()

    def redraw(self) -> None:
        """Lay the grid out again when what it shows changed (steps, prompts, size, page)."""
        steps = self.steps()
        rows, columns, fit = self.layout_size()
        end = len(steps) if self.end is None else min(self.end, len(steps))
        shown = steps[max(0, end - fit) : end]
        key = (tuple(shown), tuple(sorted(self.history)), rows, columns, tuple(len(v) for _, v in sorted(self.history.items())))
        if key == self.drawn:
            return
        self.drawn = key
        older, newer = max(0, end - fit), len(steps) - end
        self.query_one("#grid-range", Static).update(
            f"{len(steps)} sample steps, showing steps {shown[0]}–{shown[-1]}" + (f" · ← {older} older" if older else "") + (f" · → {newer} newer" if newer else "")
            if shown
            else "No samples yet."
        )
        grid = self.query_one("#grid", VerticalScroll)
        grid.remove_children()
        grid.mount_all(self._prompt_rows(shown, rows, columns))

    def _prompt_rows(self, steps: list[int], rows: int, columns: int) -> list[Vertical]:
        built = []
        for index, samples in sorted(self.history.items()):
            by_step = {sample.step: sample for sample in samples}
            prompt = (samples[-1].prompt.split(" --")[0] if samples else "") or "(no prompt text)"
            cells = []
            for step in steps:
                sample = by_step.get(step)
                image = HalfBlockImage(str(self.run_path / sample.path) if sample else None, classes="grid-image")
                image.styles.width, image.styles.height = columns, rows
                label = Static(f"step {step}" if sample else f"step {step}: none", classes="grid-step")
                label.styles.width = columns
                cells.append(Vertical(image, label, classes="grid-cell"))
            built.append(Vertical(Static(f"prompt {index + 1}: {prompt}", classes="grid-prompt"), Horizontal(*cells, classes="grid-row"), classes="grid-prompt-block"))
        return built
