"""How long a 429 response asks the client to wait, read from its headers.

Servers say it in several ways; the first one that parses wins:

1. ``retry-after-ms``: milliseconds (OpenAI, Azure OpenAI);
2. ``Retry-After``: seconds or an HTTP-date (RFC 9110);
3. ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``: durations
   such as ``20ms``, ``1s`` or ``6m0s``; the later of the two.

A malformed, negative, non-finite or already-past value is treated as absent,
so a broken header never crashes a request: the caller falls back to its
schedule. Only header *names* leave this module, never their values.
"""

from __future__ import annotations

import email.utils
import functools
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["ServerHint", "parse_duration", "server_hint"]

_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATIONS = re.compile(f"(?:{_DURATION.pattern})+")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_RESET_HEADERS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
#: Longer durations are parsed afresh each time, so a hostile server cannot fill the cache with big strings.
_CACHED_DURATION_LENGTH = 32


@dataclass(frozen=True)
class ServerHint:
    """A wait the server asked for: ``seconds``, and the ``header`` that said so."""

    seconds: float
    header: str


def server_hint(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> ServerHint | None:
    """Return the wait ``headers`` ask for, or ``None`` when none of them says one usably.

    ``headers`` must look names up case-insensitively, as both
    ``requests``' and urllib3's header mappings do. ``now`` gives the wall
    clock for HTTP-dates.
    """
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return ServerHint(milliseconds / 1000, "retry-after-ms")

    retry_after = _retry_after(headers.get("retry-after"), now)
    if retry_after is not None:
        return ServerHint(retry_after, "retry-after")

    resets = [(seconds, name) for name in _RESET_HEADERS if (seconds := parse_duration(headers.get(name))) is not None]
    if resets:
        seconds, name = max(resets)
        return ServerHint(seconds, name)
    return None


def _number(value: str | None) -> float | None:
    if value is None or not _NUMBER.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _retry_after(value: str | None, now: Callable[[], float]) -> float | None:
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # RFC 9110 HTTP-dates are GMT; a date without a zone is malformed
        return None
    seconds = moment.timestamp() - now()
    return seconds if seconds >= 0 else None


def parse_duration(value: str | None) -> float | None:
    """Return the seconds in a duration such as ``20ms``, ``1s``, ``6m0s`` or ``1.5``; ``None`` if malformed."""
    if value is None:
        return None
    if len(value) > _CACHED_DURATION_LENGTH:
        return _parse_duration.__wrapped__(value)
    return _parse_duration(value)


@functools.lru_cache(maxsize=1024)
def _parse_duration(value: str) -> float | None:
    # Cached: every answer carries x-ratelimit-reset-* headers, and servers repeat the same few values.
    value = value.strip()
    if not value:
        return None
    if _NUMBER.fullmatch(value):  # a bare number is taken as seconds
        return _number(value)
    if not _DURATIONS.fullmatch(value):
        return None
    seconds = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION.findall(value))
    return seconds if math.isfinite(seconds) else None
