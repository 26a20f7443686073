"""The asyncio path, measured: AsyncOpenAI through aicoder against AsyncOpenAI's own retries.

Not part of the unit suite. Needs the ``bench`` extra::

    .venv/bin/python tests/perf/bench_async.py --json docs/perf/async.json   # about 14 minutes

Five parts, each printed as a Markdown table:

- **Batches.** ``openai.AsyncOpenAI(http_client=aicoder.async_http_client(), max_retries=0)``
  and ``openai.AsyncOpenAI(max_retries=5)``: 256 requests from 64 or 256 tasks at once (each
  task sends requests until none are left, as the threads of the sync benchmark do), at 10 and
  50 requests a second, against the built-in endpoint (in a separate process) in the
  openai, token-limited and hint-only dialects; with the event loop's lag measured throughout.
- **Through Redis.** The same batches from 256 tasks with ``LLM_RETRY_REDIS_URL`` set (a fresh
  redis-server on 127.0.0.1): the pace kept in Redis, its round trips run off the loop.
- **Holds and cancellation.** 256 tasks waiting on a hold: the loop's lag meanwhile, and how long
  each takes to end once cancelled.
- **Memory** per 1,000 requests in flight, waiting for their turn (tracemalloc).
- **Overhead** with no 429: 2,000 sequential requests through ``async_http_client()`` against the
  SDK's own async client, in alternating blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import shutil
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).parents[2]))

from aicoder import Config, LLMClient, async_http_client
from aicoder.http.cooldown import default_cooldowns
from aicoder.http.destinations import destination_key
from aicoder.testing.redis import local_redis
from tests.perf.bench import BURST, MESSAGES, endpoint_process

DIALECTS = ("openai", "openai-tokens", "retry-after-ms")
GOAL = (1.10, 0.15)  # wall / ideal, 429s per success; and no failure
LAG_GOAL, CANCEL_GOAL, OVERHEAD_GOAL = 0.050, 0.050, 1.10
KEY = "sk-bench-async"
TICK = 0.01

Client = tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]


def aicoder_client(base_url: str, config: Config | None = None) -> Client:
    client = async_http_client(config or Config())
    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0, http_client=client)
    return (lambda: sdk.chat.completions.create(model="bench", messages=MESSAGES)), sdk.close  # type: ignore[arg-type]


def aicoder_asend(base_url: str) -> Client:
    client = LLMClient("bench", config=Config(openrouter_api_key=KEY, openrouter_base_url=base_url))
    return (lambda: client.asendRequest("You are a benchmark.", "hello")), client.aclose


def sdk_client(base_url: str) -> Client:
    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=5)
    return (lambda: sdk.chat.completions.create(model="bench", messages=MESSAGES)), sdk.close  # type: ignore[arg-type]


CONTENDERS: dict[str, Callable[[str], Client]] = {
    "aicoder: AsyncOpenAI + async_http_client()": aicoder_client,
    "aicoder: LLMClient.asendRequest": aicoder_asend,
    "AsyncOpenAI max_retries=5": sdk_client,
}
OURS = ("aicoder: AsyncOpenAI + async_http_client()", "aicoder: LLMClient.asendRequest")


class LagMeter:
    """How late the event loop wakes a task that sleeps ``TICK`` seconds, over and over, while it runs."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK)
            self.lags.append(max(loop.time() - before - TICK, 0.0))

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def percentile(self, percent: float) -> float:
        ordered = sorted(self.lags) or [0.0]
        return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


async def _batch(
    factory: Callable[[str], Client], base_url: str, tasks: int, requests: int
) -> tuple[int, float, LagMeter]:
    send, close = factory(base_url)
    failures, left = 0, requests

    async def worker() -> None:
        nonlocal failures, left
        while left > 0:
            left -= 1
            try:
                await send()
            except Exception:
                failures += 1

    with LagMeter() as lag:
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        wall = time.monotonic() - started
    await close()
    return failures, wall, lag


