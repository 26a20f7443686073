"""aicoder's benchmark: coordinated backoff against other retry strategies, dialect by dialect, overhead,
and reliability.

Not part of the unit suite. Needs the ``bench`` extra::

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python tests/perf/bench.py                  # everything, about 90 minutes
    .venv/bin/python tests/perf/bench.py --quick          # rates 10 and 50 only
    .venv/bin/python tests/perf/bench.py --skip overhead reliability --dialects bare retry-after

Each run starts the built-in rate-limited endpoint in a separate process (so the
server does not share the client's interpreter lock), speaking one dialect,
sends ``--requests`` chat completions from a number of threads, and reads the
endpoint's own counts. It prints one Markdown table per dialect, checks the goals
of docs/performance.md, and writes a plot of requests over time to ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import openai
import requests
from batches import run_threads  # tests/perf/batches.py, beside this script
from requests.adapters import HTTPAdapter
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_incrementing
from urllib3.util.retry import Retry

from aicoder import Config, LLMClient, retrying_session
from aicoder.http.cooldown import default_cooldowns
from aicoder.http.tokens import estimate_cost
from aicoder.simulate import ideal_seconds
from aicoder.testing import RateLimitedEndpoint
from aicoder.testing.endpoint import DIALECTS, FIXED_WINDOW_DIALECTS

BURST = 5
RETRIES = 5  # LLM_RETRY_COUNT's default; every contender gets the same budget
SYSTEM, PROMPT = "You are a benchmark.", "hello"
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
#: Every contender sends the same messages, so a token limit allows each the same number of requests.
TOKEN_COST = estimate_cost(json.dumps({"messages": MESSAGES})).total  # type: ignore[union-attr]
#: The goals, by dialect: (wall / ideal, 429s per success); every run must also lose no request and send
#: nothing before a time the server stated. Where answers say what remains, the burst is spent: 1.05.
GOALS = (
    {dialect: (1.10, 0.15) for dialect in DIALECTS}
    | {dialect: (1.05, 0.10) for dialect in ("openai", "openai-tokens", "anthropic", "github", "ietf")}
    | {"retry-after": (1.25, 0.10), "gemini": (1.25, 0.10), "bare": (1.5, 0.5)}
    | {"litellm": (1.25, math.inf), "litellm-unenforced": (0, 0)}
)
#: A declared limit nothing enforces has no ideal time: the goal is to take at most this much of the SDK's.
UNENFORCED_SDK_RATIO = 1.5
#: A fixed window of 100 requests per 10 s: 150 requests need the start of a second window.
FIXED_WINDOW_REQUESTS, FIXED_WINDOW_RATE = 150, 10.0


# --- the endpoint, in its own process ---


def _serve(conn: Connection, rate: float, burst: int, dialect: str, foreign: float) -> None:
    with RateLimitedEndpoint(rate, burst, dialect=dialect, foreign=foreign, token_cost=TOKEN_COST) as endpoint:
        conn.send(endpoint.base_url)
        conn.recv()
        conn.send((endpoint.stats(), [(event.at, event.status) for event in endpoint.events()]))


@dataclass
class Served:
    ok: int
    rate_limited: int
    other: int
    events: list[tuple[float, int]]
    early: int = 0


@contextmanager
def endpoint_process(
    rate: float, burst: int, dialect: str = "openai", foreign: float = 0.0
) -> Iterator[tuple[str, Served]]:
    """Run a RateLimitedEndpoint in a child process; on exit, fill in what it served."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(child, rate, burst, dialect, foreign), daemon=True
    )
    process.start()
    served = Served(0, 0, 0, [])
    try:
        yield parent.recv(), served
    finally:
        parent.send("stop")
        stats, events = parent.recv()
        served.ok, served.rate_limited, served.other, served.events = stats.ok, stats.rate_limited, stats.other, events
        served.early = stats.early
        process.join(5)


# --- the contenders: each returns send(index) -> succeeded, and close() ---

Sender = tuple[Callable[[int], bool], Callable[[], None]]


def _aicoder(model: str, config: Config, threads: int) -> Sender:
    """``LLMClient`` for ``model`` over one retrying session shared by all threads."""
    session = retrying_session(config, pool_maxsize=threads)
    client = LLMClient(model, config=config, session=session)
    return (lambda index: _completes(client, index)), session.close


def _completes(client: LLMClient, index: int) -> bool:
    try:
        client.sendRequest(SYSTEM, PROMPT, verbose=False)
    except RuntimeError:
        return False
    return True


