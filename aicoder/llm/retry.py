"""Retrying HTTP 429, and only 429, with capped linear waits, inside urllib3.

:class:`LinearRetry` is the policy: a :class:`urllib3.util.Retry` that urllib3
runs itself, so there is no retry loop of ours anywhere. :class:`LinearBackoffAdapter`
hands it to ``requests``, the way :class:`requests.adapters.HTTPAdapter` hands
over any ``max_retries``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypedDict, Unpack
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import RequestHistory, Retry

from aicoder.config import (
    REQUEST_TIMEOUT,
    Config,
    check,
    check_bool,
    check_count,
    check_delay,
    check_delay_range,
    check_hint_cap,
)
from aicoder.instrumentation import GiveUpDetails, RetryDetails, giving_up, retrying
from aicoder.llm import waiting
from aicoder.llm.cooldown import Cooldowns, current_turn, destination_key, shared_cooldowns
from aicoder.llm.deadline import AttemptLimit, DeadlineHTTPConnectionPool, DeadlineHTTPSConnectionPool, current_limit
from aicoder.llm.hints import MAX_BODY, ServerHint, server_hint
from aicoder.llm.redaction import safe_url
from aicoder.llm.schedule import linear_delay
from aicoder.llm.tokens import RequestCost

if TYPE_CHECKING:
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

__all__ = ["LinearBackoffAdapter", "LinearRetry", "Wait", "retrying_session"]

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
    - Retry *k* waits :func:`~aicoder.llm.schedule.linear_delay` seconds,
      from ``min_delay`` up to ``max_delay``. ``count=0`` means one attempt.
    - With ``respect_retry_after_header`` (the default) a server hint
      (:func:`~aicoder.llm.hints.server_hint`, any dialect) replaces the schedule;
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

    def hint(
        self, headers: Mapping[str, str], body: bytes | None = None, cost: RequestCost | None = None
    ) -> ServerHint | None:
        """Return the wait a 429 asks for in its ``headers`` and ``body``, or ``None`` if absent or ignored."""
        if not self.respect_retry_after_header:
            return None
        return server_hint(headers, body, cost=cost)

    def backoff(self, number: int) -> float:
        """The schedule's wait before retry ``number`` (1-based), for a 429 that says nothing."""
        return linear_delay(number, self.count, self.min_delay, self.max_delay)

    def next_wait(self, hint: ServerHint | None, number: int, paced: bool = False) -> Wait:
        """The wait before retry ``number``: the server's hint if it gave one, else the schedule.

        A ``paced`` retry is bound for a destination whose rate is known (from its
        quotas, or measured between its 429s), and waits its turn at that rate anyway:
        that is a better backoff than a guess. So it needs no schedule of its own, and
        of a whole-second hint, which may be rounded up, only the part that is
        certain: a second less, as every other request bound there waits.
        """
        if hint is not None:
            if paced and hint.coarse:
                return Wait(max(hint.seconds - 1, 0.0), hint.source)
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
        turn = current_turn.get()
        body = read_small_body(response) if self.respect_retry_after_header else None
        hint = self.hint(response.headers, body, turn.cost if turn is not None else None)
        too_long = hint is not None and hint.seconds > self.max_hint
        if turn is not None:  # tell every request bound for this destination, not only this one
            turn.cooldowns.observe(turn, response.status, response.headers, None if too_long else hint)
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
        turn = current_turn.get()
        seconds = self.waits[-1].seconds
        if turn is None:
            waiting.sleep(seconds)
        else:
            seconds = turn.cooldowns.wait_turn(turn, delay=seconds, max_wait=self.max_hint)
        waited = _waited.get()
        if waited is not None:
            waited.append(seconds)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(count={self.count}, min_delay={self.min_delay}, max_delay={self.max_delay}, "
            f"max_hint={self.max_hint}, respect_retry_after_header={self.respect_retry_after_header}, "
            f"total={self.total})"
        )


#: The seconds waited before each retry of the request in this thread, queueing included: set by the adapter.
_waited: ContextVar[list[float] | None] = ContextVar("aicoder_waited", default=None)
#: What :func:`waits_of` returns, by response.
_waits: WeakKeyDictionary[requests.Response, tuple[float, ...]] = WeakKeyDictionary()
#: What :func:`limit_of` returns, by response.
_limits: WeakKeyDictionary[requests.Response, AttemptLimit] = WeakKeyDictionary()

