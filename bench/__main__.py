"""``python -m bench [NAME ...]``: run every ``bench/bench_*.py`` and print one line per result.

Each benchmark runs in its own Python process (so one benchmark's imports and threads do not
colour another's timings) with a time limit. A module exposes ``main() -> list[str]`` (the
lines are printed) or prints its lines itself. Every result line ends with
``ratio=<r>`` where r > 1 always means sdtui is better; a benchmark that fails or runs out
of time gets a line ending ``ratio=n/a`` with the reason (a line saying ``not measured``,
such as the GPU figures on a machine without one, is a skip, not a failure).

The whole suite (``make bench``) writes its lines into ``bench/RESULTS.md`` (a dated section
with the machine, its load and each line's verdict against its target); ``--quick`` runs the
slow comparisons shorter (one round, SD1.5 LoRA only on the real architectures) for CI-like use.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import QUICK_ENV, with_bytecode

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
#: Seconds each benchmark may take. The real-architecture trainer comparison (``bench_real_cpu``)
#: takes 15-30 min on 2 shared cores (``bench_flux_cpu``, FLUX.1 at real width, 10-20); ``python -m bench NAME …`` runs a selection.
DEFAULT_LIMIT_S = 240.0
LIMITS_S = {"bench_trainer": 480.0, "bench_gpu": 240.0, "bench_metrics": 420.0, "bench_real_cpu": 1200.0, "bench_flux_cpu": 1200.0}

_CHILD = (
    "import importlib, runpy, sys\n"
    "module = importlib.import_module('bench.' + sys.argv[1])\n"
    "main = getattr(module, 'main', None)\n"
    "if callable(main):\n"
    "    for line in main() or []:\n"
    "        print(line, flush=True)\n"
    "else:\n"
    "    runpy.run_module('bench.' + sys.argv[1], run_name='__main__')\n"
)


def discover(names: list[str] | None = None) -> list[str]:
    """Module names of the benchmarks (``bench_*.py``), sorted; ``names`` filters by suffix."""
    found = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    if not names:
        return found
    wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in names}
    unknown = wanted - set(found)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(sorted(unknown))}; known: {', '.join(found)}")
    return [n for n in found if n in wanted]


def child_env() -> dict[str, str]:
    """The environment benchmarks run in: offline, the repo importable."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return with_bytecode(env)


#: What a line says when its benchmark broke (a line without a reference figure is not one).
FAILURE_MARKS = ("failed (", "did not finish within", "printed no result line")


def is_failure(line: str) -> bool:
    """Whether a result line reports a benchmark that broke rather than a figure."""
    return any(mark in line for mark in FAILURE_MARKS)


def run_one(name: str, limit_s: float, quick: bool = False) -> tuple[list[str], float]:
    """Run one benchmark module in a child process; return its result lines and wall time."""
    start = time.perf_counter()
    env = {**child_env(), **({QUICK_ENV: "1"} if quick else {})}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, name],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        end_group(proc)
        stdout, _ = proc.communicate()
        lines = result_lines(stdout)
        return lines + [f"{name}: did not finish within {limit_s:.0f} s ratio=n/a"], time.perf_counter() - start
    finally:
        end_group(proc)
    wall = time.perf_counter() - start
    lines = result_lines(stdout)
    if proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no error output"])[-1]
        lines.append(f"{name}: failed (exit {proc.returncode}: {tail}) ratio=n/a")
    elif not lines:
        lines.append(f"{name}: printed no result line ratio=n/a")
    return lines, wall


def end_group(proc: subprocess.Popen) -> None:
    """End what is left of a benchmark's process group (its trainers too), by the group's id."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def result_lines(stdout: str) -> list[str]:
    """The lines of a benchmark's output that carry a ratio (the rest is its own chatter)."""
    return [line.rstrip() for line in stdout.splitlines() if "ratio=" in line]


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks (all by default) one after another; the whole suite writes bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (e.g. trainer tui_start); default all")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="the slow comparisons in one short round (CI-like use)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None, help="add the lines to bench/RESULTS.md (default: when the whole suite runs)")
    args = parser.parse_args(argv)
    names = discover(args.names)
    if args.list:
        print("\n".join(names))
        return 0
    total = time.perf_counter()
    load_before = os.getloadavg()
    failed = 0
    found: list[str] = []
    took: list[str] = []
    for name in names:
        lines, wall = run_one(name, LIMITS_S.get(name, DEFAULT_LIMIT_S), args.quick)
        for line in lines:
            print(line, flush=True)
        found += lines
        took.append(f"{name.removeprefix('bench_')} {wall:.0f} s")
        failed += any(map(is_failure, lines))
        print(f"  ({name} took {wall:.1f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - total
    print(f"  (suite took {seconds:.1f} s, {failed} failed)", file=sys.stderr)
    if args.write if args.write is not None else not args.names:
        write_section(found, took, seconds, load_before, os.getloadavg(), args.quick, args.names)
    return 1 if failed else 0


def write_section(lines: list[str], took: list[str], seconds: float, load_before: tuple[float, ...], load_after: tuple[float, ...], quick: bool, names: list[str] | None = None) -> None:
    """The run's section of bench/RESULTS.md: the command, machine, load, verdicts against the targets, the lines."""
    from bench.results import add_section, machine, verdicts

    body = "\n".join(
        [
            f"- **Machine:** {machine()}.",
            f"- **Load average** {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (1-min; the machine may be shared: "
            "wall times move with the neighbours, the CPU-second figures and the alternating ratios hold up better).",
            f"- **Took** {seconds / 60:.1f} min ({', '.join(took)}){'; --quick' if quick else ''}.",
            "",
            "Against the targets:",
            "",
            *[f"- {v}" for v in verdicts(lines)],
            "",
            "```",
            *lines,
            "```",
        ]
    )
    command = " ".join(["python -m bench", *(["--quick"] if quick else []), *(names or [])])
    add_section(f"`{command}`" + ("" if names or quick else " (make bench)"), body)


if __name__ == "__main__":
    sys.exit(main())
