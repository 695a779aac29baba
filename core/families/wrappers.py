"""Training wrappers around a model, seen through (no torch import)."""

from __future__ import annotations

from typing import Any


def unwrap(module: Any) -> Any:
    """The plain model inside DDP / torch.compile / PeftModel wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif type(module).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(module, "module"):
            module = module.module
        elif type(module).__name__ == "PeftModel" and hasattr(module, "get_base_model"):
            module = module.get_base_model()
        else:
            return module
