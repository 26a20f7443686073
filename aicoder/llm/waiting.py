"""The one place aicoder sleeps, and the switch that lets test suites skip the sleeping.

Every wait between retries goes through :func:`sleep`. Inside
:func:`instant_waits` nothing sleeps: each wait is recorded instead, so a test
can run the real retry logic at full speed and still assert on the waits it
would have taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["instant_waits", "sleep"]

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
