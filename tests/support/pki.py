"""Certificates for TLS tests, made by ``trustme``, and clients of a worker over TLS in both
client modes (tests/tls).

:class:`PKI` holds a CA, a server certificate for ``localhost`` (and no IP address, so that
a worker reached at 127.0.0.1 needs the server-name override), a client certificate from the
same CA, one from another CA and an expired one; each as PEM files, as the flags take them.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from harness import SERVICE

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.network import TCP, Network, TlsNetwork
from offloop.tls import ClientTLS, ClientTLSConfig, ServerTLSConfig, WorkerTLSConfig

#: Seconds any one call of a test may take; only bounds a hang.
CALL_TIMEOUT = 10.0


@dataclass
class Pair:
    """A certificate (chain) file and its key file."""

    cert: str
    key: str


class PKI:
    """Certificates for one test, written under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        self.server = self.issue("server", "localhost")
        self.client = self.issue("client", "gateway.example")
        self.foreign_client = self.issue("foreign", "gateway.example", ca=self.other_ca)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        self.expired_client = self.issue(
            "expired", "gateway.example", not_before=past, not_after=past + datetime.timedelta(1)
        )

    def _write(self, name: str, data: bytes) -> str:
        path = self.root / name
        path.write_bytes(data)
        return str(path)

    def issue(self, name: str, *names: str, ca: trustme.CA | None = None, **kw: Any) -> Pair:
        """A new certificate for ``names`` as files ``name.pem`` and ``name.key``."""
        leaf = (ca or self.ca).issue_cert(*names, **kw)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return Pair(
            self._write(f"{name}.pem", chain),
            self._write(f"{name}.key", leaf.private_key_pem.bytes()),
        )

    def rotate_server(self, *names: str) -> None:
        """Overwrite the server's files with a new certificate for ``names`` (as a Secret
        update does), the key first, as a careless copy would."""
        leaf = self.ca.issue_cert(*names)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        Path(self.server.key).write_bytes(leaf.private_key_pem.bytes())
        Path(self.server.cert).write_bytes(chain)

    def server_tls(self, *, mutual: bool = True, **kw: Any) -> WorkerTLSConfig:
        """The worker's settings (the front takes them as its own): mutual TLS unless
        ``mutual`` is False."""
        return WorkerTLSConfig(
            cert=self.server.cert,
            key=self.server.key,
            client_ca=self.ca_file if mutual else None,
            **kw,
        )

    def front_tls(self, *, mutual: bool = False, **kw: Any) -> ServerTLSConfig:
        """The gateway front's settings (HTTPS; mutual TLS if ``mutual``)."""
        return ServerTLSConfig(
            cert=self.server.cert,
            key=self.server.key,
            client_ca=self.ca_file if mutual else None,
            **kw,
        )

    def client_tls(self, pair: Pair | None = None, **kw: Any) -> ClientTLSConfig:
        """The gateway's settings: trust the CA, present ``pair`` (default: the good client
        certificate), reach ``localhost``'s certificate at 127.0.0.1."""
        pair = pair or self.client
        kw.setdefault("server_name", "localhost")
        return ClientTLSConfig(ca=self.ca_file, cert=pair.cert, key=pair.key, **kw)

    def ssl_client(self, pair: Pair | None = None) -> ssl.SSLContext:
        """A plain ``ssl`` client context trusting the CA (for HTTPS and raw checks)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if pair is not None:
            ctx.load_cert_chain(pair.cert, pair.key)
        return ctx


def client_source(sources: list[ClientTLS], config: ClientTLSConfig) -> ClientTLS:
    source = ClientTLS(config)
    sources.append(source)
    return source


async def loop_ping(port: int, network: Network = TCP, msg: str = "hi") -> Any:
    """One ``ping`` over a new multiplexed connection (loop mode's client)."""
    method = SERVICE.methods["ping"]
    conn = await ThriftConnection.connect("127.0.0.1", port, ClientConfig(), network=network)
    try:
        return await conn.call(method, method.args_cls(msg=msg), timeout=CALL_TIMEOUT)
    finally:
        await conn.close()


def loop_ping_sync(port: int, tls: ClientTLS | None, msg: str = "hi") -> Any:
    network: Network = TCP if tls is None else TlsNetwork(tls)
    return asyncio.run(loop_ping(port, network, msg))


def blocking_ping(port: int, tls: ClientTLS | None, msg: str = "hi") -> Any:
    """One ``ping`` over a new blocking client (actor mode's client)."""
    method = SERVICE.methods["ping"]
    client = BlockingClient("127.0.0.1", port, ClientConfig(), tls=tls)
    try:
        return client.call(
            method, method.args_cls(msg=msg), time.monotonic() + CALL_TIMEOUT, CALL_TIMEOUT
        )
    finally:
        client.close()


#: Both client modes: a function that pings a worker's port with a TLS source (or None).
MODES = {"loop": loop_ping_sync, "actor": blocking_ping}


def peer_certificate(port: int, ctx: ssl.SSLContext, server_name: str = "localhost") -> bytes:
    """The DER certificate a new TLS connection to ``port`` is shown."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
