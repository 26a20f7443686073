"""The LiteLLM SDK (on classic httpx) through aicoder's classic clients, for real, against the endpoint.

LiteLLM fetches its model price map from the internet at import unless told not to: the tests have no
network, so the variable is set before the import, as a user's offline job must set it too.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import pytest

from aicoder.config import Config
from aicoder.http.classic_httpx import async_httpx_client, httpx_client
from aicoder.instrumentation import RetryDetails
from aicoder.testing import RateLimitedEndpoint
from tests.conftest import assert_all_through_aicoder

MESSAGES = [{"role": "user", "content": "hi"}]
#: Real SDKs, end to end: integration tests, beside the unit suite (``-m "not integration"`` leaves them out).
pytestmark = pytest.mark.integration
REQUESTS = 40


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    """LiteLLM, imported with its price map kept local (imported here: collecting the unit suite skips it)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def test_litellm_completion_from_eight_threads(litellm: ModuleType, retries: list[RetryDetails]) -> None:
    """``litellm.client_session = aicoder.httpx_client()``, and ``max_retries=0`` on each call."""
    litellm.client_session = httpx_client(Config())
    try:
        with RateLimitedEndpoint(rate=100, burst=5) as endpoint:

            def complete(_: int) -> str:
                answer = litellm.completion(
                    model="openai/m", api_base=endpoint.base_url, api_key="sk-local", messages=MESSAGES, max_retries=0
                )
                return str(answer.choices[0].message.content)  # type: ignore[union-attr]

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(complete, range(REQUESTS)))
            stats = endpoint.stats()
    finally:
        litellm.client_session.close()
        litellm.client_session = None
    assert answers == ["echo: hi"] * REQUESTS
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_litellm_acompletion_from_64_tasks(litellm: ModuleType, retries: list[RetryDetails]) -> None:
    """``litellm.aclient_session = aicoder.async_httpx_client()``."""

    async def batch(url: str) -> list[object]:
        litellm.aclient_session = async_httpx_client(Config())
        try:
            return await asyncio.gather(
                *(
                    litellm.acompletion(
                        model="openai/m", api_base=url, api_key="sk-local", messages=MESSAGES, max_retries=0
                    )
                    for _ in range(REQUESTS)
                )
            )
        finally:
            await litellm.aclient_session.aclose()
            litellm.aclient_session = None

    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        answers = asyncio.run(batch(endpoint.base_url))
        stats = endpoint.stats()
    assert len(answers) == REQUESTS
    assert_all_through_aicoder(stats, retries, REQUESTS)
