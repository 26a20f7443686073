"""The shared per-destination cooldown: hold, staggered release, relaxation, keying, interruption."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from aicoder.config import Config
from aicoder.llm.cooldown import RELAX_FACTOR, SAFETY_MARGIN, Cooldowns, destination_key, shared_cooldowns
from aicoder.llm.hints import ServerHint
from aicoder.llm.retry import LinearBackoffAdapter, retrying_session
from aicoder.testing import RateLimitedEndpoint

KEY = "http://api.test sk"


class FakeTime:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def cooldowns(fake: FakeTime) -> Cooldowns:
    return Cooldowns(clock=fake.clock, sleep=fake.sleep, probe_timeout=0.01)


def rate_headers(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def turns(cooldowns: Cooldowns, fake: FakeTime, count: int, key: str = KEY) -> list[float]:
    """Take ``count`` first-attempt turns one after another; return when each was granted."""
    granted = []
    for _ in range(count):
        cooldowns.take_turn(key)
        granted.append(round(fake.now - 1000.0, 6))
    return granted


# --- keying ---


def test_same_origin_and_key_share_a_destination() -> None:
    """Path and query do not matter; scheme, host, port and credentials do."""
    auth = {"Authorization": "Bearer sk-SENTINEL"}
    key = destination_key("https://api.test/v1/chat/completions?x=1", auth)
    assert key == destination_key("https://api.test/v1/models", auth)
    assert key != destination_key("https://api.test/v1/models", {"Authorization": "Bearer sk-other"})
    assert key != destination_key("https://api.test:8443/v1/models", auth)
    assert key != destination_key("http://api.test/v1/models", auth)
    assert key != destination_key("https://api.test/v1/models", {"api-key": "sk-SENTINEL"})


def test_key_never_holds_the_credentials() -> None:
    """The destination key is a salted hash of the credentials, not the credentials."""
    key = destination_key("https://api.test/v1", {"Authorization": "Bearer sk-SENTINEL", "x-api-key": "xk-SENTINEL"})
    assert "SENTINEL" not in key
    assert key.startswith("https://api.test ")


def test_memory_is_bounded() -> None:
    """Only the most recently used destinations are remembered."""
    cooldowns = Cooldowns(max_destinations=3)
    for n in range(10):
        cooldowns.take_turn(f"http://host{n}.test k")
    assert len(cooldowns) == 3
    assert cooldowns.take_turn("http://host0.test k").first_answer is not None  # forgotten: a new probe


# --- first contact ---


def test_first_request_probes_and_others_wait_for_its_answer() -> None:
    """A second request to a new destination waits for the first one's answer, then goes."""
    cooldowns = Cooldowns(probe_timeout=5)
    probe = cooldowns.take_turn(KEY)
    released = threading.Event()
    follower = threading.Thread(target=lambda: (cooldowns.take_turn(KEY), released.set()))
    follower.start()
    assert not released.wait(0.05)
    cooldowns.observe(probe, 200, rate_headers(100, 99, "10ms"), None)
    assert released.wait(1)
    follower.join()


def test_failed_probe_releases_the_others() -> None:
    """A first request that gets no answer at all does not block the rest."""
    cooldowns = Cooldowns(probe_timeout=5)
    probe = cooldowns.take_turn(KEY)
    cooldowns.failed(probe)
    started = time.monotonic()
    cooldowns.take_turn(KEY)
    assert time.monotonic() - started < 0.1


def test_probe_wait_is_bounded() -> None:
    """If the first answer is slow, the others go after ``probe_timeout``."""
    cooldowns = Cooldowns(probe_timeout=0.05)
    cooldowns.take_turn(KEY)
    started = time.monotonic()
    cooldowns.take_turn(KEY)
    assert 0.04 <= time.monotonic() - started < 0.5


# --- hold and staggered release ---


