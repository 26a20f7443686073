"""OpenRouter, and any OpenAI-compatible server (Ollama, vLLM, LM Studio), over plain ``requests``."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import requests

from aicoder.config import Config
from aicoder.http.adapter import check_deadline
from aicoder.http.hints import MAX_BODY
from aicoder.http.redaction import safe_url
from aicoder.llm.providers.base import LLMProvider, Message, completion_text

__all__ = ["OpenRouterProvider"]

log = logging.getLogger(__name__)

#: ``(connect, read)`` seconds: a completion may take minutes, a connection should not.
DEFAULT_TIMEOUT = (10.0, 600.0)


class OpenRouterProvider(LLMProvider):
    """``POST {base_url}/chat/completions`` with a bearer key, through a retrying session.

    ``base_url`` defaults to ``OPENROUTER_BASE_URL`` and ``api_key`` to
    ``OPENROUTER_API_KEY`` from ``config`` (default: :meth:`Config.load`).
    ``session`` defaults to :func:`~aicoder.http.adapter.retrying_session`.
    """

    name = "openrouter"
    key_setting = ("OPENROUTER_API_KEY", "openrouter_api_key")
    base_url_setting = ("OPENROUTER_BASE_URL", "openrouter_base_url")

    def __init__(
        self,
        config: Config | None = None,
        *,
        session: requests.Session | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(config, session=session, api_key=api_key, base_url=base_url)
        assert self.base_url is not None  # the setting has a default
        self.url = _endpoint(self.base_url)
        self.timeout = timeout

    def create_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        started = time.monotonic()
        with self.session.post(
            self.url,
            json={"model": model, "messages": list(messages)},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=self.timeout,
            stream=True,
        ) as response:
            self._log_answer(model, response.status_code, started, verbose)
            if not 200 <= response.status_code < 300:
                # requests raises for 4xx and 5xx only; a 1xx, 3xx or 999 is no completion either.
                _keep_only_the_start(response)
                check_deadline(response)
                raise requests.HTTPError(f"HTTP {response.status_code}", response=response)
            response.content  # noqa: B018 - read the body whole, under the attempt's deadline
            check_deadline(response)
            return _completion_text(response)

    async def acreate_completion(self, model: str, messages: Sequence[Message], verbose: bool = False) -> str:
        started = time.monotonic()
        connect, read = self.timeout
        async with self.async_client().stream(
            "POST",
            self.url,
            json={"model": model, "messages": list(messages)},
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=httpx2.Timeout(read, connect=connect),
        ) as response:
            self._log_answer(model, response.status_code, started, verbose)
            if not 200 <= response.status_code < 300:
                raise httpx2.HTTPStatusError(
                    f"HTTP {response.status_code}", request=response.request, response=await _start_of(response)
                )
            await response.aread()
            return _completion_text(response)

    def _log_answer(self, model: str, status: int, started: float, verbose: bool) -> None:
        log.log(
            logging.INFO if verbose else logging.DEBUG,
            "POST %s model=%s: HTTP %d in %.2f s",
            safe_url(self.url),
            model,
            status,
            time.monotonic() - started,
        )


def _endpoint(base_url: str) -> str:
    """Append ``/chat/completions`` to the base URL's path, keeping any query (``?api-version=``)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/chat/completions"))


def _keep_only_the_start(response: requests.Response) -> None:
    """Read at most :data:`~aicoder.http.hints.MAX_BODY` of an error body: it is only ever quoted."""
    if not response._content_consumed:  # type: ignore[attr-defined]  # requests' own flag, not in its stubs
        response._content = response.raw.read(MAX_BODY, decode_content=True)
        response._content_consumed = True  # type: ignore[attr-defined]


async def _start_of(response: httpx2.Response) -> httpx2.Response:
    """An error answer with only the first :data:`~aicoder.http.hints.MAX_BODY` bytes of its body: it is only quoted."""
    start = b""
    async for chunk in response.aiter_bytes():
        start += chunk
        if len(start) >= MAX_BODY:
            break
    framing = ("content-encoding", "content-length", "transfer-encoding")  # of the whole body, as sent
    return httpx2.Response(
        response.status_code,
        headers=[(name, value) for name, value in response.headers.multi_items() if name.lower() not in framing],
        content=start[:MAX_BODY],
        request=response.request,
        extensions=response.extensions,
    )


def _completion_text(response: requests.Response | httpx2.Response) -> str:
    try:
        body: Any = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        content = None
    return completion_text(content)
