"""Send a batch of completions from many threads to the built-in rate-limited endpoint, and measure.

This is what ``aicoder simulate`` runs: the real client, the real retry policy,
a real server. It shows how the ``LLM_RETRY_*`` settings behave against a given
rate limit before they meet a paid API.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aicoder.config import Config, ConfigError
from aicoder.http.adapter import retrying_session
from aicoder.http.clients import http_client
from aicoder.http.tokens import estimate_cost
from aicoder.llm.api_client import LLMClient
from aicoder.testing.endpoint import FIXED_WINDOW_DIALECTS, WINDOW, RateLimitedEndpoint

__all__ = ["SimulationResult", "ideal_seconds", "simulate"]

#: How a batch is sent: LLMClient with plain requests (openrouter) or the openai SDK (openai), or the anthropic SDK
#: (Anthropic's Messages API) or google-genai (Gemini's generateContent) over aicoder's http_client().
Provider = Literal["openrouter", "openai", "anthropic", "gemini"]
LOCAL_KEY = "local-endpoint-needs-no-key"
SYSTEM_PROMPT = "You are a test."


@dataclass(frozen=True)
class SimulationResult:
    """The numbers of one run. ``retries`` counts every attempt beyond each request's first."""

    requests: int
    succeeded: int
    failed: int
    rate_limited: int
    retries: int
    wall_seconds: float
    ideal_seconds: float
    latencies: tuple[float, ...] = field(repr=False)
    first_error: str | None = None
    #: Requests the endpoint received before a time one of its 429s had stated.
    early: int = 0

    #: The least time the requests that succeeded could have taken.
    completed_ideal_seconds: float = 0.0

    @property
    def efficiency(self) -> float | None:
        """Ideal time over wall time: 1.0 is exactly at the rate limit. ``None`` for a batch that lost requests,
        which is not a fraction of anything, or one whose ideal time is 0 (nothing enforced)."""
        if self.failed or not self.completed_ideal_seconds or self.wall_seconds <= 0:
            return None
        return self.completed_ideal_seconds / self.wall_seconds

    def as_dict(self) -> dict[str, Any]:
        """The JSON form ``aicoder simulate --json`` prints."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "early_sends": self.early,
            "retries": self.retries,
            "wall_seconds": round(self.wall_seconds, 3),
            "ideal_seconds": round(self.ideal_seconds, 3),
            "efficiency": round(self.efficiency, 3) if self.efficiency is not None else None,
            "latency_p50_seconds": round(_percentile(self.latencies, 50), 3),
            "latency_p99_seconds": round(_percentile(self.latencies, 99), 3),
            "first_error": self.first_error,
        }


def ideal_seconds(
    requests: int, rate: float, burst: int, foreign: float = 0.0, dialect: str = "openai", window: float = WINDOW
) -> float:
    """The least time ``requests`` can take under a ``rate``/``burst`` token bucket of which another
    client takes the share ``foreign``: ``(N - burst) / (rate * (1 - foreign))``. Under the ``litellm``
    dialect's fixed windows of ``rate * window`` requests, the start of the last window they need; with
    ``litellm-unenforced``, no time at all."""
    if dialect == "litellm-unenforced":
        return 0.0
    if dialect in FIXED_WINDOW_DIALECTS:
        return (math.ceil(requests / max(1, round(rate * window))) - 1) * window
    return max(0, requests - burst) / (rate * (1 - foreign))


def prompt(index: int) -> str:
    """The user prompt of request ``index``: always the same length, so every request costs the same tokens."""
    return f"request {index:06d}"


def request_tokens() -> int:
    """The tokens each simulated request is charged (:func:`~aicoder.http.tokens.estimate_cost`)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt(0)}]
    cost = estimate_cost(json.dumps({"messages": messages}))
    assert cost is not None
    return cost.total


