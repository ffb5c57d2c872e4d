"""TLS on the worker's Thrift port, from both client modes: accepted, refused at the handshake
for each reason (and said so on both sides, one log line on the worker), plaintext against
TLS and TLS against plaintext, certificates rotated without a restart, and the admin port.

Every refusal is followed by a good call on the same worker: it is still serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import RawClient, ServerThread, metric, wait_until, worker_config
from pki import (
    CALL_TIMEOUT,
    MODES,
    PKI,
    SERVICE,
    blocking_ping,
    client_source,
    loop_ping,
    peer_certificate,
)
from thriftpy2.thrift import TApplicationException

from offloop.client.config import ClientConfig
from offloop.client.connection import ThriftConnection
from offloop.client.network import TlsNetwork
from offloop.errors import (
    BrokenError,
    ConnectError,
    OffloopError,
    RemoteApplicationError,
)
from offloop.tls import ClientTLS, ClientTLSConfig, reload_on_sighup

#: Seconds for something the test waits for; only bounds a hang.
WAIT = 10.0


@pytest.fixture(params=[False, True], ids=["asyncio", "uvloop"])
def start_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerThread]]:
    """Thread-pool workers on the loop kind of the parameter; stopped at the end."""
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        server = ServerThread(worker_config("thread", **overrides), uvloop=request.param)
        started.append(server)
        return server.start()

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def refusals(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_tls_ping_and_mutual_tls(
    pki: PKI, start_worker: Callable[..., ServerThread], sources: list[ClientTLS], mode: str
) -> None:
    ping = MODES[mode]
    tls_worker = start_worker(tls=pki.server_tls(mutual=False))
    assert ping(tls_worker.port, client_source(sources, pki.client_tls())) == "hi"
    mtls_worker = start_worker(tls=pki.server_tls())
    assert ping(mtls_worker.port, client_source(sources, pki.client_tls())) == "hi"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize(
    ("client", "words"),
    [
        ("none", "sent no certificate"),
        ("foreign", "certificate refused"),
        ("expired", "certificate has expired"),
    ],
)
def test_mutual_tls_refusals(
    pki: PKI,
    start_worker: Callable[..., ServerThread],
    sources: list[ClientTLS],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    client: str,
    words: str,
    version: str,
) -> None:
    """A client without a good certificate fails its first call with the reason, and the
    worker logs one line; TLS 1.2 refuses inside the handshake, TLS 1.3 (where the client's
    handshake ends first) on the first read: both are errors of the call."""
    ping = MODES[mode]
    worker = start_worker(tls=pki.server_tls())
    config = {
        "none": ClientTLSConfig(ca=pki.ca_file, server_name="localhost"),
        "foreign": pki.client_tls(pki.foreign_client),
        "expired": pki.client_tls(pki.expired_client),
    }[client]
    bad = client_source(sources, config)
    # Both sides prefer 1.3; a client that stops at 1.2 (no setting says so: the context's
    # own attribute) makes the worker refuse inside the handshake.
    bad.current().maximum_version = ssl.TLSVersion[f"TLSv{version.replace('.', '_')}"]
    with caplog.at_level(logging.WARNING, logger="offloop"):
        with pytest.raises((ConnectError, BrokenError)) as caught:
            ping(worker.port, bad)
        lines = wait_until(lambda: refusals(caplog, "TLS handshake with"), WAIT)
    # One line per connection refused (the loop client may dial twice: THeader, then framed).
    assert lines and all(words in line for line in lines), lines
    assert len({line.split()[3] for line in lines}) == len(lines), lines
    said = str(caught.value)
    if version == "1.2":  # refused inside the client's handshake: its connect fails
        assert "TLS handshake failed" in said, said
    else:  # the client's handshake ends first; the worker closes before the first reply
        assert "closed by peer" in said, said
    assert ping(worker.port, client_source(sources, pki.client_tls())) == "hi"
    assert metric(worker.metrics(), "offloop_worker_protocol_errors_total", reason="tls_handshake")


def test_wrong_server_name_is_refused_by_the_client(
    pki: PKI, start_worker: Callable[..., ServerThread], sources: list[ClientTLS], mode: str
) -> None:
    """The worker's certificate is for ``localhost``: reached at 127.0.0.1 without the
    server-name override, or with the wrong one, the client refuses it."""
    ping = MODES[mode]
    worker = start_worker(tls=pki.server_tls())
    for name in (None, "wrong.example"):
        tls = client_source(sources, pki.client_tls(server_name=name))
        with pytest.raises(ConnectError) as caught:
            ping(worker.port, tls)
        assert "certificate refused" in str(caught.value)
        assert "mismatch" in str(caught.value).lower()
    assert ping(worker.port, client_source(sources, pki.client_tls())) == "hi"


def test_plaintext_client_on_a_tls_port(
    pki: PKI,
    start_worker: Callable[..., ServerThread],
    sources: list[ClientTLS],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """Its first call is answered with a fault that says the port needs TLS (no hang, no
    bare reset); the worker logs one line and goes on serving TLS clients."""
    ping = MODES[mode]
    worker = start_worker(tls=pki.server_tls())
    with caplog.at_level(logging.WARNING, logger="offloop"):
        with pytest.raises(RemoteApplicationError) as caught:
            ping(worker.port, None)
        lines = wait_until(lambda: refusals(caplog, "plaintext to this TLS port"), WAIT)
    assert "requires TLS" in str(caught.value)
    # One line per connection (the loop client may dial twice: THeader, which is closed
    # unanswered, then framed, which is answered).
    assert lines and len({line.split()[3] for line in lines}) == len(lines), lines
    assert any("answered with a fault" in line for line in lines), lines
    # Any Thrift client sees the same: a TApplicationException carrying the words.
    with RawClient(worker.port) as raw, pytest.raises(TApplicationException, match="requires TLS"):
        raw.call("ping", "hi")
    assert ping(worker.port, client_source(sources, pki.client_tls())) == "hi"
    refused = metric(
        worker.metrics(), "offloop_worker_protocol_errors_total", reason="plaintext_on_tls"
    )
    assert refused is not None and refused >= 2


def test_tls_client_on_a_plaintext_port(
    pki: PKI,
    start_worker: Callable[..., ServerThread],
    sources: list[ClientTLS],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """The worker closes at the ClientHello with one line that says so; the client's
    connect fails with a hint that the port is plaintext."""
    ping = MODES[mode]
    worker = start_worker()
    with caplog.at_level(logging.WARNING, logger="offloop"):
        with pytest.raises(ConnectError) as caught:
            ping(worker.port, client_source(sources, pki.client_tls()))
        lines = wait_until(lambda: refusals(caplog, "TLS handshake to this plaintext port"), WAIT)
    assert "plaintext" in str(caught.value)
    assert len(lines) == 1, lines
    assert ping(worker.port, None) == "hi"


def test_silent_connection_times_out_and_probes_pass(
    pki: PKI, start_worker: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that sends nothing is closed after handshake_timeout (one line); one
    closed before its first byte (a TCP health probe) is closed without a word."""
    worker = start_worker(tls=pki.server_tls(handshake_timeout=0.3))
    with caplog.at_level(logging.WARNING, logger="offloop"):
        socket.create_connection(("127.0.0.1", worker.port)).close()  # a probe
        with RawClient(worker.port) as raw:
            assert raw.closed_by_server(timeout=WAIT)
        lines = wait_until(lambda: refusals(caplog, "closing connection from"), WAIT)
    assert len(lines) == 1 and "handshake_timeout" in lines[0], lines


