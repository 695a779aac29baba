"""The commands that open the TUI: the home screen, ``demo`` and ``attach``."""

from __future__ import annotations

import argparse
from typing import Any

from cli.common import add_set, runs_folder, writable_folder
from core.families import FAMILIES


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` and ``attach``."""
    demo = sub.add_parser("demo", help="the whole flow on a tiny model and a generated dataset (CPU is fine)")
    demo.add_argument("--headless", action="store_true", help="no TUI: train the demo and print progress until it ends")
    demo.add_argument("--workdir", default="demo", help="work folder for the model, dataset and runs (default ./demo)")
    demo.add_argument("--family", default="sd1", choices=FAMILIES, help="the model family of the tiny model (default sd1)")
    add_set(demo)
    demo.set_defaults(func=cmd_demo)
    attach = sub.add_parser("attach", help="open the live dashboard of a run")
    attach.add_argument("run", metavar="RUN", help="run id in the runs folder, or the path of a run folder")
    attach.set_defaults(func=cmd_attach)


def _gpu_spec(args: argparse.Namespace) -> str | None:
    return None if args.gpus in (None, "auto") else args.gpus


def cmd_home(args: argparse.Namespace) -> int:
    """The home screen."""
    from tui.app import run_app

    folder = runs_folder(args)
    return run_app(folder.path, folder.reason, _gpu_spec(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """``sdtui demo``: the wizard filled in with the demo, or ``--headless`` training to the end."""
    from core.demo import CAPTIONER_NOTE, prepare_demo, run_headless, workspace

    writable_folder(args.workdir, "the demo's --workdir")
    folder = runs_folder(args, own=workspace(args.workdir).runs)
    if args.headless:
        return run_headless(args.workdir, folder.path, args.overrides, family=args.family)
    print(f"sdtui: preparing the demo in {args.workdir} (tiny {args.family} model, generated dataset, tiny captioner)…", flush=True)
    print(f"sdtui: {CAPTIONER_NOTE}; caption the images without one in the dataset step", flush=True)
    ws = prepare_demo(args.workdir, args.overrides, args.family)
    from tui.app import run_app

    return run_app(folder.path, folder.reason, _gpu_spec(args), start="wizard", demo=ws)


def cmd_attach(args: argparse.Namespace) -> int:
    """``sdtui attach RUN``: the dashboard of one run; exit 1 (with the sentence) when the run has
    failed or is lost, or its status.json is damaged."""
    from core.runs.listing import resolve_run

    folder = runs_folder(args)
    run = resolve_run(args.run, folder.path)
    from tui.app import run_app

    code = run_app(folder.path, folder.reason, _gpu_spec(args), start="dashboard", run=run)
    return code or attach_verdict(run)


def attach_verdict(run: Any) -> int:
    """0, or JobFailed saying why the attached run is not well: failed, lost, or a damaged status.json."""
    from core.errors import JobFailed
    from core.launch.control import status_fields

    fields = status_fields(run)
    problem = f" ({fields['problem']})" if fields.get("problem") else ""
    if fields["state"] in ("failed", "lost"):
        error = fields.get("error") or "its processes died without a final state"
        raise JobFailed(f"run {fields['id']} is {fields['state']}: {error}{problem}; sdtui resume {fields['id']} continues it")
    if problem:
        raise JobFailed(f"run {fields['id']} is {fields['state']}{problem}")
    return 0
