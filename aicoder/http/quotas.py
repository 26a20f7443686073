"""What an answer says about the server's rate limits, in each dialect servers speak.

:func:`read_quotas` turns response headers into :class:`Quota` s, one per limit
the server describes:

========================  ==============================================================  =========
dialect                   headers (``*`` = limit, remaining, reset)                       reset is
========================  ==============================================================  =========
``openai``                ``x-ratelimit-*-requests``, ``x-ratelimit-*-tokens`` (OpenAI,    duration
                          Azure, Groq, Together); limits per minute, a token bucket
``periodic``              ``x-ratelimit-*-requests-minute``, ``…-tokens-day`` (Cerebras,  seconds
                          Mistral): the period in the name
``x-ratelimit``           ``x-ratelimit-limit/remaining/reset`` (GitHub, OpenRouter,       seconds, or
                          Envoy, Flask-Limiter)                                           Unix time
``anthropic``             ``anthropic-ratelimit-{requests,tokens,input-tokens,            RFC 3339
                          output-tokens}-*``; per minute, a token bucket
``ietf``                  ``RateLimit`` + ``RateLimit-Policy`` (draft 8 and later),       seconds
                          ``RateLimit-Limit/Remaining/Reset`` (draft 6)
``ratelimitbysize``       ``ratelimitbysize-*`` (Mistral, tokens per minute)              seconds
========================  ==============================================================  =========

A Unix time and a duration in the same header are told apart by size: from 10⁹
on, a number is seconds since 1970, from 10¹² on, milliseconds. Zero, negative
and placeholder values (Azure's ``-1``) say nothing, and are dropped. Numbers
are ASCII digits only. Nothing here raises on a malformed value: it is ignored.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple

from requests.structures import CaseInsensitiveDict

__all__ = ["Quota", "parse_duration", "parse_number", "read_quotas"]

Refill = Literal["bucket", "window"]

#: A number as servers write it: ASCII digits, an optional fraction, spaces or tabs around.
_NUMBER = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATIONS = re.compile(f"[ \t]*(?:{_DURATION.pattern})+[ \t]*")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Longer durations are parsed afresh each time, so a hostile server cannot fill the cache with big strings.
_CACHED_DURATION_LENGTH = 32
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e12
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "month": 30 * 86400.0}
_DIMENSIONS = {
    "requests": "requests",
    "req": "requests",
    "tokens": "tokens",
    "input-tokens": "input-tokens",
    "output-tokens": "output-tokens",
}
_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "anthropic-ratelimit-", "ratelimit")
_OPENAI_NAME = re.compile(
    r"x-ratelimit-(limit|remaining|reset)-(requests|req|tokens|input-tokens|output-tokens)"
    r"(?:-(second|minute|hour|day|month))?"
)
_ANTHROPIC_NAME = re.compile(
    r"anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)"
)
_WINDOW_PARAMETER = re.compile(r";[ \t]*w=([0-9]+(?:\.[0-9]+)?)")


class Quota(NamedTuple):
    """One limit a server describes: ``limit`` units per ``window`` seconds of ``dimension``.

    ``dimension`` is ``requests``, ``tokens``, ``input-tokens`` or ``output-tokens``.
    ``remaining`` units are left now; the quota is whole again ``reset`` seconds from
    now. ``refill`` says how it gets there: a ``bucket`` refills continuously (so
    ``reset`` is when it is full), a ``window`` all at once at ``reset``. A field the
    server did not send is ``None``. ``source`` is the header that gave ``reset``
    (or ``remaining``), for messages. ``coarse`` marks a ``reset`` given in whole
    seconds, which the server may have rounded either way.
    """

    dimension: str
    limit: float | None
    remaining: float | None
    reset: float | None
    window: float | None
    refill: Refill
    dialect: str
    source: str
    coarse: bool = False

    @property
    def rate(self) -> float | None:
        """The units per second this quota allows for good, if the server said enough to tell."""
        if self.limit is not None and self.window:
            return self.limit / self.window
        return self.refill_rate

    @property
    def refill_rate(self) -> float | None:
        """How fast a bucket fills: what it lacks over the time until it is full."""
        if self.refill != "bucket" or self.limit is None or self.remaining is None or not self.reset:
            return None
        lacking = self.limit - self.remaining
        return lacking / self.reset if lacking > 0 else None

    def wait(self, need: float) -> float | None:
        """Seconds until ``need`` units fit: 0 if they fit now, ``None`` if the server did not say enough.

        With ``remaining`` unknown, that is until the quota is whole again.
        """
        if self.remaining is None:
            return self.reset
        if self.remaining >= need:
            return 0.0
        if self.refill == "bucket":
            rate = self.refill_rate or self.rate
            if rate:
                wait = (need - self.remaining) / rate
                return min(wait, self.reset) if self.reset else wait
        return self.reset


def read_quotas(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> tuple[Quota, ...]:
    """Every quota ``headers`` describe, in any dialect above; ``()`` if none.

    ``now`` is the wall clock, for resets given as a Unix time or an RFC 3339 date.
    """
    fields: dict[str, str] = {}
    families: set[str] = set()
    # requests' CaseInsensitiveDict has its names lower-cased already, and walks them faster so.
    items = headers.lower_items() if isinstance(headers, CaseInsensitiveDict) else headers.items()
    for name, value in items:
        family = _family(name)
        if family is not None:
            fields[name.lower()] = value
            families.add(family)
    if not fields:
        return ()
    quotas: list[Quota] = []
    for family in families:
        quotas.extend(_READERS[family](fields, now))
    return tuple(quotas)


@functools.lru_cache(maxsize=512)
def _family(name: str) -> str | None:
    """Which dialect reads a header ``name``, if any. Cached: every answer carries the same few names."""
    lowered = name.lower()
    if not lowered.startswith(_PREFIXES):
        return None
    if _OPENAI_NAME.fullmatch(lowered):
        return "openai"
    if lowered.startswith(("x-ratelimit-", "x-rate-limit-")):
        return "x-ratelimit"
    if lowered.startswith("anthropic-ratelimit-"):
        return "anthropic"
    if lowered.startswith("ratelimitbysize-"):
        return "ratelimitbysize"
    return "ietf"


# --- the dialects ---


def _openai(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """``x-ratelimit-{limit,remaining,reset}-{dimension}[-{period}]``."""
    groups: dict[tuple[str, str | None], dict[str, str]] = {}
    for name in fields:
        match = _openai_name(name)
        if match is not None:
            kind, dimension, period = match
            groups.setdefault((_DIMENSIONS[dimension], period), {})[kind] = name
    for (dimension, period), names in groups.items():
        source = names.get("reset") or names.get("remaining") or names["limit"]
        quota = _quota(
            dimension,
            limit=parse_number(fields.get(names.get("limit", ""))),
            remaining=parse_number(fields.get(names.get("remaining", ""))),
            reset=parse_duration(fields.get(names.get("reset", ""))),
            # OpenAI documents its limits as per minute, refilled continuously (reset: until the bucket is full).
            window=_PERIODS[period] if period else 60.0,
            refill="window" if period else "bucket",
            dialect="periodic" if period else "openai",
            source=source,
        )
        if quota is not None:
            yield quota


@functools.lru_cache(maxsize=512)
def _openai_name(name: str) -> tuple[str, str, str | None] | None:
    match = _OPENAI_NAME.fullmatch(name)
    return None if match is None else (match[1], match[2], match[3])


def _x_ratelimit(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """``x-ratelimit-limit``/``-remaining``/``-reset`` (also ``x-rate-limit-*``): requests, per window."""
    for prefix in ("x-ratelimit-", "x-rate-limit-"):
        limit_text = fields.get(prefix + "limit")
        remaining_text = fields.get(prefix + "remaining")
        reset_text = fields.get(prefix + "reset")
        if limit_text is None and remaining_text is None and reset_text is None:
            continue
        window = None
        if limit_text is not None:  # Envoy and IETF draft 3 add the policy: "10, 10;w=1"
            policy = _WINDOW_PARAMETER.search(limit_text)
            window = parse_number(policy.group(1)) if policy else None
            limit_text = limit_text.split(",", 1)[0]
        reset_number = parse_number(reset_text)
        quota = _quota(
            "requests",
            limit=parse_number(limit_text),
            remaining=parse_number(remaining_text),
            reset=_seconds_or_time(reset_text, now),
            window=window,
            refill="window",
            dialect="x-ratelimit",
            source=prefix + ("reset" if reset_text is not None else "remaining"),
            # A Unix time in milliseconds is precise; seconds, as a time or a duration, are whole or not.
            coarse=reset_number is not None and reset_number < _EPOCH_MILLISECONDS and reset_number.is_integer(),
        )
        if quota is not None:
            yield quota


def _anthropic(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """``anthropic-ratelimit-{dimension}-{limit,remaining,reset}``: per minute, refilled continuously."""
    groups: dict[str, dict[str, str]] = {}
    for name, value in fields.items():
        match = _ANTHROPIC_NAME.fullmatch(name)
        if match:
            dimension, kind = match.groups()
            groups.setdefault(dimension, {})[kind] = value
    for dimension, values in groups.items():
        reset_text = values.get("reset")
        quota = _quota(
            dimension,
            limit=parse_number(values.get("limit")),
            remaining=parse_number(values.get("remaining")),
            reset=_rfc3339(reset_text, now),
            coarse=reset_text is not None and "." not in reset_text,
            window=60.0,
            refill="bucket",
            dialect="anthropic",
            source=f"anthropic-ratelimit-{dimension}-reset",
        )
        if quota is not None:
            yield quota


def _ietf(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """The IETF ``RateLimit`` header fields, as structured fields (draft 8+) or as numbers (draft 6)."""
    policies = _structured_items(fields.get("ratelimit-policy"))
    states = _structured_items(fields.get("ratelimit"))
    if states and all("q" not in params and "r" not in params for _, params in states):
        # Draft 7: RateLimit: limit=100, remaining=50, reset=5 (one item per key).
        merged = {name: parse_number(value) for name, value in _key_values(fields["ratelimit"]).items()}
        if merged:
            quota = _quota(
                "requests",
                limit=merged.get("limit"),
                remaining=merged.get("remaining"),
                reset=merged.get("reset"),
                window=None,
                refill="window",
                dialect="ietf",
                source="ratelimit",
            )
            if quota is not None:
                yield quota
        return
    named_policies = {name: params for name, params in policies}
    for name, params in states:
        policy = named_policies.get(name, {})
        if policy.get("qu", "requests").strip('"') != "requests":
            continue
        quota = _quota(
            "requests",
            limit=parse_number(policy.get("q")),
            remaining=parse_number(params.get("r")),
            reset=parse_number(params.get("t")),
            window=parse_number(policy.get("w")),
            refill="window",
            dialect="ietf",
            source="ratelimit",
        )
        if quota is not None:
            yield quota
    if "ratelimit-limit" in fields or "ratelimit-remaining" in fields or "ratelimit-reset" in fields:
        # Draft 6 and earlier: RateLimit-Limit: 10, RateLimit-Remaining: 1, RateLimit-Reset: 7,
        # RateLimit-Policy: 10;w=1 (or the policy after the limit: "10, 10;w=1").
        limit_text = fields.get("ratelimit-limit")
        window = _WINDOW_PARAMETER.search(fields.get("ratelimit-policy") or limit_text or "")
        quota = _quota(
            "requests",
            limit=parse_number(limit_text.split(",", 1)[0] if limit_text else None),
            remaining=parse_number(fields.get("ratelimit-remaining")),
            reset=parse_number(fields.get("ratelimit-reset")),
            window=parse_number(window.group(1)) if window else None,
            refill="window",
            dialect="ietf",
            source="ratelimit-reset",
        )
        if quota is not None:
            yield quota


def _ratelimitbysize(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """Mistral's ``ratelimitbysize-limit/remaining/reset``: tokens per minute."""
    quota = _quota(
        "tokens",
        limit=parse_number(fields.get("ratelimitbysize-limit")),
        remaining=parse_number(fields.get("ratelimitbysize-remaining")),
        reset=parse_number(fields.get("ratelimitbysize-reset")),
        window=60.0,
        refill="window",
        dialect="ratelimitbysize",
        source="ratelimitbysize-reset",
    )
    if quota is not None:
        yield quota


