"""The asyncio path: AsyncOpenAI and asendRequest through the same policy, pace and errors as the sync adapter."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from aicoder import LLMClient, RateLimitError, async_http_client, http_client, instant_waits
from aicoder.config import Config
from aicoder.http.async_transport import AsyncLinearBackoffTransport
from aicoder.http.cooldown import Cooldowns, default_cooldowns
from aicoder.http.destinations import destination_key
from aicoder.http.redis_pace import RedisPaces
from aicoder.http.transport import RETRY_EXTENSION
from aicoder.llm.errors import LLMError
from aicoder.testing import FakeClock, RateLimitedEndpoint
from tests.pacing import regrown_to_twenty_a_second, slowed_to_five_a_second
from tests.redis_server import redis_server
from tests.servers import Reply, completion, rate_limited, scripted_server

pytestmark = pytest.mark.anyio

KEY = "sk-test-async-0123456789"
FAST = Config(retry_count=2, retry_min_delay=0, retry_max_delay=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def async_sdk(base_url: str, config: Config = FAST, max_retries: int = 0) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(
        api_key=KEY, base_url=base_url, max_retries=max_retries, http_client=async_http_client(config)
    )
    try:
        yield sdk
    finally:
        await sdk.close()


def clients(base_url: str, model: str) -> LLMClient:
    config = Config(
        retry_count=2,
        retry_min_delay=0,
        retry_max_delay=0,
        openai_api_key=KEY,
        openai_base_url=base_url,
        openrouter_api_key=KEY,
        openrouter_base_url=base_url,
    )
    return LLMClient(model, config=config)


async def test_a_429_is_retried_after_its_hint_then_the_answer_arrives() -> None:
    with scripted_server(rate_limited({"retry-after-ms": "30"}), completion("hi")) as server:
        started = time.monotonic()
        async with async_sdk(f"{server.url}/v1") as sdk:
            reply = await sdk.chat.completions.create(model="m", messages=[])
        elapsed = time.monotonic() - started
    assert reply.choices[0].message.content == "hi"
    assert server.count == 2
    assert server.received[1].at - server.received[0].at >= 0.03
    assert elapsed < 1


async def test_the_final_429_carries_the_retry_state_and_stops_the_sdk_retrying() -> None:
    """Out of retries, the SDK gets the last 429, marked so that even max_retries=5 does not retry it."""
    with scripted_server(rate_limited()) as server, pytest.raises(openai.RateLimitError) as caught:
        async with async_sdk(f"{server.url}/v1", max_retries=5) as sdk:
            await sdk.chat.completions.create(model="m", messages=[])
    assert server.count == 3  # aicoder's two retries, none of the SDK's
    assert len(caught.value.response.extensions[RETRY_EXTENSION].history) == 2
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_a_final_429_whose_body_was_not_read_reaches_the_sdk_whole() -> None:
    """A compressed 429 body is not read for hints; handed on, the SDK still reads and decodes it."""
    body = gzip.compress(json.dumps({"error": {"message": "slow down, compressed"}}).encode())
    reply = Reply(429, body, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with scripted_server(reply) as server, pytest.raises(openai.RateLimitError) as caught:
        async with async_sdk(f"{server.url}/v1") as sdk:
            await sdk.chat.completions.create(model="m", messages=[])
    assert "slow down, compressed" in str(caught.value)
    assert server.count == 3


def test_the_sync_client_also_stops_the_sdk_retrying_an_answer() -> None:
    with scripted_server(rate_limited()) as server, pytest.raises(openai.RateLimitError):  # noqa: SIM117
        with openai.OpenAI(
            api_key=KEY, base_url=f"{server.url}/v1", max_retries=5, http_client=http_client(FAST)
        ) as sdk:
            sdk.chat.completions.create(model="m", messages=[])
    assert server.count == 3


async def test_an_sdk_that_retries_by_itself_is_named_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("aicoder.http.transport._warned_of_sdk_retries", False)
    with scripted_server(completion()) as server:
        async with async_http_client(FAST) as client:
            for count in ("0", "1", "2"):
                await client.post(f"{server.url}/v1/x", headers={"x-stainless-retry-count": count})
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "x-stainless-retry-count: 1" in warnings[0]
    assert "max_retries=0" in warnings[0]


async def test_the_async_client_goes_through_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the SDK's own client does: HTTP_PROXY is honoured, and a 429 from there is retried."""
    with scripted_server(rate_limited({"retry-after-ms": "1"}), completion("via proxy")) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with async_sdk("http://api.invalid/v1") as sdk:
            reply = await sdk.chat.completions.create(model="m", messages=[])
    assert reply.choices[0].message.content == "via proxy"
    assert [received.path for received in proxy.received] == ["http://api.invalid/v1/chat/completions"] * 2


