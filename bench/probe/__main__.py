"""Run every check of the fault probe and print one line each (see ``bench/probe/__init__.py``)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import bench.probe
from bench.probe.base import Check


def all_checks() -> list[Check]:
    """Every check of every module in this package, in module order."""
    checks: list[Check] = []
    for info in sorted(pkgutil.iter_modules(bench.probe.__path__), key=lambda m: m.name):
        if info.name in {"base", "__main__"}:
            continue
        module = importlib.import_module(f"bench.probe.{info.name}")
        checks.extend(getattr(module, "CHECKS", []))
    return checks


def run_check(check: Check) -> str | None:
    """Run one check in a scratch folder of its own; an exception counts as broken."""
    with tempfile.TemporaryDirectory(prefix="sdtui-probe-") as scratch:
        try:
            return check.run(Path(scratch))
        except Exception as exc:  # noqa: BLE001 - a crashing check is a broken one, with its reason
            last = traceback.format_exception_only(exc)[-1].strip()
            return f"the check itself raised {last}"


def main(argv: list[str] | None = None) -> int:
    """Run the selected checks; exit 1 when any is broken."""
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    parser.add_argument("--only", default="", help="run only the checks whose name contains TEXT")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    checks = [c for c in all_checks() if args.only.lower() in c.name.lower()]
    if args.list:
        for check in checks:
            print(check.name)
        return 0
    held = broken = 0
    for check in checks:
        start = time.monotonic()
        problem = run_check(check)
        took = time.monotonic() - start
        if problem is None:
            held += 1
            print(f"held    {check.name} ({took:.1f} s)", flush=True)
        else:
            broken += 1
            print(f"BROKEN  {check.name}: {problem} ({took:.1f} s)", flush=True)
    print(f"probe: {held} held, {broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
