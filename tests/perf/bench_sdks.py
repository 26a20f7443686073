"""Every SDK users already have, through aicoder and with its own retries, against a limit of 5 a second.

Not part of the unit suite. Needs the test extra (the SDKs) and the bench extra::

    .venv/bin/python tests/perf/bench_sdks.py --json docs/perf/sdks.json   # about 10 minutes

For each SDK (openai, anthropic, google-genai, LangChain's ChatOpenAI, groq, LiteLLM), sync from 8
threads and async from 64 tasks: ``--requests`` requests against the built-in endpoint (in its own
process) speaking the SDK's API in its own dialect, with a limit of 5 a second and a burst of 5:
once through aicoder's client with the SDK's retries off, once with the SDK's own retries (5, where
the SDK takes a number). Then the classic httpx path's cost when nothing is rate limited: 2,000
sequential requests through ``aicoder.httpx_client()`` against a plain ``httpx.Client()``, in
alternating blocks, the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price map from the network

import anthropic
import groq
import httpx
import litellm
import openai
from google import genai
from google.genai import types
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).parents[2]))

import aicoder
from aicoder.config import Config
from aicoder.http.cooldown import default_cooldowns
from tests.perf.batches import run_threads
from tests.perf.bench import endpoint_process, time_paired

RATE, BURST = 5.0, 5
GOAL = (1.10, 0.15)  # wall / ideal, 429s per success; and no failure
OVERHEAD_GOAL = 1.10
KEY = "sk-bench-sdks"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
SDK_DIALECT = {"anthropic": "anthropic", "google-genai": "gemini"}  # the others speak OpenAI's

Sync = Callable[[], object]
Async = Callable[[], Awaitable[object]]


def sender(sdk: str, url: str, ours: bool, *, asynchronous: bool) -> Callable[[], Any]:
    """One request of ``sdk`` to the endpoint at ``url`` (its root), through aicoder or with the SDK's retries:
    a call, or with ``asynchronous`` a coroutine function, from the SDK's sync or async client."""
    v1 = f"{url}/v1"
    http = aicoder.async_http_client if asynchronous else aicoder.http_client
    if sdk == "openai":
        client = (openai.AsyncOpenAI if asynchronous else openai.OpenAI)(
            api_key=KEY, base_url=v1, **_openai_style(ours, http)
        )
        return lambda: client.chat.completions.create(model="m", messages=MESSAGES)
    if sdk == "anthropic":
        claude = (anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic)(
            api_key=KEY, base_url=url, **_openai_style(ours, http)
        )
        return lambda: claude.messages.create(model="m", max_tokens=16, messages=MESSAGES)
    if sdk == "google-genai":
        gemini = genai.Client(api_key=KEY, http_options=_genai_options(url, ours, asynchronous=asynchronous))
        # The call keeps the client, not only its models: a client collected closes its HTTP client.
        return lambda: (gemini.aio.models if asynchronous else gemini.models).generate_content(model="m", contents="hi")
    if sdk == "langchain":
        llm = _chat(v1, ours)
        return (lambda: llm.ainvoke("hi")) if asynchronous else (lambda: llm.invoke("hi"))
    if sdk == "groq":
        classic = aicoder.async_httpx_client if asynchronous else aicoder.httpx_client
        fast = (groq.AsyncGroq if asynchronous else groq.Groq)(
            api_key=KEY, base_url=url, **_openai_style(ours, classic)
        )
        return lambda: fast.chat.completions.create(model="m", messages=MESSAGES)
    retries = 0 if ours else 5
    if asynchronous:
        litellm.aclient_session = aicoder.async_httpx_client() if ours else None
        complete = litellm.acompletion
    else:
        litellm.client_session = aicoder.httpx_client() if ours else None
        complete = litellm.completion
    return lambda: complete(model="openai/m", api_base=v1, api_key=KEY, messages=MESSAGES, max_retries=retries)


def _openai_style(ours: bool, client: Callable[[], object]) -> dict[str, Any]:
    return {"http_client": client(), "max_retries": 0} if ours else {"max_retries": 5}


def _genai_options(url: str, ours: bool, *, asynchronous: bool) -> types.HttpOptions:
    if not ours:
        return types.HttpOptions(base_url=url, retry_options=types.HttpRetryOptions(attempts=6))
    if asynchronous:
        return types.HttpOptions(base_url=url, httpx_async_client=aicoder.async_http_client())
    return types.HttpOptions(base_url=url, httpx_client=aicoder.http_client())


def _chat(v1: str, ours: bool) -> ChatOpenAI:
    if not ours:
        return ChatOpenAI(model="m", api_key=SecretStr(KEY), base_url=v1, max_retries=5)
    return ChatOpenAI(
        model="m",
        api_key=SecretStr(KEY),
        base_url=v1,
        max_retries=0,
        http_client=aicoder.http_client(),
        http_async_client=aicoder.async_http_client(),
    )


