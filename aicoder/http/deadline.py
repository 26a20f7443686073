"""A deadline for each attempt, from connect to last byte, that no slow server can stretch.

Socket timeouts apply to each read: a server that trickles its headers one byte
every half second never trips one, and holds the request forever. So every
attempt through a :class:`~aicoder.http.adapter.LinearBackoffAdapter` is also
registered with one :class:`Watchdog` thread, which shuts the attempt's socket
down when its deadline passes. The read blocked on it then fails at once, and
the adapter (or the bridge, for a body being streamed) reports a timeout.

An attempt begins when its request is written on a connection (a fresh one, or
one kept alive) and ends when that connection goes back to its pool, once the
body is read to its end, streamed or not, or when the connection is dropped.
Waits between retries are not part of any attempt, nor is the wait of a last
look: just before its first byte, a request whose turn came waits for a hold
learnt since (:meth:`~aicoder.http.cooldown.Cooldowns.last_look`).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from aicoder.http import turns

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

__all__ = [
    "AttemptLimit",
    "DeadlineHTTPConnectionPool",
    "DeadlineHTTPSConnectionPool",
    "Watchdog",
    "current_limit",
    "timed_out_message",
]


class AttemptLimit:
    """How long each attempt of one request may take, and whether one was cut short for it."""

    __slots__ = ("expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False


def timed_out_message(seconds: float) -> str:
    """What every path says of an attempt cut short at its deadline: the setting, and its value."""
    return f"an attempt took longer than LLM_REQUEST_TIMEOUT={seconds:g} s"


#: The limit for the request the adapter is sending in this thread, if it has one.
current_limit: ContextVar[AttemptLimit | None] = ContextVar("aicoder_attempt_limit", default=None)


class _Watch:
    __slots__ = ("connection", "deadline", "limit")

    def __init__(self, connection: weakref.ref[object], deadline: float, limit: AttemptLimit) -> None:
        self.connection = connection
        self.deadline = deadline
        self.limit = limit


class Watchdog:
    """One daemon thread that cuts attempts short at their deadlines. Thread-safe.

    It holds only attempts in flight (a connection dropped mid-attempt leaves with
    the connection), and sleeps until the earliest deadline, or ``IDLE`` seconds
    when there is none. It is woken only for a deadline earlier than that: with
    one timeout for all, a new attempt costs it no wake-up.
    """

    IDLE = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._condition = threading.Condition()
        self._watches: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0
        #: Keys of connections gone with an attempt in flight. Their weakref callbacks only append here: a
        #: callback runs wherever the garbage collector does, at interpreter exit too, when this daemon thread
        #: may have been stopped holding the lock. Whoever takes the lock next forgets them.
        self._gone: collections.deque[int] = collections.deque()

    def watch(self, connection: object, limit: AttemptLimit) -> None:
        """Begin an attempt on ``connection`` that must end within ``limit.seconds``: a urllib3 connection, or
        anything else whose ``sock`` is the socket it reads from."""
        key = id(connection)
        entry = _Watch(weakref.ref(connection, lambda _: self._gone.append(key)), self._clock() + limit.seconds, limit)
        with self._condition:
            self._forget_gone()
            self._watches[key] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aicoder-deadlines", daemon=True)
                self._thread.start()
            elif entry.deadline < self._wakes_at:
                self._condition.notify()

    def done(self, connection: object) -> None:
        """The attempt on ``connection``, if any, is over."""
        self._forget(id(connection))

    def __len__(self) -> int:
        with self._condition:
            self._forget_gone()
            return len(self._watches)

    def _forget(self, key: int) -> None:
        with self._condition:
            self._forget_gone()
            self._watches.pop(key, None)

    def _forget_gone(self) -> None:
        """Forget the attempts whose connections are gone. Lock held."""
        while self._gone:
            key = self._gone.popleft()
            entry = self._watches.get(key)
            if entry is not None and entry.connection() is None:  # not a new connection that reuses the id
                del self._watches[key]

    def _run(self) -> None:
        while True:
            with self._condition:
                self._forget_gone()
                now = self._clock()
                expired = [(key, entry) for key, entry in self._watches.items() if entry.deadline <= now]
                for key, entry in expired:
                    del self._watches[key]
                    entry.limit.expired = True
                if not expired:
                    self._wakes_at = min((entry.deadline for entry in self._watches.values()), default=now + self.IDLE)
                    self._condition.wait(self._wakes_at - now)
            for _, entry in expired:
                _cut(entry.connection())


def _cut(connection: object) -> None:
    """Shut the connection's socket down: a read blocked on it in another thread fails at once."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: the attempt ended on its own
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watchdog = Watchdog()


def watchdog() -> Watchdog:
    """The process-wide :class:`Watchdog`."""
    return _watchdog


class _DeadlineConnectionMixin:
    """Begins an attempt each time a request is written, under this thread's :data:`current_limit`; its first
    bytes take a last look at the hold of the request's turn (:meth:`~aicoder.http.turns.CurrentTurn.last_look`)."""

    _looking: turns.CurrentTurn | None = None
    sock: Any

    def request(self, *args: Any, **kwargs: Any) -> None:
        limit = current_limit.get()
        if limit is not None:
            _watchdog.watch(self, limit)
        self._looking = turns.current()
        super().request(*args, **kwargs)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        turn = self._looking
        if turn is not None:
            self._looking = None
            if self.sock is None:  # connected first (as http.client would here), so that the look is the last step
                self.connect()  # type: ignore[attr-defined]
            if turn.last_look(before_waiting=self._unwatch):
                limit = current_limit.get()
                if limit is not None:
                    _watchdog.watch(self, limit)  # the attempt begins again: the wait was no part of it
        super().send(data)  # type: ignore[misc]

    def _unwatch(self) -> None:
        _watchdog.done(self)


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlinePoolMixin:
    """Ends a connection's attempt when it comes back to the pool: its answer has been read to the end."""

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        if conn is not None:
            _watchdog.done(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class DeadlineHTTPConnectionPool(_DeadlinePoolMixin, HTTPConnectionPool):
    """An ``http://`` pool whose attempts the :class:`Watchdog` cuts short at their deadlines."""

    ConnectionCls = _DeadlineHTTPConnection


class DeadlineHTTPSConnectionPool(_DeadlinePoolMixin, HTTPSConnectionPool):
    """An ``https://`` pool whose attempts the :class:`Watchdog` cuts short at their deadlines."""

    ConnectionCls = _DeadlineHTTPSConnection