def _quota(
    dimension: str,
    *,
    limit: float | None,
    remaining: float | None,
    reset: float | None,
    window: float | None,
    refill: Refill,
    dialect: str,
    source: str,
    coarse: bool | None = None,
) -> Quota | None:
    """A :class:`Quota` with the placeholders dropped, or ``None`` if nothing usable is left.

    ``coarse`` defaults to whether ``reset`` is a whole number of seconds.
    """
    limit = limit if limit else None  # 0 or a placeholder: no limit stated
    reset = reset if reset else None  # 0: no time stated (Azure sends reset-tokens: 0)
    if limit is not None and remaining is not None and remaining > limit:
        remaining = None
    if limit is None and remaining is None and reset is None:
        return None
    if coarse is None:
        coarse = reset is not None and reset.is_integer()
    return Quota(dimension, limit, remaining, reset, window or None, refill, dialect, source, coarse)


_READERS: dict[str, Callable[[Mapping[str, str], Callable[[], float]], Iterable[Quota]]] = {
    "openai": _openai,
    "x-ratelimit": _x_ratelimit,
    "anthropic": _anthropic,
    "ietf": _ietf,
    "ratelimitbysize": _ratelimitbysize,
}


# --- values ---


def parse_number(value: str | None) -> float | None:
    """A finite number >= 0 written in ASCII digits, else ``None``.

    A minus sign fails the match, so placeholders such as ``-1`` are ``None`` too.
    """
    if value is None:
        return None
    match = _NUMBER.fullmatch(value)
    if match is None:
        return None
    number = float(match.group(1))
    return number if math.isfinite(number) else None


