"""Actor mode: each call is handed to a Pykka actor that owns a blocking Thrift client.

The gateway keeps accepting HTTP on its event loop; what differs from the event-loop mode
(:class:`~offloop.client.caller.AsyncCaller`) is only how a call reaches the backend::

    event loop (HTTP, JSON, routing)                  actor threads (one per actor)
    ────────────────────────────────                  ─────────────────────────────
    Gateway ─ ActorCaller.call
                │ call_with_retries: balancer picks a healthy backend
                │ ActorGroup.route: an idle actor of it, else the shortest mailbox,
                │                   else Overloaded (503) at once
                │ ref.tell(ActorCall) ───────────────►  ThriftActor.on_receive
                │                                        BlockingClient.call
                │                                        (socket, framing, Cython codec;
                │                                         timeout = time left)
                │ await asyncio future  ◄── loop.call_soon_threadsafe(_finished, outcome)

The loop never waits on an actor: no Pykka future exists (``tell``, not ``ask``), and each
outcome comes back through ``call_soon_threadsafe``. Everything the router reads (the calls
each actor holds) is changed on the loop thread only. A Pykka inbox is an unbounded queue; the
router is what bounds it, with a :class:`~offloop.runtime.limiter.Limiter` per actor of one
running call and ``mailbox`` queued.

Life of a call, on the loop side: *told* (counted in its actor's mailbox) -> *finished* (the
actor reported, the count drops) or *given up* (deadline, cancellation, close: the caller's
future is settled, but the count drops only when the actor reports, so an actor stuck in a
call is not given more). Giving up sets the call's
:class:`~offloop.client.blocking.GiveUp` (issue 13): an actor skips a call given up before it
started (it is never sent), and the client of an actor blocked on a call given up in flight
wakes, writes ``offloop.cancel`` for it on its THeader connection, and reports at once, so the
worker stops the call and the actor takes its next one on the same connection.

Each actor's client is a :class:`~offloop.client.blocking.BlockingClient`, which resets its
socket after any error that leaves the stream unknown and when a health probe of its backend
failed, and reconnects lazily.

Modules: this one is the caller (:class:`ActorCaller`: life cycle, spreading actors over
backends, submitting calls, supervision); :mod:`offloop.client.actor` is the actor and what it
shares with the loop; :mod:`offloop.client.actor_groups` the actors of one backend and the
routing rule.

Supervision: a broken connection is the client's business (it reconnects, see above); an
actor that dies of an unexpected exception is replaced in the same slot once its thread has
exited. Its running call fails with :class:`ActorCrashed` (500: our fault, so the backend is
not marked down), its queued calls with ``NotSentOverloaded`` (503, retried elsewhere if
another backend is up). Exactly ``actors`` actor threads exist while the caller runs, and
none after :meth:`ActorCaller.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pykka

from offloop.client.actor import THREAD_PREFIX, ActorCall, ActorCrashed, ActorLink, ThriftActor
from offloop.client.actor_groups import ActorGroup, Slot
from offloop.client.balancer import Backend, Balancer, HealthConfig
from offloop.client.blocking import BlockingClient
from offloop.client.caller import (
    BackendState,
    all_ready,
    backend_states,
    call_with_retries,
    saturated,
)
from offloop.client.config import ClientConfig
from offloop.client.discovery import Discoveries, Resolver
from offloop.client.errors import NotSentClosedError, NotSentOverloaded
from offloop.client.targets import DnsTarget, StaticTarget, TargetLike, as_target
from offloop.errors import ClosedError, DeadlineExceeded, NoBackendError
from offloop.idl import MethodInfo
from offloop.tls import ClientTLS

__all__ = ["THREAD_PREFIX", "ActorCaller", "ActorCrashed", "ThriftActor"]

log = logging.getLogger("offloop.client.actors")

#: The loop gives up on a call this long after its deadline, so that the actor's own socket
#: timeout (which also resets its client) normally answers first.
_EXPIRY_MARGIN = 0.05
#: Seconds to wait for actor threads to start, to exit after a crash, or to exit on close.
#: Bounded by what an actor may be doing: a connect (``connect_timeout``) or a call that
#: close() interrupts at once.
_THREAD_WAIT = 5.0


class ActorCaller:
    """Actor mode: calls run in Pykka actors, each with a blocking client to one backend.

    Implements :class:`~offloop.client.caller.Caller`. ``actors`` is the most actors (threads)
    at once, however many backends DNS finds (at least one per static backend and per DNS
    target). Without DNS targets they are spread over every static backend of every service
    in turn. With some, each static backend and each DNS target gets ``actors`` divided by
    their number; the backends a DNS target finds (:mod:`offloop.client.discovery`) share
    what the static ones leave, evenly among those known at the time: one actor when found,
    if any is left, topped up once the answer is in; a backend never loses actors while in
    the set, and those of a backend that left go to the others. A backend found when all are
    in use gets none (a warning says so; calls sent to it fail ``overloaded`` unsent and are
    retried elsewhere) until some are freed. Actors start when their backend is found and
    stop once it has left the set and drained. Each backend is tracked by
    a :class:`~offloop.client.balancer.Balancer` and calls go through
    :func:`~offloop.client.caller.call_with_retries`, so health and retries behave as in the
    event-loop mode. Threads: one per actor, started by :meth:`start` and joined by
    :meth:`close`; a crashed actor is replaced by a task the caller owns.

    Args:
        backends: service name -> backend targets (:mod:`offloop.client.targets`).
        actors: how many actors (hence threads and connections) in all, at most.
        mailbox: calls an actor may hold queued behind the one it runs; beyond that on
            every actor of every healthy backend, a call raises ``Overloaded`` at once.
        client: connection settings (protocol, frame limit, connect timeout).
        health: probe timings.
        tls: TLS for the actors' connections (None: plain TCP); health probes stay TCP
            connects, which a TLS port accepts and closes without a word.
        resolver: makes the resolver of a DNS target (DNS itself by default).

    Raises:
        ValueError: no backend, or ``actors`` < 1, or ``mailbox`` < 0.
    """

    def __init__(
        self,
        backends: Mapping[str, Sequence[TargetLike]],
        *,
        actors: int = 32,
        mailbox: int = 4,
        client: ClientConfig | None = None,
        health: HealthConfig | None = None,
        tls: ClientTLS | None = None,
        resolver: Callable[[DnsTarget], Resolver] | None = None,
    ) -> None:
        if actors < 1:
            raise ValueError(f"actors must be at least 1, not {actors}")
        if mailbox < 0:
            raise ValueError(f"mailbox must be >= 0, not {mailbox}")
        self._client = client or ClientConfig()
        self._tls = tls
        self._mailbox = mailbox
        self._discoveries = Discoveries(resolver)
        self._balancers: dict[str, Balancer] = {}
        groups: list[ActorGroup] = []
        dynamic: list[tuple[DnsTarget, Balancer]] = []
        for service, targets in backends.items():
            members = []
            found = [as_target(t) for t in targets]
            for target in found:
                if isinstance(target, StaticTarget):
                    group = ActorGroup(target.host, target.port, mailbox)
                    groups.append(group)
                    members.append(Backend(target.host, target.port, group))
            balancer = Balancer(
                members,
                health,
                on_down=self._discoveries.on_down,
                empty_ok=len(members) < len(found),
            )
            dynamic += [(t, balancer) for t in found if isinstance(t, DnsTarget)]
            self._balancers[service] = balancer
        if not groups and not dynamic:
            raise ValueError("at least one backend is needed")
        for target, balancer in dynamic:
            self._discoveries.follow(target, balancer, self._group)
        self._groups = groups
        self._slots: list[Slot] = []
        # Item 7: ``actors`` is a cap on all actors, DNS ones included. Without DNS targets
        # the static backends share them all; with some, each static backend gets a share
        # (as many as a DNS target gets in all), and the DNS backends share the rest.
        share = max(1, actors // (len(groups) + len(dynamic)))
        static = max(actors, len(groups)) if not dynamic else share * len(groups)
        for i in range(static):
            slot = Slot(i, groups[i % len(groups)])
            slot.group.slots.append(slot)
            self._slots.append(slot)
        #: Most actors at once: ``actors``, but one per static backend and DNS target at least.
        self._cap = max(actors, static + len(dynamic))
        self._static = static
        #: The groups of backends found by DNS, which share ``_cap - _static`` actors.
        self._found: list[ActorGroup] = []
        self._rebalancing = False
        self._next_slot = len(self._slots)
        self._retired: list[ActorLink] = []  # actors of drained backends, stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the actors (waiting, off the loop, for their threads) and health probing."""
        if self._loop is not None or self._closed:
            return
        loop = self._loop = asyncio.get_running_loop()
        links = [self._spawn(slot) for slot in self._slots]
        await loop.run_in_executor(None, _wait_started, links)
        await self._discoveries.start()
        self._rebalance()  # the share of the backends of the first answers
        for balancer in self._balancers.values():
            balancer.start()

    def _group(self, host: str, port: int) -> ActorGroup:
        """The actors of a backend found by DNS (started at once if the caller runs): one
        now, if the cap leaves room, and its share once the whole answer is in."""
        group = ActorGroup(host, port, self._mailbox, self._retire)
        self._groups.append(group)
        self._found.append(group)
        self._grow(group, 1)
        if not group.slots:
            log.warning(
                "backend %s gets no actor: all %d are in use (raise --actors)",
                group.peer,
                self._cap,
            )
        self._rebalance_soon()
        return group

    def _grow(self, group: ActorGroup, n: int) -> None:
        """Give ``group`` up to ``n`` more actors, as the cap allows (actors still stopping
        count against it until their threads have exited)."""
        for _ in range(min(n, self._cap - len(self._slots) - len(self._retired))):
            slot = Slot(self._next_slot, group)
            self._next_slot += 1
            group.slots.append(slot)
            self._slots.append(slot)
            if self._loop is not None and not self._closed:
                self._spawn(slot)

    def _rebalance_soon(self) -> None:
        if self._rebalancing or self._loop is None:
            return  # before start, the share is given at start
        self._rebalancing = True
        self._loop.call_soon(self._rebalance)

    def _rebalance(self) -> None:
        """Item 7: top the DNS backends up to an even share of the actors they share (the
        cap less the static backends'), the fewest first. Actors are never taken from a
        backend: one that has more than its share (the set grew) keeps them until it leaves,
        and then they go to the others."""
        self._rebalancing = False
        if self._closed or not self._found:
            return
        each = self._each()
        for group in self._found:
            self._shrink(group, each)
        for group in sorted(self._found, key=lambda g: len(g.slots)):
            if len(group.slots) < each:
                self._grow(group, each - len(group.slots))

    def _each(self) -> int:
        """The even share of a DNS backend now."""
        return max(1, (self._cap - self._static) // max(1, len(self._found)))

    def _shrink(self, group: ActorGroup, each: int) -> None:
        """Stop idle actors of ``group`` beyond ``each`` (a busy one is asked again once its
        calls are done: :meth:`_finished`); their room goes to the others once they exit."""
        assert self._loop is not None
        for slot in [s for s in group.slots if s.alive and not s.limiter.borrowed]:
            if len(group.slots) <= each:
                return
            group.slots.remove(slot)
            self._slots.remove(slot)
            slot.alive = False
            link = slot.link
            if link is not None and link.ref is not None:
                link.ref.stop(block=False)
                self._retired.append(link)
                task = self._loop.create_task(self._reap(link))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _reap(self, link: ActorLink) -> None:
        """Wait (off the loop, bounded) for a stopped actor's thread, then use its room."""
        assert self._loop is not None
        if await self._loop.run_in_executor(None, link.join, _THREAD_WAIT):
            self._retired = [other for other in self._retired if other is not link]
        self._rebalance_soon()

    async def _retire(self, group: ActorGroup) -> None:
        """Stop the actors of a backend that left the set and drained, and wait (off the
        loop, bounded) for their threads."""
        links: list[ActorLink] = []
        for slot in group.slots:
            self._fail_calls(
                slot,
                lambda peer: ClosedError(f"backend {peer} left the set during a call"),
                lambda peer: NotSentClosedError(f"backend {peer} left the set"),
            )
            slot.alive = False
            if slot in self._slots:
                self._slots.remove(slot)
            if slot.link is not None:
                links.append(slot.link)
                slot.link.client.interrupt()
                if slot.link.ref is not None:
                    slot.link.ref.stop(block=False)
        if group in self._groups:
            self._groups.remove(group)
        found = group in self._found
        if found:
            self._found.remove(group)
        self._retired += links
        if links and self._loop is not None:
            left = await self._loop.run_in_executor(None, _join_all, links)
            self._retired = [link for link in self._retired if link.name in left]
        if found:
            self._rebalance_soon()  # its actors' room goes to the others

    def _spawn(self, slot: Slot) -> ActorLink:
        assert self._loop is not None
        group = slot.group
        client = BlockingClient(group.host, group.port, self._client, tls=self._tls)
        link = ActorLink(slot, client, self._loop, self._finished, self._died)
        link.ref = ThriftActor.start(link)
        slot.link = link
        slot.alive = True
        return link

    async def close(self) -> None:
        """Stop probing, fail the calls still held with :class:`ClosedError`, interrupt and
        stop every actor, and wait (off the loop, bounded) for their threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for group in self._groups:
            group.closing = True
        await self._discoveries.close()
        await asyncio.gather(*(b.close() for b in self._balancers.values()))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links: list[ActorLink] = list(self._retired)
        for slot in self._slots:
            self._fail_calls(
                slot,
                lambda peer: ClosedError(
                    f"actor caller closed while a call to {peer} was in flight",
                    public_message="gateway is shutting down",
                ),
                lambda peer: NotSentClosedError(
                    f"actor caller closed before a call to {peer} was sent",
                    public_message="gateway is shutting down",
                ),
            )
            slot.alive = False
            link = slot.link
            if link is None:
                continue
            links.append(link)
            link.client.interrupt()
            if link.ref is not None:
                link.ref.stop(block=False)  # a future we never wait on
        if links and self._loop is not None:
            left = await self._loop.run_in_executor(None, _join_all, links)
            if left:
                log.warning("actor threads still running after close: %s", ", ".join(left))

    # -- calls -----------------------------------------------------------------------------

    async def call(
        self, service: str, method: MethodInfo, args: Any, *, timeout: float, idempotent: bool
    ) -> Any:
        """Make one call through an actor; see :meth:`offloop.client.caller.Caller.call`."""
        if self._closed or self._loop is None:
            raise NotSentClosedError(
                "actor caller is " + ("closed" if self._closed else "not started"),
                public_message="gateway is shutting down" if self._closed else "not started",
            )
        balancer = self._balancers.get(service)
        if balancer is None:
            raise NoBackendError(f"no backend is configured for service {service}")

        async def attempt(backend: Backend, remaining: float) -> Any:
            group: ActorGroup = backend.target  # type: ignore[assignment]
            return await self._submit(group.route(), method, args, remaining)

        return await call_with_retries(
            balancer,
            attempt,
            service=service,
            timeout=timeout,
            idempotent=idempotent,
            method=method.name,
        )

    async def _submit(self, slot: Slot, method: MethodInfo, args: Any, timeout: float) -> Any:
        loop = self._loop
        link = slot.link
        assert loop is not None and link is not None and link.ref is not None
        fut: asyncio.Future[Any] = loop.create_future()
        call = ActorCall(method, args, time.monotonic() + timeout, timeout, fut)
        try:
            link.ref.tell(call)
        except pykka.ActorDeadError as exc:  # died; the loop has not heard yet
            slot.limiter.release()
            raise NotSentOverloaded(
                f"{link.name} of {slot.group.peer} is being replaced",
                public_message="backend overloaded",
            ) from exc
        slot.take(call)
        handle = loop.call_later(timeout + _EXPIRY_MARGIN, _expire, call, slot.group.peer)
        try:
            return await fut
        finally:
            handle.cancel()
            call.give_up()

    def _finished(self, link: ActorLink, call: ActorCall, ok: bool, value: Any) -> None:
        slot = link.slot
        if slot.link is link:
            slot.drop(call)
            group = slot.group
            if (
                not slot.limiter.borrowed
                and len(group.slots) > self._each()
                and group in self._found
            ):
                self._rebalance_soon()  # an actor beyond its backend's share is idle now
        fut = call.future
        if fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(
                value
                if isinstance(value, BaseException)
                else NotSentClosedError(f"{link.name} skipped the call")
            )

    def _died(self, link: ActorLink, exc: BaseException | None) -> None:
        slot = link.slot
        if slot.link is not link:
            return
        slot.alive = False
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown"
        log.error("%s (backend %s) died (%s); replacing it", link.name, slot.group.peer, why)
        self._fail_calls(
            slot,
            lambda peer: ActorCrashed(f"{link.name} died during a call to {peer}: {why}"),
            lambda peer: NotSentOverloaded(
                f"{link.name} died before a call to {peer} was sent: {why}",
                public_message="backend overloaded",
            ),
        )
        if not self._closed and self._loop is not None:
            task = self._loop.create_task(self._replace(slot, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: Slot, old: ActorLink) -> None:
        assert self._loop is not None
        if not await self._loop.run_in_executor(None, old.join, _THREAD_WAIT):
            log.warning(
                "%s has not exited after %.0f s; replacing it anyway", old.name, _THREAD_WAIT
            )
        if self._closed:
            return
        link = self._spawn(slot)
        await self._loop.run_in_executor(None, _wait_started, [link])

    @staticmethod
    def _fail_calls(
        slot: Slot,
        running: Callable[[str], Exception],
        queued: Callable[[str], Exception],
    ) -> None:
        """Fail every call the slot holds: the oldest (perhaps sent) with ``running``, the
        rest (not sent) with ``queued``."""
        for i, call in enumerate(slot.drop_all()):
            call.give_up()
            if not call.future.done():
                call.future.set_exception((running if i == 0 else queued)(slot.group.peer))

    # -- state -----------------------------------------------------------------------------

    def ready(self) -> bool:
        """Whether every service has a backend that is up."""
        return all_ready(self._balancers)

    def saturated(self, service: str) -> bool:
        """Whether every backend of ``service`` that is up is at its learned limit."""
        return saturated(self._balancers, service)

    def backend_states(self) -> list[BackendState]:
        """Each backend's health and the calls its actors hold."""
        return backend_states(self._balancers)

    @property
    def actor_count(self) -> int:
        """Actors running now (``actors``, but while one is being replaced)."""
        return sum(slot.alive for slot in self._slots)


def _expire(call: ActorCall, peer: str) -> None:
    if not call.future.done():
        call.future.set_exception(
            DeadlineExceeded(
                f"call of {call.method.name} to {peer}: no reply within {call.timeout:.3g}s"
            )
        )


def _wait_started(links: Sequence[ActorLink]) -> None:
    end = time.monotonic() + _THREAD_WAIT
    for link in links:
        if not link.started.wait(max(0.0, end - time.monotonic())):
            log.warning("%s has not started within %.0f s", link.name, _THREAD_WAIT)


def _join_all(links: Sequence[ActorLink]) -> list[str]:
    end = time.monotonic() + _THREAD_WAIT
    return [link.name for link in links if not link.join(max(0.0, end - time.monotonic()))]
