"""``python -m core.train RUN_DIR [--attempt ID] [--weights-hash FILE]``: what ``accelerate launch`` runs (one process per rank)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from core.monitor.logs import quiet_library_loggers

USAGE = "usage: python -m core.train RUN_DIR [--attempt ID] [--weights-hash FILE]"
OPTIONS = ("--attempt", "--weights-hash")


def parse(argv: list[str]) -> tuple[str, dict[str, str]] | None:
    """``(RUN_DIR, {option: value})`` of the command line, or None when it is not one."""
    if not argv or argv[0].startswith("--") or len(argv) % 2 == 0:
        return None
    options = dict(zip(argv[1::2], argv[2::2]))
    if any(name not in OPTIONS for name in options) or len(options) != len(argv) // 2:
        return None
    return argv[0], options


def run(argv: list[str]) -> int:
    """Train the run folder named by ``argv[0]``; ``--attempt ID`` is the supervisor's attempt id,
    ``--weights-hash FILE`` has each rank append a hash of its weights at every checkpoint (tests)."""
    parsed = parse(argv)
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    run_dir, options = parsed
    quiet_missing_torchvision()
    quiet_library_loggers()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from core.train.loop import main

    # Loading bars would fill train.log (and the dashboard's log tail) with carriage returns.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    weights_hash = options.get("--weights-hash")
    return main(run_dir, attempt=options.get("--attempt", ""), weights_hash=Path(weights_hash) if weights_hash else None)


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