def run_batch(
    name: str, dialect: str, rate: float, tasks: int, requests: int, redis_url: str | None = None
) -> dict[str, Any]:
    factory = CONTENDERS[name]
    if redis_url is not None:
        assert factory is aicoder_client
        name = f"{name}, pace in Redis"
        factory = functools.partial(aicoder_client, config=Config(redis_url=redis_url))
    with endpoint_process(1e9, 10**9) as (warm_url, _):  # imports and first calls stay out of the timing
        asyncio.run(_batch(factory, warm_url, 1, 1))
    default_cooldowns().clear()
    with endpoint_process(rate, BURST, dialect) as (base_url, served):
        failures, wall, lag = asyncio.run(_batch(factory, base_url, tasks, requests))
    ideal = (requests - BURST) / rate
    per_success = served.rate_limited / max(served.ok, 1)
    row = {
        "dialect": dialect,
        "rate": rate,
        "tasks": tasks,
        "requests": requests,
        "contender": name,
        "failures": failures,
        "wall_over_ideal": round(wall / ideal, 4),
        "rate_limited_per_success": round(per_success, 4),
        "lag_p50_ms": round(lag.percentile(50) * 1000, 2),
        "lag_p99_ms": round(lag.percentile(99) * 1000, 2),
    }
    met = failures == 0 and wall / ideal <= GOAL[0] and per_success <= GOAL[1]
    row["goal"] = ("met" if met else "**missed**") if name.startswith(OURS) else ""
    print(
        f"| {dialect} | {rate:g} | {tasks} | {name} | {failures} | {row['wall_over_ideal']:.3f} | "
        f"{per_success:.2f} | {row['lag_p50_ms']:.1f} / {row['lag_p99_ms']:.1f} | {row['goal']} |",
        flush=True,
    )
    return row


async def _held(tasks: int, hold: float) -> dict[str, float]:
    """``tasks`` requests' turns waiting on a hold: the loop's lag, then each one's end once cancelled."""
    cooldowns = default_cooldowns()
    cooldowns.clear()
    key = destination_key("https://api.bench", {"authorization": f"Bearer {KEY}"})
    probe = cooldowns.take_turn(key)
    cooldowns.observe(probe, 200, {})
    pace = cooldowns.pace(key)
    assert pace is not None
    pace.hold(time.monotonic() + hold, time.monotonic())
    ended: list[float] = []

    async def wait_turn() -> None:
        try:
            await cooldowns.atake_turn(key)
        except asyncio.CancelledError:
            ended.append(time.monotonic())
            raise

    with LagMeter() as lag:
        waiting = [asyncio.create_task(wait_turn()) for _ in range(tasks)]
        await asyncio.sleep(hold / 2)
        cancelled = time.monotonic()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    left = len(probe.destination.pending)  # turns still counted as waiting: none, if cancelling gave them up
    return {
        "tasks": tasks,
        "lag_p50_ms": round(lag.percentile(50) * 1000, 2),
        "lag_p99_ms": round(lag.percentile(99) * 1000, 2),
        "cancel_max_ms": round((max(ended) - cancelled) * 1000, 2),
        "pending_after": left,
    }


async def _memory(tasks: int, base_url: str) -> float:
    """Bytes per request in flight through AsyncOpenAI + async_http_client(), each waiting for its turn."""
    send, close = aicoder_client(base_url)
    await send()  # the probe: connections and caches exist before measuring
    key = destination_key(f"{base_url}/chat/completions", {"authorization": f"Bearer {KEY}"})
    pace = default_cooldowns().pace(key)
    assert pace is not None
    pace.hold(time.monotonic() + 60, time.monotonic())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    waiting = [asyncio.create_task(send()) for _ in range(tasks)]
    await asyncio.sleep(1.0)
    during = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await close()
    return (during - before) / tasks


