"""The wait a 429 asks for is read from every dialect's headers and bodies; broken values are ignored, never fatal."""

from __future__ import annotations

import email.utils
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from aicoder.http.hints import MAX_BODY, ServerHint, server_hint, stated_quotas
from aicoder.http.tokens import RequestCost

NOW = 1_800_000_000.0


def hint(body: bytes | str | None = None, cost: RequestCost | None = None, **headers: str) -> ServerHint | None:
    names = CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()})
    return server_hint(names, body, now=lambda: NOW, cost=cost)


def said(found: ServerHint | None) -> tuple[float, str, bool] | None:
    """The seconds, source and coarseness of a hint, rounded for comparison."""
    return None if found is None else (round(found.seconds, 6), found.source, found.coarse)


def test_milliseconds() -> None:
    """retry-after-ms is milliseconds, precise."""
    found = hint(retry_after_ms="1500")
    assert said(found) == (1.5, "retry-after-ms", False)
    assert found is not None and found.retry_at == NOW + 1.5 and found.source == "retry-after-ms"


def test_seconds_are_coarse_when_whole() -> None:
    """Retry-After in whole seconds may be rounded; a decimal is precise."""
    assert said(hint(Retry_After="7")) == (7.0, "retry-after", True)
    assert said(hint(Retry_After=" 0.25 ")) == (0.25, "retry-after", False)


def test_http_date() -> None:
    """Retry-After as an HTTP-date is the time left until then, to the second."""
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert said(hint(Retry_After=date)) == (12.0, "retry-after", True)


def test_the_latest_stated_time_wins() -> None:
    """A time the server states is a floor: of retry-after-ms and Retry-After, the later one, whole seconds or not."""
    assert said(hint(retry_after_ms="200", Retry_After="1")) == (1.0, "retry-after", True)
    assert said(hint(retry_after_ms="1500", Retry_After="1")) == (1.5, "retry-after-ms", False)
    assert said(hint(retry_after_ms="1000", Retry_After="1")) == (1.0, "retry-after-ms", False)  # a tie: the first


def test_a_precise_hint_never_shortens_a_coarse_one() -> None:
    """``Retry-After: 2`` with "try again in 1.5s" in the body: 2 s, as Anthropic says earlier retries fail."""
    body = json.dumps({"error": {"message": "Please try again in 1.5s.", "type": "tokens"}})
    assert said(hint(body, Retry_After="2")) == (2.0, "retry-after", True)
    assert said(hint(body, Retry_After="1")) == (1.5, "body: error.message", False)