#: 429 bodies read for their hints, by response, until the adapter hands them on (see :func:`read_small_body`).
_read_bodies: WeakKeyDictionary[BaseHTTPResponse, bytes] = WeakKeyDictionary()


def read_small_body(response: BaseHTTPResponse) -> bytes | None:
    """Read a 429's body for its hints, if that can be done without losing it for the caller.

    Only a body that declares its length, at most :data:`~aicoder.llm.hints.MAX_BODY`,
    and is not compressed is read: the adapter then hands the same bytes on as the
    response's content (see :meth:`LinearBackoffAdapter.send`). Any other body is
    left unread, and only the headers give hints.
    """
    headers = response.headers
    if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    length = headers.get("content-length", "")
    if not (length.isascii() and length.isdigit() and int(length) <= MAX_BODY):
        return None
    try:
        body = response.read(decode_content=False, cache_content=True)
    except (urllib3.exceptions.HTTPError, OSError):
        return None
    _read_bodies[response] = body
    return body


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


class LinearBackoffAdapter(HTTPAdapter):
    """A :class:`requests.adapters.HTTPAdapter` that retries 429s with :class:`LinearRetry`.

    Mount it on any session: ``session.mount("https://", LinearBackoffAdapter())``.
    The policy comes from ``config`` (default: :meth:`Config.load`, the one step
    that reads the environment and ``.env``); ``count``,
    ``min_delay``, ``max_delay``, ``max_hint``, ``respect_retry_after`` and
    ``coordinate`` override it one by one. The pool arguments are
    :class:`~requests.adapters.HTTPAdapter`'s; make ``pool_maxsize`` at least the
    number of threads sharing the session.

    With ``coordinate`` (the default), every request, first attempt or retry,
    waits for its turn at its destination in ``cooldowns`` (default: the
    process-wide :func:`~aicoder.llm.cooldown.shared_cooldowns`), so threads and
    sessions calling the same API with the same key back off together.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "coordinate", "request_timeout"]  # noqa: RUF012 - requests' pickling list

    def __init__(
        self,
        config: Config | None = None,
        *,
        count: int | None = None,
        min_delay: float | None = None,
        max_delay: float | None = None,
        max_hint: float | None = None,
        respect_retry_after: bool | None = None,
        coordinate: bool | None = None,
        cooldowns: Cooldowns | None = None,
        request_timeout: float | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
    ) -> None:
        if config is None:
            config = Config.load()
        retry = LinearRetry(
            config.retry_count if count is None else count,
            config.retry_min_delay if min_delay is None else min_delay,
            config.retry_max_delay if max_delay is None else max_delay,
            max_hint=config.retry_max_hint if max_hint is None else max_hint,
            respect_retry_after_header=(
                config.retry_respect_retry_after
                if respect_retry_after is None
                else check_bool("respect_retry_after", respect_retry_after)
            ),
        )
        self.coordinate = config.retry_coordinate if coordinate is None else check_bool("coordinate", coordinate)
        self.cooldowns = (cooldowns or shared_cooldowns()) if self.coordinate else None
        self.request_timeout = float(
            config.request_timeout
            if request_timeout is None
            else check("request_timeout", request_timeout, REQUEST_TIMEOUT)
        )
        super().__init__(pool_connections, pool_maxsize, max_retries=retry, pool_block=pool_block)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """As requests' own, with pools whose attempts end at ``request_timeout`` (:mod:`aicoder.llm.deadline`)."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _use_deadline_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """As requests' own, with the same deadline pools behind an HTTP proxy."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _use_deadline_pools(manager)
        return manager

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled adapters coordinate through this process's :func:`shared_cooldowns`."""
        super().__setstate__(state)  # type: ignore[misc]  # defined by requests, missing from its stubs
        self.cooldowns = shared_cooldowns() if self.coordinate else None

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Wait for this request's turn at its destination, send it, and learn from the answer.

        Each attempt ends within ``request_timeout``, from connect to last byte: past
        it, the attempt is cut short and :class:`requests.ReadTimeout` is raised.
        """
        waited: list[float] = []
        limit = AttemptLimit(self.request_timeout)
        waited_token, limit_token = _waited.set(waited), current_limit.set(limit)
        try:
            response = self._send(request, stream, timeout, verify, cert, proxies)
        except requests.RequestException as exc:
            if limit.expired:
                message = f"an attempt took longer than LLM_REQUEST_TIMEOUT={limit.seconds:g} s"
                raise requests.ReadTimeout(message, request=request) from exc
            raise
        finally:
            _waited.reset(waited_token)
            current_limit.reset(limit_token)
        if waited:
            _waits[response] = tuple(waited)
        _limits[response] = limit  # a body still to be streamed stays under it
        check_deadline(response)  # a connection cut short can look like headers that simply ended
        return _with_read_body(response)

    def _send(
        self,
        request: requests.PreparedRequest,
        stream: bool,
        timeout: Any,
        verify: bool | str,
        cert: Any,
        proxies: Mapping[str, str] | None,
    ) -> requests.Response:
        if self.cooldowns is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        cooldowns = self.cooldowns
        key = destination_key(request.url or "", request.headers)
        turn = cooldowns.take_turn(key, body=request.body, max_wait=self.retry.max_hint)
        token = current_turn.set(turn)
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except BaseException:
            cooldowns.failed(turn)
            raise
        finally:
            current_turn.reset(token)
        # A 429 has already been observed, hint and all, by LinearRetry.increment, which urllib3
        # runs for every 429, the last one included.
        if response.status_code not in LinearRetry.RETRY_STATUSES:
            cooldowns.observe(turn, response.status_code, response.headers)
        return response

    @property
    def retry(self) -> LinearRetry:
        """The policy every request through this adapter starts from."""
        assert isinstance(self.max_retries, LinearRetry)
        return self.max_retries


def _with_read_body(response: requests.Response) -> requests.Response:
    """Hand on a 429 body that :func:`read_small_body` already read, as the response's content."""
    body = _read_bodies.pop(response.raw, None) if _read_bodies else None
    if body is not None:
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]  # requests' own flag, missing from its stubs
    return response


