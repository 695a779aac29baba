"""``sdtui``: the entry point. Parses arguments and dispatches; the work lives in core/ and tui/.

Each area registers its subcommands from its own module. Heavy modules are imported inside
the command that needs them so that ``sdtui --help`` and the TUI start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core.errors import JobFailed, UserError
from core.monitor.logs import quiet_library_loggers

from . import app, captions, hardware, planning, runs
from .common import add_global_options, describe_os_error


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="sdtui",
        description="Fine-tune Stable Diffusion from the terminal: plan, launch detached, monitor.",
    )
    add_global_options(parser, top=True)
    parser.set_defaults(func=app.cmd_home)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    app.register(sub)
    hardware.register(sub)
    planning.register(sub)
    runs.register(sub)
    captions.register(sub)
    for command in sub.choices.values():
        add_global_options(command, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit 0 ok, 1 the job failed, 2 bad input."""
    parser = build_parser()
    quiet_library_loggers()  # commands that import diffusers (demo, caption) would print torchao's import noise
    try:
        args = parser.parse_args(argv)  # an option's type may raise UserError for a bad value
        code = args.func(args)
    except UserError as exc:
        print(f"sdtui: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        if str(exc):
            print(f"sdtui: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `sdtui runs | head`) went away: stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        # A path the user gave that the system refused (read-only, no such folder, a file for a
        # folder …) that no command checked first: one sentence, never a traceback.
        print(f"sdtui: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
