"""Dataset scan speed: ``scan_dataset`` (headers only, cold and warm cache) against a full decode.

Generates 10,000 small images (PNG, JPEG, WebP and BMP; sizes from 48 to 320 pixels a side;
half of them captioned) in ten ``<repeats>_<token>`` folders of a temp dir, then times

* ours, cold: ``scan_dataset`` with an empty cache folder (reads every header and caption);
* ours, warm: the same scan again (headers from the cache, captions read again);
* full decode: what a scanner without header parsing does, ``PIL.Image.open(p).load()``
  on every image.

Each is the best of two rounds; the files are in the page cache for all of them (they were
just written). ratio = full-decode time / our cold time; the target is a cold scan of
10,000 images under 5 s on this machine.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

IMAGES = 10_000
FOLDERS = 10
ROUNDS = 2
TARGET_S = 5.0
FORMATS = (("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP"))


def make_dataset(root: Path, count: int = IMAGES, seed: int = 0) -> Path:
    """``count`` small images of mixed formats and sizes in ten kohya subfolders under ``root``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    per_folder = count // FOLDERS
    for f in range(FOLDERS):
        folder = root / f"{f + 1}_token{f}"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            width, height = rng.randrange(48, 321, 8), rng.randrange(48, 321, 8)
            image = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            ImageDraw.Draw(image).rectangle([width // 4, height // 4, width // 2, height // 2], fill=(i % 256, f * 20, 99))
            suffix, fmt = FORMATS[(i + f) % len(FORMATS)]
            image.save(folder / f"img{i:05d}.{suffix}", format=fmt, **({"quality": 80} if fmt in ("JPEG", "WEBP") else {}))
            if i % 2 == 0:
                (folder / f"img{i:05d}.txt").write_text(f"token{f}, picture {i}")
    return root


def full_decode_scan(root: Path) -> int:
    """Decode every image with PIL (the baseline); returns how many decoded."""
    from PIL import Image

    decoded = 0
    for folder in sorted(root.iterdir()):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if os.path.splitext(entry.name)[1].lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
                with Image.open(entry.path) as image:
                    image.load()
                decoded += 1
    return decoded


def _best(fn, rounds: int = ROUNDS, before=None) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(rounds):
        if before is not None:
            before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> list[str]:
    """Generate the images, time the three scans and return the result line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from core.dataset.scan import cache_dir, scan_dataset

    work = Path(tempfile.mkdtemp(prefix="sdtui-bench-scan-"))
    try:
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
        root = make_dataset(work / "data")

        def clear_cache() -> None:
            shutil.rmtree(cache_dir(), ignore_errors=True)

        cold_s, scan = _best(lambda: scan_dataset(root), before=clear_cache)
        warm_s, warm = _best(lambda: scan_dataset(root))
        full_s, decoded = _best(lambda: full_decode_scan(root))
        assert scan.images == warm.images == decoded == IMAGES, (scan.images, warm.images, decoded)
        verdict = "ok" if cold_s < TARGET_S else f"over the {TARGET_S:g} s target"
        return [
            f"bench_scan: {IMAGES} images, ours cold {cold_s:.2f} s ({IMAGES / cold_s:.0f} img/s, {verdict}), "
            f"ours warm {warm_s:.2f} s ({full_s / warm_s:.1f}x), full decode {full_s:.2f} s ratio={full_s / cold_s:.2f}"
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    for line in main():
        print(line)
