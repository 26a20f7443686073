"""The SDKs users already have, for real, through aicoder's clients, against the built-in endpoint.

Each runs a batch from 8 threads (or 64 asyncio tasks) against a limit of 100 a
second (200 for Gemini, whose 429s state whole seconds), in its own API and
dialect, with its own retries off: every request completes, none goes before a
time the endpoint stated, and the SDK adds no request of its own (the endpoint
saw only what aicoder sent: the batch and aicoder's retries).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from aicoder.config import Config
from aicoder.http.classic_httpx import async_httpx_client, httpx_client
from aicoder.http.clients import async_http_client, http_client
from aicoder.instrumentation import RetryDetails
from aicoder.testing import RateLimitedEndpoint
from tests.conftest import assert_all_through_aicoder

if TYPE_CHECKING:  # each SDK is imported by its tests: collecting the unit suite imports none of them
    import httpx2
    from google import genai
    from langchain_openai import ChatOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]
#: Real SDKs, end to end: integration tests, beside the unit suite (``-m "not integration"`` leaves them out).
pytestmark = pytest.mark.integration
REQUESTS = 40


def test_groq_sync_from_eight_threads(retries: list[RetryDetails]) -> None:
    """groq 1.x is built on classic httpx: ``Groq(http_client=aicoder.httpx_client(), max_retries=0)``."""
    import groq

    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        client = groq.Groq(
            api_key="gsk-local", base_url=endpoint.url, http_client=httpx_client(Config()), max_retries=0
        )
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: client.chat.completions.create(model="m", messages=MESSAGES), range(REQUESTS))
            )
        client.close()
        stats = endpoint.stats()
    assert all(answer.choices[0].message.content for answer in answers)
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_groq_async_from_64_tasks(retries: list[RetryDetails]) -> None:
    """``AsyncGroq(http_client=aicoder.async_httpx_client(), max_retries=0)``."""
    import groq

    async def batch(url: str) -> list[object]:
        client = groq.AsyncGroq(
            api_key="gsk-local", base_url=url, http_client=async_httpx_client(Config()), max_retries=0
        )
        async with client:
            semaphore = asyncio.Semaphore(64)

            async def one() -> object:
                async with semaphore:
                    return await client.chat.completions.create(model="m", messages=MESSAGES)

            return await asyncio.gather(*(one() for _ in range(REQUESTS)))

    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        answers = asyncio.run(batch(endpoint.url))
        stats = endpoint.stats()
    assert len(answers) == REQUESTS
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_anthropic_sync_from_eight_threads(retries: list[RetryDetails]) -> None:
    """anthropic 2.x is built on httpx2: ``Anthropic(http_client=aicoder.http_client(), max_retries=0)``, against
    the Messages API in Anthropic's own dialect (``anthropic-ratelimit-*``, integer ``retry-after``)."""
    import anthropic

    with RateLimitedEndpoint(rate=100, burst=5, dialect="anthropic") as endpoint:
        client = anthropic.Anthropic(
            api_key="sk-ant-local", base_url=endpoint.url, http_client=http_client(Config()), max_retries=0
        )
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda _: client.messages.create(model="m", max_tokens=16, messages=MESSAGES), range(REQUESTS))
            )
        client.close()
        stats = endpoint.stats()
    assert all(answer.content[0].text == "echo: hi" for answer in answers)  # type: ignore[union-attr]
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_anthropic_async_from_64_tasks(retries: list[RetryDetails]) -> None:
    """``AsyncAnthropic(http_client=aicoder.async_http_client(), max_retries=0)``."""
    import anthropic

    async def batch(url: str) -> list[object]:
        client = anthropic.AsyncAnthropic(
            api_key="sk-ant-local", base_url=url, http_client=async_http_client(Config()), max_retries=0
        )
        async with client:
            return await asyncio.gather(
                *(client.messages.create(model="m", max_tokens=16, messages=MESSAGES) for _ in range(REQUESTS))
            )

    with RateLimitedEndpoint(rate=100, burst=5, dialect="anthropic") as endpoint:
        answers = asyncio.run(batch(endpoint.url))
        stats = endpoint.stats()
    assert len(answers) == REQUESTS
    assert_all_through_aicoder(stats, retries, REQUESTS)


