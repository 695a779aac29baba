"""The captioning process, seen from outside (torch-free): what the wizard and the demo start, and
how they read its progress.

``python -m core.captions REQUEST_JSON`` runs :func:`core.captions.job.caption_dataset` with the
captioner's runtime and prints one JSON event a line (``start``, ``loading``, ``note``, ``caption``,
``done``: the events ``sdtui caption --json`` prints); a user error is its last stderr line
with exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from core.captions.captioners import TagOptions
from core.captions.job import DEFAULT_BATCH
from core.errors import JobFailed, UserError


@dataclass(frozen=True)
class CaptionRequest:
    """What to caption and with what (``None``: the captioner's own model or prompt)."""

    dataset: str
    captioner: str
    model: str | None = None
    prompt: str | None = None
    batch_size: int = DEFAULT_BATCH
    #: The tagger's general and character thresholds and excluded tags (wd14 only).
    threshold: float = TagOptions.threshold
    character_threshold: float = TagOptions.character_threshold
    exclude: tuple[str, ...] = ()

    def tags(self) -> TagOptions:
        """The tagger's options of the request."""
        return TagOptions(self.threshold, self.character_threshold, tuple(self.exclude))

    def command(self) -> list[str]:
        """The captioning process's argument list."""
        return [sys.executable, "-m", "core.captions", json.dumps(asdict(self))]


class CaptionProcess:
    """A running captioning process: its events as they come, then :meth:`finish`; :meth:`stop` ends it early.

    Its stderr goes to a temporary file, so a chatty library can never block it on a full pipe.
    """

    def __init__(self, request: CaptionRequest, cwd: str | None = None) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # noqa: SIM115 - open for the process's life, closed in finish()
        self.popen = subprocess.Popen(request.command(), stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=cwd)

    def events(self) -> Iterator[dict[str, Any]]:
        """The JSON events of the process's stdout as they come (any other line is skipped)."""
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("type"), str):
                yield event

    def stop(self) -> None:
        """End the process (the captions made so far stay in the layer)."""
        if self.popen.poll() is None:
            self.popen.terminate()

    def finish(self) -> None:
        """Wait for the process; UserError with its sentence on exit 2, JobFailed on any other failure."""
        code = self.popen.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read()
        self._stderr.close()
        if code == 0:
            return
        last = (stderr.strip().splitlines() or [f"exit code {code}"])[-1].removeprefix("sdtui: ")
        if code == 2:
            raise UserError(last)
        raise JobFailed(f"the captioner stopped ({last})")
