"""requirements.lock agrees with pyproject.toml: made from these requirements, a pin for each, no torch."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements.lock"
#: Installed by `make setup` on its own (TORCH_PIN), never from the lock.
NOT_LOCKED = {"torch"}


def lock_tool() -> ModuleType:
    """tools/lock.py, imported by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sdtui_lock_tool", REPO / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_requirements(pyproject: str) -> list[Requirement]:
    """The dependencies and the locked extras (test, serve) of pyproject, torch left out."""
    project = lock_tool()._toml(pyproject)["project"]
    lines = list(project["dependencies"])
    for extra in lock_tool().EXTRAS:
        lines += project["optional-dependencies"][extra]
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) not in NOT_LOCKED]


def pins(lock: str) -> dict[str, list[str]]:
    """Package name -> the versions pinned for it (one per marker set)."""
    found: dict[str, list[str]] = {}
    for line in lock.splitlines():
        if line[:1].isalnum():
            requirement = Requirement(line.rstrip(" \\"))
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            found.setdefault(canonicalize_name(requirement.name), []).append(spec.version)
    return found


def torch_pin(lock: str) -> str:
    match = re.search(r"^# torch: (\S+?),", lock, re.M)
    assert match, "the lock's header names the torch pin it was made with"
    return match.group(1)


def lock_problems(pyproject: str, lock: str) -> list[str]:
    """Every way the lock disagrees with pyproject (empty when they agree)."""
    problems = []
    header = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", lock, re.M)
    if header is None or header.group(1) != lock_tool().inputs_digest(pyproject, torch_pin(lock)):
        problems.append("the lock was not made from this pyproject.toml: run make lock")
    pinned = pins(lock)
    for requirement in direct_requirements(pyproject):
        versions = pinned.get(canonicalize_name(requirement.name))
        if not versions:
            problems.append(f"{requirement.name} has no pin in the lock")
        problems += [f"{requirement.name}=={v} does not satisfy {requirement}" for v in versions or [] if v not in requirement.specifier]
    for name in pinned:
        if name in ("torch", "triton") or name.startswith("cuda-") or (name.startswith("nvidia-") and name != "nvidia-ml-py"):
            problems.append(f"{name} is in the lock; torch and its CUDA libraries are installed by TORCH_PIN")
    return problems


def test_the_lock_agrees_with_pyproject() -> None:
    assert lock_problems(PYPROJECT.read_text(), LOCK.read_text()) == []


def test_the_lock_was_made_with_the_torch_pin_make_setup_installs() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^TORCH_PIN \?= (\S+)$", makefile, re.M).group(1) == torch_pin(LOCK.read_text())


def test_every_pin_has_hashes() -> None:
    blocks = re.split(r"\n(?=[a-z0-9])", LOCK.read_text())
    pinned = [b for b in blocks if b[:1].isalnum()]
    assert len(pinned) > 50
    assert [b.splitlines()[0] for b in pinned if "--hash=sha256:" not in b] == []


def test_a_changed_requirement_is_caught() -> None:
    pyproject, lock = PYPROJECT.read_text(), LOCK.read_text()
    raised = pyproject.replace('"textual>=1.0"', '"textual>=99"')
    assert raised != pyproject
    problems = lock_problems(raised, lock)
    assert problems[0] == "the lock was not made from this pyproject.toml: run make lock"
    assert any(p.startswith("textual==") and "does not satisfy textual>=99" in p for p in problems)


def test_a_new_requirement_without_a_pin_is_caught() -> None:
    pyproject = PYPROJECT.read_text().replace('"psutil>=5.9",', '"psutil>=5.9",\n    "not-a-locked-package>=1",')
    assert "not-a-locked-package has no pin in the lock" in lock_problems(pyproject, LOCK.read_text())


def test_torch_or_cuda_libraries_in_the_lock_are_caught() -> None:
    lock = LOCK.read_text() + "torch==2.13.0 \\\n    --hash=sha256:00\nnvidia-cublas-cu12==12.8 \\\n    --hash=sha256:00\n"
    problems = lock_problems(PYPROJECT.read_text(), lock)
    assert [p.split()[0] for p in problems] == ["torch", "nvidia-cublas-cu12"]


def test_inputs_digest_without_tomllib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.10 has no tomllib: the digest is the same with tomli or tomlkit."""
    text = PYPROJECT.read_text()
    expected = lock_tool().inputs_digest(text, "torch==2.13.0")
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    assert lock_tool().inputs_digest(text, "torch==2.13.0") == expected
