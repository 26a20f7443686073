"""aicoder against a real LiteLLM proxy's fixed windows, beside the openai SDK's own retries. Not part of CI.

The proxy runs from its own virtualenv (LiteLLM brings many packages the project does not need)::

    python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]'
    .venv/bin/python tests/perf/bench_litellm.py --litellm /tmp/litellm/bin/litellm --runs 10

It starts ``litellm`` on 127.0.0.1 with a mocked model (``mock_response``: no network, no key) and a
``custom_auth`` hook that gives every API key a limit of ``--limit`` requests per ``--window`` seconds,
with no database. Each batch uses a fresh key, so it meets fresh windows: ``--requests`` chat
completions from a number of threads, through ``openai.OpenAI(http_client=aicoder.http_client(),
max_retries=0)`` and through ``openai.OpenAI(max_retries=5)``, one after the other. The proxy's own access
log counts what it answered. The earliest finish the windows allow is the start of the last window the
batch needs, ``(ceil(requests / limit) - 1) * window`` after its first request. LiteLLM starts a window
at the whole second, so every batch starts 50 ms after one: the windows then allow 9.95 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
from batches import run_threads  # tests/perf/batches.py, beside this script

import aicoder
from aicoder import Config

MESSAGES = [{"role": "user", "content": "hello"}]
CUSTOM_AUTH = """
import os
from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

LIMIT = int(os.environ["BENCH_RPM_LIMIT"])

async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key=api_key, token=api_key, rpm_limit=LIMIT)
"""
CONFIG = """
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      mock_response: "hello"
general_settings:
  custom_auth: custom_auth.user_api_key_auth
"""
_ANSWERED = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})')


class Proxy:
    """A LiteLLM proxy on 127.0.0.1, its access log counted between :meth:`mark` and :meth:`counts`."""

    def __init__(self, executable: str, limit: int, window: int) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="aicoder-litellm-"))
        (self.directory / "custom_auth.py").write_text(CUSTOM_AUTH)
        (self.directory / "config.yaml").write_text(CONFIG)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        environment = os.environ | {
            "BENCH_RPM_LIMIT": str(limit),
            "LITELLM_RATE_LIMIT_WINDOW_SIZE": str(window),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no price map from the network at import
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # loopback only, a throwaway proxy
            "PYTHONPATH": str(self.directory),
        }
        self.log_path = self.directory / "access.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [executable, "--config", "config.yaml", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.directory,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._wait_until_up()
        self._offset = 0

    def _wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.process.returncode}; see {self.log_path}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"litellm did not answer within {timeout:g} s; see {self.log_path}")

    def mark(self) -> None:
        self._log.flush()
        self._offset = self.log_path.stat().st_size

    def counts(self) -> dict[str, int]:
        time.sleep(0.3)  # the access log is written after the answer
        with self.log_path.open() as log:
            log.seek(self._offset)
            statuses = _ANSWERED.findall(log.read())
        return {"200": statuses.count("200"), "429": statuses.count("429"), "sent": len(statuses)}

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


Client = Callable[[str, str], tuple[Callable[[], bool], Callable[[], None]]]


def aicoder_client(base_url: str, key: str) -> tuple[Callable[[], bool], Callable[[], None]]:
    config = Config(openai_api_key=key, openai_base_url=base_url)
    sdk = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, http_client=aicoder.http_client(config))
    return (lambda: _completes(sdk)), sdk.close


def sdk_client(base_url: str, key: str) -> tuple[Callable[[], bool], Callable[[], None]]:
    sdk = openai.OpenAI(api_key=key, base_url=base_url, max_retries=5)
    return (lambda: _completes(sdk)), sdk.close


def _completes(sdk: openai.OpenAI) -> bool:
    try:
        sdk.chat.completions.create(model="bench", messages=MESSAGES)  # type: ignore[arg-type]
    except openai.APIError:
        return False
    return True


CLIENTS: dict[str, Client] = {
    "aicoder: OpenAI + http_client()": aicoder_client,
    "openai SDK max_retries=5": sdk_client,
}


@dataclass
class Run:
    contender: str
    threads: int
    failures: int
    wall: float
    answered: dict[str, int]


def run_batch(proxy: Proxy, contender: str, threads: int, count: int) -> Run:
    key = f"sk-bench-{uuid.uuid4().hex}"  # a fresh key: fresh windows
    send, close = CLIENTS[contender](proxy.base_url, key)
    proxy.mark()
    # LiteLLM starts a window at the whole second: every batch starts just after one, so that where in its
    # second a batch happened to start does not decide which finishes first.
    time.sleep(1.05 - time.time() % 1.0)
    failures, wall, _ = run_threads(lambda _: send(), count, threads)
    close()
    return Run(contender, threads, failures, wall, proxy.counts())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm", default=shutil.which("litellm") or "litellm", help="the litellm executable")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--limit", type=int, default=100, help="requests per window, per key")
    parser.add_argument("--window", type=int, default=10, help="the window, seconds")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    earliest = (math.ceil(args.requests / args.limit) - 1) * args.window
    proxy = Proxy(args.litellm, args.limit, args.window)
    runs: list[Run] = []
    try:
        version = subprocess.run([args.litellm, "--version"], capture_output=True, text=True, check=False)
        print(f"# aicoder against a real LiteLLM proxy ({version.stdout.strip() or 'version unknown'})\n")
        print(
            f"{args.requests} requests, a per-key limit of {args.limit} per fixed {args.window}-s window; "
            f"earliest finish the windows allow: {earliest} s\n"
        )
        print("| run | threads | contender | failures | wall (s) | wall ÷ earliest | 200s | 429s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for number, threads in itertools.product(range(1, args.runs + 1), args.threads):
            for contender in CLIENTS:
                run = run_batch(proxy, contender, threads, args.requests)
                runs.append(run)
                print(
                    f"| {number} | {threads} | {contender} | {run.failures} | {run.wall:.2f} | "
                    f"{run.wall / earliest:.3f} | {run.answered['200']} | {run.answered['429']} |",
                    flush=True,
                )
    finally:
        proxy.close()
    ours = [run for run in runs if run.contender.startswith("aicoder")]
    theirs = [run for run in runs if not run.contender.startswith("aicoder")]
    slower = sum(mine.wall > other.wall for mine, other in zip(ours, theirs, strict=True))
    worst = max(run.wall for run in ours) / earliest
    print(
        f"\naicoder: {len(ours)} runs, {sum(run.failures for run in ours)} failures, worst {worst:.3f}x the "
        f"earliest finish, median {statistics.median(run.wall for run in ours):.2f} s; slower than the SDK in "
        f"{slower} of {len(ours)} runs"
    )
    if args.json:
        args.json.write_text(json.dumps([run.__dict__ for run in runs], indent=2))
    return 0 if worst <= 1.25 and slower == 0 and not any(run.failures for run in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
