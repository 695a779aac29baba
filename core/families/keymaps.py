"""Key maps as data (torchtune's ``_convert_weights`` habit): templates with ``{}`` slots, used both directions.

A :class:`KeyMap` is a list of ``(ours, theirs)`` templates; each ``{}`` stands for one dotted
name part without dots (a layer number, a module path piece) and a trailing ``{*}`` for the rest
of the name. :meth:`KeyMap.to_theirs` and :meth:`KeyMap.to_ours` convert one name each way;
names no template matches are a ValueError naming them, never passed through silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\*\}|\{\})", template)
    regex = "".join("(.+)" if p == "{*}" else "([^.]+)" if p == "{}" else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def _fill(template: str, values: Iterable[str]) -> str:
    pieces = iter(values)
    return re.sub(r"\{\*\}|\{\}", lambda _m: next(pieces), template)


@dataclass(frozen=True)
class KeyMap:
    """Name templates ``(ours, theirs)`` with ``{}`` slots, tried in order, both directions."""

    pairs: tuple[tuple[str, str], ...]
    _ours: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _theirs: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ours", tuple(_pattern(o) for o, _ in self.pairs))
        object.__setattr__(self, "_theirs", tuple(_pattern(t) for _, t in self.pairs))

    def to_theirs(self, name: str) -> str:
        """Our name in the other layout."""
        return self._convert(name, self._ours, 1)

    def to_ours(self, name: str) -> str:
        """A name of the other layout in ours."""
        return self._convert(name, self._theirs, 0)

    def _convert(self, name: str, patterns: tuple[re.Pattern[str], ...], side: int) -> str:
        for pattern, pair in zip(patterns, self.pairs):
            match = pattern.match(name)
            if match:
                return _fill(pair[side], match.groups())
        raise ValueError(f"no key map entry for {name}")


#: peft's adapter parameter suffixes -> kohya/LyCORIS key suffixes, per adapter type.
KOHYA_SUFFIXES: dict[str, KeyMap] = {
    "lora": KeyMap(((".lora_A.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_up.weight"), (".lora_magnitude_vector", ".dora_scale"))),
    "loha": KeyMap(tuple((f".hada_{n}", f".hada_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2"))),
    "lokr": KeyMap(tuple((f".lokr_{n}", f".lokr_{n}") for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2"))),
}


def split_suffix(key: str, kind: str) -> tuple[str, str] | None:
    """``(module name, kohya suffix)`` of a peft state-dict key of adapter ``kind``, or None when it is no adapter tensor."""
    for ours, theirs in KOHYA_SUFFIXES[kind].pairs:
        if key.endswith(ours):
            return key[: -len(ours)], theirs
    return None