def parse_duration(value: str | None) -> float | None:
    """The seconds in a duration such as ``20ms``, ``1s``, ``6m0s`` or ``1.5``; ``None`` if malformed."""
    if value is None:
        return None
    if len(value) > _CACHED_DURATION_LENGTH:
        return _parse_duration.__wrapped__(value)
    return _parse_duration(value)


@functools.lru_cache(maxsize=1024)
def _parse_duration(value: str) -> float | None:
    # Cached: every answer carries x-ratelimit-reset-* headers, and servers repeat the same few values.
    number = parse_number(value)
    if number is not None:  # a bare number is seconds
        return number
    if not _DURATIONS.fullmatch(value):
        return None
    seconds = sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION.findall(value))
    return seconds if math.isfinite(seconds) else None


def _seconds_or_time(value: str | None, now: Callable[[], float]) -> float | None:
    """Seconds from now in ``value``: a duration, or a Unix time in seconds or milliseconds."""
    number = parse_number(value)
    if number is None:
        return None
    if number >= _EPOCH_MILLISECONDS:
        number = number / 1000 - now()
    elif number >= _EPOCH_SECONDS:
        number -= now()
    return number if number > 0 else None


def _rfc3339(value: str | None, now: Callable[[], float]) -> float | None:
    """Seconds from now until an RFC 3339 time such as ``2025-01-01T00:00:05Z``."""
    if value is None or len(value) > 64 or not value.isascii():
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    seconds = moment.timestamp() - now()
    return seconds if seconds > 0 else None


def _structured_items(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """The items of an RFC 8941 list such as ``"default";q=100;w=60, "day";q=1000``, leniently."""
    if not value or len(value) > 4096:
        return []
    items = []
    for item in _split_outside_quotes(value, ","):
        parts = _split_outside_quotes(item, ";")
        name = parts[0].strip().strip('"')
        params = {}
        for part in parts[1:]:
            key, _, parameter = part.partition("=")
            params[key.strip().lower()] = parameter.strip()
        if "=" in name:  # draft 7's "limit=100" items have no name
            key, _, parameter = name.partition("=")
            name, params = "", {key.strip().lower(): parameter.strip(), **params}
        items.append((name, params))
    return items


def _key_values(value: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in _split_outside_quotes(value, ","))
    return {key.strip().lower(): parameter.strip() for key, _, parameter in pairs if parameter}


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for character in text:
        if character == '"':
            quoted = not quoted
        if character == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts
