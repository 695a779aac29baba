"""mypy strict holds on the packages pyproject's [tool.mypy] lists: core/families (the trainer contract and the family packages), core/plan, core/memory and core/dataset."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed in this venv: it joins the test extra with the next `make lock`")
def test_mypy_strict_passes_on_the_families() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO, capture_output=True, text=True, timeout=300)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert "Success: no issues found" in report, report


def test_mypy_is_strict_on_the_families_the_planner_and_the_estimator() -> None:
    import tomlkit

    config = tomlkit.parse((REPO / "pyproject.toml").read_text()).unwrap()["tool"]["mypy"]
    assert config["strict"] is True and {"core/families", "core/plan", "core/memory", "core/dataset"} <= set(config["files"])
