"""Defensive readers of the files one process of a run writes and another reads.

Every reader here survives any bytes: a file that is missing, half-written, not UTF-8, not
JSON or JSON of the wrong shape is treated as missing, and the readers that can say so return
one sentence naming the file. Values taken out of such files go through ``number``/``integer``
so a wrongly typed field never raises.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

#: Bytes read from the end of metrics.jsonl for the newest records.
TAIL_BYTES = 65536


def load_json(path: str | os.PathLike[str]) -> tuple[Any, str | None]:
    """``(value, None)``; ``(None, None)`` when the file is missing; ``(None, why)`` when it is damaged."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    if not raw.strip():
        return None, "is empty (half-written or truncated)"
    try:
        return json.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "is not valid JSON (half-written or damaged)"


def load_json_object(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """A JSON object file as a dict ({} when missing or damaged) and, when damaged, a sentence naming it."""
    value, why = load_json(path)
    if why is None and value is not None and not isinstance(value, dict):
        why = "does not hold a JSON object"
    if why is not None:
        return {}, f"{path} {why}"
    return (value if isinstance(value, dict) else {}), None


def number(value: Any, default: float | None = None) -> float | None:
    """A finite float from a field of a file another process wrote, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    value = float(value)
    return value if math.isfinite(value) else default


def integer(value: Any, default: int = 0) -> int:
    """An int from such a field (floats truncated), else ``default``."""
    found = number(value)
    return int(found) if found is not None and abs(found) < 2**62 else default


def records(raw: bytes) -> list[dict[str, Any]]:
    """The JSON-object lines of a block of metrics.jsonl (damaged lines skipped)."""
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


#: How far back from the end of metrics.jsonl the readers look past damaged bytes for the newest records.
JUNK_BYTES = 16 * 1024 * 1024


def tail_records(path: str | os.PathLike[str], tail_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The complete JSON-object lines in the last ``tail_bytes`` of a JSON-lines file, in file order.

    When that tail holds no record at all (junk appended to the file, a long damaged line) the
    window doubles until it does, up to ``JUNK_BYTES``: the newest records before the junk still count.
    """
    window = tail_bytes
    while True:
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                start = max(0, size - window)
                handle.seek(start)
                raw = handle.read()
        except OSError:
            return []
        if start > 0:
            raw = raw[raw.find(b"\n") + 1 :] if b"\n" in raw else b""
        found = records(raw)
        if found or start == 0 or window >= JUNK_BYTES:
            return found
        window = min(2 * window, JUNK_BYTES)


def current_attempt(found: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Split metrics records at the newest ``attempt`` line: ``(attempt line or None, records after it)``."""
    for index in range(len(found) - 1, -1, -1):
        if found[index].get("type") == "attempt":
            return found[index], found[index + 1 :]
    return None, found


def last_step(found: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest step line of the latest attempt; at the start of a resumed attempt (no step yet) a
    step record of the resume point, with the loss of that step when the records hold it."""
    attempt, after = current_attempt(found)
    for record in reversed(after):
        if record.get("type") == "step" and number(record.get("step")) is not None:
            return record
    if attempt is None:
        return None
    resume = integer(attempt.get("resume_step"))
    before = found[: len(found) - len(after) - 1]
    for record in reversed(before):
        if record.get("type") == "step" and integer(record.get("step"), -1) == resume:
            return record
    return {"type": "step", "step": resume}


#: Bytes read first from the end of metrics.jsonl when only the newest step line is wanted.
STEP_PROBE_BYTES = 4096


def newest_step(path: str | os.PathLike[str], tail_bytes: int = TAIL_BYTES) -> dict[str, Any] | None:
    """``last_step`` of the file's last ``tail_bytes``, parsing only the last few lines in the usual case.

    The lines of the last ``STEP_PROBE_BYTES`` are read newest first; a step line met before any
    ``attempt`` line is the answer. Otherwise (a resumed attempt without a step yet, no step in the
    probe) the whole tail is read as ``last_step`` does, so the result is always the same.
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - min(STEP_PROBE_BYTES, tail_bytes))
            handle.seek(start)
            raw = handle.read()
    except OSError:
        return None
    lines = raw.split(b"\n")
    for line in reversed(lines[1:] if start > 0 else lines):
        found = records(line)
        if not found:
            continue
        kind = found[0].get("type")
        if kind == "step" and number(found[0].get("step")) is not None:
            return found[0]
        if kind == "attempt":
            break
    else:
        if start == 0:
            return None
    return last_step(tail_records(path, tail_bytes))


def mtime(path: Path, default: float | None = None) -> float:
    """The modification time of ``path``; ``default`` (now when None) when it cannot be read."""
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time() if default is None else default


def plan_row(plan_json: Path) -> dict[str, Any]:
    """plan.json's schedule row of the run (``run``: the row for the processes it was launched with;
    in older files the row for its GPU count); {} when unknown or damaged."""
    plan, _ = load_json_object(plan_json)
    if isinstance(plan.get("run"), dict):
        return plan["run"]
    count = integer((plan.get("gpu") if isinstance(plan.get("gpu"), dict) else {}).get("count"), 1)
    rows = plan.get("schedule") if isinstance(plan.get("schedule"), list) else []
    return next((r for r in rows if isinstance(r, dict) and integer(r.get("gpus")) == count), {})


def plan_total(plan_json: Path) -> int:
    """plan.json's total steps for the GPU count it was made for (0 when unknown or damaged)."""
    return integer(plan_row(plan_json).get("total_steps"))


#: The line the supervisor writes into train.log at the start of each attempt, ending in the command.
_ATTEMPT_LINE = re.compile(rb"^\[sdtui\] attempt \d+ at [^\n]*? in [^\n]*?: (.+)$", re.MULTILINE)


def last_command(log: Path, tail_bytes: int = 1024 * 1024) -> str:
    """The launch command of the newest attempt as train.log records it ("" when not found)."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - tail_bytes))
            raw = handle.read()
    except OSError:
        return ""
    found = _ATTEMPT_LINE.findall(raw)
    return found[-1].decode("utf-8", "replace").strip() if found else ""
