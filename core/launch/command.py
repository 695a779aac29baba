"""The ``accelerate launch`` command of a run: an argument list and its environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def launch_command(run_dir: str | os.PathLike[str], config: dict[str, Any], python: str | None = None) -> list[str]:
    """``python -m accelerate.commands.launch --config_file RUN/accelerate.yaml … -m core.train RUN``.

    ``config`` is the accelerate config written into the run folder; several processes of
    plain DDP get ``--multi_gpu`` explicitly so the CPU path (ACCELERATE_USE_CPU) starts them all.
    """
    run = Path(run_dir)
    argv = [python or sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(run / "accelerate.yaml")]
    if config.get("distributed_type") == "MULTI_GPU":
        argv.append("--multi_gpu")
    argv += ["-m", "core.train", str(run)]
    return argv


def launch_env(use_cpu: bool, threads: int | None = None) -> dict[str, str]:
    """Environment entries added for the launcher (on top of the caller's environment)."""
    env = {
        "PYTHONUNBUFFERED": "1",
        # torch's elastic agent tears the workers down on SIGHUP; a hang-up must not stop a run.
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGQUIT",
    }
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = str(threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    return env


def format_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The command as one line a user could paste (for display only; never executed as a string)."""
    import shlex

    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items() if k != "PYTHONUNBUFFERED")
    return (prefix + " " if prefix else "") + shlex.join(argv)
