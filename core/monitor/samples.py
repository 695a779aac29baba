"""The sample images of a run, indexed by step and prompt."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STEP = re.compile(r"(?:^|[^a-z])(?:step|s|e)[-_]?(\d+)", re.IGNORECASE)
_PROMPT = re.compile(r"(?:prompt|p)[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    """One sample image the trainer wrote: its file (relative to the run folder when it came from
    metrics.jsonl), step and prompt; ``mtime`` when it was found in ``samples/``."""

    path: Path
    step: int
    prompt_index: int
    prompt: str = ""
    mtime: float = 0.0

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        """The sample a metrics.jsonl ``sample`` line names (missing fields read as step 0, prompt 0, no path)."""
        return cls(Path(str(record.get("path") or "")), int(record.get("step") or 0), int(record.get("prompt_index") or 0), str(record.get("prompt") or ""))


def parse_name(name: str) -> tuple[int, int] | None:
    """``(step, prompt_index)`` from a file name such as ``step-000100_p0.png``; None when unnamed so."""
    stem = name.rsplit(".", 1)[0]
    step = _STEP.search(stem)
    if step is None:
        return None
    prompt = _PROMPT.search(stem[step.end() :])
    return int(step.group(1)), int(prompt.group(1)) if prompt else 0


class SampleIndex:
    """Finds new PNGs in ``samples/`` (finished files only: temp names are skipped)."""

    def __init__(self, samples_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(samples_dir)
        self.samples: dict[Path, Sample] = {}

    def poll(self) -> list[Sample]:
        """Samples that appeared since the last poll, by step then prompt."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return []
        new = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or ".tmp" in name or not name.lower().endswith(".png"):
                continue
            path = Path(entry.path)
            if path in self.samples:
                continue
            parsed = parse_name(name)
            if parsed is None:
                continue
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            sample = Sample(path, parsed[0], parsed[1], mtime=mtime)
            self.samples[path] = sample
            new.append(sample)
        return sorted(new, key=lambda s: (s.step, s.prompt_index))

    def latest(self) -> Sample | None:
        """The newest sample (highest step, then prompt index)."""
        return max(self.samples.values(), key=lambda s: (s.step, s.prompt_index, s.mtime), default=None)

    def by_prompt(self) -> dict[int, list[Sample]]:
        """Each prompt's samples, oldest step first."""
        groups: dict[int, list[Sample]] = {}
        for sample in sorted(self.samples.values(), key=lambda s: (s.step, s.mtime)):
            groups.setdefault(sample.prompt_index, []).append(sample)
        return groups
