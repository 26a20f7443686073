"""The transport adapter: the retry policy, the shared pace and a deadline per attempt, on a ``requests`` session.

:class:`LinearBackoffAdapter` hands :class:`~aicoder.http.policy.LinearRetry` to
``requests`` the way :class:`requests.adapters.HTTPAdapter` hands over any
``max_retries``, and around each send takes the request's turn at its destination.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict, Unpack
from weakref import WeakKeyDictionary

import requests
from requests.adapters import HTTPAdapter

from aicoder.config import REQUEST_TIMEOUT, Config, check, check_bool
from aicoder.http import turns
from aicoder.http.cooldown import Cooldowns, default_cooldowns
from aicoder.http.deadline import (
    AttemptLimit,
    DeadlineHTTPConnectionPool,
    DeadlineHTTPSConnectionPool,
    current_limit,
    timed_out_message,
)
from aicoder.http.destinations import destination_key
from aicoder.http.policy import LinearRetry, retry_waits, take_read_body

__all__ = [
    "POOL_MAXSIZE",
    "AdapterOptions",
    "LinearBackoffAdapter",
    "TransportOptions",
    "TransportSettings",
    "check_deadline",
    "limit_of",
    "retry_state",
    "retrying_session",
    "waits_of",
]

#: What :func:`waits_of` returns, by response.
_waits: WeakKeyDictionary[requests.Response, tuple[float, ...]] = WeakKeyDictionary()
#: What :func:`limit_of` returns, by response.
_limits: WeakKeyDictionary[requests.Response, AttemptLimit] = WeakKeyDictionary()


#: Connections kept per host: as many as the async client keeps alive, so concurrency, not the pool, sets the
#: number of connections a batch of threads opens and reuses.
POOL_MAXSIZE = 100


class LinearBackoffAdapter(HTTPAdapter):
    """A :class:`requests.adapters.HTTPAdapter` that retries 429s with :class:`LinearRetry`.

    Mount it on any session: ``session.mount("https://", LinearBackoffAdapter())``.
    The policy comes from ``config`` (default: :meth:`Config.load`, the one step
    that reads the environment and ``.env``); the options (:class:`TransportOptions`:
    ``count``, ``min_delay``, ``max_delay``, ``max_hint``, ``respect_retry_after``,
    ``coordinate``, ``cooldowns``, ``request_timeout``) override it one by one. The pool arguments are
    :class:`~requests.adapters.HTTPAdapter`'s, but ``pool_maxsize`` defaults to
    :data:`POOL_MAXSIZE` (requests': 10): each host's pool keeps that many connections
    for reuse, so up to that many threads share the session without urllib3's
    "Connection pool is full, discarding connection". Connections are opened only
    as concurrency needs them.

    With ``coordinate`` (the default), every request, first attempt or retry,
    waits for its turn at its destination in ``cooldowns`` (default: the
    process-wide :func:`~aicoder.http.cooldown.default_cooldowns`), so threads and
    sessions calling the same API with the same key back off together.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "coordinate", "request_timeout", "redis_url"]  # noqa: RUF012 - requests' pickling list

    def __init__(
        self,
        config: Config | None = None,
        *,
        pool_connections: int = 10,
        pool_maxsize: int = POOL_MAXSIZE,
        pool_block: bool = False,
        **options: Unpack[TransportOptions],
    ) -> None:
        settings = TransportSettings.resolve(config, **options)
        self.coordinate, self.redis_url = settings.coordinate, settings.redis_url
        self.cooldowns, self.request_timeout = settings.cooldowns, settings.request_timeout
        super().__init__(pool_connections, pool_maxsize, max_retries=settings.retry, pool_block=pool_block)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """As requests' own, with pools whose attempts end at ``request_timeout`` (:mod:`aicoder.http.deadline`)."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _use_deadline_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """As requests' own, with the same deadline pools behind an HTTP proxy."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _use_deadline_pools(manager)
        return manager

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled adapters coordinate through this process's :func:`default_cooldowns`."""
        super().__setstate__(state)  # type: ignore[misc]  # defined by requests, missing from its stubs
        self.cooldowns = default_cooldowns(self.redis_url) if self.coordinate else None

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
        waited_token, limit_token = retry_waits.set(waited), current_limit.set(limit)
        try:
            response = self._send(request, stream, timeout, verify, cert, proxies)
        except requests.RequestException as exc:
            if limit.expired:
                raise requests.ReadTimeout(timed_out_message(limit.seconds), request=request) from exc
            raise
        finally:
            retry_waits.reset(waited_token)
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
        token = turns.enter(turn)
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except BaseException:
            cooldowns.failed(turn)
            raise
        finally:
            turns.leave(token)
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


class TransportOptions(TypedDict, total=False):
    """The settings a retrying transport, sync or async, takes one by one; each given overrides its ``Config`` field.

    ``None`` is as absent: the field from ``config``.
    """

    count: int | None
    min_delay: float | None
    max_delay: float | None
    max_hint: float | None
    respect_retry_after: bool | None
    coordinate: bool | None
    cooldowns: Cooldowns | None
    request_timeout: float | None


class TransportSettings(NamedTuple):
    """What a retrying transport, sync (:class:`LinearBackoffAdapter`) or async, runs with: one set of rules."""

    retry: LinearRetry
    coordinate: bool
    redis_url: str | None
    cooldowns: Cooldowns | None
    request_timeout: float

    @classmethod
    def resolve(cls, config: Config | None = None, **options: Unpack[TransportOptions]) -> TransportSettings:
        """The settings from ``config`` (default: :meth:`Config.load`), each option given overriding its own."""
        if config is None:
            config = Config.load()
        count, min_delay, max_delay = options.get("count"), options.get("min_delay"), options.get("max_delay")
        max_hint, respect_retry_after = options.get("max_hint"), options.get("respect_retry_after")
        coordinate, request_timeout = options.get("coordinate"), options.get("request_timeout")
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
        coordinate = config.retry_coordinate if coordinate is None else check_bool("coordinate", coordinate)
        redis_url = config.redis_url
        timeout = float(
            config.request_timeout
            if request_timeout is None
            else check("request_timeout", request_timeout, REQUEST_TIMEOUT)
        )
        given = options.get("cooldowns")  # not `or`: a Cooldowns that knows no destination yet is empty, and falsy
        chosen = (given if given is not None else default_cooldowns(redis_url)) if coordinate else None
        return cls(retry, coordinate, redis_url, chosen, timeout)


def _with_read_body(response: requests.Response) -> requests.Response:
    """Hand on a 429 body that :func:`read_small_body` already read, as the response's content."""
    body = take_read_body(response.raw)
    if body is not None:
        response._content = body
        response._content_consumed = True  # type: ignore[attr-defined]  # requests' own flag, missing from its stubs
    return response


class AdapterOptions(TransportOptions, total=False):
    """:class:`LinearBackoffAdapter` arguments that :func:`retrying_session` passes on."""

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
        raise requests.ReadTimeout(timed_out_message(limit.seconds), request=response.request)


def waits_of(response: requests.Response) -> tuple[float, ...]:
    """The seconds waited before each retry of the request ``response`` answers, queueing included."""
    return _waits.get(response, ())


def retry_state(response: requests.Response) -> LinearRetry | None:
    """Return the :class:`LinearRetry` in force when ``response`` arrived, if one was."""
    retries = getattr(response.raw, "retries", None)
    return retries if isinstance(retries, LinearRetry) else None
