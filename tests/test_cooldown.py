"""The shared per-destination cooldown: hold, staggered release, relaxation, keying, interruption."""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from aicoder.config import Config
from aicoder.http.adapter import LinearBackoffAdapter, retrying_session
from aicoder.http.async_transport import AsyncLinearBackoffTransport
from aicoder.http.cooldown import Cooldowns, default_cooldowns
from aicoder.http.destinations import DestinationKey, destination_key
from aicoder.http.hints import ServerHint
from aicoder.http.pace import SAFETY_MARGIN, Feedback, Pace
from aicoder.http.waiting import Signal
from aicoder.testing import FakeClock, RateLimitedEndpoint
from tests.pacing import regrown_to_twenty_a_second, slowed_to_five_a_second

KEY = DestinationKey("http://api.test", "sk")


class FakeTime:
    """A clock for one thread that moves only when something sleeps on it: the sleep is over at once."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.time

    def sleep(self, seconds: float, unless: Signal | None = None) -> bool:
        if seconds > 0:
            self.slept.append(seconds)
            self.time += seconds
        return False

    async def asleep(self, seconds: float, unless: Signal | None = None) -> bool:
        return self.sleep(seconds)

    def wait_for(self, event: Signal, timeout: float) -> None:
        pass

    async def await_for(self, event: Signal, timeout: float) -> None:
        pass


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def cooldowns(fake: FakeTime) -> Cooldowns:
    return Cooldowns(clock=fake, probe_timeout=0.01)


def per_minute(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def turns(cooldowns: Cooldowns, fake: FakeTime, count: int, key: DestinationKey = KEY) -> list[float]:
    """Take ``count`` first-attempt turns one after another; return when each was granted."""
    granted = []
    for _ in range(count):
        cooldowns.take_turn(key)
        granted.append(round(fake.time - 1000.0, 6))
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


def test_every_kind_of_headers_gives_the_same_key() -> None:
    """A dict, requests', httpx's and httpx2's headers, in any case, with other headers around: one key. (httpx's
    are read from their bytes, in one pass.)"""
    import httpx
    import httpx2
    from requests.structures import CaseInsensitiveDict

    pairs = {"Accept": "application/json", "X-API-Key": "sk-SENTINEL", "User-Agent": "test"}
    key = destination_key("https://api.test/v1", {"x-api-key": "sk-SENTINEL"})
    for headers in (pairs, CaseInsensitiveDict(pairs), httpx.Headers(pairs), httpx2.Headers(pairs)):
        assert destination_key("https://api.test/v1", headers) == key
    assert destination_key("https://api.test/v1", httpx.Headers({"x-api-key": "sk-other"})) != key


def test_key_never_holds_the_credentials() -> None:
    """The destination key is the origin and a salted hash of the credentials, not the credentials."""
    key = destination_key("https://user:pw@api.test/v1", {"Authorization": "Bearer sk-SENTINEL", "x-api-key": "x"})
    assert "SENTINEL" not in repr(key) and "pw" not in repr(key)
    assert key.origin == "https://api.test"


def test_memory_is_bounded() -> None:
    """Only the most recently used destinations are remembered."""
    cooldowns = Cooldowns(max_destinations=3)
    for n in range(10):
        cooldowns.observe(cooldowns.take_turn(DestinationKey(f"http://host{n}.test", "k")), 200, {})
    assert len(cooldowns) == 3
    assert cooldowns.pace(DestinationKey("http://host0.test", "k")) is None  # forgotten
    assert cooldowns.pace(DestinationKey("http://host9.test", "k")) is not None


# --- first contact ---


def follower(cooldowns: Cooldowns) -> threading.Thread:
    """A thread taking a turn at ``KEY``, started."""
    thread = threading.Thread(target=cooldowns.take_turn, args=(KEY,))
    thread.start()
    return thread


def test_first_request_probes_and_others_wait_for_its_answer() -> None:
    """A second request to a new destination waits for the first one's answer, then goes."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=5)
    probe = cooldowns.take_turn(KEY)
    second = follower(cooldowns)
    clock.settle([second])
    assert second.is_alive()  # asleep until the answer, or for at most probe_timeout
    cooldowns.observe(probe, 200, per_minute(6000, 5999, "10ms"))
    second.join(5)
    assert not second.is_alive() and clock.now() == 0.0


