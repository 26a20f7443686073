"""Hooks get every retry, hold and give-up as data; a failing hook never breaks a request."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from aicoder.config import Config
from aicoder.http.waiting import instant_waits
from aicoder.instrumentation import (
    GiveUpDetails,
    HoldDetails,
    LoggingHook,
    OpenTelemetryHook,
    PrometheusHook,
    RetryDetails,
    get_hooks,
    set_hooks,
)
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import RateLimitError
from tests.servers import completion, rate_limited, scripted_server


@pytest.fixture(autouse=True)
def restore_hooks() -> Iterator[None]:
    """Each test starts, and leaves, with the default hooks."""
    previous = get_hooks()
    yield
    set_hooks(previous)


class Recorder:
    """A hook that keeps what it is given, and the thread it was given it in."""

    def __init__(self) -> None:
        self.retries: list[RetryDetails] = []
        self.holds: list[HoldDetails] = []
        self.give_ups: list[GiveUpDetails] = []
        self.threads: set[int] = set()

    def __call__(self, details: RetryDetails) -> None:
        self.retries.append(details)
        self.threads.add(threading.get_ident())

    def on_hold(self, details: HoldDetails) -> None:
        self.holds.append(details)

    def on_give_up(self, details: GiveUpDetails) -> None:
        self.give_ups.append(details)


def send(url: str, count: int = 2, provider: str = "openrouter") -> str:
    config = Config(
        retry_count=count,
        openrouter_api_key="sk-test-key",
        openrouter_base_url=f"{url}/v1?key=SENTINEL-Q",
        openai_api_key="sk-test-key",
        openai_base_url=f"{url}/v1",
    )
    with instant_waits():
        return LLMClient(f"{provider}/m", config=config).sendRequest("s", "u")


@pytest.mark.parametrize("provider", ["openrouter", "openai"])
def test_each_retry_reaches_the_hooks_as_data(provider: str) -> None:
    """Two 429s, then a 200: two RetryDetails, in the thread that retries, without the query string."""
    recorder = Recorder()
    set_hooks([recorder])
    with scripted_server(rate_limited({"retry-after-ms": "30"}), rate_limited(), completion("ok")) as server:
        assert send(server.url, provider=provider) == "ok"
    first, second = recorder.retries
    assert (first.attempt, first.wait, first.source, first.count) == (1, 0.03, "retry-after-ms", 2)
    assert (second.attempt, second.source) == (2, "schedule")
    assert first.method == "POST"
    assert first.url == f"{server.url}/v1/chat/completions"
    assert first.origin == server.url
    assert first.queued >= 0
    assert recorder.threads == {threading.get_ident()}
    assert recorder.holds == [HoldDetails(server.url, 0.03, "retry-after-ms")]


def test_giving_up_reaches_the_hooks() -> None:
    """Out of retries: one GiveUpDetails with the attempts and the reason."""
    recorder = Recorder()
    set_hooks([recorder])
    with scripted_server(rate_limited()) as server, pytest.raises(RateLimitError):
        send(server.url, count=1)
    assert [(g.attempts, g.reason, g.hint) for g in recorder.give_ups] == [(2, "retries exhausted", None)]


@pytest.mark.parametrize(("count", "said"), [(0, "giving up after 1 attempt ("), (1, "giving up after 2 attempts (")])
def test_the_give_up_line_counts_attempts_in_english(count: int, said: str, caplog: pytest.LogCaptureFixture) -> None:
    """One attempt is "1 attempt", not "1 attempts"."""
    set_hooks([LoggingHook()])
    with scripted_server(rate_limited()) as server, pytest.raises(RateLimitError):
        send(server.url, count=count)
    (line,) = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert said in line


def test_a_hook_that_raises_is_logged_once_and_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A broken hook is reported once; the request still succeeds, and the other hooks still run."""

    def broken(details: RetryDetails) -> None:
        raise ValueError("boom")

    recorder = Recorder()
    set_hooks([broken, recorder])
    with scripted_server(rate_limited(), rate_limited(), completion("fine")) as server:
        assert send(server.url) == "fine"
    assert len(recorder.retries) == 2
    reports = [record for record in caplog.records if "raised" in record.getMessage()]
    assert len(reports) == 1
    assert reports[0].exc_info is not None


def test_no_hooks_no_retry_lines(caplog: pytest.LogCaptureFixture) -> None:
    """``set_hooks([])`` silences the retry lines, with no logger surgery."""
    caplog.set_level(logging.DEBUG, logger="aicoder")
    set_hooks([])
    with scripted_server(rate_limited(), completion("quiet")) as server:
        assert send(server.url) == "quiet"
    assert not [r for r in caplog.records if "Rate limited" in r.getMessage()]


def test_the_logging_hook_adds_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    """The default hook writes today's line, with origin, attempt, wait and source as record fields."""
    set_hooks([LoggingHook()])
    with scripted_server(rate_limited({"retry-after-ms": "10"}), completion("ok")) as server:
        send(server.url)
    (record,) = [r for r in caplog.records if r.name == "aicoder.retry" and r.levelno == logging.WARNING]
    assert (record.origin, record.attempt, record.wait, record.source) == (server.url, 1, 0.01, "retry-after-ms")  # type: ignore[attr-defined]


def test_hooks_must_be_callable() -> None:
    """A hook that is not callable is refused with the value named."""
    with pytest.raises(TypeError, match="hook 42 is not allowed"):
        set_hooks([42])  # type: ignore[list-item]


def test_prometheus_hook_counts_retries_and_waits() -> None:
    """aicoder_retries_total by origin and source, and aicoder_wait_seconds, in a registry of one's own."""
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    set_hooks([PrometheusHook(registry)])
    with scripted_server(rate_limited({"retry-after-ms": "20"}), rate_limited(), completion("ok")) as server:
        send(server.url)
    labels = {"origin": server.url, "source": "retry-after-ms"}
    assert registry.get_sample_value("aicoder_retries_total", labels) == 1
    assert registry.get_sample_value("aicoder_retries_total", {**labels, "source": "schedule"}) == 1
    assert registry.get_sample_value("aicoder_wait_seconds_count", {"origin": server.url}) == 2
    assert b"aicoder_retries_total" in prometheus_client.generate_latest(registry)


def test_opentelemetry_hook_counts_retries_and_records_waits() -> None:
    """aicoder.retries and the histogram aicoder.wait (unit s), with origin and source attributes."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    set_hooks([OpenTelemetryHook(MeterProvider(metric_readers=[reader]))])
    with scripted_server(rate_limited({"retry-after-ms": "20"}), completion("ok")) as server:
        send(server.url)
    metrics = {
        metric.name: metric
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (point,) = metrics["aicoder.retries"].data.data_points
    assert point.value == 1
    assert dict(point.attributes) == {"origin": server.url, "source": "retry-after-ms"}
    assert metrics["aicoder.wait"].unit == "s"
