"""instant_waits() runs the real retry logic without sleeping, and records the waits."""

from __future__ import annotations

import threading
import time

import pytest

from aicoder.config import Config
from aicoder.http.waiting import instant_waits, sleep
from aicoder.llm.api_client import LLMClient
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
