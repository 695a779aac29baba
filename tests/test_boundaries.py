"""Import hygiene at run time: importing core loads no UI package, importing the TUI loads no training stack.

The static rules (layers, and the same two forbidden imports) are pyproject.toml's import-linter
contracts, checked by tests/test_import_contracts.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_PACKAGES = ("textual", "rich")
HEAVY_PACKAGES = ("torch", "diffusers", "transformers", "peft")


def _core_files() -> list[Path]:
    return sorted(p for p in (REPO / "core").rglob("*.py") if "__pycache__" not in p.parts)


def _core_modules(skip_train: bool) -> list[str]:
    modules = []
    for path in _core_files():
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] == "__main__":
            continue
        if skip_train and parts[:2] == ["core", "train"]:
            continue
        modules.append(".".join(parts))
    return modules


def _loaded_after(statement: str, packages: tuple[str, ...]) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(packages)!r}))))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_core_module_loads_no_ui_package() -> None:
    modules = _core_modules(skip_train=True)
    assert "core.settings" in modules
    statement = "import importlib\nfor name in " + repr(modules) + ":\n    importlib.import_module(name)"
    assert _loaded_after(statement, UI_PACKAGES) == []


def test_importing_the_tui_loads_no_training_stack() -> None:
    loaded = _loaded_after("import tui.app\nimport tui.screens.home, tui.screens.wizard, tui.screens.dashboard", HEAVY_PACKAGES)
    assert loaded == []


def test_the_checker_sees_a_heavy_import() -> None:
    assert _loaded_after("import json", HEAVY_PACKAGES) == []
    assert "rich" in _loaded_after("import rich.text", UI_PACKAGES)
