"""End to end through LLMClient: 429s are retried in the transport, for both providers, and only there."""

from __future__ import annotations

import datetime
import json
import logging
import socket
import time
import traceback

import openai
import pytest
import requests
import responses
from responses import registries

from aicoder.config import Config
from aicoder.http.waiting import instant_waits
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import LLMError, RateLimitError
from tests.servers import Reply, completion, rate_limited, scripted_server

KEY = "sk-SENTINEL-KEY-0123456789"
PROMPT = "SENTINEL-PROMPT: write me a haiku"
BASE = "https://llm.test/v1"
ENDPOINT = f"{BASE}/chat/completions"
PROVIDERS = ["openrouter", "openai"]


def client(provider: str, base_url: str = BASE, **settings: float) -> LLMClient:
    config = Config(
        retry_count=int(settings.get("count", 5)),
        retry_min_delay=settings.get("min_delay", 2.0),
        retry_max_delay=settings.get("max_delay", 30.0),
        retry_max_hint=settings.get("max_hint", 120.0),
        openrouter_api_key=KEY,
        openrouter_base_url=base_url,
        openai_api_key=KEY,
        openai_base_url=base_url,
    )
    return LLMClient(f"{provider}/test-model", config=config)


def completion_json(content: str) -> dict[str, object]:
    body: dict[str, object] = json.loads(completion(content).body)
    return body


def error_json(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}}


# --- with `responses`: wiring and call counts (urllib3's sleep is never called here) ---


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_429s_then_success(provider: str) -> None:
    """429, 429, 200 gives the 200's content after exactly three calls."""
    with responses.RequestsMock(registry=registries.OrderedRegistry) as mock:
        first = mock.post(ENDPOINT, status=429, json=error_json("slow down"))
        second = mock.post(ENDPOINT, status=429, json=error_json("slow down"))
        ok = mock.post(ENDPOINT, status=200, json=completion_json("the answer"))
        assert client(provider).sendRequest("system", PROMPT) == "the answer"
        assert len(mock.calls) == 3
    assert (first.call_count, second.call_count, ok.call_count) == (1, 1, 1)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_persistent_429_raises_after_one_plus_count_calls(provider: str) -> None:
    """A server that always answers 429 sees exactly 1 + LLM_RETRY_COUNT requests, then RuntimeError."""
    with responses.RequestsMock() as mock:
        limited = mock.post(
            ENDPOINT, status=429, json=error_json("Rate limit reached for requests"), headers={"retry-after-ms": "1500"}
        )
        with pytest.raises(RuntimeError) as caught:
            client(provider, count=3).sendRequest("system", PROMPT)
    assert limited.call_count == 4
    message = str(caught.value)
    assert "HTTP 429" in message
    assert "after 3 retries" in message
    assert "LLM_RETRY_COUNT=3" in message
    assert '"Rate limit reached for requests"' in message
    assert "1.5 s (retry-after-ms)" in message
    assert "Raise LLM_RETRY_COUNT" in message
    assert isinstance(caught.value.__cause__, Exception)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("status", [400, 401, 500])
def test_other_errors_are_raised_after_one_request(provider: str, status: int) -> None:
    """400, 401 and 500 are final: one request, then a RuntimeError chained to the original."""
    with responses.RequestsMock() as mock:
        failing = mock.post(ENDPOINT, status=status, json={"error": {"message": f"failure {status}"}})
        with pytest.raises(RuntimeError, match=f"HTTP {status}") as caught:
            client(provider).sendRequest("system", PROMPT)
    assert failing.call_count == 1
    assert f'"failure {status}"' in str(caught.value)
    assert "Not retried" in str(caught.value)
    cause = caught.value.__cause__
    if provider == "openrouter":
        assert isinstance(cause, requests.HTTPError)
        assert cause.response is not None and cause.response.status_code == status
    else:
        assert isinstance(cause, openai.APIStatusError)
        assert cause.status_code == status


