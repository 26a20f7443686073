"""aicoder: LLM API calls that survive HTTP 429, retried with linear backoff in the transport.

Every name is imported when first used: ``import aicoder`` costs nothing, and the
HTTP names never import openai (they live in :mod:`aicoder.http`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aicoder.config import Config, ConfigError
    from aicoder.http.adapter import LinearBackoffAdapter, retrying_session
    from aicoder.http.async_transport import AsyncLinearBackoffTransport
    from aicoder.http.classic_httpx import async_httpx_client, httpx_client
    from aicoder.http.clients import async_http_client, http_client
    from aicoder.http.cooldown import Cooldowns, default_cooldowns
    from aicoder.http.hints import ServerHint, server_hint
    from aicoder.http.policy import LinearRetry, Wait
    from aicoder.http.schedule import linear_delay, linear_delays
    from aicoder.http.transport import RequestsTransport
    from aicoder.http.waiting import instant_waits
    from aicoder.llm.api_client import LLMClient
    from aicoder.llm.errors import LLMError, RateLimitError

_WHERE = {
    "AsyncLinearBackoffTransport": "aicoder.http.async_transport",
    "Config": "aicoder.config",
    "ConfigError": "aicoder.config",
    "Cooldowns": "aicoder.http.cooldown",
    "LLMClient": "aicoder.llm.api_client",
    "LLMError": "aicoder.llm.errors",
    "LinearBackoffAdapter": "aicoder.http.adapter",
    "LinearRetry": "aicoder.http.policy",
    "RateLimitError": "aicoder.llm.errors",
    "RequestsTransport": "aicoder.http.transport",
    "ServerHint": "aicoder.http.hints",
    "Wait": "aicoder.http.policy",
    "async_http_client": "aicoder.http.clients",
    "async_httpx_client": "aicoder.http.classic_httpx",
    "http_client": "aicoder.http.clients",
    "httpx_client": "aicoder.http.classic_httpx",
    "instant_waits": "aicoder.http.waiting",
    "linear_delay": "aicoder.http.schedule",
    "linear_delays": "aicoder.http.schedule",
    "retrying_session": "aicoder.http.adapter",
    "server_hint": "aicoder.http.hints",
    "default_cooldowns": "aicoder.http.cooldown",
}
__all__ = [
    "AsyncLinearBackoffTransport",
    "Config",
    "ConfigError",
    "Cooldowns",
    "LLMClient",
    "LLMError",
    "LinearBackoffAdapter",
    "LinearRetry",
    "RateLimitError",
    "RequestsTransport",
    "ServerHint",
    "Wait",
    "async_http_client",
    "async_httpx_client",
    "default_cooldowns",
    "http_client",
    "httpx_client",
    "instant_waits",
    "linear_delay",
    "linear_delays",
    "retrying_session",
    "server_hint",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the installed package's metadata: one version, in pyproject.toml
        return importlib.metadata.version("aicoder")
    if name not in _WHERE:
        raise AttributeError(f"module 'aicoder' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
