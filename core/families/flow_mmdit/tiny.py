"""Toy parts shared by the tiny flow transformer models: a 16-channel KL VAE and the flow-matching scheduler.

The real architectures at toy size, seeded, so the whole training path runs on a CPU and offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEED = 2468


def vae16(scaling_factor: float, shift_factor: float, latent_channels: int = 16) -> Any:
    """A two-level KL VAE with 16 latent channels (no quant convs, as FLUX.1's and SD 3.x's), at toy width."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def scheduler(config: Mapping[str, Any]) -> Any:
    """The flow-matching Euler scheduler of ``config`` (the family's real one: the tiny model shifts as the real one does)."""
    from core.families.flow_mmdit.models import flow_scheduler

    return flow_scheduler(config)
