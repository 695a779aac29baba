"""The memory techniques of a run as sd-scripts' flags: ``--fp8_base`` / ``--fp8_base_unet`` for
the base precision and ``--blocks_to_swap`` (its own block count) for the swap; what sd-scripts has
no flag for is named, never dropped silently.

sd-scripts' network scripts (train_network.py and the SDXL, FLUX.1 and SD3 ones that inherit
from it) store the frozen base in plain fp8 (e4m3, no scales): ``fp8_base`` the denoiser and the
text encoders, ``fp8_base_unet`` the denoiser alone. They have no int8 or nf4 base and no
fp8 text encoders beside a bf16 denoiser. Its DiT scripts swap blocks: SD3 the last N joint
blocks, as sdtui does; FLUX.1 and Chroma ``N // 2`` double blocks and ``2 * (N - N // 2)``
single blocks (library/flux_models.py, ``enable_block_swap``), at most all but 2 of each list, so
the export picks the count that moves at least as many parameters off the GPU as the run's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.families import spec
from core.memory.techniques import swap_of

#: The stored precisions sd-scripts' fp8 flags cover.
FP8 = ("fp8", "fp8_scaled")
#: Families whose sd-scripts model swaps double and single blocks (library/flux_models.py).
PAIRED_SWAP = ("flux", "chroma")
#: Blocks of each list sd-scripts keeps on the GPU at least (``enable_block_swap``'s assertion).
KEPT_BLOCKS = 2


@dataclass(frozen=True)
class MemoryFlags:
    """sd-scripts flags (name -> (value, the run.toml setting it comes from)), the settings with no
    flag, and notes on what was translated approximately."""

    flags: dict[str, tuple[Any, str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def memory_flags(family: str, settings: Mapping[str, Any]) -> MemoryFlags:
    """The base precision, text-encoder precision and block swap of ``settings`` on ``family`` (or
    the variant measured on its own, e.g. ``sd35-large``) as sd-scripts flags; the caller keeps
    those its script accepts and names the others."""
    flags, unmapped, notes = _precision_flags(settings)
    swap = int(settings.get("blocks_to_swap", 0) or 0)
    if swap:
        count, note = sd_scripts_swap(family, swap)
        flags["blocks_to_swap"] = (count, f"settings.blocks_to_swap = {swap} (sd-scripts swaps blocks only in its DiT scripts: FLUX.1, Chroma, SD3)")
        if note:
            notes.append(note)
    return MemoryFlags(flags, unmapped, notes)


def _precision_flags(settings: Mapping[str, Any]) -> tuple[dict[str, tuple[Any, str]], list[str], list[str]]:
    mixed = str(settings.get("mixed_precision"))
    base, encoders = (_stored(settings.get(key), mixed) for key in ("base_precision", "text_encoder_precision"))
    flags: dict[str, tuple[Any, str]] = {}
    unmapped: list[str] = []
    notes: list[str] = []
    if base in FP8 and encoders in FP8:
        flags["fp8_base"] = (True, f'settings.base_precision = "{base}" with text_encoder_precision = "{encoders}"')
    elif base in FP8:
        flags["fp8_base_unet"] = (True, f'settings.base_precision = "{base}"')
    elif base:
        unmapped.append(f'settings.base_precision = "{base}" (sd-scripts stores a frozen base in fp8 at the least: --fp8_base_unet)')
    if encoders and not (base in FP8 and encoders in FP8):
        unmapped.append(f'settings.text_encoder_precision = "{encoders}" (sd-scripts stores the text encoders in fp8 only together with the base: --fp8_base)')
    if "fp8_scaled" in (base, encoders) and flags:
        notes.append("sd-scripts' fp8 base is a plain cast to e4m3 without fp8_scaled's per-row scales, so it loses a little more than the run's")
    return flags, unmapped, notes


def _stored(value: Any, mixed: str) -> str:
    """A stored precision that differs from the mixed precision ('' when it does not)."""
    text = str(value or "auto")
    return "" if text in ("auto", mixed) else text


def sd_scripts_swap(family: str, count: int) -> tuple[int, str]:
    """sd-scripts' ``--blocks_to_swap`` for sdtui's ``count`` last blocks, and a note when it
    cannot move as much off the GPU ('' otherwise)."""
    lists = _block_lists(family)
    if family not in PAIRED_SWAP or len(lists) != 2:
        top = max(1, sum(len(blocks) for blocks in lists) - KEPT_BLOCKS)
        if count <= top:
            return count, ""
        return top, f"sd-scripts swaps at most {top} {family} blocks, so the export swaps {top} of the run's {count}: the GPU holds more"
    doubles, singles = lists
    wanted = swap_of(family, count).params
    top = _paired_top(len(doubles), len(singles))
    for n in range(1, top + 1):
        if _paired_params(doubles, singles, n) >= wanted:
            return n, ""
    return top, f"sd-scripts swaps at most {top} {family} blocks ({top // 2} double, {2 * (top - top // 2)} single), fewer parameters than the run's {count}: the GPU holds more"


def _block_lists(family: str) -> list[list[int]]:
    """Parameter counts of each swappable block list, in the spec's order (params.json ``blocks``)."""
    from core.memory import data

    blocks = data.params()[family][spec(family).denoiser].get("blocks", {})
    return [[int(n) for n in blocks[name]] for name in blocks]


def _paired_top(doubles: int, singles: int) -> int:
    """The largest N sd-scripts accepts: N // 2 and 2 * (N - N // 2) within all but KEPT_BLOCKS of each list."""
    n = 0
    while (n + 1) // 2 <= doubles - KEPT_BLOCKS and 2 * ((n + 1) - (n + 1) // 2) <= singles - KEPT_BLOCKS:
        n += 1
    return n


def _paired_params(doubles: list[int], singles: list[int], n: int) -> int:
    """Parameters sd-scripts moves off the GPU with ``--blocks_to_swap n``: the last N // 2 double
    and 2 * (N - N // 2) single blocks."""
    d, s = n // 2, 2 * (n - n // 2)
    return sum(doubles[len(doubles) - d :]) + sum(singles[len(singles) - s :])