@pytest.mark.parametrize("provider", PROVIDERS)
def test_hint_longer_than_max_hint_stops_at_once(provider: str) -> None:
    """A Retry-After beyond LLM_RETRY_MAX_HINT ends retrying and says which setting to raise."""
    with responses.RequestsMock() as mock:
        limited = mock.post(ENDPOINT, status=429, json=error_json("quota"), headers={"Retry-After": "3600"})
        with pytest.raises(RuntimeError) as caught:
            client(provider).sendRequest("system", PROMPT)
    assert limited.call_count == 1
    message = str(caught.value)
    assert "asked to wait 60 min" in message
    assert "(retry-after, retry-after dialect)" in message
    assert "stopped after 0 retries" in message
    assert "Raise LLM_RETRY_MAX_HINT to at least 3600" in message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_daily_quota_stops_at_once_and_names_its_reset(provider: str) -> None:
    """OpenRouter's per-day cap, its reset a Unix time in ms in the body: one request, then the reset time."""
    reset = int(time.time() + 9 * 3600) * 1000
    headers = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    body = {
        "error": {"message": "Rate limit exceeded: free-models-per-day", "code": 429, "metadata": {"headers": headers}}
    }
    with scripted_server(Reply(429, json.dumps(body).encode(), {"Content-Type": "application/json"})) as server:
        with pytest.raises(RuntimeError) as caught:
            client(provider, f"{server.url}/v1").sendRequest("system", PROMPT)
        assert server.count == 1
    message = str(caught.value)
    moment = datetime.datetime.fromtimestamp(reset / 1000, datetime.UTC)
    assert f"until {moment:%Y-%m-%d %H:%M}" in message
    assert "x-ratelimit dialect" in message
    assert "asked to wait 9 h" in message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_hint_between_the_schedule_cap_and_the_hint_cap_is_waited(provider: str) -> None:
    """A 0.3 s hint with LLM_RETRY_MAX_DELAY=0.1 but the hint cap above it: waited, then the answer."""
    with scripted_server(rate_limited({"retry-after-ms": "300"}), completion("later")) as server:
        started = time.monotonic()
        llm = client(provider, f"{server.url}/v1", min_delay=0.05, max_delay=0.1, max_hint=1.0)
        assert llm.sendRequest("s", "u") == "later"
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_secrets_never_reach_logs_or_errors(provider: str, caplog: pytest.LogCaptureFixture) -> None:
    """The API key and the prompt appear in no log record and no error message, even if the server echoes them."""
    caplog.set_level(logging.DEBUG)
    echo = f"Incorrect API key provided: {KEY}; prompt was {PROMPT}"
    with responses.RequestsMock() as mock:
        mock.post(f"{ENDPOINT}", status=429, json=error_json(echo))
        with pytest.raises(RuntimeError) as caught:
            client(provider, count=2).sendRequest("system", PROMPT)
    assert KEY not in str(caught.value)
    assert "SENTINEL-KEY" not in caplog.text
    assert "SENTINEL-PROMPT" not in caplog.text
    assert "***" in str(caught.value)


def test_unprefixed_and_foreign_prefixed_models_go_to_openrouter_as_is() -> None:
    """A bare name, or another vendor's prefix, is an OpenRouter model id sent unchanged."""
    config = Config(openrouter_api_key=KEY, openrouter_base_url=BASE)
    with responses.RequestsMock() as mock:
        call = mock.post(ENDPOINT, json=completion_json("ok"))
        LLMClient("anthropic/claude-sonnet-4", config=config).sendRequest("s", "u")
        LLMClient("openrouter/meta/llama-3", config=config).sendRequest("s", "u")
        sent = [json.loads(c.request.body or b"") for c in mock.calls]
    assert [body["model"] for body in sent] == ["anthropic/claude-sonnet-4", "meta/llama-3"]
    assert sent[0]["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert call.call_count == 2


# --- with a real server on 127.0.0.1: urllib3 really sleeps, so the timing is real ---


@pytest.mark.parametrize("provider", PROVIDERS)
def test_real_server_waits_the_schedule_then_succeeds(provider: str) -> None:
    """Against a real socket, two 429s cost the scheduled 0.05 s + 0.1 s, and three requests."""
    with scripted_server(rate_limited(), rate_limited(), completion("real")) as server:
        started = time.monotonic()
        answer = client(provider, f"{server.url}/v1", count=2, min_delay=0.05, max_delay=0.1).sendRequest("s", "u")
        elapsed = time.monotonic() - started
    assert answer == "real"
    assert server.count == 3
    gaps = [later.at - earlier.at for earlier, later in zip(server.received, server.received[1:], strict=False)]
    assert 0.05 <= gaps[0] < 0.05 + 0.2
    assert 0.1 <= gaps[1] < 0.1 + 0.2
    assert 0.15 <= elapsed < 0.15 + 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_real_server_persistent_429(provider: str) -> None:
    """Against a real socket, always-429 makes exactly 1 + count requests and waits each scheduled delay."""
    with scripted_server(rate_limited(message="still limited")) as server:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="persisted after 2 retries"):
            client(provider, f"{server.url}/v1", count=2, min_delay=0.1, max_delay=0.1).sendRequest("s", "u")
        elapsed = time.monotonic() - started
    assert server.count == 3
    assert 0.2 <= elapsed < 0.2 + 1.0
    assert all(request.method == "POST" for request in server.received)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_real_server_honours_retry_after_ms(provider: str) -> None:
    """A retry-after-ms hint replaces the schedule's 2 s wait."""
    with scripted_server(rate_limited({"retry-after-ms": "80"}), completion("hinted")) as server:
        started = time.monotonic()
        assert client(provider, f"{server.url}/v1").sendRequest("s", "u") == "hinted"
        elapsed = time.monotonic() - started
    assert server.count == 2
    assert 0.08 <= elapsed < 1.0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_refused_is_not_retried(provider: str, caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection fails at once, without waiting or a retry warning."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with instant_waits() as waits, pytest.raises(RuntimeError, match="could not complete") as caught:
        client(provider, f"http://127.0.0.1:{port}/v1").sendRequest("s", "u")
    assert waits == []
    assert "Rate limited" not in caplog.text
    assert "Connection refused" in str(caught.value) or "ConnectError" in str(caught.value)


def test_timeout_is_not_retried() -> None:
    """A read timeout is raised after one request, and says it timed out."""
    with scripted_server(Reply(200, b"{}", delay=0.3)) as server:
        llm = client("openrouter", f"{server.url}/v1")
        llm.provider.timeout = (1.0, 0.05)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="timed out") as caught:
            llm.sendRequest("s", "u")
        assert server.count == 1
    assert isinstance(caught.value.__cause__, requests.Timeout)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("header", [("retry-after-ms", "5\x1f"), ("Retry-After", "1\x1c")])