def aicoder_shared(base_url: str, threads: int) -> Sender:
    return _aicoder("openrouter/bench", Config(openrouter_api_key="bench", openrouter_base_url=base_url), threads)


def aicoder_per_thread(base_url: str, threads: int) -> Sender:
    config = Config(openrouter_api_key="bench", openrouter_base_url=base_url)
    local = threading.local()
    sessions: list[requests.Session] = []

    def send(index: int) -> bool:
        if not hasattr(local, "client"):
            local.session = retrying_session(config)
            sessions.append(local.session)
            local.client = LLMClient("openrouter/bench", config=config, session=local.session)
        return _completes(local.client, index)

    return send, lambda: [session.close() for session in sessions]


def aicoder_sdk_bridge(base_url: str, threads: int) -> Sender:
    return _aicoder("openai/bench", Config(openai_api_key="bench", openai_base_url=base_url), threads)


def aicoder_uncoordinated(base_url: str, threads: int) -> Sender:
    config = Config(openrouter_api_key="bench", openrouter_base_url=base_url, retry_coordinate=False)
    return _aicoder("openrouter/bench", config, threads)


def openai_sdk_retries(base_url: str, threads: int) -> Sender:
    client = openai.OpenAI(api_key="bench", base_url=base_url, max_retries=RETRIES)

    def send(index: int) -> bool:
        try:
            client.chat.completions.create(model="bench", messages=MESSAGES)  # type: ignore[arg-type]
        except openai.APIError:
            return False
        return True

    return send, client.close


def _plain_post(session: requests.Session, base_url: str) -> requests.Response:
    return session.post(f"{base_url}/chat/completions", json={"model": "bench", "messages": MESSAGES}, timeout=60)


def urllib3_exponential(base_url: str, threads: int) -> Sender:
    retry = Retry(
        total=RETRIES, backoff_factor=0.5, status_forcelist=[429], allowed_methods=None, raise_on_status=False
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=threads))
    return (lambda index: _plain_post(session, base_url).status_code == 200), session.close


def tenacity_incrementing(base_url: str, threads: int) -> Sender:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=threads))
    retrying = Retrying(
        wait=wait_incrementing(start=2, increment=7, max=30),  # aicoder's default schedule: 2, 9, 16, 23, 30 s
        stop=stop_after_attempt(RETRIES + 1),
        retry=retry_if_result(lambda response: response.status_code == 429),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )

    def send(index: int) -> bool:
        response = retrying(_plain_post, session, base_url)
        return response is not None and response.status_code == 200

    return send, session.close


CONTENDERS: dict[str, Callable[[str, int], Sender]] = {
    "aicoder (one session)": aicoder_shared,
    "aicoder (session per thread)": aicoder_per_thread,
    "aicoder (openai SDK via bridge)": aicoder_sdk_bridge,
    "aicoder, coordination off": aicoder_uncoordinated,
    "openai SDK max_retries=5": openai_sdk_retries,
    "urllib3 Retry, exponential": urllib3_exponential,
    "tenacity wait_incrementing": tenacity_incrementing,
}
GOAL_CONTENDERS = ("aicoder (one session)", "aicoder (session per thread)", "aicoder (openai SDK via bridge)")
#: Run for every dialect, rate and thread count; the others at the rate ``--full-rate`` only.
EVERYWHERE = ("aicoder (one session)", "openai SDK max_retries=5")
SDK = "openai SDK max_retries=5"


# --- running a batch ---


@dataclass
class Run:
    contender: str
    dialect: str
    rate: float
    threads: int
    foreign: float
    requests: int
    failures: int
    wall: float
    served: Served
    latencies: list[float]

    @property
    def ideal(self) -> float:
        return ideal_seconds(self.requests, self.rate, BURST, self.foreign, self.dialect)

    @property
    def wall_ratio(self) -> float:
        return self.wall / self.ideal if self.ideal else math.inf

    @property
    def per_success(self) -> float:
        return self.served.rate_limited / max(self.served.ok, 1)

    def percentile(self, percent: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered)) - 1))]

    def meets_goal(self, sdk: Run | None = None) -> bool:
        wall, per_success = GOALS[self.dialect]
        if self.failures or self.served.early:
            return False
        if self.dialect == "litellm-unenforced":
            return sdk is not None and self.wall <= UNENFORCED_SDK_RATIO * sdk.wall
        return self.wall_ratio <= wall and self.per_success <= per_success


