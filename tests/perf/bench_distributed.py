"""The pace shared through Redis, measured: many processes on one key, Redis killed mid-run, its cost per request.

Not part of the unit suite. Needs redis-server on the PATH and the ``redis`` extra::

    .venv/bin/python tests/perf/bench_distributed.py --json docs/perf/distributed.json   # about 10 minutes

Three parts, each printed as a Markdown table:

- **Processes on one key.** 4 and 8 processes x 8 threads send one batch to the
  built-in endpoint (``aicoder.simulate`` with ``processes``), in the openai,
  token-limited and hint-only dialects, each with a pace per process and with
  the pace in Redis. Every Redis run starts a fresh redis-server, whose own
  command counts give the Redis calls per request.
- **Redis killed.** The same batch through Redis, whose server is killed once a
  third of the requests are done and restarted on the same port a few seconds later.
- **Added latency.** One process asks for turns and reports answers as fast as it
  can, with its pace in Redis and in memory; the difference is what Redis costs
  a request.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from aicoder.config import Config
from aicoder.http.cooldown import Cooldowns
from aicoder.http.destinations import destination_key
from aicoder.http.redis_pace import RedisPaces
from aicoder.simulate import SimulationResult, simulate
from aicoder.testing.redis import local_redis

DIALECTS = ("openai", "openai-tokens", "retry-after-ms")
#: The goals: (wall / ideal, 429s per success) through Redis, and wall / ideal with Redis killed mid-run.
GOAL, KILLED_GOAL = (1.10, 0.15), 1.5
LATENCY_GOAL = (0.001, 0.005)  # added seconds per request: p50, p99
RATE, BURST, THREADS = 10.0, 10, 8


def batch(dialect: str, processes: int, requests: int, redis_url: str | None, **kwargs: Any) -> SimulationResult:
    config = dataclasses.replace(Config.load(environ={}), redis_url=redis_url)
    return simulate(
        rate=RATE,
        burst=BURST,
        requests=requests,
        concurrency=THREADS,
        provider="openrouter",
        config=config,
        dialect=dialect,
        processes=processes,
        **kwargs,
    )


def redis_calls(url: str) -> int:
    """Round trips to Redis so far: its scripts, and their loading (commands that scripts run are not trips)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "script"))


def row(name: str, result: SimulationResult, extra: str = "") -> dict[str, Any]:
    ratio = result.wall_seconds / result.ideal_seconds
    per_success = result.rate_limited / max(result.succeeded, 1)
    print(
        f"| {name} | {result.failed} | {ratio:.3f} | {per_success:.2f} | "
        f"{_percentile(result.latencies, 50):.2f} | {_percentile(result.latencies, 99):.2f} | {extra} |",
        flush=True,
    )
    return {**result.as_dict(), "name": name, "wall_ratio": round(ratio, 4), "per_success": round(per_success, 4)}


