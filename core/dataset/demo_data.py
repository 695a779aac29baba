"""The demo dataset: simple coloured shapes with captions in a kohya folder (Pillow only, no torch)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 70),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
SUBSET = "10_shapes"
#: The demo's images of this shape get no caption file, so the demo has images to caption.
UNCAPTIONED = "triangle"
SEED = 7


def _draw(shape: str, colour: tuple[int, int, int], size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    background = tuple(rng.randint(225, 250) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    side = int(min(width, height) * rng.uniform(0.5, 0.7))
    left = rng.randint(2, width - side - 2)
    top = rng.randint(2, height - side - 2)
    box = (left, top, left + side, top + side)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left + side // 2, top), (left, top + side), (left + side, top + side)], fill=colour)
    return image


def make_demo_dataset(out_dir: str | Path) -> Path:
    """Write 12 shape images (64–96 px, a few non-square) into ``out_dir/10_shapes/``, with ``.txt``
    captions except the :data:`UNCAPTIONED` ones (for the demo's caption step).

    Deterministic: the same files every time. Returns ``out_dir``. The files are the user's
    dataset, read by no other process while they are written: plain writes, so they get the
    permissions of the user's umask like any file they would copy there.
    """
    root = Path(out_dir)
    folder = root / SUBSET
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    sizes = ((64, 64), (96, 96), (96, 64), (64, 96))
    index = 0
    for shape in SHAPES:
        for name, colour in COLOURS.items():
            size = sizes[index % len(sizes)]
            image = _draw(shape, colour, size, rng)
            stem = f"{index:02d}_{name}_{shape}"
            buffer = _png_bytes(image)
            (folder / f"{stem}.png").write_bytes(buffer)
            if shape != UNCAPTIONED:
                (folder / f"{stem}.txt").write_text(f"a {name} {shape}, simple shape, white background\n", encoding="utf-8")
            index += 1
    return root


def _png_bytes(image: Image.Image) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
