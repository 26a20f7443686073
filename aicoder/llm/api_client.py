"""``LLMClient``: pick a provider from the model name, send once, and explain any failure.

The client has no retry loop: the transport under the provider already retried
every 429 it could. What reaches the client is final, and it becomes one
:class:`RuntimeError` that says what happened and what to change.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import requests

from aicoder.config import MAX_HINT_CAP, Config, ConfigError
from aicoder.http.adapter import retry_state, waits_of
from aicoder.http.hints import ServerHint, body_prefix, server_hint
from aicoder.http.policy import TOO_MANY_REQUESTS, LinearRetry
from aicoder.http.redaction import redact, redact_chain, safe_url
from aicoder.http.transport import RETRY_EXTENSION, WAITS_EXTENSION
from aicoder.llm.errors import LLMError, RateLimitError
from aicoder.llm.providers import LLMProvider, MalformedResponseError, Message, OpenRouterProvider

__all__ = ["LLMClient"]

_MESSAGE_LIMIT = 300


class LLMClient:
    """Send prompts to ``modelWithPrefix``: ``openai/<model>`` uses :class:`OpenAIProvider`;
    ``openrouter/<model>``, or a name without either prefix, :class:`OpenRouterProvider`.

    The prefix is stripped; any other name (``anthropic/claude-sonnet-4``) is
    sent as it is. ``config`` defaults to :meth:`Config.load`; ``session``
    replaces the provider's retrying session (mount a
    :class:`~aicoder.http.adapter.LinearBackoffAdapter` on it to keep retrying).
    """

    def __init__(
        self,
        modelWithPrefix: str,  # noqa: N803 - the documented public name
        *,
        config: Config | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not isinstance(modelWithPrefix, str):
            raise ConfigError(
                f"model {modelWithPrefix!r} is not allowed: expected a model name such as 'openai/gpt-4o'"
            )
        prefix, slash, name = modelWithPrefix.partition("/")
        provider_class = _provider_class(prefix) if slash else None
        self.model = name if provider_class is not None else modelWithPrefix
        if not self.model.strip():
            raise ConfigError(
                f"model {modelWithPrefix!r} is not allowed: expected a model name such as 'openai/gpt-4o'"
            )
        config = config if config is not None else Config.load()
        self.provider: LLMProvider = (provider_class or OpenRouterProvider)(config, session=session)

    def sendRequest(self, systemPrompt: str, userPrompt: str, verbose: bool = True) -> str:  # noqa: N802, N803
        """Return the model's reply to ``userPrompt`` under ``systemPrompt``.

        One call to the provider, whose transport retries 429s. Any failure is
        raised as :class:`~aicoder.llm.errors.LLMError` (a :class:`RuntimeError`),
        :class:`~aicoder.llm.errors.RateLimitError` for a 429 that retrying could not
        get past, chained to the original error. ``verbose`` logs the request at
        INFO (never on stdout).
        """
        try:
            return self.provider.create_completion(self.model, _messages(systemPrompt, userPrompt), verbose=verbose)
        except self.provider.failures as exc:
            raise self._failure(exc) from exc

    async def asendRequest(self, systemPrompt: str, userPrompt: str, verbose: bool = False) -> str:  # noqa: N802, N803
        """:meth:`sendRequest` for asyncio: the same retries, pace and errors, and every wait an ``await``.

        Cancelling the task ends a wait for a turn or a backoff at once. The
        requests go through an async client of the provider's, one per event loop
        (:meth:`aclose` closes it); a ``session`` given to the client is for sync calls only.
        """
        try:
            return await self.provider.acreate_completion(
                self.model, _messages(systemPrompt, userPrompt), verbose=verbose
            )
        except self.provider.failures as exc:
            raise self._failure(exc) from exc

    async def aclose(self) -> None:
        """Close the async client :meth:`asendRequest` opened, if any."""
        await self.provider.aclose()

    def _failure(self, exc: Exception) -> LLMError:
        error = _error(self.provider.name, exc, self.provider.secrets)
        redact_chain(exc, self.provider.secrets)  # a traceback printed later shows no secret either
        return error


def _provider_class(prefix: str) -> type[LLMProvider] | None:
    """The provider a model prefix names; the openai SDK, slow to import, is imported only when named."""
    if prefix == "openrouter":
        return OpenRouterProvider
    if prefix == "openai":
        from aicoder.llm.providers.openai import OpenAIProvider

        return OpenAIProvider
    return None


def _messages(system: str, user: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class _Failure:
    """What the client needs to explain an HTTP error, whichever stack produced it."""

    method: str
    url: str
    status: int
    reason: str
    headers: Mapping[str, str]
    body: str
    retry: LinearRetry | None
    #: The seconds waited before each retry, queueing included; ``None`` if not recorded.
    waits: tuple[float, ...] | None


def _error(provider: str, exc: Exception, secrets: tuple[str, ...]) -> LLMError:
    """The error to raise for ``exc``, with a message that says what happened and what to change."""
    failure = _http_failure(exc)
    if failure is None:
        request = _request_of(exc)
        url = safe_url(str(request.url)) if request is not None and getattr(request, "url", None) else ""
        return LLMError(redact(_describe_transport_error(provider, exc), secrets), provider=provider, url=url)
    where = f"{failure.method} {failure.url}"
    said = _server_message(failure.body)
    if failure.status == TOO_MANY_REQUESTS:
        hint = server_hint(failure.headers, failure.body)
        retries = len(failure.retry.history) if failure.retry is not None else 0
        waits = failure.waits if failure.waits is not None else _scheduled(failure.retry)
        return RateLimitError(
            redact(_describe_rate_limit(provider, where, failure, said, hint, waits), secrets),
            provider=provider,
            url=failure.url,
            attempts=retries + 1,
            waits=waits,
            hint=hint.seconds if hint is not None else None,
            retry_at=hint.retry_at if hint is not None else None,
        )
    advice = " Check the API key you set for it." if failure.status in (401, 403) else ""
    message = (
        f"{provider} request failed: HTTP {failure.status} {failure.reason} on {where}; server said: {said}. "
        f"Not retried: aicoder retries only HTTP 429.{advice}"
    )
    return LLMError(redact(message, secrets), provider=provider, status=failure.status, url=failure.url)


def _scheduled(retry: LinearRetry | None) -> tuple[float, ...]:
    return tuple(wait.seconds for wait in retry.waits) if retry is not None else ()


def _describe_rate_limit(
    provider: str, where: str, failure: _Failure, said: str, hint: ServerHint | None, waits: tuple[float, ...]
) -> str:
    retry = failure.retry
    asked = f"{hint.seconds:.3g} s ({hint.source})" if hint is not None else "no wait"
    if retry is None:
        return (
            f"{provider} rate limit (HTTP 429) on {where}; server said: {said}; it asked for {asked}. "
            "No retries were made: this session has no LinearBackoffAdapter mounted."
        )
    retries = len(retry.history)
    if retry.respect_retry_after_header and hint is not None and hint.seconds > retry.max_hint:
        return (
            f"{provider} rate limit (HTTP 429) on {where}: the server asked to wait {_span(hint.seconds)}"
            f"{_until(hint.retry_at)} ({hint.source}, {hint.dialect} dialect), longer than "
            f"LLM_RETRY_MAX_HINT={retry.max_hint:g} s, so aicoder stopped after {retries} "
            f"{_plural(retries, 'retry', 'retries')}; server said: {said}. {_advice_for_hint(hint.seconds)}"
        )
    waited = f"waited {', '.join(f'{seconds:.3g}' for seconds in waits)} s" if waits else "no wait"
    return (
        f"{provider} rate limit (HTTP 429) on {where} persisted after {retries} "
        f"{_plural(retries, 'retry', 'retries')} (LLM_RETRY_COUNT={retry.count}; {waited}); "
        f"server said: {said}; it asked for {asked}. "
        "Raise LLM_RETRY_COUNT or LLM_RETRY_MAX_DELAY, or send fewer requests."
    )


def _span(seconds: float) -> str:
    """``1.5 s``, ``12 min``, ``9.5 h``: a wait as a person would say it."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _until(retry_at: float | None) -> str:
    if retry_at is None:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(retry_at, datetime.UTC)
    except (OverflowError, ValueError, OSError):  # past the year 9999
        return ""
    return f", until {moment:%Y-%m-%d %H:%M:%S} UTC"


