"""A first look at a long run: step lines sampled across metrics.jsonl by byte offset.

Reading a million-line file takes about a second; sampling ``points`` lines at evenly spaced
offsets (a seek and a 4 kB read each) takes milliseconds and already shows the whole run's
loss curve, so a screen can draw a thinned chart at once and fill it in when the full read is
done. The last complete step line is always included (the newest values).
"""

from __future__ import annotations

import os
from pathlib import Path

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
        handle = open(Path(path), "rb")
    except FileNotFoundError:
        return None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size < PREVIEW_MIN_BYTES:
            return None
        found: list[Line] = []
        last_step = None
        for k in range(points):
            offset = k * size // points
            handle.seek(offset)
            line = _first_step(handle.read(BLOCK), skip_partial=offset > 0)
            if line is not None and (last_step is None or float(line.step) > last_step):  # type: ignore[arg-type]
                found.append(line)
                last_step = float(line.step)  # type: ignore[arg-type]
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read().split(b"\n")
    for raw in reversed(tail[1:-1] if size > TAIL_BYTES else tail[:-1]):
        try:
            line = _DECODE.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if line.type == "step" and line.step is not None:
            if last_step is None or float(line.step) > last_step:
                found.append(line)
            break
    return found