def warm_up(factory: Callable[[str, int], Sender]) -> None:
    """One request to a separate, unlimited endpoint: lazy imports and first-call costs stay out of the timing."""
    with endpoint_process(1e9, 10**9) as (base_url, _):
        send, close = factory(base_url, 1)
        send(0)
        close()


def run_batch(name: str, dialect: str, rate: float, threads: int, count: int, foreign: float = 0.0) -> Run:
    factory = CONTENDERS[name]
    warm_up(factory)
    default_cooldowns().clear()
    with endpoint_process(rate, BURST, dialect, foreign) as (base_url, served):
        send, close = factory(base_url, threads)
        failures, wall, latencies = run_threads(send, count, threads)
        close()
    return Run(name, dialect, rate, threads, foreign, count, failures, wall, served, latencies)


def sdk_run(run: Run, runs: list[Run]) -> Run | None:
    """The openai SDK's run of the same batch as ``run`` (of a repeated batch, the nearest), if there is one."""
    same = (run.dialect, run.rate, run.threads, run.foreign)
    index = next(i for i, other in enumerate(runs) if other is run)
    candidates = [
        (abs(i - index), i, other)
        for i, other in enumerate(runs)
        if other.contender == SDK and (other.dialect, other.rate, other.threads, other.foreign) == same
    ]
    return min(candidates, key=lambda found: found[:2])[2] if candidates else None


def judged(run: Run, runs: list[Run]) -> bool:
    """Whether ``run`` has a goal to meet here: a declared, unenforced limit's goal is the SDK's time."""
    return run.dialect != "litellm-unenforced" or sdk_run(run, runs) is not None


def goal_column(run: Run, runs: list[Run]) -> str:
    """``met`` or ``**missed**`` for aicoder's runs; also whether slower than the SDK where the SDK lost nothing."""
    if run.contender not in GOAL_CONTENDERS:
        return ""
    sdk = sdk_run(run, runs)
    if not judged(run, runs):
        return "n/a (its goal is the openai SDK's time, and the SDK did not run)"
    verdict = "met" if run.meets_goal(sdk) else "**missed**"
    if sdk is not None and sdk.failures == 0 and run.wall > sdk.wall:
        verdict += " (slower than the SDK)"
    return verdict


# --- overhead with no 429 at all ---


def time_paired(
    ours: Callable[[int], Any], theirs: Callable[[int], Any], count: int, block: int = 100
) -> tuple[float, float]:
    """Seconds spent in ``count`` calls of each, in alternating blocks of ``block`` calls.

    Alternating gives both sides the same machine: a background job or a change of CPU speed
    slows both alike instead of whichever happened to run then. Blocks keep each side's code
    warm in the CPU caches, as it is in a process that uses only one of them.
    """
    clock = time.perf_counter
    spent = [0.0, 0.0]
    for start in range(0, count, block):
        order = ((0, ours), (1, theirs)) if start // block % 2 == 0 else ((1, theirs), (0, ours))
        for side, send in order:
            started = clock()
            for index in range(start, min(start + block, count)):
                send(index)
            spent[side] += clock() - started
    return spent[0], spent[1]


def overhead(count: int, rounds: int) -> list[tuple[str, float, float, list[float]]]:
    """Seconds for ``count`` sequential requests, aicoder against the plain equivalent: medians over ``rounds``."""
    results = []
    with endpoint_process(1e9, 10**9) as (base_url, _):
        config = Config(
            openrouter_api_key="bench", openrouter_base_url=base_url, openai_api_key="bench", openai_base_url=base_url
        )
        plain = requests.Session()
        aicoder = retrying_session(config)
        sdk_own = openai.OpenAI(api_key="bench", base_url=base_url)
        sdk_bridged = LLMClient("openai/bench", config=config).provider.client  # type: ignore[attr-defined]
        pairs = [
            (
                "requests: LinearBackoffAdapter vs plain HTTPAdapter",
                lambda i: _plain_post(aicoder, base_url).content,
                lambda i: _plain_post(plain, base_url).content,
            ),
            (
                "openai SDK: through the bridge vs its own transport",
                lambda i: sdk_bridged.chat.completions.create(model="bench", messages=MESSAGES),
                lambda i: sdk_own.chat.completions.create(model="bench", messages=MESSAGES),
            ),
        ]
        for label, ours, theirs in pairs:
            time_paired(ours, theirs, 100)  # warm up: connections, caches, the probe
            measured = [time_paired(ours, theirs, count) for _ in range(rounds)]
            our_time = statistics.median(mine for mine, _ in measured)
            their_time = statistics.median(other for _, other in measured)
            results.append((label, our_time, their_time, sorted(mine / other for mine, other in measured)))
    return results