@pytest.mark.parametrize(
    ("name", "value", "seconds", "source"),
    [
        ("retry-after", str(int(NOW + 30)), 30.0, "retry-after (Unix time)"),
        ("retry-after", str(int((NOW + 2.5) * 1000)), 2.5, "retry-after (Unix time)"),
        ("retry-after-ms", str(int((NOW + 2.5) * 1000)), 2.5, "retry-after-ms (Unix time)"),
        # a bucket of 60 that is full in 7 s (whole seconds: up to 8) has one request in 8 / 60 s
        ("x-ratelimit-reset-requests", str(int(NOW + 7)), 0.133, "x-ratelimit-reset-requests (Unix time)"),
        ("ratelimit-reset", str(int(NOW + 4)), 4.0, "ratelimit-reset (Unix time)"),
    ],
)
def test_a_unix_time_where_a_duration_is_expected(name: str, value: str, seconds: float, source: str) -> None:
    """A number from 10⁹ on can only be a Unix time (from 10¹², in ms), in any header family, and the source says so."""
    headers = {name: value}
    if name.startswith("x-ratelimit"):
        headers |= {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"}
    if name.startswith("ratelimit"):
        headers |= {"ratelimit-limit": "60", "ratelimit-remaining": "0"}
    found = hint(**{key.replace("-", "_"): item for key, item in headers.items()})
    assert found is not None and (round(found.seconds, 3), found.source) == (seconds, source)


def test_a_unix_time_already_past_is_no_hint() -> None:
    """An epoch behind the clock says nothing, and is never read as a wait of decades."""
    assert hint(Retry_After=str(int(NOW - 5))) is None
    assert hint(x_ratelimit_reset_requests=str(int(NOW - 5)), x_ratelimit_remaining_requests="0") is None


def test_litellm_fixed_window_429() -> None:
    """A LiteLLM proxy's 429: ``retry-after`` of the whole window, ``reset_at`` in UTC, the same in the body."""
    reset_at = "2027-01-15 08:00:09 UTC"  # NOW is 2027-01-15 08:00:00 UTC
    body = json.dumps({"error": {"message": f"Rate limit exceeded for api_key: k. Limit resets at: {reset_at}"}})

    def litellm(headers: dict[str, str], body: str | None = None) -> ServerHint | None:
        return server_hint(CaseInsensitiveDict(headers), body, now=lambda: NOW)  # names with "_", as LiteLLM's

    assert said(litellm({"reset_at": reset_at})) == (9.0, "reset_at", True)
    assert said(litellm({}, body)) == (9.0, "body: error.message", True)
    whole_window = {"retry-after": "10", "reset_at": reset_at, "rate_limit_type": "requests"}
    assert said(litellm(whole_window, body)) == (10.0, "retry-after", True)
    latest = litellm(whole_window, body)
    assert latest is not None and latest.window_ran_out  # the latest is retry-after's; reset_at says it ran out
    retry_after_alone = litellm({"retry-after": "10"})
    assert retry_after_alone is not None and not retry_after_alone.window_ran_out
    assert said(litellm({"llm_provider-retry-after": "12"})) == (12.0, "llm_provider-retry-after", True)


def test_an_exhausted_quota_is_no_window_that_ran_out() -> None:
    """OpenRouter's X-RateLimit-* on a 429 read as a window (the reset is a time), but nothing says the window is
    fixed and all that was wrong: the refusal may still say the rate is too high, and cut it."""
    found = hint(X_RateLimit_Limit="5", X_RateLimit_Remaining="0", X_RateLimit_Reset=str(int((NOW + 0.2) * 1000)))
    assert found is not None and found.window and not found.window_ran_out


@pytest.mark.parametrize("zero", ["0", "0.0"])
def test_zero_is_no_hint_and_a_usable_reset_wins(zero: str) -> None:
    """Flask-Limiter's truncated ``Retry-After: 0`` is not "go now": the reset beside it is used."""
    assert hint(Retry_After=zero) is None
    assert hint(retry_after_ms=zero) is None
    found = hint(Retry_After=zero, x_ratelimit_limit="5", x_ratelimit_remaining="0", x_ratelimit_reset="0.4")
    assert said(found) == (0.4, "x-ratelimit-reset", False)


def test_openai_token_429_waits_for_its_own_cost() -> None:
    """The exhausted dimension's bucket, until this request fits: not the larger of the two resets."""
    headers = {
        "x_ratelimit_limit_requests": "500",
        "x_ratelimit_remaining_requests": "499",
        "x_ratelimit_reset_requests": "6m0s",  # the limit not exhausted: its long reset must not count
        "x_ratelimit_limit_tokens": "30000",
        "x_ratelimit_remaining_tokens": "0",
        "x_ratelimit_reset_tokens": "58.5s",
    }
    found = hint(cost=RequestCost(500, 1000), **headers)
    assert said(found) == (2.925, "x-ratelimit-reset-tokens", False)
    assert found is not None and found.dialect == "openai"


def test_the_body_type_names_the_exhausted_dimension() -> None:
    """OpenAI's error ``type`` says which limit refused, even when both show room."""
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "requests"}})
    found = hint(
        body,
        x_ratelimit_limit_requests="60",
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="30.5s",
        x_ratelimit_limit_tokens="1000",
        x_ratelimit_remaining_tokens="0",
        x_ratelimit_reset_tokens="60s",
    )
    assert said(found) == (round(30.5 / 60, 6), "x-ratelimit-reset-requests", False)