def test_a_hint_holds_first_attempts_too(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """After a 429 asking for 3 s, a new request (not a retry) waits those 3 s."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(3.0, "retry-after"))
    assert turns(cooldowns, fake, 1) == [3.0]


def test_release_is_staggered_at_the_measured_pace(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """With rate headers, held requests go one interval apart, not all at once."""
    destination = cooldowns.take_turn(KEY)
    # 5 requests per second: an empty bucket is full again after 1 s.
    cooldowns.observe(destination, 429, rate_headers(5, 0, "1s"), ServerHint(0.2, "retry-after-ms"))
    interval = 0.2 * (1 + SAFETY_MARGIN)
    granted = turns(cooldowns, fake, 4)
    # The bucket is full after 1 s; the first turn comes once it holds two tokens (one stays spare).
    assert granted[0] == pytest.approx(1.0 - 3 * interval, abs=1e-6)
    assert [b - a for a, b in itertools.pairwise(granted)] == pytest.approx([interval] * 3, abs=1e-6)


def test_release_is_staggered_by_the_hint_without_rate_headers(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """Without rate headers, the hint is the pace: one request per hinted wait."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(0.5, "retry-after-ms"))
    assert turns(cooldowns, fake, 3) == pytest.approx([0.5, 1.0, 1.5])


def test_a_retry_waits_for_its_backoff_and_its_turn(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A retry waits at least its own backoff, and behind turns already handed out."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(1.0, "retry-after"))
    turns(cooldowns, fake, 2)  # turns at 1.0 and 2.0 s
    assert cooldowns.wait_turn(destination, delay=0.1) == pytest.approx(1.0)
    assert cooldowns.wait_turn(destination, delay=5.0) == pytest.approx(5.0)


def test_unknown_limits_are_not_paced(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A destination that sends no rate headers and no 429 is never slowed down."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 200, {}, None)
    assert turns(cooldowns, fake, 50) == [0.0] * 50
    assert fake.slept == []


def test_full_bucket_allows_a_burst_less_one(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """With a known burst, turns come at once while the server's bucket has room, keeping one spare."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 200, rate_headers(10, 9, "100ms"), None)
    granted = turns(cooldowns, fake, 10)
    assert granted[:8] == [0.0] * 8
    assert granted[8] > 0


# --- relaxation ---


def test_hint_pace_relaxes_with_successes(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """Without rate headers, each success shortens the pace, until it is dropped."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(1.0, "retry-after"))
    cooldowns.observe(destination, 200, {}, None)
    assert destination.interval == pytest.approx(RELAX_FACTOR)
    for _ in range(40):
        cooldowns.observe(destination, 200, {}, None)
    assert destination.interval is None
    fake.now += 10
    assert turns(cooldowns, fake, 5) == [10.0] * 5


def test_measured_pace_refills_when_load_drops(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """With rate headers, an idle spell gives back the burst: full speed within the limit."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, rate_headers(5, 0, "1s"), ServerHint(0.2, "retry-after-ms"))
    turns(cooldowns, fake, 5)
    fake.now += 60
    start = fake.now - 1000.0
    assert turns(cooldowns, fake, 4) == pytest.approx([start] * 4)


def test_waits_beyond_max_wait_are_left_to_the_server(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A hold or pace longer than the caller's maximum is not waited for: the server will say so."""
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(3600, "retry-after"))
    assert cooldowns.wait_turn(destination, max_wait=30) == 0.0
    assert fake.slept == []


# --- interruption ---


def seconds_until_interrupted(cooldowns: Cooldowns) -> float:
    """Take a turn, press Ctrl-C 0.1 s later, and return how long the turn lasted."""
    timer = threading.Timer(0.1, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        cooldowns.take_turn(KEY)
    timer.join()
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def ctrl_c_raises() -> Iterator[None]:
    """Make SIGINT raise KeyboardInterrupt, even where the runner was started with it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_ends_a_hold_promptly() -> None:
    """KeyboardInterrupt ends a long hold at once, and leaves the cooldowns usable."""
    cooldowns = Cooldowns()
    destination = cooldowns.take_turn(KEY)
    cooldowns.observe(destination, 429, {}, ServerHint(10, "retry-after"))
    assert seconds_until_interrupted(cooldowns) < 1
    assert cooldowns.wait_turn(destination, max_wait=1) == 0.0  # no lock left held


def test_ctrl_c_ends_a_wait_for_the_first_answer() -> None:
    """KeyboardInterrupt also ends a wait for the probe's answer."""
    cooldowns = Cooldowns(probe_timeout=10)
    cooldowns.take_turn(KEY)
    assert seconds_until_interrupted(cooldowns) < 1


# --- through the adapter, against a real server ---


def _config(endpoint: RateLimitedEndpoint, **settings: object) -> Config:
    return Config(openrouter_api_key="k", openrouter_base_url=endpoint.base_url, **settings)  # type: ignore[arg-type]


def _send(session: requests.Session, endpoint: RateLimitedEndpoint, results: list[requests.Response]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    results.append(session.post(f"{endpoint.base_url}/chat/completions", json=body, timeout=5))


def test_sessions_in_one_process_back_off_together() -> None:
    """Eight threads, each with its own session, share the cooldown: no failure, few 429s, near the ideal time."""
    with RateLimitedEndpoint(rate=100, burst=4) as endpoint:
        config = _config(endpoint)
        results: list[requests.Response] = []
        started = time.monotonic()
        sessions = [retrying_session(config) for _ in range(8)]
        workers = [
            threading.Thread(target=lambda s=session: [_send(s, endpoint, results) for _ in range(4)])
            for session in sessions
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - started
        stats = endpoint.stats()
    assert [r.status_code for r in results] == [200] * 32
    assert stats.ok == 32
    assert stats.rate_limited <= 3
    assert elapsed < (32 - 4) / 100 * 1.5 + 0.1


def test_no_request_lost_or_duplicated_under_load() -> None:
    """16 threads x 20 requests through one session: 200s equal requests, 429s equal the retries recorded."""
    with RateLimitedEndpoint(rate=1000, burst=5) as endpoint:
        session = retrying_session(_config(endpoint), pool_maxsize=16)
        results: list[requests.Response] = []
        workers = [
            threading.Thread(target=lambda: [_send(session, endpoint, results) for _ in range(20)]) for _ in range(16)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert not any(worker.is_alive() for worker in workers)
        stats = endpoint.stats()
    assert len(results) == 320
    assert all(r.status_code == 200 for r in results)
    retries = sum(len(r.raw.retries.history) for r in results if r.raw.retries is not None)
    assert stats.ok == 320
    assert stats.rate_limited == retries
    assert stats.other == 0


def test_coordination_can_be_switched_off() -> None:
    """LLM_RETRY_COORDINATE=false leaves the shared cooldowns untouched."""
    with RateLimitedEndpoint(rate=100, burst=2) as endpoint:
        adapter = LinearBackoffAdapter(_config(endpoint, retry_coordinate=False))
        assert adapter.cooldowns is None
        session = requests.Session()
        session.mount("http://", adapter)
        _send(session, endpoint, [])
    assert len(shared_cooldowns()) == 0


def test_adapters_share_the_process_cooldowns_by_default() -> None:
    """Two adapters built separately coordinate through the same object."""
    assert LinearBackoffAdapter(Config()).cooldowns is LinearBackoffAdapter(Config()).cooldowns is shared_cooldowns()
