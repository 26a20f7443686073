"""Settings are read once from the environment and .env, validated, and frozen."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from aicoder.config import Config, ConfigError


def test_defaults() -> None:
    """With nothing set, the documented defaults apply."""
    config = Config.load(environ={})
    assert (config.retry_count, config.retry_min_delay, config.retry_max_delay) == (5, 2.0, 30.0)
    assert config.retry_respect_retry_after is True
    assert config.openrouter_base_url == "https://openrouter.ai/api/v1"
    assert config.openai_api_key is None


def test_environment_overrides() -> None:
    """Each LLM_RETRY_* variable overrides its default."""
    config = Config.load(
        environ={
            "LLM_RETRY_COUNT": "0",
            "LLM_RETRY_MIN_DELAY": "0.5",
            "LLM_RETRY_MAX_DELAY": " 10 ",
            "LLM_RETRY_RESPECT_RETRY_AFTER": "False",
        }
    )
    assert (config.retry_count, config.retry_min_delay, config.retry_max_delay) == (0, 0.5, 10.0)
    assert config.retry_respect_retry_after is False


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """A .env file supplies values; the environment beats it."""
    (tmp_path / ".env").write_text('LLM_RETRY_COUNT=7\nexport LLM_RETRY_MAX_DELAY="12"\nOPENAI_API_KEY=from-file\n')
    config = Config.load(environ={"LLM_RETRY_COUNT": "3"})
    assert config.retry_count == 3
    assert config.retry_max_delay == 12.0
    assert config.openai_api_key == "from-file"


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, ``os.environ`` is read."""
    monkeypatch.setenv("LLM_RETRY_COUNT", "9")
    assert Config.load().retry_count == 9


def test_empty_value_keeps_default() -> None:
    """An empty variable is treated as unset."""
    assert Config.load(environ={"LLM_RETRY_COUNT": "", "LLM_RETRY_MIN_DELAY": "  "}).retry_count == 5


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("LLM_RETRY_COUNT", "-1", "whole number from 0 to 100"),
        ("LLM_RETRY_COUNT", "2.5", "whole number from 0 to 100"),
        ("LLM_RETRY_COUNT", "many", "whole number from 0 to 100"),
        ("LLM_RETRY_COUNT", "101", "whole number from 0 to 100"),
        ("LLM_RETRY_COUNT", "\u0663", "whole number from 0 to 100"),  # an Arabic-Indic 3: int() reads it as 3
        ("LLM_RETRY_COUNT", "\uff15", "whole number from 0 to 100"),  # a full-width 5
        ("LLM_RETRY_COUNT", "1_000", "whole number from 0 to 100"),
        ("LLM_RETRY_MIN_DELAY", "-0.1", "seconds from 0 to 3600"),
        ("LLM_RETRY_MIN_DELAY", "nan", "seconds from 0 to 3600"),
        ("LLM_RETRY_MAX_DELAY", "inf", "seconds from 0 to 3600"),
        ("LLM_RETRY_MAX_DELAY", "1e10", "seconds from 0 to 3600"),  # passed once, then overflowed at the first retry
        ("LLM_RETRY_MAX_DELAY", "3601", "seconds from 0 to 3600"),
        ("LLM_RETRY_MAX_DELAY", "soon", "seconds from 0 to 3600"),
        ("LLM_RETRY_MAX_HINT", "86401", "seconds from 0 to 86400 (a day)"),
        ("LLM_RETRY_RESPECT_RETRY_AFTER", "maybe", "true or false"),
    ],
)
def test_bad_values_name_variable_value_and_rule(name: str, value: str, allowed: str) -> None:
    """A bad value is rejected with the variable, the value and what is allowed."""
    with pytest.raises(ConfigError) as caught:
        Config.load(environ={name: value})
    message = str(caught.value)
    assert name in message
    assert repr(value) in message
    assert allowed in message


def test_bad_value_in_env_file_names_the_file(tmp_path: Path) -> None:
    """The error says the bad value came from .env."""
    (tmp_path / ".env").write_text("LLM_RETRY_COUNT=lots\n")
    with pytest.raises(ConfigError, match=r"LLM_RETRY_COUNT='lots' \(from \.env\)"):
        Config.load(environ={})