def test_gemini_retry_info_in_a_list() -> None:
    """Gemini's OpenAI-compatible endpoint: a JSON list, with google.rpc.RetryInfo among the details."""
    body = json.dumps(
        [
            {
                "error": {
                    "code": 429,
                    "message": "You exceeded your current quota.",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38.601s"},
                    ],
                }
            }
        ]
    )
    found = hint(body)
    assert said(found) == (38.601, "body: RetryInfo.retryDelay", False)
    # When the per-minute quota has room again, not one token's interval: it caps no cut of the rate.
    assert found is not None and found.next_token is None
    assert found is not None and found.dialect == "gemini"


def test_gemini_quota_failure_states_its_limits() -> None:
    """Google's QuotaFailure names each quota that ran out: what it counts and per what period, in its ``quotaId``,
    and the limit in its ``quotaValue``. A violation without a value, or with a name of no period, states none."""
    violations = [
        {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "15"},
        {"quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier", "quotaValue": "250000"},
        {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "1500"},
        {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"},
        {"quotaId": "SomethingElse", "quotaValue": "9"},
        {"quotaId": "RequestsPerMinute", "quotaValue": "-1"},
        {"quotaId": 7, "quotaValue": 7},
    ]
    details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations}]
    body = json.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}})
    stated = [(quota.dimension, quota.limit, quota.window, quota.rate) for quota in stated_quotas(body)]
    assert stated == [
        ("requests", 15, 60.0, 0.25),
        ("input-tokens", 250000, 60.0, pytest.approx(250000 / 60)),
        ("requests", 1500, 86400.0, pytest.approx(1500 / 86400)),
    ]
    assert {quota.source for quota in stated_quotas(body)} == {"body: QuotaFailure.quotaValue"}
    assert stated_quotas("not json") == stated_quotas(None) == stated_quotas(json.dumps([1, {"details": 3}])) == ()


@pytest.mark.parametrize(
    ("message", "seconds", "dialect"),
    [
        ("Rate limit reached for gpt-4o on tokens per min (TPM). Please try again in 1.5s.", 1.5, "openai"),
        ("Rate limit reached. Please try again in 20ms.", 0.02, "openai"),
        ("Rate limit reached. Please try again in 7m12s.", 432.0, "openai"),
        ("...exceeded token rate limit of your current pricing tier. Please retry after 37 seconds.", 37.0, "azure"),
        ("Resource exhausted. Please retry in 38.601536533s.", 38.601536533, "gemini"),
    ],
)
def test_hints_in_error_messages(message: str, seconds: float, dialect: str) -> None:
    """The phrases OpenAI's Responses API, Azure and Gemini put in their messages."""
    found = hint(json.dumps({"error": {"message": message}}))
    assert found is not None
    assert found.seconds == pytest.approx(seconds)
    assert (found.source, found.dialect) == ("body: error.message", dialect)


def test_openrouter_metadata_headers_in_the_body() -> None:
    """OpenRouter repeats its rate-limit headers in ``error.metadata.headers``; Reset is a Unix time in ms."""
    body = json.dumps(
        {
            "error": {
                "message": "Rate limit exceeded: free-models-per-day",
                "code": 429,
                "metadata": {
                    "headers": {
                        "X-RateLimit-Limit": "50",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(int((NOW + 9 * 3600) * 1000)),
                    }
                },
            }
        }
    )
    found = hint(body)
    assert said(found) == (9 * 3600.0, "x-ratelimit-reset (Unix time)", False)
    assert found is not None and found.retry_at == NOW + 9 * 3600


def test_anthropic_reset_without_retry_after() -> None:
    """An exhausted Anthropic bucket, with no retry-after: the time until one request is back."""
    found = hint(
        anthropic_ratelimit_requests_limit="60",
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset="2027-01-15T08:01:00Z",  # a minute after NOW
    )
    # 1/60 of a whole-second reset, taken at its slowest: 61 s
    assert said(found) == (round(61 / 60, 6), "anthropic-ratelimit-requests-reset", False)


