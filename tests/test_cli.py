"""The aicoder command, run in-process through main(argv)."""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import responses

from aicoder.cli import main
from aicoder.http.waiting import instant_waits
from aicoder.testing import RateLimitedEndpoint
from tests.redis_server import redis_server
from tests.servers import completion, rate_limited, scripted_server

ENDPOINT = "https://llm.test/v1/chat/completions"


@pytest.fixture
def openrouter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-SENTINEL")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "https://llm.test/v1")


def test_schedule_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """schedule prints the default waits and the worst-case total."""
    assert main(["schedule"]) == 0
    out = capsys.readouterr().out
    waits = [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert waits == ["2", "9", "16", "23", "30"]
    assert "worst case: 6 attempts, 80 s of waiting" in out


def test_schedule_flags_override(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags override the loaded settings one by one."""
    monkeypatch.setenv("LLM_RETRY_MAX_DELAY", "10")
    assert main(["schedule", "--retries", "3", "--min", "1"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit()] == ["1", "5.5", "10"]


def test_schedule_zero_count(capsys: pytest.CaptureFixture[str]) -> None:
    """--retries 0 says there is no retry."""
    assert main(["schedule", "--retries", "0"]) == 0
    assert "no retries" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["schedule", "--retries", "-1"],
        ["schedule", "--retries", "100000000"],  # once ran on with growing memory
        ["schedule", "--retries", "\u0663"],  # int() reads an Arabic-Indic 3 as 3
        ["schedule", "--max", "1e10"],
        ["schedule", "--max-hint", "86401"],
        ["schedule", "--min", "x"],
        ["bogus"],
        [],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad flags exit 2 with a usage line and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: aicoder" in err
    assert "Traceback" not in err


def test_min_above_max_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--min above --max is a configuration error naming the settings."""
    assert main(["schedule", "--min", "40", "--max", "5"]) == 2
    err = capsys.readouterr().err
    assert "LLM_RETRY_MAX_DELAY=5.0 is below LLM_RETRY_MIN_DELAY=40.0" in err


def test_a_flag_replaces_a_bad_variable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--retries`` given, a bad LLM_RETRY_COUNT in the environment is not read at all."""
    monkeypatch.setenv("LLM_RETRY_COUNT", "lots")
    assert main(["schedule", "--retries", "2"]) == 0
    assert "LLM_RETRY_COUNT=2" in capsys.readouterr().out


def test_bad_environment_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad LLM_RETRY_* value exits 2 naming the variable."""
    monkeypatch.setenv("LLM_RETRY_COUNT", "lots")
    assert main(["schedule"]) == 2
    assert "LLM_RETRY_COUNT='lots'" in capsys.readouterr().err


@pytest.mark.usefixtures("openrouter_env")
def test_ask_prints_only_the_reply(capsys: pytest.CaptureFixture[str]) -> None:
    """ask prints the completion on stdout and nothing else."""
    with responses.RequestsMock() as mock:
        mock.post(ENDPOINT, json={"choices": [{"message": {"content": "Paris"}}]})
        assert main(["ask", "--model", "m", "capital of France?"]) == 0
    assert capsys.readouterr().out == "Paris\n"


@pytest.mark.usefixtures("openrouter_env")
def test_ask_reads_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """PROMPT '-' reads the prompt from standard input."""
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin"))
    with responses.RequestsMock() as mock:
        mock.post(ENDPOINT, json={"choices": [{"message": {"content": "ok"}}]})
        assert main(["ask", "-"]) == 0
        assert b"from stdin" in (mock.calls[0].request.body or b"")


def test_ask_missing_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a key, ask exits 2 saying which variable to set."""
    assert main(["ask", "hello"]) == 2
    err = capsys.readouterr().err
    assert "OPENROUTER_API_KEY is not set" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("openrouter_env")
def test_ask_exhausted_retries_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Exhausted retries exit 1 with the RuntimeError message and the retry warnings on stderr."""
    monkeypatch.setenv("LLM_RETRY_COUNT", "1")
    with responses.RequestsMock() as mock:
        mock.post(ENDPOINT, status=429, json={"error": {"message": "slow down"}})
        assert main(["ask", "hello"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "persisted after 1 retry" in captured.err
    assert "retry 1/1" in captured.err
    assert "Traceback" not in captured.err
    assert "SENTINEL" not in captured.err


def test_simulate_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """simulate runs a batch against the local endpoint and prints the summary rows."""
    argv = ["simulate", "--rate", "40", "--burst", "2", "--requests", "6", "--concurrency", "3", "--no-compare"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = summary_rows(captured.out)
    assert rows["requests"] == "6"
    assert rows["succeeded"] == "6"
    assert rows["failed"] == "0"
    assert int(rows["429s received"]) == int(rows["retries"])
    assert rows["ideal time"] == "0.10 s"
    assert "Traceback" not in captured.err


def summary_rows(out: str) -> dict[str, str]:
    """The summary's rows: label -> the cells after it."""
    return {
        line[2:16].strip(): line[16:].strip() for line in out.splitlines() if line.startswith("  ") and line[2] != " "
    }


def test_simulate_compares_with_coordination_off(capsys: pytest.CaptureFixture[str]) -> None:
    """By default the batch also runs uncoordinated first, and both columns are shown: retries become visible."""
    argv = ["simulate", "--rate", "100", "--burst", "2", "--requests", "12", "--concurrency", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "coordination off" in out
    assert "as configured" in out
    rows = summary_rows(out)
    uncoordinated_429s, coordinated_429s = (int(cell) for cell in rows["429s received"].split())
    assert uncoordinated_429s > coordinated_429s
    assert rows["requests"].split() == ["12", "12"]


def test_simulate_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with the documented keys, whose numbers add up."""
    argv = ["simulate", "--json", "--rate", "50", "--burst", "3", "--requests", "8", "--provider", "openai"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("requests", "succeeded", "failed", "rate_limited", "retries", "wall_seconds", "ideal_seconds"):
        assert key in result
    assert result["requests"] == result["succeeded"] + result["failed"] == 8
    assert result["ideal_seconds"] == pytest.approx(0.1)
    assert result["provider"] == "openai"
    assert result["retries"] >= result["rate_limited"] - result["failed"]


def test_simulate_exhausted_budget_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncoordinated, with no retries allowed and a strict limit, failures are counted, shown, and exit 1."""
    monkeypatch.setenv("LLM_RETRY_COORDINATE", "false")
    argv = ["simulate", "--rate", "1", "--burst", "1", "--requests", "3", "--concurrency", "3", "--retries", "0"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert summary_rows(captured.out)["failed"] == "2"
    assert summary_rows(captured.out)["efficiency"] == "n/a (2 lost)"  # a batch that lost requests has none
    assert "first failure (result): openrouter rate limit (HTTP 429)" in captured.out
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--rate", "0"],
        ["simulate", "--burst", "0"],
        ["simulate", "--concurrency", "-2"],
        ["simulate", "--concurrency", "1000000000"],  # once started threads until memory ran out
        ["simulate", "--foreign", "0.95"],
        ["simulate", "--dialect", "klingon"],
        ["simulate", "--provider", "cohere"],
        ["simulate", "--max", "nan"],
        ["simulate", "--processes", "0"],
        ["simulate", "--processes", "65"],
        ["simulate", "--redis", "http://cache.test:6379"],
    ],
)
def test_simulate_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad simulate flags exit 2 naming the flag."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}" in err
    assert "Traceback" not in err


def test_simulate_processes_share_a_pace_through_redis(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--processes with --redis local (a redis-server of its own): the batch comes from several processes,
    beside the same batch with a pace per process. (A URL goes the same way: test_redis_pace.py.)"""
    with redis_server(tmp_path):  # skips where redis-server is missing, and fails under CI=true
        argv = ["simulate", "--processes", "2", "--concurrency", "2", "--requests", "8", "--rate", "40", "--burst", "2"]
        assert main([*argv, "--redis", "local"]) == 0
    out = capsys.readouterr().out
    assert "8 requests from 2 processes x 2 threads on one key" in out
    assert "pace per process" in out and "pace in Redis" in out
    assert summary_rows(out)["succeeded"].split() == ["8", "8"]


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help works for the command and each subcommand, exiting 0."""
    for argv in (["--help"], ["ask", "--help"], ["limits", "--help"], ["schedule", "--help"], ["simulate", "--help"]):
        assert main(argv) == 0
        assert "usage: aicoder" in capsys.readouterr().out


def test_python_dash_m_runs_the_cli() -> None:
    """``python -m aicoder`` is the same command."""
    result = subprocess.run(
        [sys.executable, "-m", "aicoder", "schedule", "--retries", "2"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "worst case: 3 attempts, 32 s of waiting" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPENROUTER_API_KEY", "sk-SENTINEL\nX"),
        ("OPENROUTER_API_KEY", "sk-\u200bSENTINEL"),
        ("OPENROUTER_BASE_URL", "http://[::1"),
        ("OPENROUTER_BASE_URL", "not a url"),
    ],
)
def test_unusable_settings_exit_2_without_a_traceback_or_the_key(
    variable: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad key or base URL is a configuration error (exit 2) naming the variable, never showing a key."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-fine")
    monkeypatch.setenv(variable, value)
    assert main(["ask", "hello"]) == 2
    err = capsys.readouterr().err
    assert f"{variable}" in err
    assert "SENTINEL" not in err
    assert "Traceback" not in err


def test_logger_levels_are_put_back_as_they_were(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI lowers the aicoder logger only for -v, and restores the level it found, not NOTSET."""
    logger = logging.getLogger("aicoder")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        assert main(["-v", "schedule"]) == 0
        assert logger.level == logging.CRITICAL
        assert main(["-q", "schedule"]) == 0
        assert logger.level == logging.CRITICAL
    finally:
        logger.setLevel(previous)


def test_verbose_and_quiet_choose_what_reaches_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """-v shows every retry line on stderr; -q shows none."""
    with scripted_server(rate_limited(), completion("hi"), rate_limited(), completion("hi")) as server:
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test-key")
        monkeypatch.setenv("OPENROUTER_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("LLM_RETRY_MIN_DELAY", "0.01")
        monkeypatch.setenv("LLM_RETRY_MAX_DELAY", "0.01")
        assert main(["-v", "ask", "x"]) == 0
        loud = capsys.readouterr().err
        assert main(["-q", "ask", "x"]) == 0
        quiet = capsys.readouterr().err
        assert server.count == 4
    assert "Rate limited (429)" in loud
    assert quiet == ""


@pytest.mark.usefixtures("openrouter_env")
def test_simulate_metrics_prints_a_prometheus_scrape(capsys: pytest.CaptureFixture[str]) -> None:
    """--metrics counts the configured batch with PrometheusHook and prints the scrape after the summary."""
    argv = [
        "simulate",
        "--requests",
        "6",
        "--rate",
        "5",
        "--burst",
        "1",
        "--concurrency",
        "3",
        "--no-compare",
        "--metrics",
    ]
    with instant_waits():
        assert main([*argv, "--dialect", "bare", "--min", "0.01", "--max", "0.01"]) in (0, 1)
    out = capsys.readouterr().out
    assert "# TYPE aicoder_retries_total counter" in out
    assert "aicoder_wait_seconds_count" in out


KEEPS_A_CONNECTION_ERROR = """
import requests
from aicoder.config import Config
from aicoder.http.adapter import retrying_session
session = retrying_session(Config(openrouter_api_key="sk-closed-port"))
try:
    session.post("{url}", json={{}})
except requests.ConnectionError as error:
    kept = error  # alive until the interpreter exits, with the connection it failed on
raise SystemExit(1)
"""


def test_no_exit_hangs_after_a_connection_error() -> None:
    """A process that failed to connect exits, every time: 20 library scripts that keep their
    ConnectionError, and 10 ``aicoder ask`` runs, against a port nothing listens on. (A lock that a stopped
    daemon thread held, taken from a weakref callback during the exit's garbage collection, hung 1 in 15.)"""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when this block ends: connections to it are refused
    url = f"http://127.0.0.1:{port}/v1"
    environment = os.environ | {"OPENROUTER_API_KEY": "sk-closed-port", "OPENROUTER_BASE_URL": url}
    script = KEEPS_A_CONNECTION_ERROR.format(url=f"{url}/chat/completions")
    commands = [[sys.executable, "-c", script]] * 20 + [[sys.executable, "-m", "aicoder", "ask", "hi"]] * 10
    codes: list[int | None] = []
    for start in range(0, len(commands), 10):  # ten at a time
        runs = [
            subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for command in commands[start : start + 10]
        ]
        for run in runs:
            try:
                codes.append(run.wait(timeout=30))
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
                codes.append(None)  # hung
    assert codes == [1] * 30


#: What ``aicoder limits`` should find in each dialect's successful answer (None: nothing, until a 429).
LIMITS_SAID = {
    "openai": ("dialect: openai", "1.65e+05 tokens a second (what an answer says remains may be spent sooner)"),
    "openai-tokens": ("dialect: openai", "990 tokens a second"),
    "anthropic": ("dialect: anthropic", "9.9 requests a second, 1.65e+05 tokens a second (no faster: its resets are"),
    "github": ("dialect: x-ratelimit", "no limit of a minute or less"),
    "ietf": ("dialect: ietf", "9.9 requests a second (no faster: its resets are whole seconds"),
    "litellm": ("dialect: litellm", "no limit of a minute or less"),
    "litellm-unenforced": ("dialect: openai", "9.9 requests a second"),
    "openrouter": ("states no limits", None),
    "retry-after": ("states no limits", None),
    "retry-after-ms": ("states no limits", None),
    "bare": ("states no limits", None),
    "gemini": ("states no limits", None),
}


@pytest.mark.parametrize("dialect", LIMITS_SAID)
def test_limits_shows_what_the_endpoint_says_in_every_dialect(
    dialect: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request of one token: the dialect, each limit, and the pace aicoder would take; never the key."""
    dialect_line, pace = LIMITS_SAID[dialect]
    with RateLimitedEndpoint(rate=10, burst=5, dialect=dialect) as endpoint:
        monkeypatch.setenv("OPENROUTER_BASE_URL", endpoint.base_url)
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-SENTINEL-0123456789abcdef")
        assert main(["limits", "--model", "m"]) == 0
        assert endpoint.stats().total == 1
    out, err = capsys.readouterr()
    assert "HTTP 200" in out
    assert dialect_line in out
    if pace is not None:
        assert pace in out
    assert "SENTINEL" not in out + err


def test_limits_shows_a_refusal_and_its_wait(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probed while rate limited: the 429 and the wait the server asks for, not a retry."""
    with RateLimitedEndpoint(rate=1, burst=1, dialect="openai") as endpoint:
        monkeypatch.setenv("OPENROUTER_BASE_URL", endpoint.base_url)
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-SENTINEL-0123456789abcdef")
        assert main(["limits", "--model", "m"]) == 0
        assert main(["limits", "--model", "m"]) == 0
        assert endpoint.stats().total == 2
    out = capsys.readouterr().out
    assert "HTTP 429" in out
    assert "refused: the server asks to wait" in out


def test_limits_without_an_answer_exits_1_naming_the_url_not_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENROUTER_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-SENTINEL-0123456789abcdef")
    assert main(["limits", "--model", "m"]) == 1
    err = capsys.readouterr().err
    assert f"no answer from http://127.0.0.1:{port}/v1/chat/completions: ConnectionError" in err
    assert "SENTINEL" not in err


@pytest.mark.integration
@pytest.mark.parametrize(("provider", "dialect"), [("anthropic", "anthropic"), ("gemini", "gemini")])
def test_simulate_sends_through_each_sdk_in_its_own_api(
    provider: str, dialect: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--provider anthropic runs the batch through the anthropic SDK (Messages API), gemini through google-genai
    (generateContent), both over aicoder.http_client()."""
    argv = ["simulate", "--provider", provider, "--dialect", dialect, "--requests", "12", "--concurrency", "4"]
    assert main([*argv, "--rate", "100", "--no-compare", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["succeeded"], result["failed"], result["early_sends"]) == (12, 0, 0)
