"""ClientConfig: how offloop's clients talk to a Thrift server, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from offloop.codec.call import SEQID_MASK
from offloop.codec.framing import DEFAULT_MAX_FRAME_SIZE
from offloop.codec.guard import DecodeLimits
from offloop.codec.message import ProtocolName

__all__ = ["REPROBE_FRAMED_AFTER", "ClientConfig", "Transport"]

#: How calls are framed on the wire: see ``ClientConfig.transport``.
Transport = Literal["auto", "header", "framed"]
#: Seconds a "framed" answer of the transport probe is kept (``transport`` ``auto``): a
#: connection made later asks again, as the backend may since speak THeader (items 17, 19).
REPROBE_FRAMED_AFTER = 300.0


@dataclass(frozen=True)
class ClientConfig:
    """How a client connection behaves. Make variants with :func:`dataclasses.replace`.

    Attributes:
        protocol: the Thrift protocol on the wire, ``binary`` or ``compact``; it must match
            the worker's ``--protocol``.
        max_frame_size: the largest frame accepted from the server and sent to it, in bytes.
        connect_timeout: seconds allowed to open a TCP connection.
        max_in_flight: calls one connection may carry at once; one more is refused at once
            (there is no queue).
        write_buffer_high: bytes a connection may buffer before callers wait for it to
            drain (the asyncio high-water mark; the low-water mark is a quarter of it).
        pool_size: connections per backend (loop mode).
        decode: what one reply may cost to decode beyond its length (nesting depth,
            container elements); see docs/limits.md.
        transport: how calls are framed. ``header``: THeader frames, which carry the
            request id, deadline and principal (offloop workers); ``framed``: plain framed
            messages, which every Thrift server reads; ``auto``: ask each backend once (a
            probe on its first connection, answered by offloop workers, within
            ``connect_timeout``) and remember its answer (a framed one for 5 minutes: a
            connection made later asks again).
    """

    protocol: ProtocolName = "binary"
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    connect_timeout: float = 2.0
    max_in_flight: int = field(default=1024, metadata={"flag": "calls-per-backend-connection"})
    write_buffer_high: int = 1024 * 1024
    pool_size: int = 4
    decode: DecodeLimits = field(default_factory=DecodeLimits, metadata={"prefix": "decode-"})
    transport: Transport = field(default="auto", metadata={"flag": "backend-transport"})

    def __post_init__(self) -> None:
        if self.protocol not in ("binary", "compact"):
            raise ValueError(f"protocol must be 'binary' or 'compact', not {self.protocol!r}")
        if not 0 < self.max_frame_size <= 1 << 30:
            raise ValueError(f"max_frame_size must be 1 byte to 1 GiB, not {self.max_frame_size}")
        if not self.connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {self.connect_timeout}")
        if not 1 <= self.max_in_flight <= SEQID_MASK:
            raise ValueError(f"max_in_flight must be in 1..2**31-1, not {self.max_in_flight}")
        if self.write_buffer_high <= 0:
            raise ValueError(f"write_buffer_high must be positive, not {self.write_buffer_high}")
        if self.transport not in ("auto", "header", "framed"):
            raise ValueError(
                f"transport must be 'auto', 'header' or 'framed', not {self.transport!r}"
            )
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
