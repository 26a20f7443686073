"""Whole batches against the built-in endpoint, in each dialect whose waits are shorter than a second.

The pace's rules are tested one by one elsewhere; this is where a rule that is
right for one dialect and wrong for another shows: a batch that loses requests,
sends before a stated time, or keeps running into the limit.
"""

from __future__ import annotations

import pytest

from aicoder.config import Config
from aicoder.simulate import simulate


@pytest.mark.parametrize("dialect", ["openai", "openrouter", "retry-after-ms"])
def test_a_batch_loses_nothing_and_sends_nothing_early(dialect: str) -> None:
    """80 requests from 16 threads at 200 a second, burst 5: all complete, none before a stated time, and the
    endpoint refuses few. (A pace that took OpenRouter's exhausted quota for a fixed window, and so never cut
    its rate, lost 3 and drew 53 429s.)"""
    result = simulate(
        rate=200, burst=5, requests=80, concurrency=16, provider="openrouter", config=Config(), dialect=dialect
    )
    assert (result.failed, result.early) == (0, 0)
    assert result.rate_limited <= 0.25 * result.succeeded