def run_sync(send: Sync, requests: int, threads: int) -> tuple[int, float]:
    """The failures and wall time of ``requests`` sends from ``threads`` threads (batches.run_threads)."""

    def succeeded(_: int) -> bool:
        send()
        return True

    failures, wall, _ = run_threads(succeeded, requests, threads)
    return failures, wall


def run_async(send: Async, requests: int, tasks: int) -> tuple[int, float]:
    async def batch() -> tuple[int, float]:
        semaphore = asyncio.Semaphore(tasks)

        async def one() -> bool:
            async with semaphore:
                try:
                    await send()
                except Exception:
                    return False
                return True

        started = time.monotonic()
        done = await asyncio.gather(*(one() for _ in range(requests)))
        return done.count(False), time.monotonic() - started

    return asyncio.run(batch())


def batches(sdks: list[str], requests: int) -> list[dict[str, Any]]:
    rows = []
    ideal = (requests - BURST) / RATE
    for sdk in sdks:
        for mode, width in (("sync", 8), ("async", 64)):
            for ours in (True, False):
                default_cooldowns().clear()
                with endpoint_process(RATE, BURST, SDK_DIALECT.get(sdk, "openai")) as (base_url, served):
                    url = base_url.removesuffix("/v1")
                    send = sender(sdk, url, ours, asynchronous=mode == "async")
                    run = run_async if mode == "async" else run_sync
                    failures, wall = run(send, requests, width)
                contender = "aicoder" if ours else "own retries"
                row = {
                    "sdk": sdk,
                    "mode": f"{mode}, {width} {'threads' if mode == 'sync' else 'tasks'}",
                    "contender": contender,
                    "requests": requests,
                    "failures": failures,
                    "wall_seconds": round(wall, 3),
                    "wall_over_ideal": round(wall / ideal, 3),
                    "rate_limited_per_success": round(served.rate_limited / max(served.ok, 1), 3),
                    "sent_early": served.early,
                }
                if ours:
                    met = failures == 0 and served.early == 0 and wall / ideal <= GOAL[0]
                    row["goal"] = "met" if met and row["rate_limited_per_success"] <= GOAL[1] else "missed"
                rows.append(row)
                print(
                    f"| {sdk} | {row['mode']} | {contender} | {failures} | {served.early} | {wall:.2f} | "
                    f"{row['wall_over_ideal']:.3f} | {row['rate_limited_per_success']:.2f} | {row.get('goal', '')} |",
                    flush=True,
                )
    return rows


def httpx_overhead(count: int, rounds: int) -> dict[str, Any]:
    """aicoder's classic httpx client against httpx's own, no 429: seconds for ``count`` sequential requests."""
    default_cooldowns().clear()
    with endpoint_process(1e9, 10**9) as (base_url, _):
        ours, plain = aicoder.httpx_client(Config()), httpx.Client()
        body = {"model": "m", "messages": MESSAGES}
        url = f"{base_url}/chat/completions"
        mine = lambda _: ours.post(url, json=body).content  # noqa: E731
        theirs = lambda _: plain.post(url, json=body).content  # noqa: E731
        time_paired(mine, theirs, 100)
        measured = [time_paired(mine, theirs, count) for _ in range(rounds)]
    ratios = sorted(a / b for a, b in measured)
    return {
        "requests": count,
        "rounds": rounds,
        "aicoder_seconds": round(statistics.median(a for a, _ in measured), 3),
        "httpx_seconds": round(statistics.median(b for _, b in measured), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_sdks = ["openai", "anthropic", "google-genai", "langchain", "groq", "litellm"]
    parser.add_argument("--sdks", nargs="+", default=all_sdks, choices=all_sdks)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    print(
        f"{args.requests} requests at {RATE:g}/s, burst {BURST}; goal: 0 failures, 0 sent early, "
        f"wall ÷ ideal ≤ {GOAL[0]}, 429s per success ≤ {GOAL[1]}\n"
    )
    print("| SDK | mode | contender | failures | sent early | wall (s) | wall ÷ ideal | 429s per success | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    results: dict[str, Any] = {"batches": batches(args.sdks, args.requests)}
    if not args.skip_overhead:
        results["httpx_overhead"] = overhead = httpx_overhead(2000, args.rounds)
        print(
            f"\nclassic httpx, no 429, 2,000 sequential requests (median of {args.rounds} rounds): "
            f"{overhead['aicoder_seconds']} s against {overhead['httpx_seconds']} s, "
            f"ratio {overhead['ratio_median']} (range {overhead['ratio_range'][0]}-{overhead['ratio_range'][1]}); "
            f"goal ≤ {OVERHEAD_GOAL}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
