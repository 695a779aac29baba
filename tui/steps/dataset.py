"""Step 2: the dataset folder, scanned read-only in a worker; repeats editable in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, Static

from core.dataset.problems import listed
from core.errors import UserError
from tui.format import tui_terms
from tui.steps.base import Step
from tui.widgets.path_input import PathInput

SEVERITY_STYLE = {"error": "bold red", "left out": "bold yellow", "warning": "yellow", "info": "dim"}


class DatasetStep(Step):
    title = "Dataset"
    BINDINGS = [Binding("e", "edit_repeats", "Edit repeats"), Binding("ctrl+r", "rescan", "Rescan"), Binding("ctrl+o", "caption", "Caption")]

    def compose(self) -> ComposeResult:
        yield Static("Dataset", classes="step-title")
        yield Static("A kohya folder: <repeats>_<token> subfolders (e.g. 40_sks dog) with captions in .txt beside the images. Read only.", classes="help")
        with Horizontal(classes="field"):
            yield Label("images", classes="field-label")
            yield PathInput(self.state.base_dir, folders_only=True, id="dataset-path", classes="field-input", placeholder="/data/sks_dog", compact=True)
        with Horizontal(classes="field"):
            yield Label("class images", classes="field-label")
            yield PathInput(self.state.base_dir, folders_only=True, id="reg-path", classes="field-input", placeholder="optional (DreamBooth prior preservation)", compact=True)
        yield Static("", id="scan-summary")
        yield Button("", id="use-class-folder", compact=True)
        # one space before each column instead of one on each side: six columns fit 80 terminal columns
        yield DataTable(id="subsets", cursor_type="row", cell_padding=0)
        yield Static("Select a subset and press e (or Enter) to change its repeats; ctrl+r scans the folder again.", classes="help")
        yield Static("", id="caption-stats")
        yield Button("", id="caption-images", compact=True)
        yield Static("", id="problems")

    def on_mount(self) -> None:
        table = self.query_one("#subsets", DataTable)
        for label, key in (("subset", "subset"), ("images", "images"), ("repeats", "repeats"), ("captions", "captions"), ("sizes", "sizes"), ("buckets", "buckets")):
            table.add_column(f" {label}", key=key)

    def load(self) -> None:
        for selector, value in (("#dataset-path", self.state.dataset), ("#reg-path", self.state.reg_dataset)):
            field = self.query_one(selector, Input)
            if field.value != value:
                field.value = value
        self.show_scan()
        if self.state.scan is not None:
            self.scan()

    def action_rescan(self) -> None:
        """Scan the folders again (files moved in or out since); the edited repeats stay."""
        if self.state.dataset.strip():
            self.query_one("#scan-summary", Static).update("Scanning…")
            self.scan()

    @on(Input.Changed)
    def path_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "dataset-path":
            if event.value == self.state.dataset and self.state.scan is not None:
                return
            self.state.dataset = event.value
        else:
            if event.value == self.state.reg_dataset:
                return
            self.state.reg_dataset = event.value
        self.state.scan = None
        self.state.field_errors.pop("Dataset:scan", None)
        self.show_scan()
        self.changed()
        if self.state.dataset.strip():
            self.query_one("#scan-summary", Static).update("Scanning…")
            self.scan()

    @work(thread=True, exclusive=True, group="scan")
    def scan(self) -> None:
        """Scan in a thread; a result for paths the user has since changed is dropped."""
        wanted = (self.state.dataset, self.state.reg_dataset)
        try:
            result: Any = self.state.run_scan()
            error = None
        except UserError as exc:
            result, error = None, str(exc)
        except OSError as exc:
            result, error = None, f"the dataset could not be read ({exc}); check the folder's permissions"
        self.app.call_from_thread(self.scanned, wanted, result, error)

    def scanned(self, wanted: tuple[str, str], result: Any, error: str | None) -> None:
        if wanted != (self.state.dataset, self.state.reg_dataset):
            return
        self.state.use_scan(result)
        if error:
            self.state.field_errors["Dataset:scan"] = error
        else:
            self.state.field_errors.pop("Dataset:scan", None)
        self.show_scan()
        self.changed()

    def show_scan(self) -> None:
        """Fill the table, the summary and the problems from the state's scan."""
        table = self.query_one("#subsets", DataTable)
        table.clear()
        scan = self.state.dataset_scan
        summary = self.query_one("#scan-summary", Static)
        problems = self.query_one("#problems", Static)
        if scan is None:
            summary.update("")
            problems.update("")
            self._offer_class_folder()
            self._show_captions(None)
            return
        for subset in scan.subsets:
            name = subset.name + (" (class)" if subset.is_reg else "")
            cells = (name, len(subset.images), subset.repeats, subset.captions_label, _sizes(subset), len(subset.buckets) or "–")
            table.add_row(*(f" {cell}" for cell in cells), key=subset.path)
        counts = sorted(scan.bucket_counts().items(), key=lambda item: -item[1])
        buckets = ", ".join(f"{w}×{h}: {n}" for (w, h), n in counts[:4]) + (" …" if len(counts) > 4 else "")
        line = Text(
            f"{scan.images} images, {scan.items_per_epoch} items per epoch (images × repeats)"
            + (f", {scan.reg_images} class images" if scan.reg_root else "")
            + (f"\nbuckets (items per epoch): {buckets}" if buckets else "")
        )
        summary.update(line)
        self._offer_class_folder()
        self._show_captions(scan)
        text = Text()
        shown, rest = listed(scan.problems)
        for problem in shown:
            severity = problem.severity if problem.severity != "error" or scan.blocks(problem) else "left out"
            text.append(f"{severity}: ", style=SEVERITY_STYLE.get(severity, ""))
            text.append(f"{Path(problem.path).name}: {problem.message}")
            text.append(f" → {tui_terms(problem.fix)}\n", style="italic")
        if rest:
            text.append(rest + "\n")
        problems.update(text if scan.problems else Text("No problems found.", style="green"))

    def _show_captions(self, scan: Any) -> None:
        """The caption statistics, and the button that captions the images without a caption file."""
        stats_view = self.query_one("#caption-stats", Static)
        button = self.query_one("#caption-images", Button)
        if scan is None or not scan.images:
            stats_view.update("")
            button.display = False
            self.refresh_bindings()
            return
        from core.captions.stats import caption_advice, caption_stats, token_limit

        lines = caption_stats(scan, token_limit(self.state.family)).lines()
        advice = caption_advice(self.state.family)
        stats_view.update("\n".join([*lines, *([advice] if advice else [])]))
        uncaptioned = self.uncaptioned()
        missing = sum(1 for image in uncaptioned if image.caption is None)
        button.display = bool(uncaptioned)
        self.refresh_bindings()
        button.label = f"Caption the {missing} images without captions (ctrl+o)" if missing else f"Review or edit the {len(uncaptioned)} generated captions (ctrl+o)"

    def uncaptioned(self) -> list[Any]:
        """The training images without a caption file (their generated caption, if any, on the entry)."""
        scan = self.state.dataset_scan
        if scan is None:
            return []
        return [image for subset in scan.subsets if not subset.is_reg for image in subset.images if image.caption_source != "file"]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The caption key is offered only while some image has no caption file."""
        if action == "caption":
            return bool(self.uncaptioned())
        return True

    @on(Button.Pressed, "#caption-images")
    def caption_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_caption()

    def action_caption(self) -> None:
        """Open the caption dialog; a rescan follows when a caption was made or edited."""
        images = self.uncaptioned()
        if not images:
            return
        from tui.widgets.caption_dialog import CaptionScreen

        def closed(changed: bool | None) -> None:
            if changed:
                self.action_rescan()

        self.app.push_screen(CaptionScreen(self.state.dataset_scan.root, images, self.state.captioner_model), closed)

    def _offer_class_folder(self) -> None:
        """Show the button that uses a class folder found inside the dataset, while there is one."""
        offer = self.class_folder_offer()
        button = self.query_one("#use-class-folder", Button)
        button.display = offer is not None
        if offer is not None:
            button.label = f"Use {Path(offer).name}/ as the class folder"

    def class_folder_offer(self) -> str | None:
        """The class folder found inside the dataset that the class images field does not name yet."""
        scan = self.state.dataset_scan
        if scan is None or not scan.class_folders or self.state.reg_dataset.strip():
            return None
        return scan.class_folders[0]

    @on(Button.Pressed, "#use-class-folder")
    def use_class_folder(self, event: Button.Pressed) -> None:
        """Put the class folder found inside the dataset into the class images field (it is scanned as such)."""
        event.stop()
        folder = self.class_folder_offer()
        if folder is not None:
            self.query_one("#reg-path", Input).value = folder

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_edit_repeats()

    def action_edit_repeats(self) -> None:
        scan = self.state.dataset_scan
        table = self.query_one("#subsets", DataTable)
        if scan is None or table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        subset = next(s for s in scan.subsets if s.path == key)
        from tui.widgets.ask import AskScreen

        def answered(value: str | None) -> None:
            if value is not None and self.apply("repeats", lambda: self.state.set_repeats(subset.path, value)):
                self.show_scan()

        from tui.wizard_state import parse_repeats

        self.app.push_screen(AskScreen(f"Repeats of {subset.name}", str(subset.repeats), check=lambda text: parse_repeats(subset.name, text)), answered)


def _sizes(subset: Any) -> str:
    """``512×512`` when every image has that size, else ``16×16…4000×200`` (smallest…largest)."""
    if subset.min_size is None:
        return "–"
    low, high = (f"{w}×{h}" for w, h in (subset.min_size, subset.max_size))
    return low if low == high else f"{low}…{high}"
