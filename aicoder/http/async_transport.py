"""The asyncio transport: the same retry policy, hints and pace as the adapter, with every wait an ``await``.

:class:`AsyncLinearBackoffTransport` is an ``httpx2.AsyncBaseTransport`` for
``httpx2.AsyncClient`` and so for ``openai.AsyncOpenAI``. It sends with an inner
async transport (httpx2's own, by default) and decides with the very objects the
sync adapter decides with: :class:`~aicoder.http.policy.LinearRetry` (a 429 is
handed to its ``increment()`` as a urllib3 response: same hints, caps, hooks and
give-ups) and :class:`~aicoder.http.cooldown.Cooldowns` (same turns, shared with
sync requests to the same destination, and through Redis when configured). Only
the waiting differs: it awaits, so the event loop is never blocked, and a
cancelled task stops waiting at once and gives up its turn.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Protocol, TypeVar, Unpack

import httpx2
from urllib3 import HTTPHeaderDict, HTTPResponse
from urllib3.exceptions import MaxRetryError

from aicoder.config import Config
from aicoder.http import turns, waiting
from aicoder.http.adapter import TransportOptions, TransportSettings
from aicoder.http.cooldown import Turn
from aicoder.http.deadline import timed_out_message
from aicoder.http.destinations import destination_key
from aicoder.http.policy import LinearRetry, small_and_plain
from aicoder.http.transport import NO_SDK_RETRY, RETRY_EXTENSION, WAITS_EXTENSION, sdk_retry_guard

__all__ = ["AsyncLinearBackoffTransport", "DeadlineStream", "as_urllib3", "handed_on", "increment_in_turn"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Response(Protocol):
    """httpx2's response, or classic httpx's: the two have one shape."""

    status_code: int
    headers: Any
    stream: Any
    extensions: Any


_R = TypeVar("_R", bound=_Response)
_NO_SDK_RETRY_NAME, _NO_SDK_RETRY_VALUE = (part.decode() for part in NO_SDK_RETRY)
#: The openai SDK's own async client's connection limits: hundreds of tasks may be in flight at once.
DEFAULT_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)


class DeadlineStream:
    """A response body that must arrive by ``deadline`` (the event loop's clock), or time out: with an
    HTTP library's async byte stream as a second base (:attr:`AsyncLinearBackoffTransport.deadline_stream`)."""

    def __init__(
        self, stream: httpx2.AsyncByteStream | Any, deadline: float, timed_out: Callable[[], Exception]
    ) -> None:
        self._stream = stream
        self._deadline = deadline
        self._timed_out = timed_out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._stream.__aiter__()
        while True:
            chunk = None
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                pass
            if chunk is None:
                raise self._timed_out()
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Httpx2DeadlineStream(DeadlineStream, httpx2.AsyncByteStream):
    pass


class AsyncLinearBackoffTransport(httpx2.AsyncBaseTransport):
    """An httpx2 async transport that retries 429s as :class:`~aicoder.http.adapter.LinearBackoffAdapter` does.

    Use it as ``httpx2.AsyncClient(transport=AsyncLinearBackoffTransport())``, or
    take :func:`~aicoder.http.clients.async_http_client`. The settings come from
    ``config`` (default: :meth:`Config.load`), each option (:class:`TransportOptions`)
    overriding its own, as for the adapter. ``transport`` sends each attempt
    (default: a new ``httpx2.AsyncHTTPTransport`` with the SDK's connection limits,
    closed with this one). Each attempt ends within ``request_timeout``, from
    sending to the body's last byte.
    """

    #: The HTTP library of the requests, responses and errors it handles (classic httpx for
    #: :class:`~aicoder.http.classic_httpx.AsyncHttpxTransport`), and a :class:`DeadlineStream` that is one of
    #: its async byte streams.
    http: ClassVar[Any] = httpx2
    deadline_stream: ClassVar[Any] = _Httpx2DeadlineStream

    def __init__(
        self,
        config: Config | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        **options: Unpack[TransportOptions],
    ) -> None:
        settings = TransportSettings.resolve(config, **options)
        self.retry: LinearRetry = settings.retry
        self.cooldowns = settings.cooldowns
        self.request_timeout = settings.request_timeout
        self._transport = transport if transport is not None else httpx2.AsyncHTTPTransport(limits=DEFAULT_LIMITS)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request``, retrying 429s, and return the final response, its body still to be streamed."""
        sdk_retry_guard(request.headers)
        body = await request.aread()  # read whole, so that every attempt sends it again
        retry = self.retry
        waited: list[float] = []
        turn = None
        if self.cooldowns is not None:
            key = destination_key(str(request.url), request.headers)
            turn = await self.cooldowns.atake_turn(key, body=body, max_wait=retry.max_hint)
        remote = turn is not None and turn.destination.pace.REMOTE
        while True:
            response = await self._attempt(request, turn)
            if response.status_code not in LinearRetry.RETRY_STATUSES:
                if turn is not None:
                    await _maybe_off_loop(remote, turn.cooldowns.observe, turn, response.status_code, response.headers)
                return handed_on(response, retry, waited, http=self.http)
            try:
                content = await self._small_body(response)
                answer = as_urllib3(request, response, content)
                retry = await _maybe_off_loop(remote, increment_in_turn, retry, request, answer, turn)
            except MaxRetryError:  # out of retries, or the server asks for more than LLM_RETRY_MAX_HINT
                return handed_on(response, retry, waited, content, http=self.http)
            except BaseException:
                await response.aclose()
                raise
            await response.aclose()
            seconds = retry.waits[-1].seconds
            if turn is None:
                await waiting.asleep(seconds)
            else:
                seconds = await turn.cooldowns.await_turn(turn, delay=seconds, max_wait=retry.max_hint)
            waited.append(seconds)

    async def _attempt(self, request: httpx2.Request, turn: Turn | None) -> httpx2.Response:
        """One attempt, its headers within ``request_timeout``; its body, streamed later, within the rest."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        response = None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._transport.handle_async_request(request)
        except TimeoutError:
            pass  # raised below, outside this handler: the cancellation that ended the attempt is no cause of it
        except BaseException:
            if turn is not None:
                turn.cooldowns.failed(turn)
            raise
        if response is None:
            if turn is not None:
                turn.cooldowns.failed(turn)
            raise self._timed_out(request)
        response.stream = self.deadline_stream(response.stream, deadline, lambda: self._timed_out(request))
        return response

    def _timed_out(self, request: httpx2.Request) -> Exception:
        """``ReadTimeout``, of :attr:`http`, for an attempt cut short at its deadline."""
        timed_out: Exception = self.http.ReadTimeout(timed_out_message(self.request_timeout), request=request)
        return timed_out

    async def _small_body(self, response: httpx2.Response) -> bytes | None:
        """A 429's body, for its hints, if it says it is small and plain (as :func:`read_small_body` reads)."""
        if not self.retry.respect_retry_after_header or not small_and_plain(response.headers):
            return None
        return await response.aread()

    async def aclose(self) -> None:
        await self._transport.aclose()


def increment_in_turn(retry: LinearRetry, request: Any, answer: HTTPResponse, turn: Turn | None) -> LinearRetry:
    """Run the policy's own ``increment()`` on a 429, in ``turn``, as urllib3 runs it for the adapter."""
    token = turns.enter(turn) if turn is not None else None
    try:
        return retry.increment(request.method, str(request.url), response=answer)
    finally:
        if token is not None:
            turns.leave(token)


def as_urllib3(request: Any, response: _Response, content: bytes | None) -> HTTPResponse:
    """The 429 as the urllib3 response :class:`LinearRetry` reads: the same headers, and the body if it was read."""
    headers = HTTPHeaderDict()
    for name, value in response.headers.raw:
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    if content is None:  # unread: the policy must not try to read it either
        headers.discard("content-length")
    return HTTPResponse(
        # A file, not bytes: urllib3 reads bytes given with preload_content=False as no body at all.
        body=io.BytesIO(content or b""),
        headers=headers,
        status=response.status_code,
        preload_content=False,
        decode_content=False,
        request_method=request.method,
        request_url=str(request.url),
    )


def handed_on(
    response: _R, retry: LinearRetry, waited: list[float], content: bytes | None = None, *, http: Any = httpx2
) -> _R:
    """``response`` with aicoder's record of the retries, and marked so that the SDK never retries it again;
    with ``content``, the body already read, as a new response of ``http`` (httpx2, or classic httpx)."""
    extensions = {**response.extensions, RETRY_EXTENSION: retry, WAITS_EXTENSION: tuple(waited)}
    if content is None:  # the answer still to be read, as it came: marked where it is
        response.extensions = extensions
        response.headers[_NO_SDK_RETRY_NAME] = _NO_SDK_RETRY_VALUE
        return response
    headers = [*response.headers.raw, NO_SDK_RETRY]
    answer: _R = http.Response(
        response.status_code, headers=headers, stream=http.ByteStream(content), extensions=extensions
    )
    return answer


async def _maybe_off_loop(remote: bool, call: Callable[..., _T], *args: Any) -> _T:
    """Run ``call`` here, or, if it may wait on Redis (``remote``), in a worker thread, in this task's context."""
    if not remote:
        return call(*args)
    return await asyncio.to_thread(call, *args)
