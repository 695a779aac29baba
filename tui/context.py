"""What every screen needs to know: the runs folder, the GPU spec, the clock. No Textual here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AppContext:
    """Settings of one sdtui session, shared by the screens."""

    runs_dir: Path
    runs_reason: str = ""
    gpu_spec: str | None = None
    workdir: Path | None = None
    demo: Any = None
    #: Sample images drawn as half-blocks by sdtui (tmux, SSH without graphics), not through textual-image.
    half_block_images: bool = False
    clock: Callable[[], float] = time.time
    #: The wizard the user left unfinished (offered again by New run), or None.
    draft: Any = None
    #: The run launched last from this session: home selects it once it is listed.
    launched: str | None = None
    _gpus: Any = field(default=None, repr=False)

    def gpus(self, refresh: bool = False) -> Any:
        """The GpuSet (probed or simulated); cached until ``refresh``."""
        if self._gpus is None or refresh:
            from core.gpu import resolve

            self._gpus = resolve(self.gpu_spec)
        return self._gpus
