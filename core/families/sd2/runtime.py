"""The SD2 runtime: the shared SD-UNet runtime with OpenCLIP-H and its tiny model (imported only by the trainer)."""

from __future__ import annotations

from typing import Any

from core.families.protocol import FamilyRuntime
from core.families.sd2 import SPEC
from core.families.sd_unet import tiny
from core.families.sd_unet.runtime import SDUNetRuntime


class SD2Runtime(SDUNetRuntime):
    """SD 2.x: one OpenCLIP-H encoder, a linear-projection UNet, v-prediction at 768-v size."""

    def _tiny_pipeline(self) -> tuple[type, dict[str, Any]]:
        """A tiny SD2: gelu encoder of SD2's width (1024, what the family detection reads), v-prediction."""
        import torch
        from transformers import CLIPTextModel

        torch.manual_seed(tiny.SEED)
        hidden = SPEC.configs["text_encoder"]["hidden_size"]
        te = CLIPTextModel(tiny.text_config(hidden, "gelu"))
        unet = tiny.unet(hidden, **tiny.SD_BLOCKS, use_linear_projection=True)
        parts = dict(unet=unet, vae=tiny.vae(SPEC.configs["vae"]["scaling_factor"]), text_encoder=te, scheduler=tiny.scheduler("v_prediction"))
        return self.pipeline_class(), parts


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = SD2Runtime(SPEC)
