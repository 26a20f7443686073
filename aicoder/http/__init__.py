"""aicoder's general HTTP machinery: nothing here knows of LLMs, and nothing here imports openai.

The retry policy (:mod:`~aicoder.http.policy`), the adapter that mounts it on a
``requests`` session (:mod:`~aicoder.http.adapter`), the shared pace
(:mod:`~aicoder.http.cooldown`, :mod:`~aicoder.http.pace`), what servers say of
their limits (:mod:`~aicoder.http.quotas`, :mod:`~aicoder.http.hints`), the
deadline of each attempt, the bridge for httpx2 clients
(:mod:`~aicoder.http.transport`), the asyncio transport
(:mod:`~aicoder.http.async_transport`) and the clients for the openai SDK
(:mod:`~aicoder.http.clients`). Names are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aicoder.http.adapter import LinearBackoffAdapter, retrying_session
    from aicoder.http.async_transport import AsyncLinearBackoffTransport
    from aicoder.http.classic_httpx import AsyncHttpxTransport, HttpxTransport, async_httpx_client, httpx_client
    from aicoder.http.clients import async_http_client, http_client
    from aicoder.http.cooldown import Cooldowns, default_cooldowns
    from aicoder.http.hints import ServerHint, server_hint
    from aicoder.http.policy import LinearRetry, Wait
    from aicoder.http.quotas import Quota, read_quotas
    from aicoder.http.schedule import linear_delay, linear_delays
    from aicoder.http.transport import RequestsTransport
    from aicoder.http.waiting import instant_waits

_WHERE = {
    "AsyncLinearBackoffTransport": "async_transport",
    "Cooldowns": "cooldown",
    "LinearBackoffAdapter": "adapter",
    "LinearRetry": "policy",
    "Quota": "quotas",
    "RequestsTransport": "transport",
    "ServerHint": "hints",
    "Wait": "policy",
    "async_http_client": "clients",
    "async_httpx_client": "classic_httpx",
    "http_client": "clients",
    "httpx_client": "classic_httpx",
    "HttpxTransport": "classic_httpx",
    "AsyncHttpxTransport": "classic_httpx",
    "instant_waits": "waiting",
    "linear_delay": "schedule",
    "linear_delays": "schedule",
    "read_quotas": "quotas",
    "retrying_session": "adapter",
    "server_hint": "hints",
    "default_cooldowns": "cooldown",
}
__all__ = [
    "AsyncHttpxTransport",
    "AsyncLinearBackoffTransport",
    "Cooldowns",
    "HttpxTransport",
    "LinearBackoffAdapter",
    "LinearRetry",
    "Quota",
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
    "read_quotas",
    "retrying_session",
    "server_hint",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'aicoder.http' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aicoder.http.{_WHERE[name]}"), name)
