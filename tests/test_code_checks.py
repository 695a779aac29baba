"""The code checks of pyproject.toml's [tool.ruff] hold: `ruff check` and `ruff format --check` from this venv pass (`make tidy` fixes most)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).parent / "ruff"


def _ruff(*args: str) -> str:
    out = subprocess.run([str(RUFF), *args, "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    report = out.stdout + out.stderr
    assert out.returncode == 0, f"ruff {' '.join(args)} found problems; run `make tidy`, then fix what it lists:\n{report}"
    return report


def test_ruff_lint_passes() -> None:
    assert "All checks passed!" in _ruff("check")


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    report = _ruff("format", "--check")
    assert "already formatted" in report, report


@pytest.mark.parametrize("path", ["core", "tui", "cli", "tests", "bench", "tools"])
def test_ruff_sees_every_package(path: str) -> None:
    listed = subprocess.run([str(RUFF), "check", "--show-files", "--no-cache", path], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert any(line.endswith(".py") for line in listed.splitlines()), f"ruff lists no Python file under {path}/ (an exclude in [tool.ruff] hides it)"
