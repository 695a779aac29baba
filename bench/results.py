"""``bench/RESULTS.md``: dated sections, newest first, with the machine they were measured on."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
HEADING = "# Benchmark results"
#: A line's verdict against its target: "target 1.5x missed by 0.26", "target <2.0% met", "(OVER the 2 s target)".
VERDICT = re.compile(r"target [^;()]*?(?:met|missed by [\d.]+(?: s| points)?)|(?:OVER|over) the [\d.]+ ?s target")


def machine() -> str:
    """CPU model, cores, memory, GPU (if any), the versions that decide the figures, and the commit."""
    from importlib.metadata import PackageNotFoundError, version

    import psutil

    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for name in ("torch", "diffusers", "transformers", "textual"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip() or "?"
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; {', '.join(versions)}; Python {platform.python_version()}; commit {commit}"


def verdicts(lines: list[str]) -> list[str]:
    """``label: verdict`` for each line that states one against its target."""
    found = []
    for line in lines:
        label = line.split(":", 1)[0]
        found += [f"{label}: {match.group(0)}" for match in VERDICT.finditer(line)]
    return found


def add_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Insert ``## <UTC date> <title>`` with ``body`` after the file's heading (newest first), atomically."""
    from core.atomic import write_atomic

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    before = path.read_text(encoding="utf-8") if path.is_file() else HEADING + "\n"
    head, _, rest = before.partition("\n")
    if not head.startswith("# "):
        head, rest = HEADING, before
    section = f"## {stamp}: {title}\n\n{body.strip()}\n"
    write_atomic(path, f"{head}\n\n{section}\n{rest.lstrip(chr(10))}")
