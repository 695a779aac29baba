"""The ``accelerate launch`` command of a run: an argument list and its environment.

The command is rebuilt from the run folder for every attempt (never stored and read back), so a
moved or copied folder launches itself, and nothing in a run folder is executed as a command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: The folder that holds the ``core`` package: the working directory of the supervisor and the
#: launcher (never the run folder, whose files must not be importable).
CODE_ROOT = Path(__file__).resolve().parents[2]


def launch_command(run_dir: str | os.PathLike[str], config: dict[str, Any], python: str | None = None, attempt: str = "") -> list[str]:
    """``python -m core.launch.agent --config_file RUN/accelerate.yaml … -m core.train RUN [--attempt ID]``.

    ``core.launch.agent`` is ``accelerate launch`` with the loopback rendezvous registered (see
    agent.py). ``config`` is the accelerate config written into the run folder; several processes of
    plain DDP get ``--multi_gpu`` explicitly so the CPU path (ACCELERATE_USE_CPU) starts them all.
    ``attempt`` is the attempt id the trainer checks against status.json before it writes anything.
    """
    run = Path(run_dir)
    argv = [python or sys.executable, "-m", "core.launch.agent", "--config_file", str(run / "accelerate.yaml")]
    if config.get("distributed_type") == "MULTI_GPU":
        argv.append("--multi_gpu")
    if config.get("rdzv_backend") not in (None, "static"):
        argv += ["--rdzv_backend", str(config["rdzv_backend"])]  # accelerate takes it from the command line only
    argv += ["-m", "core.train", str(run)]
    if attempt:
        argv += ["--attempt", attempt]
    return argv


def read_accelerate_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The accelerate.yaml of a run folder as data; UserError when it is missing or damaged."""
    import yaml

    from core.errors import UserError

    try:
        data = yaml.safe_load(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        data = None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict):
        run = Path(path).parent
        raise UserError(f"{path} is missing or damaged; sdtui resume {run.name} writes it again from run.toml")
    return data


def launch_env(use_cpu: bool, threads: int | None = None, one_machine: bool = True) -> dict[str, str]:
    """Environment entries added for the launcher (on top of the caller's environment).

    On one machine gloo and NCCL talk over the loopback interface (unless the user set their
    interface already), so nothing of the run listens on the network.
    """
    env = {
        "PYTHONUNBUFFERED": "1",
        # torch's elastic agent tears the workers down on SIGHUP; a hang-up must not stop a run.
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGQUIT",
    }
    if one_machine:
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if name not in os.environ:
                env[name] = "lo"
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
        env["OMP_NUM_THREADS"] = str(threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // 2))
    return env


def format_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The command as one line a user could paste (for display only; never executed as a string)."""
    import shlex

    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items() if k != "PYTHONUNBUFFERED")
    return (prefix + " " if prefix else "") + shlex.join(argv)
