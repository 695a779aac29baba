"""Memory-saving recipes: one TOML file each in ``recipes/``, validated against core/settings.py.

The shipped recipes are package data of the ``recipes`` package, read with importlib.resources,
so they are found wherever sdtui is installed.

A recipe names the families and methods it is meant for, one line on its trade-off,
``[settings]`` with trainer option names from ``core.settings.SETTINGS``, and optionally
``[schedule]`` with its own learning rate, text-encoder rate, scheduler or warm-up (else the
method's defaults apply, core/plan/learning_rates.py). The picker never trusts a recipe's
name or intent: it asks the estimator whether the settings fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.settings import FAMILIES, METHODS, SCHEMA, SETTINGS, resolve

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: The package whose data files are the shipped recipes.
SHIPPED_PACKAGE = "recipes"
_REQUIRED = ("name", "title", "families", "methods", "summary", "settings")
#: The [schedule] keys a recipe may set.
SCHEDULE_KEYS = ("learning_rate", "text_encoder_lr", "lr_scheduler", "lr_warmup_steps")
#: Parsed recipe folders by their listing (paths, mtimes, sizes): the planner asks often.
_PARSED: dict[tuple[Any, ...], tuple[Recipe, ...]] = {}


class RecipeError(UserError):
    """A recipe file is unreadable or invalid; the message names the file, the key and the fix."""


@dataclass
class Recipe:
    """One recipe: what it is for and the settings it sets."""

    name: str
    title: str
    families: list[str]
    methods: list[str]
    summary: str
    settings: dict[str, Any]
    path: Traversable | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)

    def resolved_settings(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every setting: the schema defaults, this recipe's, then ``overrides``; ``recipe = name``."""
        return resolve("settings", self.settings, overrides, {"recipe": self.name})

    def suits(self, family: str, method: str) -> bool:
        """Whether the recipe is meant for this family and method."""
        return family in self.families and method in self.methods

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the recipe."""
        return {
            "name": self.name,
            "title": self.title,
            "families": list(self.families),
            "methods": list(self.methods),
            "summary": self.summary,
            "settings": dict(self.settings),
            "schedule": dict(self.schedule),
            "path": str(self.path) if self.path else None,
        }


def shipped_dir() -> Traversable:
    """The shipped recipes (a folder inside the installed package)."""
    return resources.files(SHIPPED_PACKAGE)


def recipes_dir(directory: str | os.PathLike[str] | None = None) -> Traversable:
    """The recipes folder: ``directory``, else ``$SDTUI_RECIPES_DIR``, else the shipped one."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get("SDTUI_RECIPES_DIR")
    return Path(env).expanduser() if env else shipped_dir()


def _names(path: Traversable, key: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise RecipeError(f"{path}: '{key}' must be a non-empty list of {', '.join(allowed)} (got {value!r})")
    return list(value)


def parse_recipe(text: str, path: Traversable) -> Recipe:
    """Validate one recipe's TOML text; ``path`` is named in every error."""
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        data = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        raise RecipeError(f"{path}: invalid TOML at line {exc.line}, column {exc.col} ({exc}); fix the syntax there") from None
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise RecipeError(f"{path}: missing {', '.join(missing)}; a recipe needs {', '.join(_REQUIRED)}")
    for key in ("name", "title", "summary"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise RecipeError(f"{path}: '{key}' must be a non-empty string")
    if not isinstance(data["settings"], dict):
        raise RecipeError(f"{path}: [settings] must be a table of trainer options")
    settings: dict[str, Any] = {}
    for key, value in data["settings"].items():
        if key not in SETTINGS:
            raise RecipeError(f"{path}: unknown setting '{key}' in [settings]; known settings: {', '.join(SETTINGS)}")
        try:
            settings[key] = SETTINGS[key].check(value)
        except ValueError as exc:
            raise RecipeError(f"{path}: setting '{key}' = {value!r} is invalid: {exc}") from None
    schedule = data.get("schedule", {})
    if not isinstance(schedule, dict) or any(key not in SCHEDULE_KEYS for key in schedule):
        raise RecipeError(f"{path}: [schedule] may set only {', '.join(SCHEDULE_KEYS)}")
    for key, value in schedule.items():
        try:
            schedule[key] = SCHEMA["schedule"][key].check(value)
        except ValueError as exc:
            raise RecipeError(f"{path}: schedule '{key}' = {value!r} is invalid: {exc}") from None
    return Recipe(
        name=data["name"].strip(),
        title=data["title"].strip(),
        families=_names(path, "families", data["families"], FAMILIES),
        methods=_names(path, "methods", data["methods"], METHODS),
        summary=data["summary"].strip(),
        settings=settings,
        path=path,
        extra={k: v for k, v in data.items() if k not in (*_REQUIRED, "schedule")},
        schedule=dict(schedule),
    )


def load_recipe(path: str | os.PathLike[str] | Traversable) -> Recipe:
    """Read and validate one recipe file."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot be read ({exc}); check the file") from None
    return parse_recipe(text, path)


def load_recipes(directory: str | os.PathLike[str] | None = None) -> list[Recipe]:
    """Every recipe in the folder, sorted by name; a duplicate name is an error."""
    folder = recipes_dir(directory)
    if not folder.is_dir():
        raise RecipeError(f"the recipes folder {folder} does not exist; set SDTUI_RECIPES_DIR to a folder of recipe .toml files")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".toml") and p.is_file()), key=lambda p: p.name)
    key = tuple(_stamp(p) for p in files)
    if key not in _PARSED:
        recipes: dict[str, Recipe] = {}
        for path in files:
            recipe = load_recipe(path)
            if recipe.name in recipes:
                raise RecipeError(f"{path}: recipe name '{recipe.name}' is already used by {recipes[recipe.name].path}; rename one of them")
            recipes[recipe.name] = recipe
        if len(_PARSED) >= 8:
            _PARSED.clear()
        _PARSED[key] = tuple(sorted(recipes.values(), key=lambda r: r.name))
    return [replace(r, settings=dict(r.settings), schedule=dict(r.schedule)) for r in _PARSED[key]]


def _stamp(path: Traversable) -> tuple[Any, ...]:
    """What identifies one recipe file's content: its path, and its mtime and size where it has them."""
    stat = getattr(path, "stat", None)
    if stat is None:  # a file inside a zip: it does not change
        return (str(path),)
    found = stat()
    return (str(path), found.st_mtime_ns, found.st_size)


def get_recipe(name: str, directory: str | os.PathLike[str] | None = None) -> Recipe:
    """The recipe called ``name``; an unknown name is a UserError listing the known ones."""
    recipes = load_recipes(directory)
    for recipe in recipes:
        if recipe.name == name:
            return recipe
    raise UserError(f"unknown recipe '{name}'; choose one of: {', '.join(r.name for r in recipes)} (see `sdtui recipes`)")
