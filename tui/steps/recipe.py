"""Step 4: the recipes that fit, fastest first, with their VRAM estimate; every setting editable."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Collapsible, OptionList, Static
from textual.widgets.option_list import Option

from core.errors import UserError
from core.settings import SETTINGS
from tui.format import GIB, bar
from tui.steps.base import Step
from tui.widgets.setting_field import SettingField
from tui.wizard_state import MAIN_SETTINGS, setting_order


class RecipeStep(Step):
    title = "Recipe"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fits: list[Any] = []
        self.loaded_for: tuple[str | None, str] | None = None

    def compose(self) -> ComposeResult:
        yield Static("Recipe", classes="step-title")
        yield Static("", id="recipe-gpu", classes="help")
        yield OptionList(id="recipes")
        yield Static("", id="recipe-summary", classes="help")
        yield Static("", id="recipe-choice", classes="help")
        yield Static("", id="estimate")
        for key in MAIN_SETTINGS:
            yield SettingField(SETTINGS[key], self.state.settings[key], id=f"f-{key}")
        with Collapsible(title="More settings", collapsed=True, id="more-settings"):
            for key in setting_order()[len(MAIN_SETTINGS) :]:
                yield SettingField(SETTINGS[key], self.state.settings[key], id=f"f-{key}")

    def load(self) -> None:
        from core.memory.estimator import HEADROOM

        gpus = self.state.gpus
        smallest = gpus.smallest
        paired = " Class images are paired with the instance images, so each step holds twice the images." if self.state.shape().prior_preservation else ""
        self.query_one("#recipe-gpu", Static).update(
            f"Judged on the smallest GPU: {smallest.name}, {smallest.vram_total_bytes / GIB:.0f} GiB, with {HEADROOM:.0%} headroom.{paired} Enter picks a recipe."
            if smallest is not None
            else "No GPU: nothing can be judged to fit (the run trains on the CPU). Plan for a rented GPU with sdtui --gpus 1x24GB."
        )
        key = (self.state.family, self.state.method)
        if key != self.loaded_for:
            self.loaded_for = key
            self._list_recipes()
        self._show_settings()
        self._show_estimate()

    def _list_recipes(self) -> None:
        options = self.query_one("#recipes", OptionList)
        options.clear_options()
        try:
            self.fits = self.state.recipes()
        except UserError as exc:
            self.fits = []
            self.notify(str(exc), severity="error", timeout=10)
        vram = self.state.gpus.smallest.vram_total_bytes if self.state.gpus.smallest is not None else None
        width = max((len(fit.name) for fit in self.fits), default=0)
        for fit in self.fits:
            options.add_option(Option(recipe_line(fit, vram, width), id=fit.name))
        if not self.fits:
            options.add_option(Option(f"No recipe for {self.state.family} {self.state.method}; set the settings below by hand.", disabled=True))
        if self.fits and not self.state.recipe and not self.state.keep_settings:
            self.state.choose_recipe(self.fits[0])
        names = [f.name for f in self.fits]
        if self.state.recipe in names:
            options.highlighted = names.index(self.state.recipe)
        why = choice_text(self.state.recipe_choice(self.fits) if self.fits else None)
        shown = self.query_one("#recipe-choice", Static)
        shown.update(why)
        shown.display = bool(why)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        """The highlighted recipe's summary in full (the list cuts it on a narrow terminal)."""
        event.stop()
        fit = next((f for f in self.fits if f.name == event.option.id), None)
        self.query_one("#recipe-summary", Static).update(summary_text(fit, self.state.gpus) if fit is not None else "")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        fit = next((f for f in self.fits if f.name == event.option.id), None)
        if fit is None:
            return
        self.state.choose_recipe(fit)
        for key in list(self.state.field_errors):
            if key.startswith("Recipe:"):
                del self.state.field_errors[key]
        self._show_settings()
        self._show_estimate()
        self.changed()

    def on_setting_field_edited(self, event: SettingField.Edited) -> None:
        event.stop()
        self.apply(event.key, lambda: self.state.set_setting(event.key, event.value))
        self._show_estimate()

    def _show_settings(self) -> None:
        for field in self.query(SettingField):
            field.set_value(self.state.settings.get(field.setting.key, field.setting.default))

    def _show_estimate(self) -> None:
        label = self.query_one("#estimate", Static)
        try:
            fit = self.state.judge()
        except UserError as exc:
            label.update(Text(str(exc), style="red"))
            return
        label.update(estimate_line(fit, self.state.gpus.smallest, self.state.recipe))