class AdapterOptions(TypedDict, total=False):
    """:class:`LinearBackoffAdapter` arguments that :func:`retrying_session` passes on."""

    count: int
    min_delay: float
    max_delay: float
    max_hint: float
    respect_retry_after: bool
    coordinate: bool
    cooldowns: Cooldowns
    request_timeout: float
    pool_connections: int
    pool_maxsize: int
    pool_block: bool


def retrying_session(config: Config | None = None, **adapter_options: Unpack[AdapterOptions]) -> requests.Session:
    """Return a new :class:`requests.Session` with a :class:`LinearBackoffAdapter` on ``http://`` and ``https://``.

    ``adapter_options`` are passed to :class:`LinearBackoffAdapter`. Certificates are
    verified against ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` if set, else
    ``SSL_CERT_FILE`` if set, else certifi's bundle.
    """
    adapter = LinearBackoffAdapter(config, **adapter_options)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # requests trusts REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, but not SSL_CERT_FILE, which the openai
    # SDK's own client honours: take it as the session's bundle (those two still win over it).
    ca_file = os.environ.get("SSL_CERT_FILE")
    if ca_file:
        session.verify = ca_file
    return session


def _use_deadline_pools(manager: Any) -> None:
    pools = getattr(manager, "pool_classes_by_scheme", None)
    if isinstance(pools, dict):
        manager.pool_classes_by_scheme = {
            **pools,
            "http": DeadlineHTTPConnectionPool,
            "https": DeadlineHTTPSConnectionPool,
        }


def limit_of(response: requests.Response) -> AttemptLimit | None:
    """The deadline ``response``'s attempt ran under, if it came through a :class:`LinearBackoffAdapter`."""
    return _limits.get(response)


def check_deadline(response: requests.Response) -> None:
    """Raise :class:`requests.ReadTimeout` if ``response``'s attempt was cut short at its deadline.

    Call it after reading a body: a connection cut short ends the body early, and
    what was read so far can look complete. The response is closed first.
    """
    limit = _limits.get(response)
    if limit is not None and limit.expired:
        response.close()  # its connection was cut: nothing more will come of it
        raise requests.ReadTimeout(
            f"an attempt took longer than LLM_REQUEST_TIMEOUT={limit.seconds:g} s", request=response.request
        )


def waits_of(response: requests.Response) -> tuple[float, ...]:
    """The seconds waited before each retry of the request ``response`` answers, queueing included."""
    return _waits.get(response, ())


def retry_state(response: requests.Response) -> LinearRetry | None:
    """Return the :class:`LinearRetry` in force when ``response`` arrived, if one was."""
    retries = getattr(response.raw, "retries", None)
    return retries if isinstance(retries, LinearRetry) else None
