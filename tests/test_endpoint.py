"""The built-in rate-limited endpoint: a real server that enforces a token bucket the way OpenAI answers."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import requests

from aicoder.http.hints import server_hint
from aicoder.testing import FakeClock, RateLimitedEndpoint, TokenBucket
from aicoder.testing.endpoint import _SO_TIMESTAMPNS, EARLY_GRACE, _Handler

BODY = {"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello there"}]}


def test_bucket_allows_a_burst_then_refuses() -> None:
    """A full bucket allows ``burst`` requests at once, then says how long until the next token."""
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=4, burst=2, clock=clock.now)
    assert bucket.take()[0] and bucket.take()[0]
    allowed, remaining, wait = bucket.take()
    assert (allowed, remaining, wait) == (False, 0.0, 0.25)
    assert bucket.until_full(remaining) == 0.5


def test_bucket_refills_at_rate_up_to_burst() -> None:
    """Tokens come back at ``rate`` a second and never exceed ``burst``."""
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=10, burst=3, clock=clock.now)
    for _ in range(3):
        bucket.take()
    clock.advance(0.1)
    assert bucket.take()[0]
    assert not bucket.take()[0]
    clock.advance(60)
    assert [bucket.take()[0] for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (1, 0), (1, 1.5)])
def test_bucket_rejects_bad_limits(rate: float, burst: int) -> None:
    """Non-positive or infinite rates and bursts below one are refused with the argument named."""
    with pytest.raises(ValueError, match=r"(rate|burst)="):
        TokenBucket(rate, burst)


def test_limits_are_enforced_and_counted() -> None:
    """With burst 2 and a request every 5 s, three quick requests get 200, 200, 429, and the counts say so."""
    with RateLimitedEndpoint(rate=0.2, burst=2) as endpoint:
        statuses = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code for _ in range(3)]
        stats = endpoint.stats()
        events = endpoint.events()
    assert statuses == [200, 200, 429]
    assert (stats.ok, stats.rate_limited, stats.total) == (2, 1, 3)
    assert [event.status for event in events] == [200, 200, 429]
    assert events[0].at <= events[1].at <= events[2].at


def test_429_looks_like_openai() -> None:
    """By default a 429 speaks OpenAI: per-minute limits in six headers, the wait in the error message."""
    with RateLimitedEndpoint(rate=2, burst=1) as endpoint:
        first = requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
        limited = send_until_refused(endpoint)  # the next, unless a loaded machine let a token refill first
    assert first.headers["x-ratelimit-limit-requests"] == "120"  # per minute
    error = limited.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "on requests per min (RPM): Limit 120" in error["message"]
    headers = limited.headers
    assert "retry-after" not in headers
    assert int(headers["x-ratelimit-remaining-requests"]) <= 120
    hint = server_hint(headers, limited.content)
    assert hint is not None and hint.source == "body: error.message"
    assert 0 < hint.seconds <= 0.5


def send_until_refused(endpoint: RateLimitedEndpoint) -> requests.Response:
    for _ in range(20):
        answer = requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
        if answer.status_code == 429:
            return answer
    raise AssertionError("the endpoint never refused")


@pytest.mark.parametrize(
    ("dialect", "source", "on_every_answer"),
    [
        ("openai", "body: error.message", "x-ratelimit-limit-requests"),
        ("openai-tokens", "body: error.message", "x-ratelimit-limit-tokens"),
        ("openrouter", "x-ratelimit-reset (Unix time)", None),
        ("anthropic", "retry-after", "anthropic-ratelimit-requests-limit"),
        ("github", "retry-after", "x-ratelimit-reset"),
        ("ietf", "retry-after", "ratelimit-policy"),
        ("retry-after", "retry-after", None),
        ("retry-after-ms", "retry-after-ms", None),
        ("bare", None, None),
        ("gemini", "body: RetryInfo.retryDelay", None),
    ],
)
def test_every_dialect_speaks_as_documented(dialect: str, source: str | None, on_every_answer: str | None) -> None:
    """Each dialect's 429 carries the hint aicoder reads for it, its 200s their rate-limit headers or none."""
    with RateLimitedEndpoint(rate=4, burst=2, dialect=dialect, token_cost=10) as endpoint:
        ok = requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
        limited = send_until_refused(endpoint)
    assert ok.status_code == 200
    if on_every_answer is None:
        assert not any(name.lower().startswith(("x-ratelimit", "ratelimit", "anthropic")) for name in ok.headers)
    else:
        assert on_every_answer in {name.lower() for name in ok.headers}
    hint = server_hint(limited.headers, limited.content)
    if source is None:
        assert hint is None
    else:
        assert hint is not None and hint.source == source
        assert 0 < hint.seconds <= 1.0  # the next request fits within a second at 4 a second


