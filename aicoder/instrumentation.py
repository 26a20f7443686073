"""Hooks: what aicoder's retries, holds and give-ups look like to the code around them, as data.

Instrumentation is a list of hooks, as in stamina: each gets a frozen
:class:`RetryDetails` before every retry's wait, in the thread that retries.
A hook may also have ``on_hold(HoldDetails)`` and ``on_give_up(GiveUpDetails)``.
:class:`LoggingHook` is the default, and writes the WARNING and INFO lines
aicoder has always written, with structured ``extra`` fields. Ready hooks for
Prometheus and OpenTelemetry import their package only when built, so a missing
optional package costs nothing.

A hook that raises is logged once, and never breaks a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "GiveUpDetails",
    "HoldDetails",
    "LoggingHook",
    "OpenTelemetryHook",
    "PrometheusHook",
    "RetryDetails",
    "RetryHook",
    "get_hooks",
    "set_hooks",
]

log = logging.getLogger("aicoder.retry")


@dataclass(frozen=True)
class RetryDetails:
    """One retry about to wait.

    ``url`` has no user info and no query string; ``origin`` is its scheme, host
    and port. ``attempt`` is 1 for the first retry. ``wait`` is the seconds this
    retry waits before its turn; ``source`` says what set it: ``"schedule"``, or
    the header or body field of the server's hint. ``queued`` is the seconds the
    request has spent so far waiting behind other requests for its turns. ``count``
    is the retries allowed in all (``LLM_RETRY_COUNT``).
    """

    method: str
    url: str
    origin: str
    attempt: int
    wait: float
    source: str
    queued: float
    count: int


@dataclass(frozen=True)
class HoldDetails:
    """A server's hint holds every request bound for ``origin`` for ``seconds``; ``source`` said so."""

    origin: str
    seconds: float
    source: str


@dataclass(frozen=True)
class GiveUpDetails:
    """A request stopped retrying: ``reason`` is ``"retries exhausted"`` or ``"hint past LLM_RETRY_MAX_HINT"``.

    ``attempts`` counts the requests sent, the first included; ``hint`` is the
    seconds the last 429 asked for, if it asked.
    """

    method: str
    url: str
    origin: str
    attempts: int
    reason: str
    hint: float | None


@runtime_checkable
class RetryHook(Protocol):
    """Called with a :class:`RetryDetails` before each retry's wait."""

    def __call__(self, details: RetryDetails) -> None: ...


_lock = threading.Lock()
_hooks: tuple[RetryHook, ...] = ()
_failed: set[int] = set()


def set_hooks(hooks: Iterable[RetryHook]) -> None:
    """Replace the hooks every retry calls, in order. ``set_hooks([])`` silences aicoder's retry log lines too."""
    global _hooks
    hooks = tuple(hooks)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hook {hook!r} is not allowed: expected a callable taking RetryDetails")
    with _lock:
        _hooks = hooks
        _failed.clear()


def get_hooks() -> tuple[RetryHook, ...]:
    """The hooks in force, in the order they are called."""
    return _hooks


def retrying(details: RetryDetails) -> None:
    """Call every hook for a retry about to wait."""
    for hook in _hooks:
        _call(hook, hook, details)


def holding(details: HoldDetails) -> None:
    """Call every hook's ``on_hold`` for a destination a hint holds."""
    for hook in _hooks:
        method = getattr(hook, "on_hold", None)
        if method is not None:
            _call(hook, method, details)


def giving_up(details: GiveUpDetails) -> None:
    """Call every hook's ``on_give_up`` for a request that stops retrying."""
    for hook in _hooks:
        method = getattr(hook, "on_give_up", None)
        if method is not None:
            _call(hook, method, details)


def _call(hook: object, method: Any, details: object) -> None:
    try:
        method(details)
    except Exception:
        with _lock:
            first = id(hook) not in _failed
            _failed.add(id(hook))
        if first:
            log.exception("aicoder hook %r raised; it is skipped for this call, and not reported again", hook)


class LoggingHook:
    """The default hook: one WARNING per retry and give-up, one INFO per hold, with ``extra`` fields.

    The messages are on the logger ``aicoder.retry``, with the fields ``origin``,
    ``attempt``, ``wait`` and ``source`` (or those of the hold or the give-up) in
    each record, for structured log handlers.
    """

    def __call__(self, details: RetryDetails) -> None:
        log.warning(
            "Rate limited (429) on %s %s; retry %d/%d in %.3g s (%s)",
            details.method,
            details.url,
            details.attempt,
            details.count,
            details.wait,
            details.source,
            extra={
                "origin": details.origin,
                "attempt": details.attempt,
                "wait": details.wait,
                "source": details.source,
            },
        )

    def on_hold(self, details: HoldDetails) -> None:
        log.info(
            "Holding requests to %s for %.3g s (%s)",
            details.origin,
            details.seconds,
            details.source,
            extra=asdict(details),
        )

    def on_give_up(self, details: GiveUpDetails) -> None:
        hint = f"; the server asked for {details.hint:.3g} s" if details.hint is not None else ""
        log.warning(
            "Rate limited (429) on %s %s; giving up after %d attempt%s (%s)%s",
            details.method,
            details.url,
            details.attempts,
            "" if details.attempts == 1 else "s",
            details.reason,
            hint,
            extra={"origin": details.origin, "attempts": details.attempts, "reason": details.reason},
        )


class PrometheusHook:
    """Counts retries in ``aicoder_retries_total`` (labels ``origin``, ``source``) and observes each wait in
    ``aicoder_wait_seconds``; give-ups in ``aicoder_give_ups_total`` (``origin``, ``reason``).

    Needs ``prometheus-client``: ``pip install prometheus-client``. ``registry``
    defaults to prometheus-client's global one.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ImportError("PrometheusHook needs prometheus-client: pip install prometheus-client") from None
        options: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.retries = prometheus_client.Counter(
            "aicoder_retries",
            "Retries of HTTP 429 answers, by origin and by what set the wait",
            ["origin", "source"],
            **options,
        )
        self.waits = prometheus_client.Histogram(
            "aicoder_wait_seconds", "Seconds waited before a retry's turn", ["origin"], **options
        )
        self.give_ups = prometheus_client.Counter(
            "aicoder_give_ups", "Requests that stopped retrying a 429", ["origin", "reason"], **options
        )

    def __call__(self, details: RetryDetails) -> None:
        self.retries.labels(details.origin, details.source).inc()
        self.waits.labels(details.origin).observe(details.wait)

    def on_give_up(self, details: GiveUpDetails) -> None:
        self.give_ups.labels(details.origin, details.reason).inc()


class OpenTelemetryHook:
    """Counts retries in ``aicoder.retries`` and records each wait in the histogram ``aicoder.wait`` (unit
    ``s``), with the attributes ``origin`` and ``source``.

    Needs ``opentelemetry-api``: ``pip install opentelemetry-api``. ``meter_provider``
    defaults to the global one.
    """

    def __init__(self, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError:
            raise ImportError("OpenTelemetryHook needs opentelemetry-api: pip install opentelemetry-api") from None
        meter = metrics.get_meter("aicoder", meter_provider=meter_provider)
        self.retries = meter.create_counter("aicoder.retries", unit="1", description="Retries of HTTP 429 answers")
        self.waits = meter.create_histogram("aicoder.wait", unit="s", description="Seconds waited before a retry")

    def __call__(self, details: RetryDetails) -> None:
        attributes = {"origin": details.origin, "source": details.source}
        self.retries.add(1, attributes)
        self.waits.record(details.wait, attributes)


set_hooks([LoggingHook()])
