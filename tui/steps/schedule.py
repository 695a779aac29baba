"""Step 5: epochs or steps, learning rate, accumulation, saves, the validation loss, and the GPU-count table."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Static

from core.errors import UserError
from core.settings import SCHEMA
from tui.format import duration, tui_terms
from tui.steps.base import Step
from tui.widgets.field_input import FieldInput
from tui.widgets.setting_field import SettingField

FIELDS = (
    "epochs",
    "max_steps",
    "learning_rate",
    "text_encoder_lr",
    "gradient_accumulation",
    "lr_scheduler",
    "lr_warmup_steps",
    "lr_scheduler_num_cycles",
    "lr_scheduler_power",
    "save_every_epochs",
    "save_every_steps",
    "keep_checkpoints",
    "seed",
)
#: The [validation] keys the step edits (a validation folder is set in run.toml).
VALIDATION_FIELDS = ("split", "every_n_steps")
COLUMNS = (
    ("GPUs", "gpus"),
    ("batch", "effective_batch"),
    ("steps/ep", "steps_per_epoch"),
    ("epochs", "epochs"),
    ("steps", "total_steps"),
    ("images", "images_seen"),
    ("ETA", "eta_s"),
    ("cost", "cost"),
)


class ScheduleStep(Step):
    title = "Schedule"

    def compose(self) -> ComposeResult:
        yield Static("Schedule", classes="step-title")
        yield Static(
            "batch = batch size × GPUs × accumulation; steps are optimizer steps. Epoch mode keeps the images seen whatever the GPU count; max_steps > 0 switches to step mode.",
            classes="help",
        )
        yield DataTable(id="gpu-table", cursor_type="none", zebra_stripes=True)
        yield Static("", id="plan-warnings")
        for key in FIELDS:
            yield SettingField(SCHEMA["schedule"][key], self.state.schedule[key], id=f"s-{key}")
        for key in VALIDATION_FIELDS:
            yield SettingField(SCHEMA["validation"][key], self.state.validation[key], id=f"val-{key}")
        with Horizontal(classes="field"):
            yield Label("price per GPU-hour", classes="field-label")
            yield FieldInput(id="price", placeholder="optional, e.g. 0.79", classes="field-input", compact=True)
            yield Static("for the cost column", classes="field-help")

    def on_mount(self) -> None:
        table = self.query_one("#gpu-table", DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)

    def load(self) -> None:
        self.state.sync_schedule()
        for field in self.query(SettingField):
            values = self.state.validation if field.id and field.id.startswith("val-") else self.state.schedule
            field.set_value(values[field.setting.key])
        price = self.state.price_per_gpu_hour
        self.query_one("#price", Input).value = "" if price is None else f"{price:g}"
        self.show_plan()

    def on_setting_field_edited(self, event: SettingField.Edited) -> None:
        event.stop()
        if event.key in VALIDATION_FIELDS and event.key not in SCHEMA["schedule"]:
            self.apply(event.key, lambda: self.state.set_validation(event.key, event.value))
        else:
            self.apply(event.key, lambda: self.state.set_schedule(event.key, event.value))
        self.show_plan()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "price":
            return
        event.stop()
        self.apply("price", lambda: self.state.set_price(event.value))
        self.show_plan()

    def show_plan(self) -> None:
        """Recompute the plan and fill the GPU-count table and the warnings."""
        table = self.query_one("#gpu-table", DataTable)
        notes = self.query_one("#plan-warnings", Static)
        table.clear()
        try:
            plan = self.state.plan()
        except UserError as exc:
            notes.update(Text(str(exc), style="red"))
            return
        data = plan.to_json()
        detected = data["gpu"]["count"]
        for row in data["schedule"]:
            cells: list[Any] = [row.get(key) for _, key in COLUMNS]
            cells[0] = f"{row['gpus']}{' *' if row['gpus'] == detected else ''}"
            cells[3] = f"{row['epochs']:g}"
            cells[6] = duration(row.get("eta_s"))
            cells[7] = "–" if row.get("cost") is None else f"${row['cost']:,.2f}"
            table.add_row(*cells)
        text = Text()
        if detected:
            text.append(f"* the {detected} GPU(s) found or simulated\n", style="dim")
        if data["validation"]:
            text.append(validation_text(data["validation"]) + "\n")
        for warning in data["warnings"]:
            text.append(f"warning: {tui_terms(warning)}\n", style="yellow")
        for note in data["notes"]:
            text.append(f"note: {tui_terms(note)}\n", style="dim")
        notes.update(text)


def validation_text(validation: dict[str, Any]) -> str:
    """The plan's validation in a line: images, how often, and its share of the ETA (included in the table)."""
    cost = f"; adds {duration(validation['cost_s'])} to the ETA" if validation["cost_s"] is not None else ""
    return f"validation loss on {validation['images']} image{'' if validation['images'] == 1 else 's'} every {validation['every_n_steps']} steps ({validation['runs']} times){cost}"
