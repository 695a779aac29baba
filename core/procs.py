"""Processes of a run: identity by pid *and* create time, the process tree, and killing it.

A pid alone is not an identity: after a reboot or a long time another program may get the
same number. Every pid sdtui records comes with its psutil create time, and a recorded
process counts as alive only when both match.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from typing import Any

import psutil

#: Create times are floats from /proc; allow for rounding in JSON.
_TIME_SLACK_S = 0.05


def describe(proc: psutil.Process, role: str) -> dict[str, Any]:
    """The record of one process: pid, create time and its role in the run."""
    return {"pid": proc.pid, "create_time": round(proc.create_time(), 3), "role": role}


def find(record: dict[str, Any]) -> psutil.Process | None:
    """The live process a record names, or None when it is gone or the pid was reused."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > _TIME_SLACK_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def alive(records: Iterable[dict[str, Any]]) -> list[psutil.Process]:
    """The recorded processes that are still running."""
    return [proc for proc in map(find, records) if proc is not None]


def tree(roots: Iterable[psutil.Process]) -> list[psutil.Process]:
    """``roots`` and all their descendants, each once."""
    seen: dict[int, psutil.Process] = {}
    for root in roots:
        seen.setdefault(root.pid, root)
        try:
            for child in root.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(seen.values())


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each process that still exists."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for the processes to end; return those still alive."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill_tree(records: Iterable[dict[str, Any]], term_grace_s: float = 10.0) -> list[int]:
    """SIGTERM then SIGKILL every recorded process and every descendant; return the pids that were alive.

    Torch's launcher starts each rank in its own session, so a process group signal would miss
    them: the tree is walked through psutil instead, and re-walked before the SIGKILL so that
    processes started in between are caught too.
    """
    procs = tree(alive(records))
    if not procs:
        return []
    pids = [p.pid for p in procs]
    signal_all(procs, signal.SIGTERM)
    left = wait_gone(procs, term_grace_s)
    if left:
        everything = tree(left)
        signal_all(everything, signal.SIGKILL)
        wait_gone(everything, 5.0)
    return pids


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
