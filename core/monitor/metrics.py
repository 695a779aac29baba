"""Incremental reading of metrics.jsonl, and the series the dashboard charts.

``MetricsTail`` keeps a byte offset: each poll reads only what was appended since, keeps a
partial last line until it is completed, and starts over (``reset`` set) when the file was
replaced or truncated. Complete lines are decoded with msgspec, a chunk at a time;
``MetricsSeries`` decodes only the fields it charts, which opens a million-line file in
about a second (bench/bench_metrics.py).

Each attempt of a run (the first start and every resume) begins with an ``attempt`` line
holding its ``resume_step``. ``MetricsSeries`` keeps only the latest attempt's view: at an
``attempt`` line it drops what an earlier attempt recorded past the resume point (steps,
samples, checkpoints), so every step appears once although the file is only appended to.
The cut is a binary search on the step series, so it costs nothing per poll.
"""

from __future__ import annotations

import bisect
import math
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

#: Bytes read per chunk: bounds the memory of the first poll of a huge file.
CHUNK_BYTES = 4 * 1024 * 1024


class Line(msgspec.Struct, gc=False):
    """The fields of a metrics line that the series use (other keys are skipped while decoding).

    ``gc=False``: a Line holds only strings and numbers, so the garbage collector need not track
    the million of them a long run has.
    """

    type: str = ""
    time: float | None = None
    step: int | float | None = None
    epoch: int | float | None = None
    loss: float | None = None
    lr: float | None = None
    step_size: float | None = None
    images_per_s: float | None = None
    step_time_s: float | None = None
    prompt_index: int | None = None
    prompt: str | None = None
    path: str | None = None
    level: str | None = None
    message: str | None = None
    resume_step: int | float | None = None
    mem: msgspec.Raw = msgspec.Raw()

    def to_dict(self) -> dict[str, Any]:
        """The line as a dict (fields that were absent left out, ``mem`` decoded)."""
        out = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None and k != "mem"}
        if len(self.mem):
            out["mem"] = msgspec.json.decode(self.mem)
        return out


_DICTS = msgspec.json.Decoder()
_LINES = msgspec.json.Decoder(Line)


