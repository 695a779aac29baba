"""Refresh requirements.lock from pyproject.toml (`make lock`).

The lock pins every direct and transitive dependency, with hashes, for Python 3.10-3.12 on
Linux x86-64. torch is left out, and so are the CUDA libraries only its CUDA build needs:
`make setup` installs torch itself (TORCH_PIN), the CPU build where there is no NVIDIA driver.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
EXTRAS = ("test", "serve")
TORCH_ONLY = re.compile(r"^(torch|triton|nvidia-(?!ml-py)[a-z0-9-]+|cuda-[a-z0-9-]+)==")


def _toml(text: str) -> dict:
    """Parse TOML with the standard library (Python 3.11+), else tomli or tomlkit (3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            import tomlkit

            return tomlkit.parse(text).unwrap()
    return tomllib.loads(text)


def inputs_digest(pyproject: str, torch_pin: str) -> str:
    """The digest of what the lock was made from: the dependency tables and the torch pin."""
    project = _toml(pyproject)["project"]
    parts = sorted(project["dependencies"])
    for extra in EXTRAS:
        parts += [f"[{extra}]"] + sorted(project["optional-dependencies"][extra])
    parts.append(torch_pin)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def compile_lock(torch_pin: str, hashes: bool, exclude: list[str]) -> str:
    """Run uv's resolver over pyproject.toml and return the requirements text.

    The current lock is handed to uv as its output file, so uv keeps every pin that still
    satisfies pyproject.toml and moves only what a changed requirement needs (a new dependency
    does not upgrade the rest to whatever the registry serves that day).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraint, tempfile.TemporaryDirectory() as scratch:
        constraint.write(torch_pin + "\n")
        constraint.flush()
        output = Path(scratch) / "requirements.txt"
        if LOCK.exists():
            output.write_text(LOCK.read_text())
        argv = ["uv", "pip", "compile", str(ROOT / "pyproject.toml"), "--universal", "--python-version", "3.10", "-c", constraint.name, "--no-header", "-o", str(output), "--quiet"]
        for extra in EXTRAS:
            argv += ["--extra", extra]
        if hashes:
            argv.append("--generate-hashes")
        for name in exclude:
            argv += ["--no-emit-package", name]
        subprocess.run(argv, check=True, capture_output=True, text=True)
        return output.read_text()


def main(argv: list[str]) -> int:
    torch_pin = argv[0] if argv else "torch==2.13.0"
    names = [line.split("==")[0] for line in compile_lock(torch_pin, False, []).splitlines() if TORCH_ONLY.match(line)]
    body = compile_lock(torch_pin, True, names)
    digest = inputs_digest((ROOT / "pyproject.toml").read_text(), torch_pin)
    header = (
        "# requirements.lock: written by `make lock` (tools/lock.py); do not edit by hand.\n"
        f"# torch: {torch_pin}, installed by `make setup` before this file, not listed here.\n"
        f"# inputs-sha256: {digest}\n"
    )
    LOCK.write_text(header + body)
    pins = sum(1 for line in body.splitlines() if line[:1].isalnum())
    print(f"wrote {LOCK.name}: {pins} pins, torch-only packages left out: {len(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
