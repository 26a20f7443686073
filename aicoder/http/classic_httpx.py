"""Classic httpx (0.28), the HTTP library of groq, LiteLLM and many in-house clients, over the same retries.

::

    client = groq.Groq(http_client=aicoder.httpx_client(), max_retries=0)
    client = groq.AsyncGroq(http_client=aicoder.async_httpx_client(), max_retries=0)

httpx and httpx2 share one API, so there is no second bridge. :class:`HttpxTransport`
sends each request through the sync bridge's own code
(:meth:`~aicoder.http.transport.RequestsTransport.exchange`) and builds httpx's
response from the ``requests`` one, as the bridge builds httpx2's.
:class:`AsyncHttpxTransport` hands each request to
:class:`~aicoder.http.async_transport.AsyncLinearBackoffTransport` and converts at the
edge: the request in; the response, still streaming, and any error out. The policy,
the pace, the hooks and the errors are the very same objects. Needs httpx:
``pip install httpx`` (or, from a checkout, ``pip install -e '.[httpx]'``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import requests

from aicoder.config import Config
from aicoder.http.adapter import retrying_session
from aicoder.http.async_transport import DEFAULT_LIMITS, AsyncLinearBackoffTransport
from aicoder.http.transport import RequestsTransport, ResponseStream

try:
    import httpx
except ImportError as error:  # pragma: no cover - the extra is installed wherever this is tested
    raise ImportError("aicoder's classic httpx clients need httpx: pip install httpx") from error

__all__ = ["AsyncHttpxTransport", "HttpxTransport", "async_httpx_client", "httpx_client"]

#: As the SDKs' own clients: ten minutes for an answer, five seconds to connect.
SDK_TIMEOUT = httpx.Timeout(600.0, connect=5.0)


class HttpxTransport(httpx.BaseTransport):
    """:class:`~aicoder.http.transport.RequestsTransport` for classic httpx: an httpx transport that sends
    every request through ``session`` (mount a :class:`~aicoder.http.adapter.LinearBackoffAdapter` on it to
    retry), and closes it with itself only if ``close_session`` is true."""

    def __init__(self, session: requests.Session, *, close_session: bool = False) -> None:
        self.bridge = RequestsTransport(session, close_session=close_session)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _as_httpx_errors(request):
            response, headers, extensions = self.bridge.exchange(request)
        return httpx.Response(
            response.status_code, headers=headers, stream=_Stream(response, request), extensions=extensions
        )

    def close(self) -> None:
        self.bridge.close()


class AsyncHttpxTransport(httpx.AsyncBaseTransport):
    """:class:`HttpxTransport` for ``httpx.AsyncClient``, over an httpx2 async transport (default:
    :class:`AsyncLinearBackoffTransport`)."""

    def __init__(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        with _as_httpx_errors(request):
            response = await self.transport.handle_async_request(_as_httpx2(request, body))
        return _as_httpx(response, _AsyncStream(response, request))

    async def aclose(self) -> None:
        await self.transport.aclose()


def httpx_client(config: Config | None = None) -> httpx.Client:
    """An ``httpx.Client`` that retries through aicoder, for ``groq.Groq(http_client=…, max_retries=0)``, LiteLLM
    (``litellm.client_session``) or any code on classic httpx. As :func:`~aicoder.http.clients.http_client`."""
    transport = HttpxTransport(retrying_session(config), close_session=True)
    return httpx.Client(transport=transport, timeout=SDK_TIMEOUT, follow_redirects=True)


def async_httpx_client(config: Config | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that retries through aicoder, for ``groq.AsyncGroq(http_client=…, max_retries=0)``
    or ``litellm.aclient_session``. As :func:`~aicoder.http.clients.async_http_client`."""
    from httpx2._utils import get_environment_proxies  # the proxies httpx would take from the environment

    config = config if config is not None else Config.load()
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        pattern: None
        if proxy is None
        else AsyncHttpxTransport(
            AsyncLinearBackoffTransport(config, transport=httpx2.AsyncHTTPTransport(proxy=proxy, limits=DEFAULT_LIMITS))
        )
        for pattern, proxy in get_environment_proxies().items()
    }
    transport = AsyncHttpxTransport(AsyncLinearBackoffTransport(config))
    return httpx.AsyncClient(transport=transport, mounts=mounts, timeout=SDK_TIMEOUT, follow_redirects=True)


def _as_httpx2(request: httpx.Request, body: bytes) -> httpx2.Request:
    """The httpx2 twin of ``request``: the same method, URL, header bytes, body and extensions (timeouts)."""
    return httpx2.Request(
        request.method, str(request.url), headers=request.headers.raw, content=body, extensions=request.extensions
    )


def _as_httpx(response: httpx2.Response, stream: httpx.AsyncByteStream) -> httpx.Response:
    """The httpx twin of ``response``: its status, header bytes and extensions (aicoder's retry state among
    them), its body streamed still encoded, for httpx to decode as it would its own."""
    return httpx.Response(
        response.status_code, headers=response.headers.raw, stream=stream, extensions=response.extensions
    )


class _Stream(ResponseStream, httpx.SyncByteStream):
    """The bridge's stream of a ``requests`` body, for httpx: its errors are httpx's."""

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self._request):
            yield from super().__iter__()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, response: httpx2.Response, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            stream = self._response.stream
            assert isinstance(stream, httpx2.AsyncByteStream)  # an async transport's
            async for chunk in stream:
                yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class _as_httpx_errors:  # noqa: N801 - used as a function: ``with _as_httpx_errors(request):``
    """Re-raise an httpx2 error as the httpx error of the same name (what groq and LiteLLM catch), chained."""

    __slots__ = ("request",)

    def __init__(self, request: httpx.Request) -> None:
        self.request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if isinstance(error, httpx2.TransportError):
            target = getattr(httpx, type(error).__name__, httpx.TransportError)
            if not (isinstance(target, type) and issubclass(target, httpx.TransportError)):
                target = httpx.TransportError
            raise target(str(error), request=self.request) from error
