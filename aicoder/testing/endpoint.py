"""A rate-limited, OpenAI-compatible chat endpoint on 127.0.0.1, for demos, tuning and tests.

It is a real HTTP server on a real socket, so urllib3, the retry policy and the
openai SDK all run for real against it. A token bucket (``rate`` requests a
second, ``burst`` at once) decides; over the limit it answers 429 the way
OpenAI does, with an error body and ``retry-after-ms``, ``retry-after`` and
``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = ["EndpointStats", "RateLimitedEndpoint", "TokenBucket"]

COMPLETIONS_PATH = "/v1/chat/completions"
_EPSILON = 1e-9


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; each request takes one or is refused.

    Thread-safe. ``clock`` is injectable so the arithmetic can be tested without waiting.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate={rate!r} is not allowed: expected requests per second > 0")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst={burst!r} is not allowed: expected a whole number >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, float, float]:
        """Take a token if one is there.

        Returns ``(allowed, remaining, wait)``: ``remaining`` whole tokens after
        this request, and ``wait``, the seconds until the next token (0 if one
        is left).
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            allowed = self._tokens >= 1 - _EPSILON  # a request exactly on time is on time
            if allowed:
                self._tokens = max(0.0, self._tokens - 1)
            wait = max(0.0, (1 - self._tokens) / self.rate)
            return allowed, self._tokens, wait

    def until_full(self, remaining: float) -> float:
        """Seconds until a bucket holding ``remaining`` tokens is full again."""
        return (self.burst - remaining) / self.rate


@dataclass(frozen=True)
class EndpointStats:
    """What the endpoint answered so far: ``ok`` (200s) and ``rate_limited`` (429s)."""

    ok: int
    rate_limited: int
    other: int

    @property
    def total(self) -> int:
        return self.ok + self.rate_limited + self.other


@dataclass(frozen=True)
class Event:
    """One answer: when (seconds since the endpoint started) and its status."""

    at: float
    status: int


class RateLimitedEndpoint:
    """Serve ``POST /v1/chat/completions`` on 127.0.0.1, at most ``rate`` a second after a ``burst``.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with RateLimitedEndpoint(rate=10, burst=5) as endpoint:
            config = Config(openrouter_api_key="local", openrouter_base_url=endpoint.base_url)
            LLMClient("local-model", config=config).sendRequest("system", "hello")
            print(endpoint.stats())

    Answers are plain JSON, or server-sent events when the request says
    ``"stream": true``, in OpenAI's format. Any API key is accepted.
    ``latency`` delays each 200 by that many seconds, like a model thinking.
    """

    def __init__(self, rate: float = 10.0, burst: int = 5, *, latency: float = 0.0, port: int = 0) -> None:
        self.bucket = TokenBucket(rate, burst)
        self.latency = latency
        self._lock = threading.Lock()
        self._counts = {"ok": 0, "rate_limited": 0, "other": 0}
        self._events: list[Event] = []
        self._started = time.monotonic()
        self._server = _Server(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def start(self) -> Self:
        """Serve in a background thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="aicoder-endpoint", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, close the socket and wait for the serving thread."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def stats(self) -> EndpointStats:
        """A snapshot of what has been answered."""
        with self._lock:
            return EndpointStats(**self._counts)

    def events(self) -> list[Event]:
        """Every answer so far, in order, with its time since the endpoint was created."""
        with self._lock:
            return list(self._events)

    def _record(self, status: int) -> None:
        key = "ok" if status == 200 else "rate_limited" if status == 429 else "other"
        with self._lock:
            self._counts[key] += 1
            self._events.append(Event(time.monotonic() - self._started, status))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-answer is not the server's error; say nothing."""


def _handler_for(endpoint: RateLimitedEndpoint) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.endpoint = endpoint
    return Handler


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aicoder-endpoint"
    # Headers and body go out in separate writes; with Nagle's algorithm the body would wait
    # for the client's delayed ACK, adding ~40 ms to every answer.
    disable_nagle_algorithm = True
    endpoint: RateLimitedEndpoint

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the endpoint's numbers are in :meth:`RateLimitedEndpoint.stats`."""

    def do_GET(self) -> None:
        self._read_body()
        self._error(404, f"no such endpoint; POST {COMPLETIONS_PATH}", "not_found")

    def do_POST(self) -> None:
        body = self._read_body()
        if self.path.split("?", 1)[0] != COMPLETIONS_PATH:
            self._error(404, f"no such endpoint; POST {COMPLETIONS_PATH}", "not_found")
            return
        try:
            request = json.loads(body)
            messages = request["messages"]
            model = str(request.get("model", "local-model"))
            prompt = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        except (ValueError, KeyError, TypeError, AttributeError):
            self._error(400, "expected a JSON chat completion request with messages", "invalid_request_error")
            return

        bucket = self.endpoint.bucket
        allowed, remaining, wait = bucket.take()
        limits = {
            "x-ratelimit-limit-requests": str(bucket.burst),
            "x-ratelimit-remaining-requests": str(math.floor(remaining)),
            "x-ratelimit-reset-requests": _duration(bucket.until_full(remaining)),
        }
        if not allowed:
            limits["retry-after-ms"] = str(math.ceil(wait * 1000))
            limits["retry-after"] = str(math.ceil(wait))
            self._error(
                429,
                f"Rate limit reached for {model}: limit {bucket.rate:g} requests/s, burst {bucket.burst}. "
                f"Please try again in {math.ceil(wait * 1000)}ms.",
                "rate_limit_exceeded",
                limits,
            )
            return

        if self.endpoint.latency:
            time.sleep(self.endpoint.latency)
        text = f"echo: {prompt}"
        if request.get("stream"):
            self._stream(model, text, limits)
        else:
            self._json(200, _completion(model, text), limits)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        kind = "requests" if status == 429 else "invalid_request_error"
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers or {})

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.endpoint._record(status)  # before answering, so a caller never sees an answer not yet counted
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, text: str, headers: dict[str, str]) -> None:
        self.endpoint._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        words = text.split(" ")
        pieces = [{"role": "assistant", "content": ""}] + [
            {"content": word if i == 0 else f" {word}"} for i, word in enumerate(words)
        ]
        for delta in pieces:
            self._event(_chunk(model, delta, None))
        self._event(_chunk(model, {}, "stop"))
        self._send_chunk(b"data: [DONE]\n\n")
        self._send_chunk(b"")

    def _event(self, payload: dict[str, Any]) -> None:
        self._send_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-aicoder-local",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-aicoder-local",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _duration(seconds: float) -> str:
    """Format ``seconds`` as OpenAI does in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"