def test_ietf_ratelimit_reset() -> None:
    """IETF ``RateLimit: "q";r=0;t=2``."""
    found = hint(RateLimit_Policy='"q";q=10;w=1', RateLimit='"q";r=0;t=2')
    assert said(found) == (2.0, "ratelimit", True)


def test_a_hint_past_the_first_64_kib_is_not_read() -> None:
    """Bodies are read from their first 64 KiB only."""
    padding = " " * MAX_BODY
    assert hint(padding + "Please try again in 3s") is None
    assert said(hint("Please try again in 3s" + padding)) == (3.0, "body: error.message", False)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "-5",
        "1e3",
        "nan",
        "inf",
        "٣",
        "1_000",
        "5\x1f",
        "Wed, 21 Oct 2015 07:28:00",
        "Wed, 21 Oct 99999 GMT",
    ],
)
def test_garbage_is_ignored(value: str) -> None:
    """A malformed, negative, non-finite, non-ASCII or zone-less value counts as no hint."""
    assert hint(Retry_After=value) is None
    assert hint(retry_after_ms=value) is None
    assert hint(x_ratelimit_remaining="0", x_ratelimit_reset=value) is None


def test_an_exhausted_per_minute_bucket_needs_no_reset() -> None:
    """OpenAI's 5 a minute with none left: the next request fits in 12 s, whatever the reset header says."""
    found = hint(x_ratelimit_remaining_requests="0", x_ratelimit_limit_requests="5", x_ratelimit_reset_requests="?")
    assert said(found) == (12.0, "x-ratelimit-reset-requests", False)


def test_past_date_is_ignored() -> None:
    """An HTTP-date already past (clock skew) is no hint, not a zero wait."""
    assert hint(Retry_After=email.utils.formatdate(NOW - 60, usegmt=True)) is None


def test_broken_preferred_header_falls_through() -> None:
    """A garbage retry-after-ms does not hide a usable Retry-After."""
    assert said(hint(retry_after_ms="soon", Retry_After="4")) == (4.0, "retry-after", True)


@pytest.mark.parametrize("body", ["[" * 100_000, "{" * 100_000, '{"error": ' * 50_000, b"\xff\xfe" * 100, "null"])
def test_hostile_bodies_are_no_hint(body: str | bytes) -> None:
    """Deep nesting, invalid UTF-8 and JSON that is no object are read without error, as no hint."""
    assert hint(body) is None


def test_no_headers() -> None:
    """No hint headers, no hint."""
    assert hint() is None


_HEADER_NAMES = st.sampled_from(
    [
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-reset",
        "x-ratelimit-remaining",
        "x-ratelimit-limit",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-limit-tokens",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-requests-remaining",
        "ratelimit",
        "ratelimit-policy",
        "ratelimitbysize-reset",
        "x-ratelimit-reset-requests-day",
    ]
)
_VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["1e308", "9" * 400, "0.0000001", "1s" * 30, "2027-01-15T08:00:01Z", '"x";r=0;t=9e99']),
)
_BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.text(max_size=200),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=20), st.integers()),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(
                st.sampled_from(["error", "details", "message", "retryDelay", "@type", "metadata", "headers", "type"]),
                children,
                max_size=4,
            ),
        ),
        max_leaves=20,
    ).map(json.dumps),
)


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(_HEADER_NAMES, _VALUES, max_size=6), body=_BODIES)
def test_any_answer_gives_no_hint_or_a_finite_positive_wait(headers: dict[str, str], body: str | bytes | None) -> None:
    """Whatever a server sends, reading it never raises, and never yields a negative, NaN or infinite wait."""
    found = server_hint(CaseInsensitiveDict(headers), body, now=lambda: NOW, cost=RequestCost(10, 100))
    assert found is None or (math.isfinite(found.seconds) and found.seconds > 0)