def _advice_for_hint(seconds: float) -> str:
    if seconds <= MAX_HINT_CAP:
        return f"Raise LLM_RETRY_MAX_HINT to at least {math.ceil(seconds)} to wait that long, or send fewer requests."
    return "That is a quota for the day or longer: wait until then, or use another key or model."


def _describe_transport_error(provider: str, exc: Exception) -> str:
    if isinstance(exc, MalformedResponseError):
        return f"{provider} request failed: {exc}"
    request = _request_of(exc)
    where = f" {request.method} {safe_url(str(request.url))}" if request is not None else ""
    timeouts = (requests.Timeout, httpx2.TimeoutException)
    timed_out = isinstance(exc, timeouts) or isinstance(exc.__cause__, timeouts)  # the openai SDK wraps httpx2's
    what = "timed out" if timed_out else "could not complete"
    return f"{provider} request{where} {what}: {_root_cause(exc)}. Not retried: aicoder retries only HTTP 429."


def _request_of(exc: Exception) -> Any:
    """The request ``exc`` is about, if it says; httpx2 raises, rather than answer ``None``, when it has none."""
    try:
        return getattr(exc, "request", None)
    except RuntimeError:
        return None


def _http_failure(exc: Exception) -> _Failure | None:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        return _Failure(
            method=response.request.method or "",
            url=safe_url(response.url),
            status=response.status_code,
            reason=response.reason or "",
            headers=response.headers,
            body=response.text,
            retry=retry_state(response),
            waits=waits_of(response),
        )
    sdk_response = getattr(exc, "response", None)  # httpx2.HTTPStatusError's, or the openai SDK's APIStatusError's
    if isinstance(sdk_response, httpx2.Response):
        retry = sdk_response.extensions.get(RETRY_EXTENSION)
        waits = sdk_response.extensions.get(WAITS_EXTENSION)
        return _Failure(
            method=sdk_response.request.method,
            url=safe_url(str(sdk_response.request.url)),
            status=sdk_response.status_code,
            reason=sdk_response.reason_phrase,
            headers=sdk_response.headers,
            body=sdk_response.text,
            retry=retry if isinstance(retry, LinearRetry) else None,
            waits=waits if isinstance(waits, tuple) else None,
        )
    return None


def _server_message(body: str) -> str:
    """Return the error message an OpenAI-style body carries, else the start of the body, quoted.

    Only the body's first :data:`~aicoder.http.hints.MAX_BODY` characters are read, whatever its size.
    """
    body = body_prefix(body)
    try:
        data = json.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data["error"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        message = body
    text = " ".join(str(message).split()) or "(empty body)"
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 1] + "…"
    return f'"{text}"'


def _root_cause(exc: BaseException) -> str:
    """Name the deepest cause of ``exc`` without its text, which may hold the URL's query string."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    deepest = exc
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return f"{type(current).__name__}: {current.strerror}"
        deepest = current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(link for link in linked if isinstance(link, BaseException))
    return type(deepest).__name__


def _plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many
