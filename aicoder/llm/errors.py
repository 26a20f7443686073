"""The errors ``LLMClient`` raises: one base, so a caller can tell a rate limit from a bad key without reading text."""

from __future__ import annotations

__all__ = ["LLMError", "RateLimitError"]


class LLMError(RuntimeError):
    """An LLM request failed; the message says what happened and what to change.

    ``status`` is the HTTP status of the final answer, or ``None`` when there was
    no answer (a refused connection, a timeout). ``url`` has no user info and no
    query string. ``provider`` is ``"openai"`` or ``"openrouter"``. The original
    error is chained as ``__cause__``, scrubbed of secrets.
    """

    def __init__(self, message: str, *, provider: str, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.url = url


class RateLimitError(LLMError):
    """A 429 that retrying could not get past: out of retries, or a hint longer than ``LLM_RETRY_MAX_HINT``.

    ``attempts`` counts the requests sent, the first included. ``waits`` are the
    seconds waited before each retry, queueing behind other requests included.
    ``hint`` is the wait the server asked for last, in seconds, and ``retry_at``
    the wall-clock time (Unix seconds) it named, each ``None`` if it said none.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        url: str = "",
        attempts: int = 1,
        waits: tuple[float, ...] = (),
        hint: float | None = None,
        retry_at: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=429, url=url)
        self.attempts = attempts
        self.waits = waits
        self.hint = hint
        self.retry_at = retry_at
