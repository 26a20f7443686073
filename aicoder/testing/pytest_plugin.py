"""pytest fixtures for testing code that calls LLM APIs through aicoder (registered as ``pytest11``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from aicoder.http.waiting import instant_waits
from aicoder.testing.endpoint import RateLimitedEndpoint


@pytest.fixture
def aicoder_endpoint_factory() -> Iterator[Callable[..., RateLimitedEndpoint]]:
    """Start :class:`RateLimitedEndpoint` s with the arguments you give; all are closed after the test."""
    started: list[RateLimitedEndpoint] = []

    def start(rate: float = 10.0, burst: int = 5, **options: float) -> RateLimitedEndpoint:
        endpoint = RateLimitedEndpoint(rate, burst, **options).start()  # type: ignore[arg-type]
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def aicoder_endpoint(aicoder_endpoint_factory: Callable[..., RateLimitedEndpoint]) -> RateLimitedEndpoint:
    """A running :class:`RateLimitedEndpoint` at 10 requests/s with a burst of 5."""
    return aicoder_endpoint_factory()


@pytest.fixture
def aicoder_instant_waits() -> Iterator[list[float]]:
    """Run aicoder's retries without sleeping; the fixture's value lists the waits skipped."""
    with instant_waits() as waits:
        yield waits
