"""Trace every send before a stated time across processes sharing a pace through Redis (not part of CI).

Four processes of four threads send 100 requests at 10/s to the built-in endpoint through
one Redis (a local redis-server, started here). Each process records, on the monotonic clock
all processes share, when each request began to be written (with its turn's due time, its
process's hold and when it was granted), when a 429 was read and learnt, when its hold
reached Redis, and each reschedule. For each request the endpoint counts as early (by the
kernel's receive time), it prints the two nearest writes and their processes' events, and
every process's 429s and holds, all in milliseconds from the 429 whose stated time it broke.

    .venv/bin/python tests/perf/trace_early_sends.py --dialect github --runs 10

It patches aicoder's internals to record: a tool for finding a race, not an API.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time
from typing import Any

Record = list[tuple[str, float]]


def _member(base_url: str, redis_url: str, threads: int, claimed: Any, total: int, go: Any, out: Any) -> None:
    from aicoder import Config, LLMClient, retrying_session
    from aicoder.http import cooldown, deadline, redis_pace, turns

    record: Record = []
    write, observe, hold, reschedule = (
        deadline._DeadlineConnectionMixin.request,
        cooldown.Cooldowns.observe,
        redis_pace.RedisPace.hold,
        redis_pace.RedisPace.reschedule,
    )

    def ms(moment: float, now: float) -> str:
        return f"{(moment - now) * 1e3:+.1f}"

    def traced_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        turn, now = turns.current(), time.monotonic()
        if turn is None:
            record.append(("write", now))
        else:
            held = turn.destination.pace.held_until  # type: ignore[attr-defined]
            due, granted = turn.due, turn.granted_at  # type: ignore[attr-defined]
            record.append((f"write(due{ms(due, now)} held{ms(held, now)} granted{ms(granted, now)})", now))
        return write(self, *args, **kwargs)

    def traced_observe(self: Any, turn: Any, status: int, *args: Any, **kwargs: Any) -> Any:
        if status == 429:
            record.append(("429 read", time.monotonic()))
        return observe(self, turn, status, *args, **kwargs)

    def traced_hold(self: Any, until: float, now: float) -> bool:
        held = hold(self, until, now)
        record.append(("hold in Redis", time.monotonic()))
        return held

    def traced_reschedule(self: Any, pending: Any) -> list[float]:
        before = [turn.due for turn in pending]
        after = reschedule(self, pending)
        now = time.monotonic()
        moved = sum(1 for old, new in zip(before, after, strict=True) if new != old)
        shown = [f"{ms(old, now)}->{ms(new, now)}" for old, new in zip(before, after, strict=True)][:3]
        record.append((f"reschedule {len(pending)}, moved {moved}: {shown}", now))
        return after

    deadline._DeadlineConnectionMixin.request = traced_write  # type: ignore[method-assign]
    cooldown.Cooldowns.observe = traced_observe  # type: ignore[method-assign]
    redis_pace.RedisPace.hold = traced_hold  # type: ignore[method-assign]
    redis_pace.RedisPace.reschedule = traced_reschedule  # type: ignore[method-assign]
    config = Config(openrouter_api_key="trace", openrouter_base_url=base_url, redis_url=redis_url)
    client = LLMClient("m", config=config, session=retrying_session(config, pool_maxsize=threads))
    go.wait()

    def work() -> None:
        while True:
            with claimed.get_lock():
                if claimed.value >= total:
                    return
                claimed.value += 1
            client.sendRequest("s", "u", verbose=False)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put((os.getpid(), record))


def run(dialect: str) -> None:
    from aicoder.testing import RateLimitedEndpoint
    from aicoder.testing import endpoint as endpoint_module
    from aicoder.testing.redis import local_redis

    early: list[tuple[float, float]] = []  # (arrival, when the 429 whose time it broke was answered)
    arrived = endpoint_module.RateLimitedEndpoint._arrived

    def traced_arrived(self: Any, now: float) -> None:
        with self._lock:
            broken = [
                answered for answered, until in self._stated if answered + endpoint_module.EARLY_GRACE < now < until
            ]
        if broken:
            early.append((now, broken[0]))
        arrived(self, now)

    endpoint_module.RateLimitedEndpoint._arrived = traced_arrived  # type: ignore[method-assign]
    context = multiprocessing.get_context("spawn")
    with local_redis() as (redis_url, _), RateLimitedEndpoint(10, 5, dialect=dialect) as endpoint:
        claimed, go, out = context.Value("i", 0), context.Event(), context.Queue()
        members = [
            context.Process(target=_member, args=(endpoint.base_url, redis_url, 4, claimed, 100, go, out))
            for _ in range(4)
        ]
        for member in members:
            member.start()
        time.sleep(3)  # every process imported and ready
        go.set()
        records: list[tuple[int, Record]] = [out.get() for _ in members]
        for member in members:
            member.join()
        print(endpoint.stats())
    for now, answered in early:
        print(f"early: arrived {(now - answered) * 1e3:+.1f} ms after the 429 was answered")
        writes = sorted(
            (
                (at, pid, what)
                for pid, record in records
                for what, at in record
                if what.startswith("write") and at <= now
            ),
            reverse=True,
        )[:2]
        for at, pid, what in writes:
            print(f"  nearest write {(at - answered) * 1e3:+.1f} ms, process {pid}: {what}")
            events = [
                (what, round((at - answered) * 1e3, 1))
                for what, at in dict(records)[pid]
                if -5e-3 < at - answered <= now - answered
            ]
            print(f"    its events: {events}")
        holds = sorted(
            (round((at - answered) * 1e3, 1), pid, what)
            for pid, record in records
            for what, at in record
            if what in ("429 read", "hold in Redis") and -3e-3 < at - answered < now - answered
        )
        print(f"  every process's 429s and holds: {holds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialect", default="github")
    parser.add_argument("--runs", type=int, default=1)
    arguments = parser.parse_args()
    for _ in range(arguments.runs):
        run(arguments.dialect)


if __name__ == "__main__":
    main()
