"""A time the server states is a floor: no request, retry or first attempt, goes before it, on any path.

One table of real 429 formats, in headers and in bodies, runs through the adapter, the SDK bridge, the
asyncio transport, the pace in Redis, and classic httpx clients, sync and async. So do the two ways of
giving up (out of retries, a hint past LLM_RETRY_MAX_HINT): the same requests, the same give-up. Waits
are recorded, not slept (:func:`aicoder.testing.instant_waits`): a request that would go early shows a
wait shorter than the time the server stated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.utils
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from requests.structures import CaseInsensitiveDict

from aicoder import async_http_client, http_client, instant_waits
from aicoder.config import Config
from aicoder.http.adapter import retrying_session
from aicoder.http.classic_httpx import async_httpx_client, httpx_client
from aicoder.http.cooldown import Cooldowns, default_cooldowns
from aicoder.http.destinations import DestinationKey, destination_key
from aicoder.http.hints import server_hint
from aicoder.http.pace import SAFETY_MARGIN, Feedback
from aicoder.http.policy import LinearRetry
from aicoder.instrumentation import GiveUpDetails, get_hooks, set_hooks
from aicoder.testing import FakeClock
from tests.redis_server import redis_server
from tests.servers import Reply, completion, rate_limited, scripted_server

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Stated:
    """A 429 as a server sends it at ``t0`` (wall clock), and the least seconds after ``t0`` it forbids sending."""

    headers: dict[str, str]
    body: str
    floor: float


def _rfc3339(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def anthropic_retry_after(t0: float) -> Stated:
    """Anthropic's ``retry-after: 2`` beside a bucket reset a second away: 2 s ("earlier retries will fail")."""
    headers = {
        "retry-after": "2",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _rfc3339(math.ceil(t0) + 1),
    }
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the limit"}}
    return Stated(headers, json.dumps(body), 2.0)


def anthropic_resets_only(t0: float) -> Stated:
    """A bucket of 5, empty, full at a whole-second time that may be rounded down: one request's worth comes a
    fifth of the way to a second past it, at the slowest refill the reset allows."""
    full = math.ceil(t0) + 2
    headers = {
        "anthropic-ratelimit-requests-limit": "5",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": _rfc3339(full),
    }
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the limit"}}
    return Stated(headers, json.dumps(body), (full + 1 - t0) / 5)


def github(t0: float) -> Stated:
    """GitHub's primary limit: ``x-ratelimit-remaining: 0`` and the window's reset as a Unix time in seconds."""
    reset = math.ceil(t0) + 3
    headers = {
        "x-ratelimit-limit": "60",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-used": "60",
        "x-ratelimit-reset": str(reset),
        "x-ratelimit-resource": "core",
    }
    return Stated(headers, json.dumps({"message": "API rate limit exceeded"}), reset - t0)


def ietf(t0: float) -> Stated:
    """The IETF draft's ``RateLimit`` with nothing left for 3 s, and ``Retry-After: 3``."""
    headers = {"RateLimit-Policy": '"minute";q=60;w=60', "RateLimit": '"minute";r=0;t=3', "Retry-After": "3"}
    return Stated(headers, "", 3.0)


def http_date(t0: float) -> Stated:
    """``Retry-After`` as an HTTP-date, whole seconds."""
    moment = math.ceil(t0) + 3
    return Stated({"Retry-After": email.utils.formatdate(moment, usegmt=True)}, "", moment - t0)


def fixed_window(t0: float) -> Stated:
    """A LiteLLM proxy's fixed window: ``retry-after`` of the whole window, ``reset_at``, and the body's reset."""
    reset_at = _utc(math.ceil(t0) + 9)
    headers = {"retry-after": "10", "rate_limit_type": "requests", "reset_at": reset_at}
    message = f"Rate limit exceeded for api_key: k. Limit type: requests. Limit resets at: {reset_at}"
    return Stated(headers, json.dumps({"error": {"message": message, "type": "throttling_error"}}), 10.0)


