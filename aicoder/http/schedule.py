"""The linear backoff schedule: the one formula every other part of aicoder uses."""

from __future__ import annotations

__all__ = ["linear_delay", "linear_delays"]


def linear_delay(retry: int, count: int, min_delay: float, max_delay: float) -> float:
    """Return the wait in seconds before retry number ``retry`` (1-based) of ``count``.

    Retry *k* of *N* waits ``min(MIN + (k - 1) * step, MAX)`` with
    ``step = (MAX - MIN) / (N - 1)`` when *N* > 1, else 0: the waits climb
    evenly from ``min_delay`` to ``max_delay``, and ``min_delay == max_delay``
    gives a constant wait. The arguments are assumed valid (``1 <= retry``,
    ``0 <= min_delay <= max_delay``); :class:`aicoder.config.Config` and
    :class:`aicoder.http.policy.LinearRetry` check them once, up front.
    """
    step = (max_delay - min_delay) / (count - 1) if count > 1 else 0.0
    return min(min_delay + (retry - 1) * step, max_delay)


def linear_delays(count: int, min_delay: float, max_delay: float) -> tuple[float, ...]:
    """Return the waits before each of ``count`` retries; ``count=0`` (no retry) gives ``()``."""
    return tuple(linear_delay(k, count, min_delay, max_delay) for k in range(1, count + 1))
