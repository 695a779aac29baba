"""``sdtui scan``, ``sdtui plan`` and ``sdtui export-kohya`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main

DataFactory = Callable[..., Path]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence_error(err: str) -> str:
    """The error as the user sees it: one line starting with 'sdtui:', no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdtui: "), err
    return lines[0]


# ---- scan -------------------------------------------------------------------------------------

def test_scan_table_lists_subsets_and_problems(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4), (3, "style", 2)), captions=False)
    code, out, _ = run(capsys, "scan", str(data))
    assert code == 0
    assert "10_sks dog" in out and "3_style" in out
    assert "46 items per epoch" in out
    assert "without a caption file will be captioned 'sks dog'" in out


def test_scan_json(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import write_image

    data = kohya_dataset(subsets=((5, "sks dog", 3),))
    reg = tmp_path / "class"
    write_image(reg / "c0.png")
    code, out, _ = run(capsys, "scan", str(data), "--reg", str(reg), "--json", "--resolution", "256")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 3 and result["items_per_epoch"] == 15 and result["reg_images"] == 1
    assert [s["is_reg"] for s in result["subsets"]] == [False, True]


def test_scan_without_usable_images_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt" / "10_sks dog"
    corrupt.mkdir(parents=True)
    (corrupt / "a.png").write_bytes(b"not a png at all")
    (corrupt / "b.jpg").write_bytes(b"")
    code, out, err = run(capsys, "scan", str(tmp_path / "corrupt"))
    assert code == 2
    assert "a.png" in out  # the table still lists every problem
    assert "no usable training image" in one_sentence_error(err)
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "scan", str(tmp_path / "empty"))
    assert code == 2 and "no usable training image" in one_sentence_error(err)


def test_scan_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "scan", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert "does not exist" in one_sentence_error(err)
