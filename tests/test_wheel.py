"""The wheel built from the repo works installed into a fresh venv outside the checkout.

No network: the scratch venv sees the shared venv's packages through a path line in a .pth
file (a path line adds the folder without running that folder's own .pth files, so the
shared editable install of sdtui stays inactive), and pip installs only the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "tui", "cli", "recipes")
#: What a build does not read (and what it must not copy: caches, venvs, runs), anywhere in the tree
NOT_SOURCE = (".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache")
#: ... and at the top of the checkout only (core/runs is a package, ./runs a runs folder).
NOT_SOURCE_AT_TOP = frozenset({"build", "dist", "tests", "bench", "docs", "demo", "runs"})


def _not_source(folder: str, names: list[str]) -> set[str]:
    skipped = set(shutil.ignore_patterns(*NOT_SOURCE)(folder, names))
    return skipped | (NOT_SOURCE_AT_TOP & set(names) if Path(folder) == REPO else set())


pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def copy_source(out: Path) -> Path:
    """A copy of the checkout's source (a build leaves build/ and *.egg-info behind, so it does
    not run in the checkout itself)."""
    source = out / "src"
    shutil.copytree(REPO, source, ignore=_not_source)
    return source


def build_wheel(out: Path) -> Path:
    """``python -m build --wheel`` of a copy of the checkout."""
    source = copy_source(out)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (out / "dist").glob("sdtui-*.whl")
    return wheel


def scratch_venv(root: Path, *pip_args: str) -> Path:
    """A new venv with only sdtui installed (``pip install --no-deps --no-index PIP_ARGS``), the
    shared venv's packages on its path; returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    # Processed after pip's own .pth files (names sort after them), so an editable finder of
    # this venv is set up before the shared venv's folder joins the path.
    (site / "zz-shared-venv.pth").write_text(f"{Path(sysconfig.get_paths()['purelib']).resolve()}\n")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "--ignore-installed", *pip_args],
        timeout=300,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the scratch venv, its site-packages) with the freshly built wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    venv = root / "venv"
    return venv, scratch_venv(venv, str(wheel))


@pytest.fixture
def sdtui(installed: tuple[Path, Path], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the scratch venv's ``sdtui`` (or its python with ``python=True``) from a folder outside the checkout."""
    venv, _ = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDTUI_RECIPES_DIR", "SDTUI_RUNS_DIR")}

    def run(*args: str, python: bool = False) -> subprocess.CompletedProcess[str]:
        program = venv / "bin" / ("python" if python else "sdtui")
        return subprocess.run([str(program), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False)

    return run


def package_files(site: Path) -> set[str]:
    return {str(p.relative_to(site)) for name in PACKAGES for p in (site / name).rglob("*") if "__pycache__" not in p.parts}


def test_the_installed_code_is_the_wheels_not_the_checkouts(installed: tuple[Path, Path], sdtui) -> None:
    _, site = installed
    done = sdtui("-c", "import cli, core, recipes, tui; print('\\n'.join(m.__file__ for m in (cli, core, recipes, tui)))", python=True)
    assert done.returncode == 0, done.stderr
    files = done.stdout.split()
    assert len(files) == 4 and all(Path(f).is_relative_to(site) for f in files), files
    assert sorted(p.name for p in (site / "recipes").glob("*.toml")) == sorted(p.name for p in (REPO / "recipes").glob("*.toml"))
    assert {p.name for p in (site / "tui" / "styles").glob("*.tcss")} >= {"app.tcss", "home.tcss"}
    assert {"params.json", "activations.json", "calibration.json"} <= {p.name for p in (site / "core" / "memory").glob("*.json")}


def test_recipes_json_lists_the_shipped_recipes(sdtui) -> None:
    done = sdtui("recipes", "--json")
    assert done.returncode == 0, done.stderr
    names = [r["name"] for r in json.loads(done.stdout)["recipes"]]
    assert sorted(names) == sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))


def test_plan_without_weights_or_data_gives_the_fit(sdtui) -> None:
    done = sdtui("plan", "--model", "sd1", "--method", "lora", "--gpus", "1x24GB")
    assert done.returncode == 0, done.stderr
    assert "Recipe    sd15-lora" in done.stdout and ": fits" in done.stdout
    done = sdtui("plan", "--model", "sd1", "--method", "lora", "--gpus", "1x24GB", "--json")
    plan = json.loads(done.stdout)
    assert plan["fits"] is True and plan["recipe"].startswith("sd15-") and plan["gpu"]["vram_gb"] == 24


def test_nothing_is_written_into_the_installed_package(installed: tuple[Path, Path], sdtui, user_dirs: Path) -> None:
    _, site = installed
    before = package_files(site)
    code = "from core.memory import record_calibration; record_calibration('sd1', 'lora', {}, 5 * 2**30, source='test')"
    done = sdtui("-c", code, python=True)
    assert done.returncode == 0, done.stderr
    assert sdtui("recipes").returncode == 0
    assert package_files(site) == before
    assert json.loads((user_dirs / "data" / "sdtui" / "calibration.json").read_text())["points"][0]["source"] == "test"


def test_an_editable_install_reads_the_recipes_from_the_source_folder(tmp_path: Path) -> None:
    source = copy_source(tmp_path)
    venv = tmp_path / "venv"
    scratch_venv(venv, "-e", str(source))
    (source / "recipes" / "sd15-lora-6gb.toml").unlink()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDTUI_RECIPES_DIR")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(venv / "bin" / "sdtui"), "recipes", "--json"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = {r["name"] for r in json.loads(done.stdout)["recipes"]}
    assert names == {p.stem for p in (REPO / "recipes").glob("*.toml")} - {"sd15-lora-6gb"}