def test_control_characters_in_a_hint_are_no_hint(provider: str, header: tuple[str, str]) -> None:
    """A hint with a control character is ignored: the schedule applies, nothing crashes."""
    with scripted_server(rate_limited(dict([header])), completion("fine")) as server:
        llm = client(provider, f"{server.url}/v1", count=1, min_delay=0.01, max_delay=0.01)
        with instant_waits() as waits:
            assert llm.sendRequest("s", "u") == "fine"
    assert waits[0] == 0.01


def test_no_retry_says_no_wait() -> None:
    """With LLM_RETRY_COUNT=0 the message says there was no wait, not "waited nothing s"."""
    with responses.RequestsMock() as mock:
        mock.post(ENDPOINT, status=429, json=error_json("slow down"))
        with pytest.raises(RuntimeError) as caught:
            client("openrouter", count=0).sendRequest("system", PROMPT)
    assert "no wait" in str(caught.value)
    assert "nothing s" not in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_secret_in_the_chained_traceback(provider: str) -> None:
    """A failure's whole traceback, causes included, holds no query string, password or key."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://user:SENTINEL-PW@127.0.0.1:{port}/v1?api-key=SENTINEL-QUERY"
    with pytest.raises(RuntimeError) as caught:
        client(provider, base).sendRequest("s", "u")
    printed = "".join(traceback.format_exception(caught.value))
    assert "SENTINEL" not in printed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_query_secret_echoed_by_the_server_is_redacted(provider: str) -> None:
    """The server quoting the base URL's query string back does not put it in the message."""
    body = {"error": {"message": "bad api-key SENTINEL-QUERY-VALUE for this deployment"}}
    reply = Reply(401, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with scripted_server(reply) as server, pytest.raises(RuntimeError) as caught:
        client(provider, f"{server.url}/v1?api-key=SENTINEL-QUERY-VALUE").sendRequest("s", "u")
    assert "SENTINEL" not in str(caught.value)
    assert "bad api-key ***" in str(caught.value)


# --- typed errors ---


@pytest.mark.parametrize("provider", PROVIDERS)
def test_out_of_retries_is_a_rate_limit_error_with_its_numbers(provider: str) -> None:
    """A 429 that persists raises RateLimitError: status 429, the attempts, the waits taken, the last hint."""
    with scripted_server(rate_limited({"retry-after-ms": "20"})) as server:
        llm = client(provider, f"{server.url}/v1", count=2)
        with pytest.raises(RateLimitError) as caught:
            llm.sendRequest("s", "u")
    error = caught.value
    assert isinstance(error, LLMError) and isinstance(error, RuntimeError)
    assert (error.status, error.provider, error.attempts) == (429, provider, 3)
    assert error.url == f"{server.url}/v1/chat/completions"
    assert len(error.waits) == 2 and all(wait >= 0.02 for wait in error.waits)
    assert error.hint == pytest.approx(0.02)
    assert error.retry_at is not None and abs(error.retry_at - time.time()) < 5
    assert f"waited {error.waits[0]:.3g}" in str(error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_other_failures_are_llm_errors_with_their_status(provider: str) -> None:
    """A 401 is an LLMError with status 401, not a RateLimitError; no answer at all has status None."""
    with responses.RequestsMock() as mock:
        mock.post(ENDPOINT, status=401, json=error_json("bad key"))
        with pytest.raises(LLMError) as caught:
            client(provider).sendRequest("s", "u")
    assert not isinstance(caught.value, RateLimitError)
    assert (caught.value.status, caught.value.url) == (401, ENDPOINT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LLMError) as refused:
        client(provider, f"http://127.0.0.1:{port}/v1").sendRequest("s", "u")
    assert refused.value.status is None
