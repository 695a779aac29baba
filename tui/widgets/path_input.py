"""An Input that completes file-system paths (→ or End accepts the suggestion)."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester

from tui.widgets.field_input import FieldInput


class PathSuggester(Suggester):
    """Suggests the first entry of the typed folder that starts with the typed name."""

    def __init__(self, base_dir: Path, folders_only: bool = False) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.base_dir = base_dir
        self.folders_only = folders_only

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
            return None
        for name in names:
            if name.startswith(prefix) and not name.startswith(".") and name != prefix:
                return (head + os.sep if head or value.startswith(os.sep) else "") + name
        return None


class PathInput(FieldInput):
    """A path field with completion relative to ``base_dir``."""

    def __init__(self, base_dir: Path, folders_only: bool = False, **kwargs: object) -> None:
        super().__init__(suggester=PathSuggester(base_dir, folders_only), **kwargs)
