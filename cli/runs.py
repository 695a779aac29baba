"""``sdtui train | runs | status | logs | stop | save | sample | pause | resume``: detached runs."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cli.common import add_json, add_set, amount, print_json, runs_dir, runs_folder, whole_number
from core.errors import UserError


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run id in the runs folder, or the path of a run folder")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the run subcommands."""
    train = sub.add_parser("train", help="launch a run detached (survives SSH); prints the run id")
    train.add_argument("config", metavar="CONFIG.toml", help="run config (a run folder's run.toml starts a new run with it)")
    train.add_argument("--yes", "--force", dest="force", action="store_true", help="launch even if the VRAM estimate says it does not fit")
    train.add_argument("--allow-concurrent", action="store_true", help="start even while a run of the same config is live on the same GPUs")
    add_set(train)
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("runs", help="the runs in the runs folder with state, step, loss and age")
    add_json(runs)
    runs.set_defaults(func=cmd_runs)

    status = sub.add_parser("status", help="a run's status; on failure the error, hint and last log lines")
    _add_run(status)
    add_json(status)
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="a run's train.log")
    _add_run(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    logs.add_argument("-n", "--lines", type=whole_number("-n/--lines", 1), default=50, help="lines to show first (default 50)")
    logs.add_argument("--raw", action="store_true", help="every line of train.log, the libraries' known warnings included")
    logs.set_defaults(func=cmd_logs)

    stop = sub.add_parser("stop", help="save and stop a run (then terminate it if it does not stop)")
    _add_run(stop)
    stop.add_argument("--now", action="store_true", help="stop without saving")
    stop.add_argument("--grace", type=amount("--grace"), default=120.0, metavar="S", help="seconds to wait for the save before terminating (default 120)")
    stop.set_defaults(func=cmd_stop)

    for action, text in (("save", "save a checkpoint now"), ("sample", "render the sample prompts now"), ("pause", "pause a run (it keeps its memory)")):
        parser = sub.add_parser(action, help=text)
        _add_run(parser)
        parser.add_argument("--wait", type=amount("--wait"), default=30.0, metavar="S", help="seconds to wait for the trainer's acknowledgement (default 30)")
        parser.set_defaults(func=cmd_request, action=action)

    resume = sub.add_parser("resume", help="continue a paused run, or restart an ended one from its newest checkpoint")
    _add_run(resume)
    resume.add_argument("--again", action="store_true", help="resume a finished run anyway, replacing its outputs")
    resume.set_defaults(func=cmd_resume)


def _say(message: str) -> None:
    print(f"sdtui: {message}", file=sys.stderr)


def _resolve(args: argparse.Namespace) -> Any:
    from core.runs.listing import resolve_run

    return resolve_run(args.run, runs_dir(args))


def cmd_train(args: argparse.Namespace) -> int:
    """``sdtui train CONFIG.toml``: preflight, create the run folder, detach, print the run id."""
    from core.launch.start import start_run

    if getattr(args, "gpus", "auto") not in (None, "auto"):
        raise UserError("--gpus simulates hardware for sdtui plan; sdtui train uses the GPUs this machine has, so leave --gpus out")
    run = start_run(args.config, runs_dir(args), args.overrides, force=args.force, notify=_say, allow_concurrent=args.allow_concurrent)
    print(run.id)
    _say(f"started {run.id} in {run.path}; watch it with: sdtui logs {run.id} -f  (or sdtui attach {run.id})")
    return 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _steps(row: dict[str, Any]) -> str:
    total = row.get("total_steps")
    return f"{row.get('step') or 0}/{total}" if total else str(row.get("step") or 0)


def _loss(value: Any) -> str:
    """A loss as home and the dashboard print it."""
    from core.units import number

    return number(value) if isinstance(value, (int, float)) else "-"


def cmd_runs(args: argparse.Namespace) -> int:
    """``sdtui runs``: one line per run, newest first."""
    from core.runs.listing import list_runs
    from core.runs.states import LOST, STALLED

    folder = runs_folder(args)
    rows = [run.summary() for run in list_runs(folder.path)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no runs in {folder.path} ({folder.reason}); start one with: sdtui train CONFIG.toml")
        return 0
    print(f"runs in {folder.path} ({folder.reason})")
    width = max(len(r["id"]) for r in rows)
    print(f"{'RUN':<{width}}  {'STATE':<9} {'STEP':>11} {'RAW LOSS':>8} {'AGE':>5}")
    for row in rows:
        line = f"{row['id']:<{width}}  {row['state']:<9} {_steps(row):>11} {_loss(row['loss']):>8} {_age(row['age_s']):>5}"
        if row["state"] == LOST:
            line += f"  (processes died; continue with: sdtui resume {row['id']})"
        elif row["state"] == STALLED:
            line += f"  (no step and no heartbeat for {_age(row.get('stalled_s'))}: hung or stopped; sdtui stop {row['id']})"
        if row.get("problem"):
            line += f"  ({row['problem']}; state rebuilt from the folder)"
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``sdtui status RUN``: status.json with the derived state; errors with hint and log tail."""
    from core.launch.control import status_fields
    from core.launch.supervisor import log_tail
    from core.runs.phase import phase_text
    from core.runs.states import LOST, STALLED

    run = _resolve(args)
    fields = status_fields(run)
    last = run.last_step_record()
    fields["loss"] = last.get("loss") if last else None
    if not isinstance(fields.get("log_tail"), list) or not all(isinstance(line, str) for line in fields["log_tail"]):
        fields["log_tail"] = None
    if fields["state"] == "failed" and not fields.get("log_tail"):
        fields["log_tail"] = log_tail(run.log)
    if args.json:
        print_json(fields)
        return 0
    print(f"run       {fields['id']}")
    print(f"folder    {fields['path']}")
    print(f"state     {fields['state']}")
    print(f"step      {_steps(fields)}" + (f"  epoch {fields['epoch']}" if fields.get("epoch") is not None else ""))
    if isinstance(fields.get("phase"), dict) and fields["state"] in ("queued", "starting", STALLED):
        print(f"phase     {phase_text(fields['phase'])}")
    print(f"loss      {_loss(fields['loss'])} (raw, the last step's; the dashboard also shows it smoothed)")
    if fields.get("device"):
        print(f"device    {fields['device']} × {fields.get('world_size', 1)}")
    if fields.get("latest_checkpoint"):
        print(f"checkpoint {fields['latest_checkpoint']}")
    for n, output in enumerate(fields["outputs"]):
        print(f"{'output' if n == 0 else '':<9} {output}")
    if fields.get("exit_code") is not None:
        print(f"exit code {fields['exit_code']}")
    elif fields.get("exit_unknown"):
        print(f"exit code unknown: {fields['exit_unknown']}")
    if fields.get("problem"):
        print(f"warning   {fields['problem']}; the state shown was rebuilt from the run folder")
    if fields["state"] == LOST:
        print(f"the run's processes died without a final state; continue it with: sdtui resume {fields['id']}")
    if fields["state"] == STALLED:
        print(f"stalled   no step and no heartbeat for {fields.get('stalled_s', 0):.0f} s: the trainer is hung or stopped; sdtui stop {fields['id']}")
    if fields.get("note"):
        print(f"note      {fields['note']}")
    if fields.get("sample_error"):
        print(f"samples   {fields['sample_error']}")
    if fields.get("error"):
        print(f"error     {fields['error']}")
    if fields.get("hint"):
        print(f"hint      {fields['hint']}")
    if fields["state"] == "failed" and fields.get("log_tail"):
        print("last lines of train.log:")
        for line in fields["log_tail"][-15:]:
            print(f"  {line}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """``sdtui logs RUN [-f] [--raw]``: a failed run's error, the last lines (without the libraries'
    known noise unless ``--raw``), then (with -f) new ones until the run ends."""
    from core.monitor import LogTail
    from core.runs.states import FINAL_STATES, LOST

    run = _resolve(args)
    status = run.read_status()
    if not args.raw and run.derive_state(status) == "failed" and isinstance(status.get("error"), str):
        print(f"error: {status['error']}")
    tail = LogTail(run.log, lines=args.lines, raw=args.raw)
    for line in tail.poll():
        print(line)
    while args.follow:
        sys.stdout.flush()
        ended = run.state in FINAL_STATES + (LOST,) and not run.alive_processes()
        time.sleep(0.5)
        for line in tail.poll():
            print(line)
        if ended:
            break
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``sdtui stop RUN [--now]``: save and stop; nothing of the run runs afterwards."""
    from core.launch.control import stop_run

    run = _resolve(args)
    result = stop_run(run, now=args.now, grace_s=args.grace, progress=_say)
    saved = "after saving" if result.saved else "without a final save"
    print(f"{run.id} {result.state} ({saved})")
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    """``sdtui save | sample | pause RUN``: ask the trainer and wait for its acknowledgement."""
    from core.launch.control import ask, wait_ack

    run = _resolve(args)
    rid = ask(run, args.action)
    if wait_ack(run, rid, args.wait):
        kept = " (a manual checkpoint: kept beyond keep_checkpoints until you delete it)" if args.action == "save" else ""
        print(f"{run.id}: {args.action} acknowledged{kept}")
        return 0
    print(f"{run.id}: {args.action} requested (id {rid}); the trainer has not acknowledged it yet")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``sdtui resume RUN``: continue a paused run, or restart an ended one from its newest checkpoint."""
    from core.launch.control import ask
    from core.launch.start import resume_run

    run = _resolve(args)
    if run.state == "paused":
        ask(run, "resume")
        print(f"{run.id}: asked to resume")
        return 0
    resume_run(run, again=args.again, notify=_say)
    checkpoint = run.latest_checkpoint()
    where = f"from {checkpoint.name}" if checkpoint else "from the start (no checkpoint yet)"
    print(f"{run.id}: restarted {where}")
    return 0
