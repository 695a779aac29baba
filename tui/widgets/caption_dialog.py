"""The caption dialog of the dataset step: caption the images without a caption file with a local
model, watch the progress and the first captions, and edit a caption.

The captioner runs in its own process (core/captions/process.py), read by a worker thread, so the
TUI never imports torch. Captions go to the caption layer in the cache folder, and an edit too:
the dataset is never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static

from core.captions.captioners import CAPTIONERS, DEFAULT, TAGGER, TagOptions, parse_tags
from core.captions.layer import CaptionLayer
from core.captions.process import CaptionProcess, CaptionRequest
from core.errors import JobFailed, UserError
from tui.format import duration
from tui.widgets.field_input import FieldInput

#: Captions shown in full as they come, before the whole folder is done.
PREVIEW = 4
#: Characters of an image's name shown in the table at most (a longer one is cut in the middle).
NAME_WIDTH = 22
#: The source column: `` generated`` is its longest value.
SOURCE_WIDTH = len(" generated")
#: Characters of a caption shown before the table has its width.
SHOWN = 40


def fitted(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis (at least one character shown)."""
    width = max(2, width)
    return text if len(text) <= width else text[: width - 1] + "…"


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """An image's name cut in the middle so its end (the number, the extension) stays."""
    if len(name) <= width:
        return name
    tail = width // 2
    return name[: width - tail - 1] + "…" + name[-tail:]


