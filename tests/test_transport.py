"""The bridge that sends the openai SDK's HTTP through a requests.Session."""

from __future__ import annotations

import gzip
import inspect
import json
import time

import httpx2
import openai
import pytest
import requests
import urllib3.exceptions

from aicoder.config import Config
from aicoder.http.adapter import retrying_session
from aicoder.http.transport import RETRY_EXTENSION, RequestsTransport, map_exceptions
from tests.servers import Reply, completion, rate_limited, scripted_server


def sdk(base_url: str, session: requests.Session | None = None) -> openai.OpenAI:
    session = (
        session
        if session is not None
        else retrying_session(Config(retry_count=2, retry_min_delay=0, retry_max_delay=0))
    )
    return openai.OpenAI(
        api_key="sk-test",
        base_url=base_url,
        max_retries=0,
        http_client=httpx2.Client(transport=RequestsTransport(session)),
    )


def sse(*events: dict[str, object]) -> list[bytes]:
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events] + [b"data: [DONE]\n\n"]


def chunk(text: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def test_streamed_completion_arrives_chunk_by_chunk() -> None:
    """Each SSE chunk reaches the caller when sent, not when the server closes."""
    reply = Reply(
        200,
        headers={"Content-Type": "text/event-stream"},
        chunks=sse(chunk("a"), chunk("b"), chunk("c")),
        chunk_delay=0.1,
    )
    with scripted_server(reply) as server:
        started = time.monotonic()
        arrivals: list[tuple[float, str]] = []
        stream = sdk(f"{server.url}/v1").chat.completions.create(model="m", messages=[], stream=True)
        for event in stream:
            arrivals.append((time.monotonic() - started, event.choices[0].delta.content or ""))
    assert [text for _, text in arrivals] == ["a", "b", "c"]
    # The server takes >= 0.3 s to send everything; the first chunk must not wait for the rest.
    assert arrivals[0][0] < 0.15
    assert arrivals[-1][0] >= 0.2


def test_sdk_request_goes_through_the_session_once_per_attempt() -> None:
    """The SDK's request reaches the server with its headers and body; retries happen in the adapter."""
    with scripted_server(rate_limited(), completion("bridged")) as server:
        result = sdk(f"{server.url}/v1").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert result.choices[0].message.content == "bridged"
    assert server.count == 2
    first = server.received[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert json.loads(first.body)["messages"] == [{"role": "user", "content": "hi"}]
    assert server.received[1].body == first.body


def test_connection_is_kept_alive_across_sdk_calls() -> None:
    """A completion read to the end leaves its connection in the pool for the next one."""
    with scripted_server(completion("one"), completion("two"), completion("three")) as server:
        client = sdk(f"{server.url}/v1")
        answers = [client.chat.completions.create(model="m", messages=[]).choices[0].message.content for _ in range(3)]
    assert answers == ["one", "two", "three"]
    assert len({received.client_port for received in server.received}) == 1


def test_retry_state_rides_along_on_the_final_response() -> None:
    """The final 429 carries the LinearRetry that produced it, for the client's error message."""
    with scripted_server(rate_limited()) as server, pytest.raises(openai.RateLimitError) as caught:
        sdk(f"{server.url}/v1").chat.completions.create(model="m", messages=[])
    retry = caught.value.response.extensions[RETRY_EXTENSION]
    assert len(retry.history) == 2
    assert server.count == 3


def test_compressed_body_is_decoded_once() -> None:
    """Bodies pass through raw, so httpx2 decodes gzip exactly once."""
    plain = completion("zipped")
    reply = Reply(200, gzip.compress(plain.body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with scripted_server(reply) as server:
        result = sdk(f"{server.url}/v1").chat.completions.create(model="m", messages=[])
    assert result.choices[0].message.content == "zipped"


def test_repeated_response_headers_are_kept() -> None:
    """Two Set-Cookie headers stay two headers."""
    reply = Reply(200, b"ok", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    with scripted_server(reply) as server:
        transport = RequestsTransport(requests.Session())
        request = httpx2.Request("GET", f"{server.url}/x")
        response = transport.handle_request(request)
        response.read()
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.content == b"ok"


def test_request_header_bytes_reach_the_server_unchanged() -> None:
    """Header bytes outside ASCII are sent exactly as httpx2 encoded them, not re-encoded."""
    with scripted_server(Reply(200, b"ok")) as server:
        request = httpx2.Request("GET", f"{server.url}/x", headers={"X-Note": "café ✓".encode()})
        RequestsTransport(requests.Session()).handle_request(request).read()
    # http.server decodes header bytes as latin-1: undo that to see the bytes on the wire.
    assert server.received[0].headers["x-note"].encode("latin-1") == "café ✓".encode()


def test_response_header_bytes_reach_the_sdk_unchanged() -> None:
    """A response header outside ASCII reaches httpx2 as the bytes the server sent."""
    with scripted_server(Reply(200, b"ok", {"X-Note": "café"})) as server:  # http.server sends latin-1
        request = httpx2.Request("GET", f"{server.url}/x")
        response = RequestsTransport(requests.Session()).handle_request(request)
        response.read()
    assert (b"X-Note", "café".encode("latin-1")) in response.headers.raw


def test_repeated_request_headers_are_joined() -> None:
    """A name given twice is sent once, its values joined, as httpx2 itself would."""
    with scripted_server(Reply(200, b"ok")) as server:
        request = httpx2.Request("GET", f"{server.url}/x", headers=[("X-Tag", "a"), ("x-tag", "b"), ("X-One", "1")])
        RequestsTransport(requests.Session()).handle_request(request).read()
    assert server.received[0].headers["x-tag"] == "a, b"
    assert server.received[0].headers["x-one"] == "1"


def test_connection_refused_becomes_an_sdk_connection_error() -> None:
    """A refused connection reaches the SDK as httpx2.ConnectError, so it raises APIConnectionError."""
    client = sdk("http://127.0.0.1:9/v1")
    with pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model="m", messages=[])
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)
    assert isinstance(caught.value.__cause__.__cause__, requests.ConnectionError)


def test_read_timeout_becomes_an_sdk_timeout() -> None:
    """A read timeout reaches the SDK as httpx2.ReadTimeout, so it raises APITimeoutError."""
    with scripted_server(Reply(200, b"{}", delay=0.3)) as server:
        client = sdk(f"{server.url}/v1").with_options(timeout=0.05)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=[])
        assert server.count == 1


REQUESTS_ERRORS = [
    cls
    for _, cls in inspect.getmembers(requests.exceptions, inspect.isclass)
    if issubclass(cls, requests.RequestException)
]


@pytest.mark.parametrize("error_class", REQUESTS_ERRORS, ids=lambda cls: cls.__name__)
def test_every_requests_error_is_mapped(error_class: type[Exception]) -> None:
    """Every requests exception becomes an httpx2 TransportError chained to the original."""
    request = httpx2.Request("POST", "https://llm.test/v1/chat/completions")
    original = error_class("boom", "doc", 0) if error_class is requests.JSONDecodeError else error_class("boom")
    with pytest.raises(httpx2.TransportError) as caught, map_exceptions(request):
        raise original
    assert caught.value.__cause__ is original
    assert caught.value.request is request


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (requests.ConnectTimeout(), httpx2.ConnectTimeout),
        (requests.ReadTimeout(), httpx2.ReadTimeout),
        (requests.ConnectionError(), httpx2.ConnectError),
        (requests.exceptions.ChunkedEncodingError(), httpx2.RemoteProtocolError),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "slow"), httpx2.ReadTimeout),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("reset"), httpx2.RemoteProtocolError),
    ],
)
def test_specific_mappings(original: Exception, expected: type[Exception]) -> None:
    """Timeouts stay timeouts (the SDK tells them apart) and connection failures stay connection failures."""
    with pytest.raises(expected), map_exceptions(httpx2.Request("GET", "https://llm.test/")):
        raise original


