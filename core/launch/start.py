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
from typing import IO, Any

import psutil

from core.atomic import write_atomic, write_json_atomic
from core.errors import UserError
from core.launch.accelerate_config import accelerate_config, other_node_commands, to_yaml, world_size
from core.launch.command import CODE_ROOT, format_command, launch_command, launch_env
from core.runs import folder as runs_folder
from core.runs.listing import create_run_dir
from core.runs.locks import is_locked, lock
from core.runs.rundir import RunDir
from core.runs.states import FINAL_STATES, LOST

Notify = Callable[[str], None]
#: Seconds a start waits for a supervisor that has recorded its run's end to let go of the folder.
_FINISHING_S = 15.0


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ConcurrentRun(UserError):
    """A live run of the same config on the same GPUs exists (``run_id``); ``--allow-concurrent`` starts a second one."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


def training_fingerprint(config: Any) -> str:
    """What makes two configs the same training: every section but the name and [distributed],
    with the defaults filled in, the subsets and the prompts."""
    import json

    from core.settings import SCHEMA

    sections = {name: config.section(name) for name in SCHEMA if name not in ("", "distributed")}
    return json.dumps({**sections, "subsets": list(config.subsets), "prompts": list(config.prompts)}, sort_keys=True, default=str)


def live_twin(config: Any, runs_dir: str | os.PathLike[str]) -> RunDir | None:
    """A live run in ``runs_dir`` (queued, starting, running, paused, stopping, stalled) of the same
    training (``training_fingerprint``) on GPUs that overlap this config's (``gpu_ids``), else None."""
    from core.config import load_config
    from core.launch.accelerate_config import parse_gpu_ids
    from core.runs.listing import list_runs
    from core.runs.states import LIVE_STATES

    mine, my_gpus = training_fingerprint(config), parse_gpu_ids(str(config.distributed.get("gpu_ids", "all")))
    for run in list_runs(runs_dir):
        if run.state not in LIVE_STATES or not run.run_toml.is_file():
            continue
        try:
            other = load_config(run.run_toml)
        except UserError:
            continue
        theirs = parse_gpu_ids(str(other.distributed.get("gpu_ids", "all")))
        overlap = my_gpus is None or theirs is None or bool(set(my_gpus) & set(theirs))
        if overlap and training_fingerprint(other) == mine:
            return run
    return None


def start_run(
    config_path: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    force: bool = False,
    notify: Notify | None = None,
    gpus: Any = None,
    allow_concurrent: bool = False,
) -> RunDir:
    """Validate ``config_path`` with ``overrides``, run the preflight, create the run folder and detach.

    ``gpus`` is the probed GpuSet (probed here when None). Notices (CPU fallback, busy GPUs, the
    commands for the other machines) go to ``notify``. A live run of the same config on the same
    GPUs is a ConcurrentRun unless ``allow_concurrent``.
    """
    from core.config import apply_overrides, load_config, save_config
    from core.launch.preflight import preflight

    say = notify or (lambda _msg: None)
    config = apply_overrides(load_config(config_path), list(overrides))
    if gpus is None:
        from core.gpu import probe

        gpus = probe()
    root = Path(runs_dir).expanduser().resolve()
    twin = None if allow_concurrent or not root.is_dir() else live_twin(config, root)
    if twin is not None:
        raise ConcurrentRun(
            f"run {twin.id} of the same config is already {twin.state} on the same GPUs; watch it with sdtui attach {twin.id}, "
            f"stop it with sdtui stop {twin.id}, or pass --allow-concurrent to start a second one beside it",
            twin.id,
        )
    checked = preflight(config, root, gpus, force=force)
    distributed = dict(config.distributed)
    run = create_run_dir(root, config.name)
    save_config(config, run.run_toml)
    write_json_atomic(run.plan_json, checked.plan.to_json(world_size(distributed)))
    run.write_status(
        state="queued",
        run_id=run.id,
        created_at=round(time.time(), 3),
        total_steps=checked.plan.total_steps_for(world_size(distributed)),
        notices=checked.notices,
    )
    held = claim(run)
    try:
        write_launch_files(run, config, checked.use_cpu)
        for notice in checked.notices:
            say(notice)
        if int(distributed.get("num_machines", 1)) > 1 and int(distributed.get("machine_rank", 0)) == 0:
            say("this is machine 0 of a multi-machine run; copy the run config and the dataset to the other machines and run there:")
            for line in other_node_commands(str(run.run_toml), distributed):
                say(f"  {line}")
        spawn_supervisor(run, held)
    finally:
        held.close()
    runs_folder.remember(root, os.getcwd())
    return run


