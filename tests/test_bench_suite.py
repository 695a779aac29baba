"""The benchmark runner and the reference loop's reading of kohya folders (no timing here)."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import discover, is_failure, result_lines
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


def test_each_verdict_against_a_target_is_listed_with_its_line() -> None:
    from bench.results import verdicts

    lines = [
        "real_sd1_lora_128px: ours 2.57 s/step …; counted-FLOPs prediction at 128px 1.88; target 1.5x missed by 0.26 ratio=1.24",
        "dashboard_cpu: … 1.70% of a core over 20 s (first frame 4.34 s; target <2.0% met) ratio=1.18",
        "metrics open: 1,000,000 lines: sdtui 2.56 s wall (OVER the 2 s target), naive 16.61 s ratio=6.48",
        "first_step_sd1_lora: ours 20.4 s … ratio=0.74",
    ]
    assert verdicts(lines) == [
        "real_sd1_lora_128px: target 1.5x missed by 0.26",
        "dashboard_cpu: target <2.0% met",
        "metrics open: OVER the 2 s target",
    ]


def test_a_new_results_section_goes_first_under_the_heading_and_keeps_the_rest(tmp_path: Path) -> None:
    from bench.results import add_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## 2026-11-21: older\n\nold lines\n", encoding="utf-8")
    add_section("`python -m bench` (make bench)", "new lines", path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results\n\n## 20") and "UTC: `python -m bench` (make bench)\n\nnew lines\n" in text
    assert text.index("new lines") < text.index("## 2026-11-21: older") and text.endswith("old lines\n")


def test_a_line_without_a_reference_is_a_figure_and_a_broken_benchmark_is_a_failure():
    assert not is_failure("first_step_tiny_demo: Launch to the first optimizer step 4.6 s (no reference: the examples have no launcher) ratio=n/a")
    assert not is_failure("gpu_real_size: not measured: no CUDA GPU on this machine ratio=n/a")
    assert is_failure("bench_metrics: failed (exit 1: TypeError: show() missing 1 required positional argument) ratio=n/a")
    assert is_failure("bench_home: did not finish within 120 s ratio=n/a")
    assert is_failure("gpu_sd1_lora_64px_b1_tiny_cpu: ours failed (exit 1: AttributeError) vs reference 26.05 img/s ratio=n/a")
