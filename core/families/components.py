"""Building a family's components from its spec's classes and configs (the measurement tools, on the meta device).

``spec.component_classes`` names each component's class as ``library.Class``: a diffusers model
is made with ``from_config``, a transformers model from its own ``config_class``. Heavy imports
happen inside :func:`component_class`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from core.families.spec import FamilySpec


def component_class(family: FamilySpec, name: str, variant: str = "") -> Any:
    """The class of component ``name`` of ``variant`` (``diffusers.UNet2DConditionModel``, ``transformers.T5EncoderModel`` …)."""
    library, _, class_name = family.component_class_names(variant)[name].rpartition(".")
    return getattr(importlib.import_module(library), class_name)


def build_component(family: FamilySpec, name: str, config: Mapping[str, Any], variant: str = "") -> Any:
    """Component ``name`` of ``family`` (its ``variant``) built from ``config`` (random weights; on the current default device)."""
    cls = component_class(family, name, variant)
    if hasattr(cls, "from_config") and not hasattr(cls, "config_class"):
        return cls.from_config(dict(config))
    return cls(cls.config_class(**config))
