"""The pace shared through a real redis-server: one schedule for every process, and no outage when Redis goes."""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aicoder.config import Config, ConfigError
from aicoder.http.adapter import retrying_session
from aicoder.http.classic_httpx import HttpxTransport
from aicoder.http.cooldown import Cooldowns
from aicoder.http.destinations import DestinationKey, destination_key
from aicoder.http.hints import ServerHint
from aicoder.http.pace import SAFETY_MARGIN, Feedback, Pace, Refusal
from aicoder.http.quotas import Quota
from aicoder.http.redis_pace import RedisPace, RedisPaces
from aicoder.http.tokens import RequestCost
from aicoder.http.waiting import instant_waits
from aicoder.testing import RateLimitedEndpoint
from tests.pacing import Waiting
from tests.redis_server import redis_server
from tests.servers import completion, scripted_server

KEY = destination_key("https://api.test/v1", {"Authorization": "Bearer sk-SENTINEL-KEY-0123456789"})
PER_MINUTE = {  # 6,000 a minute: one every 10 ms
    "x-ratelimit-limit-requests": "6000",
    "x-ratelimit-remaining-requests": "5999",
    "x-ratelimit-reset-requests": "10ms",
}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as (url, _):
        yield url


@pytest.fixture
def redis_paces(redis_url: str) -> Iterator[RedisPaces]:
    """A connection to a real redis-server, where paces are kept for every process."""
    shared = RedisPaces(redis_url)
    yield shared
    shared.close()


def cooldowns_kept(where: str, request: pytest.FixtureRequest, probe_timeout: float = 0.01) -> Cooldowns:
    """Cooldowns whose paces are kept ``in process``, or ``in redis`` (a real redis-server's): one story, both
    ways."""
    shared = request.getfixturevalue("redis_paces") if where == "in redis" else None
    return Cooldowns(redis=shared, probe_timeout=probe_timeout)


def cut_after_a_burst(cooldowns: Cooldowns, key: DestinationKey, hint: ServerHint) -> None:
    """A first answer that says nothing of the limits (slow start), eleven more accepted, and a twelfth refused
    with ``hint``: the refusal cuts the rate it measured."""
    cooldowns.observe(cooldowns.take_turn(key), 200, {})
    burst = [cooldowns.take_turn(key) for _ in range(12)]
    for turn in burst[:-1]:
        cooldowns.observe(turn, 200, {})
    cooldowns.observe(burst[-1], 429, {}, hint)


@pytest.fixture
def two_processes(redis_url: str) -> Iterator[tuple[Cooldowns, Cooldowns]]:
    """Two Cooldowns with connections of their own to one Redis, as two processes would have."""
    first, second = RedisPaces(redis_url), RedisPaces(redis_url)
    yield Cooldowns(redis=first, probe_timeout=0.01), Cooldowns(redis=second, probe_timeout=0.01)
    first.close()
    second.close()


def test_turns_come_from_one_schedule(two_processes: tuple[Cooldowns, Cooldowns]) -> None:
    """What one process learns paces the other: their turns interleave at the server's rate, not twice it.

    The gaps are read from the schedule in Redis, on Redis's clock: a turn's time in a process's own clock
    carries the jitter of its round trip, which a loaded machine stretches to a good part of the 10 ms."""
    a, b = two_processes
    rate_only = {name: value for name, value in PER_MINUTE.items() if "remaining" not in name}
    a.observe(a.take_turn(KEY), 200, rate_only)
    b.observe(b.take_turn(KEY), 200, rate_only)
    turns = list(itertools.chain.from_iterable((a.take_turn(KEY), b.take_turn(KEY)) for _ in range(5)))
    assert a.redis is not None
    scores = a.redis.client.zmscore(f"aicoder:{{{KEY.fingerprint}}}:sends", [turn.ticket for turn in turns])
    sent = sorted(float(score) for score in scores)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert min(gaps) >= 0.01 / (1 - SAFETY_MARGIN) * 0.9


