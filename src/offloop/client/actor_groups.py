"""The actors of one backend, and how a call picks one of them (actor mode; see
:mod:`offloop.client.actors` for the whole picture).

A :class:`Slot` is a place for one actor, whose actor is replaced when it dies; it counts the
calls told to its actor and not yet reported, bounded by a
:class:`~offloop.runtime.limiter.Limiter` of one running call and ``mailbox`` queued. An
:class:`ActorGroup` is the balancer's target for one backend: its slots, and the routing rule
(an idle actor, else the shortest mailbox, else ``Overloaded`` at once). Everything here is
read and changed on the loop thread only, so it needs no lock.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

import pykka

from offloop.client.actor import RESET, ActorCall, ActorLink
from offloop.client.errors import NotSentOverloaded
from offloop.runtime.limiter import Limiter

__all__ = ["ActorGroup", "Slot"]


class Slot:
    """A place for one actor; the actor in it is replaced when it dies."""

    def __init__(self, index: int, group: ActorGroup) -> None:
        self.index = index
        self.group = group
        self.link: ActorLink | None = None
        self.alive = False
        # Calls told to the current actor and not yet reported, oldest (running) first;
        # each holds a slot of ``limiter``.
        self.calls: deque[ActorCall] = deque()
        self.limiter = Limiter(group.mailbox + 1, name=f"calls held by actor {index}")

    def take(self, call: ActorCall) -> None:
        """Count ``call`` as held (its limiter slot is already acquired)."""
        self.calls.append(call)

    def drop(self, call: ActorCall) -> None:
        """Forget ``call`` and free its slot, if the slot still holds it."""
        try:
            self.calls.remove(call)
        except ValueError:  # already failed by close or a crash
            return
        self.limiter.release()

    def drop_all(self) -> deque[ActorCall]:
        """Forget every call held, freeing their slots; returns them oldest first."""
        calls, self.calls = self.calls, deque()
        for _ in calls:
            self.limiter.release()
        return calls


class ActorGroup:
    """The actors of one backend: the balancer's :class:`~offloop.client.balancer.Target`.

    Args:
        host: the backend's host.
        port: the backend's port.
        mailbox: calls an actor may hold queued behind the one it runs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        mailbox: int,
        retire: Callable[[ActorGroup], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.peer = f"{host}:{port}"
        self.mailbox = mailbox
        self.slots: list[Slot] = []
        self.closing = False
        self._retire = retire

    @property
    def in_flight(self) -> int:
        """Calls held by the group's actors, running or queued."""
        return sum(slot.limiter.borrowed for slot in self.slots)

    def route(self) -> Slot:
        """An idle actor, else the one with the shortest mailbox; its limiter slot is taken
        (the caller hands it to :meth:`Slot.take`, or releases it).

        Raises:
            NotSentOverloaded: every actor holds its running call and ``mailbox`` more, or
                none is running (being replaced).
        """
        best: Slot | None = None
        for slot in self.slots:
            if not slot.alive:
                continue
            if not slot.limiter.borrowed:
                best = slot
                break
            if best is None or slot.limiter.borrowed < best.limiter.borrowed:
                best = slot
        if best is None:
            raise NotSentOverloaded(
                f"no actor of {self.peer} is running", public_message="backend overloaded"
            )
        if not best.limiter.try_acquire():
            raise NotSentOverloaded(
                f"every actor of {self.peer} holds {best.limiter.borrowed} calls (mailbox "
                f"{self.mailbox})",
                public_message="backend overloaded: every actor is busy",
            )
        return best

    async def drop_connections(self) -> None:
        """Drop the group's connections (a health probe failed): each actor closes its
        socket before its next call. The actors stay."""
        if self.closing:
            return
        for slot in self.slots:
            if slot.alive and slot.link is not None and slot.link.ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    slot.link.ref.tell(RESET)

    async def close(self) -> None:
        """A backend that left its DNS target's set, drained: its actors stop. At shutdown,
        nothing to close per group: :meth:`ActorCaller.close` stops every actor."""
        if self._retire is not None and not self.closing:
            self.closing = True
            await self._retire(self)
            return
        await self.drop_connections()
