"""Every rate-limit dialect is read into quotas, with the exact forms each provider documents."""

from __future__ import annotations

import pytest
from requests.structures import CaseInsensitiveDict

from aicoder.http.quotas import Quota, parse_duration, parse_number, read_quotas

NOW = 1_800_000_000.0


def quotas(**headers: str) -> dict[tuple[str, str], Quota]:
    """The quotas ``headers`` describe, by (dialect, dimension); header names use _ for -."""
    found = read_quotas(CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()}), now=lambda: NOW)
    return {(quota.dialect, quota.dimension + (f"/{quota.window:g}" if quota.window else "")): quota for quota in found}


def test_openai_six_headers() -> None:
    """OpenAI's documented example: limits per minute, refilled continuously, reset until the bucket is full."""
    found = quotas(
        x_ratelimit_limit_requests="60",
        x_ratelimit_limit_tokens="150000",
        x_ratelimit_remaining_requests="59",
        x_ratelimit_remaining_tokens="149984",
        x_ratelimit_reset_requests="1s",
        x_ratelimit_reset_tokens="6m0s",
    )
    requests, tokens = found["openai", "requests/60"], found["openai", "tokens/60"]
    assert (requests.limit, requests.remaining, requests.reset, requests.refill) == (60, 59, 1.0, "bucket")
    assert requests.rate == 1.0
    assert tokens.rate == 2500.0
    assert tokens.reset == 360.0
    assert tokens.wait(100) == 0.0  # it fits now


def test_openai_exhausted_bucket_waits_for_the_cost_not_for_full() -> None:
    """A bucket at 0 of 30,000 tokens, full in 58.5 s: 1,500 tokens come back in 2.925 s, not 58.5."""
    found = quotas(x_ratelimit_limit_tokens="30000", x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens="58.5s")
    assert found["openai", "tokens/60"].wait(1500) == pytest.approx(2.925)


def test_a_whole_second_reset_is_taken_at_its_slowest() -> None:
    """Full in "58s" may mean 58.99 s: 1,500 of 30,000 tokens are surely back after 1/20 of 59 s, not of 58."""
    found = quotas(x_ratelimit_limit_tokens="30000", x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens="58s")
    assert found["openai", "tokens/60"].wait(1500) == pytest.approx(2.95)


def test_azure_placeholders_say_nothing() -> None:
    """Azure's ``limit-tokens: -1`` and ``reset-tokens: 0`` are placeholders: no token quota, no reset."""
    found = quotas(
        x_ratelimit_limit_tokens="-1",
        x_ratelimit_remaining_tokens="-1",
        x_ratelimit_reset_tokens="0",
        x_ratelimit_remaining_requests="99",
    )
    assert ("openai", "tokens/60") not in found
    assert found["openai", "requests/60"].reset is None


def test_periodic_headers_carry_their_window() -> None:
    """Cerebras' per-day and per-minute headers, reset in seconds with a fraction."""
    found = quotas(
        x_ratelimit_limit_requests_day="14400",
        x_ratelimit_remaining_requests_day="14370",
        x_ratelimit_reset_requests_day="33011.382867",
        x_ratelimit_limit_tokens_minute="60000",
        x_ratelimit_remaining_tokens_minute="0",
        x_ratelimit_reset_tokens_minute="11.382867",
    )
    day, minute = found["periodic", "requests/86400"], found["periodic", "tokens/60"]
    assert day.reset == pytest.approx(33011.382867)
    assert minute.refill == "window"
    assert minute.wait(10) == pytest.approx(11.382867)  # a window is whole again only at its reset
    assert not minute.coarse


def test_mistral_headers() -> None:
    """Mistral's ``-req-minute`` spelling, and its older ``ratelimitbysize-*`` tokens headers."""
    found = quotas(x_ratelimit_limit_req_minute="720", x_ratelimit_remaining_req_minute="717")
    assert found["periodic", "requests/60"].rate == 12.0
    bysize = quotas(ratelimitbysize_limit="500000", ratelimitbysize_remaining="0", ratelimitbysize_reset="23")
    assert bysize["ratelimitbysize", "tokens/60"].wait(1) == 23.0


@pytest.mark.parametrize(
    ("reset", "seconds", "coarse"),
    [
        ("1800000042", 42.0, True),  # GitHub: a Unix time in seconds
        ("1800000001500", 1.5, False),  # OpenRouter: a Unix time in milliseconds
        ("7", 7.0, True),  # Together, Envoy: seconds from now
        ("0.25", 0.25, False),
    ],
)
def test_x_ratelimit_reset_is_told_apart_by_size(reset: str, seconds: float, coarse: bool) -> None:
    """One header name, three meanings: a Unix time in s or ms, or a duration."""
    quota = quotas(x_ratelimit_limit="20", x_ratelimit_remaining="0", x_ratelimit_reset=reset)[
        "x-ratelimit", "requests"
    ]
    assert quota.wait(1) == pytest.approx(seconds)
    assert quota.coarse is coarse


