"""ListenConfig: where a server listens. Shared by the gateway, the worker and its admin port."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ListenConfig"]


@dataclass(frozen=True)
class ListenConfig:
    """Where a server accepts connections.

    Attributes:
        host: address to listen on.
        port: TCP port; 0 picks a free one.
        backlog: connections the kernel queues before they are accepted.
    """

    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = 2048

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {self.backlog}")