def gemini_body(t0: float) -> Stated:
    """Gemini's ``RetryInfo.retryDelay`` in the body, as google-genai receives it (a JSON list)."""
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
    error = {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED", "details": [detail]}
    return Stated({}, json.dumps([{"error": error}]), 1.5)


def openai_body(t0: float) -> Stated:
    """OpenAI's "Please try again in 1.5s" in the error message, no header."""
    message = "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM). Please try again in 1.5s."
    return Stated({}, json.dumps({"error": {"message": message, "type": "tokens", "code": "rate_limit_exceeded"}}), 1.5)


def azure_body(t0: float) -> Stated:
    """Azure OpenAI's "Please retry after 2 seconds" in the error message."""
    message = (
        "Requests to the ChatCompletions_Create Operation have exceeded the rate limit. Please retry after 2 seconds."
    )
    return Stated({}, json.dumps({"error": {"code": "429", "message": message}}), 2.0)


SCENARIOS: dict[str, Callable[[float], Stated]] = {
    "anthropic retry-after": anthropic_retry_after,
    "anthropic resets only": anthropic_resets_only,
    "github": github,
    "ietf": ietf,
    "http date": http_date,
    "fixed window": fixed_window,
    "gemini body": gemini_body,
    "openai body": openai_body,
    "azure body": azure_body,
}


def refusal(stated: Stated) -> Reply:
    return Reply(429, stated.body.encode(), {"Content-Type": "application/json", **stated.headers})


# --- the decision, on a clock of the test's ---


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_hint_is_never_before_the_stated_time(scenario: str) -> None:
    """The wait read from the 429, for the retry and for every request held behind it, reaches the stated time."""
    t0 = 1_800_000_000.25
    stated = SCENARIOS[scenario](t0)
    hint = server_hint(CaseInsensitiveDict(stated.headers), stated.body, now=lambda: t0)
    assert hint is not None and hint.seconds >= stated.floor - 1e-9
    assert LinearRetry().next_wait(hint, 1, paced=True).seconds >= stated.floor - 1e-9

    clock = FakeClock(100.0)
    cooldowns = Cooldowns(clock=clock)
    key = DestinationKey("http://api.test", "k")
    cooldowns.observe(cooldowns.take_turn(key), 429, stated.headers, hint)
    taken: list[float] = []
    waiter = threading.Thread(target=lambda: taken.append(cooldowns.take_turn(key).due))
    waiter.start()
    clock.settle([waiter])
    clock.advance(stated.floor - 1e-6)
    clock.settle([waiter])
    assert taken == []  # not before the stated time
    clock.advance(10**9)  # the pace reads the headers' Unix times on the real wall clock, a year before t0
    waiter.join(5)
    assert taken and taken[0] - 100.0 >= stated.floor - 1e-9


# --- every path, against a real socket ---


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as (url, _):
        yield url


def _config(base_url: str, redis: str | None = None) -> Config:
    return Config(
        openrouter_api_key="sk-floor",
        openrouter_base_url=base_url,
        retry_count=2,
        retry_min_delay=0,
        retry_max_delay=0,
        redis_url=redis,
    )


def _adapter(base_url: str, config: Config) -> Callable[[], None]:
    session = retrying_session(config)

    def send() -> None:
        answer = session.post(f"{base_url}/chat/completions", json={"messages": MESSAGES})
        assert answer.status_code == 200

    return send


def _bridge(base_url: str, config: Config) -> Callable[[], None]:
    sdk = openai.OpenAI(api_key="sk-floor", base_url=base_url, max_retries=0, http_client=http_client(config))
    return lambda: sdk.chat.completions.create(model="m", messages=MESSAGES) and None  # type: ignore[arg-type]


def _async(base_url: str, config: Config) -> Callable[[], None]:
    async def send() -> None:
        async with openai.AsyncOpenAI(
            api_key="sk-floor", base_url=base_url, max_retries=0, http_client=async_http_client(config)
        ) as sdk:
            await sdk.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]

    return lambda: asyncio.run(send())


