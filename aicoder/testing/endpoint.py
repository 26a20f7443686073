"""A rate-limited, OpenAI-compatible chat endpoint on 127.0.0.1, for demos, tuning and tests.

It is a real HTTP server on a real socket, so urllib3, the retry policy and the
openai SDK all run for real against it. Token buckets decide: ``rate`` requests
a second with ``burst`` at once, under a per-minute limit of ``60 * rate``, and
with the ``openai-tokens`` dialect a token limit that binds first. The ``litellm``
dialect is a LiteLLM proxy's per-key limit instead: ``rate * window`` requests per
fixed window. Over the limit it answers 429, and it describes its limits in one of
several real dialects (:data:`DIALECTS`), so clients can be tried against each.

It also judges its clients by the rule they should keep: a request that arrives
before a time a 429 stated (more than :data:`EARLY_GRACE` after that 429 was
answered, so that requests already on their way do not count) is *early*
(:attr:`EndpointStats.early`). Where the kernel stamps what it receives (Linux's
``SO_TIMESTAMPNS``), a request arrives when its first bytes did, not when a
serving thread got round to it: clients in the same process, dozens of threads
sharing its interpreter lock, would otherwise be blamed for the server's delay.
"""

from __future__ import annotations

import datetime
import http.server
import io
import json
import math
import platform
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self

from aicoder.http.tokens import estimate_cost

__all__ = ["DIALECTS", "EndpointStats", "RateLimitedEndpoint", "TokenBucket"]

COMPLETIONS_PATH = "/v1/chat/completions"
#: Anthropic's Messages API, which the anthropic SDK calls.
MESSAGES_PATH = "/v1/messages"
#: Gemini's generateContent, which google-genai calls: ``/v1beta/models/{model}:generateContent``.
GENERATE_CONTENT = re.compile(r"/models/([^/:]+):generateContent")
_EPSILON = 1e-9
#: The request limit of the ``openai-tokens`` dialect is this much more generous than its token limit.
TOKENS_DIALECT_HEADROOM = 10
#: The token limit the other dialects report: one no batch here comes near.
_GENEROUS_TOKENS_PER_MINUTE = 10_000_000
#: A request that arrives this soon after a 429 was answered may have been sent before its client read it.
EARLY_GRACE = 0.02
#: Linux's option for the kernel's receive time of each read, as ancillary data (two 64-bit integers on the
#: 64-bit machines where the generic socket options apply: Python names it nowhere); ``None`` elsewhere.
_SO_TIMESTAMPNS: int | None = 35 if sys.platform == "linux" and platform.machine() in {"x86_64", "aarch64"} else None
#: The dialects whose limit is a fixed window of ``window`` seconds, not a bucket; and that window's default.
FIXED_WINDOW_DIALECTS = ("litellm", "litellm-unenforced")
WINDOW = 10.0

