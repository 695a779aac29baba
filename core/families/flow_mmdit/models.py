"""What the trainer does to a diffusers transformer denoiser and its schedulers, for every flow transformer family.

Plain functions over diffusers' ``ModelMixin`` API (torch and diffusers imported inside):
the attention backend, gradient checkpointing, peft adapters, and the flow-matching Euler
scheduler that both trains (its config) and samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: sdtui's ``settings.attention`` -> diffusers' attention backend (``AttentionBackendName``).
ATTENTION_BACKENDS = {"sdpa": "native", "eager": "_native_math"}


def set_attention(denoiser: Any, attention: str) -> None:
    """torch's fused scaled dot-product attention (``sdpa``) or its plain math kernel (``eager``) in every attention."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    logger = diffusers_logging.get_logger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)  # set_attention_backend warns that the API is experimental on every call
    try:
        denoiser.set_attention_backend(ATTENTION_BACKENDS[attention])
    finally:
        logger.setLevel(level)


def enable_gradient_checkpointing(denoiser: Any) -> None:
    """diffusers' checkpointing of every transformer block (recomputed in backward)."""
    denoiser.enable_gradient_checkpointing()


def add_adapter(denoiser: Any, config: Any) -> None:
    """peft's adapter ``config`` through diffusers' ``PeftAdapterMixin.add_adapter``."""
    denoiser.add_adapter(config)


def flow_scheduler(scheduler_config: Mapping[str, Any]) -> Any:
    """A ``FlowMatchEulerDiscreteScheduler`` of the model's scheduler config (its training config and its sampler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))
