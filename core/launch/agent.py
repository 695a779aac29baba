"""``python -m core.launch.agent ACCELERATE-LAUNCH-ARGS…``: ``accelerate launch`` with a rendezvous
that, on one machine, listens on the loopback interface only.

torch's static rendezvous creates the elastic agent's TCP store listening on every interface
(``*:PORT``), whatever ``main_process_ip`` says. For a run on one machine that is a port open to
the network for nothing: the ``sdtui-loopback`` rendezvous registered here binds the store's
socket to 127.0.0.1 and hands it to the store (``master_listen_fd``). The workers talk to the
agent's store (``use_agent_store``), and gloo/NCCL are kept on ``lo`` by the launcher's
environment (command.py). Several machines keep the static rendezvous on the configured address.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from core.launch.accelerate_config import LOOPBACK_RENDEZVOUS as BACKEND

LOOPBACK = "127.0.0.1"


def create_handler(params: Any) -> Any:
    """The loopback rendezvous for torch's elastic agent (one machine: node rank 0 of 1)."""
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    class LoopbackRendezvous(StaticTCPRendezvous):
        """The static rendezvous with its store listening on 127.0.0.1 (a free port) only."""

        def get_backend(self) -> str:
            return BACKEND

        def next_rendezvous(self) -> Any:
            if self._store is None:
                from torch.distributed import TCPStore

                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind((LOOPBACK, 0))
                listener.listen(128)
                self._listener = listener
                self.master_port = int(listener.getsockname()[1])
                self._store = TCPStore(
                    LOOPBACK,
                    self.master_port,
                    self.world_size,
                    True,
                    self.timeout,
                    multi_tenant=True,
                    master_listen_fd=listener.fileno(),
                )
            return super().next_rendezvous()

    if int(params.max_nodes) != 1:
        raise ValueError(f"the {BACKEND} rendezvous is for one machine; several machines use the static rendezvous")
    return LoopbackRendezvous(LOOPBACK, 0, 0, 1, params.run_id, int(params.config.get("timeout", 600)))


def main(argv: list[str] | None = None) -> int:
    """Register the loopback rendezvous, then run ``accelerate launch`` with ``argv``."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    rendezvous_handler_registry.register(BACKEND, create_handler)
    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    launch_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