#: How the endpoint describes its limits, and which of its limits binds:
DIALECTS: dict[str, str] = {
    "openai": "x-ratelimit-{limit,remaining,reset}-{requests,tokens} on every answer (per minute, reset until "
    "the bucket is full); a 429 names the exhausted limit in its body and says 'Please try again in 20ms'",
    "openai-tokens": "as openai, but the token limit binds and the request limit is generous",
    "openrouter": "only on a 429: X-RateLimit-Limit/Remaining/Reset (a Unix time in ms), repeated in the body's "
    "error.metadata.headers",
    "anthropic": "anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset} on every answer (reset an RFC 3339 "
    "time); a 429 adds retry-after in whole seconds",
    "github": "x-ratelimit-limit/remaining/used/reset (a Unix time in s) on every answer; a 429 adds retry-after",
    "ietf": "RateLimit-Policy and RateLimit (IETF draft) on every answer; a 429 adds Retry-After",
    "retry-after": "only on a 429: Retry-After in whole seconds, rounded up",
    "retry-after-ms": "only on a 429: retry-after-ms",
    "bare": "a 429 and nothing else: no header, no hint",
    "gemini": "Gemini's: no rate-limit header; a 429's body is Google's RESOURCE_EXHAUSTED error naming the "
    "per-minute request quota and its quotaValue (60 * rate), with a RetryInfo retryDelay in whole seconds, rounded up",
    "litellm": "a LiteLLM proxy's per-key limit: rate * window requests per fixed window; "
    "x-ratelimit-api_key-{limit,remaining}-requests on every answer; a 429 says retry-after: the whole window, "
    "reset_at (now + the window, as LiteLLM writes it) and 'Limit resets at' in its body",
    "litellm-unenforced": "a LiteLLM router's declared limit that nothing enforces: x-ratelimit-limit-requests "
    "(60 * rate a minute) and a remaining count that runs on past zero, never a 429",
}


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; each request takes its cost, or is refused.

    Thread-safe. ``refill`` is the rate tokens really come back at, when another
    client shares them (default ``rate``). ``clock`` is injectable so the
    arithmetic can be tested without waiting.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        refill: float | None = None,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate={rate!r} is not allowed: expected requests per second > 0")
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not burst >= 1 or burst != int(burst):
            raise ValueError(f"burst={burst!r} is not allowed: expected a whole number >= 1")
        self.rate = rate
        self.burst = burst
        self.refill = rate if refill is None else refill
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def take(self, cost: float = 1.0) -> tuple[bool, float, float]:
        """Take ``cost`` tokens if they are there.

        Returns ``(allowed, remaining, wait)``: the tokens left after this request,
        and ``wait``, the seconds until ``cost`` tokens are there (0 if they still are).
        """
        with self._lock:
            allowed = self._level() >= cost - _EPSILON  # a request exactly on time is on time
            if allowed:
                self._tokens = max(0.0, self._tokens - cost)
            return allowed, self._tokens, self._wait(cost)

    def level(self) -> float:
        """The tokens in the bucket now."""
        with self._lock:
            return self._level()

    def wait(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there; 0 if they are now."""
        with self._lock:
            self._level()
            return self._wait(cost)

    def until_full(self, remaining: float) -> float:
        """Seconds until a bucket holding ``remaining`` tokens is full again, at the nominal ``rate``."""
        return (self.burst - remaining) / self.rate

    def _level(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.refill)
        self._updated = now
        return self._tokens

    def _wait(self, cost: float) -> float:
        return max(0.0, (cost - self._tokens) / self.refill) if self._tokens < cost - _EPSILON else 0.0


@dataclass(frozen=True)
class EndpointStats:
    """What the endpoint answered so far: ``ok`` (200s), ``rate_limited`` (429s), and ``early``: requests that
    arrived before a time one of its 429s had stated (see the module docstring)."""

    ok: int
    rate_limited: int
    other: int
    early: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.rate_limited + self.other


@dataclass(frozen=True)
class Event:
    """One answer: when (seconds since the endpoint started) and its status."""

    at: float
    status: int


class _Limit(NamedTuple):
    """One dimension's limits: the short-term bucket that binds, and the per-minute one the headers show."""

    dimension: str
    short: TokenBucket
    minute: TokenBucket


class _Verdict(NamedTuple):
    """The endpoint's decision on one request, and the state its headers describe."""

    allowed: bool
    refused: _Limit | None
    wait: float
    cost: float
    levels: dict[str, float]


class RateLimitedEndpoint:
    """Serve ``POST /v1/chat/completions`` on 127.0.0.1, at most ``rate`` a second after a ``burst``.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with RateLimitedEndpoint(rate=10, burst=5) as endpoint:
            config = Config(openrouter_api_key="local", openrouter_base_url=endpoint.base_url)
            LLMClient("local-model", config=config).sendRequest("system", "hello")
            print(endpoint.stats())

    ``dialect`` (:data:`DIALECTS`) is how it describes its limits. With
    ``openai-tokens``, ``token_cost`` is the tokens a request is expected to cost
    (:func:`~aicoder.http.tokens.estimate_cost`): the token limit then allows ``rate``
    such requests a second and ``burst`` at once, and binds before the request
    limit, which is ten times as generous. ``foreign`` (0 to 0.9) is the share of
    the capacity another client on the same key takes: the headers still show the
    whole limit. Answers are plain JSON, or server-sent events when the request
    says ``"stream": true``, in OpenAI's format. Any API key is accepted.
    ``latency`` delays each 200 by that many seconds, like a model thinking.
    """

    def __init__(
        self,
        rate: float = 10.0,
        burst: int = 5,
        *,
        dialect: str = "openai",
        token_cost: float = 100.0,
        foreign: float = 0.0,
        latency: float = 0.0,
        window: float = WINDOW,
        port: int = 0,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect={dialect!r} is not allowed: expected one of {', '.join(DIALECTS)}")
        if not 0 <= foreign <= 0.9:
            raise ValueError(f"foreign={foreign!r} is not allowed: expected a share of the capacity from 0 to 0.9")
        if not (math.isfinite(token_cost) and token_cost >= 1):
            raise ValueError(f"token_cost={token_cost!r} is not allowed: expected tokens per request >= 1")
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window={window!r} is not allowed: expected seconds > 0")
        self.dialect = dialect
        self.rate = rate
        self.burst = burst
        self.foreign = foreign
        self.latency = latency
        share = 1 - foreign
        tokens_bind = dialect == "openai-tokens"
        request_scale = TOKENS_DIALECT_HEADROOM if tokens_bind else 1
        self.bucket = TokenBucket(rate * request_scale, burst * request_scale, refill=rate * request_scale * share)
        self._requests = _Limit(
            "requests",
            self.bucket,
            TokenBucket(
                rate * request_scale, math.ceil(60 * rate * request_scale), refill=rate * request_scale * share
            ),
        )
        token_rate = rate * token_cost if tokens_bind else _GENEROUS_TOKENS_PER_MINUTE / 60
        token_burst = math.ceil(burst * token_cost) if tokens_bind else _GENEROUS_TOKENS_PER_MINUTE
        self._tokens = _Limit(
            "tokens",
            TokenBucket(token_rate, token_burst, refill=token_rate * share),
            TokenBucket(token_rate, math.ceil(60 * token_rate), refill=token_rate * share),
        )
        #: The fixed window (``litellm``): its length, its limit, when the current one began, what it has counted.
        self.window = window
        self.window_limit = max(1, round(rate * window))
        self._window_start: float | None = None
        self._window_count = 0
        #: Every 429's (answered at, the time it stated), monotonic.
        self._stated: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._counts = {"ok": 0, "rate_limited": 0, "other": 0, "early": 0}
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

    def _arrived(self, now: float) -> None:
        """A request arrived at ``now``: count it as early if it came before a time a 429 stated, past the grace."""
        with self._lock:
            if any(answered + EARLY_GRACE < now < until for answered, until in self._stated):
                self._counts["early"] += 1

    def _state(self, seconds: float) -> None:
        """A 429 is being answered that says no request should come for ``seconds``."""
        now = time.monotonic()
        with self._lock:
            self._stated.append((now, now + seconds))

    def _decide(self, cost: float) -> _Verdict:
        """Take one request of ``cost`` tokens from every bucket, or from none, atomically."""
        if self.dialect in FIXED_WINDOW_DIALECTS:
            return self._count_in_window(cost)
        demands = [
            (limit, bucket, need)
            for limit, need in ((self._requests, 1.0), (self._tokens, cost))
            for bucket in (limit.short, limit.minute)
        ]
        with self._lock:
            refused = None
            wait = 0.0
            for limit, bucket, need in demands:
                bucket_wait = bucket.wait(need)
                if bucket_wait > wait:
                    refused, wait = limit, bucket_wait
            if refused is None:
                for _, bucket, need in demands:
                    bucket.take(need)
            levels = {name: bucket.level() for name, bucket in self._buckets().items()}
        return _Verdict(refused is None, refused, wait, cost, levels)

    def _count_in_window(self, cost: float) -> _Verdict:
        """Count one request in the current fixed window, opening a new one if it has passed, as LiteLLM does
        (refused requests count too). ``litellm-unenforced`` counts and refuses nothing."""
        with self._lock:
            now = time.monotonic()
            if self._window_start is None or now - self._window_start >= self.window:
                self._window_start, self._window_count = now, 0
            self._window_count += 1
            allowed = self.dialect == "litellm-unenforced" or self._window_count <= self.window_limit
            left = self._window_start + self.window - now
            levels = {"window-remaining": float(self.window_limit - self._window_count), "window-left": left}
        return _Verdict(allowed, None if allowed else self._requests, left, cost, levels)

    def _buckets(self) -> dict[str, TokenBucket]:
        return {
            "requests": self._requests.short,
            "requests-minute": self._requests.minute,
            "tokens": self._tokens.short,
            "tokens-minute": self._tokens.minute,
        }

    def _record(self, status: int) -> None:
        key = "ok" if status == 200 else "rate_limited" if status == 429 else "other"
        with self._lock:
            self._counts[key] += 1
            self._events.append(Event(time.monotonic() - self._started, status))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    #: socketserver's default backlog is 5: a crowd of threads connecting at once would be reset.
    request_queue_size = 1024

    def server_bind(self) -> None:
        # Set before any connection is accepted: the bytes a client sends before it is would carry no stamp.
        if _SO_TIMESTAMPNS is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        super().server_bind()

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

    def setup(self) -> None:
        super().setup()
        self._received: _Received | None = None
        if _SO_TIMESTAMPNS is not None:  # the connection inherits the option from the listening socket
            self.rfile.close()  # makefile's reader, replaced by one that keeps the kernel's stamps
            self._received = _Received(self.connection)
            self.rfile = io.BufferedReader(self._received)

    def handle_one_request(self) -> None:
        if self._received is not None:
            self._received.first = None  # this request's first bytes are yet to come
        super().handle_one_request()

    def _arrival(self) -> float:
        """When this request's first bytes arrived, on the monotonic clock: as the kernel stamped them, if it did."""
        now = time.monotonic()
        stamped = self._received.first if self._received is not None else None
        return now if stamped is None else min(now, now - (time.time() - stamped))

    def do_GET(self) -> None:
        self._read_body()
        self._error(404, f"no such endpoint; POST {COMPLETIONS_PATH}", "not_found")

    def do_POST(self) -> None:
        body = self._read_body()
        # OpenAI's path, under any prefix (Groq serves it at /openai/v1/chat/completions), or Anthropic's.
        path = self.path.split("?", 1)[0]
        anthropic = path.endswith(MESSAGES_PATH)
        gemini = GENERATE_CONTENT.search(path)
        if not (anthropic or gemini or path.endswith(COMPLETIONS_PATH)):
            self._error(
                404,
                f"no such endpoint; POST {COMPLETIONS_PATH}, {MESSAGES_PATH} or a model's :generateContent",
                "not_found",
            )
            return
        try:
            request = json.loads(body)
            if gemini:
                model = gemini.group(1)
                turns = [content for content in request["contents"] if content.get("role", "user") == "user"]
                prompt = _text(turns[-1]["parts"] if turns else [])
            else:
                messages = request["messages"]
                model = str(request.get("model", "local-model"))
                prompt = _text(next((m["content"] for m in reversed(messages) if m.get("role") == "user"), ""))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            self._error(400, "expected a JSON chat completion request with messages", "invalid_request_error")
            return
        if anthropic and request.get("stream"):
            self._error(400, f"streaming is not served on {MESSAGES_PATH}", "invalid_request_error")
            return

        self.endpoint._arrived(self._arrival())
        cost = estimate_cost(body)
        verdict = self.endpoint._decide(float(cost.total) if cost is not None else 0.0)
        limits, refusal, stated = _describe(self.endpoint, verdict, model)
        if not verdict.allowed:
            if stated:
                self.endpoint._state(stated)
            if anthropic and refusal.get("type") != "error":  # Anthropic's error shape, whatever the headers
                refusal = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit exceeded"}}
            elif gemini and refusal.get("error", {}).get("status") != "RESOURCE_EXHAUSTED":
                refusal = _gemini_error(None, model)
            self._json(429, refusal, limits)
            return

        if self.endpoint.latency:
            time.sleep(self.endpoint.latency)
        text = f"echo: {prompt}"
        if anthropic:
            self._json(200, _message(model, text), limits)
        elif gemini:
            self._json(200, _generated(model, text), limits)
        elif request.get("stream"):
            self._stream(model, text, limits)
        else:
            self._json(200, _completion(model, text), limits)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _error(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        kind = "requests" if status == 429 else "invalid_request_error"
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers or {})

    def _json(self, status: int, payload: Any, headers: dict[str, str]) -> None:
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


class _Received(io.RawIOBase):
    """A socket's bytes, read with the kernel's receive time of each read: ``first`` keeps the earliest since it
    was last set to ``None``."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.first: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size, ancillary, _, _ = self.connection.recvmsg_into([buffer], socket.CMSG_SPACE(16))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and self.first is None:
                seconds, nanoseconds = struct.unpack("qq", data[:16])
                self.first = seconds + nanoseconds / 1e9
        return size


def _describe(endpoint: RateLimitedEndpoint, verdict: _Verdict, model: str) -> tuple[dict[str, str], Any, float]:
    """The headers of an answer in ``endpoint``'s dialect, the body of a 429, and for a 429 the seconds it tells
    the client to wait (0 if it tells none): the latest of the times its headers and body state."""
    now = time.time()
    dialect = endpoint.dialect
    levels = verdict.levels
    if dialect in FIXED_WINDOW_DIALECTS:
        return _describe_window(endpoint, verdict, model, now)
    requests, tokens = endpoint._requests, endpoint._tokens
    request_limit, requests_left = requests.minute.burst, math.floor(levels["requests-minute"])
    requests_full_in = requests.minute.until_full(levels["requests-minute"])
    dimension = verdict.refused.dimension if verdict.refused is not None else "requests"
    wait = verdict.wait
    headers: dict[str, str] = {}
    body: Any = {"error": {"message": "Rate limit exceeded", "type": dimension, "code": "rate_limit_exceeded"}}
    stated = 0.0
    if dialect in ("openai", "openai-tokens"):
        headers = {
            "x-ratelimit-limit-requests": f"{request_limit:.0f}",
            "x-ratelimit-limit-tokens": f"{tokens.minute.burst:.0f}",
            "x-ratelimit-remaining-requests": str(requests_left),
            "x-ratelimit-remaining-tokens": str(math.floor(levels["tokens-minute"])),
            "x-ratelimit-reset-requests": _duration(requests_full_in),
            "x-ratelimit-reset-tokens": _duration(tokens.minute.until_full(levels["tokens-minute"])),
        }
        per, limit, need = (
            ("TPM", tokens.minute.burst, verdict.cost) if dimension == "tokens" else ("RPM", request_limit, 1)
        )
        left = levels[f"{dimension}-minute"]
        body["error"]["message"] = (
            f"Rate limit reached for {model} in organization org-local on {dimension} per min ({per}): "
            f"Limit {limit:g}, Used {limit - math.floor(left):g}, Requested {need:g}. "
            f"Please try again in {_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        stated = _seconds(_duration(wait))
    elif dialect == "anthropic":
        for name, limit_, left_, full_in in (
            ("requests", requests.minute, levels["requests-minute"], requests_full_in),
            ("tokens", tokens.minute, levels["tokens-minute"], tokens.minute.until_full(levels["tokens-minute"])),
        ):
            headers[f"anthropic-ratelimit-{name}-limit"] = f"{limit_.burst:.0f}"
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(math.floor(left_))
            headers[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(now + full_in)
        body = {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": f"This request would exceed the rate limit for your organization of {request_limit:g} "
                "requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
            },
        }
        if not verdict.allowed:
            headers["retry-after"] = str(math.ceil(wait))
        stated = math.ceil(wait)
    elif dialect == "github":
        headers = {
            "x-ratelimit-limit": f"{request_limit:.0f}",
            "x-ratelimit-remaining": str(requests_left),
            "x-ratelimit-used": f"{request_limit - requests_left:g}",
            "x-ratelimit-reset": str(math.ceil(now + requests_full_in)),
            "x-ratelimit-resource": "core",
        }
        body = {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api",
        }
        if not verdict.allowed:
            headers["retry-after"] = str(math.ceil(wait))
        stated = math.ceil(wait)
    elif dialect == "ietf":
        headers = {
            "RateLimit-Policy": f'"minute";q={request_limit:.0f};w=60',
            "RateLimit": f'"minute";r={requests_left};t={math.ceil(requests_full_in)}',
        }
        if not verdict.allowed:
            headers["Retry-After"] = str(math.ceil(wait))
        stated = math.ceil(wait)
    elif dialect == "openrouter" and not verdict.allowed:
        headers = {
            "X-RateLimit-Limit": f"{endpoint.burst:.0f}",
            "X-RateLimit-Remaining": str(math.floor(levels["requests"])),
            "X-RateLimit-Reset": str(math.ceil((now + wait) * 1000)),
        }
        body = {
            "error": {
                "message": f"Rate limit exceeded: limit_rpm/{model}",
                "code": 429,
                "metadata": {"headers": dict(headers), "provider_name": None},
            },
            "user_id": "user_local",
        }
        stated = math.ceil((now + wait) * 1000) / 1000 - now
    elif dialect == "retry-after" and not verdict.allowed:
        headers = {"Retry-After": str(math.ceil(wait))}
        stated = math.ceil(wait)
    elif dialect == "gemini" and not verdict.allowed:
        body = _gemini_error(math.ceil(wait), model, request_limit)
        stated = math.ceil(wait)
    elif dialect == "retry-after-ms" and not verdict.allowed:
        headers = {"retry-after-ms": str(math.ceil(wait * 1000))}
        stated = math.ceil(wait * 1000) / 1000
    return headers, body, stated


def _describe_window(
    endpoint: RateLimitedEndpoint, verdict: _Verdict, model: str, now: float
) -> tuple[dict[str, str], Any, float]:
    """:func:`_describe` for a LiteLLM proxy's fixed window, or its router's declared but unenforced limit."""
    limit = endpoint.window_limit
    remaining = math.floor(verdict.levels["window-remaining"])
    if endpoint.dialect == "litellm-unenforced":
        # The router's headers: rate a second as a limit per minute, and a count that runs on below zero.
        declared = max(1, round(endpoint.rate * 60))
        counted = declared - (limit - remaining)
        return {"x-ratelimit-limit-requests": str(declared), "x-ratelimit-remaining-requests": str(counted)}, {}, 0.0
    headers = {
        "x-ratelimit-api_key-limit-requests": str(limit),
        "x-ratelimit-api_key-remaining-requests": str(max(remaining, 0)),
        "x-litellm-key-rpm-limit": str(limit),
    }
    if verdict.allowed:
        return headers, {}, 0.0
    window = math.ceil(endpoint.window)
    reset_at = datetime.datetime.fromtimestamp(now + window, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    message = (
        f"Rate limit exceeded for api_key: local. Limit type: requests. Current limit: {limit}, Remaining: 0. "
        f"Limit resets at: {reset_at}"
    )
    headers = {"retry-after": str(window), "rate_limit_type": "requests", "reset_at": reset_at}
    body = {"error": {"message": message, "type": "None", "param": "None", "code": "429"}}
    return headers, body, float(window)


def _rfc3339(moment: float) -> str:
    """A Unix time as RFC 3339 in whole seconds, rounded up, as Anthropic writes its resets."""
    return datetime.datetime.fromtimestamp(math.ceil(moment), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(content: Any) -> str:
    """A message's text: a string, or (Anthropic's and OpenAI's content parts) the text of its parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _message(model: str, text: str) -> dict[str, Any]:
    """An Anthropic Messages API answer."""
    return {
        "id": "msg_aicoder_local",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": len(text.split())},
    }


def _generated(model: str, text: str) -> dict[str, Any]:
    """A Gemini generateContent answer."""
    return {
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": len(text.split()), "totalTokenCount": 2},
        "modelVersion": model,
    }


def _gemini_error(retry_delay: int | None, model: str, per_minute: float | None = None) -> dict[str, Any]:
    """Google's 429 body: RESOURCE_EXHAUSTED, naming the per-minute request quota (and its value, if
    ``per_minute`` is given), with a RetryInfo if ``retry_delay`` (whole seconds) is given."""
    violation: dict[str, Any] = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
        "quotaDimensions": {"location": "global", "model": model},
    }
    if per_minute is not None:
        violation["quotaValue"] = f"{per_minute:.0f}"
    failure = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]}
    details: list[dict[str, Any]] = [failure]
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_delay}s"})
    message = "You exceeded your current quota, please check your plan and billing details."
    return {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED", "details": details}}


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


def _seconds(duration: str) -> float:
    """The seconds :func:`_duration` wrote: what the client is told."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    minutes, _, rest = duration.rstrip("s").rpartition("m")
    return 60 * float(minutes or 0) + float(rest)


def _duration(seconds: float) -> str:
    """Format ``seconds`` as OpenAI does in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"
