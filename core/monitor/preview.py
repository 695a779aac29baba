"""A first look at a long run: step lines sampled across metrics.jsonl by byte offset.

Reading a million-line file takes about a second; sampling ``points`` lines at evenly spaced
offsets (a seek and a 4 kB read each) takes milliseconds and already shows the whole run's
loss curve (of the latest attempt: a resumed attempt's lines replace an earlier one's past its
resume step), so a screen can draw a thinned chart at once and fill it in when the full read is
done. The last complete step line is always included (the newest values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import msgspec

from core.monitor.metrics import Line

#: Below this size the full read is as fast as a preview.
PREVIEW_MIN_BYTES = 8 * 1024 * 1024
BLOCK = 4096
TAIL_BYTES = 64 * 1024

_DECODE = msgspec.json.Decoder(Line)


def _first_step(block: bytes, skip_partial: bool) -> Line | None:
    """The first complete step line of ``block`` (after its first newline when ``skip_partial``)."""
    lines = block.split(b"\n")
    candidates = lines[1:-1] if skip_partial else lines[:-1]
    for raw in candidates:
        try:
            line = _DECODE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if line.type == "step" and line.step is not None:
            return line
    return None


def sampled_steps(path: str | os.PathLike[str], points: int = 2000) -> list[Line] | None:
    """About ``points`` step lines spread over the file in file order, or None when it is small or missing."""
    try:
        handle = open(Path(path), "rb")  # noqa: SIM115 - opened before the `with` so that only a missing file is caught
    except FileNotFoundError:
        return None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size < PREVIEW_MIN_BYTES:
            return None
        found: list[Line] = []
        previous = 0
        for k in range(points):
            offset = k * size // points
            handle.seek(offset)
            line = _first_step(handle.read(BLOCK), skip_partial=offset > 0)
            if line is None:
                continue
            if found and float(line.step) <= float(found[-1].step):  # type: ignore[arg-type]
                _roll_back(found, _resume_step(handle, previous, offset + BLOCK), float(line.step))  # type: ignore[arg-type]
            found.append(line)
            previous = offset
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read().split(b"\n")
    for raw in reversed(tail[1:-1] if size > TAIL_BYTES else tail[:-1]):
        try:
            line = _DECODE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if line.type == "step" and line.step is not None:
            if found and float(line.step) < float(found[-1].step):  # type: ignore[arg-type]
                _roll_back(found, None, float(line.step))  # type: ignore[arg-type]
            if not found or float(line.step) != float(found[-1].step):  # type: ignore[arg-type]
                found.append(line)
            break
    return found


def _resume_step(handle: BinaryIO, start: int, end: int) -> float | None:
    """The lowest ``resume_step`` of the attempt lines between two byte offsets (None when none is there)."""
    handle.seek(start)
    lowest = None
    for raw in handle.read(max(0, end - start)).split(b"\n"):
        if b'"attempt"' not in raw:
            continue
        try:
            line = _DECODE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if line.type == "attempt" and line.resume_step is not None:
            lowest = float(line.resume_step) if lowest is None else min(lowest, float(line.resume_step))
    return lowest


def _roll_back(found: list[Line], resume_step: float | None, step: float) -> None:
    """Drop what an earlier attempt wrote past ``resume_step`` (as the full reader does), or from ``step``
    on when the attempt line was not found."""
    limit = resume_step if resume_step is not None else step - 1
    while found and float(found[-1].step) > limit:  # type: ignore[arg-type]
        found.pop()
