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

``litellm``               ``x-ratelimit-{key}-{limit,remaining}-{requests,tokens}`` (a     none
                          LiteLLM proxy's per-key, per-user, per-team limits; fixed
                          windows), ``x-litellm-key-{rpm,tpm}-limit``
========================  ==============================================================  =========

A Unix time and a duration are told apart by size, in every header that holds a
bare number of seconds: from 10⁹ on, a number is seconds since 1970, from 10¹² on,
milliseconds (a wait of 31 years is no wait). Such a quota's ``source`` says so:
``x-ratelimit-reset-requests (Unix time)``. Zero and placeholder values (Azure's
``-1``) say nothing, and are dropped; a ``remaining`` below ``-1`` says the server
counts past its limit without enforcing it, and the limit is dropped too. Numbers
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

__all__ = [
    "EPOCH_MILLISECONDS",
    "EPOCH_SECONDS",
    "UNIX_TIME",
    "Quota",
    "parse_duration",
    "parse_number",
    "read_quotas",
    "seconds_until",
]

Refill = Literal["bucket", "window"]

#: A number as servers write it: ASCII digits, an optional fraction, spaces or tabs around.
_NUMBER = re.compile(r"[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATIONS = re.compile(f"[ \t]*(?:{_DURATION.pattern})+[ \t]*")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Longer durations are parsed afresh each time, so a hostile server cannot fill the cache with big strings.
_CACHED_DURATION_LENGTH = 32
EPOCH_SECONDS = 1e9
EPOCH_MILLISECONDS = 1e12
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "month": 30 * 86400.0}
_DIMENSIONS = {
    "requests": "requests",
    "req": "requests",
    "tokens": "tokens",
    "input-tokens": "input-tokens",
    "output-tokens": "output-tokens",
}
_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "anthropic-ratelimit-", "ratelimit", "x-litellm-key-")
#: What a quota's or a hint's ``source`` adds when its header held a Unix time, not a duration.
UNIX_TIME = " (Unix time)"
_OPENAI_NAME = re.compile(
    r"x-ratelimit-(limit|remaining|reset)-(requests|req|tokens|input-tokens|output-tokens)"
    r"(?:-(second|minute|hour|day|month))?"
)
_ANTHROPIC_NAME = re.compile(
    r"anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-(limit|remaining|reset)"
)
_LITELLM_NAME = re.compile(r"x-ratelimit-([a-z0-9_]+)-(limit|remaining)-(requests|tokens)")
_LITELLM_KEY_LIMIT = re.compile(r"x-litellm-key-(rpm|tpm)-limit")
#: A remaining count this far below zero is a server counting past a limit it does not enforce.
_UNENFORCED = re.compile(r"[ \t]*-[0-9]+[ \t]*")
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

        With ``remaining`` unknown, that is until the quota is whole again. Never
        before a time the server stated, whichever way it rounded a whole-second reset.
        """
        if self.remaining is None:
            return self.reset
        if self.remaining >= need:
            return 0.0
        if self.refill == "bucket":
            # A reset in whole seconds may be rounded down by up to one: the slowest refill it allows is the floor.
            reset = self.reset + 1 if self.reset and self.coarse else self.reset
            lacking = (self.limit or 0) - self.remaining
            rate = lacking / reset if reset and lacking > 0 else self.rate
            if rate:
                wait = (need - self.remaining) / rate
                return min(wait, reset) if reset else wait
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
    if _LITELLM_NAME.fullmatch(lowered) or _LITELLM_KEY_LIMIT.fullmatch(lowered):
        return "litellm"
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
        remaining_text = fields.get(names.get("remaining", ""))
        if _unenforced(remaining_text):
            continue
        reset, said = _reset(fields.get(names.get("reset", "")), now)
        source = names.get("reset") or names.get("remaining") or names["limit"]
        quota = _quota(
            dimension,
            limit=parse_number(fields.get(names.get("limit", ""))),
            remaining=parse_number(remaining_text),
            reset=reset,
            # OpenAI documents its limits as per minute, refilled continuously (reset: until the bucket is full).
            window=_PERIODS[period] if period else 60.0,
            refill="window" if period else "bucket",
            dialect="periodic" if period else "openai",
            source=source + said,
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
        if (limit_text is None and remaining_text is None and reset_text is None) or _unenforced(remaining_text):
            continue
        window = None
        if limit_text is not None:  # Envoy and IETF draft 3 add the policy: "10, 10;w=1"
            policy = _WINDOW_PARAMETER.search(limit_text)
            window = parse_number(policy.group(1)) if policy else None
            limit_text = limit_text.split(",", 1)[0]
        reset_number = parse_number(reset_text)
        reset, said = _reset(reset_text, now)
        quota = _quota(
            "requests",
            limit=parse_number(limit_text),
            remaining=parse_number(remaining_text),
            reset=reset,
            window=window,
            refill="window",
            dialect="x-ratelimit",
            source=prefix + ("reset" if reset_text is not None else "remaining") + said,
            # A Unix time in milliseconds is precise; seconds, as a time or a duration, are whole or not.
            coarse=reset_number is not None and reset_number < EPOCH_MILLISECONDS and reset_number.is_integer(),
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
        values = _key_values(fields["ratelimit"])
        if values:
            reset, said = _reset(values.get("reset"), now)
            quota = _quota(
                "requests",
                limit=parse_number(values.get("limit")),
                remaining=parse_number(values.get("remaining")),
                reset=reset,
                window=None,
                refill="window",
                dialect="ietf",
                source="ratelimit" + said,
            )
            if quota is not None:
                yield quota
        return
    named_policies = {name: params for name, params in policies}
    for name, params in states:
        policy = named_policies.get(name, {})
        if policy.get("qu", "requests").strip('"') != "requests":
            continue
        reset, said = _reset(params.get("t"), now)
        quota = _quota(
            "requests",
            limit=parse_number(policy.get("q")),
            remaining=parse_number(params.get("r")),
            reset=reset,
            window=parse_number(policy.get("w")),
            refill="window",
            dialect="ietf",
            source="ratelimit" + said,
        )
        if quota is not None:
            yield quota
    if "ratelimit-limit" in fields or "ratelimit-remaining" in fields or "ratelimit-reset" in fields:
        # Draft 6 and earlier: RateLimit-Limit: 10, RateLimit-Remaining: 1, RateLimit-Reset: 7,
        # RateLimit-Policy: 10;w=1 (or the policy after the limit: "10, 10;w=1").
        limit_text = fields.get("ratelimit-limit")
        window = _WINDOW_PARAMETER.search(fields.get("ratelimit-policy") or limit_text or "")
        reset, said = _reset(fields.get("ratelimit-reset"), now)
        quota = _quota(
            "requests",
            limit=parse_number(limit_text.split(",", 1)[0] if limit_text else None),
            remaining=parse_number(fields.get("ratelimit-remaining")),
            reset=reset,
            window=parse_number(window.group(1)) if window else None,
            refill="window",
            dialect="ietf",
            source="ratelimit-reset" + said,
        )
        if quota is not None:
            yield quota


def _ratelimitbysize(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """Mistral's ``ratelimitbysize-limit/remaining/reset``: tokens per minute."""
    reset, said = _reset(fields.get("ratelimitbysize-reset"), now)
    quota = _quota(
        "tokens",
        limit=parse_number(fields.get("ratelimitbysize-limit")),
        remaining=parse_number(fields.get("ratelimitbysize-remaining")),
        reset=reset,
        window=60.0,
        refill="window",
        dialect="ratelimitbysize",
        source="ratelimitbysize-reset" + said,
    )
    if quota is not None:
        yield quota


