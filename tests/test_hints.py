"""Server wait hints are read from 429 headers, and broken ones are ignored, never fatal."""

from __future__ import annotations

import email.utils

import pytest
from requests.structures import CaseInsensitiveDict

from aicoder.llm.hints import ServerHint, server_hint

NOW = 1_800_000_000.0


def hint(**headers: str) -> ServerHint | None:
    return server_hint(CaseInsensitiveDict({k.replace("_", "-"): v for k, v in headers.items()}), now=lambda: NOW)


def test_milliseconds() -> None:
    """retry-after-ms is milliseconds."""
    assert hint(retry_after_ms="1500") == ServerHint(1.5, "retry-after-ms")


def test_seconds() -> None:
    """Retry-After in seconds, integer or decimal."""
    assert hint(Retry_After="7") == ServerHint(7.0, "retry-after")
    assert hint(Retry_After=" 0.25 ") == ServerHint(0.25, "retry-after")


def test_http_date() -> None:
    """Retry-After as an HTTP-date is the time left until then."""
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert hint(Retry_After=date) == ServerHint(12.0, "retry-after")


def test_milliseconds_win_over_seconds() -> None:
    """retry-after-ms is more precise and is preferred."""
    assert hint(retry_after_ms="200", Retry_After="1") == ServerHint(0.2, "retry-after-ms")


def test_reset_durations_take_the_later() -> None:
    """x-ratelimit-reset-* durations are parsed and the later one is used."""
    found = hint(x_ratelimit_reset_requests="20ms", x_ratelimit_reset_tokens="6m0s")
    assert found == ServerHint(360.0, "x-ratelimit-reset-tokens")
    assert hint(x_ratelimit_reset_requests="1h2m3.5s") == ServerHint(3723.5, "x-ratelimit-reset-requests")
    assert hint(x_ratelimit_reset_requests="1s", x_ratelimit_reset_tokens="bogus") == ServerHint(
        1.0, "x-ratelimit-reset-requests"
    )


def test_retry_after_beats_reset_headers() -> None:
    """An explicit Retry-After is preferred to the reset durations."""
    assert hint(Retry_After="3", x_ratelimit_reset_requests="10s") == ServerHint(3.0, "retry-after")


@pytest.mark.parametrize(
    "value",
    ["", "soon", "-5", "1e3", "nan", "inf", "Wed, 21 Oct 2015 07:28:00", "Wed, 21 Oct 99999 07:28:00 GMT"],
)
def test_garbage_is_ignored(value: str) -> None:
    """A malformed, negative, non-finite or zone-less value counts as no hint."""
    assert hint(Retry_After=value) is None
    assert hint(retry_after_ms=value) is None
    assert hint(x_ratelimit_reset_requests=value) is None


def test_past_date_is_ignored() -> None:
    """An HTTP-date already past (clock skew) is no hint, not a zero wait."""
    assert hint(Retry_After=email.utils.formatdate(NOW - 60, usegmt=True)) is None


def test_broken_preferred_header_falls_through() -> None:
    """A garbage retry-after-ms does not hide a usable Retry-After."""
    assert hint(retry_after_ms="soon", Retry_After="4") == ServerHint(4.0, "retry-after")


def test_no_headers() -> None:
    """No hint headers, no hint."""
    assert hint() is None