@pytest.mark.parametrize("model", ["openai/m", "openrouter/m"])
async def test_asendrequest_fails_with_the_same_error_as_sendrequest(model: str) -> None:
    with scripted_server(rate_limited({"retry-after-ms": "5"})) as server:
        client = clients(f"{server.url}/v1", model)
        with pytest.raises(RateLimitError) as sync_error:
            await asyncio.to_thread(client.sendRequest, "s", "u")
        default_cooldowns().clear()  # the second starts from nothing known, as the first did
        with pytest.raises(RateLimitError) as async_error:
            await client.asendRequest("s", "u")
        await client.aclose()
    assert str(async_error.value) == str(sync_error.value)
    assert async_error.value.attempts == 3
    assert KEY not in str(async_error.value)
    assert server.count == 6


@pytest.mark.parametrize("model", ["openai/m", "openrouter/m"])
async def test_asendrequest_answers_and_names_other_errors(model: str) -> None:
    with scripted_server(completion("async hello"), Reply(500, b'{"error": {"message": "boom"}}')) as server:
        client = clients(f"{server.url}/v1", model)
        assert await client.asendRequest("s", "u") == "async hello"
        with pytest.raises(LLMError) as caught:
            await client.asendRequest("s", "u")
        await client.aclose()
    assert "HTTP 500" in str(caught.value)
    assert '"boom"' in str(caught.value)
    assert "Not retried" in str(caught.value)


async def test_an_attempt_past_its_deadline_times_out() -> None:
    with scripted_server(Reply(200, b"{}", delay=1.0)) as server:
        config = Config(request_timeout=0.2, openrouter_api_key=KEY, openrouter_base_url=f"{server.url}/v1")
        client = LLMClient("m", config=config)
        started = time.monotonic()
        with pytest.raises(LLMError, match="timed out: ReadTimeout"):
            await client.asendRequest("s", "u")
        elapsed = time.monotonic() - started
        await client.aclose()
    assert elapsed < 0.8


async def test_sync_and_async_requests_share_one_pace() -> None:
    """A hold an async request learns holds a sync request to the same destination."""
    hold = rate_limited({"retry-after-ms": "800"})
    with scripted_server(completion(), hold, completion(), completion()) as server:
        url = f"{server.url}/v1"
        config = Config(retry_count=2, retry_min_delay=0, retry_max_delay=0, retry_max_hint=60)
        async with async_sdk(url, config) as sdk:
            with instant_waits() as waits:
                await sdk.chat.completions.create(model="m", messages=[])  # the probe
                await sdk.chat.completions.create(model="m", messages=[])  # held, then retried
                with openai.OpenAI(api_key=KEY, base_url=url, max_retries=0, http_client=http_client(FAST)) as sync:
                    sync.chat.completions.create(model="m", messages=[])
    assert server.count == 4
    assert waits[0] == pytest.approx(0.8)  # the async retry waits for the hint
    assert waits[-1] > 0.5  # the sync request waits for the same hold: the clock has not moved


