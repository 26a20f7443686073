"""Classic httpx (0.28), the HTTP library of groq, LiteLLM and many in-house clients, over the same retries.

::

    client = groq.Groq(http_client=aicoder.httpx_client(), max_retries=0)
    client = groq.AsyncGroq(http_client=aicoder.async_httpx_client(), max_retries=0)

:class:`HttpxTransport` sends each attempt with httpx's own transport, as
:class:`~aicoder.http.async_transport.AsyncLinearBackoffTransport` sends with httpx2's,
and decides with the very same objects: the policy (a 429 is handed to
:class:`~aicoder.http.policy.LinearRetry` as a urllib3 response), the pace, the hooks.
Each attempt, from sending to the body's last byte, is watched by the adapter's
:class:`~aicoder.http.deadline.Watchdog`, which shuts the connection's socket down
at ``request_timeout``. :class:`AsyncHttpxTransport` is
:class:`~aicoder.http.async_transport.AsyncLinearBackoffTransport` over classic httpx's
requests, responses and errors. Needs httpx: ``pip install httpx`` (or, from a checkout,
``pip install -e '.[httpx]'``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, ClassVar, Unpack

from urllib3.exceptions import MaxRetryError

from aicoder.config import Config
from aicoder.http import waiting
from aicoder.http.adapter import TransportOptions, TransportSettings
from aicoder.http.async_transport import (
    AsyncLinearBackoffTransport,
    DeadlineStream,
    as_urllib3,
    handed_on,
    increment_in_turn,
)
from aicoder.http.cooldown import Turn
from aicoder.http.deadline import AttemptLimit, timed_out_message, watchdog
from aicoder.http.destinations import destination_key
from aicoder.http.policy import LinearRetry, small_and_plain
from aicoder.http.transport import sdk_retry_guard

try:
    import httpcore
    import httpx
except ImportError as error:  # pragma: no cover - the extra is installed wherever this is tested
    raise ImportError("aicoder's classic httpx clients need httpx: pip install httpx") from error

__all__ = ["AsyncHttpxTransport", "HttpxTransport", "async_httpx_client", "httpx_client"]

#: As the SDKs' own clients: ten minutes for an answer, five seconds to connect.
SDK_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
#: As the SDKs' own clients (and :data:`~aicoder.http.async_transport.DEFAULT_LIMITS`): hundreds may be in flight.
LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class HttpxTransport(httpx.BaseTransport):
    """An httpx transport that retries 429s as :class:`~aicoder.http.adapter.LinearBackoffAdapter` does.

    The settings come from ``config`` (default: :meth:`Config.load`), each option
    (:class:`~aicoder.http.adapter.TransportOptions`) overriding its own. ``transport``
    sends each attempt (default: a new ``httpx.HTTPTransport`` with the SDKs' connection
    limits, closed with this one). On an ``httpx.HTTPTransport``'s HTTP/1.1 connections,
    each attempt ends within ``request_timeout``, from sending to the body's last byte:
    past it, ``httpx.ReadTimeout``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[TransportOptions],
    ) -> None:
        settings = TransportSettings.resolve(config, **options)
        self.retry: LinearRetry = settings.retry
        self.cooldowns = settings.cooldowns
        self.request_timeout = settings.request_timeout
        self._transport = transport if transport is not None else httpx.HTTPTransport(limits=LIMITS)
        _watch_attempts(self._transport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, retrying 429s, and return the final response, its body still to be streamed."""
        sdk_retry_guard(request.headers)
        body = request.read()  # read whole, so that every attempt sends it again
        retry = self.retry
        waited: list[float] = []
        turn = None
        if self.cooldowns is not None:
            key = destination_key(str(request.url), request.headers)
            turn = self.cooldowns.take_turn(key, body=body, max_wait=retry.max_hint)
        while True:
            response = self._attempt(request, turn)
            if response.status_code not in LinearRetry.RETRY_STATUSES:
                if turn is not None:
                    turn.cooldowns.observe(turn, response.status_code, response.headers)
                return handed_on(response, retry, waited, http=httpx)
            try:
                content = self._small_body(response)
                retry = increment_in_turn(retry, request, as_urllib3(request, response, content), turn)
            except MaxRetryError:  # out of retries, or the server asks for more than LLM_RETRY_MAX_HINT
                return handed_on(response, retry, waited, content, http=httpx)
            except BaseException:
                response.close()
                raise
            response.close()
            seconds = retry.waits[-1].seconds
            if turn is None:
                waiting.sleep(seconds)
            else:
                seconds = turn.cooldowns.wait_turn(turn, delay=seconds, max_wait=retry.max_hint)
            waited.append(seconds)

    def _attempt(self, request: httpx.Request, turn: Turn | None) -> httpx.Response:
        """One attempt, watched from its first byte written to its body's last byte read."""
        attempt = _Attempt(AttemptLimit(self.request_timeout), turn)
        token = _current_attempt.set(attempt)
        try:
            response = self._transport.handle_request(request)
        except BaseException as error:
            attempt.done()
            if turn is not None:
                turn.cooldowns.failed(turn)
            if attempt.limit.expired:
                raise self._timed_out(request) from error
            raise
        finally:
            _current_attempt.reset(token)
        response.stream = _WatchedBody(response.stream, attempt, lambda: self._timed_out(request))
        return response

    def _timed_out(self, request: httpx.Request) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(timed_out_message(self.request_timeout), request=request)

    def _small_body(self, response: httpx.Response) -> bytes | None:
        """A 429's body, for its hints, if it says it is small and plain (as :func:`read_small_body` reads)."""
        if not self.retry.respect_retry_after_header or not small_and_plain(response.headers):
            return None
        return response.read()

    def close(self) -> None:
        self._transport.close()


class _Attempt:
    """One attempt's limit and turn, and the connection it was written on, which the watchdog watches until
    it ends."""

    __slots__ = ("limit", "stream", "turn")

    def __init__(self, limit: AttemptLimit, turn: Turn | None) -> None:
        self.limit, self.turn = limit, turn
        self.stream: _WatchedStream | None = None

    def began(self, stream: _WatchedStream) -> None:
        """The attempt's request is about to be written on ``stream``: its turn takes a last look at the hold
        (:meth:`~aicoder.http.cooldown.Cooldowns.last_look`), and the watch begins."""
        if self.turn is not None and self.stream is None:
            self.turn.last_look()
        self.done()
        self.stream = stream
        watchdog().watch(stream, self.limit)

    def done(self) -> None:
        if self.stream is not None:
            watchdog().done(self.stream)
            self.stream = None


#: The attempt :class:`HttpxTransport` is sending in this thread.
_current_attempt: ContextVar[_Attempt | None] = ContextVar("aicoder_httpx_attempt", default=None)


def _watch_attempts(transport: httpx.BaseTransport) -> None:
    """Make every HTTP/1.1 connection ``transport`` opens one the watchdog can cut, if it is httpx's own
    (httpcore's pool takes its network backend only when built, which httpx does for us). Other transports
    (a test's ``httpx.MockTransport``) open no socket to cut; on HTTP/2 one connection carries many requests,
    and each attempt is bounded by httpx's own timeouts alone."""
    pool = getattr(transport, "_pool", None) if isinstance(transport, httpx.HTTPTransport) else None
    backend = getattr(pool, "_network_backend", None)
    if backend is not None and not getattr(pool, "_http2", False) and not isinstance(backend, _WatchedBackend):
        pool._network_backend = _WatchedBackend(backend)  # type: ignore[union-attr]


class _WatchedBackend(httpcore.NetworkBackend):
    """httpcore's network backend, whose streams begin the current attempt when first written to."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _WatchedStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _WatchedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _WatchedStream(httpcore.NetworkStream):
    """A connection as the :class:`~aicoder.http.deadline.Watchdog` watches it: ``sock`` is its socket."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    @property
    def sock(self) -> Any:
        return self._stream.get_extra_info("socket")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        attempt = _current_attempt.get()
        if attempt is not None and attempt.stream is not self:
            attempt.began(self)
        self._stream.write(buffer, timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _WatchedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WatchedBody(httpx.SyncByteStream):
    """A response body that ends its attempt when read to its end or closed; cut short at the deadline, it
    raises ``timed_out()``, even where what arrived looks complete."""

    def __init__(self, stream: Any, attempt: _Attempt, timed_out: Callable[[], Exception]) -> None:
        self._stream, self._attempt, self._timed_out = stream, attempt, timed_out

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except Exception as error:
            if self._attempt.limit.expired:
                raise self._timed_out() from error
            raise
        finally:
            self._attempt.done()
        if self._attempt.limit.expired:
            raise self._timed_out()

    def close(self) -> None:
        self._attempt.done()
        self._stream.close()


class _ClassicDeadlineStream(DeadlineStream, httpx.AsyncByteStream):
    pass


class AsyncHttpxTransport(AsyncLinearBackoffTransport):
    """:class:`~aicoder.http.async_transport.AsyncLinearBackoffTransport` for ``httpx.AsyncClient``: the same
    loop over classic httpx's requests and responses, each attempt sent with ``transport`` (default: a new
    ``httpx.AsyncHTTPTransport`` with the SDKs' connection limits), its errors httpx's own."""

    http: ClassVar[Any] = httpx
    deadline_stream: ClassVar[Any] = _ClassicDeadlineStream

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[TransportOptions],
    ) -> None:
        inner: Any = transport if transport is not None else httpx.AsyncHTTPTransport(limits=LIMITS)
        super().__init__(config, transport=inner, **options)


def httpx_client(config: Config | None = None) -> httpx.Client:
    """An ``httpx.Client`` that retries through aicoder, for ``groq.Groq(http_client=…, max_retries=0)``, LiteLLM
    (``litellm.client_session``) or any code on classic httpx. As :func:`~aicoder.http.clients.http_client`,
    with httpx's own proxies and certificates (``HTTPS_PROXY``, ``SSL_CERT_FILE``)."""
    from httpx._utils import get_environment_proxies  # the proxies httpx would take from the environment

    config = config if config is not None else Config.load()
    mounts: dict[str, httpx.BaseTransport | None] = {
        pattern: None
        if proxy is None
        else HttpxTransport(config, transport=httpx.HTTPTransport(proxy=proxy, limits=LIMITS))
        for pattern, proxy in get_environment_proxies().items()
    }
    return httpx.Client(transport=HttpxTransport(config), mounts=mounts, timeout=SDK_TIMEOUT, follow_redirects=True)


def async_httpx_client(config: Config | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that retries through aicoder, for ``groq.AsyncGroq(http_client=…, max_retries=0)``
    or ``litellm.aclient_session``. As :func:`~aicoder.http.clients.async_http_client`, with httpx's own proxies
    and certificates."""
    from httpx._utils import get_environment_proxies  # the proxies httpx would take from the environment

    config = config if config is not None else Config.load()
    mounts: dict[str, Any] = {
        pattern: None
        if proxy is None
        else AsyncHttpxTransport(config, transport=httpx.AsyncHTTPTransport(proxy=proxy, limits=LIMITS))
        for pattern, proxy in get_environment_proxies().items()
    }
    # Not an httpx.AsyncBaseTransport by class, but it has the one method httpx calls, on httpx's types.
    transport: Any = AsyncHttpxTransport(config)
    return httpx.AsyncClient(transport=transport, mounts=mounts, timeout=SDK_TIMEOUT, follow_redirects=True)
