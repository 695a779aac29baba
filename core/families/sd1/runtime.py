"""The SD1 runtime: the shared SD-UNet runtime with CLIP-L and its tiny model (imported only by the trainer)."""

from __future__ import annotations

from typing import Any

from core.families.protocol import FamilyRuntime
from core.families.sd1 import SPEC
from core.families.sd_unet import tiny
from core.families.sd_unet.runtime import SDUNetRuntime


class SD1Runtime(SDUNetRuntime):
    """SD 1.x: one CLIP-L encoder, epsilon."""

    def _tiny_pipeline(self) -> tuple[type, dict[str, Any]]:
        """A tiny SD1: CLIP-L-shaped (quick_gelu) encoder of width 32, epsilon."""
        import torch
        from transformers import CLIPTextModel

        torch.manual_seed(tiny.SEED)
        te = CLIPTextModel(tiny.text_config(32, "quick_gelu"))
        parts = dict(unet=tiny.unet(32, **tiny.SD_BLOCKS), vae=tiny.vae(SPEC.configs["vae"]["scaling_factor"]), text_encoder=te, scheduler=tiny.scheduler("epsilon"))
        return self.pipeline_class(), parts


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = SD1Runtime(SPEC)
