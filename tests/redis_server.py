"""A real redis-server for the tests: on a free port, in a temporary directory, stopped afterwards."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aicoder.testing.redis import RedisUnavailableError, local_redis


@contextmanager
def redis_server(directory: Path, port: int = 0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start redis-server on 127.0.0.1; yield its URL and process. Missing: a failure under CI=true, else a skip."""
    try:
        server = local_redis(port, str(directory))
        url, process = server.__enter__()
    except RedisUnavailableError as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (.ci/run installs it with apt-get install -y redis-server)")
        pytest.skip(str(missing))
    try:
        yield url, process
    finally:
        server.__exit__(None, None, None)
