"""Shared fixtures: generated kohya datasets and the tiny SD-shaped models."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test (and the processes it starts) gets its own empty XDG data, cache and state
    folders, so no test reads or writes the user's ~; SDTUI_RUNS_DIR is unset."""
    root = tmp_path_factory.mktemp("xdg")
    for kind in ("DATA", "CACHE", "STATE"):
        monkeypatch.setenv(f"XDG_{kind}_HOME", str(root / kind.lower()))
    monkeypatch.delenv("SDTUI_RUNS_DIR", raising=False)
    return root


def write_image(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30), fmt: str | None = None) -> Path:
    """Write a small solid image with a square on it (format from the suffix unless given)."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(255 - color[0], 255 - color[1], 255 - color[2]))
    image.save(path, format=fmt)
    return path


def make_kohya(
    root: Path,
    subsets: Sequence[tuple[int, str, int]] = ((10, "sks dog", 4),),
    size: tuple[int, int] = (64, 64),
    captions: bool = True,
) -> Path:
    """A kohya-style dataset: one ``<repeats>_<token>`` folder per (repeats, token, images)."""
    root.mkdir(parents=True, exist_ok=True)
    for s, (repeats, token, count) in enumerate(subsets):
        folder = root / f"{repeats}_{token}"
        for i in range(count):
            image = write_image(folder / f"img{i:03d}.png", size, ((40 * i + 60 * s) % 256, 120, 200))
            if captions:
                image.with_suffix(".txt").write_text(f"{token}, picture {i}")
    return root


@pytest.fixture
def kohya_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``kohya_dataset(subsets=..., size=..., captions=...)`` under a temp folder."""

    def factory(subsets: Sequence[tuple[int, str, int]] = ((10, "sks dog", 4),), size: tuple[int, int] = (64, 64), captions: bool = True, name: str = "data") -> Path:
        return make_kohya(tmp_path / name, subsets, size, captions)

    return factory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: the tiny diffusers model of a family ("sd1" or "sdxl"), built once per session."""
    built: dict[str, Path] = {}

    def factory(family: str = "sd1") -> Path:
        if family not in built:
            from core.train.model.tiny import build_tiny

            built[family] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}") / "model")
        return built[family]

    return factory


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Florence-2, BLIP, Qwen2.5-VL and Qwen3-VL captioners (random weights, processors built locally) and the tiny WD14 tagger."""
    from core.captions.tiny import BUILDERS

    root = tmp_path_factory.mktemp("captioners")
    return {name: build(root / name) for name, build in BUILDERS.items()}
