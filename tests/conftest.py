"""Every test starts from default settings: no aicoder variables, no .env, no learnt rate limits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicoder.config import Config
from aicoder.http.cooldown import default_cooldowns
from aicoder.instrumentation import RetryDetails, get_hooks, set_hooks
from aicoder.testing import EndpointStats

_PREFIXES = ("LLM_", "OPENAI_", "OPENROUTER_")


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Hide the developer's own settings and .env from the test, and forget other tests' destinations."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    default_cooldowns().clear()
    yield
    default_cooldowns().clear()


@pytest.fixture
def retries() -> Iterator[list[RetryDetails]]:
    """The retries aicoder makes during the test, in the order its hooks report them (no other hook runs)."""
    recorded: list[RetryDetails] = []
    previous = get_hooks()
    set_hooks([recorded.append])
    try:
        yield recorded
    finally:
        set_hooks(previous)


def assert_all_through_aicoder(stats: EndpointStats, retries: list[RetryDetails], requests: int) -> None:
    """Every request completed, none went before a time the endpoint stated, no request took more than the
    configured attempts, and every 429 the endpoint sent was retried by aicoder: the SDK retried none (its
    retries would add 429s aicoder never saw)."""
    assert (stats.ok, stats.early) == (requests, 0)
    assert all(retry.attempt <= Config().retry_count for retry in retries)
    assert stats.rate_limited == len(retries)
