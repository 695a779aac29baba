"""An Input that completes file-system paths, and names it is given (→ or End accepts the suggestion)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from textual.suggester import Suggester

from tui.widgets.field_input import FieldInput


class PathSuggester(Suggester):
    """Suggests the first entry of the typed folder that starts with the typed name, else the
    first of ``names`` (e.g. model names) that does when no folder was typed."""

    def __init__(self, base_dir: Path, folders_only: bool = False, names: Sequence[str] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.base_dir = base_dir
        self.folders_only = folders_only
        self.names = tuple(names)

    async def get_suggestion(self, value: str) -> str | None:
        if not value or value.endswith(os.sep + os.sep):
            return None
        head, _, prefix = value.rpartition(os.sep)
        folder = Path(os.path.expanduser(head + os.sep if head or value.startswith(os.sep) else "."))
        if not folder.is_absolute():
            folder = self.base_dir / folder
        try:
            names = sorted(e.name + (os.sep if e.is_dir() else "") for e in os.scandir(folder) if self.folders_only is False or e.is_dir())
        except OSError:
            names = []
        for name in names:
            if name.startswith(prefix) and not name.startswith(".") and name != prefix:
                return (head + os.sep if head or value.startswith(os.sep) else "") + name
        if os.sep not in value:
            return next((name for name in self.names if name.startswith(value) and name != value), None)
        return None


class PathInput(FieldInput):
    """A path field with completion relative to ``base_dir`` (and of ``names`` where no folder is typed)."""

    def __init__(self, base_dir: Path, folders_only: bool = False, names: Sequence[str] = (), **kwargs: object) -> None:
        super().__init__(suggester=PathSuggester(base_dir, folders_only, names), **kwargs)