def test_rotated_certificate_applies_to_new_connections(
    pki: PKI, start_worker: Callable[..., ServerThread], sources: list[ClientTLS]
) -> None:
    """The files are rewritten in place; within the polling interval new connections are
    shown the new certificate, while a connection opened before keeps working."""
    worker = start_worker(tls=pki.server_tls(reload_interval=0.05))
    ctx = pki.ssl_client(pki.client)
    before = peer_certificate(worker.port, ctx)
    tls = client_source(sources, pki.client_tls())

    async def scenario() -> None:
        method = SERVICE.methods["ping"]
        conn = await ThriftConnection.connect(
            "127.0.0.1", worker.port, ClientConfig(), network=TlsNetwork(tls)
        )
        try:
            assert await conn.call(method, method.args_cls(msg="a"), timeout=CALL_TIMEOUT) == "a"
            pki.rotate_server("localhost", "rotated.example")
            await asyncio.to_thread(
                wait_until, lambda: peer_certificate(worker.port, ctx) != before, WAIT
            )
            # The connection made before the rotation still works, on its old session.
            assert await conn.call(method, method.args_cls(msg="b"), timeout=CALL_TIMEOUT) == "b"
        finally:
            await conn.close()

    asyncio.run(scenario())
    assert blocking_ping(worker.port, tls) == "hi"


