"""aicoder's settings: read once from the environment and ``.env``, validated, then frozen.

Nothing else in aicoder reads ``os.environ``: a request never changes its
behaviour because a variable changed under it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from dotenv import dotenv_values

from aicoder.http.redaction import safe_url

__all__ = ["COUNT", "DELAY", "HINT_CAP", "REQUEST_TIMEOUT", "Bounds", "Config", "ConfigError", "check", "parse"]

DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"

#: The longest server hint any setting may allow waiting for: a day.
MAX_HINT_CAP = 86_400.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A setting or argument has a value aicoder cannot use."""


class Bounds(NamedTuple):
    """What a numeric setting allows: from ``low`` to ``high``, ``whole`` numbers only or not."""

    low: float
    high: float
    whole: bool
    allowed: str


#: The retries after the first attempt: 0 means one attempt and no retry.
COUNT = Bounds(0, 100, True, "a whole number from 0 to 100 (0 means one attempt, no retry)")
#: The schedule's waits.
DELAY = Bounds(0, 3600, False, "seconds from 0 to 3600")
#: The longest server hint waited for.
HINT_CAP = Bounds(0, MAX_HINT_CAP, False, f"seconds from 0 to {MAX_HINT_CAP:g} (a day)")
#: The most one attempt may take.
REQUEST_TIMEOUT = Bounds(0.001, MAX_HINT_CAP, False, f"seconds from 0.001 to {MAX_HINT_CAP:g}")

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")


def check(name: str, value: object, bounds: Bounds) -> float:
    """Return ``value`` if it is a number within ``bounds``, else raise :class:`ConfigError` naming ``name``.

    A bool is not a number here, and a whole-number setting takes no fraction.
    """
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if (
        number is None
        or (bounds.whole and not isinstance(number, int))
        or (isinstance(number, float) and not math.isfinite(number))
        or not bounds.low <= number <= bounds.high
    ):
        raise ConfigError(f"{name}={_shown(value)} is not allowed: expected {bounds.allowed}")
    return number


def parse(name: str, text: str, bounds: Bounds, origin: str = "") -> float:
    """Read ``text`` as a setting within ``bounds``: ASCII digits only (no Arabic-Indic, full-width or ``1_000``)."""
    where = f" ({origin})" if origin else ""
    text = text.strip()
    if not (_WHOLE if bounds.whole else _DECIMAL).fullmatch(text):
        raise ConfigError(f"{name}={_shown(text)}{where} is not allowed: expected {bounds.allowed}")
    number = int(text) if bounds.whole else float(text)
    if not bounds.low <= number <= bounds.high:
        raise ConfigError(f"{name}={_shown(text)}{where} is not allowed: expected {bounds.allowed}")
    return number


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is a whole number of retries from 0 to 100, else raise :class:`ConfigError`."""
    return int(check(name, value, COUNT))


def check_delay(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a number from 0 to 3600, else raise :class:`ConfigError`."""
    return float(check(name, value, DELAY))


