"""Probe checks for the dataset scan: huge trees of broken files, symlinks out of the dataset,
files that are not files, names with line breaks (issue 19).

Each check builds a dataset in its scratch folder and runs ``sdtui scan`` on it (text and
``--json``); the scan must stay readable, name what lives outside the dataset folder and never
hang on or use what is not an image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.probe.base import Check
from bench.probe.inputs import dataset, sdtui

#: Output of a scan of 10,000 broken files stays below this (it was 1.58 MB).
READABLE_BYTES = 20_000


def _scan(scratch: Path, folder: Path, timeout: float = 120) -> tuple[dict[str, Any] | None, str, str | None]:
    """The scan's --json, its text, and a sentence when either command failed."""
    as_json = sdtui(["scan", str(folder), "--json"], scratch, timeout)
    as_text = sdtui(["scan", str(folder)], scratch, timeout)
    for result in (as_json, as_text):
        if "Traceback" in result.stderr or result.returncode not in (0, 2):
            return None, "", f"scan exited {result.returncode}: {result.stderr.strip()[-200:]!r}"
    try:
        return json.loads(as_json.stdout), as_text.stdout + as_text.stderr, None
    except ValueError:
        return None, "", f"scan --json printed no JSON: {as_json.stdout[:120]!r}"


def _problems_about(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in data["problems"] if Path(p["path"]).name == name or any(Path(e).name == name for e in p.get("examples", []))]


def _many_empty_files(scratch: Path) -> str | None:
    folder = dataset(scratch, images=2) / "10_probe dog"
    for n in range(10_000):
        (folder / f"empty{n:05d}.png").touch()
    data, text, failed = _scan(scratch, folder.parent, timeout=300)
    if failed or data is None:
        return failed
    size = len(text.encode()) + len(json.dumps(data).encode())
    if size > READABLE_BYTES:
        return f"the scan printed {size:,} bytes for 10,000 empty files (at most {READABLE_BYTES:,} is readable)"
    if "10,000 files" not in text:
        return "the text output does not say '10,000 files' in one grouped problem"
    grouped = [p for p in data["problems"] if p.get("count") == 10_000]
    if not grouped or len(grouped[0].get("examples", [])) == 0:
        return "--json has no grouped problem with count 10000 and examples"
    return None


def _subset_linked_to_etc(scratch: Path) -> str | None:
    root = dataset(scratch)
    (root / "5_etc").symlink_to("/etc")
    data, _, failed = _scan(scratch, root)
    if failed or data is None:
        return failed
    said = [p for p in _problems_about(data, "5_etc") if "outside the dataset folder" in p["message"]]
    return None if said else "the subset symlinked to /etc is scanned without a word that it lies outside the dataset"


def _passwd_as_png(scratch: Path) -> str | None:
    folder = dataset(scratch) / "10_probe dog"
    (folder / "passwd.png").symlink_to("/etc/passwd")
    data, _, failed = _scan(scratch, folder.parent)
    if failed or data is None:
        return failed
    found = _problems_about(data, "passwd.png")
    if not any(p["severity"] == "error" and "not a PNG" in p["message"] for p in found):
        return "/etc/passwd behind passwd.png is not reported as a file that is no image"
    if not any("outside the dataset folder" in p["message"] for p in found):
        return "passwd.png is not named as a link out of the dataset folder"
    subset = data["subsets"][0]
    return None if subset["images"] == 2 else f"the subset counts {subset['images']} images, not the 2 real ones"


def _image_from_elsewhere(scratch: Path) -> str | None:
    folder = dataset(scratch) / "10_probe dog"
    elsewhere = dataset(scratch / "elsewhere", images=1) / "10_probe dog" / "img0.png"
    (folder / "linked.png").symlink_to(elsewhere)
    data, _, failed = _scan(scratch, folder.parent)
    if failed or data is None:
        return failed
    if data["subsets"][0]["images"] != 3:
        return f"the linked image is not used ({data['subsets'][0]['images']} images)"
    said = [p for p in _problems_about(data, "linked.png") if "outside the dataset folder" in p["message"]]
    return None if said else "an image symlinked from outside the dataset folder is used with no notice"


def _pipe_named_png(scratch: Path) -> str | None:
    folder = dataset(scratch) / "10_probe dog"
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe.txt")
    data, _, failed = _scan(scratch, folder.parent, timeout=30)
    if failed or data is None:
        return failed
    said = [p for p in _problems_about(data, "pipe.png") if "not a regular file" in p["message"]]
    return None if said else "a pipe named pipe.png is not reported as not a regular file"


def _newline_in_name(scratch: Path) -> str | None:
    folder = dataset(scratch) / "10_probe dog"
    (folder / "img0.png").rename(folder / "two\nlines.png")
    data, _, failed = _scan(scratch, folder.parent)
    if failed or data is None:
        return failed
    said = [p for p in _problems_about(data, "two\nlines.png") if p["severity"] == "warning" and "line break" in p["message"]]
    return None if said else "a file name with a line break gets no warning"


CHECKS: list[Check] = [
    Check("scan: 10,000 empty files give a readable, grouped answer", _many_empty_files, slow=True),
    Check("scan: a subset symlinked to /etc is named as outside the dataset", _subset_linked_to_etc),
    Check("scan: /etc/passwd behind passwd.png is left out after its header and named as a link out", _passwd_as_png),
    Check("scan: an image symlinked from elsewhere is used with a notice", _image_from_elsewhere),
    Check("scan: a pipe named like an image or a caption does not hang the scan", _pipe_named_png),
    Check("scan: a file name with a line break gets a warning", _newline_in_name),
]
