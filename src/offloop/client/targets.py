"""Backend targets: where a service's backends are, as text in gRPC's naming convention.

Sans-I/O: this module only parses and prints; :mod:`offloop.client.discovery` resolves.

==================================  =================================================
``host:port``, ``[v6]:port``        one static backend (as it always was)
``dns:///name:port``                one backend per A/AAAA record of ``name``
``dns://NAMESERVER[:PORT]/name:port``  the same, asking that DNS server (port 53 default)
``dns+srv:///_thrift._tcp.name``    one backend per SRV record: its host and port
``dns+srv://NAMESERVER[:PORT]/...``    the same, asking that DNS server
==================================  =================================================

A plain ``(host, port)`` pair is a static target too (:func:`as_target`), so that code and
config written before discovery existed keeps working.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DNS_PORT",
    "Address",
    "DnsTarget",
    "StaticTarget",
    "Target",
    "TargetLike",
    "as_target",
    "parse_target",
]

#: The DNS server port used when a ``dns://NAMESERVER/`` authority names none.
DNS_PORT = 53

#: A backend's address: host (a name or an IP address) and TCP port.
Address = tuple[str, int]


class StaticTarget(NamedTuple):
    """One backend at a fixed address; equal to the plain ``(host, port)`` tuple."""

    host: str
    port: int

    @property
    def source(self) -> str:
        """What metrics and ``/readyz`` give as the backend's source."""
        return "static"

    def __str__(self) -> str:
        return _join(self.host, self.port)


@dataclass(frozen=True)
class DnsTarget:
    """Backends found by DNS.

    Attributes:
        name: the name to resolve (for SRV: the full ``_service._proto.name``).
        port: the backends' port (A/AAAA); None for SRV, whose records carry it.
        nameserver: the DNS server to ask, ``(ip, port)``; None for the system's resolver
            configuration (``/etc/resolv.conf``).
        srv: whether SRV records are resolved (else A and AAAA).
    """

    name: str
    port: int | None
    nameserver: Address | None = None
    srv: bool = False

    def __post_init__(self) -> None:
        if self.srv != (self.port is None):
            raise ValueError("a dns+srv target has no port; a dns target needs one")

    @property
    def source(self) -> str:
        """What metrics and ``/readyz`` give as the source of its backends: the target."""
        return str(self)

    def __str__(self) -> str:
        scheme = "dns+srv" if self.srv else "dns"
        authority = "" if self.nameserver is None else _join(*self.nameserver)
        path = self.name if self.port is None else _join(self.name, self.port)
        return f"{scheme}://{authority}/{path}"


#: A parsed target.
Target = StaticTarget | DnsTarget
#: What a config may hold: a target, or a plain ``(host, port)`` pair (static).
TargetLike = tuple[str, int] | DnsTarget


def as_target(value: TargetLike) -> Target:
    """``value`` as a :data:`Target` (a plain pair becomes a :class:`StaticTarget`)."""
    if isinstance(value, DnsTarget | StaticTarget):
        return value
    host, port = value
    return StaticTarget(host, port)


def parse_target(text: str) -> Target:
    """Parse one target (see the module docstring).

    Raises:
        ValueError: the text is not a target; the message names the part at fault.
    """
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if "/" in text:
            raise ValueError(f"{text!r}: a target is host:port or dns:///name:port")
        host, port = _split(text, "host:port", text)
        return StaticTarget(host, port)
    scheme = scheme.lower()
    if scheme not in ("dns", "dns+srv"):
        raise ValueError(f"{text!r}: unknown scheme {scheme!r} (use dns:// or dns+srv://)")
    authority, slash, path = rest.partition("/")
    if not slash or not path:
        raise ValueError(f"{text!r}: no name after {scheme}://{authority}/")
    nameserver = _nameserver(authority, text) if authority else None
    if scheme == "dns+srv":
        if ":" in path:
            raise ValueError(
                f"{text!r}: a dns+srv name has no port ({path!r}): its SRV records give it"
            )
        return DnsTarget(_name(path, text), None, nameserver, srv=True)
    name, port = _split(path, "name:port", text)
    return DnsTarget(_name(name, text), port, nameserver)


def _nameserver(authority: str, text: str) -> Address:
    if "]:" in authority or (authority.count(":") == 1 and not authority.startswith("[")):
        host, port = _split(authority, "NAMESERVER:PORT", text)
    else:  # no port: a name or IPv4 address, [v6] or a bare IPv6 address
        host, port = authority.removeprefix("[").removesuffix("]"), DNS_PORT
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: the DNS server {host!r} must be an IP address (nothing resolves it)"
        ) from None
    return host, port


def _split(part: str, form: str, text: str) -> Address:
    host, colon, port = part.rpartition(":")
    if not colon:
        raise ValueError(f"{text!r}: {part!r} has no port (expected {form})")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"{text!r}: {part!r} has no host (expected {form})")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port {port!r} is not a number from 1 to 65535")
    return host, int(port)


def _name(name: str, text: str) -> str:
    labels = name.rstrip(".").split(".")
    if not name or any(not label or len(label) > 63 or " " in label for label in labels):
        raise ValueError(f"{text!r}: {name!r} is not a DNS name")
    return name


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