class MetricsTail:
    """Follows a JSON-lines file; ``poll()`` returns the records appended since the last poll."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.reset = False
        self.skipped = 0
        self._inode: tuple[int, int] | None = None
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """New complete records; ``self.reset`` tells whether the file started over in this poll."""
        return [record for chunk in self.chunks() for record in chunk]

    def chunks(self) -> Iterator[list[dict[str, Any]]]:
        """Like :meth:`poll`, chunk by chunk, so a huge file is never held in memory at once."""
        return self._chunks(_DICTS.decode_lines, _DICTS.decode)

    def lines(self) -> Iterator[list[Line]]:
        """New records as :class:`Line` structs (only the charted fields), chunk by chunk."""
        return self._chunks(_LINES.decode_lines, _LINES.decode)

    def _chunks(self, decode_lines: Callable[[bytes], list[Any]], decode: Callable[[bytes], Any]) -> Iterator[list[Any]]:
        self.reset = False
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - opened before the `with` so that only a missing file is caught
        except FileNotFoundError:
            if self.offset or self._partial:
                self._restart()
            return
        with handle:
            stat = os.fstat(handle.fileno())
            identity = (stat.st_dev, stat.st_ino)
            if self._inode is not None and (identity != self._inode or stat.st_size < self.offset):
                self._restart()
            self._inode = identity
            handle.seek(self.offset)
            while True:
                data = handle.read(CHUNK_BYTES)
                if not data:
                    return
                self.offset += len(data)
                data = self._partial + data
                end = data.rfind(b"\n")
                if end < 0:
                    self._partial = data
                    continue
                self._partial = data[end + 1 :]
                records = self._parse(data[: end + 1], decode_lines, decode)
                if records:
                    yield records

    def _restart(self) -> None:
        self.offset = 0
        self._partial = b""
        self._inode = None
        self.reset = True

    def _parse(self, block: bytes, decode_lines: Callable[[bytes], list[Any]], decode: Callable[[bytes], Any]) -> list[Any]:
        """Decode complete lines; a damaged line (a crashed writer) is skipped and counted."""
        try:
            parsed = decode_lines(block)
        except (msgspec.DecodeError, msgspec.ValidationError):
            parsed = []
            for line in block.split(b"\n"):
                if line.strip():
                    try:
                        parsed.append(decode(line))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        self.skipped += 1
        records = [r for r in parsed if isinstance(r, (dict, Line))]
        self.skipped += len(parsed) - len(records)
        return records


class MetricsSeries:
    """The chartable series of a run, fed from a MetricsTail: step, loss, lr, images/s, the validation
    loss (``validation_steps`` / ``validation_loss``), samples, checkpoints."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget everything (the file was replaced)."""
        self.steps = array("d")
        self.loss = array("d")
        self.lr = array("d")
        self.images_per_s = array("d")
        self.validation_steps = array("d")
        self.validation_loss = array("d")
        self.last_step: dict[str, Any] | None = None
        self.samples: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        #: Counts the roll-backs (resumed attempts), so a reader of ``samples`` knows to start over.
        self.rollbacks = 0

    def add(self, records: list[dict[str, Any]] | list[Line]) -> None:
        """Take new records (dicts or Lines) in file order; an ``attempt`` line rolls back to its resume step."""
        lines = [r if isinstance(r, Line) else _line(r) for r in records]
        start = 0
        for index, line in enumerate(lines):
            if line.type == "attempt":
                self._add(records[start:index], lines[start:index])
                self.roll_back(line.resume_step or 0)
                start = index + 1
        self._add(records[start:], lines[start:])

    def roll_back(self, step: float) -> None:
        """Forget the steps, samples and checkpoints past ``step`` (an attempt resumed from there)."""
        self.rollbacks += 1
        cut = bisect.bisect_right(self.steps, step)
        if cut < len(self.steps):
            for series in (self.steps, self.loss, self.lr, self.images_per_s):
                del series[cut:]
            self.last_step = {"type": "step", "step": int(step), "loss": self.loss[-1] if cut else None} if cut else None
        cut = bisect.bisect_right(self.validation_steps, step)
        del self.validation_steps[cut:], self.validation_loss[cut:]
        for kept in (self.samples, self.checkpoints):
            kept[:] = [r for r in kept if not (isinstance(r.get("step"), (int, float)) and r["step"] > step)]

    def _add(self, records: list[dict[str, Any]] | list[Line], lines: list[Line]) -> None:
        if not lines:
            return
        step_lines = [r for r in lines if r.type == "step"]
        if step_lines:
            nan = math.nan
            self.steps.extend([nan if r.step is None else float(r.step) for r in step_lines])
            self.loss.extend([nan if r.loss is None else r.loss for r in step_lines])
            self.lr.extend([nan if r.lr is None else r.lr for r in step_lines])
            self.images_per_s.extend([nan if r.images_per_s is None else r.images_per_s for r in step_lines])
            last = step_lines[-1]
            index = len(records) - 1 - lines[::-1].index(last)
            self.last_step = records[index] if isinstance(records[index], dict) else last.to_dict()
        if len(step_lines) < len(lines):
            for line in lines:
                if line.type == "validation" and line.step is not None and line.loss is not None:
                    self.validation_steps.append(float(line.step))
                    self.validation_loss.append(line.loss)
            kinds = {"sample": self.samples, "checkpoint": self.checkpoints, "event": self.events}
            for record, line in zip(records, lines):
                if line.type in kinds:
                    kinds[line.type].append(record if isinstance(record, dict) else line.to_dict())
            del self.events[:-500]

    def update(self, tail: MetricsTail) -> int:
        """Poll ``tail`` into the series (decoding only the charted fields); return the records added.

        A replaced or truncated file clears the series first.
        """
        count = 0
        first = True
        for chunk in tail.lines():
            if first and tail.reset:
                self.clear()
            first = False
            self.add(chunk)
            count += len(chunk)
        if first and tail.reset:
            self.clear()
        return count


def _line(record: dict[str, Any]) -> Line:
    """A dict record as a Line (wrongly typed chart fields become absent)."""
    fields = {}
    for name in Line.__struct_fields__:
        value = record.get(name)
        if name in ("type", "prompt", "path", "level", "message"):
            ok = isinstance(value, str)
        elif name == "prompt_index":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            fields[name] = value
    return Line(**fields)
