"""The bridge that lets the openai SDK send through a :class:`requests.Session`.

The SDK speaks httpx2; aicoder's retries live in a ``requests`` adapter.
:class:`RequestsTransport` is an httpx2 transport whose one method,
``handle_request``, sends with the session's adapter for the URL, so every SDK call passes through
the session's adapters, and their retries, exactly once. Response bodies are
handed on as streams: a streamed completion arrives chunk by chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2
import requests
import urllib3.exceptions
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPHeaderDict

from aicoder.http.adapter import check_deadline, retry_state, waits_of
from aicoder.http.hints import MAX_BODY

__all__ = ["NO_SDK_RETRY", "RETRY_EXTENSION", "WAITS_EXTENSION", "RequestsTransport", "sdk_retry_guard"]

log = logging.getLogger(__name__)

#: The key under which a response's :class:`~aicoder.http.policy.LinearRetry` state
#: rides along in ``httpx2.Response.extensions``.
RETRY_EXTENSION = "aicoder.retry"
#: The key under which the seconds waited before each retry ride along (:func:`~aicoder.http.adapter.waits_of`).
WAITS_EXTENSION = "aicoder.waits"

#: Added to every answer aicoder's retries have handled: the openai SDK obeys it and never retries the answer
#: again, even if it was created without ``max_retries=0``.
NO_SDK_RETRY = (b"x-should-retry", b"false")

_CHUNK_SIZE = 64 * 1024
_MAX_ORIGINS = 256

# Most specific first: the first match wins.
_EXCEPTION_MAP: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    (requests.exceptions.ConnectTimeout, httpx2.ConnectTimeout),
    (requests.exceptions.ReadTimeout, httpx2.ReadTimeout),
    (urllib3.exceptions.ConnectTimeoutError, httpx2.ConnectTimeout),
    (urllib3.exceptions.ReadTimeoutError, httpx2.ReadTimeout),
    (requests.exceptions.Timeout, httpx2.TimeoutException),
    (urllib3.exceptions.TimeoutError, httpx2.TimeoutException),
    (requests.exceptions.ProxyError, httpx2.ProxyError),
    (requests.exceptions.SSLError, httpx2.ConnectError),
    (requests.exceptions.ConnectionError, httpx2.ConnectError),
    (requests.exceptions.ChunkedEncodingError, httpx2.RemoteProtocolError),
    (urllib3.exceptions.ProtocolError, httpx2.RemoteProtocolError),
    (requests.exceptions.InvalidHeader, httpx2.LocalProtocolError),
    (requests.exceptions.InvalidSchema, httpx2.UnsupportedProtocol),
    (requests.exceptions.MissingSchema, httpx2.UnsupportedProtocol),
    (requests.exceptions.InvalidURL, httpx2.UnsupportedProtocol),
    (requests.exceptions.RequestException, httpx2.TransportError),
    (urllib3.exceptions.HTTPError, httpx2.TransportError),
    (OSError, httpx2.NetworkError),
)


_warned_of_sdk_retries = False


def sdk_retry_guard(headers: Mapping[str, str]) -> None:
    """Warn, once per process, if the openai SDK is retrying a request itself: it was created without
    ``max_retries=0``. Answers never reach its retries (:data:`NO_SDK_RETRY`), but timeouts and
    connection errors do, and each such retry of the SDK's takes a new turn here."""
    global _warned_of_sdk_retries
    count = headers.get("x-stainless-retry-count")
    if count and count != "0" and not _warned_of_sdk_retries:
        _warned_of_sdk_retries = True
        log.warning(
            "The openai SDK retried a request itself (x-stainless-retry-count: %s): create it with max_retries=0, "
            "so that only aicoder retries",
            count[:8],
        )


def map_exceptions(request: httpx2.Request) -> _MappedExceptions:
    """Re-raise ``requests``/urllib3 errors as the httpx2 errors the SDK handles, chained."""
    return _MappedExceptions(request)


class _MappedExceptions:
    """The context manager behind :func:`map_exceptions`; a class, not a generator, as it runs twice a request."""

    __slots__ = ("request",)

    def __init__(self, request: httpx2.Request) -> None:
        self.request = request

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> None:
        if not isinstance(exc, Exception):
            return
        for source, target in _EXCEPTION_MAP:
            if isinstance(exc, source):
                message = f"{type(exc).__name__} while sending {self.request.method} request"
                raise target(message, request=self.request) from exc


