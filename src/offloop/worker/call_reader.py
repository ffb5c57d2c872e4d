"""Reading a call off a frame: framed or THeader per connection, and the call's context.

A connection's first frame decides its framing (a THeader frame, whose body opens with 0x0FFF,
or a plain framed message); a frame of the other kind later closes it
(``reason="mixed_framing"``), as does a header frame refused (``"header"``) or bytes that are
not a Thrift message (``"garbage"``). A header frame names its payload's protocol, binary or
compact, and both are read whatever the worker's ``protocol`` (which is for framed
connections); its info headers become the call's :class:`~offloop.context.CallContext`, the
deadline made absolute on arrival. The principal an untrusted peer sends is dropped (item 2).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from offloop.codec.call import CANCEL_METHOD
from offloop.codec.guard import DecodeLimits
from offloop.codec.header import (
    HeaderError,
    HeaderLimits,
    HeaderParts,
    decode_header_frame,
    is_header_frame,
    split_header_frame,
)
from offloop.codec.message import ONEWAY, MessageCodec, ProtocolName
from offloop.context import PRINCIPAL_HEADER, CallContext
from offloop.errors import RemoteProtocolError
from offloop.worker.connection import Call
from offloop.worker.dispatch import CallJob, Job
from offloop.worker.handshake import plaintext_reply

if TYPE_CHECKING:
    from offloop.worker.connection import Connection

__all__ = ["CallReader"]

log = logging.getLogger("offloop.worker")

_NO_CONTEXT = CallContext()


class CallReader:
    """Reads the calls of a worker's connections.

    Args:
        protocol: the protocol of framed connections.
        limits: the bounds of a message's decoding.
        max_frame_size: a compressed header frame may inflate to this many bytes.
        trust_principal: whether a call's ``offloop-principal`` header is believed (mutual
            TLS or ``trust_principal``); otherwise handlers see no principal.
        protocol_error: closes a connection for a frame that is not a call, with the
            reason (a metric label) and the message to log.
    """

    def __init__(
        self,
        protocol: ProtocolName,
        limits: DecodeLimits,
        max_frame_size: int,
        *,
        trust_principal: bool,
        protocol_error: Callable[[Connection, str, str], None],
    ) -> None:
        #: The codec of framed connections.
        self.codec = MessageCodec(protocol, limits)
        #: Header frames name their protocol: a codec for each.
        self.codecs = {
            "binary": MessageCodec("binary", limits),
            "compact": MessageCodec("compact", limits),
        }
        self.codecs[protocol] = self.codec
        # A compressed call may inflate to what an uncompressed one may be.
        self.header_limits = HeaderLimits(max_decompressed_size=max_frame_size)
        self._trust_principal = trust_principal
        self._protocol_error = protocol_error

    def read(self, conn: Connection, body: bytes) -> Call | None:
        """The call of a frame ``body``, in the framing of ``conn``; None (and ``conn``
        closed) for a frame that is not one."""
        header_frame = is_header_frame(body)
        if conn.header is None:
            conn.header = header_frame
        elif conn.header is not header_frame:
            kinds = ("a framed message", "a THeader frame")
            self._protocol_error(
                conn,
                "mixed_framing",
                f"{kinds[header_frame]} on a connection that began with {kinds[conn.header]}",
            )
            return None
        frame: HeaderParts | None = None
        codec = self.codec
        context = _NO_CONTEXT
        message = body
        if header_frame:
            try:
                # Its parts, not a HeaderFrame: this runs for every call (issue 13's cost).
                frame = split_header_frame(body, self.header_limits)
            except HeaderError as exc:
                self._protocol_error(conn, "header", str(exc))
                return None
            protocol, _, _, _, info, message = frame
            codec = self.codecs[protocol.codec_name]
            if info:
                context = CallContext.from_headers(info, time.monotonic())
                if context.principal is not None and not self._trust_principal:
                    context = self._without_principal(conn, context)
        try:
            header = codec.read_header(message)
        except RemoteProtocolError as exc:
            self._protocol_error(conn, "garbage", str(exc))
            return None
        job: Job = message
        if frame is not None and (context is not _NO_CONTEXT or codec is not self.codec):
            job = CallJob(message, codec.protocol, context)
        return Call(header, codec, frame, context, job)

    def _without_principal(self, conn: Connection, context: CallContext) -> CallContext:
        """Item 2: ``context`` without the principal an untrusted peer sent (the header
        is dropped from its headers too); logged once per connection."""
        if not conn.principal_ignored:
            conn.principal_ignored = True
            log.debug(
                "ignoring offloop-principal from %s: the worker does not trust its peers "
                "(no tls_client_ca, trust_principal off)",
                conn.peer,
            )
        headers = {k: v for k, v in context.headers.items() if k != PRINCIPAL_HEADER}
        return dataclasses.replace(context, principal=None, headers=headers)

    def is_cancel(self, body: bytes) -> bool:
        """Whether the frame ``body`` is a cancel message (looked at only when its connection
        is at its call bound; a frame that is not one, or not even valid, is left for
        :meth:`~offloop.worker.server.WorkerServer.on_frame` to handle in turn)."""
        if not is_header_frame(body):
            return False
        try:
            frame = decode_header_frame(body, self.header_limits)
            header = self.codecs[frame.protocol.codec_name].read_header(frame.payload)
        except (HeaderError, RemoteProtocolError):
            return False
        return header.name == CANCEL_METHOD and header.type == ONEWAY

    def plaintext_reply(self, body: bytes) -> bytes | None:
        """The frame answering a plaintext call to the TLS port
        (:func:`~offloop.worker.handshake.plaintext_reply`)."""
        return plaintext_reply(
            body, codecs=self.codecs, framed=self.codec, limits=self.header_limits
        )
