"""What a real endpoint says of its limits: one minimal request, and its answer's rate-limit headers read.

The answer to "what is my real limit?" is in the headers of any answer, in the
server's own dialect. :func:`probe_limits` asks for one token, with no retry, and
returns what they say, with the pace aicoder would take from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests

from aicoder.config import Config
from aicoder.http.hints import ServerHint, server_hint
from aicoder.http.pace import MAX_PACED_WINDOW, SAFETY_MARGIN, requests_remaining
from aicoder.http.quotas import Quota, read_quotas
from aicoder.http.redaction import redact, safe_url
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import LLMError

__all__ = ["Limits", "probe_limits"]

#: How long the probe waits for its answer, in seconds.
PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Limits:
    """What one answer from ``url`` said: its status, the limits in its headers, and for a 429 its wait."""

    url: str
    model: str
    status: int
    quotas: tuple[Quota, ...]
    hint: ServerHint | None

    @property
    def dialects(self) -> tuple[str, ...]:
        """The rate-limit dialects the headers speak, in the order first met."""
        return tuple(dict.fromkeys(quota.dialect for quota in self.quotas))

    @property
    def paces(self) -> dict[str, float]:
        """Units a second aicoder would pace at, per dimension: the tightest quota of a minute or less, less
        its safety margin."""
        paces: dict[str, float] = {}
        for quota in self.quotas:
            rate = quota.rate
            if rate and quota.window and quota.window <= MAX_PACED_WINDOW:
                paced = rate * (1 - SAFETY_MARGIN)
                paces[quota.dimension] = min(paces.get(quota.dimension, paced), paced)
        return paces

    @property
    def spends_remaining(self) -> bool:
        """Whether aicoder would spend what the answer says remains faster than the pace: not where the server
        states whole-second resets (its refusals would cost a second), nor where it says nothing remains."""
        return requests_remaining(self.quotas)[0] is not None


def probe_limits(model: str, config: Config | None = None) -> Limits:
    """Send one chat completion of at most one token to ``model``'s endpoint (as :class:`LLMClient` would
    choose it), without retrying, and return what its answer says of the limits.

    Raises :class:`LLMError` if no answer comes; the message names the URL, never the key.
    """
    client = LLMClient(model, config=config)
    provider = client.provider
    assert provider.base_url is not None
    url = f"{provider.base_url.rstrip('/')}/chat/completions"
    body = {"model": client.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        with requests.Session() as session:
            answer = session.post(
                url, json=body, headers={"Authorization": f"Bearer {provider.api_key}"}, timeout=PROBE_TIMEOUT
            )
    except requests.RequestException as error:
        message = f"no answer from {safe_url(url)}: {type(error).__name__}"
        raise LLMError(redact(message, (provider.api_key,)), provider=provider.name, url=safe_url(url)) from error
    hint = server_hint(answer.headers, answer.content[:65536]) if answer.status_code == 429 else None
    return Limits(safe_url(url), client.model, answer.status_code, tuple(read_quotas(answer.headers)), hint)