def test_past_reset_is_no_reset() -> None:
    """A Unix time already past (clock skew) says nothing."""
    quota = quotas(x_ratelimit_remaining="0", x_ratelimit_reset=str(int(NOW) - 5))["x-ratelimit", "requests"]
    assert quota.reset is None


def test_envoy_limit_with_its_policy() -> None:
    """``X-RateLimit-Limit: 10, 10;w=1``: ten a second."""
    quota = quotas(x_ratelimit_limit="10, 10;w=1", x_ratelimit_remaining="3")["x-ratelimit", "requests/1"]
    assert quota.rate == 10.0


def test_anthropic_headers() -> None:
    """RFC 3339 resets, a continuously refilled bucket per minute, for requests and input/output tokens."""
    found = quotas(
        anthropic_ratelimit_requests_limit="50",
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset="2027-01-15T08:00:01Z",
        anthropic_ratelimit_input_tokens_limit="40000",
        anthropic_ratelimit_input_tokens_remaining="39000",
        anthropic_ratelimit_input_tokens_reset="2027-01-15T08:00:00.5Z",
    )
    requests = found["anthropic", "requests/60"]
    assert requests.reset == pytest.approx(1.0)  # NOW is 2027-01-15T08:00:00Z
    assert requests.coarse and not found["anthropic", "input-tokens/60"].coarse
    # a bucket: one request back after 1/50 of its reset, which whole seconds may have rounded down by one
    assert requests.wait(1) == pytest.approx(2.0 / 50)


def test_ietf_structured_fields() -> None:
    """Draft 8 and later: the policy names a quota per window, the state what is left and when it resets."""
    found = quotas(RateLimit_Policy='"default";q=100;w=60, "daily";q=1000;w=86400', RateLimit='"default";r=0;t=2')
    quota = found["ietf", "requests/60"]
    assert (quota.limit, quota.remaining, quota.reset) == (100, 0, 2)
    assert quota.wait(1) == 2.0


def test_ietf_older_drafts() -> None:
    """Draft 6's separate fields with a policy, and draft 7's key=value list."""
    draft6 = quotas(RateLimit_Limit="10", RateLimit_Remaining="0", RateLimit_Reset="7", RateLimit_Policy="10;w=1")
    assert draft6["ietf", "requests/1"].wait(1) == 7.0
    draft7 = quotas(RateLimit="limit=100, remaining=50, reset=5")
    assert draft7["ietf", "requests"].remaining == 50


def test_litellm_per_key_limits() -> None:
    """A LiteLLM proxy's per-key window: a limit and what remains, in a window whose length it does not say."""
    headers = {
        "x-ratelimit-api_key-limit-requests": "100",
        "x-ratelimit-api_key-remaining-requests": "37",
        "x-ratelimit-api_key-remaining-tokens": "9000",
        "x-ratelimit-api_key-limit-tokens": "10000",
        "x-litellm-key-rpm-limit": "100",
        "x-litellm-key-tpm-limit": "None",  # unset
    }
    found = read_quotas(CaseInsensitiveDict(headers), now=lambda: NOW)
    by_source = {quota.source: quota for quota in found}
    requests = by_source["x-ratelimit-api_key-remaining-requests"]
    assert (requests.dimension, requests.limit, requests.remaining, requests.refill) == ("requests", 100, 37, "window")
    assert requests.rate is None and requests.dialect == "litellm"
    assert by_source["x-ratelimit-api_key-remaining-tokens"].remaining == 9000
    assert by_source["x-litellm-key-rpm-limit"].limit == 100
    assert len(found) == 3


def test_a_limit_counted_past_zero_is_not_enforced() -> None:
    """LiteLLM's router counts ``remaining`` down past zero, to -202: the limit it declares binds nothing."""
    assert quotas(x_ratelimit_limit_requests="600", x_ratelimit_remaining_requests="-202") == {}
    assert quotas(x_ratelimit_limit="600", x_ratelimit_remaining="-7") == {}
    placeholder = quotas(x_ratelimit_limit_requests="600", x_ratelimit_remaining_requests="-1")  # Azure's "unknown"
    assert placeholder[("openai", "requests/60")].limit == 600


def test_no_rate_headers_no_quotas() -> None:
    """Unrelated headers describe nothing."""
    assert quotas(content_type="application/json", retry_after="3") == {}


@pytest.mark.parametrize("value", ["\u0663", "\uff15", "1_000", "5\x1f", "1\x1c", "-1", "nan", "inf", "1e3", "", " "])
def test_numbers_are_ascii_digits_only(value: str) -> None:
    """Unicode digits, underscores, control characters, signs and exponents are not numbers here."""
    assert parse_number(value) is None


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m3.5s", 3723.5)])
def test_durations(text: str, seconds: float) -> None:
    """Go-style durations as OpenAI writes them."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_long_durations_are_parsed_but_not_cached() -> None:
    """A long value is still parsed, without filling the cache."""
    assert parse_duration("1s" * 40) == 40.0