def processes_on_one_key(counts: list[int], dialects: list[str], requests: int) -> list[dict[str, Any]]:
    print(f"\n### {requests} requests at {RATE:g}/s (burst {BURST}), {THREADS} threads a process\n")
    print(f"goal through Redis: 0 failures, wall / ideal <= {GOAL[0]}, 429s per success <= {GOAL[1]}\n")
    print("| run | failures | wall ÷ ideal | 429s per success | p50 (s) | p99 (s) | Redis calls per request; goal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for processes in counts:
        for dialect in dialects:
            name = f"{processes} processes, {dialect}"
            alone = batch(dialect, processes, requests, None)
            rows.append({**row(f"{name}, pace per process", alone), "redis": False})
            with local_redis() as (url, _):
                before = redis_calls(url)
                shared = batch(dialect, processes, requests, url)
                calls = (redis_calls(url) - before) / max(shared.requests + shared.retries, 1)
            met = shared.failed == 0 and _ratio(shared) <= GOAL[0] and _per_success(shared) <= GOAL[1]
            verdict = f"{calls:.2f}; {'met' if met else '**missed**'}"
            rows.append({**row(f"{name}, pace in Redis", shared, verdict), "redis": True, "calls": calls, "met": met})
    return rows


def redis_killed(processes: int, dialects: list[str], requests: int, down: float) -> list[dict[str, Any]]:
    print(f"\n### Redis killed a third of the way in, back {down:g} s later: {processes} processes x {THREADS}\n")
    print(f"goal: 0 failures, wall / ideal <= {KILLED_GOAL}\n")
    print("| run | failures | wall ÷ ideal | 429s per success | p50 (s) | p99 (s) | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for dialect in dialects:
        with contextlib.ExitStack() as stack:
            url, process = stack.enter_context(local_redis())
            port = int(url.rsplit(":", 1)[1].split("/")[0])
            back = threading.Timer(down, stack.enter_context, [local_redis(port)])

            def kill_at_a_third(done: int, _: int, process: Any = process, back: threading.Timer = back) -> None:
                if done >= requests // 3 and process.poll() is None:
                    process.kill()
                    back.start()

            result = batch(dialect, processes, requests, url, on_progress=kill_at_a_third)
            if back.is_alive():
                back.join()
        met = result.failed == 0 and _ratio(result) <= KILLED_GOAL
        rows.append(row(f"{dialect}, Redis killed", result, "met" if met else "**missed**") | {"met": met})
    return rows


def added_latency(operations: int, threads: int, rate: float | None) -> dict[str, float]:
    """Seconds per request of taking a turn and reporting its answer, from ``threads`` threads of one process
    together sending ``rate`` requests a second (``None``: each as fast as it can), with the pace in Redis and
    in memory."""
    key = destination_key("https://api.test/v1", {"Authorization": "Bearer sk-bench"})
    headers = {"x-ratelimit-limit-requests": "100000000", "x-ratelimit-remaining-requests": "99999999"}

    def timed(cooldowns: Cooldowns) -> tuple[list[float], float]:
        cooldowns.observe(cooldowns.take_turn(key), 200, headers)
        took: list[float] = []
        jitter = random.Random(7)

        def work() -> None:
            for _ in range(operations // threads):
                started = time.perf_counter()
                turn = cooldowns.take_turn(key)
                cooldowns.observe(turn, 200, headers)
                took.append(time.perf_counter() - started)
                if rate is not None:  # arrivals at random, as independent requests come
                    time.sleep(jitter.expovariate(rate / threads))

        workers = [threading.Thread(target=work) for _ in range(threads)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return took, len(took) / (time.perf_counter() - started)

    with local_redis() as (url, _):
        shared = RedisPaces(url)
        in_redis, throughput = timed(Cooldowns(redis=shared, probe_timeout=0.01))
        shared.close()
        scripts = redis.Redis.from_url(url).info("commandstats").get("cmdstat_evalsha", {})
    in_memory, _ = timed(Cooldowns(probe_timeout=0.01))
    figures = {
        "threads": threads,
        "rate": rate or 0.0,
        "throughput": throughput,
        "redis_p50": _percentile(in_redis, 50),
        "redis_p99": _percentile(in_redis, 99),
        "memory_p50": _percentile(in_memory, 50),
        "memory_p99": _percentile(in_memory, 99),
        "server_seconds_per_script": float(scripts.get("usec_per_call", 0.0)) / 1e6,
    }
    figures["added_p50"] = figures["redis_p50"] - figures["memory_p50"]
    figures["added_p99"] = figures["redis_p99"] - figures["memory_p99"]
    met = figures["added_p50"] <= LATENCY_GOAL[0] and figures["added_p99"] <= LATENCY_GOAL[1]
    verdict = "met" if met else "**missed**"
    load = f"{rate:g}/s at random" if rate else "each as fast as it can"
    print(
        f"| {threads} | {load} | {throughput:.0f} "
        f"| {figures['memory_p50'] * 1e3:.3f} / {figures['memory_p99'] * 1e3:.3f} "
        f"| {figures['redis_p50'] * 1e3:.3f} / {figures['redis_p99'] * 1e3:.3f} "
        f"| **{figures['added_p50'] * 1e3:.3f} / {figures['added_p99'] * 1e3:.3f}** "
        f"| {figures['server_seconds_per_script'] * 1e6:.1f} | {'—' if rate is None and threads > 1 else verdict} |",
        flush=True,
    )
    return figures


def latencies(operations: int) -> list[dict[str, float]]:
    print(f"\n### Added latency per request, local Redis, {operations} requests from one process\n")
    print("goal: added p50 <= 1 ms, p99 <= 5 ms (the saturated row measures throughput: its latency is queueing)\n")
    print(
        "| threads | load | requests/s | in memory p50 / p99 (ms) | in Redis p50 / p99 (ms) | added p50 / p99 (ms) "
        "| Redis's own time per script (µs) | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [added_latency(operations, 1, None), added_latency(operations, 8, 500.0)]
    saturated = added_latency(operations, 8, None)
    return [*rows, {**saturated, "saturated": True}]


def _ratio(result: SimulationResult) -> float:
    return result.wall_seconds / result.ideal_seconds


def _per_success(result: SimulationResult) -> float:
    return result.rate_limited / max(result.succeeded, 1)


def _percentile(values: list[float] | tuple[float, ...], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered)) - 1))] if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--dialects", nargs="+", default=list(DIALECTS), choices=list(DIALECTS))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--down", type=float, default=3.0, help="seconds Redis stays down in the fault runs")
    parser.add_argument("--operations", type=int, default=5000, help="requests timed for the added latency")
    parser.add_argument("--skip", nargs="*", default=[], choices=["processes", "killed", "latency"])
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    parts: dict[str, Callable[[], Any]] = {
        "processes": lambda: processes_on_one_key(args.processes, args.dialects, args.requests),
        "killed": lambda: redis_killed(max(args.processes), args.dialects, args.requests, args.down),
        "latency": lambda: latencies(args.operations),
    }
    results = {name: part() for name, part in parts.items() if name not in args.skip}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    missed = [
        entry
        for rows in (results.get("processes", []), results.get("killed", []))
        for entry in rows
        if entry.get("met") is False
    ]
    for latency in results.get("latency", []):
        slow = latency["added_p50"] > LATENCY_GOAL[0] or latency["added_p99"] > LATENCY_GOAL[1]
        if slow and not latency.get("saturated"):
            missed.append(latency)
    print(f"\n{len(missed)} goal(s) missed" if missed else "\nevery goal met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
