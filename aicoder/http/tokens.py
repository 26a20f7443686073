"""What a request will cost against a token limit, estimated before it is sent.

Servers with token limits (OpenAI's TPM, Anthropic's input and output tokens per
minute) charge a request when it arrives, before the model has written a word,
so they estimate too. OpenAI documents its estimate: the prompt's characters / 4,
plus ``max_tokens`` (or ``max_completion_tokens``), times ``n``. aicoder uses the
same rule, so its pace and the server's count agree, and its built-in endpoint
counts the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

__all__ = ["RequestCost", "estimate_cost"]

#: Bodies larger than this are not parsed: their cost is estimated from their size alone.
MAX_PARSED_BODY = 1 << 20
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_PROMPT_FIELDS = ("messages", "input", "prompt", "system", "instructions")
_DECODER = json.JSONDecoder()


class RequestCost(NamedTuple):
    """The tokens a request is charged: ``input`` (the prompt) and ``output`` (its room to answer)."""

    input: int
    output: int

    @property
    def total(self) -> int:
        return self.input + self.output

    def of(self, dimension: str) -> int:
        """The units this request takes from a quota of ``dimension`` (``requests``, ``tokens``, …)."""
        if dimension == "input-tokens":
            return self.input
        if dimension == "output-tokens":
            return self.output
        if dimension == "tokens":
            return self.total
        return 1


def estimate_cost(body: bytes | str | None) -> RequestCost | None:
    """Estimate the tokens a JSON completion request will be charged, or ``None`` if ``body`` is not one.

    ``(prompt characters / 4 + max_tokens) * n``, rounded up: the prompt is every
    string under ``messages``, ``input``, ``prompt``, ``system`` and ``instructions``.
    """
    if not body:
        return None
    if len(body) > MAX_PARSED_BODY:
        return RequestCost(math.ceil(len(body) / 4), 0)
    try:
        text = body.decode() if isinstance(body, bytes) else body
        # The decoder itself: json.loads would also guess the bytes' encoding and check for trailing data.
        request: Any = _DECODER.raw_decode(text.lstrip() if text[0].isspace() else text)[0]
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(request, dict):
        return None
    # Loops, not generators: this runs for every request to a server with a token limit.
    characters = output = 0
    for field in _PROMPT_FIELDS:
        value = request.get(field)
        if value is not None:
            characters += len(value) if isinstance(value, str) else _characters(value)
    for field in _OUTPUT_FIELDS:
        if (tokens := _whole(request.get(field))) is not None:
            output = tokens
            break
    choices = _whole(request.get("n")) or 1
    return RequestCost(-(-characters // 4) * choices, output * choices)


def _whole(value: object) -> int | None:
    """``value`` if it is a whole number >= 0 (not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


#: Keys whose strings are no part of the prompt.
_NOT_PROMPT = frozenset(("role", "type", "name", "id", "tool_call_id", "cache_control"))


def _characters(value: object, depth: int = 0) -> int:
    """The characters of every string in ``value``, however nested (message lists, content parts), to a sane
    depth."""
    if isinstance(value, str):
        return len(value)
    total = 0
    if depth >= 8:
        return total
    if isinstance(value, list):
        for item in value:
            total += len(item) if isinstance(item, str) else _characters(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_PROMPT:
                total += len(item) if isinstance(item, str) else _characters(item, depth + 1)
    return total