def check_hint_cap(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a number from 0 to 86,400 (a day); else raise :class:`ConfigError`."""
    return float(check(name, value, HINT_CAP))


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is ``True`` or ``False``: a string such as ``"false"`` would read as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={_shown(value)} is not allowed: expected True or False")
    return value


def check_delay_range(min_name: str, min_delay: float, max_name: str, max_delay: float) -> None:
    """Raise :class:`ConfigError` unless ``min_delay <= max_delay``."""
    if max_delay < min_delay:
        raise ConfigError(
            f"{max_name}={max_delay!r} is below {min_name}={min_delay!r}: the maximum wait must be >= the minimum"
        )


def check_api_key(name: str, value: object) -> str | None:
    """Return an API key if it can go in a header as it is, else raise :class:`ConfigError` naming ``name``.

    The message never shows the key, only what is wrong with it: a stray space or line
    break where it was copied, or a character a header cannot carry.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{name} is not allowed: expected the key as text, got {type(value).__name__}")
    problem = None
    if value != value.strip():
        problem = "it begins or ends with whitespace"
    elif "\n" in value or "\r" in value:
        problem = "it contains a line break"
    else:
        outside = next((index for index, character in enumerate(value) if not "!" <= character <= "~"), None)
        if outside is not None:
            problem = f"character {outside + 1} is a space, a control character or not ASCII (an invisible one?)"
    if problem is not None:
        raise ConfigError(
            f"{name} is not allowed: {problem}; an API key is printable ASCII without spaces. "
            "Check where it was copied from (the key itself is not shown)"
        )
    return value


def check_base_url(name: str, value: object) -> str | None:
    """Return a base URL if it is an ``http://`` or ``https://`` URL with a host, else raise :class:`ConfigError`."""
    if value is None:
        return None
    expected = "expected an http:// or https:// URL such as https://api.openai.com/v1"
    if not isinstance(value, str):
        raise ConfigError(f"{name} is not allowed: {expected}, got {type(value).__name__}")
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        valid = False
    if not valid or any(not "!" <= character <= "~" for character in value):
        raise ConfigError(f"{name}={_shown_url(value)} is not allowed: {expected}")
    return value


def check_redis_url(name: str, value: object) -> str | None:
    """Return a ``redis://``, ``rediss://`` or ``unix://`` URL if redis-py is there to use it, else raise
    :class:`ConfigError` saying what is wrong, or what to install."""
    if value is None:
        return None
    if not isinstance(value, str) or urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{name}={_shown_url(str(value))} is not allowed: expected a redis://, rediss:// or unix:// URL"
        )
    if importlib.util.find_spec("redis") is None:
        raise ConfigError(f"{name} is set, but redis-py is not installed: pip install redis")
    return value


def _shown_url(url: str) -> str:
    """``url`` as a message may show it: without user info or query, which may hold secrets."""
    if "@" not in url and "?" not in url:
        return _shown(url)
    try:
        return _shown(safe_url(url))
    except ValueError:
        return "(a URL with credentials, not shown)"


