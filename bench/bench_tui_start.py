"""Start-up: ``sdtui --help`` and the TUI's first frame, timed from spawn as a user sees them.

* ``sdtui --help`` against what the diffusers example scripts do before they can print their
  help (``import torch, diffusers, transformers, accelerate, peft``): ratio = theirs / ours.
* The home screen's first frame: the real ``sdtui`` on a 120×40 pseudo-terminal, from spawn
  until the alternate screen shows the home screen's titles; ratio = target 0.5 s / ours.

Both print ``python -c pass`` beside them (the floor any Python program pays on this machine);
the first frame also prints a bare Textual app's (the floor any Textual app pays).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import with_bytecode
from bench.terminal import PtyProcess, first_frame_marker

REPO = Path(__file__).resolve().parents[1]
FIRST_FRAME_TARGET_S = 0.5
REFERENCE_IMPORTS = "import torch, diffusers, transformers, accelerate, peft"
#: The floor for a first frame: a bare Textual app with a header, the same two titles and a footer.
MINIMAL_TEXTUAL_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static
class Minimal(App):
    def compose(self):
        yield Header()
        yield Static("GPUs")
        yield Static("Runs")
        yield Footer()
Minimal().run()
"""


def sdtui_argv() -> list[str]:
    """The installed ``sdtui`` console script beside this Python, else ``python -m cli``."""
    script = Path(sys.executable).with_name("sdtui")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def wall_times(argv: Sequence[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv`` (output discarded); a failing run raises."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(list(argv), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
        times.append(time.perf_counter() - start)
    return times


def first_frame_times(runs: int, env: dict[str, str], argv: Sequence[str] | None = None, timeout_s: float = 30.0) -> list[tuple[float, float]]:
    """(wall s, CPU s) from spawning ``sdtui`` (or ``argv``) on a pty to its first painted home screen, ``runs`` times.

    The CPU seconds (user + system of the process when the frame arrived) barely move when
    other work shares the machine; the wall seconds are what a user waits.
    """
    import psutil

    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as runs_dir:
            term = PtyProcess(list(argv) if argv else [*sdtui_argv(), "--runs-dir", runs_dir], env=env, cwd=str(REPO))
            try:
                seen = term.read_until(first_frame_marker, timeout_s)
                cpu = psutil.Process(term.proc.pid).cpu_times() if seen is not None else None
            finally:
                term.close()
        if seen is None or cpu is None:
            tail = term.output[-400:].decode("utf-8", "replace")
            raise RuntimeError(f"{(argv or ['sdtui'])[0]} drew no home screen within {timeout_s:.0f} s; last output: {tail!r}")
        times.append((seen, cpu.user + cpu.system))
    return times


def bench_env() -> dict[str, str]:
    """The environment of the timed commands: offline, the repo importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return with_bytecode(env)


def main(runs: int = 7) -> list[str]:
    """Time the floor, ``--help``, the reference imports and the first frame; one line each result."""
    env = bench_env()
    floor = statistics.median(wall_times([sys.executable, "-c", "pass"], runs, env))
    wall_times([*sdtui_argv(), "--help"], 1, env)
    help_s = statistics.median(wall_times([*sdtui_argv(), "--help"], runs, env))
    reference_s = statistics.median(wall_times([sys.executable, "-c", REFERENCE_IMPORTS], max(3, runs // 2), env))
    frames = first_frame_times(max(3, runs - 2), env)
    frame_s = statistics.median(f[0] for f in frames)
    frame_cpu = statistics.median(f[1] for f in frames)
    bare = first_frame_times(max(3, runs - 2), env, [sys.executable, "-c", MINIMAL_TEXTUAL_APP])
    textual_s, textual_cpu = statistics.median(f[0] for f in bare), statistics.median(f[1] for f in bare)
    verdict = "met" if frame_s < FIRST_FRAME_TARGET_S else f"missed by {frame_s - FIRST_FRAME_TARGET_S:.2f} s"
    return [
        f"cli_help: sdtui --help {help_s:.3f} s vs diffusers-example imports {reference_s:.3f} s (python -c pass {floor:.3f} s, median of {runs}) ratio={reference_s / help_s:.2f}",
        f"tui_first_frame: {frame_s:.3f} s, CPU {frame_cpu:.3f} s (n={len(frames)}; "
        f"bare Textual app {textual_s:.3f} s, CPU {textual_cpu:.3f} s; python -c pass {floor:.3f} s; target {FIRST_FRAME_TARGET_S} s {verdict}) ratio={FIRST_FRAME_TARGET_S / frame_s:.2f}",
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
