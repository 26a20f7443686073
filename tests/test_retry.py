"""The retry policy, exercised directly through urllib3's own ``Retry`` interface."""

from __future__ import annotations

import io
import logging
import pickle

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.response import HTTPResponse

from aicoder.config import Config, ConfigError
from aicoder.http.adapter import LinearBackoffAdapter, retrying_session
from aicoder.http.policy import LinearRetry, Wait

URL = "/v1/chat/completions?api_key=SENTINEL-QUERY"


def response(status: int = 429, **headers: str) -> HTTPResponse:
    return HTTPResponse(body=b"", status=status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def retry_chain(retry: LinearRetry, responses: list[HTTPResponse]) -> LinearRetry:
    for answer in responses:
        retry = retry.increment("POST", URL, response=answer)
    return retry


def test_waits_follow_the_schedule() -> None:
    """Chained increments wait 2, 9, 16, 23, 30 s with the defaults."""
    retry = retry_chain(LinearRetry(), [response() for _ in range(5)])
    assert [wait.seconds for wait in retry.waits] == [2, 9, 16, 23, 30]
    assert {wait.source for wait in retry.waits} == {"schedule"}
    assert len(retry.history) == 5


def test_sixth_429_gives_up() -> None:
    """After LLM_RETRY_COUNT retries the next 429 raises MaxRetryError inside urllib3."""
    retry = retry_chain(LinearRetry(count=2), [response(), response()])
    with pytest.raises(MaxRetryError):
        retry.increment("POST", URL, response=response())


def test_zero_count_means_one_attempt() -> None:
    """LLM_RETRY_COUNT=0: the first 429 is final."""
    with pytest.raises(MaxRetryError):
        LinearRetry(count=0).increment("POST", URL, response=response())


def test_new_carries_subclass_parameters() -> None:
    """``new()`` keeps count, delays, hint cap, waits and the hint switch (urllib3's alone would drop them)."""
    first = LinearRetry(3, 0.5, 4.0, max_hint=9.0, respect_retry_after_header=False)
    retry = first.increment("POST", URL, response=response())
    assert (retry.count, retry.min_delay, retry.max_delay, retry.max_hint) == (3, 0.5, 4.0, 9.0)
    assert retry.respect_retry_after_header is False
    assert retry.waits == (Wait(0.5, "schedule"),)
    assert retry.total == 2


def test_increment_leaves_the_original_untouched() -> None:
    """Retry state is immutable: the adapter's policy never changes as requests retry."""
    original = LinearRetry()
    original.increment("POST", URL, response=response())
    assert original.waits == ()
    assert original.history == ()
    assert original.total == 5


@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "DELETE", "PATCH"])
def test_429_is_retried_for_every_method(method: str) -> None:
    """POST is retried: a 429 means the server did not process the request."""
    assert LinearRetry().is_retry(method, 429)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 408, 409, 413, 500, 502, 503, 504])
def test_other_statuses_are_not_retried(status: int) -> None:
    """Only 429 is retried, even with a Retry-After header on a 503 or 413."""
    assert not LinearRetry().is_retry("POST", status, has_retry_after=True)


def test_connection_error_is_not_retried() -> None:
    """A connection error exhausts the policy at once."""
    error = NewConnectionError(None, "refused")  # type: ignore[arg-type]
    with pytest.raises(MaxRetryError):
        LinearRetry().increment("POST", URL, error=error)


def test_read_error_is_reraised() -> None:
    """A read error surfaces as itself, so requests reports a timeout as a timeout."""
    with pytest.raises(ReadTimeoutError):
        LinearRetry().increment("POST", URL, error=ReadTimeoutError(None, URL, "timed out"))  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        LinearRetry().increment("POST", URL, error=ProtocolError("reset"))


def test_hint_replaces_the_schedule() -> None:
    """A server hint is waited instead of the schedule, and its header is named."""
    retry = retry_chain(
        LinearRetry(),
        [
            response(retry_after_ms="1500"),
            response(Retry_After="4"),
            response(x_ratelimit_reset_tokens="250ms"),
            response(x_ratelimit_limit="10", x_ratelimit_remaining="0", x_ratelimit_reset="0.5"),
        ],
    )
    assert retry.waits == (
        Wait(1.5, "retry-after-ms"),
        Wait(4.0, "retry-after"),
        Wait(0.25, "x-ratelimit-reset-tokens"),
        Wait(0.5, "x-ratelimit-reset"),
    )


def test_body_hint_is_read_and_the_body_kept_for_the_caller() -> None:
    """A hint in a 429's body is honoured, and the final 429 still carries that body whole."""
    body = b'{"error": {"message": "Please try again in 1.5s.", "type": "requests"}}'
    answer = HTTPResponse(
        body=io.BytesIO(body), status=429, headers={"Content-Length": str(len(body))}, preload_content=False
    )
    retry = LinearRetry().increment("POST", URL, response=answer)
    assert retry.waits == (Wait(1.5, "body: error.message"),)
    assert answer.data == body


def test_bad_hint_falls_back_to_the_schedule() -> None:
    """Garbage or negative hints are ignored, never a crash."""
    retry = retry_chain(LinearRetry(), [response(Retry_After="soon"), response(retry_after_ms="-5")])
    assert retry.waits == (Wait(2.0, "schedule"), Wait(9.0, "schedule"))


