"""Starting runs: validate, preflight, create the run folder, detach a supervisor; and resuming.

``start_run`` returns as soon as the supervisor is spawned (no torch import on this path).
The supervisor runs in a new session with stdin from /dev/null and its output in train.log,
so a hang-up of the terminal that started it does not reach it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from core import runs_folder
from core.atomic import write_atomic, write_json_atomic
from core.errors import UserError
from core.launch.accelerate_config import accelerate_config, other_node_commands, to_yaml, world_size
from core.launch.command import launch_command, launch_env
from core.runs import FINAL_STATES, LOST, RunDir, create_run_dir

Notify = Callable[[str], None]


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_run(
    config_path: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    force: bool = False,
    notify: Notify | None = None,
    gpus: Any = None,
) -> RunDir:
    """Validate ``config_path`` with ``overrides``, run the preflight, create the run folder and detach.

    ``gpus`` is the probed GpuSet (probed here when None). Notices (CPU fallback, busy GPUs, the
    commands for the other machines) go to ``notify``.
    """
    from core.config import apply_overrides, load_config, save_config
    from core.launch.preflight import preflight

    say = notify or (lambda _msg: None)
    config = apply_overrides(load_config(config_path), list(overrides))
    if gpus is None:
        from core.gpu import probe

        gpus = probe()
    root = Path(runs_dir).expanduser().resolve()
    checked = preflight(config, root, gpus, force=force)
    distributed = dict(config.distributed)
    if int(distributed.get("num_machines", 1)) == 1 and int(distributed.get("main_process_port", 29500)) == 0:
        distributed["main_process_port"] = free_port()
    accel = accelerate_config(distributed, str(config.settings.get("mixed_precision", "bf16")), checked.use_cpu)
    world = world_size(distributed)
    run = create_run_dir(root, config.name)
    save_config(config, run.run_toml)
    write_json_atomic(run.plan_json, checked.plan.to_json(world))
    write_atomic(run.accelerate_yaml, to_yaml(accel))
    env = launch_env(checked.use_cpu)
    run.write_status(
        state="queued",
        run_id=run.id,
        created_at=round(time.time(), 3),
        total_steps=checked.plan.total_steps_for(world),
        world_size=world,
        machine_rank=int(distributed.get("machine_rank", 0)),
        device="cpu" if checked.use_cpu else "cuda",
        launch={"argv": launch_command(run.path, accel), "env": env, "cwd": os.getcwd()},
        notices=checked.notices,
    )
    for notice in checked.notices:
        say(notice)
    if int(distributed.get("num_machines", 1)) > 1 and int(distributed.get("machine_rank", 0)) == 0:
        say("this is machine 0 of a multi-machine run; copy the run config and the dataset to the other machines and run there:")
        for line in other_node_commands(str(run.run_toml), distributed):
            say(f"  {line}")
    spawn_supervisor(run)
    runs_folder.remember(root, os.getcwd())
    return run


def spawn_supervisor(run: RunDir) -> int:
    """Start ``python -m core.launch.supervisor RUN`` detached (new session); return its pid."""
    from core.launch.procs import describe

    cwd = (run.read_status().get("launch") or {}).get("cwd") or os.getcwd()
    if not Path(cwd).is_dir():
        cwd = str(run.path)
    with open(run.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.launch.supervisor", str(run.path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd=cwd,
        )
    try:
        run.write_status(pids=[describe(psutil.Process(proc.pid), "supervisor")])
    except psutil.Error:
        pass  # it exited already; its status says why
    return proc.pid


def resume_run(run: RunDir) -> RunDir:
    """Continue an ended run (stopped, failed or lost) in the same folder from its newest checkpoint."""
    from core.launch.supervisor import is_locked

    status = run.read_status()
    state = run.derive_state(status)
    if state == "finished":
        raise UserError(f"run {run.id} has finished; start a new run with its config: sdtui train {run.run_toml}")
    if state not in FINAL_STATES + (LOST,) or is_locked(run):
        raise UserError(f"run {run.id} is {state} and its processes are running; there is nothing to resume (sdtui pause {run.id} pauses it)")
    if not status.get("launch"):
        raise UserError(f"run {run.id} has no launch command in its status.json; start a new run with sdtui train {run.run_toml}")
    run.write_status(state="queued", resumed_from_state=state, error=None, hint=None, log_tail=None, exit_code=None, pids=[])
    spawn_supervisor(run)
    return run
