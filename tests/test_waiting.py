"""instant_waits() runs the real retry logic without sleeping, and records the waits."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aicoder.config import Config
from aicoder.http.waiting import Signal, instant_waits, sleep
from aicoder.llm.api_client import LLMClient
from aicoder.testing import FakeClock
from tests.servers import completion, rate_limited, scripted_server


def test_real_retries_record_scheduled_waits_without_sleeping() -> None:
    """Against a real server, three 429s record 2, 16 and 30 s and take well under a second.

    The 429s also set the destination's pace, so the last retry's short wait for its turn is recorded too.
    """
    with scripted_server(rate_limited(), rate_limited(), rate_limited(), completion("done")) as server:
        config = Config(retry_count=3, openrouter_api_key="k", openrouter_base_url=f"{server.url}/v1")
        started = time.monotonic()
        with instant_waits() as waits:
            assert LLMClient("test-model", config=config).sendRequest("s", "u") == "done"
        assert time.monotonic() - started < 1.0
    assert waits[:3] == [2.0, 16.0, 30.0]
    assert all(0 < wait < 1 for wait in waits[3:])
    assert server.count == 4


def test_waits_in_other_threads_are_recorded() -> None:
    """The mode is process-wide: worker threads do not sleep either."""
    with instant_waits() as waits:
        worker = threading.Thread(target=sleep, args=(60,))
        worker.start()
        worker.join(timeout=1)
        assert not worker.is_alive()
    assert waits == [60]


def test_nesting_restores_the_outer_recorder() -> None:
    """Leaving an inner block restores the outer one, and leaving the outer restores real sleeping."""
    with instant_waits() as outer:
        with instant_waits() as inner:
            sleep(1)
        sleep(2)
    assert (outer, inner) == ([2], [1])
    started = time.monotonic()
    sleep(0.02)
    assert time.monotonic() - started >= 0.02


def test_restored_after_an_exception() -> None:
    """An exception inside the block still restores real sleeping."""
    with pytest.raises(ValueError), instant_waits():
        raise ValueError
    started = time.monotonic()
    sleep(0.02)
    assert time.monotonic() - started >= 0.02


# --- the fake clock ---


def test_a_fake_clock_wakes_each_sleeper_when_its_time_comes() -> None:
    clock = FakeClock(10.0)
    woke: list[tuple[str, float]] = []
    sleepers = [
        threading.Thread(
            target=lambda name=name, seconds=seconds: (clock.sleep(seconds), woke.append((name, clock.now())))
        )
        for name, seconds in (("short", 1.0), ("long", 3.0))
    ]
    for thread in sleepers:
        thread.start()
    clock.wait_until_asleep(2)
    clock.advance(2.0)
    clock.settle(sleepers)
    assert woke == [("short", 12.0)]
    clock.advance(1.0)
    clock.settle(sleepers)
    assert woke == [("short", 12.0), ("long", 13.0)]


def test_a_fake_clock_sleeper_wakes_early_when_what_it_waits_for_is_set() -> None:
    clock, signal = FakeClock(), Signal()
    woken: list[bool] = []
    thread = threading.Thread(target=lambda: woken.append(clock.sleep(5.0, unless=signal)))
    thread.start()
    clock.wait_until_asleep(1)
    signal.set()
    thread.join(5)
    assert woken == [True] and clock.now() == 0.0


@pytest.mark.anyio
async def test_a_fake_clock_wakes_tasks_too() -> None:
    clock, signal = FakeClock(), Signal()
    timed = asyncio.ensure_future(clock.asleep(2.0))
    hurried = asyncio.ensure_future(clock.asleep(2.0, unless=signal))
    await clock.asettle([timed, hurried])
    signal.set()
    assert await asyncio.wait_for(hurried, 5) is True
    assert not timed.done()
    clock.advance(2.0)
    assert await asyncio.wait_for(timed, 5) is False


def test_a_fake_clock_says_what_is_wrong() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="advance: seconds must be 0 or more"):
        clock.advance(-1)
    with pytest.raises(TimeoutError, match="0 of 1 threads or tasks asleep"):
        clock.wait_until_asleep(1, timeout=0.01)
