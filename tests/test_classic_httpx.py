"""Classic httpx (groq's, LiteLLM's) over aicoder's transports: the same retries, errors and answers."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time

import httpx
import pytest

from aicoder.config import Config
from aicoder.http.classic_httpx import HttpxTransport, async_httpx_client, httpx_client
from aicoder.http.waiting import instant_waits
from aicoder.instrumentation import RetryDetails
from tests.servers import Reply, completion, rate_limited, scripted_server
from tests.test_deadline import trickling_server

CONFIG = Config(retry_count=2, retry_min_delay=0.01, retry_max_delay=0.01)


def test_a_429_is_retried_once_and_the_answer_is_an_httpx_response(retries: list[RetryDetails]) -> None:
    """A 429 then a 200: httpx gets the 200, with aicoder's retry state, and the hooks saw one retry."""
    with (
        scripted_server(rate_limited({"retry-after-ms": "20"}), completion("ok")) as server,
        instant_waits() as waits,
        httpx_client(CONFIG) as client,
    ):
        answer = client.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert isinstance(answer, httpx.Response)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert [(retry.attempt, retry.source) for retry in retries] == [(1, "retry-after-ms")]
    assert waits[0] == 0.02  # the retry waits what the 429 stated (the hold may add a wait of its own)
    assert server.count == 2


def test_async_retries_the_same_way() -> None:
    async def send(url: str) -> httpx.Response:
        async with async_httpx_client(CONFIG) as client:
            return await client.post(f"{url}/v1/chat/completions", json={"messages": []})

    with scripted_server(rate_limited({"retry-after-ms": "20"}), completion("ok")) as server, instant_waits() as waits:
        answer = asyncio.run(send(server.url))
    assert answer.status_code == 200
    assert waits[0] == 0.02  # the retry waits what the 429 stated (the hold may add a wait of its own)
    assert server.count == 2


def test_out_of_retries_the_429_is_handed_on_with_its_body() -> None:
    """Past the retries, the caller's httpx gets the last 429 as it came, body included."""
    with scripted_server(*[rate_limited()] * 3) as server, instant_waits(), httpx_client(CONFIG) as client:
        answer = client.post(f"{server.url}/v1/chat/completions", json={"messages": []})
    assert answer.status_code == 429
    assert "error" in answer.json()
    assert server.count == 3


def test_a_gzipped_body_is_decoded_by_httpx() -> None:
    """Bodies pass through still encoded, and httpx decodes them as it would its own."""
    payload = json.dumps({"ok": True}).encode()
    reply = Reply(200, gzip.compress(payload), {"content-encoding": "gzip", "content-type": "application/json"})
    with scripted_server(reply) as server, httpx_client(CONFIG) as client:
        assert client.get(f"{server.url}/v1/models").json() == {"ok": True}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_refused_connection_is_httpx_connect_error(asynchronous: bool) -> None:
    """What groq and LiteLLM catch: httpx's own ConnectError, with the socket's error as its cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1/models"
    if asynchronous:

        async def get() -> None:
            async with async_httpx_client(CONFIG) as client:
                await client.get(url)

        with pytest.raises(httpx.ConnectError) as caught:
            asyncio.run(get())
    else:
        with pytest.raises(httpx.ConnectError) as caught, httpx_client(CONFIG) as client:
            client.get(url)
    assert caught.value.__cause__ is not None


#: What a server sends at once, and what it then trickles, a byte every 10 ms.
TRICKLES = {
    "body": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n", b"data"),
    "headers": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000),
}


@pytest.mark.parametrize("trickled", TRICKLES)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_trickle_times_out_as_httpx_read_timeout(asynchronous: bool, trickled: str) -> None:
    """Headers or a body that trickle on past LLM_REQUEST_TIMEOUT end at the deadline as httpx's own
    ReadTimeout, though no single read waits long."""
    timeout = 0.3
    config = Config(request_timeout=timeout)
    head, trickle = TRICKLES[trickled]
    with trickling_server(head, trickle, every=0.01) as url:
        started = time.monotonic()
        if asynchronous:

            async def read() -> None:
                async with async_httpx_client(config) as client:
                    await client.get(f"{url}/v1/models")

            with pytest.raises(httpx.ReadTimeout) as caught:
                asyncio.run(read())
        else:
            with pytest.raises(httpx.ReadTimeout) as caught, httpx_client(config) as client:
                client.get(f"{url}/v1/models")
        elapsed = time.monotonic() - started
    assert timeout <= elapsed < timeout + 2  # at the deadline, not after 100,000 bytes at 100 a second
    if not asynchronous:  # the watchdog cut the socket, whose error is the cause; asyncio ends the wait itself
        assert caught.value.__cause__ is not None


def test_any_httpx_transport_sends_the_attempts() -> None:
    """A test's ``httpx.MockTransport`` under :class:`HttpxTransport`: no socket, the same retries."""
    answers = [httpx.Response(429, headers={"retry-after-ms": "20"}), httpx.Response(200, json={"ok": True})]
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return answers[len(seen) - 1]

    transport = HttpxTransport(CONFIG, transport=httpx.MockTransport(handler), coordinate=False)
    with instant_waits() as waits, httpx.Client(transport=transport) as client:
        answer = client.post("http://api.test/v1/chat/completions", json={"messages": []})
    assert answer.json() == {"ok": True}
    assert seen == [b'{"messages":[]}'] * 2  # the body, sent again
    assert waits == [0.02]
    assert answer.extensions["aicoder.waits"] == (0.02,)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_environments_proxy_is_honoured_and_its_429_retried(
    asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``httpx.Client()`` does: HTTP_PROXY is honoured, and a 429 from there is retried."""
    with scripted_server(rate_limited({"retry-after-ms": "1"}), completion("via proxy")) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url = "http://api.invalid/v1/chat/completions"
        if asynchronous:

            async def post() -> httpx.Response:
                async with async_httpx_client(CONFIG) as client:
                    return await client.post(url, json={"messages": []})

            answer = asyncio.run(post())
        else:
            with httpx_client(CONFIG) as client:
                answer = client.post(url, json={"messages": []})
    assert answer.json()["choices"][0]["message"]["content"] == "via proxy"
    assert [received.path for received in proxy.received] == [url] * 2
