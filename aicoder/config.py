"""aicoder's settings: read once from the environment and ``.env``, validated, then frozen.

Nothing else in aicoder reads ``os.environ``: a request never changes its
behaviour because a variable changed under it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

__all__ = ["Config", "ConfigError"]

DEFAULT_OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"

#: The longest server hint any setting may allow waiting for: a day.
MAX_HINT_CAP = 86_400.0

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A setting or argument has a value aicoder cannot use."""


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is a whole number >= 0, else raise :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} is not allowed: expected a whole number >= 0 (0 means no retry)")
    return value


def check_delay(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a finite number >= 0, else raise :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={value!r} is not allowed: expected a finite number of seconds >= 0")
    return float(value)


def check_hint_cap(name: str, value: object) -> float:
    """Return ``value`` as seconds if it is a number from 0 to 86,400 (a day); else raise :class:`ConfigError`."""
    seconds = check_delay(name, value)
    if seconds > MAX_HINT_CAP:
        raise ConfigError(f"{name}={value!r} is not allowed: expected seconds from 0 to {MAX_HINT_CAP:g} (a day)")
    return seconds


def check_delay_range(min_name: str, min_delay: float, max_name: str, max_delay: float) -> None:
    """Raise :class:`ConfigError` unless ``min_delay <= max_delay``."""
    if max_delay < min_delay:
        raise ConfigError(
            f"{max_name}={max_delay!r} is below {min_name}={min_delay!r}: the maximum wait must be >= the minimum"
        )


@dataclass(frozen=True)
class Config:
    """Validated aicoder settings; build it with :meth:`load` or directly.

    ``retry_count=0`` means one attempt and no retry. ``retry_min_delay`` and
    ``retry_max_delay`` bound the linear schedule, in seconds.
    ``retry_max_hint`` is the longest wait a server may ask for and get: a
    longer hint (a daily quota) ends retrying at once.
    ``retry_respect_retry_after=False`` ignores the server's wait hints.
    ``retry_coordinate=False`` turns off the shared per-destination cooldown
    (:mod:`aicoder.llm.cooldown`).
    API keys are kept out of ``repr()``.
    """

    retry_count: int = 5
    retry_min_delay: float = 2.0
    retry_max_delay: float = 30.0
    retry_max_hint: float = 120.0
    retry_respect_retry_after: bool = True
    retry_coordinate: bool = True
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

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Config:
        """Read settings from ``environ`` (default ``os.environ``) over those in ``env_file``.

        A variable that is unset or empty keeps its default. A missing
        ``env_file`` is fine; ``env_file=None`` skips it. Raises
        :class:`ConfigError` naming the variable, its value and what is allowed.
        """
        sources: dict[str, tuple[str, str]] = {}
        if env_file is not None and Path(env_file).is_file():
            for name, value in dotenv_values(env_file).items():
                if value is not None:
                    sources[name] = (value, f"from {env_file}")
        for name, value in (os.environ if environ is None else environ).items():
            sources[name] = (value, "from the environment")

        def get(name: str, parse: Callable[[str, str, str], Any]) -> dict[str, Any]:
            raw, origin = sources.get(name, ("", ""))
            if not raw.strip():
                return {}
            return {_FIELDS[name]: parse(name, raw.strip(), origin)}

        values: dict[str, Any] = {}
        values |= get("LLM_RETRY_COUNT", _parse_count)
        values |= get("LLM_RETRY_MIN_DELAY", _parse_delay)
        values |= get("LLM_RETRY_MAX_DELAY", _parse_delay)
        values |= get("LLM_RETRY_MAX_HINT", _parse_hint_cap)
        values |= get("LLM_RETRY_RESPECT_RETRY_AFTER", _parse_bool)
        values |= get("LLM_RETRY_COORDINATE", _parse_bool)
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
    "OPENROUTER_API_KEY": "openrouter_api_key",
    "OPENROUTER_BASE_URL": "openrouter_base_url",
    "OPENAI_API_KEY": "openai_api_key",
    "OPENAI_BASE_URL": "openai_base_url",
}


def _parse_count(name: str, raw: str, origin: str) -> int:
    try:
        return check_count(name, int(raw))
    except (ValueError, ConfigError):
        raise ConfigError(
            f"{name}={raw!r} ({origin}) is not allowed: expected a whole number >= 0 (0 means no retry)"
        ) from None


def _parse_delay(name: str, raw: str, origin: str) -> float:
    try:
        return check_delay(name, float(raw))
    except (ValueError, ConfigError):
        raise ConfigError(
            f"{name}={raw!r} ({origin}) is not allowed: expected a finite number of seconds >= 0"
        ) from None


def _parse_hint_cap(name: str, raw: str, origin: str) -> float:
    try:
        return check_hint_cap(name, float(raw))
    except (ValueError, ConfigError):
        raise ConfigError(
            f"{name}={raw!r} ({origin}) is not allowed: expected seconds from 0 to {MAX_HINT_CAP:g} (a day)"
        ) from None


def _parse_bool(name: str, raw: str, origin: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    raise ConfigError(f"{name}={raw!r} ({origin}) is not allowed: expected true or false (also 1/0, yes/no, on/off)")