# --- reliability ---


def reliability(threads: int, per_thread: int, rate: float) -> dict[str, Any]:
    """Many threads through one session with 429s in the mix: nothing lost, nothing sent twice, no deadlock."""
    default_cooldowns().clear()
    with endpoint_process(rate, BURST) as (base_url, served):
        session = retrying_session(Config(), pool_maxsize=threads)
        retries = 0
        statuses: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            nonlocal retries
            for _ in range(per_thread):
                response = _plain_post(session, base_url)
                with lock:
                    statuses.append(response.status_code)
                    retries += len(response.raw.retries.history) if response.raw.retries else 0

        workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        elapsed = time.monotonic() - started
        deadlocked = any(worker.is_alive() for worker in workers)
    return {
        "requests": threads * per_thread,
        "answers": len(statuses),
        "200s seen by clients": statuses.count(200),
        "final 429s seen by clients": statuses.count(429),
        "200s served": served.ok,
        "429s served": served.rate_limited,
        "retries recorded by clients": retries,
        "deadlocked": deadlocked,
        "seconds": round(elapsed, 2),
    }


def interrupt_latency() -> tuple[float, int]:
    """Start a long ``aicoder simulate``, press Ctrl-C after 2 s; return seconds until it exits, and its code."""
    process = subprocess.Popen(
        [sys.executable, "-m", "aicoder", "simulate", "--requests", "5000", "--rate", "20", "--concurrency", "32"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A shell's background job starts with Ctrl-C ignored, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(2)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    return time.monotonic() - sent, code


# --- reporting ---


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), sharey=True)
    for axis, run in zip(axes, runs, strict=True):
        start = run.served.events[0][0] if run.served.events else 0.0
        times = [at - start for at, _ in run.served.events]
        for label, wanted, style in (("sent", None, "-"), ("429", 429, "--"), ("200", 200, ":")):
            selected = [t for t, (_, status) in zip(times, run.served.events, strict=True) if wanted in (None, status)]
            axis.step(selected, range(1, len(selected) + 1), style, where="post", label=label)
        axis.plot([0, run.ideal], [BURST, run.requests], color="grey", linewidth=0.8, label="ideal 200s")
        axis.set_title(f"{run.contender}\n{run.dialect}: {run.rate:g} req/s, {run.threads} threads")
        axis.set_xlabel("seconds")
        axis.legend()
    axes[0].set_ylabel("requests (cumulative)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="+", default=[2, 10, 50])
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--dialects", nargs="+", default=list(DIALECTS), choices=list(DIALECTS), metavar="DIALECT")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS), metavar="NAME")
    parser.add_argument(
        "--full-rate",
        type=float,
        default=10.0,
        help="the rate at which every contender runs; at the other rates, aicoder and the openai SDK only",
    )
    parser.add_argument(
        "--foreign",
        type=float,
        default=0.3,
        help="also run aicoder and the SDK at --full-rate with another client taking this share (0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="rates 10 and 50 only")
    parser.add_argument("--repeat", type=int, default=1, help="run every batch this many times")
    parser.add_argument("--plot", type=Path, default=Path("docs/perf/requests-over-time.png"))
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["dialects", "overhead", "reliability"])
    args = parser.parse_args(argv)
    logging.getLogger("aicoder").setLevel(logging.ERROR)  # one warning per retry would drown the tables
    rates = [10.0, 50.0] if args.quick else args.rates
    report: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"}
    print(f"# aicoder benchmark ({report['machine']}, {args.requests} requests, burst {BURST})\n")

    runs: list[Run] = []
    if "dialects" not in args.skip:
        for dialect in args.dialects:
            wall_goal, per_success_goal = GOALS[dialect]
            print(f"\n## {dialect}: {DIALECTS[dialect]}\n")
            if dialect == "litellm-unenforced":
                print(f"goal: 0 failures, wall ≤ {UNENFORCED_SDK_RATIO} times the openai SDK's in the same batch\n")
            else:
                print(
                    f"goal: 0 failures, 0 sent early, wall ÷ ideal ≤ {wall_goal}, "
                    f"429s per success ≤ {per_success_goal}\n"
                )
            print(
                "| rate/s | threads | foreign | requests | contender | failures | sent early | wall (s) | "
                "wall ÷ ideal | 429s per success | p50 latency (s) | p99 latency (s) | goal |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            window = dialect in FIXED_WINDOW_DIALECTS  # the fixed window's case: 150 requests at 100 per 10 s
            count = FIXED_WINDOW_REQUESTS if window else args.requests
            batches = [
                (rate, threads, 0.0, name)
                for rate in ([FIXED_WINDOW_RATE] if window else rates)
                for threads in args.threads
                for name in args.contenders
                if rate == args.full_rate or name in EVERYWHERE
            ]
            if args.foreign and not window:
                batches += [
                    (args.full_rate, threads, args.foreign, name)
                    for threads in args.threads
                    for name in args.contenders
                    if name in EVERYWHERE
                ]
            dialect_runs: list[Run] = []
            for rate, threads, foreign, name in batches * args.repeat:
                dialect_runs.append(run_batch(name, dialect, rate, threads, count, foreign))
                print(f"  {dialect} {rate:g}/s {threads} threads foreign {foreign:g}: {name} done", file=sys.stderr)
            for run in dialect_runs:
                print(
                    f"| {run.rate:g} | {run.threads} | {run.foreign:g} | {run.requests} | {run.contender} | "
                    f"{run.failures} | {run.served.early} | {run.wall:.2f} | {run.wall_ratio:.3f} | "
                    f"{run.per_success:.2f} | {run.percentile(50):.2f} | {run.percentile(99):.2f} | "
                    f"{goal_column(run, dialect_runs)} |",
                    flush=True,
                )
            runs += dialect_runs
        report["dialects"] = [
            {
                "dialect": r.dialect,
                "contender": r.contender,
                "rate": r.rate,
                "threads": r.threads,
                "foreign": r.foreign,
                "requests": r.requests,
                "failures": r.failures,
                "wall_seconds": round(r.wall, 3),
                "ideal_seconds": r.ideal,
                "wall_over_ideal": round(r.wall_ratio, 4),
                "served_200": r.served.ok,
                "served_429": r.served.rate_limited,
                "sent_early": r.served.early,
                "rate_limited_per_success": round(r.per_success, 4),
                "p50_seconds": round(r.percentile(50), 4),
                "p99_seconds": round(r.percentile(99), 4),
                "goal": goal_column(r, runs),
            }
            for r in runs
        ]
        plotted = [
            r
            for r in runs
            if r.dialect == "openai-tokens"
            and r.rate == args.full_rate
            and r.threads == max(args.threads)
            and r.foreign == 0
            and r.contender in ("aicoder (one session)", SDK)
        ]
        if len(plotted) == 2:
            plot(plotted, args.plot)
            print(f"\nplot: {args.plot}")

    if "overhead" not in args.skip:
        rounds = 9
        print(
            f"\n| 2,000 sequential requests, no 429 (median of {rounds} rounds) | aicoder (s) | plain (s) | ratio | "
            "ratio range |"
        )
        print("| --- | --- | --- | --- | --- |")
        report["overhead"] = []
        for label, ours, theirs, ratios in overhead(2000, rounds):
            ratio = statistics.median(ratios)
            print(
                f"| {label} | {ours:.3f} | {theirs:.3f} | {ratio:.3f} | {ratios[0]:.3f} to {ratios[-1]:.3f} |",
                flush=True,
            )
            report["overhead"].append(
                {"pair": label, "aicoder": ours, "plain": theirs, "ratio": ratio, "round_ratios": ratios}
            )

    if "reliability" not in args.skip:
        result = reliability(threads=32, per_thread=50, rate=200)
        # Every request answered once; every 429 the server sent is a retry some client recorded, or
        # the final answer of a request that ran out of retries.
        result["ok"] = (
            not result["deadlocked"]
            and result["answers"] == result["requests"]
            and result["200s seen by clients"] == result["200s served"]
            and result["429s served"] == result["retries recorded by clients"] + result["final 429s seen by clients"]
        )
        seconds, code = interrupt_latency()
        result["ctrl-c to exit (s)"] = round(seconds, 3)
        result["exit code after ctrl-c"] = code
        report["reliability"] = result
        print("\n| reliability: 32 threads x 50 requests, one session, 200 req/s | |")
        print("| --- | --- |")
        for key, value in result.items():
            print(f"| {key} | {value} |")

    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    goal_runs = [r for r in runs if r.contender in GOAL_CONTENDERS and judged(r, runs)]
    return 0 if all(r.meets_goal(sdk_run(r, runs)) for r in goal_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
