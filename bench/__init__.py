"""Benchmarks that print side-by-side ratios against what users would otherwise run.

``python -m bench`` (``make bench``) runs every ``bench_*.py`` module; see ``bench/__main__.py``.
"""

from __future__ import annotations

import os

#: Set by ``python -m bench --quick`` in every benchmark's environment.
QUICK_ENV = "SDTUI_BENCH_QUICK"


def quick() -> bool:
    """True under ``python -m bench --quick``: the slow comparisons run one short round."""
    return os.environ.get(QUICK_ENV) == "1"


def with_bytecode(env: dict[str, str]) -> dict[str, str]:
    """``env`` with compiled bytecode kept (in ``<user cache>/sdtui/pycache``), as an installed sdtui has it.

    ``make setup`` installs with compiled bytecode; a venv without it (this machine's shared one,
    with ``PYTHONDONTWRITEBYTECODE=1``) recompiles torch, diffusers and transformers from source
    in every process: 9.0 s of CPU instead of 4.7 s for the trainer's imports here, which would
    swamp every start-up figure. Both sides of a comparison get the same environment.
    """
    from core.userdirs import cache_dir

    out = dict(env)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out.setdefault("PYTHONPYCACHEPREFIX", str(cache_dir() / "pycache"))
    return out