async def _overhead(base_url: str, count: int, rounds: int, block: int = 100) -> list[tuple[float, float]]:
    ours, close_ours = aicoder_client(base_url)
    theirs, close_theirs = sdk_client(base_url)
    clock = time.perf_counter
    measured = []
    for round_ in range(rounds + 1):  # the first round warms up
        spent = [0.0, 0.0]
        for start in range(0, count, block):
            first = (start // block + round_) % 2
            for side in (first, 1 - first):
                send = (ours, theirs)[side]
                began = clock()
                for _ in range(block):
                    await send()
                spent[side] += clock() - began
        if round_:
            measured.append((spent[0], spent[1]))
    await close_ours()
    await close_theirs()
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialects", nargs="+", default=list(DIALECTS), choices=DIALECTS)
    parser.add_argument("--rates", nargs="+", type=float, default=[10.0, 50.0])
    parser.add_argument("--tasks", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--requests", type=int, default=256, help="requests per batch")
    parser.add_argument("--overhead", type=int, default=2000, help="requests per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["batches", "redis", "holds", "memory", "overhead"])
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": f"{_cores()} cores, Python {sys.version.split()[0]}"}
    missed = 0
    columns = "failures | wall ÷ ideal | 429s per success | loop lag p50 / p99 (ms) | goal"
    if "batches" not in args.skip:
        print(f"\n### {args.requests} requests from {' or '.join(map(str, args.tasks))} tasks at once\n")
        print(f"goal: 0 failures, wall ÷ ideal ≤ {GOAL[0]}, 429s per success ≤ {GOAL[1]}\n")
        print(f"| dialect | rate/s | tasks | contender | {columns} |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = []
        for dialect in args.dialects:
            for rate in args.rates:
                for tasks in args.tasks:
                    for name in CONTENDERS:
                        if name == OURS[1] and (rate, tasks) != (args.rates[0], args.tasks[0]):
                            continue  # asendRequest: one combination per dialect
                        rows.append(run_batch(name, dialect, rate, tasks, args.requests))
        missed += sum(row["goal"] == "**missed**" for row in rows)
        results["batches"] = rows
    if "redis" not in args.skip and shutil.which("redis-server") is None:
        print("\n### Through Redis: skipped, redis-server is not installed")
    elif "redis" not in args.skip:
        print(f"\n### Through Redis: {args.requests} requests from 256 tasks, the pace in Redis\n")
        print(f"goal: as above\n\n| dialect | rate/s | tasks | contender | {columns} |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = []
        with local_redis() as (redis_url, _):
            for dialect in args.dialects:
                for rate in args.rates:
                    rows.append(run_batch(OURS[0], dialect, rate, 256, args.requests, redis_url))
        missed += sum(row["goal"] == "**missed**" for row in rows)
        results["redis"] = rows
    if "holds" not in args.skip:
        held = asyncio.run(_held(256, 2.0))
        ok = held["lag_p99_ms"] <= LAG_GOAL * 1000 and held["cancel_max_ms"] <= CANCEL_GOAL * 1000
        missed += not ok
        print("\n### 256 tasks waiting on a 2 s hold, then cancelled\n")
        print("| loop lag p50 / p99 (ms) | slowest end after cancel (ms) | turns left pending | goal |")
        print("| --- | --- | --- | --- |")
        print(
            f"| {held['lag_p50_ms']:.1f} / {held['lag_p99_ms']:.1f} | {held['cancel_max_ms']:.1f} | "
            f"{held['pending_after']} | {'met' if ok else '**missed**'} |"
        )
        results["holds"] = held
    if "memory" not in args.skip:
        default_cooldowns().clear()
        with endpoint_process(1e9, 10**9) as (base_url, _):
            per_task = asyncio.run(_memory(1000, base_url))
        print(f"\nMemory per 1,000 requests in flight, waiting for their turn: {per_task * 1000 / 2**20:.2f} MiB")
        results["memory_per_1000_tasks_mib"] = round(per_task * 1000 / 2**20, 3)
    if "overhead" not in args.skip:
        default_cooldowns().clear()
        with endpoint_process(1e9, 10**9) as (base_url, _):
            measured = asyncio.run(_overhead(base_url, args.overhead, args.rounds))
        ours = statistics.median(mine for mine, _ in measured)
        theirs = statistics.median(other for _, other in measured)
        ratios = sorted(mine / other for mine, other in measured)
        ok = ours / theirs <= OVERHEAD_GOAL
        missed += not ok
        print(f"\n### {args.overhead:,} sequential requests, no 429 (median of {args.rounds} rounds)\n")
        print("| pair | aicoder (s) | plain (s) | ratio | ratio range | goal |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(
            f"| AsyncOpenAI: async_http_client() vs its own client | {ours:.3f} | {theirs:.3f} | "
            f"{ours / theirs:.3f} | {ratios[0]:.3f} to {ratios[-1]:.3f} | {'met' if ok else '**missed**'} |"
        )
        results["overhead"] = {"ours": ours, "theirs": theirs, "ratios": ratios}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{missed} goal(s) missed")
    return 1 if missed else 0


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    raise SystemExit(main())