async def test_instant_waits_skips_async_waits() -> None:
    with scripted_server(rate_limited({"Retry-After": "3"}), completion()) as server:
        started = time.monotonic()
        async with async_sdk(f"{server.url}/v1") as sdk:
            with instant_waits() as waits:
                await sdk.chat.completions.create(model="m", messages=[])
    assert waits[0] == 3.0  # the hint, then (as in sync code) the hold it set for every request there
    assert waits[1] == pytest.approx(3.0, abs=0.1)
    assert time.monotonic() - started < 1


async def test_a_cancelled_backoff_ends_at_once() -> None:
    """A request asleep in its 5-s backoff, cancelled, ends with the clock standing still."""
    clock = FakeClock()
    transport = AsyncLinearBackoffTransport(Config(retry_count=2, retry_max_hint=60), cooldowns=Cooldowns(clock=clock))
    with scripted_server(rate_limited({"retry-after-ms": "5000"})) as server:
        async with openai.AsyncOpenAI(
            api_key=KEY, base_url=f"{server.url}/v1", max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        ) as sdk:
            task = asyncio.create_task(sdk.chat.completions.create(model="m", messages=[]))
            await clock.asettle([task])  # asleep in the backoff
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
            assert clock.now() == 0.0
        assert server.count == 1


async def test_a_cancelled_turn_ends_at_once_and_is_not_counted_as_sent() -> None:
    """A task asleep on a 5-s hold, cancelled, ends with the clock standing still: its turn is given up."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock)
    key = destination_key("https://api.test", {"authorization": f"Bearer {KEY}"})
    probe = cooldowns.take_turn(key)
    cooldowns.observe(probe, 200, {})
    pace = cooldowns.pace(key)
    assert pace is not None
    pace.hold(5.0, 0.0)
    sends = len(pace.feedback._sends)
    task = asyncio.create_task(cooldowns.atake_turn(key))
    await clock.asettle([task])
    destination = probe.destination
    assert len(destination.pending) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert clock.now() == 0.0
    assert not destination.pending
    assert len(pace.feedback._sends) == sends


async def test_a_regrown_rate_wakes_tasks_awaiting_their_old_turns() -> None:
    """Tasks queued at 0.2 s intervals come at 0.05 s intervals once the rate has grown to 20 a second."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=0.01)
    key = destination_key("https://api.test", {})
    first = slowed_to_five_a_second(cooldowns, key)

    async def take_turn() -> float:
        await cooldowns.atake_turn(key)
        return clock.now()

    waiting = [asyncio.create_task(take_turn()) for _ in range(3)]  # 0.2, 0.4 and 0.6 s away
    await clock.asettle(waiting)
    regrown_to_twenty_a_second(cooldowns, key, first)
    await clock.asettle(waiting)
    for _ in range(6):
        clock.advance(0.05)
        await clock.asettle(waiting)
    came = await asyncio.gather(*waiting)
    assert came == [pytest.approx(0.2), pytest.approx(0.25), pytest.approx(0.3)]


async def test_the_loop_runs_on_while_256_tasks_wait_on_a_hold() -> None:
    cooldowns = Cooldowns()
    key = destination_key("https://api.test", {})
    cooldowns.observe(cooldowns.take_turn(key), 200, {})
    pace = cooldowns.pace(key)
    assert pace is not None
    pace.hold(time.monotonic() + 0.2, time.monotonic())
    lags: list[float] = []

    async def ticker() -> None:
        while len(lags) < 15:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - before - 0.01)

    turns = await asyncio.gather(ticker(), *(cooldowns.atake_turn(key) for _ in range(256)))
    # A loop blocked by the hold would lag 0.2 s. The first tick waits while 256 tasks take their turns, which
    # takes tens of milliseconds on a loaded machine: the ticks after it are the ones spent waiting on the hold.
    assert max(lags[1:]) < 0.1
    assert min(turn.due for turn in turns[1:]) >= pace.held_until - 0.2 + 0.19


