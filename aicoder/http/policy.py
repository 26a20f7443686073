"""The retry policy: which answers are retried, and how long to wait before each retry.

:class:`LinearRetry` is a :class:`urllib3.util.Retry` that urllib3 runs itself, so
there is no retry loop of aicoder's anywhere: 429, and only 429, retried with
capped linear waits, or the server's hint, or (coordinated) the destination's pace.
:mod:`aicoder.http.adapter` hands it to ``requests``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypedDict, Unpack
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

import urllib3.exceptions
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import RequestHistory, Retry

from aicoder.config import Config, check_count, check_delay, check_delay_range, check_hint_cap
from aicoder.http import turns, waiting
from aicoder.http.hints import MAX_BODY, ServerHint, server_hint_and_quotas
from aicoder.http.quotas import Quota
from aicoder.http.redaction import safe_url
from aicoder.http.schedule import linear_delay
from aicoder.http.tokens import RequestCost
from aicoder.instrumentation import GiveUpDetails, RetryDetails, giving_up, retrying

if TYPE_CHECKING:
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = [
    "TOO_MANY_REQUESTS",
    "LinearRetry",
    "RetryOptions",
    "Wait",
    "read_small_body",
    "retry_waits",
    "small_and_plain",
    "take_read_body",
]

TOO_MANY_REQUESTS = 429


@dataclass(frozen=True)
class Wait:
    """One wait before a retry: ``seconds``, and its ``source``, ``"schedule"`` or the hint's header."""

    seconds: float
    source: str


class RetryOptions(TypedDict, total=False):
    """urllib3 ``Retry`` arguments that :class:`LinearRetry` passes through (``new()`` passes them all).

    Most have no use with aicoder's policy; ``respect_retry_after_header`` does.
    """

    total: bool | int | None
    connect: int | None
    read: int | None
    redirect: bool | int | None
    status: int | None
    other: int | None
    allowed_methods: Collection[str] | None
    status_forcelist: Collection[int] | None
    backoff_factor: float
    backoff_max: float
    raise_on_redirect: bool
    raise_on_status: bool
    history: tuple[RequestHistory, ...] | None
    respect_retry_after_header: bool
    remove_headers_on_redirect: Collection[str]
    backoff_jitter: float
    retry_after_max: int


