"""``python -m core.train RUN_DIR``: what ``accelerate launch`` runs (one process per rank)."""

from __future__ import annotations

import sys


def run(argv: list[str]) -> int:
    """Train the run folder named by ``argv[0]``."""
    if len(argv) != 1:
        print("usage: python -m core.train RUN_DIR", file=sys.stderr)
        return 2
    from .loop import main

    return main(argv[0])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