async def test_the_built_in_endpoint_serves_async_tests(
    aicoder_endpoint_factory: Callable[..., RateLimitedEndpoint],
) -> None:
    """The pytest fixtures work in async tests: 30 concurrent requests against 200/s, none lost, none early."""
    aicoder_endpoint = aicoder_endpoint_factory(rate=200, burst=5)
    config = Config(openrouter_api_key=KEY, openrouter_base_url=aicoder_endpoint.base_url)
    client = LLMClient("m", config=config)
    answers = await asyncio.gather(*(client.asendRequest("s", f"u{n}") for n in range(30)))
    await client.aclose()
    assert len(answers) == 30
    stats = aicoder_endpoint.stats()
    assert stats.ok == 30 and stats.early == 0
    # What the first answer says remains is spent from 200/s up, into the endpoint's burst of 5: a 429 or two,
    # a few more when a loaded machine delays the answers that end the spending; never a burst's worth.
    assert stats.rate_limited < 5


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as (url, _):
        yield url


async def test_a_cancelled_turn_is_withdrawn_from_redis(redis_url: str) -> None:
    shared = RedisPaces(redis_url)
    try:
        cooldowns = Cooldowns(redis=shared, probe_timeout=0.01)
        key = destination_key("https://api.test", {"authorization": f"Bearer {KEY}"})
        cooldowns.observe(cooldowns.take_turn(key), 200, {})
        pace = cooldowns.pace(key)
        assert pace is not None
        assert pace.hold(time.monotonic() + 5, time.monotonic())
        task = asyncio.create_task(cooldowns.atake_turn(key))
        sends = f"aicoder:{{{key.fingerprint}}}:sends"
        while shared.client.zcard(sends) < 2:  # the probe's ticket, and the waiting turn's
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # the withdrawal runs once the reservation's thread is done
        assert shared.client.zcard(sends) == 1
    finally:
        shared.close()


async def test_async_requests_take_their_turns_from_redis(redis_url: str) -> None:
    """Through a shared pace, a hold learnt by the sync adapter holds async requests of another 'process'."""
    shared = RedisPaces(redis_url)
    try:
        with scripted_server(completion(), rate_limited({"retry-after-ms": "300"}), completion()) as server:
            transport = AsyncLinearBackoffTransport(FAST, cooldowns=Cooldowns(redis=shared, probe_timeout=0.01))
            started = time.monotonic()
            async with openai.AsyncOpenAI(
                api_key=KEY,
                base_url=f"{server.url}/v1",
                max_retries=0,
                http_client=httpx2.AsyncClient(transport=transport),
            ) as sdk:
                await sdk.chat.completions.create(model="m", messages=[])
                await sdk.chat.completions.create(model="m", messages=[])
            assert server.count == 3
            assert server.received[2].at - server.received[1].at >= 0.29
            assert time.monotonic() - started < 2
    finally:
        shared.close()


def test_ctrl_c_ends_asyncio_run_promptly(tmp_path: Path) -> None:
    """A task waiting out a long hint is cancelled by Ctrl-C at once; asyncio.run ends with KeyboardInterrupt."""
    with scripted_server(rate_limited({"retry-after": "60"})) as server:
        script = tmp_path / "run.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import faulthandler; faulthandler.dump_traceback_later(8, exit=True)  # a hang shows where
                import signal  # as in a terminal: run in a background job, the tests inherit SIGINT ignored
                signal.signal(signal.SIGINT, signal.default_int_handler)
                import asyncio, openai
                from aicoder import Config, async_http_client
                config = Config(retry_count=3, retry_max_hint=120)
                sdk = openai.AsyncOpenAI(api_key="{KEY}", base_url="{server.url}/v1", max_retries=0,
                                         http_client=async_http_client(config))
                asyncio.run(sdk.chat.completions.create(model="m", messages=[]))
                """
            )
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        process = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while server.count < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.count == 1
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # faulthandler ends it first; never leave it running
            process.kill()
            _, stderr = process.communicate()
        elapsed = time.monotonic() - started
    assert elapsed < 3, stderr.decode(errors="replace")[-4000:]  # not the 60 s the hint asked for
    assert process.returncode != 0
    assert b"KeyboardInterrupt" in stderr