def simulate(
    *,
    rate: float,
    burst: int,
    requests: int,
    concurrency: int,
    provider: Provider,
    config: Config,
    dialect: str = "openai",
    foreign: float = 0.0,
    processes: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimulationResult:
    """Send ``requests`` completions from ``concurrency`` threads sharing one client, and measure.

    The retry settings come from ``config``; its keys and base URLs are replaced
    to point at a fresh :class:`RateLimitedEndpoint` speaking ``dialect``, of
    whose capacity another client takes the share ``foreign``. With ``processes``
    above 1, that many processes each run ``concurrency`` threads, on the same key:
    they share one pace only through ``config.redis_url``. The clock starts once
    every process is ready. ``on_progress(done, rate_limited)`` is called from
    the calling thread about ten times a second.
    """
    with RateLimitedEndpoint(rate, burst, dialect=dialect, foreign=foreign, token_cost=request_tokens()) as endpoint:
        local = replace(
            config,
            openrouter_api_key=LOCAL_KEY,
            openrouter_base_url=endpoint.base_url,
            openai_api_key=LOCAL_KEY,
            openai_base_url=endpoint.base_url,
        )
        batch = _Batch(requests)
        with _senders(provider, local, concurrency, processes, batch) as started:
            while not batch.finished.wait(0.1):
                if on_progress is not None:
                    on_progress(batch.done, endpoint.stats().rate_limited)
            wall = time.monotonic() - started
        stats = endpoint.stats()

    if on_progress is not None:
        on_progress(batch.done, stats.rate_limited)
    succeeded = requests - len(batch.errors)
    return SimulationResult(
        requests=requests,
        succeeded=succeeded,
        failed=len(batch.errors),
        rate_limited=stats.rate_limited,
        retries=stats.total - requests,
        wall_seconds=wall,
        ideal_seconds=ideal_seconds(requests, rate, burst, foreign, dialect),
        latencies=tuple(batch.latencies),
        first_error=batch.errors[0] if batch.errors else None,
        completed_ideal_seconds=ideal_seconds(succeeded, rate, burst, foreign, dialect),
        early=stats.early,
    )


@contextmanager
def _senders(provider: Provider, config: Config, threads: int, processes: int, batch: _Batch) -> Iterator[float]:
    """Send ``batch`` from ``threads`` threads in this process, or in each of ``processes`` processes;
    yield the time the sending began."""
    if processes == 1:
        send, close = _client(provider, config, threads)
        workers = [
            threading.Thread(target=_send_all, args=(send, batch.claim, batch.finish), daemon=True)
            for _ in range(threads)
        ]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        yield started
        for worker in workers:
            worker.join()
        close()
        return
    context = multiprocessing.get_context("spawn")
    claimed, ready, go = context.Value("i", 0), context.Semaphore(0), context.Event()
    results: Any = context.Queue()
    log_records: Any = context.Queue()
    level = logging.getLogger("aicoder").getEffectiveLevel()
    members = [
        context.Process(
            target=_process_main,
            args=(provider, config, threads, batch.size, level, claimed, ready, go, results, log_records),
            name=f"aicoder-simulate-{n}",
            daemon=True,
        )
        for n in range(processes)
    ]
    for member in members:
        member.start()
    for _ in members:
        while not ready.acquire(timeout=0.1):
            if any(member.exitcode is not None for member in members):
                for member in members:
                    member.kill()
                raise RuntimeError("a sending process of aicoder simulate exited before it was ready")

    def collect() -> None:
        for reported in range(batch.size):
            while True:
                try:
                    batch.finish(*results.get(timeout=0.5))
                    break
                except queue.Empty:
                    if all(member.exitcode is not None for member in members):
                        for _ in range(batch.size - reported):  # never reported: lost with their process
                            batch.finish(0.0, "its sending process exited without an answer")
                        return

    def relay_logs() -> None:
        # The processes' log records reach this process's handlers, such as the CLI's.
        while (record := log_records.get()) is not None:
            logging.getLogger(record.name).handle(record)

    helpers = [threading.Thread(target=collect, daemon=True), threading.Thread(target=relay_logs, daemon=True)]
    for helper in helpers:
        helper.start()
    started = time.monotonic()
    go.set()
    try:
        yield started
    finally:
        for member in members:
            member.join(timeout=10)
        log_records.put(None)
        for helper in helpers:
            helper.join(timeout=5)


def _client(provider: Provider, config: Config, threads: int) -> tuple[Callable[[int], object], Callable[[], None]]:
    """What sends request number ``index`` of a batch for ``provider``, to the endpoint ``config`` points at,
    and what closes it. The anthropic and Gemini SDKs must be installed to be used."""
    if provider in ("openrouter", "openai"):
        session = retrying_session(config, pool_maxsize=max(10, threads))
        client = LLMClient(f"{provider}/local-model", config=config, session=session)
        return (lambda index: client.sendRequest(SYSTEM_PROMPT, prompt(index), verbose=False)), session.close
    url = (config.openrouter_base_url or "").removesuffix("/v1")
    http = http_client(config)
    if provider == "anthropic":
        try:
            import anthropic
        except ImportError:
            raise ConfigError("--provider anthropic sends with the anthropic SDK: pip install anthropic") from None
        messages = anthropic.Anthropic(api_key=LOCAL_KEY, base_url=url, http_client=http, max_retries=0).messages
        return (
            lambda index: messages.create(
                model="local-model",
                max_tokens=64,
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": prompt(index)}],
            )
        ), http.close
    try:
        from google import genai
        from google.genai import types
    except ImportError:
        raise ConfigError("--provider gemini sends with google-genai: pip install google-genai") from None
    models = genai.Client(api_key=LOCAL_KEY, http_options=types.HttpOptions(base_url=url, httpx_client=http)).models
    return (lambda index: models.generate_content(model="local-model", contents=prompt(index))), http.close


def _send_all(
    send: Callable[[int], object], claim: Callable[[], int | None], finish: Callable[[float, str | None], None]
) -> None:
    """Send the batch's requests, one after another, as long as there are any left. Whatever a request raises
    (aicoder's error, or an SDK's) is its failure."""
    while (index := claim()) is not None:
        sent = time.monotonic()
        try:
            send(index)
        except Exception as exc:
            finish(time.monotonic() - sent, str(exc))
        else:
            finish(time.monotonic() - sent, None)


def _process_main(
    provider: Provider,
    config: Config,
    threads: int,
    size: int,
    level: int,
    claimed: Any,
    ready: Any,
    go: Any,
    results: Any,
    log_records: Any,
) -> None:
    """One process of a batch: ``threads`` threads claiming its requests from the counter shared with the
    others, its results and aicoder's log records sent back to the parent."""
    logger = logging.getLogger("aicoder")
    logger.setLevel(level)
    logger.propagate = False
    logger.addHandler(logging.handlers.QueueHandler(log_records))

    def claim() -> int | None:
        with claimed.get_lock():
            if claimed.value >= size:
                return None
            claimed.value += 1
            return int(claimed.value)

    send, close = _client(provider, config, threads)
    workers = [
        threading.Thread(target=_send_all, args=(send, claim, lambda *result: results.put(result)), daemon=True)
        for _ in range(threads)
    ]
    ready.release()
    go.wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    close()


class _Batch:
    """Hands out request numbers to worker threads and collects what they report."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.done = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.finished = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        if size == 0:
            self.finished.set()

    def claim(self) -> int | None:
        with self._lock:
            if self._next >= self.size:
                return None
            self._next += 1
            return self._next

    def finish(self, latency: float, error: str | None) -> None:
        with self._lock:
            self.done += 1
            self.latencies.append(latency)
            if error is not None:
                self.errors.append(error)
            if self.done == self.size:
                self.finished.set()


def _percentile(values: tuple[float, ...], percent: float) -> float:
    """The nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
