"""The one place aicoder waits, and the switch that lets test suites skip the waiting.

Every wait goes through :func:`sleep` (backoffs, holds, turns) or
:func:`wait_for` (a first request's answer that others wait for). Inside
:func:`instant_waits` nothing waits: each sleep is recorded instead, and a wait
for an answer returns at once, so a test can run the real retry logic at full
speed and still assert on the waits it would have taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["instant_waits", "sleep", "wait_for"]

_lock = threading.Lock()
_recorded: list[float] | None = None


def sleep(seconds: float) -> None:
    """Wait ``seconds``, or record them and return at once inside :func:`instant_waits`."""
    with _lock:
        recorded = _recorded
        if recorded is not None:
            recorded.append(seconds)
            return
    if seconds > 0:
        time.sleep(seconds)


def wait_for(event: threading.Event, timeout: float) -> None:
    """Wait until ``event`` is set, at most ``timeout`` seconds; not at all inside :func:`instant_waits`."""
    if _recorded is None:
        event.wait(timeout)


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
