"""How long a 429 asks the client to wait before *this* request may go, in whatever dialect it speaks.

The first of these that says a usable wait wins:

1. ``retry-after-ms``: milliseconds (OpenAI, Azure OpenAI);
2. ``Retry-After``: seconds or an HTTP-date (RFC 9110), precise to the second;
3. the body, read from its first 64 KiB: Gemini's ``RetryInfo.retryDelay``
   (``"38.601s"``), OpenAI's "Please try again in 1.5s", Azure's "retry after 37
   seconds", and OpenRouter's ``error.metadata.headers``;
4. the quota that ran out (:mod:`aicoder.http.quotas`): with OpenAI's six
   ``x-ratelimit-*`` headers, the dimension at ``remaining`` 0 or the one the
   body's ``type`` names, and the time until this request's cost fits, not
   until the whole bucket is full.

A whole-second hint (``Retry-After: 1``) is *coarse*: the server may have rounded
up or down. When a precise hint lies within a second of it, the precise one wins.
Zero, negative, malformed, non-finite and already-past values count as no hint,
never as "go now": the next source is tried. Nothing here raises on what a server
sends. Only header and field *names* leave this module, never their values.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aicoder.http.quotas import Quota, parse_duration, parse_number, read_quotas
from aicoder.http.tokens import RequestCost

__all__ = ["MAX_BODY", "ServerHint", "body_prefix", "parse_duration", "server_hint"]

#: The most of a body that is ever read for a hint or a message.
MAX_BODY = 64 * 1024
_BODY_HINT = re.compile(
    r"(?P<phrase>try again in|retry in|retry after)\s+(?:"
    r"(?P<go>(?:[0-9]+(?:\.[0-9]+)?(?:ms|us|µs|ns|h|m|s))+)(?![a-z])"
    r"|(?P<amount>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>milliseconds?|seconds?|secs?|minutes?|mins?|hours?)\b)",
    re.IGNORECASE,
)
_PHRASE_DIALECT = {"try again in": "openai", "retry in": "gemini", "retry after": "azure"}


@dataclass(frozen=True)
class ServerHint:
    """A wait the server asked for: ``seconds`` from now, and where it said so.

    ``source`` is the header or body field, ``dialect`` the family it belongs to,
    ``retry_at`` the wall-clock time it names (Unix seconds). ``coarse`` marks a
    whole-second value the server may have rounded.
    """

    seconds: float
    source: str
    dialect: str = ""
    coarse: bool = False
    retry_at: float | None = None

    @property
    def header(self) -> str:
        """The old name of :attr:`source`."""
        return self.source


def server_hint(
    headers: Mapping[str, str],
    body: bytes | str | None = None,
    *,
    now: Callable[[], float] = time.time,
    cost: RequestCost | None = None,
) -> ServerHint | None:
    """Return the wait a 429's ``headers`` and ``body`` ask for, or ``None`` when none says one usably.

    ``headers`` must look names up case-insensitively, as ``requests``', urllib3's
    and httpx's header mappings do. ``cost`` is the refused request's estimated
    token cost: with it, a token quota's wait is the time until *this* request fits.
    ``now`` is the wall clock, for dates and Unix times.
    """
    found = None
    for hint in _hints(headers, body, now, cost):
        if found is None:
            if not hint.coarse:
                return hint
            found = hint
        elif not hint.coarse and abs(hint.seconds - found.seconds) < 1:
            return hint  # the same wait, said more precisely
    return found


def _hints(
    headers: Mapping[str, str], body: bytes | str | None, now: Callable[[], float], cost: RequestCost | None
) -> Iterator[ServerHint]:
    """Every usable hint, most explicit first."""
    wall = now()
    milliseconds = parse_number(headers.get("retry-after-ms"))
    if milliseconds:
        yield ServerHint(milliseconds / 1000, "retry-after-ms", "retry-after-ms", retry_at=wall + milliseconds / 1000)

    retry_after = headers.get("retry-after")
    if retry_after is not None:
        seconds = parse_number(retry_after)
        coarse = seconds is not None and seconds.is_integer()
        if seconds is None:
            seconds, coarse = _http_date(retry_after, wall), True
        if seconds:
            yield ServerHint(seconds, "retry-after", "retry-after", coarse=coarse, retry_at=wall + seconds)

    said = _BodySays.read(body)
    if said.hint is not None:
        yield ServerHint(said.hint[0], said.hint[1], said.hint[2], retry_at=wall + said.hint[0])

    quotas = read_quotas(headers, lambda: wall)
    if said.headers:
        quotas += read_quotas(said.headers, lambda: wall)
    exhausted = _exhausted(quotas, said.dimension, cost)
    if exhausted is not None:
        seconds, quota = exhausted
        # A bucket's wait is a fraction of its reset, and so is the reset's rounding; a window's is all of it.
        coarse = quota.coarse and (quota.refill == "window" or quota.remaining is None)
        yield ServerHint(seconds, quota.source, quota.dialect, coarse=coarse, retry_at=wall + seconds)


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
    """What an error body says about waiting: a hint, the exhausted dimension, rate-limit headers."""

    hint: tuple[float, str, str] | None = None
    dimension: str | None = None
    headers: Mapping[str, str] | None = None

    @classmethod
    def read(cls, body: bytes | str | None) -> _BodySays:
        text = body_prefix(body)
        if not text:
            return cls()
        try:
            data: Any = json.loads(text)
        except (ValueError, RecursionError):
            return cls(hint=_phrase_hint(text))
        items = (data if isinstance(data, list) else [data])[:8]
        errors = [item.get("error", item) for item in items if isinstance(item, dict)]
        errors = [error for error in errors if isinstance(error, dict)]
        hint = next((found for error in errors if (found := _retry_info(error))), None)
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
                hint = _phrase_hint(message)
        return cls(hint, dimension, headers)


def _retry_info(error: Mapping[str, Any]) -> tuple[float, str, str] | None:
    """Google's ``RetryInfo`` detail: ``{"@type": "….RetryInfo", "retryDelay": "38.601s"}``."""
    details = error.get("details")
    if not isinstance(details, list):
        return None
    for detail in details[:16]:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            seconds = parse_duration(delay) if isinstance(delay, str) else None
            if seconds:
                return seconds, "body: RetryInfo.retryDelay", "gemini"
    return None


def _phrase_hint(text: str) -> tuple[float, str, str] | None:
    """ "Please try again in 1.5s", "retry after 37 seconds", "Please retry in 38.6s"."""
    match = _BODY_HINT.search(text)
    if match is None:
        return None
    if match["go"]:
        seconds = parse_duration(match["go"])
    else:
        unit = match["unit"].lower()
        scale = 1e-3 if unit.startswith("milli") else 60.0 if unit.startswith("min") else 1.0
        scale = 3600.0 if unit.startswith("h") else scale
        seconds = float(match["amount"]) * scale
    if not seconds:
        return None
    return seconds, "body: error.message", _PHRASE_DIALECT[match["phrase"].lower()]


def _text_headers(raw: Mapping[Any, Any]) -> Mapping[str, str]:
    """OpenRouter's ``error.metadata.headers`` as text, at most 64 of them."""
    return {str(name): str(value) for name, value in list(raw.items())[:64]}
