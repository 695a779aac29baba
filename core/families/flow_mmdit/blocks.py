"""LoRA target selection by block for the flow transformers: the adapted layers as full module names (torch-free logic).

A family's ``lora_target_modules`` hook chooses which blocks of each block list train (sd-scripts'
``train_double_block_indices`` / ``train_single_block_indices``) and hands the choice here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def linear_targets(denoiser: Any, targets: Sequence[str], chosen: Mapping[str, set[int]], outside: bool) -> list[str]:
    """Full names of the 2-D-weight (Linear) modules whose names end in one of ``targets``: inside a block
    list of ``chosen`` (list name -> block numbers) only in the chosen blocks, outside every block list
    only when ``outside`` (``lora_targets = "all"``: embedders and final layer). A target naming a module
    list (FLUX.2's double-block ``attn.to_out``) adapts only the Linear layers it matches exactly."""
    names = []
    for name, module in denoiser.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets) or getattr(getattr(module, "weight", None), "ndim", 0) != 2:
            continue
        head, _, rest = name.partition(".")
        if head in chosen:
            if int(rest.split(".", 1)[0]) in chosen[head]:
                names.append(name)
        elif outside:
            names.append(name)
    return names