def test_hint_longer_than_max_hint_gives_up_at_once() -> None:
    """A hint beyond max_hint stops retrying: waiting it out is the user's decision."""
    with pytest.raises(MaxRetryError, match=r"server asked to wait 3\.6e\+03 s"):
        LinearRetry(max_hint=120).increment("POST", URL, response=response(Retry_After="3600"))


def test_hints_longer_than_the_schedule_cap_are_waited() -> None:
    """Azure's 37 s is more than LLM_RETRY_MAX_DELAY's 30 s but within the hint cap: it is waited."""
    retry = LinearRetry(max_delay=30, max_hint=120).increment("POST", URL, response=response(Retry_After="37"))
    assert retry.waits == (Wait(37.0, "retry-after"),)


def test_hints_can_be_ignored() -> None:
    """respect_retry_after_header=False follows the schedule whatever the server says."""
    retry = retry_chain(LinearRetry(respect_retry_after_header=False), [response(Retry_After="3600")])
    assert retry.waits == (Wait(2.0, "schedule"),)


def test_one_warning_per_retry_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry logs one WARNING with method, URL without query, attempt, wait and source."""
    caplog.set_level(logging.DEBUG, logger="aicoder")
    retry_chain(
        LinearRetry(count=2),
        [response(retry_after_ms="1500", Authorization="Bearer SENTINEL-HEADER"), response()],
    )
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("aicoder")]
    assert records == [
        (
            "aicoder.retry",
            logging.WARNING,
            "Rate limited (429) on POST /v1/chat/completions; retry 1/2 in 1.5 s (retry-after-ms)",
        ),
        (
            "aicoder.retry",
            logging.WARNING,
            "Rate limited (429) on POST /v1/chat/completions; retry 2/2 in 30 s (schedule)",
        ),
    ]
    assert [(r.attempt, r.wait, r.source) for r in caplog.records] == [
        (1, 1.5, "retry-after-ms"),
        (2, 30.0, "schedule"),
    ]
    assert "SENTINEL" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"count": -1}, "count=-1"),
        ({"min_delay": -1}, "min_delay=-1"),
        ({"max_delay": float("nan")}, "max_delay=nan"),
        ({"max_hint": 86401}, "max_hint=86401"),
        ({"min_delay": 5, "max_delay": 1}, "max_delay=1.0 is below min_delay=5.0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, float], named: str) -> None:
    """Bad policy arguments raise ConfigError naming the argument and value."""
    with pytest.raises(ConfigError, match=named):
        LinearRetry(**kwargs)  # type: ignore[arg-type]


def test_adapter_from_config_and_overrides() -> None:
    """The adapter takes its policy from Config, overridden argument by argument."""
    adapter = LinearBackoffAdapter(Config(retry_count=3, retry_min_delay=1, retry_max_delay=5), max_delay=9)
    assert (adapter.retry.count, adapter.retry.min_delay, adapter.retry.max_delay) == (3, 1.0, 9.0)
    assert adapter.retry.respect_retry_after_header is True


def test_adapter_loads_settings_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no config, the adapter reads LLM_RETRY_* at construction."""
    monkeypatch.setenv("LLM_RETRY_COUNT", "2")
    monkeypatch.setenv("LLM_RETRY_RESPECT_RETRY_AFTER", "off")
    adapter = LinearBackoffAdapter()
    assert adapter.retry.count == 2
    assert adapter.retry.respect_retry_after_header is False


def test_adapter_rejects_bad_setting_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad environment value fails when the adapter is built."""
    monkeypatch.setenv("LLM_RETRY_MAX_DELAY", "-3")
    with pytest.raises(ConfigError, match="LLM_RETRY_MAX_DELAY"):
        LinearBackoffAdapter()


def test_adapter_pool_size_is_settable() -> None:
    """pool_maxsize reaches urllib3's pool manager."""
    adapter = LinearBackoffAdapter(Config(), pool_connections=3, pool_maxsize=32)
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 32


def test_adapter_survives_pickling() -> None:
    """An adapter pickles with its policy, as requests' adapters do."""
    adapter = pickle.loads(pickle.dumps(LinearBackoffAdapter(Config(retry_count=4, retry_min_delay=1))))
    assert isinstance(adapter.retry, LinearRetry)
    assert (adapter.retry.count, adapter.retry.min_delay) == (4, 1.0)


def test_retrying_session_mounts_both_schemes() -> None:
    """retrying_session() routes http:// and https:// through one LinearBackoffAdapter."""
    session = retrying_session(Config(retry_count=1))
    assert isinstance(session, requests.Session)
    http_adapter = session.get_adapter("http://example.test/")
    assert isinstance(http_adapter, LinearBackoffAdapter)
    assert session.get_adapter("https://example.test/") is http_adapter


@pytest.mark.parametrize("option", ["coordinate", "respect_retry_after"])
def test_adapter_refuses_a_string_for_a_bool(option: str) -> None:
    """``coordinate="false"`` once meant True; now it is refused, naming the argument."""
    with pytest.raises(ConfigError, match=f"{option}='false' is not allowed: expected True or False"):
        LinearBackoffAdapter(Config(), **{option: "false"})  # type: ignore[arg-type]
