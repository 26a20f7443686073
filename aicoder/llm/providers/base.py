"""What every provider offers, and the errors they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypedDict

import requests

from aicoder.config import ConfigError, check_api_key

__all__ = ["LLMProvider", "MalformedResponseError", "Message", "MissingAPIKeyError", "completion_text", "require_key"]


class Message(TypedDict):
    """One chat message: ``role`` is ``"system"``, ``"user"`` or ``"assistant"``."""

    role: str
    content: str


class MissingAPIKeyError(ConfigError):
    """The API key a provider needs is not set."""


class MalformedResponseError(ValueError):
    """The server answered with success but not with a chat completion."""

    def __init__(self) -> None:
        super().__init__(
            "the server answered with success but not with a chat completion "
            "(expected choices[0].message.content as text); is the base URL an OpenAI-compatible API?"
        )


def require_key(key: str | None, variable: str, provider: str) -> str:
    """Return ``key`` if it is a usable key, or raise :class:`MissingAPIKeyError` saying which variable to set."""
    if not key:
        raise MissingAPIKeyError(
            f"{variable} is not set: the {provider} provider needs an API key; "
            f"set {variable} in the environment or in a .env file in the working directory"
        )
    checked = check_api_key(variable, key)
    assert checked is not None
    return checked


def completion_text(content: object) -> str:
    """Return ``content`` (a completion's ``choices[0].message.content``) if it is text.

    Anything else (missing, ``None``, not a string) raises :class:`MalformedResponseError`.
    """
    if not isinstance(content, str):
        raise MalformedResponseError
    return content


class LLMProvider(ABC):
    """A chat-completion API reached through :attr:`session`, whose adapter does all retrying."""

    #: A short name for messages and logs.
    name: ClassVar[str]
    session: requests.Session
    #: Secrets that must never appear in a message: :class:`~aicoder.llm.api_client.LLMClient` redacts them.
    secrets: tuple[str, ...] = ()

    @abstractmethod
    def create_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        """Send ``messages`` to ``model`` once and return the reply's text.

        A non-2xx answer raises the transport's error with the response
        attached; a success that is not a chat completion raises
        :class:`MalformedResponseError`.
        """