class ResponseStream(httpx2.SyncByteStream):
    """A ``requests`` response body as an httpx2 stream: each read returns what has arrived."""

    def __init__(self, response: requests.Response, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        if self._response._content_consumed:  # type: ignore[attr-defined]  # a 429 body already read for its hints
            if self._response.content:
                yield self._response.content
            return
        raw = self._response.raw
        # An error body is only ever quoted: the SDK gets its first MAX_BODY bytes, however large it is.
        left = MAX_BODY if not 200 <= self._response.status_code < 300 else None
        with map_exceptions(self._request):
            # A connection cut short at its deadline ends the body early, as an error or as an end:
            # either way it is a timeout.
            try:
                while chunk := raw.read1(_CHUNK_SIZE if left is None else min(_CHUNK_SIZE, left), decode_content=False):
                    yield chunk
                    if left is not None:
                        left -= len(chunk)
                        if left <= 0:
                            break
                    if raw.closed:  # the body is complete: skip the read that would only say so
                        break
            except Exception as exc:
                try:
                    check_deadline(self._response)
                except requests.ReadTimeout as timeout:
                    raise timeout from exc
                raise
            check_deadline(self._response)

    def close(self) -> None:
        self._response.close()


class RequestsTransport(httpx2.BaseTransport):
    """An httpx2 transport that sends every request through ``session``.

    Use it as ``openai.OpenAI(max_retries=0, http_client=httpx2.Client(transport=RequestsTransport(session)))``
    so that retrying happens in the session's adapter only. Redirects, content
    decoding (bodies pass through raw), headers and cookies are left to the
    httpx2 client: the session's default headers, cookies and auth are not merged
    in. Header bytes pass through unchanged both ways. Its adapters, proxies,
    ``verify`` and ``cert`` apply, with the environment's (``HTTPS_PROXY``,
    ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) merged in once per origin, as
    ``requests`` itself merges them for ``Session.request``.
    ``close()`` closes ``session`` only if ``close_session`` is true.
    """

    def __init__(self, session: requests.Session, *, close_session: bool = False) -> None:
        self.session = session
        self._close_session = close_session
        self._settings: dict[str, dict[str, Any]] = {}

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` with the session's adapter for its URL; return the response, its body still unread.
        Errors are raised as httpx2's."""
        sdk_retry_guard(request.headers)
        # The body is read whole (the SDK's are small JSON) so that urllib3 can resend it on a retry.
        body = request.read()
        with map_exceptions(request):
            prepared = _prepare(request, body)
            settings = self._settings_for(prepared)
            # Straight to the session's adapter for the URL: Session.send would add only what the bridge
            # leaves to httpx2 (redirects, cookies) and the hooks of a request prepared without them.
            response = self.session.get_adapter(prepared.url or "").send(
                prepared,
                stream=True,
                # requests takes None in either place at run time, as Session.send passed it; its stubs do not say so.
                timeout=_timeout(request.extensions.get("timeout")),  # type: ignore[arg-type]
                proxies=settings["proxies"],
                verify=settings["verify"],
                cert=settings["cert"],
            )
        retry = retry_state(response)
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/1.1",
            "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            RETRY_EXTENSION: retry,
            WAITS_EXTENSION: waits_of(response),
        }
        headers = _response_headers(response)
        if retry is not None:  # a retrying adapter answered: nothing is left for the SDK to retry
            headers.append(NO_SDK_RETRY)
        stream = ResponseStream(response, request)
        return httpx2.Response(response.status_code, headers=headers, stream=stream, extensions=extensions)

    def _settings_for(self, prepared: requests.PreparedRequest) -> dict[str, Any]:
        """The session's proxies, ``verify`` and ``cert`` for this origin, the environment's included, as
        ``Session.request`` would merge them (``Session.send`` does not): read once per origin, as httpx does.

        ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` come in here, as for any ``requests`` call;
        ``requests`` would scan the environment on every send, a large share of a fast request.
        """
        parts = urlsplit(prepared.url or "")
        origin = f"{parts.scheme}://{parts.netloc}"
        settings = self._settings.get(origin)
        if settings is None:
            if len(self._settings) >= _MAX_ORIGINS:
                self._settings.clear()
            settings = dict(self.session.merge_environment_settings(prepared.url, {}, True, None, None))
            self._settings[origin] = settings
        return settings

    def close(self) -> None:
        if self._close_session:
            self.session.close()


def _prepare(request: httpx2.Request, body: bytes) -> requests.PreparedRequest:
    """Build the ``requests`` twin of an httpx2 request that httpx2 has already validated and encoded.

    ``requests``' own ``prepare()`` would parse, re-quote and re-validate all of it again, and
    ``Session.prepare_request`` would merge in the session's headers, cookies and .netrc, which the
    SDK does not want: it sets every header itself.
    """
    prepared = requests.PreparedRequest()
    prepared.method = request.method
    prepared.url = str(request.url)
    prepared.headers = _headers(request.headers)
    if "transfer-encoding" in prepared.headers:  # a streamed body, now read whole: frame it by length
        del prepared.headers["transfer-encoding"]
        prepared.headers["Content-Length"] = str(len(body))
    prepared.body = body or None
    prepared.hooks = default_hooks()
    # A mounted adapter of the user's may look ahead at a redirect as Session.send does, storing its
    # cookies in the request's jar on the way; without one, that crashes.
    prepared._cookies = RequestsCookieJar()  # type: ignore[attr-defined]  # requests' own field, not in its stubs
    return prepared


def _headers(headers: httpx2.Headers) -> CaseInsensitiveDict[str]:
    """Decode httpx2's header bytes as latin-1, which ``http.client`` encodes back to the very same bytes.

    A name sent more than once is sent once with its values joined by ``", "``, as httpx2's
    ``items()`` would; ``requests`` cannot send a name twice.
    """
    pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw]
    decoded = CaseInsensitiveDict(pairs)
    if len(decoded) < len(pairs):
        joined: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
        decoded = CaseInsensitiveDict(joined)
    return decoded


def _response_headers(response: requests.Response) -> list[tuple[bytes, bytes]]:
    """The response's header lines as the bytes the server sent, repeated names kept apart (``Set-Cookie``).

    ``http.client`` decoded them as latin-1; encoding them back gives the very same bytes, which
    httpx2 then decodes as it would its own.
    """
    raw_headers = getattr(response.raw, "headers", None)
    lines = raw_headers.iteritems() if isinstance(raw_headers, HTTPHeaderDict) else response.headers.items()
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in lines]


def _timeout(timeout: Any) -> tuple[float | None, float | None] | None:
    """Turn httpx2's ``{"connect": …, "read": …}`` timeout extension into ``requests``' ``(connect, read)``."""
    if not isinstance(timeout, dict):
        return None
    return timeout.get("connect"), timeout.get("read")
