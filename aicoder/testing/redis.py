"""A throwaway redis-server on 127.0.0.1, for ``aicoder simulate --redis local``, demos and tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RedisUnavailableError", "local_redis"]


class RedisUnavailableError(RuntimeError):
    """redis-server is not installed, or did not start."""


@contextmanager
def local_redis(port: int = 0, directory: str | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run redis-server on 127.0.0.1 (``port`` 0: a free one) with nothing saved to disk; yield its URL and
    process, and stop it afterwards. Raises :class:`RedisUnavailableError` if it cannot."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisUnavailableError(
            "redis-server is not installed: apt-get install redis-server, or brew install redis"
        )
    if not port:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="aicoder-redis-") as scratch:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory or scratch,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_pong(port, process)
            yield f"redis://127.0.0.1:{port}/0", process
        finally:
            # Killed, not terminated: it saves nothing, and redis-server reads a SIGTERM only at its next tick
            # (a tenth of a second), which a test suite that starts one per test would wait out each time.
            process.kill()
            process.wait(timeout=10)


def _wait_for_pong(port: int, process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    process.kill()
    raise RedisUnavailableError(f"redis-server did not start on 127.0.0.1:{port}")
