"""The one place aicoder waits, and the switch that lets test suites skip the waiting.

Every wait goes through :func:`sleep` (backoffs, holds), :func:`sleep_unless`
(turns, which a faster pace may bring forward) or :func:`wait_for` (a first
request's answer that others wait for), or in asyncio code their twins
:func:`asleep`, :func:`asleep_unless` and :func:`await_for`, which never block
the event loop. Inside :func:`instant_waits` nothing waits: each sleep is recorded
instead, and a wait for an answer returns at once, so a test can run the real
retry logic at full speed and still assert on the waits it would have taken.

A :class:`~aicoder.http.cooldown.Cooldowns` reads the time and waits through a
:class:`Clock`: :data:`REAL_CLOCK`, made of the functions above, or a test's
(:class:`aicoder.testing.FakeClock`), on which time moves only when the test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = [
    "REAL_CLOCK",
    "Clock",
    "Signal",
    "asleep",
    "asleep_unless",
    "await_for",
    "instant_waits",
    "sleep",
    "sleep_unless",
    "wait_for",
]

_lock = threading.Lock()
_recorded: list[float] | None = None


def sleep(seconds: float) -> None:
    """Wait ``seconds``, or record them and return at once inside :func:`instant_waits`."""
    if not _recorded_instead(seconds) and seconds > 0:
        time.sleep(seconds)


async def asleep(seconds: float) -> None:
    """:func:`sleep` for asyncio: await ``seconds`` (cancelling the task ends it at once), or record them."""
    if not _recorded_instead(seconds) and seconds > 0:
        await asyncio.sleep(seconds)


def _recorded_instead(seconds: float) -> bool:
    """Inside :func:`instant_waits`, record ``seconds`` and return ``True``: the wait is skipped."""
    with _lock:
        if _recorded is None:
            return False
        _recorded.append(seconds)
        return True


def sleep_unless(seconds: float, event: threading.Event) -> bool:
    """:func:`sleep`, but end early if ``event`` is set meanwhile; return whether it was."""
    if _recorded_instead(seconds) or seconds <= 0:
        return False
    return event.wait(seconds)


async def asleep_unless(seconds: float, event: Signal) -> bool:
    """:func:`sleep_unless` for asyncio."""
    if _recorded_instead(seconds) or seconds <= 0:
        return False
    await event.wait_async(seconds)
    return event.is_set()


def wait_for(event: threading.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds; not at all inside :func:`instant_waits`."""
    if _recorded is None:
        event.wait(timeout)


class Signal(threading.Event):
    """A :class:`threading.Event` that asyncio tasks can await too (:func:`await_for`), from any loop."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._waiters_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_async(self, timeout: float) -> None:
        """Await until set, at most ``timeout`` seconds, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            if self.is_set():
                return
            self._waiters.append((loop, future))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout)
        finally:
            with self._waiters_lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))


async def await_for(event: Signal, timeout: float) -> None:
    """:func:`wait_for` for asyncio: await ``event``, at most ``timeout`` seconds; not at all inside
    :func:`instant_waits`."""
    if _recorded is None:
        await event.wait_async(timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@contextmanager
def instant_waits() -> Iterator[list[float]]:
    """Make aicoder's waits instant in every thread, yielding the list they are recorded in.

    The previous mode is restored on exit, so the context manager nests::

        with instant_waits() as waits:
            client.sendRequest("system", "user")
        assert waits == [2.0, 9.0]
    """
    global _recorded
    with _lock:
        previous, _recorded = _recorded, []
        recorded = _recorded
    try:
        yield recorded
    finally:
        with _lock:
            _recorded = previous


class Clock(Protocol):
    """Where a :class:`~aicoder.http.cooldown.Cooldowns` reads the time and waits, threads and tasks alike."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def sleep(self, seconds: float, unless: Signal | None = None) -> bool:
        """Wait ``seconds``, or less if ``unless`` is set meanwhile; return whether it was."""
        ...

    async def asleep(self, seconds: float, unless: Signal | None = None) -> bool:
        """:meth:`sleep` for asyncio."""
        ...

    def wait_for(self, event: Signal, timeout: float) -> None:
        """Wait until ``event`` is set, at most ``timeout`` seconds."""
        ...

    async def await_for(self, event: Signal, timeout: float) -> None:
        """:meth:`wait_for` for asyncio."""
        ...


class _RealClock:
    """:func:`time.monotonic` and the waits above: :func:`instant_waits` skips them."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, unless: Signal | None = None) -> bool:
        if unless is None:
            sleep(seconds)
            return False
        return sleep_unless(seconds, unless)

    async def asleep(self, seconds: float, unless: Signal | None = None) -> bool:
        if unless is None:
            await asleep(seconds)
            return False
        return await asleep_unless(seconds, unless)

    def wait_for(self, event: Signal, timeout: float) -> None:
        wait_for(event, timeout)

    async def await_for(self, event: Signal, timeout: float) -> None:
        await await_for(event, timeout)


#: The clock aicoder runs on outside tests.
REAL_CLOCK: Clock = _RealClock()
