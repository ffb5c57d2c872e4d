"""TLS in front of and between the tiers: settings, contexts, and certificates reloaded from
their files.

Settings are data (:class:`ServerTLSConfig` for a port that accepts TLS, the gateway's front
and the worker's Thrift port; :class:`ClientTLSConfig` for the gateway's connections to
workers). Their files are read when a server or client starts, into a *source* of contexts
(:class:`ServerTLS`, :class:`ClientTLS`) that every new connection asks for the current
context, so a certificate rotated on disk (Kubernetes rewrites a mounted Secret in place) is
used by the next connection, while connections already open keep the one they shook hands
with. A source rebuilds its context:

- when its files change: a thread per source compares their ``stat`` (modification time,
  inode, size) every ``reload_interval`` seconds, off the event loop and off every call's
  path;
- on SIGHUP (:func:`reload_on_sighup`), at once.

A rebuild that fails (a key written before its certificate, a file half copied) keeps the
current context and logs one line per change of the files; the next change tries again.

Servers that take one context for good (uvicorn, Tornado, asyncio's ``start_server``) get the
source's :meth:`ServerTLS.front_door`: a context whose SNI callback, which OpenSSL runs for every
ClientHello (with or without a server name), hands the handshake to the current context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from offloop.errors import Blame, OffloopError

__all__ = [
    "ClientTLS",
    "ClientTLSConfig",
    "ServerTLS",
    "ServerTLSConfig",
    "TLSConfigError",
    "TLSHandshakeError",
    "TLSVersion",
    "WorkerTLSConfig",
    "describe_handshake_error",
    "looks_like_tls",
    "reload_all",
    "reload_on_sighup",
]

log = logging.getLogger("offloop.tls")

TLSVersion = Literal["1.2", "1.3"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: The first byte of every TLS handshake record (a ClientHello starts with it): no framed
#: Thrift message does, since its length would be over 352 MiB.
TLS_HANDSHAKE_BYTE = 0x16


class TLSConfigError(OffloopError):
    """A TLS setting names a file that is missing or unreadable, or a key that does not
    match its certificate."""

    blame = Blame.CALLER
    PUBLIC = None


class TLSHandshakeError(ConnectionError):
    """A TLS handshake failed; the message says why, in words (see
    :func:`describe_handshake_error`)."""


@dataclass(frozen=True)
class ServerTLSConfig:
    """TLS on a port that accepts connections; off unless ``cert`` is given.

    Attributes:
        cert: PEM file of the server's certificate (its chain after it); turns TLS on.
        key: PEM file of the certificate's private key; unset when it is in ``cert``'s file.
        client_ca: PEM file of the CA(s) that sign client certificates; when given, a client
            without a certificate signed by one of them is refused at the handshake (mutual
            TLS).
        min_version: the oldest TLS version accepted, ``1.2`` or ``1.3``.
        reload_interval: seconds between checks of the files for a change (a rotated
            certificate is then used by new connections); 0 for none (SIGHUP still reloads).
    """

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    min_version: TLSVersion = "1.2"
    reload_interval: float = 10.0

    def __post_init__(self) -> None:
        _check_common(self.min_version, self.reload_interval)

    @property
    def enabled(self) -> bool:
        """Whether the port serves TLS."""
        return self.cert is not None

    def check(self) -> None:
        """Check the settings that only make sense together (each field alone is checked
        on creation, so that variants can be made one field at a time).

        Raises:
            TLSConfigError: a key or client CA without a certificate.
        """
        if self.cert is None:
            for name in ("key", "client_ca"):
                if getattr(self, name) is not None:
                    raise TLSConfigError(f"tls_{name} needs tls_cert (TLS is on with a cert)")


@dataclass(frozen=True)
class WorkerTLSConfig(ServerTLSConfig):
    """TLS on the worker's Thrift port; off unless ``cert`` is given.

    Attributes:
        cert: PEM file of the server's certificate (its chain after it); turns TLS on.
        key: PEM file of the certificate's private key; unset when it is in ``cert``'s file.
        client_ca: PEM file of the CA(s) that sign client certificates; when given, a client
            without a certificate signed by one of them is refused at the handshake (mutual
            TLS).
        min_version: the oldest TLS version accepted, ``1.2`` or ``1.3``.
        reload_interval: seconds between checks of the files for a change (a rotated
            certificate is then used by new connections); 0 for none (SIGHUP still reloads).
        handshake_timeout: seconds a new connection has to send its first byte and complete
            its TLS handshake before it is closed (the admin port's too).
        max_handshakes: TLS handshakes the Thrift port runs at once; a connection accepted
            past it is closed at once.
    """

    handshake_timeout: float = 10.0
    max_handshakes: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.handshake_timeout > 0:
            raise ValueError("handshake_timeout must be positive")
        if self.max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1")


@dataclass(frozen=True)
class ClientTLSConfig:
    """TLS on connections a client opens; off unless ``ca`` or ``cert`` is given.

    Attributes:
        ca: PEM file of the CA(s) the server's certificate must be signed by; unset for the
            system's CAs (when ``cert`` turns TLS on).
        cert: PEM file of the client certificate presented to servers that ask for one
            (mutual TLS).
        key: PEM file of the client certificate's private key; unset when it is in
            ``cert``'s file.
        server_name: the name the server's certificate must carry, instead of the host
            connected to (for servers reached by IP address, as pods are); also sent as SNI.
        min_version: the oldest TLS version accepted, ``1.2`` or ``1.3``.
        reload_interval: seconds between checks of the files for a change; 0 for none
            (SIGHUP still reloads).
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    min_version: TLSVersion = "1.2"
    reload_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.server_name is not None and not self.server_name.strip():
            raise ValueError("backend_tls_server_name must not be blank")
        _check_common(self.min_version, self.reload_interval)

    @property
    def enabled(self) -> bool:
        """Whether connections use TLS."""
        return self.ca is not None or self.cert is not None

    def check(self) -> None:
        """Check the settings that only make sense together.

        Raises:
            TLSConfigError: a key without a certificate, or a server name without TLS.
        """
        if self.key is not None and self.cert is None:
            raise TLSConfigError("backend_tls_key needs backend_tls_cert")
        if self.server_name is not None and not self.enabled:
            raise TLSConfigError("backend_tls_server_name needs backend_tls_ca (TLS is off)")


def _check_common(min_version: str, reload_interval: float) -> None:
    if min_version not in _VERSIONS:
        raise ValueError(f"min_version must be '1.2' or '1.3', not {min_version!r}")
    if reload_interval < 0:
        raise ValueError("reload_interval must be >= 0 (0: no polling)")


# -- contexts --------------------------------------------------------------------------------


def _check_file(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from exc


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    _check_file(cert, "certificate")
    if key is not None:
        _check_file(key, "key")
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSConfigError(
                f"the TLS key {key} does not match the certificate {cert}"
            ) from exc
        with_key = f" with the key {key}" if key is not None else " (and its key)"
        raise TLSConfigError(
            f"cannot load the TLS certificate {cert}{with_key}: {exc.reason or exc}"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca: str, what: str) -> None:
    _check_file(ca, what)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"cannot load the {what} {ca}: {exc.reason or exc}") from exc


def server_context(config: ServerTLSConfig) -> ssl.SSLContext:
    """A server context for ``config`` (TLS must be on).

    Raises:
        TLSConfigError: a file is missing or unreadable, or the key does not match.
    """
    assert config.cert is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    _load_chain(ctx, config.cert, config.key)
    if config.client_ca is not None:
        _load_ca(ctx, config.client_ca, "client CA")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(config: ClientTLSConfig) -> ssl.SSLContext:
    """A client context for ``config``: the server's certificate verified, host name included.

    Raises:
        TLSConfigError: a file is missing or unreadable, or the key does not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    ctx.minimum_version = _VERSIONS[config.min_version]
    if config.ca is not None:
        _load_ca(ctx, config.ca, "CA")
    else:
        ctx.load_default_certs()
    if config.cert is not None:
        _load_chain(ctx, config.cert, config.key)
    return ctx


# -- sources: the current context, rebuilt when the files change ----------------------------

#: Every open source of the process, for SIGHUP; weak, so that a source nobody holds goes.
_SOURCES: weakref.WeakSet[_Source] = weakref.WeakSet()


Signature = tuple[tuple[int, int, int] | None, ...]


def _stat(files: tuple[str, ...]) -> Signature:
    out: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = os.stat(path)  # follows the symlinks of a mounted Secret
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_ino, st.st_size))
    return tuple(out)


class _Source:
    """A context built from files, rebuilt when they change; see the module docstring."""

    def __init__(
        self,
        name: str,
        files: tuple[str, ...],
        build: Callable[[], ssl.SSLContext],
        interval: float,
    ) -> None:
        self.name = name
        self._files = files
        self._build = build
        self._lock = threading.Lock()  # one rebuild at a time (the watcher, a SIGHUP, a test)
        self._signature = _stat(files)
        self._context = build()
        #: Rebuilds that took, since start.
        self.reloads = 0
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        _SOURCES.add(self)
        if interval > 0:
            self._thread = threading.Thread(
                target=_watch,
                args=(weakref.ref(self), self._wake, interval),
                name=f"offloop-tls-{name}",
                daemon=True,
            )
            self._thread.start()

    def current(self) -> ssl.SSLContext:
        """The context a new connection uses."""
        return self._context

    def check(self) -> bool:
        """Rebuild the context if the files changed since the last attempt; True if it was
        rebuilt."""
        return self._rebuild(force=False)

    def reload(self) -> bool:
        """Rebuild the context now, whether or not the files changed; True if it took."""
        return self._rebuild(force=True)

    def wake(self) -> None:
        """Ask the watcher thread to reload now (from a signal handler: no file I/O here)."""
        if self._thread is None:
            self.reload()
        else:
            self._wake.set()

    def close(self) -> None:
        """Stop watching the files (idempotent)."""
        self._closed = True
        _SOURCES.discard(self)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._wake.set()
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)

    def _rebuild(self, *, force: bool) -> bool:
        with self._lock:
            signature = _stat(self._files)
            if not force and signature == self._signature:
                return False
            self._signature = signature  # a failed attempt is not retried until they change
            try:
                context = self._build()
            except TLSConfigError as exc:
                log.warning("keeping the current %s TLS context: %s", self.name, exc)
                return False
            self._context = context
            self.reloads += 1
        log.info("reloaded the %s TLS certificates from %s", self.name, ", ".join(self._files))
        return True


def _watch(ref: weakref.ReferenceType[_Source], wake: threading.Event, interval: float) -> None:
    """The watcher thread of one source: holds it only while checking, so it ends when the
    source is closed or dropped."""
    while True:
        woken = wake.wait(interval)
        wake.clear()
        source = ref()
        if source is None or source._closed:
            return
        try:
            if woken:
                source.reload()
            else:
                source.check()
        except Exception:  # a bug: say it, and keep the current context and the watch
            log.exception("checking the %s TLS certificates failed", source.name)
        del source


class ServerTLS(_Source):
    """The contexts of a port that accepts TLS, rebuilt when its files change.

    Args:
        config: the port's settings (TLS must be on).
        name: what the log calls it (``worker``, ``front``).

    Raises:
        TLSConfigError: a file is missing or unreadable, or the key does not match.
    """

    def __init__(self, config: ServerTLSConfig, name: str = "server") -> None:
        config.check()
        if not config.enabled:
            raise ValueError("ServerTLS needs a config with a certificate")
        self.config = config
        files = tuple(f for f in (config.cert, config.key, config.client_ca) if f is not None)
        super().__init__(name, files, lambda: server_context(config), config.reload_interval)
        self._front: ssl.SSLContext | None = None

    def front_door(self) -> ssl.SSLContext:
        """One context for a server that takes a context for good: each handshake it starts
        is handed to :meth:`current` (by its SNI callback), so rotated certificates apply."""
        if self._front is None:
            front = server_context(self.config)
            ref = weakref.ref(self)

            def hand_over(
                sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext
            ) -> None:
                source = ref()
                if source is not None:
                    sslobj.context = source.current()

            front.sni_callback = hand_over
            self._front = front
        return self._front


class ClientTLS(_Source):
    """The context of a client's connections, rebuilt when its files change.

    Args:
        config: the client's settings (TLS must be on).
        name: what the log calls it.

    Raises:
        TLSConfigError: a file is missing or unreadable, or the key does not match.
    """

    def __init__(self, config: ClientTLSConfig, name: str = "backend") -> None:
        config.check()
        if not config.enabled:
            raise ValueError("ClientTLS needs a config with a CA or a certificate")
        self.config = config
        files = tuple(f for f in (config.ca, config.cert, config.key) if f is not None)
        super().__init__(name, files, lambda: client_context(config), config.reload_interval)

    def server_name(self, host: str) -> str:
        """The name ``host``'s certificate must carry (and the SNI sent)."""
        return self.config.server_name or host


def reload_all() -> None:
    """Reload every open source of the process now (what SIGHUP does); the rebuilds run on
    the sources' watcher threads."""
    for source in list(_SOURCES):
        source.wake()


@contextlib.contextmanager
def reload_on_sighup(loop: asyncio.AbstractEventLoop | None = None) -> Iterator[None]:
    """Reload every TLS source of the process on SIGHUP while in the block (the entry points
    of ``offloop worker`` and ``offloop gateway``)."""
    loop = loop or asyncio.get_running_loop()

    def on_hup() -> None:
        log.info("SIGHUP received: reloading TLS certificates")
        reload_all()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


# -- what a failed handshake means ------------------------------------------------------------

#: OpenSSL's reasons, in words, with what usually causes them.
_REASONS = {
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (is its port plaintext?)",
    "HTTP_REQUEST": "the peer sent plaintext HTTP to a TLS port",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate (mutual TLS is on)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the handshake",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer refused our certificate: expired",
    "UNSUPPORTED_PROTOCOL": "no TLS version both sides accept",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version both sides accept",
}


def describe_handshake_error(exc: BaseException) -> str:
    """What a failed TLS handshake means, in one line (for logs and errors, on both sides)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLEOFError | ConnectionResetError | BrokenPipeError) or (
        isinstance(exc, ConnectionError) and "closed" in str(exc)
    ):
        return (
            "the peer closed the connection during the handshake: it refused our certificate "
            "or wanted one, or its port is plaintext"
        )
    if isinstance(exc, TimeoutError):
        return "no handshake in time"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        words = _REASONS.get(reason)
        return f"{words} ({reason})" if words else str(exc)
    return str(exc) or type(exc).__name__


def looks_like_tls(data: bytes) -> bool:
    """Whether the first bytes of a connection are a TLS handshake record."""
    return bool(data) and data[0] == TLS_HANDSHAKE_BYTE
