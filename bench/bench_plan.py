"""``sdtui plan`` on a generated 10,000-image kohya dataset, against the scan alone.

The scan (reading 10,000 image headers) is work any planner must do; what the planner adds on
top is bucketing, the schedule rows, the recipe picker and the estimates. The result line
prints both times with a warm header cache and ``ratio = scan_s / plan_s``: 1.0 would mean
planning costs nothing beyond the scan (the ratio cannot exceed 1; closer to 1 is better).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

IMAGES = 10_000
#: (width, height) shapes cycled through so the images land in several buckets.
SHAPES = ((96, 64), (64, 96), (80, 80), (112, 64), (64, 112), (88, 72))
SUBSETS = ((20, "sks dog"), (5, "sks cat"), (2, "style"), (1, "misc"))


def make_dataset(root: Path, images: int = IMAGES) -> Path:
    """A kohya folder of ``images`` small PNGs in four subsets, half of them captioned."""
    from PIL import Image

    for n in range(images):
        repeats, token = SUBSETS[n % len(SUBSETS)]
        folder = root / f"{repeats}_{token}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SHAPES[n % len(SHAPES)], ((n * 37) % 256, (n * 11) % 256, 90)).save(folder / f"{n:05d}.png", compress_level=1)
        if n % 2:
            (folder / f"{n:05d}.txt").write_text(f"{token}, picture {n}")
    return root


def _plan(data: Path) -> float:
    from cli.main import main as sdtui

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = sdtui(["--gpus", "2x4090", "plan", "--model", "sdxl", "--data", str(data), "--method", "lora", "--json"])
    if code != 0:
        raise RuntimeError(f"sdtui plan exited {code}")
    return time.perf_counter() - start


def _scan(data: Path) -> float:
    from core.dataset.scan import scan_dataset

    start = time.perf_counter()
    scan_dataset(data, resolution=1024)
    return time.perf_counter() - start


def main() -> list[str]:
    """Generate the dataset, warm the header cache, then time the scan and the plan (best of 3)."""
    with tempfile.TemporaryDirectory(prefix="sdtui-bench-plan-") as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        start = time.perf_counter()
        data = make_dataset(Path(tmp) / "data")
        generate_s = time.perf_counter() - start
        cold_scan_s = _scan(data)
        scan_s = min(_scan(data) for _ in range(3))
        plan_s = min(_plan(data) for _ in range(3))
    return [
        f"plan {IMAGES} images (generated in {generate_s:.1f} s, cold scan {cold_scan_s:.2f} s): "
        f"warm scan {scan_s:.3f} s, sdtui plan {plan_s:.3f} s, planner overhead {plan_s - scan_s:.3f} s "
        f"ratio={scan_s / plan_s:.2f}"
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
