"""LoRA target selection by block for the flow transformers: the adapted layers as full module names (torch-free logic).

A family names its block selection settings in ``FamilySpec.block_settings`` (sd-scripts'
``train_double_block_indices`` / ``train_single_block_indices`` for FLUX.1, ``train_block_indices``
for SD 3.5's joint blocks and Z-Image's layers); its ``lora_target_modules`` hook parses them here
(:func:`parse_indices`) and hands the choice to :func:`linear_targets`. Validation and the
estimator read the same lists without torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: The words ``all`` / empty (every block) and ``none`` (no block) of a block list.
EVERY, NO_BLOCK = ("", "all"), "none"


def indices_problem(text: str, count: int, setting: str) -> str | None:
    """The sentence for a block list ``settings.<setting>`` that is not one, or names a block past
    ``count`` (``all`` / empty, ``none``, or ``0,3,5-9`` with inclusive ranges), else None."""
    text = text.strip().lower()
    if text in EVERY or text == NO_BLOCK:
        return None
    for piece in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", piece)
        if match is None:
            return f"settings.{setting} = '{text}' is not a block list; write e.g. 0-9,15 (or all / none)"
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last >= count or first > last:
            return f"settings.{setting} names block {max(first, last)}, but the model has blocks 0-{count - 1}; fix the list"
    return None


def parse_indices(text: str, count: int, setting: str) -> set[int]:
    """sd-scripts' block selection: ``all`` / empty, ``none``, or ``0,3,5-9`` (ranges inclusive); UserError naming a bad one."""
    from core.errors import UserError

    problem = indices_problem(text, count, setting)
    if problem:
        raise UserError(problem)
    text = text.strip().lower()
    if text in EVERY:
        return set(range(count))
    chosen: set[int] = set()
    for piece in text.split(",") if text != NO_BLOCK else ():
        first, _, last = piece.partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    return chosen


def selects_blocks(text: str) -> bool:
    """Whether a block list narrows the blocks (anything but ``all`` / empty)."""
    return text.strip().lower() not in EVERY


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
