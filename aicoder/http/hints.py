"""How long a 429 asks the client to wait before *this* request may go, in whatever dialect it speaks.

A time the server states is a floor: of every time it states, in any of these
sources, the latest wins, and nothing is sent before it:

1. ``retry-after-ms``: milliseconds (OpenAI, Azure OpenAI);
2. ``Retry-After``: seconds or an HTTP-date (RFC 9110), precise to the second;
   a LiteLLM proxy's ``llm_provider-retry-after`` (the provider's, passed on) and
   ``reset_at`` (``2026-11-29 20:26:55 UTC``);
3. the body, read from its first 64 KiB: Gemini's ``RetryInfo.retryDelay``
   (``"38.601s"``), OpenAI's "Please try again in 1.5s", Azure's "retry after 37
   seconds", LiteLLM's "Limit resets at: 2026-11-29 20:26:55 UTC", and
   OpenRouter's ``error.metadata.headers``;
4. the quota that ran out (:mod:`aicoder.http.quotas`): with OpenAI's six
   ``x-ratelimit-*`` headers, the dimension at ``remaining`` 0 or the one the
   body's ``type`` names, and the time until this request's cost fits, not
   until the whole bucket is full; for a window, its reset.

A 429's body may also state a limit outright: Google's ``QuotaFailure`` names
each quota that ran out and its ``quotaValue`` (``GenerateRequestsPerMinute…``:
15). :func:`stated_quotas` reads those, for the pace to go at that rate.

A bare number of seconds (or milliseconds) from 10⁹ on is a Unix time, whatever
the header: the source then says ``(Unix time)``. A whole-second hint
(``Retry-After: 1``) is *coarse*: the server may have rounded it. Zero, negative,
malformed, non-finite and already-past values count as no hint, never as "go
now". Nothing here raises on what a server sends. Only header and field *names*
leave this module, never their values.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aicoder.http.quotas import (
    EPOCH_MILLISECONDS,
    UNIX_TIME,
    Quota,
    parse_duration,
    parse_number,
    read_quotas,
    seconds_until,
)
from aicoder.http.tokens import RequestCost

__all__ = [
    "MAX_BODY",
    "ServerHint",
    "body_prefix",
    "parse_duration",
    "server_hint",
    "server_hint_and_quotas",
    "stated_quotas",
]

#: The most of a body that is ever read for a hint or a message.
MAX_BODY = 64 * 1024
_BODY_HINT = re.compile(
    r"(?P<phrase>try again in|retry in|retry after)\s+(?:"
    r"(?P<go>(?:[0-9]+(?:\.[0-9]+)?(?:ms|us|µs|ns|h|m|s))+)(?![a-z])"
    r"|(?P<amount>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>milliseconds?|seconds?|secs?|minutes?|mins?|hours?)\b)",
    re.IGNORECASE,
)
_PHRASE_DIALECT = {"try again in": "openai", "retry in": "gemini", "retry after": "azure"}
#: LiteLLM's "Limit resets at: 2026-11-29 20:26:55 UTC" (also in its ``reset_at`` header).
_RESETS_AT = re.compile(
    r"resets at:?\s+([0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)\s*(UTC|Z)\b"
)
#: What a Google quota's name counts, and per what: ``GenerateContentInputTokensPerModelPerMinute-FreeTier``.
_GOOGLE_DIMENSIONS = (("InputToken", "input-tokens"), ("OutputToken", "output-tokens"), ("Token", "tokens"))
_GOOGLE_PERIOD = re.compile(r"Per(Second|Minute|Hour|Day)")
_PERIODS = {"Second": 1.0, "Minute": 60.0, "Hour": 3600.0, "Day": 86400.0}
#: Where the wait in seconds is said, most explicit first: the header, and what it holds (1 s or 1 ms).
_RETRY_AFTER = (
    ("retry-after-ms", 1e-3),
    ("retry-after", 1.0),
    ("llm_provider-retry-after-ms", 1e-3),
    ("llm_provider-retry-after", 1.0),
)


@dataclass(frozen=True)
class ServerHint:
    """A wait the server asked for: ``seconds`` from now, and where it said so.

    ``source`` is the header or body field, ``dialect`` the family it belongs to,
    ``retry_at`` the wall-clock time it names (Unix seconds). ``coarse`` marks a
    whole-second value the server may have rounded. ``window`` marks the reset of
    a window (after it, the whole window is there again), not the time a bucket's
    next token comes. ``window_ran_out`` is set when the 429 says outright that a
    fixed window ran out (LiteLLM's ``reset_at``, or "Limit resets at" in its body),
    whichever of its times is the latest: then the rate was not what was wrong.
    """

    seconds: float
    source: str
    dialect: str = ""
    coarse: bool = False
    retry_at: float | None = None
    window: bool = False
    window_ran_out: bool = False

    @property
    def next_token(self) -> float | None:
        """The seconds until the server's next token, if that is what this hint says precisely: then the
        server takes at most one request in that time."""
        return None if self.coarse or self.window else self.seconds


def server_hint(
    headers: Mapping[str, str],
    body: bytes | str | None = None,
    *,
    now: Callable[[], float] = time.time,
    cost: RequestCost | None = None,
) -> ServerHint | None:
    """Return the latest wait a 429's ``headers`` and ``body`` state (a floor: nothing goes before it), or
    ``None`` when none says one usably. Its ``window_ran_out`` is set if any of them says so.

    ``headers`` must look names up case-insensitively, as ``requests``', urllib3's
    and httpx's header mappings do. ``cost`` is the refused request's estimated
    token cost: with it, a token quota's wait is the time until *this* request fits.
    ``now`` is the wall clock, for dates and Unix times.
    """
    return server_hint_and_quotas(headers, body, now=now, cost=cost)[0]


def server_hint_and_quotas(
    headers: Mapping[str, str],
    body: bytes | str | None = None,
    *,
    now: Callable[[], float] = time.time,
    cost: RequestCost | None = None,
) -> tuple[ServerHint | None, tuple[Quota, ...]]:
    """:func:`server_hint`, and the limits the body states (:func:`stated_quotas`): the body is read once."""
    wall = now()
    said = _BodySays.read(body, wall)
    latest, ran_out = None, False
    for hint in _hints(headers, said, wall, cost):
        ran_out = ran_out or hint.window_ran_out
        if latest is None or hint.seconds > latest.seconds:
            latest = hint
    if latest is not None and ran_out and not latest.window_ran_out:
        latest = dataclasses.replace(latest, window_ran_out=True)
    return latest, said.quotas


def stated_quotas(body: bytes | str | None) -> tuple[Quota, ...]:
    """The limits a 429's ``body`` states outright (Google's ``QuotaFailure``: a quota's name and value), as
    :class:`~aicoder.http.quotas.Quota` s with no remaining count or reset; ``()`` if it states none."""
    return _BodySays.read(body, time.time()).quotas


def _hints(headers: Mapping[str, str], said: _BodySays, wall: float, cost: RequestCost | None) -> Iterator[ServerHint]:
    """Every usable hint in ``headers`` and what the body ``said``, most explicit first; ``wall``: now."""
    for name, unit in _RETRY_AFTER:
        value = headers.get(name)
        if value is None:
            continue
        dialect = "retry-after" if unit == 1.0 else "retry-after-ms"
        found = seconds_until(value, lambda: wall, unit)
        if found is not None:
            seconds, unix_time = found
            number = parse_number(value) or 0.0
            # Whole seconds, as a wait or a Unix time, may be rounded; milliseconds are precise.
            coarse = unit == 1.0 and number < EPOCH_MILLISECONDS and number.is_integer()
            source = name + (UNIX_TIME if unix_time else "")
            yield ServerHint(seconds, source, dialect, coarse, retry_at=wall + seconds)
            continue
        date = _http_date(value, wall) if unit == 1.0 else None
        if date:
            yield ServerHint(date, name, dialect, coarse=True, retry_at=wall + date)

    reset_at = _utc_time(headers.get("reset_at") or "", wall)
    if reset_at:
        yield ServerHint(
            reset_at, "reset_at", "litellm", coarse=True, retry_at=wall + reset_at, window=True, window_ran_out=True
        )

    if said.hint is not None:
        seconds, source, dialect, coarse = said.hint
        litellm = dialect == "litellm"
        # Gemini's retryDelay is when its per-minute quota has room again (often 30 to 60 s), not when one
        # bucket's next token comes: it says nothing of the rate, and caps no cut.
        window = litellm or dialect == "gemini"
        yield ServerHint(seconds, source, dialect, coarse, wall + seconds, window=window, window_ran_out=litellm)

    quotas = read_quotas(headers, lambda: wall)
    if said.headers:
        quotas += read_quotas(said.headers, lambda: wall)
    exhausted = _exhausted(quotas, said.dimension, cost)
    if exhausted is not None:
        seconds, quota = exhausted
        # A bucket's wait is a fraction of its reset, and so is the reset's rounding; a window's is all of it.
        coarse = quota.coarse and (quota.refill == "window" or quota.remaining is None)
        window = quota.refill == "window"
        yield ServerHint(seconds, quota.source, quota.dialect, coarse, retry_at=wall + seconds, window=window)


def _utc_time(value: str, now: float) -> float | None:
    """Seconds from ``now`` until a time such as ``2026-11-29 20:26:55 UTC`` (LiteLLM's), if it is ahead."""
    if not 16 <= len(value) <= 40 or not value.isascii():
        return None
    text = value.strip().removesuffix("UTC").removesuffix("Z").strip()
    try:
        moment = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    seconds = moment.timestamp() - now
    return seconds if seconds > 0 else None


def _exhausted(
    quotas: tuple[Quota, ...], dimension: str | None, cost: RequestCost | None
) -> tuple[float, Quota] | None:
    """The longest wait among the quotas this request does not fit in, and that quota.

    Quotas that say how much is left come first; those that give only a reset count
    when none of the others ran out.
    """
    if dimension is not None and any(quota.dimension.endswith(dimension) for quota in quotas):
        quotas = tuple(quota for quota in quotas if quota.dimension.endswith(dimension))
    for known in (True, False):
        longest: tuple[float, Quota] | None = None
        for quota in quotas:
            if (quota.remaining is not None) is known:
                wait = quota.wait(cost.of(quota.dimension) if cost is not None else 1)
                if wait and (longest is None or wait > longest[0]):
                    longest = (wait, quota)
        if longest is not None:
            return longest
    return None


def _http_date(value: str, now: float) -> float | None:
    if len(value) > 64:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # RFC 9110 HTTP-dates are GMT; a date without a zone is malformed
        return None
    seconds = moment.timestamp() - now
    return seconds if seconds > 0 else None


def body_prefix(body: bytes | str | None) -> str:
    """The first :data:`MAX_BODY` bytes of ``body`` as text, however large ``body`` is."""
    if not body:
        return ""
    if isinstance(body, str):
        return body[:MAX_BODY]
    return body[:MAX_BODY].decode("utf-8", "replace")


@dataclass(frozen=True)
class _BodySays:
    """What an error body says about waiting: a hint, the exhausted dimension, rate-limit headers, and the
    limits it states."""

    #: The wait, where it was said, the dialect, and whether it is whole seconds.
    hint: tuple[float, str, str, bool] | None = None
    dimension: str | None = None
    headers: Mapping[str, str] | None = None
    quotas: tuple[Quota, ...] = ()

    @classmethod
    def read(cls, body: bytes | str | None, now: float) -> _BodySays:
        text = body_prefix(body)
        if not text:
            return cls()
        try:
            data: Any = json.loads(text)
        except (ValueError, RecursionError):
            return cls(hint=_phrase_hint(text, now))
        items = (data if isinstance(data, list) else [data])[:8]
        errors = [item.get("error", item) for item in items if isinstance(item, dict)]
        errors = [error for error in errors if isinstance(error, dict)]
        hint = next((found for error in errors if (found := _retry_info(error))), None)
        quotas = tuple(quota for error in errors for quota in _quota_failure(error))
        dimension = headers = None
        for error in errors:
            kind = error.get("type")
            if isinstance(kind, str) and dimension is None:
                dimension = "tokens" if "token" in kind else "requests" if "request" in kind else None
            metadata = error.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("headers"), dict) and headers is None:
                headers = _text_headers(metadata["headers"])
            message = error.get("message")
            if hint is None and isinstance(message, str):
                hint = _phrase_hint(message, now)
        return cls(hint, dimension, headers, quotas)


def _retry_info(error: Mapping[str, Any]) -> tuple[float, str, str, bool] | None:
    """Google's ``RetryInfo`` detail: ``{"@type": "….RetryInfo", "retryDelay": "38.601s"}``."""
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details[:16]:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            seconds = parse_duration(delay) if isinstance(delay, str) else None
            if seconds:
                return seconds, "body: RetryInfo.retryDelay", "gemini", False
    return None


def _quota_failure(error: Mapping[str, Any]) -> Iterator[Quota]:
    """Google's ``QuotaFailure`` detail: each violation's ``quotaId`` (what it counts, per what period) and
    ``quotaValue`` (the limit), when both are there."""
    details = error.get("details")
    for detail in details[:16] if isinstance(details, list) else ():
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith("QuotaFailure"):
            continue
        violations = detail.get("violations")
        for violation in violations[:16] if isinstance(violations, list) else ():
            if not isinstance(violation, dict):
                continue
            name, value = violation.get("quotaId"), violation.get("quotaValue")
            if not (isinstance(name, str) and isinstance(value, str) and len(name) <= 256):
                continue
            limit, period = parse_number(value), _GOOGLE_PERIOD.search(name)
            if not limit or period is None:
                continue
            dimension = next((known for part, known in _GOOGLE_DIMENSIONS if part in name), "requests")
            window = _PERIODS[period[1]]
            yield Quota(dimension, limit, None, None, window, "window", "gemini", "body: QuotaFailure.quotaValue")


def _phrase_hint(text: str, now: float) -> tuple[float, str, str, bool] | None:
    """ "Please try again in 1.5s", "retry after 37 seconds", "Please retry in 38.6s", "Limit resets at: …"."""
    match = _BODY_HINT.search(text)
    if match is None:
        resets = _RESETS_AT.search(text)
        seconds = _utc_time(resets[1], now) if resets else None
        return (seconds, "body: error.message", "litellm", True) if seconds else None
    if match["go"]:
        seconds = parse_duration(match["go"])
    else:
        unit = match["unit"].lower()
        scale = 1e-3 if unit.startswith("milli") else 60.0 if unit.startswith("min") else 1.0
        scale = 3600.0 if unit.startswith("h") else scale
        seconds = float(match["amount"]) * scale
    if not seconds:
        return None
    return seconds, "body: error.message", _PHRASE_DIALECT[match["phrase"].lower()], False


def _text_headers(raw: Mapping[Any, Any]) -> Mapping[str, str]:
    """OpenRouter's ``error.metadata.headers`` as text, at most 64 of them."""
    return {str(name): str(value) for name, value in list(raw.items())[:64]}
