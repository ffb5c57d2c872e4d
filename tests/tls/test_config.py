"""TLS settings and contexts without a network: validation, file errors said clearly, and
reloads that fail keeping the current context."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pki import PKI

from offloop.tls import (
    ClientTLS,
    ClientTLSConfig,
    ServerTLS,
    ServerTLSConfig,
    TLSConfigError,
    WorkerTLSConfig,
    looks_like_tls,
)


def test_settings_are_checked(pki: PKI) -> None:
    """Each field on creation; fields that go together when TLS is set up (start-up), so that
    variants can be made one field at a time."""
    with pytest.raises(ValueError, match="min_version"):
        ServerTLSConfig(cert="a", key="b", min_version="1.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="handshake_timeout"):
        WorkerTLSConfig(handshake_timeout=0)
    with pytest.raises(ValueError, match="blank"):
        ClientTLSConfig(server_name=" ")
    for config in (ServerTLSConfig(key="k.pem"), ServerTLSConfig(client_ca="ca.pem")):
        with pytest.raises(TLSConfigError, match="needs tls_cert"):
            config.check()
    with pytest.raises(TLSConfigError, match="needs backend_tls_cert"):
        ClientTLSConfig(ca="ca.pem", key="k.pem").check()
    with pytest.raises(TLSConfigError, match="needs backend_tls_ca"):
        ClientTLSConfig(server_name="worker.example").check()
    assert not ServerTLSConfig().enabled and not ClientTLSConfig().enabled
    assert ClientTLSConfig(ca="ca.pem").enabled
    # A key in the certificate's own file needs no key setting.
    both = Path(pki.root / "both.pem")
    both.write_text(Path(pki.server.cert).read_text() + Path(pki.server.key).read_text())
    ServerTLS(ServerTLSConfig(cert=str(both), reload_interval=0)).close()


def test_missing_file_and_mismatched_key(pki: PKI, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TLSConfigError, match=r"cannot read the TLS certificate .*nope\.pem"):
        ServerTLS(ServerTLSConfig(cert=missing, key=pki.server.key))
    with pytest.raises(TLSConfigError, match="client CA"):
        ServerTLS(ServerTLSConfig(cert=pki.server.cert, key=pki.server.key, client_ca=missing))
    with pytest.raises(TLSConfigError, match="does not match the certificate"):
        ServerTLS(ServerTLSConfig(cert=pki.server.cert, key=pki.client.key))
    with pytest.raises(TLSConfigError, match="does not match the certificate"):
        ClientTLS(ClientTLSConfig(ca=pki.ca_file, cert=pki.client.cert, key=pki.server.key))


def test_a_failed_reload_keeps_the_current_context(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    source = ServerTLS(pki.server_tls(reload_interval=0))
    try:
        first = source.current()
        assert not source.check()  # nothing changed
        Path(pki.server.cert).write_text("not a certificate")
        with caplog.at_level(logging.WARNING, logger="offloop.tls"):
            assert not source.check()
            assert not source.check()  # the same broken files: tried once, said once
        assert source.current() is first
        assert len(caplog.records) == 1 and "keeping the current" in caplog.records[0].message
        pki.rotate_server("localhost")
        assert source.check()
        assert source.current() is not first and source.reloads == 1
    finally:
        source.close()


def test_tls_is_told_from_thrift_by_its_first_byte() -> None:
    assert looks_like_tls(b"\x16\x03\x01\x02\x00")
    assert not looks_like_tls(b"\x00\x00\x00\x1a\x80\x01")
    assert not looks_like_tls(b"")


def test_flags_and_environment_build_the_settings() -> None:
    """The flags of the issue, and their OFFLOOP_* variables, land in the config objects."""
    from offloop.cli import parse

    worker = parse(
        ["worker", "--idl", "t.thrift", "--service", "S", "--handler", "m:H",
         "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem",
         "--admin-port", "0", "--admin-tls"],
        environ={"OFFLOOP_TLS_HANDSHAKE_TIMEOUT": "2.5"},
    ).worker  # fmt: skip
    assert worker is not None
    assert (worker.tls.cert, worker.tls.key, worker.tls.client_ca) == ("c.pem", "k.pem", "ca.pem")
    assert worker.tls.handshake_timeout == 2.5 and worker.admin.tls
    gateway = parse(
        ["gateway", "--idl", "t.thrift", "--backend", "10.0.0.7:9090",
         "--backend-tls-ca", "ca.pem", "--backend-tls-cert", "g.pem", "--backend-tls-key", "g.key",
         "--backend-tls-server-name", "worker.example", "--tls-cert", "f.pem", "--tls-key", "f.key",
         "--tls-client-ca", "users-ca.pem"],
        environ={},
    ).gateway  # fmt: skip
    assert gateway is not None
    assert gateway.backend_tls == ClientTLSConfig(
        ca="ca.pem", cert="g.pem", key="g.key", server_name="worker.example"
    )
    assert gateway.tls == ServerTLSConfig(cert="f.pem", key="f.key", client_ca="users-ca.pem")