def test_sighup_reloads(pki: PKI, start_worker: Callable[..., ServerThread]) -> None:
    """With polling off, the new certificate is used after SIGHUP, not before."""
    worker = start_worker(tls=pki.server_tls(reload_interval=0))
    ctx = pki.ssl_client(pki.client)
    before = peer_certificate(worker.port, ctx)
    pki.rotate_server("localhost", "rotated.example")
    assert peer_certificate(worker.port, ctx) == before

    async def hup() -> None:
        with reload_on_sighup():
            os.kill(os.getpid(), signal.SIGHUP)
            await asyncio.sleep(0)  # the loop runs the signal's handler
            await asyncio.to_thread(
                wait_until, lambda: peer_certificate(worker.port, ctx) != before, WAIT
            )

    asyncio.run(hup())


def test_admin_port_over_tls(pki: PKI, start_worker: Callable[..., ServerThread]) -> None:
    """admin_tls serves /metrics and the probes over HTTPS with the Thrift port's
    certificate, without asking for a client certificate."""
    import urllib.request

    worker = start_worker(tls=pki.server_tls(), admin_tls=True)
    ctx = pki.ssl_client()  # no client certificate
    url = f"https://localhost:{worker.admin_port}/livez"
    with urllib.request.urlopen(url, context=ctx, timeout=WAIT) as resp:
        assert resp.status == 200
    with pytest.raises(OSError):  # plaintext HTTP to it is not answered as HTTP
        urllib.request.urlopen(f"http://127.0.0.1:{worker.admin_port}/livez", timeout=WAIT)


def test_loop_client_network_errors_are_connect_errors(
    pki: PKI, start_worker: Callable[..., ServerThread], sources: list[ClientTLS]
) -> None:
    """Over TCP and TLS alike, a refused connect is a ConnectError (not sent: retried
    elsewhere by the gateway), an OffloopError that names the worker."""
    worker = start_worker(tls=pki.server_tls())
    tls = client_source(sources, pki.client_tls(server_name="wrong.example"))
    with pytest.raises(ConnectError) as caught:
        asyncio.run(loop_ping(worker.port, TlsNetwork(tls)))
    assert isinstance(caught.value, OffloopError)
    assert f"127.0.0.1:{worker.port}" in str(caught.value)


def test_handshakes_in_progress_are_bounded(
    pki: PKI,
    start_worker: Callable[..., ServerThread],
    sources: list[ClientTLS],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past max_handshakes, a new connection is closed at once (one line per burst); once
    the silent ones go, the port serves again."""
    worker = start_worker(tls=pki.server_tls(max_handshakes=2, handshake_timeout=60.0))
    silent = [socket.create_connection(("127.0.0.1", worker.port)) for _ in range(2)]
    try:
        with caplog.at_level(logging.WARNING, logger="offloop"):
            # The accept of the silent ones may come after this one's: retry until refused.
            def refused() -> bool:
                with RawClient(worker.port) as extra:
                    return extra.closed_by_server(timeout=0.5)

            wait_until(refused, WAIT)
            lines = refusals(caplog, "(max_handshakes)")
        assert len(lines) == 1, lines
    finally:
        for sock in silent:
            sock.close()
    tls = client_source(sources, pki.client_tls())
    assert wait_until(lambda: _ping_or_none(worker.port, tls), WAIT) == "hi"


def _ping_or_none(port: int, tls: ClientTLS) -> Any:
    try:
        return blocking_ping(port, tls)
    except OffloopError:
        return None


def test_a_port_in_use_leaves_no_certificate_watcher(pki: PKI) -> None:
    # Item 20: start() fails on the bind; the ServerTLS it made must not keep its thread.
    import threading

    from offloop.worker.server import WorkerServer

    def watchers() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("offloop-tls-")}

    before = watchers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = worker_config("thread", tls=pki.server_tls(), port=port, admin_port=None)
        server = WorkerServer(config)

        async def main() -> None:
            try:
                with pytest.raises(OSError):
                    await server.start()
                assert watchers() <= before
            finally:
                await server.shutdown(0)

        asyncio.run(main())


def test_a_reset_before_the_first_byte_is_no_handshake_failure(
    pki: PKI, start_worker: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    # Item 21: a client that connects and resets at once tried no handshake.
    import struct

    worker = start_worker(tls=pki.server_tls())
    with caplog.at_level(logging.DEBUG, logger="offloop"):
        sock = socket.create_connection(("127.0.0.1", worker.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, no byte sent
        wait_until(lambda: refusals(caplog, "reset before its first byte"), WAIT)
    assert not refusals(caplog, "TLS handshake with")
    errors = metric(
        worker.metrics(), "offloop_worker_protocol_errors_total", reason="tls_handshake"
    )
    assert not errors
