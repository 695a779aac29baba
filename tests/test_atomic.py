"""Atomic writes give files the mode a plain open() would, so other users and programs can read outputs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.atomic import current_umask, write_atomic, write_json_atomic

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_file_has_the_mode_of_a_plain_open(tmp_path: Path, mask: int, expected: int) -> None:
    with umask(mask):
        write_atomic(tmp_path / "out" / "lora.safetensors", b"weights")
        write_json_atomic(tmp_path / "status.json", {"state": "running"})
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    assert mode(tmp_path / "out" / "lora.safetensors") == expected
    assert mode(tmp_path / "status.json") == expected
    assert mode(tmp_path / "plain.txt") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain.txt", "status.json"]


def test_current_umask_is_read_without_changing_it() -> None:
    with umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027


def test_replacing_a_file_leaves_no_temp_file_and_the_new_content(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_json_atomic(target, {"step": 1})
    write_json_atomic(target, {"step": 2})
    assert target.read_text() == '{\n  "step": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_write_the_kernel_refuses_midway_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    """The file-size limit binds root too (a read-only folder does not), so this runs everywhere: the
    write fails after the temp file got its first bytes, and the reader still finds the old file."""
    target = tmp_path / "status.json"
    target.write_text('{"state": "running"}\n')
    script = (
        "import errno, resource, signal, sys\n"
        "from core.atomic import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    write_atomic(sys.argv[1], b'x' * 65536)\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno])\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["EFBIG"], out.stdout + out.stderr
    assert target.read_text() == '{"state": "running"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize(("mask", "expected", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_checkpoint_files_follow_the_umask(tmp_path: Path, mask: int, expected: int, folder_mode: int) -> None:
    import torch

    from core.train.outputs.train_state import save

    with umask(mask):
        folder = save(tmp_path / "checkpoints", 3, {"w": torch.zeros(2)}, {"optimizer": {}}, {"epoch": 0}, keep=2)
    assert mode(folder) == folder_mode
    assert {p.name: mode(p) for p in folder.iterdir()} == dict.fromkeys(("trainable.safetensors", "objects.safetensors", "objects.json", "state.json"), expected)


@pytest.mark.slow
def test_a_real_runs_outputs_are_readable_by_other_users_under_umask_022(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    from tests.train_helpers import make_run, train

    data = kohya_dataset(subsets=((1, "sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        tiny_models("sd1"),
        data,
        "sd1",
        "lora",
        schedule={"max_steps": 2, "sample_every_steps": 2, "save_every_steps": 2},
        prompts=["sks dog --w 64 --h 64 --s 2"],
    )
    with umask(0o022):
        assert train(run) == 0
    lora = run / "output" / "tiny.safetensors"
    files = [lora, run / "output" / "diffusers" / "pytorch_lora_weights.safetensors", run / "status.json"]
    files += sorted((run / "samples").glob("*.png")) + sorted((run / "checkpoints").glob("step-*/*"))
    assert len(files) >= 6, files
    assert {str(p.relative_to(run)): oct(mode(p)) for p in files} == {str(p.relative_to(run)): oct(0o644) for p in files}
    assert mode(lora) & stat.S_IROTH
    for folder in (run / "output", run / "output" / "diffusers", run / "samples", *(run / "checkpoints").glob("step-*")):
        assert mode(folder) & stat.S_IROTH and mode(folder) & stat.S_IXOTH, folder
