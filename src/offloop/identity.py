"""Who is calling: the caller's identity, as the gateway established it, in a context variable.

The gateway's front door (:mod:`offloop.gateway.door`) sets :data:`CALLER` for the duration of
each call it lets through: the name of an API key, the subject of a JWT bearer token, or, with
authentication off, the client's address. Code that runs in that call's context reads it with
:func:`current_caller`: a handler of an embedded gateway, a log filter, and the client layer
(the header transport passes it on to the worker). This module sits at the bottom of the layers
so that any of them may read it; it knows nothing of HTTP.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CALLER", "Identity", "IdentityKind", "current_caller"]

#: How an identity was established: an API key, a JWT bearer token, or (authentication off)
#: the client's network address.
IdentityKind = Literal["key", "jwt", "address"]


@dataclass(frozen=True, slots=True)
class Identity:
    """One caller.

    Attributes:
        name: the API key's name, the token's ``sub`` claim, or the client's address.
        kind: how it was established.
        scopes: the token's scopes (empty for an API key or an address).
    """

    name: str
    kind: IdentityKind
    scopes: frozenset[str] = field(default=frozenset())

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


#: The caller of the call under way; ``None`` outside a call, or when nobody is known.
CALLER: ContextVar[Identity | None] = ContextVar("offloop_caller", default=None)


def current_caller() -> Identity | None:
    """The identity of the caller whose call is running in this context, if any."""
    return CALLER.get()