def _shown(value: object) -> str:
    """``value`` as a message shows it: its repr, cut short if long (a 400-digit number says nothing more)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


@dataclass(frozen=True)
class Config:
    """Validated aicoder settings; build it with :meth:`load` or directly.

    ``retry_count=0`` means one attempt and no retry. ``retry_min_delay`` and
    ``retry_max_delay`` bound the linear schedule, in seconds.
    ``retry_max_hint`` is the longest wait a server may ask for and get: a
    longer hint (a daily quota) ends retrying at once.
    ``retry_respect_retry_after=False`` ignores the server's wait hints.
    ``retry_coordinate=False`` turns off the shared per-destination cooldown
    (:mod:`aicoder.http.cooldown`). ``request_timeout`` is the most one attempt
    may take, from connect to last byte (:mod:`aicoder.http.deadline`).
    API keys are kept out of ``repr()``, and so are the user info and query
    string of base URLs. Keys must be printable ASCII without spaces, base URLs
    ``http://`` or ``https://`` URLs with a host.
    """

    retry_count: int = 5
    retry_min_delay: float = 2.0
    retry_max_delay: float = 30.0
    retry_max_hint: float = 120.0
    retry_respect_retry_after: bool = True
    retry_coordinate: bool = True
    request_timeout: float = 600.0
    redis_url: str | None = field(default=None, repr=False)
    openrouter_api_key: str | None = field(default=None, repr=False)
    openrouter_base_url: str = DEFAULT_OPENROUTER_BASE_URL
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None

    def __post_init__(self) -> None:
        check_count("LLM_RETRY_COUNT", self.retry_count)
        object.__setattr__(self, "retry_min_delay", check_delay("LLM_RETRY_MIN_DELAY", self.retry_min_delay))
        object.__setattr__(self, "retry_max_delay", check_delay("LLM_RETRY_MAX_DELAY", self.retry_max_delay))
        check_delay_range("LLM_RETRY_MIN_DELAY", self.retry_min_delay, "LLM_RETRY_MAX_DELAY", self.retry_max_delay)
        object.__setattr__(self, "retry_max_hint", check_hint_cap("LLM_RETRY_MAX_HINT", self.retry_max_hint))
        check_bool("LLM_RETRY_RESPECT_RETRY_AFTER", self.retry_respect_retry_after)
        check_bool("LLM_RETRY_COORDINATE", self.retry_coordinate)
        object.__setattr__(
            self, "request_timeout", float(check("LLM_REQUEST_TIMEOUT", self.request_timeout, REQUEST_TIMEOUT))
        )
        check_redis_url("LLM_RETRY_REDIS_URL", self.redis_url)
        check_api_key("OPENROUTER_API_KEY", self.openrouter_api_key)
        check_api_key("OPENAI_API_KEY", self.openai_api_key)
        check_base_url("OPENROUTER_BASE_URL", self.openrouter_base_url)
        check_base_url("OPENAI_BASE_URL", self.openai_base_url)

    def __repr__(self) -> str:
        """The settings, with no API key, and base URLs without user info or query string."""
        shown = {
            name: safe_url(value) if name.endswith("_base_url") and isinstance(value, str) else value
            for name, value in vars(self).items()
            if not name.endswith("_api_key") and name != "redis_url"
        }
        return f"Config({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | Path | None = ".env",
        *,
        overrides: Mapping[str, tuple[str, str]] | None = None,
    ) -> Config:
        """Read settings from ``environ`` (default ``os.environ``) over those in ``env_file``.

        A variable that is unset or empty keeps its default. A missing
        ``env_file`` is fine; ``env_file=None`` skips it. ``overrides`` maps a
        variable to ``(value, origin)``, such as ``("3", "from --retries")``, and wins
        over both: a variable it sets is not read from elsewhere. Raises
        :class:`ConfigError` naming the variable, its value and what is allowed.
        """
        sources: dict[str, tuple[str, str]] = {}
        if env_file is not None and Path(env_file).is_file():
            try:
                from_file = dotenv_values(env_file)
            except UnicodeDecodeError:
                raise ConfigError(f"{env_file} is not UTF-8 text: save it as UTF-8, or remove it") from None
            for name, value in from_file.items():
                if value is not None:
                    sources[name] = (value, f"from {env_file}")
        for name, value in (os.environ if environ is None else environ).items():
            sources[name] = (value, "from the environment")
        sources |= overrides or {}

        def get(name: str, parse: Callable[[str, str, str], Any]) -> dict[str, Any]:
            raw, origin = sources.get(name, ("", ""))
            if not raw.strip():
                return {}
            return {_FIELDS[name]: parse(name, raw.strip(), origin)}

        values: dict[str, Any] = {}
        values |= get("LLM_RETRY_COUNT", lambda name, raw, origin: int(parse(name, raw, COUNT, origin)))
        values |= get("LLM_RETRY_MIN_DELAY", lambda name, raw, origin: parse(name, raw, DELAY, origin))
        values |= get("LLM_RETRY_MAX_DELAY", lambda name, raw, origin: parse(name, raw, DELAY, origin))
        values |= get("LLM_RETRY_MAX_HINT", lambda name, raw, origin: parse(name, raw, HINT_CAP, origin))
        values |= get("LLM_RETRY_RESPECT_RETRY_AFTER", _parse_bool)
        values |= get("LLM_RETRY_COORDINATE", _parse_bool)
        values |= get("LLM_RETRY_REDIS_URL", lambda _name, raw, _origin: raw)
        values |= get("LLM_REQUEST_TIMEOUT", lambda name, raw, origin: parse(name, raw, REQUEST_TIMEOUT, origin))
        for name in ("OPENROUTER_API_KEY", "OPENROUTER_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            values |= get(name, lambda _name, raw, _origin: raw)
        return cls(**values)


_FIELDS = {
    "LLM_RETRY_COUNT": "retry_count",
    "LLM_RETRY_MIN_DELAY": "retry_min_delay",
    "LLM_RETRY_MAX_DELAY": "retry_max_delay",
    "LLM_RETRY_MAX_HINT": "retry_max_hint",
    "LLM_RETRY_RESPECT_RETRY_AFTER": "retry_respect_retry_after",
    "LLM_RETRY_COORDINATE": "retry_coordinate",
    "LLM_REQUEST_TIMEOUT": "request_timeout",
    "LLM_RETRY_REDIS_URL": "redis_url",
    "OPENROUTER_API_KEY": "openrouter_api_key",
    "OPENROUTER_BASE_URL": "openrouter_base_url",
    "OPENAI_API_KEY": "openai_api_key",
    "OPENAI_BASE_URL": "openai_base_url",
}


def _parse_bool(name: str, raw: str, origin: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise ConfigError(f"{name}={raw!r} ({origin}) is not allowed: expected true or false (also 1/0, yes/no, on/off)")
