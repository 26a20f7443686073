"""Test helpers for aicoder's users: a local rate-limited endpoint, instant retry waits, and a fake clock.

Installing aicoder also registers a pytest plugin (:mod:`aicoder.testing.pytest_plugin`)
with the fixtures ``aicoder_endpoint``, ``aicoder_endpoint_factory`` and ``aicoder_instant_waits``.
"""

from aicoder.http.waiting import instant_waits
from aicoder.testing.clock import FakeClock
from aicoder.testing.endpoint import EndpointStats, RateLimitedEndpoint, TokenBucket

__all__ = ["EndpointStats", "FakeClock", "RateLimitedEndpoint", "TokenBucket", "instant_waits"]
