"""The flow objective of a flow transformer model, from its scheduler config and the run's settings (torch-free).

The shift is the model's own unless ``settings.flow_shift`` sets one: a scheduler config with
``use_dynamic_shifting`` (FLUX.1-dev, Chroma) gets FLUX.1's token-count shift
(``base_shift`` … ``max_shift`` over ``base_image_seq_len`` … ``max_image_seq_len`` image tokens,
as its pipeline samples), one without it its fixed ``shift`` (FLUX.1-schnell 1.0, SD 3.x 3.0).
σ is drawn by ``settings.flow_sampling`` (``logit_mean``, ``logit_std``, ``mode_scale``) and the
loss weighted by ``settings.flow_weighting``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families.objectives import FLOW_SETTINGS, FlowObjective


def shift_rule(scheduler_config: Mapping[str, Any], patch: int, shift: float = 0.0) -> tuple[float, tuple[float, float, int, int, int] | None]:
    """``(shift, token_shift)`` of a model: ``shift`` when positive, else its scheduler config's rule."""
    if shift > 0:
        return shift, None
    if scheduler_config.get("use_dynamic_shifting"):
        token_shift = (
            float(scheduler_config.get("base_shift", 0.5)),
            float(scheduler_config.get("max_shift", 1.15)),
            int(scheduler_config.get("base_image_seq_len", 256)),
            int(scheduler_config.get("max_image_seq_len", 4096)),
            patch,
        )
        return 1.0, token_shift
    return float(scheduler_config.get("shift", 1.0)), None


def flow_objective(scheduler_config: Mapping[str, Any], settings: Mapping[str, Any], patch: int = 2) -> FlowObjective:
    """The :class:`FlowObjective` of a model with ``scheduler_config`` under the run's ``settings`` (defaults where unset)."""

    def get(key: str) -> Any:
        return settings.get(key, FLOW_SETTINGS[key])

    shift, token_shift = shift_rule(scheduler_config, patch, float(get("flow_shift")))
    return FlowObjective(
        sampling=str(get("flow_sampling")),
        shift=shift,
        logit_mean=float(get("logit_mean")),
        logit_std=float(get("logit_std")),
        mode_scale=float(get("mode_scale")),
        weighting=str(get("flow_weighting")),
        num_train_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        token_shift=token_shift,
    )