def test_litellm_is_a_fixed_window_that_asks_for_all_of_it() -> None:
    """``litellm``: rate x window requests per fixed window, remaining on every answer, then a 429 asking for
    the whole window, with reset_at and the same reset in its body, as a LiteLLM proxy answers."""
    with RateLimitedEndpoint(rate=2, dialect="litellm", window=2) as endpoint:
        answers = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429]
    assert [answer.headers["x-ratelimit-api_key-remaining-requests"] for answer in answers[:4]] == ["3", "2", "1", "0"]
    refused = answers[-1]
    assert refused.headers["retry-after"] == "2" and refused.headers["reset_at"].endswith(" UTC")
    assert "Limit resets at: " + refused.headers["reset_at"] in refused.json()["error"]["message"]
    hint = server_hint(refused.headers, refused.content)
    assert hint is not None and hint.seconds == 2.0 and hint.source == "retry-after"


def test_litellm_opens_a_new_window_when_the_last_has_passed() -> None:
    """A window begins at the first request after the last one ended, with the whole limit again."""
    with RateLimitedEndpoint(rate=10, dialect="litellm", window=0.2) as endpoint:
        first = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code for _ in range(3)]
        time.sleep(0.25)
        second = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code for _ in range(3)]
    assert first == second == [200, 200, 429]


def test_an_unenforced_limit_counts_past_zero_and_refuses_nothing() -> None:
    """``litellm-unenforced``: the router's declared limit, its remaining count running below zero."""
    with RateLimitedEndpoint(rate=1 / 60, dialect="litellm-unenforced", window=60) as endpoint:
        answers = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.headers["x-ratelimit-remaining-requests"] for answer in answers] == ["0", "-1", "-2"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "1"


def test_a_request_before_a_stated_time_is_counted_early() -> None:
    """After a 429 stating about 200 ms, a request past the grace but inside them is early; one after is not."""
    with RateLimitedEndpoint(rate=5, burst=1, dialect="retry-after-ms") as endpoint:
        statuses = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code for _ in range(2)]
        time.sleep(EARLY_GRACE + 0.02)
        requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
        early = endpoint.stats().early
        time.sleep(0.25)
        requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
        stats = endpoint.stats()
    assert statuses == [200, 429]
    assert early == 1 and stats.early == 1


