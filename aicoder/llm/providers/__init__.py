"""The LLM APIs aicoder talks to, each sending through a retrying ``requests.Session``."""

from aicoder.llm.providers.base import LLMProvider, MalformedResponseError, Message, MissingAPIKeyError
from aicoder.llm.providers.openai import OpenAIProvider
from aicoder.llm.providers.openrouter import OpenRouterProvider

__all__ = [
    "LLMProvider",
    "MalformedResponseError",
    "Message",
    "MissingAPIKeyError",
    "OpenAIProvider",
    "OpenRouterProvider",
]
