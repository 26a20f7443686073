"""The one batch loop the benchmarks share: ``count`` sends from ``threads`` threads, timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(send: Callable[[int], bool], count: int, threads: int) -> tuple[int, float, list[float]]:
    """Call ``send(1)`` to ``send(count)`` from ``threads`` threads, each taking the next index when free.

    Returns the failures (``send`` returned false or raised), the wall time, and each call's latency.
    """
    latencies: list[float] = []
    failures = 0
    next_index = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal next_index, failures
        while True:
            with lock:
                if next_index >= count:
                    return
                next_index += 1
                index = next_index
            started = time.monotonic()
            try:
                ok = send(index)
            except Exception:
                ok = False
            with lock:
                latencies.append(time.monotonic() - started)
                failures += not ok

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return failures, time.monotonic() - started, latencies