def _litellm(fields: Mapping[str, str], now: Callable[[], float]) -> Iterable[Quota]:
    """A LiteLLM proxy's ``x-ratelimit-{key}-{limit,remaining}-{requests,tokens}``, one pair per limit it
    enforces (``api_key``, ``user``, ``team``, …), in fixed windows whose length it does not say; and
    ``x-litellm-key-{rpm,tpm}-limit``, the key's configured limits."""
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for name in fields:
        match = _LITELLM_NAME.fullmatch(name)
        if match:
            key, kind, dimension = match.groups()
            groups.setdefault((key, dimension), {})[kind] = name
        elif key_limit := _LITELLM_KEY_LIMIT.fullmatch(name):
            dimension = "requests" if key_limit[1] == "rpm" else "tokens"
            groups.setdefault(("", dimension), {})["limit"] = name
    for (_, dimension), names in groups.items():
        quota = _quota(
            dimension,
            limit=parse_number(fields.get(names.get("limit", ""))),
            remaining=parse_number(fields.get(names.get("remaining", ""))),
            reset=None,
            window=None,
            refill="window",
            dialect="litellm",
            source=names.get("remaining") or names["limit"],
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
    "litellm": _litellm,
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


def seconds_until(value: str | None, now: Callable[[], float], unit: float = 1.0) -> tuple[float, bool] | None:
    """Seconds from now in ``value``, a bare number of ``unit`` seconds or a Unix time (in seconds from 10⁹ on,
    in milliseconds from 10¹² on), and whether it was a Unix time; ``None`` if malformed or past."""
    number = parse_number(value)
    if number is None:
        return None
    if number >= EPOCH_MILLISECONDS:
        seconds, unix_time = number / 1000 - now(), True
    elif number >= EPOCH_SECONDS:
        seconds, unix_time = number - now(), True
    else:
        seconds, unix_time = number * unit, False
    return (seconds, unix_time) if seconds > 0 else None


def _reset(value: str | None, now: Callable[[], float]) -> tuple[float | None, str]:
    """A reset in seconds from now (:func:`seconds_until`, or a duration such as ``6m0s``), and what its
    source adds: :data:`UNIX_TIME` if it was one."""
    found = seconds_until(value, now)
    if found is not None:
        return found[0], UNIX_TIME if found[1] else ""
    if parse_number(value) is not None:  # a Unix time already past, or 0
        return None, ""
    return parse_duration(value), ""


def _unenforced(remaining: str | None) -> bool:
    """Whether a ``remaining`` count is below ``-1`` (a placeholder): the server lets requests past the limit."""
    return remaining is not None and _UNENFORCED.fullmatch(remaining) is not None and int(remaining) < -1


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
