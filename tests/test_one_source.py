"""One definition of each shared fact: the GiB, the full-weight methods, the VRAM headroom of a fit and a
setting's dotted name are defined once (core/units.py, core/settings.py, core/memory/estimator.py) and
imported everywhere else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("core", "tui", "cli") for p in (REPO / folder).rglob("*.py")]
#: The fact, how a second definition of it looks, and the one module allowed to hold it.
FACTS = [
    ("GiB", re.compile(r"1024\s*\*\*\s*3|2\s*\*\*\s*30|1\s*<<\s*30|^\s*GIB\s*=", re.M), "core/units.py"),
    ("the full-weight methods", re.compile(r"^\s*FULL_METHODS\s*=|\(\s*\"(dreambooth|finetune)\",\s*\"(dreambooth|finetune)\"\s*\)", re.M), "core/settings.py"),
    ("the VRAM headroom of a fit", re.compile(r"^\s*HEADROOM\s*=|\d+% headroom|headroom: float = 0\.", re.M), "core/memory/estimator.py"),
    ("a setting's dotted name", re.compile(r"^def _?dotted\(|^def setting_name\(", re.M), "core/settings.py"),
]


def test_each_shared_fact_is_defined_once() -> None:
    for fact, pattern, home in FACTS:
        found = sorted(str(p.relative_to(REPO)) for p in SOURCES if pattern.search(p.read_text(encoding="utf-8")))
        others = [f for f in found if f != home]
        assert found and home in found and not others, f"{fact} is defined again in {others} (use {home}'s)"
