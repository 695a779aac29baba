"""The model families sdtui trains, one package each: the registry of their torch-free specs.

``spec(name)`` is what the planner, estimator, CLI and TUI read; ``runtime(name)`` imports the
family's ``runtime.py`` (torch, diffusers), which only the trainer calls. Detection
(``core/families/detect.py``) tries them in :func:`detection_order`: the most specific first, the
plain layout the others extend last. Adding a family: docs/adding-a-family.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from core.errors import UserError
from core.families import chroma, flux, flux2, qwenimage, sd1, sd2, sd35, sdxl, zimage
from core.families.spec import FamilySpec, Variant

if TYPE_CHECKING:
    from core.families.protocol import FamilyRuntime

_SPECS: dict[str, FamilySpec] = {m.SPEC.name: m.SPEC for m in (sd1, sd2, sdxl, flux, chroma, sd35, zimage, flux2, qwenimage)}
#: FLUX.2 and Qwen-Image before FLUX.1 and Chroma: FLUX.2's original files have FLUX.1's ``double_blocks.`` names too.
_DETECTION: tuple[FamilySpec, ...] = (zimage.SPEC, sd35.SPEC, flux2.SPEC, qwenimage.SPEC, chroma.SPEC, flux.SPEC, sdxl.SPEC, sd2.SPEC, sd1.SPEC)

#: The family names, as the user sees them listed.
FAMILIES: tuple[str, ...] = tuple(_SPECS)


def spec(name: str) -> FamilySpec:
    """The spec of family ``name``, or of a variant measured on its own (``sd35-large``: its family's
    spec sized as it, :meth:`FamilySpec.sized`, which the planner and estimator read under that name);
    UserError naming the known families when there is none."""
    found = _SPECS.get(name)
    if found is None:
        sized = next((family.sized(name) for family in _SPECS.values() if name in family.sized_variants), None)
        if sized is not None:
            return sized
        raise UserError(f"unknown model family '{name}'; use one of {', '.join(FAMILIES)}")
    return found


def planned_as(family: str, model: str) -> str:
    """The name ``model`` (a ``--model`` name or a diffusers folder) is planned under: a variant of ``family``
    measured on its own (``sd35-large``, ``sd35-large-turbo`` -> ``sd35-large``, a FLUX.2-dev folder ->
    ``flux2-dev``), else the family (its default variant's tables)."""
    from core.families.detect import variant_of_model

    variant = variant_of_model(model, family) if model else ""
    return _SPECS[family].measured_as(variant) if variant else family


def specs() -> tuple[FamilySpec, ...]:
    """Every family's spec, in :data:`FAMILIES` order."""
    return tuple(_SPECS.values())


def detection_order() -> tuple[FamilySpec, ...]:
    """The specs in the order their clues are tried: each family before the ones it extends."""
    return _DETECTION


def text_encoder_names() -> tuple[str, ...]:
    """The text encoders' component names over every family (for choices made before the model is loaded)."""
    return tuple(dict.fromkeys(name for family in _SPECS.values() for name in family.text_encoder_names))


def variant_names() -> tuple[str, ...]:
    """Every ``--model`` variant name over the families (each family's default is named like the family)."""
    return tuple(v.name for family in _SPECS.values() for v in family.variants)


def variant(name: str) -> Variant:
    """The variant ``name`` (a ``--model`` name) with its family; UserError naming the known ones when there is none."""
    for family in _SPECS.values():
        for found in family.variants:
            if found.name == name:
                return found
    raise UserError(f"unknown model '{name}'; use one of {', '.join(variant_names())}")


def runtime(name: str) -> FamilyRuntime:
    """The trainer-side runtime of family ``name`` (imports torch and diffusers)."""
    return cast("FamilyRuntime", importlib.import_module(f"core.families.{spec(name).name}.runtime").RUNTIME)
