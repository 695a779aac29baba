"""How to open a run's TensorBoard files (``<run>/tb/``) from the laptop: the command to run on the
server and the SSH port forward, as lines to show or copy. No Textual here."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

#: TensorBoard's own default port; the first free one from here is offered.
BASE_PORT = 6006


def free_port(start: int = BASE_PORT, tries: int = 50) -> int:
    """The first port from ``start`` that nothing on this machine listens on (``start`` when none is)."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return start


def tensorboard_lines(tb_dir: Path, port: int, user: str, ssh_connection: str | None, hostname: str) -> list[str]:
    """The lines that open TensorBoard for ``tb_dir``: run this here, forward the port from the laptop, open the page.

    ``ssh_connection`` is this session's ``SSH_CONNECTION`` (``client port server port``): the
    forward names the address and port the user reached this machine on; without it, ``hostname``.
    """
    server, ssh_port = hostname, "22"
    fields = (ssh_connection or "").split()
    if len(fields) == 4:
        server, ssh_port = fields[2], fields[3]
    if ":" in server:
        server = f"[{server}]"
    forward = ["ssh", "-N", "-L", f"{port}:localhost:{port}"] + (["-p", ssh_port] if ssh_port != "22" else []) + [f"{user}@{server}"]
    return [
        "On this machine (e.g. in another tmux window):",
        "  " + shlex.join(["tensorboard", "--logdir", str(tb_dir), "--port", str(port)]),
        "On your laptop:",
        "  " + shlex.join(forward),
        f"then open http://localhost:{port}",
    ]
