"""What every provider offers, and the errors they share."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, TypedDict

import httpx2
import requests

from aicoder.config import Config, ConfigError, check_api_key, check_base_url
from aicoder.http.adapter import retrying_session
from aicoder.http.clients import async_http_client
from aicoder.http.redaction import url_secrets

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
    """A chat-completion API reached through :attr:`session`, whose adapter does all retrying.

    ``config`` defaults to :meth:`Config.load`: reading the environment is this explicit
    step. ``api_key`` and ``base_url`` default to the provider's two settings in it;
    both are checked (:func:`~aicoder.config.check_api_key`,
    :func:`~aicoder.config.check_base_url`). ``session`` defaults to
    :func:`~aicoder.http.adapter.retrying_session` for ``config``. Async calls go
    through :func:`~aicoder.http.clients.async_http_client` for ``config``, one per
    event loop.
    """

    #: A short name for messages and logs.
    name: ClassVar[str]
    #: The settings that give the key and the base URL: ``(variable, Config field)``.
    key_setting: ClassVar[tuple[str, str]]
    base_url_setting: ClassVar[tuple[str, str]]
    #: What a request may fail with: :class:`~aicoder.llm.api_client.LLMClient` explains each as one error.
    failures: ClassVar[tuple[type[Exception], ...]] = (
        requests.RequestException,
        httpx2.HTTPError,
        MalformedResponseError,
    )
    session: requests.Session
    #: Secrets that must never appear in a message: :class:`~aicoder.llm.api_client.LLMClient` redacts them.
    secrets: tuple[str, ...] = ()

    def __init__(
        self,
        config: Config | None = None,
        *,
        session: requests.Session | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> None:
        config = config if config is not None else Config.load()
        key_variable, key_field = self.key_setting
        url_variable, url_field = self.base_url_setting
        self.api_key = require_key(api_key or getattr(config, key_field), key_variable, self.name)
        self.base_url = check_base_url(url_variable, base_url or getattr(config, url_field))
        self.secrets = (self.api_key, *url_secrets(self.base_url))
        self.session = session if session is not None else retrying_session(config)
        self.config = config
        self._async_client: httpx2.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._start()

    def _start(self) -> None:  # noqa: B027 - an optional step, empty unless a provider needs it
        """Build what the provider sends with, once its key, base URL and session are set. For subclasses."""

    def async_client(self) -> httpx2.AsyncClient:
        """The retrying async client for the running event loop: a client's connections belong to one loop."""
        loop = asyncio.get_running_loop()
        if self._async_client is None or self._async_loop is not loop:
            self._async_client, self._async_loop = async_http_client(self.config), loop
            self._start_async(self._async_client)
        return self._async_client

    def _start_async(self, client: httpx2.AsyncClient) -> None:  # noqa: B027 - an optional step, as _start
        """Build what the provider sends with in ``client``'s event loop. For subclasses."""

    async def aclose(self) -> None:
        """Close the async client, if one was opened (the session is its owner's)."""
        if self._async_client is not None:
            await self._async_client.aclose()
            self._async_client = self._async_loop = None

    @abstractmethod
    async def acreate_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        """:meth:`create_completion` for asyncio, through :meth:`async_client`: the same answers and errors."""

    @abstractmethod
    def create_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        """Send ``messages`` to ``model`` once and return the reply's text.

        A non-2xx answer raises the transport's error with the response
        attached; a success that is not a chat completion raises
        :class:`MalformedResponseError`.
        """
