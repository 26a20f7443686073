"""Every test starts from default settings: no aicoder variables, no .env, no learnt rate limits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicoder.http.cooldown import default_cooldowns

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
