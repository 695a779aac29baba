"""``python -m core.train RUN_DIR [--attempt ID]``: what ``accelerate launch`` runs (one process per rank)."""

from __future__ import annotations

import logging
import os
import sys


def run(argv: list[str]) -> int:
    """Train the run folder named by ``argv[0]``; ``--attempt ID`` is the supervisor's attempt id."""
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--attempt"):
        print("usage: python -m core.train RUN_DIR [--attempt ID]", file=sys.stderr)
        return 2
    quiet_missing_torchvision()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .loop import main

    # Loading bars would fill train.log (and the dashboard's log tail) with carriage returns.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    return main(argv[0], attempt=argv[2] if len(argv) == 3 else "")


class _NotTorchvision(logging.Filter):
    """Drops transformers' notice that an image processor falls back to PIL without torchvision
    (once per processor class at import; sdtui never uses those processors, and the lines filled
    the dashboard's log tail)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def quiet_missing_torchvision() -> None:
    """Install the filter on the logger that says it (filters act where a record is logged)."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_NotTorchvision())


def exit_now(code: int) -> None:
    """Flush the logs and end the process at once, skipping the interpreter's teardown.

    Everything the run writes is on disk by now (status, metrics, checkpoints, outputs; the
    process group is destroyed). What is left is tearing down the heap of torch, diffusers and
    transformers, which takes 2-5 s of CPU (more on a loaded machine) after the final state is
    written, so a launcher waiting for the process would see it linger.
    """
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
        child.join(2)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(run(sys.argv[1:]))
