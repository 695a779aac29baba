"""The Makefile's test targets: CI's `make test` fails with a sentence when pytest collects nothing, and test-fast leaves the slow tests out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    # -o: never rebuild the venv from inside a test, whatever the timestamps say
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_test_run_that_collects_nothing_fails_with_a_sentence() -> None:
    out = _make("test", "PYTEST_ARGS=tests/test_atomic.py -k no_test_has_this_name -n 0 -p no:cacheprovider")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "pytest collected no tests (exit code 5)" in out.stderr, out.stderr


def test_ci_runs_make_test() -> None:
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert "make test" in commands


def test_make_test_prints_the_slowest_and_test_fast_leaves_out_the_slow_tests() -> None:
    assert "--durations=20" in _make("-n", "test").stdout
    dry = _make("-n", "test-fast").stdout
    assert '-m "not slow"' in dry, dry
