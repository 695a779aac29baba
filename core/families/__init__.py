"""The model families sdtui trains, one package each: the registry of their torch-free specs.

``spec(name)`` is what the planner, estimator, CLI and TUI read; ``runtime(name)`` imports the
family's ``runtime.py`` (torch, diffusers), which only the trainer calls. Detection
(``core/model_family.py``) tries them in :func:`detection_order`: the most specific first, the
plain layout the others extend last. Adding a family: docs/adding-a-family.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import UserError
from core.families import sd1, sd2, sdxl
from core.families.spec import FamilySpec

_SPECS: dict[str, FamilySpec] = {m.SPEC.name: m.SPEC for m in (sd1, sd2, sdxl)}
_DETECTION: tuple[FamilySpec, ...] = (sdxl.SPEC, sd2.SPEC, sd1.SPEC)

#: The family names, as the user sees them listed.
FAMILIES: tuple[str, ...] = tuple(_SPECS)


def spec(name: str) -> FamilySpec:
    """The spec of family ``name``; UserError naming the known ones when there is none."""
    found = _SPECS.get(name)
    if found is None:
        raise UserError(f"unknown model family '{name}'; use one of {', '.join(FAMILIES)}")
    return found


def specs() -> tuple[FamilySpec, ...]:
    """Every family's spec, in :data:`FAMILIES` order."""
    return tuple(_SPECS.values())


def detection_order() -> tuple[FamilySpec, ...]:
    """The specs in the order their clues are tried: each family before the ones it extends."""
    return _DETECTION


def text_encoder_names() -> tuple[str, ...]:
    """The text encoders' component names over every family (for choices made before the model is loaded)."""
    return tuple(dict.fromkeys(name for family in _SPECS.values() for name in family.text_encoder_names))


def runtime(name: str) -> Any:
    """The trainer-side runtime of family ``name`` (imports torch and diffusers)."""
    return importlib.import_module(f"core.families.{spec(name).name}.runtime").RUNTIME
