"""The actor of actor mode: a Pykka actor owning one blocking Thrift client, and what it
shares with the event loop (see :mod:`offloop.client.actors` for the whole picture).

An actor runs the calls told to it one at a time, in its own thread, and hands each outcome to
the loop with ``loop.call_soon_threadsafe``; it never touches the loop's state. What the loop
and the actor share about one call is an :class:`ActorCall`: its arguments, its deadline, the
caller's context variables and a :class:`~offloop.client.blocking.GiveUp` that the loop sets
once nobody waits for the call (issue 13): a call given up before it started is not sent, one
given up in flight is cancelled on the worker by the actor's client (THeader connections).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from offloop.client.blocking import BlockingClient, GiveUp
from offloop.errors import OffloopError
from offloop.idl import MethodInfo

if TYPE_CHECKING:
    from offloop.client.actor_groups import Slot

__all__ = ["RESET", "THREAD_PREFIX", "ActorCall", "ActorCrashed", "ActorLink", "ThriftActor"]

log = logging.getLogger("offloop.client.actors")

#: Prefix of every actor thread's name (the slot number follows), to find them in dumps.
THREAD_PREFIX = "offloop-actor-"


class ActorCrashed(OffloopError):
    """The actor running the call died of an unexpected exception (a bug on our side).

    Not a transport error: the backend is not to blame, so it is not marked down. The
    actor's queued calls, never sent, fail with ``NotSentOverloaded`` instead (503, may be
    retried elsewhere).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, public_message="internal error: actor failed")


# -- messages, and what an actor shares with the loop --------------------------------------


class ActorCall:
    """One call told to an actor. :meth:`give_up` is called on the loop once nobody waits
    for it (answered, cancelled, expired, failed by a close or a crash)."""

    __slots__ = ("_give_up", "args", "context", "deadline", "future", "method", "timeout")

    def __init__(
        self,
        method: MethodInfo,
        args: Any,
        deadline: float,
        timeout: float,
        future: asyncio.Future[Any],
    ) -> None:
        self.method = method
        self.args = args
        self.deadline = deadline  # time.monotonic(), which both threads share
        self.timeout = timeout
        self.future = future
        # Set on the loop, read by the actor's thread and its client (thread-safe).
        self._give_up = GiveUp()
        # The caller's context variables (request id, principal: offloop.context), for the
        # info headers the actor's client sends.
        self.context = contextvars.copy_context()

    @property
    def skip(self) -> bool:
        """Whether nobody waits for the call any more: an actor does not start it."""
        return self._give_up.is_set

    def give_up(self) -> None:
        """Nobody waits for the call any more: not sent if it has not started, cancelled on
        the worker if it is in flight on a THeader connection. Never blocks."""
        self._give_up.set()

    def run(self, client: BlockingClient) -> Any:
        """Make the call with ``client`` (in the actor's thread), in the caller's context."""
        return self.context.run(
            client.call,
            self.method,
            self.args,
            self.deadline,
            self.timeout,
            give_up=self._give_up,
        )


#: Tells an actor to close its socket (its backend failed a health probe).
RESET = object()

#: (link, call, ok, value or exception), run on the loop when an actor has finished a call.
FinishedCallback = Callable[["ActorLink", ActorCall, bool, Any], None]
#: (link, the exception that killed the actor), run on the loop.
DiedCallback = Callable[["ActorLink", BaseException | None], None]


class ActorLink:
    """What one actor incarnation shares with the loop: its client, thread and callbacks."""

    def __init__(
        self,
        slot: Slot,
        client: BlockingClient,
        loop: asyncio.AbstractEventLoop,
        finished: FinishedCallback,
        died: DiedCallback,
    ) -> None:
        self.slot = slot
        self.name = f"{THREAD_PREFIX}{slot.index}"
        self.client = client
        self.loop = loop
        self.finished = finished
        self.died = died
        self.started = threading.Event()
        self.thread: threading.Thread | None = None
        self.ref: pykka.ActorRef[ThriftActor] | None = None

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop (from the actor's thread)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.debug("%s: loop closed, outcome dropped", self.name)

    def join(self, timeout: float) -> bool:
        """Wait (in a worker thread) until the actor's thread has exited; True if it has."""
        end = time.monotonic() + timeout
        self.started.wait(timeout)
        thread = self.thread
        if thread is None:
            return False
        thread.join(max(0.0, end - time.monotonic()))
        return not thread.is_alive()


class ThriftActor(pykka.ThreadingActor):
    """A Pykka actor owning one :class:`BlockingClient`; it runs the calls told to it, one at
    a time, in its own thread, and hands each outcome to the loop.

    Messages: an :class:`ActorCall` (run it, unless the loop gave up on it) or ``RESET`` (close the
    socket). Expected outcomes (a value, an :class:`~offloop.errors.OffloopError`, a declared
    exception) are answered; anything else escapes, Pykka stops the actor, and
    :meth:`on_failure` tells the loop, which replaces it.

    Args:
        link: what this actor shares with the loop.
    """

    def __init__(self, link: ActorLink) -> None:
        super().__init__()
        self._link = link

    def on_start(self) -> None:
        thread = threading.current_thread()
        thread.name = self._link.name
        self._link.thread = thread
        self._link.started.set()

    def on_receive(self, message: Any) -> Any:
        link = self._link
        if message is RESET:
            link.client.reset()
            return None
        if not isinstance(message, ActorCall):
            return super().on_receive(message)
        call = message
        if call.skip:  # given up (deadline, cancel, close) before it started
            link.post(link.finished, link, call, False, None)
            return None
        try:
            value = call.run(link.client)
        except Exception as exc:
            declared = tuple(cls for _, cls in call.method.exceptions)
            if not isinstance(exc, (OffloopError, *declared)):
                raise  # a bug: let the actor die and be replaced
            link.post(link.finished, link, call, False, exc)
        except BaseException as exc:
            # Pykka answers a BaseException escaping an actor by stopping *every* actor of
            # the process; make it an ordinary failure of this one actor instead.
            raise RuntimeError(f"{type(exc).__name__} in {link.name}: {exc}") from exc
        else:
            link.post(link.finished, link, call, True, value)
        return None

    def on_stop(self) -> None:
        self._link.client.close()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._link.client.close()
        self._link.post(self._link.died, self._link, exception_value)