def test_failed_probe_releases_the_others() -> None:
    """A first request that gets no answer at all does not block the rest."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=5)
    probe = cooldowns.take_turn(KEY)
    cooldowns.failed(probe)
    second = follower(cooldowns)
    second.join(5)
    assert not second.is_alive() and clock.now() == 0.0


def test_probe_wait_is_bounded() -> None:
    """If the first answer is slow, the others go after ``probe_timeout``, not before."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=2.0)
    cooldowns.take_turn(KEY)
    second = follower(cooldowns)
    clock.settle([second])
    clock.advance(1.9)
    clock.settle([second])
    assert second.is_alive()
    clock.advance(0.1)
    second.join(5)
    assert not second.is_alive()


# --- hold and pace ---


def test_a_hint_holds_first_attempts_too(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """After a 429 asking for 3 s (precisely), a new request (not a retry) waits those 3 s."""
    turn = cooldowns.take_turn(KEY)
    cooldowns.observe(turn, 429, {}, ServerHint(3.0, "retry-after-ms"))
    assert turns(cooldowns, fake, 1) == [3.0]


def test_a_whole_second_hint_holds_the_others_in_full(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """``Retry-After: 3`` is a floor, though it may be rounded: no request goes before the 3 s are over."""
    turn = cooldowns.take_turn(KEY)
    cooldowns.observe(turn, 429, {}, ServerHint(3.0, "retry-after", coarse=True))
    assert turns(cooldowns, fake, 1) == [3.0]


def test_a_one_second_hint_is_not_a_pace(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """``Retry-After: 1`` holds for a second, but does not become "one request a second" after it."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, {})
    granted = turns(cooldowns, fake, 6)
    turn = cooldowns.take_turn(KEY)
    refused_at = fake.time - 1000.0
    cooldowns.observe(turn, 429, {}, ServerHint(1.0, "retry-after", coarse=True))
    later = turns(cooldowns, fake, 5)
    assert later[0] == pytest.approx(refused_at + 1.0) and refused_at >= granted[-1]
    assert all(b - a < 0.5 for a, b in itertools.pairwise(later))


@pytest.mark.parametrize(
    ("hint", "scale"),
    [
        (ServerHint(0.02, "retry-after-ms"), Feedback.SCALE),
        (ServerHint(1.0, "retry-after", coarse=True), Feedback.MEASURED_SCALE),
        (ServerHint(1.5, "body: RetryInfo.retryDelay", "gemini", window=True), Feedback.MEASURED_SCALE),
    ],
    ids=["20 ms", "whole seconds", "1.5 s"],
)
def test_a_refusal_that_holds_a_second_or_more_makes_the_regrowth_gentle(
    hint: ServerHint, scale: float, cooldowns: Cooldowns, fake: FakeTime
) -> None:
    """The cut a 429 makes regrows at MEASURED_SCALE when the wait it states costs a second or more."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, {})
    turns(cooldowns, fake, 6)
    cooldowns.observe(cooldowns.take_turn(KEY), 429, {}, hint)
    pace = cooldowns.pace(KEY)
    assert isinstance(pace, Pace) and pace.rate is not None  # cut
    assert pace.feedback.scale == scale


def per_minute_rate(limit: int, reset: str) -> dict[str, str]:
    """A per-minute limit with nothing said of what remains: a rate and nothing to spend."""
    return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-reset-requests": reset}


def test_requests_go_at_the_per_minute_rate(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """600 requests a minute, nothing said to remain: one every 0.1 s, none at once."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, per_minute_rate(600, "100ms"))
    granted = turns(cooldowns, fake, 4)
    interval = 0.1 / (1 - SAFETY_MARGIN)
    assert [b - a for a, b in itertools.pairwise(granted)] == pytest.approx([interval] * 3, abs=1e-6)


def test_what_remains_is_spent_from_the_rate_up(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """600 a minute with 5 left: those 5 come sooner and sooner (slow start from the rate), the next at the rate."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, per_minute(600, 5, "100ms"))
    granted = turns(cooldowns, fake, 7)
    interval = 0.1 / (1 - SAFETY_MARGIN)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert all(gap < interval for gap in gaps[:4]) and gaps[:4] == sorted(gaps[:4], reverse=True)
    assert gaps[-1] == pytest.approx(interval, abs=1e-6)


def test_what_others_on_the_key_take_slows_the_turns(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """Anthropic's headers state 600 a minute, and the count they give of what is used rises by 2.9 a second
    while this client takes 9.9: someone else takes 3. Within two seconds of answers, turns come at the 7 left."""
    used, granted = 0.0, []
    for _ in range(30):
        turn = cooldowns.take_turn(KEY)
        granted.append(fake.time)
        used = max(used + 1 - 7 * (granted[-1] - granted[-2] if len(granted) > 1 else 0), 0)
        headers = {
            "anthropic-ratelimit-requests-limit": "600",
            "anthropic-ratelimit-requests-remaining": str(600 - math.floor(used)),
            "anthropic-ratelimit-requests-reset": "1970-01-01T00:00:00Z",  # whole seconds: paced, not spent
        }
        cooldowns.observe(turn, 200, headers)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert gaps[1] == pytest.approx(0.1 / (1 - SAFETY_MARGIN), abs=1e-6)
    assert gaps[-1] == pytest.approx(1 / (7 * (1 - SAFETY_MARGIN)), rel=0.05)


def test_a_retry_waits_its_backoff_then_queues(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A retry sleeps its own backoff first, holding no place in the queue meanwhile."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, per_minute_rate(60, "1s"))
    assert cooldowns.wait_turn(probe, delay=5.0) == pytest.approx(5.0)
    assert turns(cooldowns, fake, 1)[0] == pytest.approx(5.0 + 1 / (1 - SAFETY_MARGIN), abs=1e-6)


def test_unknown_limits_are_not_paced_once_slow_start_is_over(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A destination that sends no rate headers and no 429 is slowed only by slow start's first second."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, {})
    fake.time += 5
    assert turns(cooldowns, fake, 50) == [5.0] * 50


def test_waits_beyond_max_wait_are_left_to_the_server(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A hold or pace longer than the caller's maximum is not waited for: the server will say so."""
    turn = cooldowns.take_turn(KEY)
    cooldowns.observe(turn, 429, {}, ServerHint(3600, "retry-after"))
    assert cooldowns.wait_turn(turn, max_wait=30) == 0.0
    assert fake.slept == []


def test_a_429_moves_turns_already_handed_out() -> None:
    """A thread asleep until its turn follows the turn when a hold moves it later: woken at its old time, it
    sleeps on until the hold's end."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=0.01)
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, per_minute(600, 599, "100ms"))  # ten a second
    first = cooldowns.take_turn(KEY)
    taken: list[float] = []
    waiter = threading.Thread(target=lambda: (cooldowns.take_turn(KEY), taken.append(clock.now())))
    waiter.start()
    clock.wait_until_asleep(1)  # its turn is about 0.1 s away
    cooldowns.observe(first, 429, {}, ServerHint(0.3, "retry-after-ms"))
    clock.advance(0.2)
    clock.wait_until_asleep(1)  # past its old time, asleep again
    assert taken == []
    clock.advance(0.1)
    waiter.join(5)
    assert taken == [pytest.approx(0.3)]


def test_a_regrown_rate_wakes_threads_asleep_until_their_old_turns() -> None:
    """Threads queued at 0.2 s intervals come at 0.05 s intervals once the rate has grown to 20 a second."""
    clock = FakeClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=0.01)
    first = slowed_to_five_a_second(cooldowns, KEY)
    came: list[float] = []
    waiters = [threading.Thread(target=lambda: (cooldowns.take_turn(KEY), came.append(clock.now()))) for _ in range(3)]
    for count, waiter in enumerate(waiters, 1):
        waiter.start()
        clock.wait_until_asleep(count)  # queued in this order: 0.2, 0.4 and 0.6 s away
    regrown_to_twenty_a_second(cooldowns, KEY, first)
    clock.settle(waiters)  # woken by the hurry, asleep until their new times
    for _ in range(6):
        clock.advance(0.05)
        clock.settle(waiters)
    assert came == [pytest.approx(0.2), pytest.approx(0.25), pytest.approx(0.3)]


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
    turn = cooldowns.take_turn(KEY)
    cooldowns.observe(turn, 429, {}, ServerHint(10, "retry-after-ms"))
    assert seconds_until_interrupted(cooldowns) < 1
    assert cooldowns.wait_turn(turn, max_wait=1) == 0.0  # no lock left held


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
    assert len(default_cooldowns()) == 0


def test_adapters_share_the_process_cooldowns_by_default() -> None:
    """Two adapters built separately coordinate through the same object."""
    assert LinearBackoffAdapter(Config()).cooldowns is LinearBackoffAdapter(Config()).cooldowns is default_cooldowns()


def test_adapters_given_cooldowns_use_them_even_before_they_know_a_destination() -> None:
    """A new Cooldowns knows no destination, and is empty: it is used all the same, not the process's."""
    mine = Cooldowns()
    assert len(mine) == 0
    assert LinearBackoffAdapter(Config(), cooldowns=mine).cooldowns is mine
    assert AsyncLinearBackoffTransport(Config(), cooldowns=mine).cooldowns is mine


def test_a_turn_come_but_not_yet_taken_follows_a_later_hold() -> None:
    """A turn whose time came while its thread still slept (a busy interpreter can keep it tens of
    milliseconds) has not gone: a hold made before the thread takes it moves it behind the hold."""
    clock = StalledClock()
    cooldowns = Cooldowns(clock=clock, probe_timeout=0.01)
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, {"x-ratelimit-limit-requests": "60"})  # a turn a second, nothing to spend
    first = cooldowns.take_turn(KEY)  # due now: taken at once
    taken: list[float] = []
    second = threading.Thread(target=lambda: taken.append(cooldowns.take_turn(KEY).due))
    second.start()
    assert clock.asleep_.wait(5)  # its turn is a second away; its thread sleeps
    clock.time += 2.0  # the turn has come, but its thread has not woken yet
    cooldowns.observe(first, 429, {}, ServerHint(5.0, "retry-after", coarse=True))
    held_until = clock.time + 5.0
    clock.release.set()
    second.join(5)
    assert taken == [held_until]


class StalledClock(FakeTime):
    """A clock whose sleeps end only when the test releases them, however far it has moved meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep_, self.release = threading.Event(), threading.Event()

    def sleep(self, seconds: float, unless: Signal | None = None) -> bool:
        wake = self.time + seconds
        self.asleep_.set()
        assert self.release.wait(5)
        self.time = max(self.time, wake)
        return False


def test_a_hold_learnt_after_a_turn_is_taken_holds_its_first_byte(cooldowns: Cooldowns, fake: FakeTime) -> None:
    """A thread took its turn, and another reads a 429 before the first's first byte is written: the last look
    waits for that hold, unless it is longer than the attempt waits for."""
    probe = cooldowns.take_turn(KEY)
    cooldowns.observe(probe, 200, {})
    taken, patient = cooldowns.take_turn(KEY, max_wait=10.0), cooldowns.take_turn(KEY, max_wait=1.0)
    fake.slept.clear()  # what slow start spaced them by
    cooldowns.observe(probe, 429, {}, ServerHint(5.0, "retry-after", coarse=True))
    held_until = fake.now() + 5.0
    assert not patient.last_look()  # 5 s is past what it waits for: it goes, and the server's answer says how long
    assert fake.slept == []
    assert taken.last_look()  # a new turn, behind the hold
    assert fake.now() == taken.due >= held_until
    assert not taken.last_look()  # the hold is over: nothing more to wait for
