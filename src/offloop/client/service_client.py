"""Calling a worker's service from Python by method name: :class:`AsyncClient` and :class:`Client`.

Both take the IDL, the service's name and the worker's address, build each call's argument
struct from keyword arguments and return the method's value (a declared exception is raised
as itself)::

    async with AsyncClient("textlab.thrift", "TextLab", "127.0.0.1:9090") as client:
        tree = await client.call("parse", sentence="the dog saw a man")

    with Client("textlab.thrift", "TextLab", "127.0.0.1:9090") as client:
        print(client.call("ping", msg="hi"))

:class:`AsyncClient` keeps many calls in flight on a small pool of connections
(:class:`~offloop.client.pool.ConnectionPool`); :class:`Client` is one blocking connection
(:class:`~offloop.client.blocking.BlockingClient`), for scripts and threads. Both are the same
call layer underneath, and raise the same errors (:mod:`offloop.errors`).
"""

from __future__ import annotations

import time
from types import ModuleType, TracebackType
from typing import Any

from offloop.client.blocking import BlockingClient
from offloop.client.config import ClientConfig
from offloop.client.network import TCP, Network
from offloop.client.pool import ConnectionPool
from offloop.errors import EncodeError, LocalProtocolError
from offloop.idl import MethodInfo, ServiceInfo, load_idl, service_info

__all__ = ["AsyncClient", "Client"]


def _service(idl: str | ModuleType, service: str) -> ServiceInfo:
    module = load_idl(idl) if isinstance(idl, str) else idl
    return service_info(module, service)


def _address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"address must look like host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _arguments(service: ServiceInfo, name: str, kwargs: dict[str, Any]) -> tuple[MethodInfo, Any]:
    method = service.methods.get(name)
    if method is None:
        raise LocalProtocolError(f"service {service.name} has no method {name!r}")
    unknown = sorted(set(kwargs) - set(method.arg_names))
    if unknown:
        raise LocalProtocolError(
            f"{service.name}.{name} takes {', '.join(method.arg_names) or 'no arguments'}; "
            f"not {', '.join(unknown)}"
        )
    return method, method.args_cls(**kwargs)


def _caller_error(service: ServiceInfo, method: str, exc: EncodeError) -> LocalProtocolError:
    """The values came from the caller: their encoding failing is the caller's fault."""
    return LocalProtocolError(f"{service.name}.{method}: {exc}")


class AsyncClient:
    """An asyncio client of one service on one worker.

    Args:
        idl: the ``.thrift`` file's path, or a module loaded from it.
        service: the service's name in the IDL.
        address: the worker, ``"host:port"`` or ``(host, port)``.
        config: protocol (it must match the worker's), limits and pool size.
        timeout: the default deadline of a call, seconds.
        network: how to connect (TCP; an in-memory network from :mod:`offloop.testing`).

    Raises:
        IdlError: the IDL or the service is missing.
        ValueError: the address is malformed.
    """

    def __init__(
        self,
        idl: str | ModuleType,
        service: str,
        address: str | tuple[str, int],
        *,
        config: ClientConfig | None = None,
        timeout: float = 30.0,
        network: Network = TCP,
    ) -> None:
        self.service = _service(idl, service)
        host, port = _address(address)
        config = config or ClientConfig()
        self.timeout = timeout
        self._pool = ConnectionPool(host, port, config, size=config.pool_size, network=network)

    async def call(self, method: str, /, *, timeout: float | None = None, **args: Any) -> Any:
        """Call ``method`` with keyword arguments; returns its value.

        Raises:
            LocalProtocolError: no such method, an argument it does not take, or a value
                the IDL cannot encode.
            Exception: what :meth:`~offloop.client.connection.ThriftConnection.call`
                raises: a declared exception as itself, :class:`~offloop.errors.Overloaded`,
                :class:`~offloop.errors.DeadlineExceeded`, transport errors...
        """
        info, struct = _arguments(self.service, method, args)
        try:
            return await self._pool.call(info, struct, timeout=timeout or self.timeout)
        except EncodeError as exc:
            raise _caller_error(self.service, method, exc) from exc

    async def close(self) -> None:
        """Close the connections; calls in flight fail with ``ClosedError``."""
        await self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Client:
    """A blocking client of one service on one worker: one connection, one call at a time.

    Not for use on an event loop's thread (it blocks); one thread at a time.

    Args:
        idl: the ``.thrift`` file's path, or a module loaded from it.
        service: the service's name in the IDL.
        address: the worker, ``"host:port"`` or ``(host, port)``.
        config: protocol (it must match the worker's), limits.
        timeout: the default deadline of a call, seconds.
    """

    def __init__(
        self,
        idl: str | ModuleType,
        service: str,
        address: str | tuple[str, int],
        *,
        config: ClientConfig | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.service = _service(idl, service)
        host, port = _address(address)
        self.timeout = timeout
        self._client = BlockingClient(host, port, config or ClientConfig())

    def call(self, method: str, /, *, timeout: float | None = None, **args: Any) -> Any:
        """Call ``method`` with keyword arguments; returns its value.

        Raises:
            LocalProtocolError: no such method, an argument it does not take, or a value
                the IDL cannot encode.
            Exception: what :meth:`~offloop.client.blocking.BlockingClient.call` raises.
        """
        info, struct = _arguments(self.service, method, args)
        limit = timeout or self.timeout
        try:
            return self._client.call(info, struct, time.monotonic() + limit, limit)
        except EncodeError as exc:
            raise _caller_error(self.service, method, exc) from exc

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
