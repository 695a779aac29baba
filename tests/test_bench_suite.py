"""The benchmark runner and the reference loop's reading of kohya folders (no timing here)."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import discover, result_lines
from bench.reference_loop import kohya_items
from tests.conftest import make_kohya


def test_runner_finds_benchmarks_but_not_measure_scripts() -> None:
    names = discover()
    assert "bench_trainer" in names and "bench_tui_start" in names
    assert not any(n.startswith("measure_") for n in names)
    assert discover(["trainer"]) == ["bench_trainer"]


def test_only_lines_with_a_ratio_are_results() -> None:
    out = "loading…\nscan: 10 images ratio=2.00\nwarning: slow\ngpu: not measured ratio=n/a\n"
    assert result_lines(out) == ["scan: 10 images ratio=2.00", "gpu: not measured ratio=n/a"]


def test_reference_reads_repeats_and_falls_back_to_the_token(tmp_path: Path) -> None:
    root = make_kohya(tmp_path / "data", ((3, "sks dog", 2),), captions=False)
    (root / "no_prefix").mkdir()
    items = kohya_items(root)
    assert len(items) == 6
    assert {caption for _, caption in items} == {"sks dog"}
    (root / "3_sks dog" / "img000.txt").write_text("a photo of sks dog")
    assert sum(caption == "a photo of sks dog" for _, caption in kohya_items(root)) == 3
