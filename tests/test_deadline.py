"""LLM_REQUEST_TIMEOUT bounds each attempt from connect to last byte, however slowly a server trickles."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx2
import openai
import pytest

from aicoder.config import Config
from aicoder.http.adapter import retrying_session
from aicoder.http.deadline import watchdog
from aicoder.http.transport import RequestsTransport
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import LLMError
from tests.servers import completion, scripted_server

PROVIDERS = ["openrouter", "openai"]
TIMEOUT = 0.4


@contextmanager
def trickling_server(head: bytes, trickle: bytes, every: float = 0.05) -> Iterator[str]:
    """A server that sends ``head``, then one byte of ``trickle`` every ``every`` seconds, forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(head)
                    index = 0
                    while not stop.wait(every):
                        conn.sendall(trickle[index % len(trickle) : index % len(trickle) + 1])
                        index += 1
                except OSError:
                    pass  # the client hung up: the deadline did its work

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def client(provider: str, url: str) -> LLMClient:
    config = Config(
        request_timeout=TIMEOUT,
        openrouter_api_key="sk-test-key",
        openrouter_base_url=f"{url}/v1",
        openai_api_key="sk-test-key",
        openai_base_url=f"{url}/v1",
    )
    return LLMClient(f"{provider}/m", config=config)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_trickled_headers_time_out(provider: str) -> None:
    """Headers arriving a byte every 50 ms never trip a read timeout, but the attempt's deadline ends it."""
    with trickling_server(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000) as url:
        started = time.monotonic()
        with pytest.raises(LLMError, match="timed out") as caught:
            client(provider, url).sendRequest("s", "u")
        elapsed = time.monotonic() - started
    assert TIMEOUT <= elapsed < TIMEOUT + 1.0
    assert caught.value.status is None


def test_a_trickled_stream_times_out_through_the_bridge() -> None:
    """A streamed completion whose chunks come ever slower is cut at the deadline, as a timeout."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 100000\r\n\r\n"
    event = b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[]}\n\n'
    with trickling_server(head, event, every=0.01) as url:
        session = retrying_session(Config(request_timeout=TIMEOUT))
        sdk = openai.OpenAI(
            api_key="sk-test-key",
            base_url=f"{url}/v1",
            max_retries=0,
            http_client=httpx2.Client(transport=RequestsTransport(session)),
        )
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            for _ in sdk.chat.completions.create(model="m", messages=[], stream=True):
                pass
        elapsed = time.monotonic() - started
    assert TIMEOUT <= elapsed < TIMEOUT + 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_finished_attempts_leave_nothing_behind(provider: str) -> None:
    """Attempts that end in time are forgotten at once: the watchdog holds only what is in flight."""
    with scripted_server(completion("quick")) as server:
        llm = client(provider, server.url)
        for _ in range(20):
            assert llm.sendRequest("s", "u") == "quick"
        port = urlsplit(server.url).port
        # Only this server's connections count: another test's request may still be in flight.
        watched = [entry.connection() for entry in list(watchdog()._watches.values())]
        assert [connection for connection in watched if getattr(connection, "port", None) == port] == []


def test_the_default_is_ten_minutes() -> None:
    """LLM_REQUEST_TIMEOUT defaults to 600 s, and reads from the environment."""
    assert Config().request_timeout == 600.0
    assert Config.load(environ={"LLM_REQUEST_TIMEOUT": "30"}).request_timeout == 30.0
    assert json.dumps(Config.load(environ={}).request_timeout) == "600.0"


def test_a_connection_gone_never_waits_for_the_watchdogs_lock() -> None:
    """A connection collected with an attempt in flight is forgotten without taking the watchdog's lock: at
    interpreter exit, the daemon thread may have been stopped holding it, and the exit would hang."""
    import gc

    from urllib3.connection import HTTPConnection

    from aicoder.http.deadline import AttemptLimit, Watchdog

    dog = Watchdog()
    connection = HTTPConnection("127.0.0.1", 9)
    dog.watch(connection, AttemptLimit(600))
    collected = threading.Event()

    def collect() -> None:
        nonlocal connection
        del connection  # the weakref callback runs here, in this thread
        gc.collect()
        collected.set()

    with dog._condition:  # as a daemon thread stopped mid-iteration would hold it
        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        assert collected.wait(2), "the weakref callback waited for the watchdog's lock"
    assert len(dog) == 0  # forgotten once the lock was free
