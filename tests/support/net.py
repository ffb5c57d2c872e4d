"""Ports and sockets on 127.0.0.1 for tests.

- :func:`free_port`: a port nothing listens on, for a server to bind or a client to be
  refused by.
- :func:`unread_bytes`: how many bytes a local server has not yet read from one client's
  connection, from ``/proc/net/tcp`` (Linux), so that a test can wait until the server has
  read what it was sent instead of sleeping.
"""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["free_port", "unread_bytes"]

#: The TCP states of ``/proc/net/tcp`` in which the server's end can still hold unread bytes.
_ESTABLISHED, _CLOSE_WAIT = 0x01, 0x08


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _hex_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def unread_bytes(server_port: int, client_port: int) -> int | None:
    """Bytes waiting in the receive queue of the server's end of the connection from
    ``client_port`` to ``server_port`` (both on 127.0.0.1); None if that end is not there
    (not accepted yet, or closed)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], int(fields[3], 16)
        if (
            _hex_port(local) == server_port
            and _hex_port(remote) == client_port
            and state in (_ESTABLISHED, _CLOSE_WAIT)
        ):
            return int(fields[4].split(":")[1], 16)
    return None