def test_max_below_min_is_rejected() -> None:
    """The maximum wait may not be below the minimum."""
    with pytest.raises(ConfigError, match=re.escape("LLM_RETRY_MAX_DELAY=1.0 is below LLM_RETRY_MIN_DELAY=2.0")):
        Config.load(environ={"LLM_RETRY_MAX_DELAY": "1"})


def test_direct_construction_is_validated() -> None:
    """Building a Config in code runs the same checks, and a string is no bool."""
    with pytest.raises(ConfigError, match="LLM_RETRY_COUNT=True"):
        Config(retry_count=True)
    with pytest.raises(ConfigError, match="LLM_RETRY_MIN_DELAY='2'"):
        Config(retry_min_delay="2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="LLM_RETRY_COUNT=1000000000"):
        Config(retry_count=10**9)
    with pytest.raises(ConfigError, match=r"LLM_RETRY_RESPECT_RETRY_AFTER='false'.*True or False"):
        Config(retry_respect_retry_after="false")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=re.escape("LLM_RETRY_COUNT=1000000000000000000000000000000000000...")
    ) as caught:
        Config(retry_count=10**400)
    assert len(str(caught.value)) < 200


def test_env_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A .env with invalid UTF-8 is a ConfigError naming the file, not a UnicodeDecodeError."""
    (tmp_path / ".env").write_bytes(b"LLM_RETRY_COUNT=\xff\xfe3\n")
    with pytest.raises(ConfigError, match=r"\.env is not UTF-8"):
        Config.load(environ={})


def test_overrides_win_and_hide_a_bad_environment_value() -> None:
    """A value from the command line replaces the variable: a bad one in the environment no longer matters."""
    config = Config.load(environ={"LLM_RETRY_COUNT": "lots"}, overrides={"LLM_RETRY_COUNT": ("3", "from --retries")})
    assert config.retry_count == 3
    with pytest.raises(ConfigError, match=r"LLM_RETRY_COUNT='300' \(from --retries\)"):
        Config.load(environ={}, overrides={"LLM_RETRY_COUNT": ("300", "from --retries")})


def test_frozen_and_keys_hidden_from_repr() -> None:
    """A Config cannot change after loading, and its repr shows no API key."""
    config = Config(openai_api_key="sk-SENTINEL", openrouter_api_key="or-SENTINEL")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry_count = 1  # type: ignore[misc]
    assert "SENTINEL" not in repr(config)


@pytest.mark.parametrize(
    "key",
    ["sk-SENTINEL\n", "sk-SENTINEL\r\nX-Evil: 1", " sk-SENTINEL", "sk-\u200bSENTINEL", "sk-SENTINEL é", "sk SENTINEL"],
)
def test_unusable_keys_are_refused_without_showing_them(key: str) -> None:
    """A key with a line break, whitespace or an invisible character is a ConfigError naming the variable only."""
    with pytest.raises(ConfigError) as caught:
        Config(openai_api_key=key)
    assert "OPENAI_API_KEY is not allowed" in str(caught.value)
    assert "SENTINEL" not in str(caught.value)


def test_a_key_with_an_inner_line_break_from_the_environment_is_refused() -> None:
    """Surrounding whitespace from a .env or the environment is trimmed; an inner line break is not a key."""
    assert Config.load(environ={"OPENROUTER_API_KEY": "  sk-ok \n"}).openrouter_api_key == "sk-ok"
    with pytest.raises(ConfigError, match="OPENROUTER_API_KEY is not allowed: it contains a line break") as caught:
        Config.load(environ={"OPENROUTER_API_KEY": "sk-SENTINEL\nmore"})
    assert "SENTINEL" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://[::1", "not a url", "ftp://files.test/", "https://", "http://host:99999/"])
def test_base_urls_are_checked_on_load(url: str) -> None:
    """A base URL that is no http(s) URL with a host is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=r"OPENROUTER_BASE_URL=.* is not allowed: expected an http"):
        Config.load(environ={"OPENROUTER_BASE_URL": url})


def test_repr_hides_url_credentials_and_query() -> None:
    """``repr(Config)`` shows no user info and no query string of a base URL."""
    config = Config(openrouter_base_url="https://user:SENTINEL-PW@llm.test/v1?key=SENTINEL-Q")
    assert "SENTINEL" not in repr(config)
    assert "https://llm.test/v1" in repr(config)
