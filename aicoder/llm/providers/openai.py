"""The official openai SDK, with its retries off and its HTTP sent through a retrying session."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx2
import openai

from aicoder.http.clients import http_client
from aicoder.llm.providers.base import LLMProvider, MalformedResponseError, Message, completion_text

__all__ = ["OpenAIProvider"]

log = logging.getLogger(__name__)


class OpenAIProvider(LLMProvider):
    """Chat completions through :class:`openai.OpenAI`, which never retries on its own.

    The SDK gets ``max_retries=0`` and an ``http_client`` whose transport is
    :class:`~aicoder.http.transport.RequestsTransport` over ``session``
    (default: :func:`~aicoder.http.adapter.retrying_session`), so the session's
    adapter is the only layer that retries. ``api_key`` and ``base_url``
    default to ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` from ``config``.
    """

    name = "openai"
    key_setting = ("OPENAI_API_KEY", "openai_api_key")
    base_url_setting = ("OPENAI_BASE_URL", "openai_base_url")
    failures = (*LLMProvider.failures, openai.OpenAIError)

    def _start(self) -> None:
        self.client = openai.OpenAI(
            api_key=self.api_key,
            base_url=self.base_url,
            max_retries=0,
            # Redirects are followed as the SDK's own client follows them: 307/308 keep method and body,
            # and Authorization is dropped when the origin changes. The session stays the provider's.
            http_client=http_client(session=self.session),
        )

    def _start_async(self, client: httpx2.AsyncClient) -> None:
        self.async_sdk = openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=0, http_client=client
        )

    def create_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        started = time.monotonic()
        try:
            completion: Any = self.client.chat.completions.create(model=model, messages=list(messages))  # type: ignore[arg-type]
        except (json.JSONDecodeError, RecursionError) as exc:  # a 200 whose body is no JSON, or nested past reason
            raise MalformedResponseError from exc
        return _text(completion, model, started, verbose)

    async def acreate_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        started = time.monotonic()
        self.async_client()  # builds async_sdk for this event loop, if it is a new one
        try:
            completion: Any = await self.async_sdk.chat.completions.create(model=model, messages=list(messages))  # type: ignore[arg-type]
        except (json.JSONDecodeError, RecursionError) as exc:
            raise MalformedResponseError from exc
        return _text(completion, model, started, verbose)


def _text(completion: Any, model: str, started: float, verbose: bool) -> str:
    log.log(
        logging.INFO if verbose else logging.DEBUG,
        "openai chat completion model=%s in %.2f s",
        model,
        time.monotonic() - started,
    )
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        content = None
    return completion_text(content)
