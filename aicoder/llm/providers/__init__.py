"""The LLM APIs aicoder talks to, each sending through a retrying ``requests.Session``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aicoder.llm.providers.base import LLMProvider, MalformedResponseError, Message, MissingAPIKeyError
from aicoder.llm.providers.openrouter import OpenRouterProvider

if TYPE_CHECKING:
    from aicoder.llm.providers.openai import OpenAIProvider

__all__ = [
    "LLMProvider",
    "MalformedResponseError",
    "Message",
    "MissingAPIKeyError",
    "OpenAIProvider",
    "OpenRouterProvider",
]


def __getattr__(name: str) -> Any:
    """``OpenAIProvider`` on first use: importing the openai SDK takes half a second."""
    if name == "OpenAIProvider":
        from aicoder.llm.providers.openai import OpenAIProvider

        return OpenAIProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
