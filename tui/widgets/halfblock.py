"""An image drawn with half-block characters (``▀``: the upper pixel as the colour, the lower as the
background), two pixel rows per terminal row. Works in any terminal, tmux and SSH included.

textual-image has such a renderer too, but importing any of it queries the terminal (Sixel, kitty
graphics, cell size): done once Textual owns the terminal, the answer arrives as keystrokes (``[?1;2c``,
whose ``[`` stepped the sample history back) and the queries wait for their timeouts (2.6 s in tmux).
"""

from __future__ import annotations

from pathlib import Path

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget


class HalfBlockImage(Widget):
    """Shows the image file at ``image`` (a path) scaled to fit, keeping its aspect ratio."""

    DEFAULT_CSS = "HalfBlockImage { width: auto; height: auto; }"

    def __init__(self, image: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._path: str | None = None
        self._pixels: object = None
        self._strips: list[Strip] = []
        self._strips_size: Size | None = None
        self.image = image

    @property
    def image(self) -> str | None:
        """The path of the image shown (None: nothing)."""
        return self._path

    @image.setter
    def image(self, path: str | None) -> None:
        from PIL import Image

        self._path = path
        self._pixels = None
        if path:
            try:
                with Image.open(Path(path)) as opened:
                    self._pixels = opened.convert("RGB")
            except (OSError, ValueError):
                self._pixels = None
        self._strips_size = None
        self.refresh(layout=True)

    def _aspect(self) -> float:
        if self._pixels is None:
            return 1.0
        width, height = self._pixels.size
        return width / max(1, height)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        rows = container.height or viewport.height
        return max(1, min(container.width, round(rows * 2 * self._aspect()))) if self._pixels is not None else 0

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, round(width / self._aspect() / 2)) if self._pixels is not None else 0

    def render_line(self, y: int) -> Strip:
        size = self.content_size
        if self._pixels is None or size.width <= 0 or size.height <= 0:
            return Strip.blank(size.width)
        if self._strips_size != size:
            self._strips = self._draw(size)
            self._strips_size = size
        return self._strips[y] if y < len(self._strips) else Strip.blank(size.width)

    def _draw(self, size: Size) -> list[Strip]:
        from PIL import Image

        width = max(1, min(size.width, round(size.height * 2 * self._aspect())))
        height = max(2, min(size.height * 2, round(width / self._aspect())))
        pixels = self._pixels.resize((width, height - height % 2 or 2), Image.Resampling.BOX).load()
        strips = []
        for row in range(0, height - height % 2, 2):
            segments = [Segment("▀", Style(color=f"rgb{pixels[x, row]}", bgcolor=f"rgb{pixels[x, row + 1]}")) for x in range(width)]
            strips.append(Strip(segments, width).extend_cell_length(size.width))
        return strips