def write_launch_files(run: RunDir, config: Any, use_cpu: bool) -> None:
    """Write accelerate.yaml from run.toml's ``[distributed]`` (port 0: a free port now) and record
    the device, world size and machine rank in status.json. Done at every start and resume, so the
    folder never depends on where it was launched before."""
    distributed = dict(config.distributed)
    if int(distributed.get("num_machines", 1)) == 1 and int(distributed.get("main_process_port", 29500)) == 0:
        distributed["main_process_port"] = free_port()
    accel = accelerate_config(distributed, str(config.settings.get("mixed_precision", "bf16")), use_cpu)
    write_atomic(run.accelerate_yaml, to_yaml(accel))
    run.write_status(
        run_id=run.id,
        world_size=world_size(distributed),
        machine_rank=int(distributed.get("machine_rank", 0)),
        device="cpu" if use_cpu else "cuda",
        launch=None,
        command=format_command(launch_command(run.path, accel), launch_env(use_cpu, one_machine=int(distributed.get("num_machines", 1)) == 1)),
    )


def claim(run: RunDir) -> IO[str]:
    """Take the run folder's supervisor lock for a supervisor about to start (handed over to it);
    UserError when a supervisor, a trainer or another start already owns the folder."""
    deadline = time.monotonic() + 1.0
    try:
        while (held := lock(run.supervisor_lock)) is None and time.monotonic() < deadline:
            time.sleep(0.05)  # a reader probing the lock holds it for microseconds
        if held is None and run.read_status().get("state") in FINAL_STATES:
            deadline = time.monotonic() + _FINISHING_S  # the supervisor has recorded the end and is closing the log
            while (held := lock(run.supervisor_lock)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
    except OSError as exc:
        raise UserError(
            f"the run folder {run.path} cannot be written ({exc.strerror or exc}); make it writable (chmod -R u+w) or copy the run folder somewhere writable and resume the copy"
        ) from None
    if held is None:
        raise UserError(f"run {run.id} is already running or being started by another sdtui; `sdtui status {run.id}` shows it")
    if is_locked(run.trainer_lock):
        held.close()
        raise UserError(f"a trainer of run {run.id} is still writing into {run.path}; stop it first with sdtui stop {run.id}")
    return held


def spawn_supervisor(run: RunDir, held: IO[str]) -> int:
    """Start ``python -m core.launch.supervisor RUN --lock-fd FD`` detached (new session), handing it
    the held supervisor lock; return its pid."""
    from core.procs import describe

    fd = held.fileno()
    with open(run.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.launch.supervisor", str(run.path), "--lock-fd", str(fd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            pass_fds=(fd,),
            cwd=CODE_ROOT,
        )
    try:
        run.write_status(pids=[describe(psutil.Process(proc.pid), "supervisor")])
    except psutil.Error:
        pass  # it exited already; its status says why
    return proc.pid


def resume_point(run: RunDir) -> str:
    """Where a resume of ``run`` starts, as the user reads it: its newest checkpoint's step, or the start."""
    from core.runs.checkpoints import step_of

    checkpoint = run.latest_checkpoint()
    return f"from its checkpoint at step {step_of(checkpoint)}" if checkpoint else "from the start (it has no checkpoint)"


def resume_run(run: RunDir, gpus: Any = None, again: bool = False, notify: Notify | None = None) -> RunDir:
    """Continue an ended run (stopped, failed or lost) in the same folder from its newest checkpoint;
    a finished one only when asked ``again`` (its outputs are then written anew).

    Everything comes from the folder and this machine: run.toml, accelerate.yaml written again,
    the GPUs probed now. The same preflight as a new run (model, dataset, GPUs, free disk) runs
    before anything is written, so a resume that cannot train says why at once; a plan that does
    not fit is a warning only (the run was launched already). Of two resumes at once one starts the
    run and the other gets a UserError. Notices go to ``notify``.
    """
    from core.config import load_config
    from core.launch.preflight import preflight
    from core.runs.checkpoints import step_of

    say = notify or (lambda _msg: None)
    status = run.read_status()
    state = run.derive_state(status)
    if state == "finished" and not again:
        raise UserError(
            f"run {run.id} has finished and resuming it would replace its outputs; start a new run with its config (sdtui train {run.run_toml}) or pass --again to resume it anyway"
        )
    if state not in FINAL_STATES + (LOST,):
        raise UserError(f"run {run.id} is {state} and its processes are running; there is nothing to resume (sdtui pause {run.id} pauses it)")
    if not run.run_toml.is_file():
        raise UserError(f"{run.path} has no run.toml, so it cannot be resumed; copy the run folder again with its run.toml")
    config = load_config(run.run_toml)
    if gpus is None:
        from core.gpu import probe

        gpus = probe()
    checked = preflight(config, run.path.parent, gpus, force=True)
    held = claim(run)
    try:
        write_launch_files(run, config, checked.use_cpu)
        for notice in checked.notices:
            say(notice)
        checkpoint = run.latest_checkpoint()
        run.write_status(
            state="queued",
            resumed_from_state=state,
            error=None,
            hint=None,
            log_tail=None,
            exit_code=None,
            exit_unknown=None,
            pids=[],
            trainer_pids=None,
            rebuilt=None,
            step=step_of(checkpoint) if checkpoint else 0,
        )
        spawn_supervisor(run, held)
    finally:
        held.close()
    return run