def test_other_exceptions_pass_through() -> None:
    """Errors that are not transport errors are not disguised."""
    with pytest.raises(KeyError), map_exceptions(httpx2.Request("GET", "https://llm.test/")):
        raise KeyError("x")


def test_close_leaves_a_borrowed_session_open() -> None:
    """The transport closes the session only when told it owns it."""
    closed: list[bool] = []

    class Session(requests.Session):
        def close(self) -> None:
            closed.append(True)
            super().close()

    RequestsTransport(Session()).close()
    assert closed == []
    RequestsTransport(Session(), close_session=True).close()
    assert closed == [True]


@pytest.mark.parametrize("status", [307, 308])
def test_redirects_are_followed_as_the_sdk_follows_them(status: int) -> None:
    """Through OpenAIProvider, a 307/308 keeps method and body, and drops Authorization for another origin."""
    from aicoder.llm.api_client import LLMClient

    with scripted_server(completion("moved")) as target:
        location = f"{target.url}/v1/chat/completions"
        with scripted_server(Reply(status, b"", {"Location": location})) as origin:
            config = Config(openai_api_key="sk-SENTINEL-0123456789", openai_base_url=f"{origin.url}/v1")
            assert LLMClient("openai/m", config=config).sendRequest("s", "u") == "moved"
        first, moved = origin.received[0], target.received[0]
    assert (moved.method, moved.body) == ("POST", first.body)
    assert "authorization" in first.headers
    assert "authorization" not in moved.headers


@pytest.mark.parametrize("path", ["session", "bridge"])
def test_32_threads_fit_the_pool(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """32 threads on the session aicoder builds, or on the SDK bridge over it: no connection is discarded."""
    import threading

    from aicoder import http_client
    from aicoder.testing import RateLimitedEndpoint

    with RateLimitedEndpoint(rate=10_000, burst=1_000, latency=0.05) as endpoint:
        config = Config(openrouter_api_key="sk-pool", openrouter_base_url=endpoint.base_url)
        session = retrying_session(config)
        sdk = openai.OpenAI(
            api_key="sk-pool", base_url=endpoint.base_url, max_retries=0, http_client=http_client(session=session)
        )
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

        def send() -> None:
            for _ in range(2):
                if path == "session":
                    session.post(f"{endpoint.base_url}/chat/completions", json=body).raise_for_status()
                else:
                    sdk.chat.completions.create(model="m", messages=body["messages"])  # type: ignore[arg-type]

        with caplog.at_level("WARNING", logger="urllib3"):
            threads = [threading.Thread(target=send) for _ in range(32)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        session.close()
        assert endpoint.stats().ok == 64
    assert not [record for record in caplog.records if "pool is full" in record.getMessage()]