def test_what_remains_is_spent_once_by_all_processes(two_processes: tuple[Cooldowns, Cooldowns]) -> None:
    """An answer saying 4 requests remain lets 4 turns go without the per-minute pace, in whichever process;
    the next waits for the lane, and a refusal of a turn within what remained ends the spending for all."""
    a, b = two_processes
    four_left = {**PER_MINUTE, "x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "4"}
    a.observe(a.take_turn(KEY), 200, four_left)
    spent = [(a if index % 2 else b).take_turn(KEY) for index in range(4)]
    started = time.monotonic()
    paced = b.take_turn(KEY)
    assert time.monotonic() - started >= 0.09  # 600 a minute: the lane's next step, after the last turn spent
    assert [turn.serial for turn in spent] == [2, 3, 4, 5] and paced.serial == 6
    pace_key = f"aicoder:{{{KEY.fingerprint}}}:pace"
    a.observe(spent[-1], 429, {}, ServerHint(0.01, "retry-after-ms"))
    assert a.redis is not None and a.redis.client.hget(pace_key, "B:off") == b"1"


def test_a_refusal_that_says_a_window_ran_out_ends_the_spending_nowhere(
    two_processes: tuple[Cooldowns, Cooldowns],
) -> None:
    """As in one process (test_pace): a 429 saying a window ran out, for a turn within what remained, leaves
    the spending on for every process and cuts nothing."""
    a, b = two_processes
    window = {"x-ratelimit-api_key-limit-requests": "100", "x-ratelimit-api_key-remaining-requests": "50"}
    a.observe(a.take_turn(KEY), 200, window)
    spent = [(a if index % 2 else b).take_turn(KEY) for index in range(4)]
    a.observe(spent[-1], 429, {}, ServerHint(10, "retry-after", coarse=True, window_ran_out=True))
    pace_key = f"aicoder:{{{KEY.fingerprint}}}:pace"
    assert a.redis is not None and a.redis.client.hget(pace_key, "B:off") is None
    assert a.redis.client.hget(pace_key, "F:rate") is None


def test_turns_spent_at_once_are_spaced_by_their_tokens_when_the_spending_ends(
    two_processes: tuple[Cooldowns, Cooldowns],
) -> None:
    """As in one process (test_pace): four turns of 50 tokens spent at once behind a hold, then a refusal within
    what remained. The next reschedule spaces them by the token lane (100 a second: half a second each), not
    by the requests lane's 10 ms."""
    a, _ = two_processes
    tokens = {
        **PER_MINUTE,
        "x-ratelimit-remaining-requests": "50",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "6000",
        "x-ratelimit-reset-tokens": "1ms",
    }
    a.observe(a.take_turn(KEY), 200, tokens)
    pace = a.pace(KEY)
    assert isinstance(pace, RedisPace)
    now = time.monotonic()
    pace.hold(now + 0.5, now)
    grants = [pace.next_turn(now, RequestCost(20, 30)) for _ in range(4)]
    assert not pace.refused(
        Refusal(now, now, now, 0.01, serial=grants[0].serial)
    )  # within what remained: spending ends
    assert pace.hold(now + 0.6, now)  # the hold moves: the turns to come are rescheduled
    assert a.redis is not None
    scores = a.redis.client.zmscore(f"aicoder:{{{KEY.fingerprint}}}:sends", [grant.ticket for grant in grants])
    gaps = [later - earlier for earlier, later in itertools.pairwise(sorted(float(score) for score in scores))]
    assert min(gaps) >= 50 / 100 * 0.95


def test_a_turn_never_comes_before_the_time_redis_gave_it(redis_url: str) -> None:
    """Redis reckons a turn's wait on its clock, during the call. The wait counts from when the answer arrived
    here, not from before the call: a slow round trip (here, half a second) makes the turn later, never earlier."""
    shared = RedisPaces(redis_url)
    try:
        slow = RedisPace(shared, KEY, Pace(), threading.Lock(), clock=lambda: time.monotonic() + 0.5)
        asked_at = time.monotonic()
        grant = slow.next_turn(asked_at, None)
        assert grant.at >= asked_at + 0.5
    finally:
        shared.close()


def test_a_hold_from_one_process_holds_the_other(two_processes: tuple[Cooldowns, Cooldowns]) -> None:
    """A hint one process reads holds the first attempts of another."""
    a, b = two_processes
    b.observe(b.take_turn(KEY), 200, {})
    a.observe(a.take_turn(KEY), 429, {}, ServerHint(0.2, "retry-after-ms"))
    started = time.monotonic()
    b.take_turn(KEY)
    assert time.monotonic() - started >= 0.15


def test_a_hold_from_one_process_moves_the_turns_another_has_waiting(
    two_processes: tuple[Cooldowns, Cooldowns],
) -> None:
    """Turns already handed out in one process move behind a hold read in another: the waiting thread follows.
    (100 ms apart: a turn whose time has come before the hold reaches Redis is not moved, and a loaded machine
    can take tens of milliseconds over the 429's two round trips.)"""
    a, b = two_processes
    a.observe(a.take_turn(KEY), 200, {**PER_MINUTE, "x-ratelimit-limit-requests": "600"})
    pace = a.pace(KEY)
    assert pace is not None
    refused = b.take_turn(KEY)
    grants = [pace.next_turn(time.monotonic(), None) for _ in range(5)]  # 100 ms apart, as if five threads waited
    b.observe(refused, 429, {}, ServerHint(0.5, "retry-after-ms"))
    held = time.monotonic() + 0.45
    waiting = [grant for grant in grants if grant.at > grants[0].at]  # the first went at once
    moved = pace.reschedule([Waiting(grant.at, grant.ticket) for grant in waiting])
    assert len(waiting) == 4
    assert all(at >= held for at in moved)
    assert len(set(moved)) == 4  # and spaced by the rate the 429 cut to


def test_a_turn_that_comes_asks_for_itself_alone(redis_paces: RedisPaces) -> None:
    """30 tasks queued at 100 a second: each, when its time comes, asks Redis about its own turn, not about every
    turn still waiting (which held the lock for a round trip that grew with the queue: 256 tasks, 1.5x to 2.2x)."""
    import asyncio

    cooldowns = Cooldowns(redis=redis_paces, probe_timeout=0.01)
    cooldowns.observe(cooldowns.take_turn(KEY), 200, {**PER_MINUTE, "x-ratelimit-limit-requests": "6000"})
    asked: list[int] = []
    run = redis_paces.run

    def counting(name: str, keys: list[str], args: list[Any]) -> Any:
        if name == "when":
            asked.append(len(args) - 1)  # the floor, then one ticket per turn asked about
        return run(name, keys, args)

    redis_paces.run = counting  # type: ignore[method-assign]

    async def queue() -> None:
        await asyncio.gather(*(cooldowns.atake_turn(KEY) for _ in range(30)))

    asyncio.run(queue())
    assert len(asked) >= 20 and max(asked) == 1


@pytest.mark.parametrize("waiters", ["threads", "tasks"])
def test_turns_waiting_follow_a_hold_from_another_process(
    waiters: str, two_processes: tuple[Cooldowns, Cooldowns]
) -> None:
    """Threads (or asyncio tasks) asleep until their turns wake later when another process holds the destination
    meanwhile: each of them, the first to wake included (it asks Redis when it wakes, however late the wake-up)."""
    import asyncio
    import threading

    a, b = two_processes
    a.observe(a.take_turn(KEY), 200, {**PER_MINUTE, "x-ratelimit-limit-requests": "600"})  # one every 100 ms
    b.observe(b.take_turn(KEY), 200, {**PER_MINUTE, "x-ratelimit-limit-requests": "600"})
    refused = b.take_turn(KEY)
    assert a.redis is not None
    schedule = f"aicoder:{{{KEY.fingerprint}}}:sends"
    before = a.redis.client.zcard(schedule)
    sent: list[float] = []

    def hold_once_the_turns_are_handed_out() -> float:
        """State the hold as soon as the two turns are in the schedule, long before the first is due."""
        while a.redis is not None and a.redis.client.zcard(schedule) < before + 2:
            time.sleep(0.002)
        stated_at = time.monotonic()
        b.observe(refused, 429, {}, ServerHint(0.3, "retry-after-ms"))
        return stated_at

    if waiters == "threads":
        threads = [threading.Thread(target=lambda: a.take_turn(KEY) and sent.append(time.monotonic())) for _ in "ab"]
        for thread in threads:  # their turns: in 100 and 200 ms
            thread.start()
        stated_at = hold_once_the_turns_are_handed_out()
        for thread in threads:
            thread.join(timeout=5)
    else:

        async def wait_for_turns() -> float:
            async def take() -> None:
                await a.atake_turn(KEY)
                sent.append(time.monotonic())

            tasks = [asyncio.create_task(take()) for _ in "ab"]
            stated_at = await asyncio.to_thread(hold_once_the_turns_are_handed_out)
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
            return stated_at

        stated_at = asyncio.run(wait_for_turns())
    assert len(sent) == 2
    assert min(sent) >= stated_at + 0.3 - 0.01  # the hold's end (to within the clocks' offset)


def test_one_key_at_two_origins_is_two_destinations_in_redis() -> None:
    """The name a destination has in Redis covers its origin too: the same key (or none) at two servers
    is two paces, and the name is the same in every process."""
    credentials = {"Authorization": "Bearer sk-SENTINEL-KEY-0123456789"}
    here, there = destination_key("https://a.test/v1", credentials), destination_key("https://b.test/v1", credentials)
    assert here.fingerprint != there.fingerprint
    assert (
        destination_key("http://127.0.0.1:1", {}).fingerprint != destination_key("http://127.0.0.1:2", {}).fingerprint
    )
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "from aicoder.http.destinations import destination_key as k; "
            f"print(k('https://a.test/v1', {credentials!r}).fingerprint)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == here.fingerprint


def test_redis_holds_no_key_and_forgets_idle_destinations(redis_url: str) -> None:
    """Keys carry a hash tag and a TTL; neither names nor values hold the API key."""
    import redis

    shared = RedisPaces(redis_url)
    cooldowns = Cooldowns(redis=shared, probe_timeout=0.01)
    cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
    cooldowns.take_turn(KEY)
    client = redis.Redis.from_url(redis_url)
    keys = [key.decode() for key in client.keys("aicoder:{*")]
    assert keys and all(key.startswith(f"aicoder:{{{KEY.fingerprint}}}:") for key in keys)
    assert all(0 < client.ttl(key) <= RedisPaces.TTL for key in keys)
    dump = b"".join([*(client.dump(key) or b"" for key in keys), *map(str.encode, keys)])
    assert b"SENTINEL" not in dump
    shared.close()


def test_redis_down_is_not_an_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Redis killed: turns go on from the in-process pace, with one WARNING; restarted: one more, and shared again."""
    caplog.set_level(logging.WARNING, logger="aicoder")
    with redis_server(tmp_path) as (url, process):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        shared = RedisPaces(url)
        shared.RECONNECT = 0.05
        cooldowns = Cooldowns(redis=shared, probe_timeout=0.01)
        cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        process.kill()
        process.wait()
        for _ in range(20):
            cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        assert not shared.healthy
        with redis_server(tmp_path, port=port):
            deadline = time.monotonic() + 5
            while not shared.healthy and time.monotonic() < deadline:
                time.sleep(0.05)
            assert shared.healthy
            cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        shared.close()
    messages = [record.getMessage() for record in caplog.records if "Redis" in record.getMessage()]
    assert len(messages) == 2
    assert "unreachable" in messages[0] and "is back" in messages[1]


def test_a_redis_that_hangs_costs_one_request_a_timeout_once(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that accepts connections and never answers: the first call gives up after TIMEOUT, the
    pace goes on in the process, and nothing after that waits on Redis."""
    caplog.set_level(logging.WARNING, logger="aicoder")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        shared = RedisPaces(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        cooldowns = Cooldowns(redis=shared, probe_timeout=0.01)
        started = time.monotonic()
        cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(10):
            cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        rest = time.monotonic() - started
        shared.close()
    assert first < 2 * RedisPaces.TIMEOUT + 0.2
    assert rest < 0.2 + 10 * 0.0102  # ten turns at 6,000 a minute, no Redis wait among them
    messages = [record.getMessage() for record in caplog.records if "Redis" in record.getMessage()]
    assert len(messages) == 1
    assert "unreachable" in messages[0]


def test_cut_off_from_redis_a_process_takes_its_share(tmp_path: Path) -> None:
    """With Redis gone, one of two live clients paces at half the learnt rate, not as if it were alone."""

    class Beating(RedisPaces):
        HEARTBEAT = 0.05

    with redis_server(tmp_path) as (url, process):
        mine, other = Beating(url), Beating(url)
        deadline = time.monotonic() + 5
        while mine.live_clients < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mine.live_clients == 2
        cooldowns = Cooldowns(redis=mine, probe_timeout=0.01)
        cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
        process.kill()
        process.wait()
        pace = cooldowns.pace(KEY)
        assert pace is not None
        now = time.monotonic()
        turns = [pace.next_turn(now, None).at for _ in range(5)]
        mine.close()
        other.close()
    interval = 0.01 / (1 - SAFETY_MARGIN)
    assert not mine.healthy
    assert all(later - earlier == pytest.approx(2 * interval) for earlier, later in itertools.pairwise(turns[1:]))


def test_back_from_a_restart_redis_relearns_and_turns_wait_out_the_backlog(tmp_path: Path) -> None:
    """Redis restarted empty: the process gives it back the lanes and the feedback rate it knew, and Redis
    grants no turn, nor cuts on a 429, before the turns the process granted itself meanwhile have gone."""
    with redis_server(tmp_path) as (url, process):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        shared = RedisPaces(url)
        shared.RECONNECT = 0.05
        cooldowns = Cooldowns(redis=shared, probe_timeout=0.01)
        rate_only = {name: value for name, value in PER_MINUTE.items() if "remaining" not in name}
        for _ in range(6):
            turn = cooldowns.take_turn(KEY)
            cooldowns.observe(turn, 200, rate_only)  # nothing said to remain, nothing spent: a 429 cuts
        cooldowns.observe(turn, 429, {}, ServerHint(0.05, "retry-after-ms", coarse=False))  # a cut: a feedback rate
        pace_key = f"aicoder:{{{KEY.fingerprint}}}:pace"
        rate = float(shared.client.hget(pace_key, "F:rate"))
        cooldowns.take_turn(KEY)  # Redis gives this process the rate it has now
        process.kill()
        process.wait()
        alone = [cooldowns.take_turn(KEY).due for _ in range(20)]
        with redis_server(tmp_path, port=port):
            deadline = time.monotonic() + 5
            while not shared.healthy and time.monotonic() < deadline:
                time.sleep(0.05)
            cooldowns.take_turn(KEY)  # the first reservation back, which seeds Redis
            stored = {key.decode(): float(value) for key, value in shared.client.hgetall(pace_key).items()}
            later = cooldowns.take_turn(KEY)
        shared.close()
    assert stored["F:rate"] == pytest.approx(rate)
    assert stored["L:requests:rate"] == pytest.approx(100 * (1 - SAFETY_MARGIN))
    assert stored["L:requests:tat"] >= stored["calm"] > 0
    assert later.due >= max(alone) - 0.01


def test_a_redis_url_needs_redis_py(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, a Redis URL is a ConfigError saying what to install; a URL of another scheme is refused."""
    import importlib.util

    with pytest.raises(ConfigError, match=r"LLM_RETRY_REDIS_URL=.* is not allowed"):
        Config(redis_url="http://cache.test")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install redis"):
        Config.load(environ={"LLM_RETRY_REDIS_URL": "redis://127.0.0.1:6379/0"})


def _worker(url: str, redis_url: str, requests_each: int, threads: int, results: multiprocessing.Queue) -> None:
    """One process: ``threads`` threads sending ``requests_each`` each, through the shared pace."""
    import threading

    session = retrying_session(Config(redis_url=redis_url), pool_maxsize=threads)
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        for _ in range(requests_each):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            status = session.post(f"{url}/chat/completions", json=body, timeout=30).status_code
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=send) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(statuses)


def test_processes_share_one_pace(redis_url: str) -> None:
    """Three processes x three threads on one key, at 100 a second: every request answered, few 429s."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    with RateLimitedEndpoint(rate=100, burst=5) as endpoint:
        processes = [
            context.Process(target=_worker, args=(endpoint.base_url, redis_url, 4, 3, results)) for _ in range(3)
        ]
        for process in processes:
            process.start()
        statuses = [status for _ in processes for status in results.get(timeout=60)]
        for process in processes:
            process.join(timeout=30)
        stats = endpoint.stats()
    assert statuses == [200] * 36 and stats.early == 0
    # What remains is spent (from 100/s up) into the endpoint's hidden burst of 5, until one refusal ends the
    # spending in every process: at most one 429 for each of the nine threads, and far fewer in practice.
    assert stats.rate_limited <= 9


@pytest.mark.parametrize("where", ["in process", "in redis"])
def test_a_probe_refused_after_a_hold_cuts_nothing(where: str, request: pytest.FixtureRequest) -> None:
    """The same story in one process and through Redis: a burst, a 429 and its hold, then the probe after the
    hold refused again. The first 429 cuts; the second says the hold was short and cuts nothing, where a rate
    measured across the hold would have collapsed to a few requests a second."""
    key = destination_key(f"https://{where.replace(' ', '-')}.test/v1", {})
    cooldowns = cooldowns_kept(where, request)
    cut_after_a_burst(cooldowns, key, ServerHint(0.3, "retry-after", coarse=True))
    pace = cooldowns.pace(key)
    assert pace is not None and pace.rate is not None
    cut = pace.rate
    probe = cooldowns.take_turn(key)  # at the hold's end
    cooldowns.observe(probe, 429, {}, ServerHint(0.3, "retry-after", coarse=True))
    assert pace.rate == pytest.approx(cut) and cut > 10


@pytest.mark.parametrize("where", ["in process", "in redis"])
@pytest.mark.parametrize(
    ("hint", "scale"),
    [
        (ServerHint(0.02, "retry-after-ms"), Feedback.SCALE),
        (ServerHint(1.0, "retry-after", coarse=True), Feedback.MEASURED_SCALE),
    ],
    ids=["20 ms", "whole seconds"],
)
def test_a_refusal_that_holds_a_second_regrows_gently_wherever_the_pace_is_kept(
    where: str, hint: ServerHint, scale: float, request: pytest.FixtureRequest
) -> None:
    """A 429 whose stated wait costs a second or more cuts to a curve that regrows at MEASURED_SCALE, in one
    process and in Redis alike, where every process regrows along it; a short one, at SCALE."""
    key = destination_key(f"https://gentle-{where.replace(' ', '-')}-{hint.seconds}.test/v1", {})
    cooldowns = cooldowns_kept(where, request)
    cut_after_a_burst(cooldowns, key, hint)
    pace = cooldowns.pace(key)
    if isinstance(pace, RedisPace):
        assert cooldowns.redis is not None
        stored = cooldowns.redis.client.hget(pace._pace, "F:scale")
        assert float(stored) == pytest.approx(scale)  # the curve all processes follow
        pace = pace.local
    assert isinstance(pace, Pace) and pace.rate is not None  # cut
    assert pace.feedback.scale == pytest.approx(scale)


@pytest.mark.parametrize("where", ["in process", "in redis"])
def test_past_all_that_remained_one_turn_asks_and_the_others_wait(where: str, request: pytest.FixtureRequest) -> None:
    """A window said to have 2 left: two turns spend them, the third goes to ask, and a fourth waits for that
    answer (a 429 and its hold) instead of running into the spent window too."""
    import threading

    key = destination_key(f"https://asks-{where.replace(' ', '-')}.test/v1", {})
    two_left = {"x-ratelimit-api_key-limit-requests": "3", "x-ratelimit-api_key-remaining-requests": "2"}
    cooldowns = cooldowns_kept(where, request, probe_timeout=5)
    cooldowns.observe(cooldowns.take_turn(key), 200, two_left)
    spent = [cooldowns.take_turn(key) for _ in range(2)]
    asking = cooldowns.take_turn(key)
    released = threading.Event()
    waiter = threading.Thread(target=lambda: (cooldowns.take_turn(key), released.set()))
    waiter.start()
    assert not released.wait(0.1)  # it waits for the answer to the turn that asks
    cooldowns.observe(spent[0], 200, {**two_left, "x-ratelimit-api_key-remaining-requests": "1"})
    assert not released.wait(0.05)  # an answer to an older turn releases nothing
    cooldowns.observe(asking, 429, {}, ServerHint(0.2, "retry-after-ms"))
    assert released.wait(2)
    waiter.join()
    assert [turn.serial for turn in [*spent, asking]] == [2, 3, 4]


#: Stories of answers, each told to a new destination, and then the turns taken after them: (status, headers,
#: hint) per answer, in order, each to a turn of its own. (A cut is measured from when requests really went,
#: which these turns, taken without waiting, do not: test_a_probe_refused_after_a_hold_cuts_nothing and
#: test_a_refusal_that_holds_a_second_regrows_gently_wherever_the_pace_is_kept tell cuts to both.)
GRANT_STORIES: dict[str, list[tuple[int, dict[str, str], ServerHint | None]]] = {
    "a stated wait": [(200, {}, None), (429, {}, ServerHint(0.3, "retry-after-ms"))],
    "openai, 3 left": [
        (200, {**PER_MINUTE, "x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "3"}, None)
    ],
    "openai, whole seconds": [
        (200, {**PER_MINUTE, "x-ratelimit-limit-requests": "600", "x-ratelimit-reset-requests": "1s"}, None)
    ],
    "ietf, a spent window": [
        (200, {"ratelimit": "limit=10, remaining=0, reset=2", "ratelimit-policy": "10;w=60"}, None)
    ],
    "a hold, then a quota": [
        (429, {}, ServerHint(0.2, "retry-after-ms")),
        (200, {**PER_MINUTE, "x-ratelimit-limit-requests": "1200"}, None),
    ],
}


def granted_offsets(
    cooldowns: Cooldowns, key: DestinationKey, story: list[tuple[int, dict[str, str], ServerHint | None]]
) -> list[float]:
    """Tell ``story``'s answers, then take six turns without waiting; return when each is due, from now."""
    with instant_waits():
        told = [cooldowns.take_turn(key) for _ in story]
        for turn, (status, headers, hint) in zip(told, story, strict=True):
            cooldowns.observe(turn, status, headers, hint)
        start = time.monotonic()
        return [cooldowns.take_turn(key).due - start for _ in range(6)]


@pytest.mark.parametrize("story", GRANT_STORIES)
def test_the_pace_in_redis_grants_what_the_pace_in_process_grants(story: str, redis_paces: RedisPaces) -> None:
    """One sequence of answers, told to the in-process pace and to the Redis pace: the same turns, at the same
    times (within 20 ms: the calls to Redis take real time)."""
    key = destination_key("https://api.test/v1", {})
    here = granted_offsets(Cooldowns(probe_timeout=0.01), key, GRANT_STORIES[story])
    there = granted_offsets(Cooldowns(redis=redis_paces, probe_timeout=0.01), key, GRANT_STORIES[story])
    assert there == pytest.approx(here, abs=0.02)


def test_a_queue_behind_a_cut_follows_the_rate_as_it_regrows_in_either_pace(redis_paces: RedisPaces) -> None:
    """Twenty turns queued behind a cut to 4 a second, under a stated 10 a second: as the rate regrows, they come
    sooner, in this process and in Redis alike, and never closer than the lane's step. (256 tasks through Redis
    kept the cut's spacing to the end: 1.5x the ideal.)"""
    ten_a_second = {**PER_MINUTE, "x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"}

    def queue_then_hurry(cooldowns: Cooldowns) -> tuple[list[float], list[float]]:
        key = destination_key("https://api.test/v1", {})
        with instant_waits():
            cooldowns.observe(cooldowns.take_turn(key), 200, ten_a_second)
        pace = cooldowns.pace(key)
        assert pace is not None
        now = time.monotonic()
        spent = pace.next_turn(now, None)
        pace.sent(spent.at)
        pace.refused(Refusal(now, spent.at, now, 0.25, serial=spent.serial))  # within what remained: spending ends
        paced = [pace.next_turn(now, None) for _ in range(4)]
        for grant in paced:
            pace.sent(grant.at)
        now = time.monotonic()
        assert pace.refused(Refusal(now, paced[-1].at, now, 0.25))  # at most 4 a second
        queue = [pace.next_turn(now, None) for _ in range(20)]
        waiting = pace.reschedule([Waiting(grant.at, grant.ticket) for grant in queue])
        asked = False
        for _ in range(200):  # successes of requests sent after the cut, until the rate is back at 8 a second
            now = time.monotonic()
            pace.sent(now)
            asked = pace.accepted(now, held_back=True, sent_at=now) or asked
            if (pace.rate or 0) >= 8:
                break
        assert asked and (pace.rate or 0) >= 8
        tickets = [grant.ticket for grant in queue]
        return waiting, pace.hurry([Waiting(at, ticket) for at, ticket in zip(waiting, tickets, strict=True)])

    for cooldowns in (Cooldowns(probe_timeout=0.01), Cooldowns(redis=redis_paces, probe_timeout=0.01)):
        before, after = queue_then_hurry(cooldowns)
        assert [b - a for a, b in itertools.pairwise(before)] == pytest.approx([0.25] * 19, abs=0.01)
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert all(0.1 / (1 - SAFETY_MARGIN) - 1e-6 <= gap < 0.2 for gap in gaps)
        assert all(later <= earlier for earlier, later in zip(before, after, strict=True))
        assert after[-1] < before[-1] - 1.0


def test_a_cancelled_turn_leaves_its_place_empty_in_either_pace(redis_paces: RedisPaces) -> None:
    """Three turns at 10 a second, the second cancelled (its task was), then three more: in this process and in
    Redis alike, its place is not handed on (the pace errs by one turn on the slow side), and no later turn moves."""
    ten_a_second = {**PER_MINUTE, "x-ratelimit-limit-requests": "600", "x-ratelimit-reset-requests": "1s"}

    def offsets(cooldowns: Cooldowns, key: DestinationKey) -> list[float]:
        with instant_waits():
            cooldowns.observe(cooldowns.take_turn(key), 200, ten_a_second)
            start = time.monotonic()
            turns = [cooldowns.take_turn(key) for _ in range(3)]
            cooldowns.cancel(turns[1])
            turns += [cooldowns.take_turn(key) for _ in range(3)]
            return [turn.due - start for turn in turns]

    key = destination_key("https://api.test/v1", {})
    here = offsets(Cooldowns(probe_timeout=0.01), key)
    there = offsets(Cooldowns(redis=redis_paces, probe_timeout=0.01), key)
    step = 0.1 / (1 - SAFETY_MARGIN)
    assert here == pytest.approx([n * step for n in range(6)], abs=0.005)
    assert there == pytest.approx(here, abs=0.02)


def test_a_rate_first_stated_by_a_refusal_moves_slow_starts_turns_in_either_pace(redis_paces: RedisPaces) -> None:
    """Gemini states its rate only in a 429's body. The turns slow start handed out before it go, after the
    hold, at that rate: in this process and in Redis alike (test_pace tells it to the in-process pace alone)."""
    stated = Quota("requests", 600, None, None, 60.0, "window", "gemini", "body: QuotaFailure.quotaValue")

    def moved(cooldowns: Cooldowns) -> list[float]:
        key = destination_key("https://api.test/v1", {})
        cooldowns.observe(cooldowns.take_turn(key), 200, {})  # says nothing of its limits: slow start
        pace = cooldowns.pace(key)
        assert pace is not None
        now = time.monotonic()
        grants = [pace.next_turn(now, None) for _ in range(6)]
        # As Cooldowns.observe tells a 429: what it states, then its hold. (Its refusal would also cut the
        # feedback rate, from samples that differ here: Redis counts the turns to come as sends.)
        pace.learn(now, [stated], serial=-1)
        pace.hold(now + 0.5, now)
        times = pace.reschedule([Waiting(grant.at, grant.ticket) for grant in grants[1:]])
        return [at - now for at in times]

    here = moved(Cooldowns(probe_timeout=0.01))
    there = moved(Cooldowns(redis=redis_paces, probe_timeout=0.01))
    step = 0.1 / (1 - SAFETY_MARGIN)
    assert here == pytest.approx([0.5 + n * step for n in range(5)], abs=0.005)
    assert there == pytest.approx(here, abs=0.02)


def test_once_the_spending_ends_the_turns_stay_lane_paced_in_either_pace(redis_paces: RedisPaces) -> None:
    """A refusal within what the server said remained ends the spending: from then on the turns handed out
    stay lane-paced. A later hold, after the stated rate has fallen, moves them behind it one new step apart,
    not all to its end at once: in this process and in Redis alike (before, only Redis did)."""

    def quota(limit: int, remaining: int) -> Quota:
        return Quota("requests", limit, remaining, None, 60.0, "window", "litellm", "x-ratelimit-limit-requests")

    def moved(cooldowns: Cooldowns) -> list[float]:
        key = destination_key("https://api.test/v1", {})
        cooldowns.observe(cooldowns.take_turn(key), 200, {})
        pace = cooldowns.pace(key)
        assert pace is not None
        now = time.monotonic()
        first = pace.next_turn(now, None)
        pace.learn(now, [quota(600, 3)], first=True, serial=first.serial)  # 10 a second, 3 left: spent at once
        grants = [pace.next_turn(now, None) for _ in range(6)]
        pace.hold(now + 0.5, now)
        pace.refused(Refusal(now, now, now, serial=grants[0].serial))  # within what remained: no longer spent
        times = pace.reschedule([Waiting(grant.at, grant.ticket) for grant in grants])
        pace.learn(now, [quota(300, 0)], serial=-1)  # the stated rate falls to 5 a second
        pace.hold(now + 1.0, now)
        times = pace.reschedule([Waiting(at, grant.ticket) for at, grant in zip(times, grants, strict=True)])
        return [at - now for at in times]

    here = moved(Cooldowns(probe_timeout=0.01))
    there = moved(Cooldowns(redis=redis_paces, probe_timeout=0.01))
    step = 0.2 / (1 - SAFETY_MARGIN)  # the rate stated last
    assert here == pytest.approx([1.0 + n * step for n in range(6)], abs=0.005)
    assert there == pytest.approx(here, abs=0.02)


@pytest.mark.parametrize("waiter", ["thread", "task"])
@pytest.mark.parametrize("where", ["in process", "in redis"])
def test_a_turn_granted_but_not_yet_taken_waits_for_a_hold_learnt_meanwhile(
    where: str, waiter: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry's turn is granted for now, and before its thread (or task) takes it (a busy interpreter, or the
    lock held by another thread learning a 429) the process learns a hold: the turn has not gone, and waits for
    the hold. A turn due at once was not pending, so the hold moved it nowhere; through Redis, which counts such
    a turn as sent, not even once pending."""
    import asyncio

    cooldowns = cooldowns_kept(where, request)
    cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
    retried, refused = cooldowns.take_turn(KEY), cooldowns.take_turn(KEY)
    cooldowns.observe(retried, 200, PER_MINUTE)
    take, atake = Cooldowns._wait_until_sent, Cooldowns._await_until_sent

    def hold_before_taking(self: Cooldowns, turn: object) -> float:
        self.observe(refused, 429, {}, ServerHint(0.2, "retry-after-ms"))
        return take(self, turn)  # type: ignore[arg-type]

    async def hold_before_awaiting(self: Cooldowns, turn: object) -> float:
        self.observe(refused, 429, {}, ServerHint(0.2, "retry-after-ms"))
        return await atake(self, turn)  # type: ignore[arg-type]

    monkeypatch.setattr(Cooldowns, "_wait_until_sent", hold_before_taking)
    monkeypatch.setattr(Cooldowns, "_await_until_sent", hold_before_awaiting)
    time.sleep(0.03)  # the lane's 10 ms steps are past: the retry's turn is now
    started = time.monotonic()
    if waiter == "thread":
        cooldowns.wait_turn(retried)
    else:
        asyncio.run(cooldowns.await_turn(retried))
    assert time.monotonic() - started >= 0.2 - 0.01


def test_a_hold_learnt_during_the_round_trip_to_redis_holds_the_turn_it_grants(
    redis_paces: RedisPaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis grants a turn for now; before its answer is back, another thread of this process learns a hold
    (and tells Redis, too late for that grant): the turn waits for the hold."""
    cooldowns = Cooldowns(redis=redis_paces, probe_timeout=0.01)
    cooldowns.observe(cooldowns.take_turn(KEY), 200, PER_MINUTE)
    refused = cooldowns.take_turn(KEY)
    reserve = RedisPace.next_turn

    def hold_during_the_round_trip(pace: RedisPace, *args: object, **kwargs: object) -> object:
        grant = reserve(pace, *args, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(RedisPace, "next_turn", reserve)
        cooldowns.observe(refused, 429, {}, ServerHint(0.2, "retry-after-ms"))
        return grant

    monkeypatch.setattr(RedisPace, "next_turn", hold_during_the_round_trip)
    time.sleep(0.03)  # the lane's 10 ms steps are past: the turn is now
    started = time.monotonic()
    cooldowns.take_turn(KEY)
    assert time.monotonic() - started >= 0.2 - 0.01


def test_a_turn_held_here_follows_a_later_hold_from_another_process(
    two_processes: tuple[Cooldowns, Cooldowns], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn whose time had come when this process learnt a hold waits for it (a hold in Redis counts the
    turn as gone); another process learns a later hold while it waits: the turn waits for that one too."""
    a, b = two_processes
    a.observe(a.take_turn(KEY), 200, PER_MINUTE)
    b.observe(b.take_turn(KEY), 200, PER_MINUTE)
    retried, refused_here, refused_there = a.take_turn(KEY), a.take_turn(KEY), b.take_turn(KEY)
    a.observe(retried, 200, PER_MINUTE)
    take = Cooldowns._wait_until_sent
    stated: list[float] = []

    def hold_there() -> None:
        stated.append(time.monotonic() + 0.2)
        b.observe(refused_there, 429, {}, ServerHint(0.2, "retry-after-ms"))

    def hold_here_then_there(self: Cooldowns, turn: object) -> float:
        self.observe(refused_here, 429, {}, ServerHint(0.2, "retry-after-ms"))
        threading.Timer(0.05, hold_there).start()
        return take(self, turn)  # type: ignore[arg-type]

    monkeypatch.setattr(Cooldowns, "_wait_until_sent", hold_here_then_there)
    time.sleep(0.03)  # the lane's 10 ms steps are past: the retry's turn is now
    a.wait_turn(retried)
    assert time.monotonic() >= stated[0] - 0.005  # b's hold's end, to within the clocks' offset


def test_a_turn_granted_before_another_process_holds_waits_for_that_hold(
    two_processes: tuple[Cooldowns, Cooldowns], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis grants a turn for now; before its thread takes it, another process learns a hold. A hold counts a
    turn whose time had come as gone, but this one has not gone: when it asks, it waits for that hold, which
    its own process never learnt."""
    a, b = two_processes
    a.observe(a.take_turn(KEY), 200, PER_MINUTE)
    b.observe(b.take_turn(KEY), 200, PER_MINUTE)
    refused_there = b.take_turn(KEY)
    take = Cooldowns._wait_until_sent
    stated: list[float] = []

    def hold_there_before_taking(self: Cooldowns, turn: object) -> float:
        if self is a:
            stated.append(time.monotonic() + 0.2)
            b.observe(refused_there, 429, {}, ServerHint(0.2, "retry-after-ms"))
        return take(self, turn)  # type: ignore[arg-type]

    monkeypatch.setattr(Cooldowns, "_wait_until_sent", hold_there_before_taking)
    time.sleep(0.03)  # the lane's 10 ms steps are past: the turn is now
    a.take_turn(KEY)
    assert time.monotonic() >= stated[0] - 0.005  # b's hold's end, to within the clocks' offset


def _learn_a_hold_once_taken(cooldowns: Cooldowns, hold: float) -> None:
    """Make the next turn taken from ``cooldowns`` be followed, before its first byte, by a hold another
    request learnt: as if another thread read a 429 while this one was on its way to the socket."""
    take_turn = cooldowns.take_turn

    def taken_then_held(*args: object, **kwargs: object) -> object:
        turn = take_turn(*args, **kwargs)  # type: ignore[arg-type]
        cooldowns.observe(turn, 429, {}, ServerHint(hold, "retry-after-ms"))
        cooldowns.take_turn = take_turn  # type: ignore[method-assign]
        return turn

    cooldowns.take_turn = taken_then_held  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("path", "where", "request_timeout"),
    [
        *((path, "in process", 60.0) for path in ("adapter", "classic httpx")),
        *((path, "in redis", 60.0) for path in ("adapter", "classic httpx")),
        *((path, "in process", 0.1) for path in ("adapter", "classic httpx")),
    ],
    ids=lambda value: "the wait past LLM_REQUEST_TIMEOUT" if value == 0.1 else "" if value == 60.0 else None,
)
def test_no_first_byte_before_a_hold_learnt_on_the_way_to_the_socket(
    path: str, where: str, request_timeout: float, request: pytest.FixtureRequest
) -> None:
    """On every sync path, the pace kept here or in Redis, the request whose turn was taken before a hold was
    learnt reaches the server no sooner than the hold ends; the wait is no part of its attempt, which
    LLM_REQUEST_TIMEOUT bounds. (asyncio tasks are not preempted between their turn and their first byte.)"""
    cooldowns = cooldowns_kept(where, request)
    config = Config(retry_count=1, retry_min_delay=0, retry_max_delay=0, request_timeout=request_timeout)
    with scripted_server(completion()) as server, contextlib.ExitStack() as stack:
        url = f"{server.url}/v1/chat/completions"
        if path == "adapter":
            session = stack.enter_context(retrying_session(config, cooldowns=cooldowns))
            send = lambda: session.post(url, json={}).status_code  # noqa: E731
        else:
            client = stack.enter_context(httpx.Client(transport=HttpxTransport(config, cooldowns=cooldowns)))
            send = lambda: client.post(url, json={}).status_code  # noqa: E731
        assert send() == 200  # the probe: the destination is known
        _learn_a_hold_once_taken(cooldowns, 0.15)
        held_at = time.monotonic()
        assert send() == 200
    assert server.received[-1].at >= held_at + 0.15
