"""The TensorBoard lines the dashboard shows: the command for the run's tb/ and the SSH port forward."""

from __future__ import annotations

import socket
from pathlib import Path

from core.monitor.tensorboard import free_port, tensorboard_lines


def test_the_lines_name_the_run_tb_folder_the_port_and_the_forward_the_user_came_in_on() -> None:
    lines = tensorboard_lines(Path("/srv/runs/dog-lora-20261206-120000/tb"), 6007, "ana", "10.1.2.3 51000 203.0.113.9 2222", "gpu-box")
    assert "  tensorboard --logdir /srv/runs/dog-lora-20261206-120000/tb --port 6007" in lines
    assert "  ssh -N -L 6007:localhost:6007 -p 2222 ana@203.0.113.9" in lines
    assert lines[-1] == "then open http://localhost:6007"


def test_without_an_ssh_session_the_forward_names_this_host_and_quotes_odd_paths() -> None:
    lines = tensorboard_lines(Path("/data/my runs/a/tb"), 6006, "ana", None, "gpu-box")
    assert "  tensorboard --logdir '/data/my runs/a/tb' --port 6006" in lines
    assert "  ssh -N -L 6006:localhost:6006 ana@gpu-box" in lines


def test_free_port_skips_a_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert free_port(taken, tries=5) != taken