@pytest.mark.skipif(_SO_TIMESTAMPNS is None, reason="the kernel's receive times are read on Linux only")
def test_a_request_received_in_time_is_not_early_however_late_it_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose bytes arrive within the grace is on time, though a busy server reads it past the grace:
    the kernel's receive time judges, not the serving thread's (dozens of client threads in the same process
    delay it by tens of milliseconds)."""
    read_body = _Handler._read_body

    def served_late(handler: _Handler) -> bytes:
        time.sleep(EARLY_GRACE + 0.03)
        return read_body(handler)

    with RateLimitedEndpoint(rate=5, burst=1, dialect="retry-after-ms") as endpoint:
        statuses = [requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code for _ in range(2)]
        monkeypatch.setattr(_Handler, "_read_body", served_late)
        requests.post(f"{endpoint.base_url}/chat/completions", json=BODY)
    assert statuses == [200, 429]
    assert endpoint.stats().early == 0


def test_token_limit_binds_in_the_tokens_dialect() -> None:
    """openai-tokens refuses on tokens (type "tokens") while its request limit has room."""
    with RateLimitedEndpoint(rate=4, burst=2, dialect="openai-tokens", token_cost=10) as endpoint:
        limited = send_until_refused(endpoint)
    assert limited.json()["error"]["type"] == "tokens"
    assert int(limited.headers["x-ratelimit-remaining-requests"]) > 0


def test_a_foreign_client_takes_its_share() -> None:
    """With another client taking 90 % of the capacity, the headers still show the whole limit."""
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=10, burst=1, clock=clock.now, refill=1.0)
    assert bucket.take()[0]
    clock.advance(0.5)
    assert not bucket.take()[0]  # at the whole rate a token would be back; at a tenth of it, not yet
    assert bucket.until_full(0) == 0.1


@pytest.mark.parametrize(("option", "value"), [("dialect", "klingon"), ("foreign", 0.95), ("token_cost", 0)])
def test_bad_endpoint_options_are_named(option: str, value: object) -> None:
    """A dialect not listed, a foreign share over 0.9 or a token cost below 1 is refused with the option named."""
    with pytest.raises(ValueError, match=f"{option}="):
        RateLimitedEndpoint(**{option: value})  # type: ignore[arg-type]


def test_sdk_parses_plain_and_streamed_completions() -> None:
    """The real openai SDK reads both answers, the stream arriving as several chunks."""
    with RateLimitedEndpoint(rate=100, burst=10) as endpoint:
        client = openai.OpenAI(api_key="any", base_url=endpoint.base_url, max_retries=0, http_client=httpx2.Client())
        plain = client.chat.completions.create(model="m", messages=BODY["messages"])  # type: ignore[arg-type]
        chunks = list(client.chat.completions.create(model="m", messages=BODY["messages"], stream=True))  # type: ignore[arg-type]
    assert plain.choices[0].message.content == "echo: hello there"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "echo: hello there"
    assert len(chunks) >= 3
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/other", BODY, 404),
        ("GET", "/v1/chat/completions", None, 404),
        ("POST", "/v1/chat/completions", {"x": 1}, 400),
    ],
)
def test_wrong_requests_get_openai_style_errors(method: str, path: str, body: object, status: int) -> None:
    """Unknown paths and malformed bodies get an error body, not a 429 or a crash."""
    with RateLimitedEndpoint() as endpoint:
        response = requests.request(method, f"{endpoint.url}{path}", json=body)
        assert endpoint.stats().other == 1
    assert response.status_code == status
    assert "message" in response.json()["error"]


def test_shuts_down_cleanly() -> None:
    """After close() the port refuses connections and the serving thread is gone; close() may repeat."""
    endpoint = RateLimitedEndpoint().start()
    port = int(endpoint.url.rsplit(":", 1)[1])
    assert requests.post(f"{endpoint.base_url}/chat/completions", json=BODY).status_code == 200
    endpoint.close()
    endpoint.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_pytest_fixture(aicoder_endpoint: RateLimitedEndpoint) -> None:
    """The pytest11 plugin provides a running endpoint at 10/s with a burst of 5."""
    assert (aicoder_endpoint.bucket.rate, aicoder_endpoint.bucket.burst) == (10.0, 5)
    assert requests.post(f"{aicoder_endpoint.base_url}/chat/completions", json=BODY).status_code == 200


def test_instant_waits_fixture(aicoder_instant_waits: list[float], aicoder_endpoint_factory) -> None:  # type: ignore[no-untyped-def]
    """The plugin's fixtures combine: a strict endpoint, and retries that do not sleep."""
    from aicoder import Config, LLMClient

    endpoint = aicoder_endpoint_factory(rate=0.5, burst=1)
    config = Config(retry_count=2, openrouter_api_key="key-for-test", openrouter_base_url=endpoint.base_url)
    client = LLMClient("m", config=config)
    assert client.sendRequest("s", "first") == "echo: first"
    with pytest.raises(RuntimeError, match="persisted after 2 retries"):
        client.sendRequest("s", "second")
    # The second request waits for its turn at the endpoint's pace (30 a minute: one every 2 s),
    # then each retry for its own. All skipped, so the real endpoint still refuses the retries.
    assert len(aicoder_instant_waits) >= 3
    assert all(1.5 < wait < 10 for wait in aicoder_instant_waits if wait > 0)


@pytest.mark.parametrize(
    ("path", "body", "read"),
    [
        (
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            },
            lambda answer: answer["content"][0]["text"],
        ),
        (
            "/v1beta/models/m:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            lambda answer: answer["candidates"][0]["content"]["parts"][0]["text"],
        ),
        (
            "/openai/v1/chat/completions",  # Groq's prefix
            BODY,
            lambda answer: answer["choices"][0]["message"]["content"],
        ),
    ],
    ids=["anthropic messages", "gemini generateContent", "openai under a prefix"],
)
def test_each_api_is_served_in_its_own_shape(path: str, body: object, read: Callable[[Any], str]) -> None:
    """Anthropic's Messages API and Gemini's generateContent answer in their own shapes, and refuse in them."""
    with RateLimitedEndpoint(rate=0.2, burst=1) as endpoint:
        answer = requests.post(f"{endpoint.url}{path}", json=body)
        refused = requests.post(f"{endpoint.url}{path}", json=body)
    assert answer.status_code == 200
    assert read(answer.json()).startswith("echo: ")
    assert refused.status_code == 429
    shape = refused.json()
    if "messages" in path:
        assert shape["type"] == "error" and shape["error"]["type"] == "rate_limit_error"
    elif "generateContent" in path:
        assert shape["error"]["status"] == "RESOURCE_EXHAUSTED"