def _httpx(base_url: str, config: Config) -> Callable[[], None]:
    def send() -> None:
        with httpx_client(config) as client:
            assert client.post(f"{base_url}/chat/completions", json={"messages": MESSAGES}).status_code == 200

    return send


def _async_httpx(base_url: str, config: Config) -> Callable[[], None]:
    async def send() -> None:
        async with async_httpx_client(config) as client:
            answer = await client.post(f"{base_url}/chat/completions", json={"messages": MESSAGES})
            assert answer.status_code == 200

    return lambda: asyncio.run(send())


PATHS: dict[str, Callable[[str, Config], Callable[[], None]]] = {
    "adapter": _adapter,
    "bridge": _bridge,
    "asyncio": _async,
    "redis": _adapter,
    "classic httpx": _httpx,
    "classic httpx, asyncio": _async_httpx,
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_send_before_the_stated_time(scenario: str, path: str, request: pytest.FixtureRequest) -> None:
    """The refused request's retry, and a new request after it, each wait until the time the 429 stated."""
    redis = request.getfixturevalue("redis_url") if path == "redis" else None
    t0 = time.time()
    stated = SCENARIOS[scenario](t0)
    with scripted_server(refusal(stated), completion(), completion()) as server:
        send = PATHS[path](f"{server.url}/v1", _config(f"{server.url}/v1", redis))
        with instant_waits() as retry_waits:
            send()
        with instant_waits() as later_waits:
            send()
        slack = time.time() - t0  # what the waits may fall short by: the time the test itself took
    assert server.count == 3
    assert max(retry_waits) >= stated.floor - slack
    assert max(later_waits, default=0.0) >= stated.floor - slack


@pytest.mark.parametrize("path", PATHS)
def test_a_rate_stated_in_a_refusals_body_paces_every_path(path: str, request: pytest.FixtureRequest) -> None:
    """Gemini states its limit only in a 429's body (``QuotaFailure``: 30 requests a minute). After the hold,
    every path paces at that rate: the next two requests wait about one and two intervals of 2 s."""
    redis = request.getfixturevalue("redis_url") if path == "redis" else None
    violation = {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel", "quotaValue": "30"}
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"},
    ]
    body = json.dumps([{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}])
    with scripted_server(refusal(Stated({}, body, 0.05)), *[completion()] * 3) as server:
        send = PATHS[path](f"{server.url}/v1", _config(f"{server.url}/v1", redis))
        with instant_waits():
            send()
        later = []
        for _ in range(2):
            with instant_waits() as waits:
                send()
            later.append(max(waits, default=0.0))
    assert server.count == 4
    interval = 60 / 30
    assert later[0] == pytest.approx(interval, abs=0.5)
    assert later[1] == pytest.approx(2 * interval, abs=0.5)


#: Two ways to give up, and what every path must report of them: requests the server saw, and the give-up.
GIVE_UPS = {
    "retries exhausted": (
        [{"retry-after-ms": "10"}] * 3,
        3,
        GiveUpDetails("POST", "", "", 3, "retries exhausted", 0.01),
    ),
    "hint past LLM_RETRY_MAX_HINT": (
        [{"retry-after": "999"}],
        1,
        GiveUpDetails("POST", "", "", 1, "hint past LLM_RETRY_MAX_HINT", 999.0),
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("give_up", GIVE_UPS)
def test_every_path_gives_up_alike(give_up: str, path: str, request: pytest.FixtureRequest) -> None:
    """Out of retries (2), or asked to wait longer than LLM_RETRY_MAX_HINT (120 s): the same requests reach
    the server and the same give-up reaches the hooks, whichever path sent them."""
    refusals, requests_seen, expected = GIVE_UPS[give_up]
    redis = request.getfixturevalue("redis_url") if path == "redis" else None
    give_ups: list[GiveUpDetails] = []
    previous = get_hooks()
    set_hooks([_GiveUps(give_ups)])
    try:
        with scripted_server(*(rate_limited(headers) for headers in refusals)) as server:
            send = PATHS[path](f"{server.url}/v1", _config(f"{server.url}/v1", redis))
            with instant_waits(), pytest.raises((AssertionError, openai.RateLimitError)):
                send()
    finally:
        set_hooks(previous)
    assert server.count == requests_seen
    assert [(g.method, g.attempts, g.reason, g.hint) for g in give_ups] == [
        (expected.method, expected.attempts, expected.reason, expected.hint)
    ]


class _GiveUps:
    """A hook that keeps the give-ups, and ignores the retries."""

    def __init__(self, kept: list[GiveUpDetails]) -> None:
        self.kept = kept

    def __call__(self, details: object) -> None:
        pass

    def on_give_up(self, details: GiveUpDetails) -> None:
        self.kept.append(details)


@pytest.mark.parametrize("path", PATHS)
def test_a_cut_starts_from_the_stated_rate_on_every_path(path: str, request: pytest.FixtureRequest) -> None:
    """Answers state 600 requests a minute (IETF, whole seconds), and a 429 comes anyway (another client on the
    key, which no header shows): on every path the cut starts from the stated 10 a second that paced the
    requests, to 0.7 of it, not from whatever a few sends happened to measure."""
    redis = request.getfixturevalue("redis_url") if path == "redis" else None
    stated = {"RateLimit-Policy": '"minute";q=600;w=60', "RateLimit": '"minute";r=590;t=59'}
    answered = dataclasses.replace(completion(), headers={**completion().headers, **stated})
    refused = rate_limited({**stated, "Retry-After": "1"})
    with scripted_server(*[answered] * 5, refused, answered) as server:
        config = _config(f"{server.url}/v1", redis)
        send = PATHS[path](f"{server.url}/v1", config)
        with instant_waits():
            for _ in range(6):
                send()
        # The SDKs send the key; the plain sessions and clients here send none: a destination of its own.
        credentials = {"Authorization": "Bearer sk-floor"} if path in ("bridge", "asyncio") else {}
        pace = default_cooldowns(config.redis_url).pace(destination_key(server.url, credentials))
    assert server.count == 7
    assert pace is not None and pace.rate == pytest.approx(Feedback.BETA * 10 * (1 - SAFETY_MARGIN), rel=0.02)


@pytest.mark.integration  # about 0.7 s of real time a path: the count must be read over half a second
@pytest.mark.parametrize("path", PATHS)
def test_what_others_on_the_key_take_is_left_to_them_on_every_path(path: str, request: pytest.FixtureRequest) -> None:
    """Answers state 600 requests a minute (IETF), and the count of what is used rises by two for each request
    this client sends: someone else on the key sends as fast. On every path the request pace leaves them their
    share, at most half of the stated 10 a second."""
    redis = request.getfixturevalue("redis_url") if path == "redis" else None
    policy = {"RateLimit-Policy": '"minute";q=600;w=60'}
    answers = [
        dataclasses.replace(
            completion(), headers={**completion().headers, **policy, "RateLimit": f'"minute";r={r};t=59'}
        )
        for r in range(590, 570, -2)
    ]
    with scripted_server(*answers) as server:
        config = _config(f"{server.url}/v1", redis)
        send = PATHS[path](f"{server.url}/v1", config)
        with instant_waits():
            for _ in answers:
                send()
                time.sleep(0.07)  # real time between answers: the share is read as requests a second
        credentials = {"Authorization": "Bearer sk-floor"} if path in ("bridge", "asyncio") else {}
        pace = default_cooldowns(config.redis_url).pace(destination_key(server.url, credentials))
    assert server.count == len(answers)
    local = getattr(pace, "local", pace)  # a pace kept in Redis keeps this process's copy of the lanes
    assert local is not None and local.lanes["requests"].rate == pytest.approx(10 * 0.5 * (1 - SAFETY_MARGIN))
