"""The import layers of pyproject.toml's [tool.importlinter] hold: `lint-imports` from this venv passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = 5


def test_the_import_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in report, report
    analysed = re.search(r"Analyzed (\d+) files", report)
    assert analysed and int(analysed.group(1)) > 150, report
