"""A request's token cost is estimated as OpenAI counts it: prompt characters / 4, plus max_tokens, times n."""

from __future__ import annotations

import json

import pytest

from aicoder.http.tokens import MAX_PARSED_BODY, RequestCost, estimate_cost


def cost(**request: object) -> RequestCost | None:
    return estimate_cost(json.dumps(request))


def test_prompt_characters_over_four_plus_max_tokens() -> None:
    """40 characters of messages and max_tokens 100: 10 + 100 tokens."""
    messages = [{"role": "system", "content": "x" * 15}, {"role": "user", "content": "y" * 25}]
    assert cost(model="m", messages=messages, max_tokens=100) == RequestCost(10, 100)


def test_n_multiplies_and_max_completion_tokens_counts() -> None:
    """Two choices cost twice; ``max_completion_tokens`` is read like ``max_tokens``."""
    found = cost(messages=[{"role": "user", "content": "z" * 8}], max_completion_tokens=50, n=2)
    assert found == RequestCost(4, 100)
    assert found.total == 104


def test_content_parts_and_other_prompt_fields_count() -> None:
    """Text in content parts, Anthropic's ``system`` and the Responses API's ``input`` are all prompt."""
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a" * 8}, {"type": "image_url", "image_url": {"url": "u"}}],
        }
    ]
    assert cost(messages=parts) == RequestCost(3, 0)  # 8 characters of text and the 1-character url
    assert cost(system="s" * 4, input="i" * 4) == RequestCost(2, 0)


def test_each_dimension_takes_its_part() -> None:
    """A quota of input tokens takes the prompt, of output tokens the room to answer, of requests one."""
    request = RequestCost(10, 90)
    assert [request.of(d) for d in ("requests", "tokens", "input-tokens", "output-tokens")] == [1, 100, 10, 90]


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"[" * 100_000, b'{"max_tokens": true}'])
def test_what_is_not_a_completion_request_costs_nothing_known(body: bytes) -> None:
    """Non-JSON, deeply nested, or non-object bodies are not estimated; a bool is no max_tokens."""
    found = estimate_cost(body)
    assert found is None or found == RequestCost(0, 0)


def test_text_and_bytes_with_white_space_around_cost_the_same() -> None:
    """The body as bytes or text, with white space before or after it, or bytes that are not UTF-8 (no estimate)."""
    body = '{"messages": [{"role": "user", "content": "12345678"}], "max_tokens": 3}'
    expected = RequestCost(2, 3)
    assert estimate_cost(body) == estimate_cost(body.encode()) == expected
    assert estimate_cost(f"\n {body}\n") == estimate_cost(f"\r\n{body}".encode()) == expected
    assert estimate_cost(b'{"messages": "\xff"}') is None


def test_huge_bodies_are_estimated_from_their_size() -> None:
    """A body past 1 MiB is not parsed: its size / 4 is the estimate."""
    body = b" " * (MAX_PARSED_BODY + 4)
    assert estimate_cost(body) == RequestCost((MAX_PARSED_BODY + 4) // 4, 0)
