"""Smaller things a user notices: file permissions under the umask, a huge image warned about
once by the scan, ``attach`` exiting non-zero for a failed or lost run."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from core.errors import JobFailed
from core.runs.rundir import RunDir


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid PNG header (and end) announcing ``width`` × ``height`` without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_the_demo_dataset_gets_the_umask_permissions(tmp_path: Path) -> None:
    from core.dataset.demo_data import make_demo_dataset

    old = os.umask(0o002)
    try:
        root = make_demo_dataset(tmp_path / "dataset")
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in root.rglob("*") if p.is_file()}
    assert modes == {oct(0o664)}


def test_the_scan_leaves_out_a_huge_image_with_one_problem(tmp_path: Path, kohya_dataset) -> None:
    from core.dataset.scan import scan_dataset

    dataset = kohya_dataset(((2, "sks dog", 3),))
    huge = huge_png(dataset / "2_sks dog" / "huge.png")
    scan = scan_dataset(dataset, use_cache=False)
    about = [p for p in scan.problems if p.path == str(huge)]
    assert len(about) == 1 and about[0].severity == "error"
    assert "20000x20000 (400 megapixels)" in about[0].message and "left out" in about[0].message and "downscale" in about[0].fix
    assert scan.images == 3


def _run(tmp_path: Path, **status: object) -> RunDir:
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.run_toml.write_text('name = "r"\n')
    run.write_status(**status)
    return run


def test_attach_exits_non_zero_for_a_failed_run_and_zero_for_a_finished_one(tmp_path: Path) -> None:
    from cli.app import attach_verdict

    failed = _run(tmp_path, state="failed", error="the trainer crashed at step 3 (RuntimeError: boom)")
    with pytest.raises(JobFailed, match="is failed: the trainer crashed at step 3"):
        attach_verdict(failed)
    failed.write_status(state="finished", error=None)
    assert attach_verdict(failed) == 0
    failed.status_json.write_bytes(b"\xff\x00")
    with pytest.raises(JobFailed, match=r"status.json"):
        attach_verdict(failed)


def test_home_and_dashboard_show_a_damaged_run_next_to_the_others(tmp_path: Path) -> None:
    from tests.tui_fixtures import make_runs, sync, until
    from tui.app import SdtuiApp
    from tui.context import AppContext
    from tui.screens.dashboard import DashboardScreen

    runs = make_runs(tmp_path / "runs")
    damaged = RunDir(runs / "dog-lora-20251009-093000")
    damaged.status_json.write_bytes(b"\xff\xfe\x00{")
    damaged.control_json.write_bytes(b"\x80")

    @sync
    async def check() -> None:
        app = SdtuiApp(AppContext(runs_dir=runs, gpu_spec="1x24GB"), theme="textual-dark")
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.screen.query_one("#runs").row_count == 3)
            table = app.screen.query_one("#runs")
            ids = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            await pilot.press(*["down"] * ids.index(damaged.id), "enter")
            await pilot.pause(0.3)
            assert isinstance(app.screen, DashboardScreen) and app.screen.run.id == damaged.id
            await until(pilot, lambda: app.screen.query_one("#error").display)
            assert "status.json" in str(app.screen.query_one("#error").render())

    check()