class LinearRetry(Retry):
    """Retry HTTP 429 up to ``count`` times, waiting linearly longer each time.

    - Only 429 is retried, for every method, POST included: a 429 means the
      server did not process the request. Connection errors, read errors and
      every other status surface at once.
    - Retry *k* waits :func:`~aicoder.http.schedule.linear_delay` seconds,
      from ``min_delay`` up to ``max_delay``. ``count=0`` means one attempt.
    - With ``respect_retry_after_header`` (the default) a server hint
      (:func:`~aicoder.http.hints.server_hint`, any dialect) replaces the schedule;
      a hint longer than ``max_hint`` seconds stops retrying at once.
    - When retrying stops, the caller gets the last 429 response itself.

    Like every ``Retry`` it is immutable: :meth:`increment` returns a new one,
    and ``waits`` records each wait taken, beside urllib3's ``history``. Each step
    of the decision is a method a subclass may override, as urllib3's are:
    :meth:`hint`, :meth:`backoff` and :meth:`next_wait`.
    """

    RETRY_STATUSES = frozenset({TOO_MANY_REQUESTS})

    def __init__(
        self,
        count: int = Config.retry_count,
        min_delay: float = Config.retry_min_delay,
        max_delay: float = Config.retry_max_delay,
        *,
        max_hint: float = Config.retry_max_hint,
        waits: tuple[Wait, ...] = (),
        **retry_options: Unpack[RetryOptions],
    ) -> None:
        self.count = check_count("count", count)
        self.min_delay = check_delay("min_delay", min_delay)
        self.max_delay = check_delay("max_delay", max_delay)
        check_delay_range("min_delay", self.min_delay, "max_delay", self.max_delay)
        self.max_hint = check_hint_cap("max_hint", max_hint)
        self.waits = waits
        options: RetryOptions = {
            "total": count,
            "connect": 0,
            "read": False,
            "other": 0,
            "allowed_methods": None,
            "status_forcelist": self.RETRY_STATUSES,
            "raise_on_status": False,
        }
        options.update(retry_options)
        super().__init__(**options)

    def new(self, **kw: Any) -> Self:
        """Carry aicoder's parameters into the next ``Retry``; urllib3's ``new()`` alone drops them."""
        params: dict[str, Any] = {
            "count": self.count,
            "min_delay": self.min_delay,
            "max_delay": self.max_delay,
            "max_hint": self.max_hint,
            "waits": self.waits,
        }
        params.update(kw)
        return super().new(**params)

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        """Retry 429 only, whatever the method and whatever ``Retry-After`` says."""
        return status_code in self.RETRY_STATUSES

    def hint_and_quotas(
        self, headers: Mapping[str, str], body: bytes | None = None, cost: RequestCost | None = None
    ) -> tuple[ServerHint | None, tuple[Quota, ...]]:
        """Return the wait a 429 asks for in its ``headers`` and ``body`` (``None`` if absent or ignored), and the
        limits its body states."""
        if not self.respect_retry_after_header:
            return None, ()
        return server_hint_and_quotas(headers, body, cost=cost)

    def backoff(self, number: int) -> float:
        """The schedule's wait before retry ``number`` (1-based), for a 429 that says nothing."""
        return linear_delay(number, self.count, self.min_delay, self.max_delay)

    def next_wait(self, hint: ServerHint | None, number: int, paced: bool = False) -> Wait:
        """The wait before retry ``number``: the server's hint if it gave one, else the schedule.

        A hint is a floor, whole seconds included: the retry never goes before the time
        the server stated. A ``paced`` retry is bound for a destination whose rate is
        known (from its quotas, or measured between its 429s), and waits its turn at
        that rate anyway: that is a better backoff than a guess, so it needs no
        schedule of its own.
        """
        if hint is not None:
            return Wait(hint.seconds, hint.source)
        if paced:
            return Wait(0.0, "pace")
        return Wait(self.backoff(number), "schedule")

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        """Count one more attempt and decide the wait before the next, or give up."""
        if response is None or error is not None or response.status not in self.RETRY_STATUSES:
            return super().increment(method, url, response, error, _pool, _stacktrace)

        if response.retries is None:  # urllib3 records it; `responses` does not
            response.retries = self
        turn = turns.current()
        body = read_small_body(response) if self.respect_retry_after_header else None
        hint, stated = self.hint_and_quotas(response.headers, body, turn.cost if turn is not None else None)
        too_long = hint is not None and hint.seconds > self.max_hint
        if turn is not None:  # tell every request bound for this destination, not only this one
            turn.observe(response.status, response.headers, None if too_long else hint, stated)
        where = _display_url(url, _pool)
        if hint is not None and too_long:
            attempts = len(self.history) + 1
            giving_up(GiveUpDetails(method or "", where, _origin(where), attempts, _TOO_LONG, hint.seconds))
            raise MaxRetryError(_pool, url, ResponseError(f"server asked to wait {hint.seconds:.3g} s"))  # type: ignore[arg-type]

        try:
            retry = super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError:
            seconds = hint.seconds if hint is not None else None
            giving_up(GiveUpDetails(method or "", where, _origin(where), len(self.history) + 1, _EXHAUSTED, seconds))
            raise
        number = len(retry.history)
        wait = self.next_wait(hint, number, turn is not None and turn.paced)
        queued = turn.queued if turn is not None else 0.0
        retrying(
            RetryDetails(method or "", where, _origin(where), number, wait.seconds, wait.source, queued, self.count)
        )
        return retry.new(waits=(*self.waits, wait))

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        """Take the wait :meth:`increment` decided; :func:`aicoder.testing.instant_waits` skips it.

        Under a coordinating :class:`LinearBackoffAdapter` the retry then also
        waits for its turn at the destination, behind requests already queued.
        """
        if not self.waits:
            return
        turn = turns.current()
        seconds = self.waits[-1].seconds
        if turn is None:
            waiting.sleep(seconds)
        else:
            seconds = turn.wait(seconds, self.max_hint)
        waited = retry_waits.get()
        if waited is not None:
            waited.append(seconds)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(count={self.count}, min_delay={self.min_delay}, max_delay={self.max_delay}, "
            f"max_hint={self.max_hint}, respect_retry_after_header={self.respect_retry_after_header}, "
            f"total={self.total})"
        )


#: The seconds waited before each retry of the request in this thread, queueing included: set by the adapter.
retry_waits: ContextVar[list[float] | None] = ContextVar("aicoder_waited", default=None)
#: 429 bodies read for their hints, by response, until the adapter hands them on (see :func:`read_small_body`).
_read_bodies: WeakKeyDictionary[BaseHTTPResponse, bytes] = WeakKeyDictionary()


def read_small_body(response: BaseHTTPResponse) -> bytes | None:
    """Read a 429's body for its hints, if that can be done without losing it for the caller.

    Only a body that declares its length, at most :data:`~aicoder.http.hints.MAX_BODY`,
    and is not compressed is read: the adapter then hands the same bytes on as the
    response's content (see :meth:`LinearBackoffAdapter.send`). Any other body is
    left unread, and only the headers give hints.
    """
    if not small_and_plain(response.headers):
        return None
    try:
        body = response.read(decode_content=False, cache_content=True)
    except (urllib3.exceptions.HTTPError, OSError):
        return None
    _read_bodies[response] = body
    return body


def small_and_plain(headers: Mapping[str, str]) -> bool:
    """Whether a body declares a length of at most :data:`~aicoder.http.hints.MAX_BODY` and no compression:
    the only 429 bodies read for hints, by the adapter and the async transport alike."""
    if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return False
    length = headers.get("content-length", "")
    return length.isascii() and length.isdigit() and int(length) <= MAX_BODY


_TOO_LONG = "hint past LLM_RETRY_MAX_HINT"
_EXHAUSTED = "retries exhausted"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme else ""


def _display_url(url: str | None, pool: ConnectionPool | None) -> str:
    """Return ``url`` absolute and without its query string: safe to log."""
    if pool is None:
        return safe_url(url or "")
    return safe_url(url or "", scheme=pool.scheme or "", host=pool.host, port=pool.port)


def take_read_body(response: BaseHTTPResponse) -> bytes | None:
    """The body :func:`read_small_body` read from ``response``, once; ``None`` if it read none."""
    return _read_bodies.pop(response, None) if _read_bodies else None