def summary_text(fit: Any, gpus: Any) -> str:
    """The highlighted recipe as what it is: ``composed for 1 × 12 GiB from flux-lora-48gb: int8 text
    encoders, 52 blocks swapped; as written: <its summary>``, or ``NAME: <its summary>``."""
    from core.plan.choice import composition

    summary = getattr(fit.recipe, "summary", "") or ""
    composed = composition(fit, gpus) if getattr(fit, "changes", None) else ""
    if composed:
        return f"{composed}; as written: {summary}" if summary else composed
    return f"{fit.name}: {summary}" if summary else ""


def choice_text(choice: Any) -> str:
    """Why the first recipe is first (core.plan.choice.Choice.reasons), one per line; empty without reasons."""
    if choice is None or not choice.reasons:
        return ""
    return "\n".join(f"Why: {reason}" for reason in choice.reasons)


def recipe_line(fit: Any, vram: int | None, name_width: int = 0) -> Text:
    """``sdxl-lora-12gb   9.8 GiB fits     2.1 img/s ██····  summary``: the figures first, so that
    they fit 80 columns; only the summary is cut on a narrow terminal."""
    est = fit.estimate.total_bytes
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{fit.name:<{name_width}} ", style="bold")
    text.append(f"{est / GIB:5.1f} GiB ")
    if vram:
        text.append("fits    " if fit.fits else "too big ", style="green" if fit.fits else "red")
    if fit.images_per_second:
        speed = fit.images_per_second
        text.append(f"{speed:5.1f} img/s " if speed >= 1 else f"{speed:5.2f} img/s ")
    if vram:
        text.append(bar(est / vram, 6) + " ", style="green" if fit.fits else "red")
    adjusted = adjustment(fit)
    if adjusted:
        text.append(adjusted + " ", style="yellow")
    text.append(getattr(fit.recipe, "summary", "") or "", style="dim")
    return text


def adjustment(fit: Any) -> str:
    """What the picker composed into a recipe for these GPUs and its cost, e.g. ``[fp8_scaled
    base, 8 blocks swapped, batch 2; 1.4× slower]`` (empty for the recipe as written)."""
    changes = getattr(fit, "changes", {}) or {}
    if not changes:
        return ""
    parts = [fit.techniques()] if fit.techniques() else []
    for key, label in (("gradient_checkpointing", "checkpointing"), ("batch_size", "batch"), ("resolution", "resolution")):
        if key in changes:
            value = changes[key]
            parts.append(f"{label} {'on' if value is True else 'off' if value is False else value}")
    slower = fit.slowdown()
    cost = f"; {slower:.1f}× slower" if slower is not None and slower >= 1.05 else ""
    return f"[{', '.join(p for p in parts if p)}{cost}]"


def estimate_line(fit: Any, smallest: Any, recipe: str) -> Text:
    """The estimate of the current settings against the GPU, as a bar."""
    est = fit.estimate.total_bytes
    text = Text("Your settings" + (f" ({recipe})" if recipe else "") + ": ", style="bold")
    if smallest is None:
        text.append(f"about {est / GIB:.1f} GiB peak VRAM (no GPU to compare with)")
        return text
    vram = smallest.vram_total_bytes
    text.append(bar(est / vram, 20), style="green" if fit.fits else "red")
    text.append(f" {est / GIB:.1f} of {vram / GIB:.0f} GiB — ")
    text.append("fits" if fit.fits else "does not fit", style="bold green" if fit.fits else "bold red")
    techniques = fit.techniques()
    if techniques:
        text.append(f" — {techniques}")
    if fit.ram_need_bytes:
        have = f" of {fit.ram_bytes / GIB:.0f}" if fit.ram_bytes else ""
        text.append(f"; RAM {fit.ram_need_bytes / GIB:.1f}{have} GiB", style="red" if fit.ram_fits is False else "")
    return text