class CaptionScreen(ModalScreen[bool]):
    """Returns True when a caption was made or edited (the step scans again), else False.

    ``images`` are the scan's training images without a caption file (ImageEntry); ``models`` the
    model offered for a captioner (the demo's tiny ones), else the captioner's own default.
    """

    BINDINGS = [Binding("escape", "close", "Close"), Binding("e", "edit", "Edit caption")]

    def __init__(self, dataset: str, images: list[Any], models: dict[str, str] | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.images = {image.path: image for image in images}
        self.captions = {image.path: (image.caption or "", image.caption_source or "") for image in images}
        self.models = models or {}
        self.changed = False
        self.process: CaptionProcess | None = None
        self.preview: list[str] = []
        self.note = ""
        self.closed = False
        self.captioner = DEFAULT

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"Caption the {self.missing()} images without captions", classes="step-title")
            yield Static("Captions go to the caption layer in the cache folder; the dataset is not changed.", classes="help")
            with Horizontal(classes="field"):
                yield Label("captioner", classes="field-label")
                yield Select([(c.title, c.name) for c in CAPTIONERS.values()], value=DEFAULT, allow_blank=False, id="captioner", compact=True)
            with Horizontal(classes="field"):
                yield Label("model", classes="field-label")
                yield FieldInput(self.model_of(DEFAULT), id="caption-model", classes="field-input", compact=True)
            with Horizontal(classes="field", id="prompt-field"):
                yield Label("prompt", classes="field-label")
                yield FieldInput(CAPTIONERS[DEFAULT].default_prompt, id="caption-prompt", classes="field-input", compact=True)
            with Horizontal(classes="field tagger-field"):
                yield Label("thresholds", classes="field-label")
                yield FieldInput(f"{TagOptions.threshold} {TagOptions.character_threshold}", id="tag-thresholds", classes="field-input", compact=True)
            with Horizontal(classes="field tagger-field"):
                yield Label("leave out", classes="field-label")
                yield FieldInput("", id="tag-exclude", classes="field-input", compact=True, placeholder="tags never written, e.g. simple background, white background")
            yield Static(CAPTIONERS[DEFAULT].summary, id="captioner-summary", classes="help")
            yield ProgressBar(show_eta=False, id="caption-progress")
            yield Static("", id="caption-status")
            yield Static("", id="caption-preview")
            yield DataTable(id="caption-table", cursor_type="row", cell_padding=0)
            with Horizontal(id="dialog-buttons"):
                yield Button("Caption", id="caption-start", variant="primary", compact=True)
                yield Button("Close", id="caption-close", compact=True)
            yield Static("e edits the selected caption (kept in the caption layer); Esc closes (and stops captioning).", classes="help")

    def model_of(self, name: str) -> str:
        """The model offered for a captioner: the session's own (the demo's), else the captioner's default."""
        return self.models.get(name) or CAPTIONERS[name].default_model

    def on_mount(self) -> None:
        self.query_one("#caption-progress", ProgressBar).display = False
        for field in self.query(".tagger-field"):
            field.display = False
        table = self.query_one("#caption-table", DataTable)
        for label, key in ((" image", "image"), (" source", "source"), (" caption", "caption")):
            table.add_column(label, key=key)
        self._fill()
        self.call_after_refresh(self._fill)

    def on_resize(self) -> None:
        """Cut the captions to the table's new width."""
        self.call_after_refresh(self._fill)

    def _caption_width(self) -> int:
        """The caption column's characters: what the table's width leaves beside the name and the source."""
        table = self.query_one("#caption-table", DataTable)
        if table.size.width <= 0:
            return SHOWN
        names = max((len(short_name(Path(path).name)) + 1 for path in self.images), default=6)
        # one column for the leading space of the caption cell, two for a vertical scrollbar
        return table.size.width - names - SOURCE_WIDTH - 3

    def _fill(self) -> None:
        """The table's rows again, the captions cut to its width; the cursor stays on its row."""
        table = self.query_one("#caption-table", DataTable)
        row = table.cursor_row
        table.clear()
        for path in self.images:
            table.add_row(*self._cells(path), key=path)
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))

    def missing(self) -> int:
        """Images with no caption at all (not even a generated one)."""
        return sum(1 for caption, _ in self.captions.values() if not caption)

    def _cells(self, path: str) -> tuple[str, str, str]:
        caption, source = self.captions[path]
        return f" {short_name(Path(path).name)}", f" {source or '–'}", f" {fitted(caption, self._caption_width()) if caption else '(none)'}"

    def _update_row(self, path: str) -> None:
        table = self.query_one("#caption-table", DataTable)
        for key, value in zip(("image", "source", "caption"), self._cells(path)):
            table.update_cell(path, key, value)

    @on(Select.Changed, "#captioner")
    def captioner_changed(self, event: Select.Changed) -> None:
        """Offer the chosen captioner's model and prompt (the tagger: its thresholds and exclusions instead)."""
        if event.value == self.captioner:
            return
        self.captioner = str(event.value)
        chosen = CAPTIONERS[self.captioner]
        self.query_one("#caption-model", Input).value = self.model_of(chosen.name)
        prompt = self.query_one("#caption-prompt", Input)
        prompt.value = chosen.default_prompt
        prompt.disabled = not chosen.takes_prompt and chosen.name != DEFAULT
        self.query_one("#prompt-field").display = chosen.name != TAGGER
        for field in self.query(".tagger-field"):
            field.display = chosen.name == TAGGER
        self.query_one("#captioner-summary", Static).update(chosen.summary)

    def tag_options(self) -> TagOptions:
        """The tagger's thresholds (general, then character) and exclusions as typed; UserError otherwise."""
        typed = self.query_one("#tag-thresholds", Input).value.replace(",", " ").split()
        try:
            numbers = [float(word) for word in typed]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise UserError(f"the thresholds '{' '.join(typed)}' are not one or two numbers; type the general and the character threshold, e.g. 0.35 0.85")
        general = numbers[0]
        character = numbers[1] if len(numbers) == 2 else TagOptions.character_threshold
        return TagOptions(general, character, parse_tags(self.query_one("#tag-exclude", Input).value))

    @on(Button.Pressed, "#caption-start")
    def start_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.process is not None:
            return
        name = str(self.query_one("#captioner", Select).value)
        try:
            tags = self.tag_options() if name == TAGGER else TagOptions()
        except UserError as exc:
            self.query_one("#caption-status", Static).update(f"[b red]{exc}[/]")
            return
        request = CaptionRequest(
            self.dataset,
            name,
            self.query_one("#caption-model", Input).value.strip() or None,
            None if name == TAGGER else self.query_one("#caption-prompt", Input).value or None,
            threshold=tags.threshold,
            character_threshold=tags.character_threshold,
            exclude=tags.exclude,
        )
        event.button.disabled = True
        self.preview, self.note = [], ""
        self.query_one("#caption-status", Static).update("Starting the captioner…")
        self.run_captioner(request)

    @work(thread=True, exclusive=True, group="caption")
    def run_captioner(self, request: CaptionRequest) -> None:
        """Run the captioning process and pass its events to the screen; its error as one sentence."""
        try:
            process = CaptionProcess(request)
        except OSError as exc:
            self.app.call_from_thread(self.ended, f"the captioner could not be started ({exc})")
            return
        self.process = process
        for event in process.events():
            self.app.call_from_thread(self.on_caption_event, event)
        try:
            process.finish()
            error = None
        except (UserError, JobFailed) as exc:
            error = str(exc)
        self.app.call_from_thread(self.ended, error)

    def on_caption_event(self, event: dict[str, Any]) -> None:
        """Show one event of the captioning process: the count, the time left, the first captions."""
        if self._gone():
            return
        status = self.query_one("#caption-status", Static)
        bar = self.query_one("#caption-progress", ProgressBar)
        kind = event["type"]
        if kind == "start":
            reused = event.get("reused") or 0
            bar.update(total=max(1, int(event["total"])), progress=0)
            bar.display = True
            status.update(f"{event['total']} to caption" + (f", {reused} reused from the caption layer" if reused else ""))
        elif kind == "loading":
            status.update(f"Loading {event['model']}…")
        elif kind == "note":
            self.note = str(event["text"])
            self._show_preview()
        elif kind == "caption":
            path = str(event["path"])
            if path in self.captions and self.captions[path][1] != "edited":
                self.captions[path] = (str(event["caption"]), "generated")
                self._update_row(path)
            self.changed = True
            bar.update(progress=int(event["done"]))
            left = event.get("eta_s")
            status.update(f"{event['done']}/{event['total']} captioned" + (f", {duration(float(left))} left" if left is not None else ""))
            if len(self.preview) < PREVIEW:
                self.preview.append(f"{Path(path).name}: {event['caption']}")
                self._show_preview()
        elif kind == "done":
            self.changed = self.changed or bool(event.get("reused"))
            status.update(f"Done: {event['captioned']} captioned, {event['reused']} reused. The dataset is unchanged.")

    def _show_preview(self) -> None:
        """How the captioner runs (when it said) and the first captions."""
        self.query_one("#caption-preview", Static).update("\n".join([*([self.note] if self.note else []), *self.preview]))

    def ended(self, error: str | None) -> None:
        self.process = None
        if self._gone():
            return
        self.query_one("#caption-start", Button).disabled = False
        if error:
            self.query_one("#caption-status", Static).update(f"[b red]{error}[/]")

    def action_edit(self) -> None:
        """Edit the selected image's caption; the edit goes to the caption layer."""
        table = self.query_one("#caption-table", DataTable)
        if table.row_count == 0:
            return
        path = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        image = self.images[path]
        if image.content_hash is None:
            return
        from tui.widgets.ask import AskScreen

        def answered(value: str | None) -> None:
            if value is None or not value.strip():
                return
            CaptionLayer().edit(image.content_hash, value)
            self.captions[path] = (value.strip(), "edited")
            self._update_row(path)
            self.changed = True

        self.app.push_screen(AskScreen(f"Caption of {Path(path).name}", self.captions[path][0], help="Enter keeps it in the caption layer, Esc cancels"), answered)

    @on(DataTable.RowSelected, "#caption-table")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit()

    @on(Button.Pressed, "#caption-close")
    def close_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_close()

    def _gone(self) -> bool:
        """The dialog was closed or is being taken down (the app quit): the worker's late events are dropped."""
        return self.closed or not self.query("#caption-status")

    def on_unmount(self) -> None:
        """The dialog leaves (closed, or the app quit): a captioning still running is stopped."""
        self.closed = True
        if self.process is not None:
            self.process.stop()

    def action_close(self) -> None:
        """Close; a captioning still running is stopped (what it made stays in the layer)."""
        if self.process is not None:
            self.process.stop()
        self.closed = True
        self.dismiss(self.changed)
