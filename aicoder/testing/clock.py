"""A clock for tests: time stands still until the test moves it, and whatever sleeps on it wakes then.

Give it to :class:`~aicoder.http.cooldown.Cooldowns` and every wait of the pace
(holds, turns, backoffs, the wait for a first answer) happens on it, in threads
and asyncio tasks alike::

    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock)
    ...                                   # threads or tasks take turns, and sleep on the clock
    clock.wait_until_asleep(3)            # all three have reached their waits
    clock.advance(0.5)                    # those due by then wake; the others sleep on
    clock.settle(threads)                 # each has ended, or sleeps until a time still to come

A sleeper also wakes when what it waits for is set (a turn brought forward, a first
answer), as it would on the real clock. Nothing here waits in real time, except
:meth:`FakeClock.wait_until_asleep`, :meth:`~FakeClock.settle` and :meth:`~FakeClock.asettle`,
which wait for the threads and tasks to reach their sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable

from aicoder.http.waiting import Signal

__all__ = ["FakeClock"]

#: How often a thread asleep on the clock looks whether what it waits for was set (real seconds).
_POLL = 0.001
#: Longer than any test: how long a task asleep on the clock waits for what it waits for, in real seconds.
_FOREVER = 86400.0


class FakeClock:
    """A :class:`~aicoder.http.waiting.Clock` that moves only when :meth:`advance` moves it. Thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._condition = threading.Condition()
        #: When each thread asleep on the clock wakes, and what wakes it sooner; when each task does, and how.
        self._wakes: list[tuple[float, Signal | None]] = []
        self._timers: list[tuple[float, Signal | None, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        with self._condition:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the time ``seconds`` on, and wake every thread and task whose time has come."""
        if seconds < 0:
            raise ValueError(
                f"FakeClock.advance: seconds must be 0 or more (a clock only moves forward), not {seconds!r}"
            )
        with self._condition:
            self._now += seconds
            due = [(loop, future) for at, _, loop, future in self._timers if at <= self._now]
            self._condition.notify_all()
        for loop, future in due:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(_resolve, future)

    @property
    def sleepers(self) -> int:
        """How many threads and tasks sleep on the clock until a time still to come, not woken sooner."""
        with self._condition:
            return self._sleepers()

    def _sleepers(self) -> int:
        # One whose time has come, or whose wait was ended early, is on its way out of its sleep, not asleep.
        asleep = [(at, unless) for at, unless in self._wakes] + [(at, unless) for at, unless, *_ in self._timers]
        return sum(at > self._now and not (unless is not None and unless.is_set()) for at, unless in asleep)

    def wait_until_asleep(self, count: int, timeout: float = 5.0) -> None:
        """Wait (in real time, at most ``timeout`` s) until ``count`` threads or tasks sleep on the clock until a
        time still to come: those that :meth:`advance` woke count again only once asleep again."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._sleepers() >= count, timeout):
                raise TimeoutError(f"{self._sleepers()} of {count} threads or tasks asleep after {timeout} s")

    def settle(self, threads: Iterable[threading.Thread], timeout: float = 5.0) -> None:
        """Wait (in real time, at most ``timeout`` s) until each of ``threads`` has ended or sleeps on the clock
        until a time still to come: what :meth:`advance` woke has done what it does at that time."""
        threads = list(threads)
        deadline = time.monotonic() + timeout
        with self._condition:
            while (running := sum(thread.is_alive() for thread in threads)) > self._sleepers():
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{running - self._sleepers()} threads neither ended nor asleep after {timeout} s"
                    )
                self._condition.wait(_POLL)

    async def asettle(self, tasks: Iterable[asyncio.Future[object]], timeout: float = 5.0) -> None:
        """:meth:`settle` for asyncio tasks on the running loop."""
        tasks = list(tasks)
        deadline = time.monotonic() + timeout
        while (running := sum(not task.done() for task in tasks)) > self.sleepers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{running - self.sleepers} tasks neither done nor asleep after {timeout} s")
            await asyncio.sleep(_POLL)

    def sleep(self, seconds: float, unless: Signal | None = None) -> bool:
        if seconds <= 0:
            return False
        with self._condition:
            wake = self._now + seconds
            self._wakes.append((wake, unless))
            self._condition.notify_all()
            try:
                while self._now < wake:
                    if unless is not None and unless.is_set():
                        return True
                    self._condition.wait(_POLL if unless is not None else None)
                return False
            finally:
                self._wakes.remove((wake, unless))
                self._condition.notify_all()

    async def asleep(self, seconds: float, unless: Signal | None = None) -> bool:
        if seconds <= 0:
            return False
        loop = asyncio.get_running_loop()
        timer: asyncio.Future[None] = loop.create_future()
        with self._condition:
            entry = (self._now + seconds, unless, loop, timer)
            self._timers.append(entry)
            self._condition.notify_all()
        try:
            if unless is None:
                await timer
                return False
            woken = asyncio.ensure_future(unless.wait_async(_FOREVER))
            try:
                await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            return not timer.done()
        finally:
            with self._condition:
                self._timers.remove(entry)
                self._condition.notify_all()

    def wait_for(self, event: Signal, timeout: float) -> None:
        self.sleep(timeout, unless=event)

    async def await_for(self, event: Signal, timeout: float) -> None:
        await self.asleep(timeout, unless=event)

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now():.6g}, sleepers={self.sleepers})"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