def _gemini(url: str, *, asynchronous: bool = False) -> tuple[genai.Client, httpx2.Client | httpx2.AsyncClient]:
    """A google-genai client over one of aicoder's clients, which the caller closes (genai leaves a client it
    was given open)."""
    from google import genai
    from google.genai import types

    http = async_http_client(Config()) if asynchronous else http_client(Config())
    given = {"httpx_async_client": http} if asynchronous else {"httpx_client": http}
    return genai.Client(api_key="AIza-local", http_options=types.HttpOptions(base_url=url, **given)), http


def test_google_genai_sync_from_eight_threads(retries: list[RetryDetails]) -> None:
    """google-genai 3.x (httpx2; its own retries are off unless asked for): ``HttpOptions(httpx_client=…,
    httpx_async_client=…)``, against generateContent, whose 429s carry only a RetryInfo in the body."""
    with RateLimitedEndpoint(rate=200, burst=5, dialect="gemini") as endpoint:
        client, http = _gemini(endpoint.url)
        with http, ThreadPoolExecutor(8) as pool:  # type: ignore[union-attr]
            answers = list(
                pool.map(lambda _: client.models.generate_content(model="m", contents="hi"), range(REQUESTS))
            )
        stats = endpoint.stats()
    assert all(answer.text == "echo: hi" for answer in answers)
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_google_genai_async_from_64_tasks(retries: list[RetryDetails]) -> None:
    async def batch(url: str) -> list[object]:
        client, http = _gemini(url, asynchronous=True)
        async with http:  # type: ignore[union-attr]
            return await asyncio.gather(
                *(client.aio.models.generate_content(model="m", contents="hi") for _ in range(REQUESTS))
            )

    with RateLimitedEndpoint(rate=200, burst=5, dialect="gemini") as endpoint:
        answers = asyncio.run(batch(endpoint.url))
        stats = endpoint.stats()
    assert len(answers) == REQUESTS
    assert_all_through_aicoder(stats, retries, REQUESTS)


def _chat(url: str, *, asynchronous: bool = True) -> ChatOpenAI:
    """LangChain's ChatOpenAI with aicoder's clients: ``http_client`` covers only the sync calls, and
    ``http_async_client`` the async ones (left out, ``asynchronous=False``, to show the trap)."""
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    clients = {"http_client": http_client(Config())}
    if asynchronous:
        clients["http_async_client"] = async_http_client(Config())  # type: ignore[assignment]
    return ChatOpenAI(model="m", api_key=SecretStr("sk-local"), base_url=url, max_retries=0, **clients)  # type: ignore[arg-type]


def test_langchain_sync_from_eight_threads(retries: list[RetryDetails]) -> None:
    """``ChatOpenAI(http_client=aicoder.http_client(), http_async_client=…, max_retries=0)``: invoke."""
    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        llm = _chat(endpoint.base_url)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: llm.invoke("hi"), range(REQUESTS)))
        llm.root_client.close()
        asyncio.run(llm.root_async_client.close())  # type: ignore[union-attr]
        stats = endpoint.stats()
    assert all(answer.content == "echo: hi" for answer in answers)
    assert_all_through_aicoder(stats, retries, REQUESTS)


async def _ainvoke_all(llm: ChatOpenAI) -> list[object]:
    try:
        return await asyncio.gather(*(llm.ainvoke("hi") for _ in range(REQUESTS)), return_exceptions=True)
    finally:
        llm.root_client.close()  # type: ignore[union-attr]
        await llm.root_async_client.close()  # type: ignore[union-attr]


def test_langchain_async_from_64_tasks(retries: list[RetryDetails]) -> None:
    """ainvoke goes through ``http_async_client``."""
    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        answers = asyncio.run(_ainvoke_all(_chat(endpoint.base_url)))
        stats = endpoint.stats()
    assert not [answer for answer in answers if isinstance(answer, Exception)]
    assert_all_through_aicoder(stats, retries, REQUESTS)


def test_langchain_given_only_http_client_sends_its_async_calls_around_aicoder(retries: list[RetryDetails]) -> None:
    """The trap docs/integrations.md warns of: without ``http_async_client``, ainvoke takes the SDK's own
    client. aicoder never sees those calls: nothing paces them, and every 429 is the SDK's to retry."""
    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        answers = asyncio.run(_ainvoke_all(_chat(endpoint.base_url, asynchronous=False)))
        stats = endpoint.stats()
    assert retries == []  # aicoder retried nothing
    assert stats.rate_limited > 0
    assert sum(isinstance(answer, Exception) for answer in answers) == stats.rate_limited  # with max_retries=0
