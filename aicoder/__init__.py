"""aicoder: LLM API calls that survive HTTP 429, retried with linear backoff in the transport."""

from aicoder.config import Config, ConfigError
from aicoder.llm.api_client import LLMClient
from aicoder.llm.cooldown import Cooldowns, shared_cooldowns
from aicoder.llm.errors import LLMError, RateLimitError
from aicoder.llm.hints import ServerHint, server_hint
from aicoder.llm.retry import LinearBackoffAdapter, LinearRetry, Wait, retrying_session
from aicoder.llm.schedule import linear_delay, linear_delays
from aicoder.llm.transport import RequestsTransport
from aicoder.llm.waiting import instant_waits

__all__ = [
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
    "instant_waits",
    "linear_delay",
    "linear_delays",
    "retrying_session",
    "server_hint",
    "shared_cooldowns",
]
