"""Limits per caller: a token bucket and a cap on calls in flight for each identity.

Sans-I/O: :meth:`CallerTable.admit` takes the caller's name and the time, and answers a
:class:`Ticket` (the call may go on; give it back with :meth:`CallerTable.release`) or a
:class:`Refusal` (its status and ``Retry-After``).

Each caller's bucket holds up to ``burst`` tokens and gains ``rate`` a second; a call takes
one. A caller with no token left is refused with 429 and the seconds until it has one again;
a caller with ``max_inflight`` calls under way is refused with 429 too. So a caller that sends
ten times its share is refused the excess at once, for the cost of a dict lookup, and the
calls of the others keep their slots in the gateway and in the workers.

Memory is bounded by ``max_tracked`` entries, oldest use first. An entry whose bucket is full
again and that has no call in flight is the same as no entry, so such entries are dropped as
they reach the old end of the table (two looked at per admission). A new caller when the
table is full takes the place of the caller idle longest that has no call in flight, which
forgets that caller's bucket (the one way to lose state; it needs ``max_tracked`` callers at
once); with every entry busy it is refused with 503. Finding that caller is O(1) amortised
(a queue of the entries with no call in flight), not a scan of the table.

An address identity (authentication off) of IPv6 is keyed by its /64 network, the block one
host is given: one bucket for the host, not one per address it may use.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from offloop.gateway.config import CallerLimits

__all__ = ["CallerTable", "Refusal", "Ticket", "caller_key"]

#: Entries looked at for dropping, per admission: more than one, so the table shrinks faster
#: than it grows while callers go quiet; few, so an admission stays O(1).
SWEEP = 2


class Ticket:
    """A caller's entry: its bucket and its calls in flight (give it back when done)."""

    __slots__ = ("inflight", "name", "stamp", "tokens")

    def __init__(self, name: str, tokens: float, stamp: float) -> None:
        self.name = name
        self.tokens = tokens
        self.stamp = stamp
        self.inflight = 0


@dataclass(frozen=True)
class Refusal:
    """A call refused.

    Attributes:
        status: 429 (the caller's limit) or 503 (too many callers at once).
        message: what the client is told.
        retry_after: whole seconds until a call may succeed.
    """

    status: int
    message: str
    retry_after: int


class CallerTable:
    """The callers' state (see the module docstring).

    Args:
        limits: the limits.
        retry_after: the ``Retry-After`` of a refusal for calls in flight or too many
            callers, whose end cannot be foretold.
    """

    def __init__(self, limits: CallerLimits, retry_after: int = 1) -> None:
        self.limits = limits
        self._rate = limits.rate
        self._bucket = limits.bucket
        self._max_inflight = limits.max_inflight
        self._retry_after = max(1, retry_after)
        self._entries: OrderedDict[str, Ticket] = OrderedDict()
        # Item 13: the names of entries with no call in flight, longest free first, so that
        # making room is O(1) amortised (a name that got busy again is skipped when met).
        self._free: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def admit(self, name: str, now: float) -> Ticket | Refusal:
        """Admit one call of ``name`` at ``now`` (monotonic seconds), or refuse it."""
        entries = self._entries
        name = caller_key(name)
        self._sweep(now)
        entry = entries.get(name)
        if entry is None:
            if len(entries) >= self.limits.max_tracked and not self._make_room():
                return Refusal(503, "too many callers at once", self._retry_after)
            entry = entries[name] = Ticket(name, self._bucket, now)
            self._free[name] = None
        else:
            entries.move_to_end(name)
        if self._max_inflight and entry.inflight >= self._max_inflight:
            message = f"too many calls in flight ({self._max_inflight} per caller)"
            return Refusal(429, message, self._retry_after)
        if self._rate:
            tokens = min(self._bucket, entry.tokens + (now - entry.stamp) * self._rate)
            entry.stamp = now
            if tokens < 1.0:
                entry.tokens = tokens
                wait = math.ceil((1.0 - tokens) / self._rate)
                return Refusal(429, f"rate limit: {self._rate:g} calls/s per caller", wait)
            entry.tokens = tokens - 1.0
        entry.inflight += 1
        if entry.inflight == 1:
            self._free.pop(name, None)
        return entry

    def release(self, ticket: Ticket) -> None:
        """The call of ``ticket`` has ended."""
        ticket.inflight -= 1
        if not ticket.inflight and self._entries.get(ticket.name) is ticket:
            self._free[ticket.name] = None

    def _idle(self, entry: Ticket, now: float) -> bool:
        """Whether dropping ``entry`` loses nothing: no call in flight, a full bucket."""
        if entry.inflight:
            return False
        return not self._rate or entry.tokens + (now - entry.stamp) * self._rate >= self._bucket

    def _sweep(self, now: float) -> None:
        entries = self._entries
        for _ in range(SWEEP):
            if not entries:
                return
            name = next(iter(entries))
            if not self._idle(entries[name], now):
                return
            del entries[name]
            self._free.pop(name, None)

    def _make_room(self) -> bool:
        """Drop the entry free (no call in flight) longest; False if all are busy. O(1)
        amortised: each name in ``_free`` is looked at once (item 13)."""
        while self._free:
            name, _ = self._free.popitem(last=False)
            entry = self._entries.get(name)
            if entry is not None and not entry.inflight:
                del self._entries[name]
                return True
        return False


def caller_key(name: str) -> str:
    """The key of caller ``name`` (``kind:name``) in the table: itself, but for an IPv6
    address identity its /64 network (item 13), as a host is given a /64 and could
    otherwise call from 2**64 addresses, each with a fresh bucket."""
    if not name.startswith("address:") or ":" not in name[8:]:
        return name
    try:
        network = ipaddress.IPv6Network(name[8:] + "/64", strict=False)
    except ValueError:
        return name
    return f"address:{network}"
