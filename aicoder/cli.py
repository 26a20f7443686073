"""The ``aicoder`` command: argument parsing and output only; the work happens in the library."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from tqdm import tqdm

from aicoder.config import COUNT, DELAY, HINT_CAP, Bounds, Config, ConfigError, check_redis_url, parse
from aicoder.http.schedule import linear_delays
from aicoder.instrumentation import PrometheusHook, get_hooks, set_hooks
from aicoder.llm.api_client import LLMClient
from aicoder.llm.limits import probe_limits
from aicoder.simulate import SimulationResult, simulate
from aicoder.testing.endpoint import DIALECTS, WINDOW

__all__ = ["main", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises instead of exiting, so :func:`main` returns the code."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


class _UsageError(Exception):
    """Bad command-line usage; the message is shown after the usage line."""


class _Exit(Exception):  # noqa: N818 - not an error: --help asked to stop
    """The parser is done (``--help``); carries the exit code."""

    def __init__(self, status: int) -> None:
        self.status = status


def _build_parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog="aicoder",
        description="LLM API calls that survive HTTP 429, with linear-backoff retries.",
        epilog="Settings come from LLM_RETRY_* and the API key variables, in the environment or .env.",
    )
    parser.add_argument("--version", action="version", version=f"aicoder {importlib.metadata.version('aicoder')}")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "-v",
        "--verbose",
        dest="loudness",
        action="store_const",
        const=logging.INFO,
        help="also log every retry, hold and give-up on stderr",
    )
    chatter.add_argument(
        "-q",
        "--quiet",
        dest="loudness",
        action="store_const",
        const=logging.ERROR,
        help="log nothing but errors on stderr",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask = commands.add_parser("ask", help="send one prompt and print the reply", description="Send one prompt.")
    ask.add_argument("prompt", metavar="PROMPT", help="the user prompt; - reads it from standard input")
    ask.add_argument(
        "--model",
        default="openrouter/openai/gpt-4o-mini",
        help="model, with an optional openai/ or openrouter/ prefix (default: %(default)s)",
    )
    ask.add_argument("--system", default="You are a helpful assistant.", help="system prompt (default: %(default)r)")

    limits = commands.add_parser(
        "limits",
        help="show what an endpoint says of its rate limits",
        description="Send one chat completion of at most one token, with the configured key and no retry, and "
        "show what the answer's headers say of the limits, and the pace aicoder would take. The key is never shown.",
    )
    limits.add_argument(
        "--model",
        default="openrouter/openai/gpt-4o-mini",
        help="model, with an optional openai/ or openrouter/ prefix (default: %(default)s)",
    )

    schedule = commands.add_parser(
        "schedule",
        help="show the wait before each retry",
        description="Show the wait before each retry and the worst-case total, for the loaded settings "
        "or the values given.",
    )
    _add_retry_flags(schedule)

    simulate = commands.add_parser(
        "simulate",
        help="run a batch against the built-in rate-limited endpoint",
        description="Start a local rate-limited OpenAI-compatible endpoint on 127.0.0.1, send a batch of chat "
        "completions to it from several threads through LLMClient with the retry settings, and summarise what "
        "happened. No API key or network needed. Unless --json or --no-compare is given, or coordination is off, "
        "the same batch first runs with coordination off, and both summaries are shown side by side.",
    )
    simulate.add_argument(
        "--rate", type=_positive, default=5.0, help="requests per second the endpoint allows (default: %(default)g)"
    )
    simulate.add_argument(
        "--burst", type=_at_least_one, default=5, help="requests it allows at once (default: %(default)s)"
    )
    simulate.add_argument("--requests", type=_count, default=40, help="completions to send (default: %(default)s)")
    simulate.add_argument(
        "--concurrency",
        type=_threads,
        default=4,
        help=f"threads sending them, 1 to {MAX_CONCURRENCY} (default: %(default)s)",
    )
    simulate.add_argument(
        "--dialect",
        choices=list(DIALECTS),
        default="openai",
        help="how the endpoint describes its limits: its rate-limit headers and 429s (default: %(default)s; "
        "openai-tokens makes a token limit bind; see docs/cli.md)",
    )
    simulate.add_argument(
        "--foreign",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of the endpoint's capacity another client on the same key takes, 0 to 0.9 (default: 0)",
    )
    simulate.add_argument(
        "--processes",
        type=_processes,
        default=1,
        help=f"processes sending, each with --concurrency threads, all on one key, 1 to {MAX_PROCESSES} "
        "(default: %(default)s)",
    )
    simulate.add_argument(
        "--redis",
        metavar="URL",
        type=_redis_url,
        help="share the pace of every process through this Redis (LLM_RETRY_REDIS_URL; needs aicoder[redis]); "
        "'local' starts a throwaway redis-server on 127.0.0.1. Unless --json or --no-compare is given, the same "
        "batch first runs with a pace per process, shown beside",
    )
    simulate.add_argument(
        "--provider",
        choices=["openrouter", "openai", "anthropic", "gemini"],
        default="openrouter",
        help="send with LLMClient over plain requests (openrouter) or the openai SDK (openai), or with the "
        "anthropic SDK (Messages API) or google-genai (generateContent) over aicoder.http_client(), each "
        "installed (default: %(default)s)",
    )
    _add_retry_flags(simulate)
    simulate.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    simulate.add_argument(
        "--verbose",
        dest="simulate_verbose",
        action="store_true",
        help="also log every retry and hold on stderr (as aicoder -v; without it, simulate logs only errors)",
    )
    simulate.add_argument(
        "--metrics",
        action="store_true",
        help="count the configured batch's retries with PrometheusHook and print the scrape after the summary "
        "(needs aicoder[prometheus])",
    )
    simulate.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the first batch with coordination off, shown beside yours for comparison",
    )
    return parser


#: The retry flags, with the variable each one sets, and what it allows.
_RETRY_FLAGS = {
    "--retries": ("count", "LLM_RETRY_COUNT", COUNT, "retries after the first attempt"),
    "--min": ("min_delay", "LLM_RETRY_MIN_DELAY", DELAY, "first wait, seconds"),
    "--max": ("max_delay", "LLM_RETRY_MAX_DELAY", DELAY, "last and largest wait of the schedule, seconds"),
    "--max-hint": ("max_hint", "LLM_RETRY_MAX_HINT", HINT_CAP, "longest server hint waited for, seconds"),
}
#: The most threads ``simulate`` starts: more would measure the machine, not the retries.
MAX_CONCURRENCY = 1000
#: The most processes ``simulate`` starts, for the same reason.
MAX_PROCESSES = 64


def _efficiency(result: SimulationResult) -> str:
    """A batch that lost requests has no efficiency: it says how many it lost instead."""
    if result.failed:
        return f"n/a ({result.failed} lost)"
    return f"{result.efficiency:.0%}" if result.efficiency is not None else "n/a"


def _add_retry_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (dest, variable, bounds, help_text) in _RETRY_FLAGS.items():
        parser.add_argument(flag, type=_setting(flag, bounds), dest=dest, help=f"{help_text} ({variable})")


def _setting(flag: str, bounds: Bounds) -> Callable[[str], str]:
    """An argparse type that checks a flag with the same rules as its setting, and keeps the text."""

    def check_flag(text: str) -> str:
        _number(text, bounds)
        return text

    return check_flag


def _count(text: str) -> int:
    return int(_number(text, Bounds(0, 10**9, True, "a whole number >= 0")))


def _at_least_one(text: str) -> int:
    return int(_number(text, Bounds(1, 10**9, True, "a whole number >= 1")))


def _threads(text: str) -> int:
    return int(_number(text, Bounds(1, MAX_CONCURRENCY, True, f"a number of threads from 1 to {MAX_CONCURRENCY}")))


def _processes(text: str) -> int:
    return int(_number(text, Bounds(1, MAX_PROCESSES, True, f"a number of processes from 1 to {MAX_PROCESSES}")))


def _redis_url(text: str) -> str:
    if text == "local":
        return text
    try:
        return str(check_redis_url("--redis", text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    value = _number(text, Bounds(0, 10**9, False, "a number > 0"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected a number > 0")
    return value


def _share(text: str) -> float:
    return _number(text, Bounds(0, 0.9, False, "a share of the capacity from 0 to 0.9"))


def _number(text: str, bounds: Bounds) -> float:
    """A flag's number, in ASCII digits and within ``bounds``, as the settings are read."""
    try:
        return parse("flag", text, bounds)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected {bounds.allowed}") from exc


def _retry_config(args: argparse.Namespace) -> Config:
    """The loaded settings, with the command line's retry flags over them: a flag given replaces its variable."""
    overrides = {
        variable: (getattr(args, dest), f"from {flag}")
        for flag, (dest, variable, _, _) in _RETRY_FLAGS.items()
        if getattr(args, dest) is not None
    }
    return Config.load(overrides=overrides)


def _ask(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    client = LLMClient(args.model)
    print(client.sendRequest(args.system, prompt))
    return EXIT_OK


def _limits(args: argparse.Namespace) -> int:
    found = probe_limits(args.model)
    print(f"POST {found.url} (model {found.model}, max_tokens 1): HTTP {found.status}")
    if not found.quotas:
        print("the answer states no limits: this server states them only on a 429, or not at all;")
        print("aicoder paces by what its 429s say")
    else:
        print(f"dialect: {', '.join(found.dialects)}")
        print(f"  {'dimension':<14} {'limit':>10} {'per':>8} {'remaining':>10} {'resets in':>10}  {'refill':<7} source")
        for quota in found.quotas:
            print(
                f"  {quota.dimension:<14} {_amount(quota.limit):>10} {_span(quota.window):>8} "
                f"{_amount(quota.remaining):>10} {_span(quota.reset):>10}  {quota.refill:<7} {quota.source}"
            )
        paces = found.paces
        if paces:
            pace = ", ".join(f"{rate:.4g} {dimension} a second" for dimension, rate in paces.items())
            spending = (
                "what an answer says remains may be spent sooner"
                if found.spends_remaining
                else "no faster: its resets are whole seconds, or it says nothing of what remains"
            )
            print(f"aicoder's sustained pace: {pace} ({spending})")
        else:
            print("no limit of a minute or less: aicoder spends what remains, and paces by what its 429s say")
    if found.hint is not None:
        print(f"refused: the server asks to wait {found.hint.seconds:.3g} s ({found.hint.source})")
    return EXIT_OK


def _amount(value: float | None) -> str:
    return "-" if value is None else f"{value:.12g}"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:.3g} s"


def _schedule(args: argparse.Namespace) -> int:
    config = _retry_config(args)
    waits = linear_delays(config.retry_count, config.retry_min_delay, config.retry_max_delay)
    print(
        f"LLM_RETRY_COUNT={config.retry_count} LLM_RETRY_MIN_DELAY={config.retry_min_delay:g} "
        f"LLM_RETRY_MAX_DELAY={config.retry_max_delay:g}"
    )
    if not waits:
        print("no retries: one attempt, then the 429 is reported")
        return EXIT_OK
    elapsed = 0.0
    print(f"{'retry':>5}  {'wait (s)':>9}  {'elapsed (s)':>11}")
    for number, wait in enumerate(waits, start=1):
        elapsed += wait
        print(f"{number:>5}  {wait:>9.3g}  {elapsed:>11.4g}")
    print(f"worst case: {len(waits) + 1} attempts, {sum(waits):g} s of waiting")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    config = _retry_config(args)
    with contextlib.ExitStack() as stack:
        if args.redis == "local":
            config = dataclasses.replace(config, redis_url=_start_local_redis(stack))
        elif args.redis is not None:
            config = dataclasses.replace(config, redis_url=args.redis)
        return _simulate_with(args, config)


def _simulate_with(args: argparse.Namespace, config: Config) -> int:
    # Shown side by side, a batch without coordination (or, with Redis, with a pace per process)
    # makes the retries, and what coordination saves, visible at a glance.
    compare = config.retry_coordinate and not args.json and not args.no_compare
    runs = []
    if compare and config.redis_url is not None:
        runs.append(("pace per process", dataclasses.replace(config, redis_url=None)))
    elif compare:
        runs.append(("coordination off", dataclasses.replace(config, retry_coordinate=False)))
    runs.append((_label(config, compare), config))
    results: list[tuple[str, SimulationResult]] = []
    metrics = _metrics_registry() if args.metrics else None
    for label, settings in runs:
        if metrics is not None and settings is config:
            with _counted_by(metrics):
                results.append((label, _run_batch(args, settings, label)))
        else:
            results.append((label, _run_batch(args, settings, label)))

    result = results[-1][1]
    if args.json:
        print(json.dumps({**result.as_dict(), **_settings(args, config)}))
    else:
        _print_summary(args, config, results)
    if metrics is not None:
        import prometheus_client

        print()
        print(prometheus_client.generate_latest(metrics).decode(), end="")
    return EXIT_OK if result.failed == 0 else EXIT_FAILED


def _label(config: Config, compared: bool) -> str:
    if config.redis_url is not None and config.retry_coordinate:
        return "pace in Redis"
    return "as configured" if compared else "result"


def _start_local_redis(stack: contextlib.ExitStack) -> str:
    """Start a throwaway redis-server for the run, stopped when ``stack`` closes; its URL."""
    from aicoder.testing.redis import RedisUnavailableError, local_redis

    try:
        url, _ = stack.enter_context(local_redis())
    except RedisUnavailableError as exc:
        raise ConfigError(f"--redis local: {exc}") from None
    return str(check_redis_url("--redis", url))


def _metrics_registry() -> Any:
    """A Prometheus registry of its own, or a configuration error saying what to install."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError("--metrics needs prometheus-client: pip install prometheus-client") from None
    return prometheus_client.CollectorRegistry()


@contextlib.contextmanager
def _counted_by(registry: Any) -> Iterator[None]:
    """Add a PrometheusHook on ``registry`` to the hooks for the ``with`` block."""
    previous = get_hooks()
    set_hooks([*previous, PrometheusHook(registry)])
    try:
        yield
    finally:
        set_hooks(previous)


def _run_batch(args: argparse.Namespace, config: Config, label: str) -> SimulationResult:
    """One batch, with a progress bar on stderr when it is a terminal."""
    bar = tqdm(
        total=args.requests, desc=label, unit="req", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False
    )

    def progress(done: int, rate_limited: int) -> None:
        bar.update(done - bar.n)
        bar.set_postfix_str(f"429s={rate_limited}", refresh=False)

    try:
        return simulate(
            rate=args.rate,
            burst=args.burst,
            requests=args.requests,
            concurrency=args.concurrency,
            provider=args.provider,
            config=config,
            dialect=args.dialect,
            foreign=args.foreign,
            processes=args.processes,
            on_progress=progress,
        )
    finally:
        bar.close()


def _settings(args: argparse.Namespace, config: Config) -> dict[str, object]:
    return {
        "provider": args.provider,
        "dialect": args.dialect,
        "foreign": args.foreign,
        "rate": args.rate,
        "burst": args.burst,
        "concurrency": args.concurrency,
        "processes": args.processes,
        "redis": config.redis_url is not None,
        "retry_count": config.retry_count,
        "retry_min_delay": config.retry_min_delay,
        "retry_max_delay": config.retry_max_delay,
        "retry_max_hint": config.retry_max_hint,
        "retry_respect_retry_after": config.retry_respect_retry_after,
        "retry_coordinate": config.retry_coordinate,
    }


def _senders(args: argparse.Namespace) -> str:
    if args.processes == 1:
        return f"{args.concurrency} threads"
    return f"{args.processes} processes x {args.concurrency} threads on one key"


def _print_summary(args: argparse.Namespace, config: Config, results: list[tuple[str, SimulationResult]]) -> None:
    hints = "server hints respected" if config.retry_respect_retry_after else "server hints ignored"
    coordination = "coordinated" if config.retry_coordinate else "not coordinated"
    foreign = f", another client takes {args.foreign:.0%} of it" if args.foreign else ""
    print(
        f"aicoder simulate: {args.requests} requests from {_senders(args)} via {args.provider}, "
        f"endpoint allows {args.rate:g}/s with a burst of {args.burst}{foreign}, dialect {args.dialect}"
    )
    print(
        f"retry settings: LLM_RETRY_COUNT={config.retry_count} LLM_RETRY_MIN_DELAY={config.retry_min_delay:g} "
        f"LLM_RETRY_MAX_DELAY={config.retry_max_delay:g} LLM_RETRY_MAX_HINT={config.retry_max_hint:g} "
        f"({hints}, {coordination})"
    )
    print()
    rows: list[tuple[str, Callable[[SimulationResult], str]]] = [
        ("requests", lambda r: f"{r.requests}"),
        ("succeeded", lambda r: f"{r.succeeded}"),
        ("failed", lambda r: f"{r.failed}"),
        ("429s received", lambda r: f"{r.rate_limited}"),
        ("sent early", lambda r: f"{r.early}"),
        ("retries", lambda r: f"{r.retries}"),
        ("wall time", lambda r: f"{r.wall_seconds:.2f} s"),
        ("ideal time", lambda r: f"{r.ideal_seconds:.2f} s"),
        ("efficiency", _efficiency),
    ]
    if len(results) > 1:
        print("  " + " " * 14 + "".join(f" {label:>18}" for label, _ in results))
    for name, cell in rows:
        print(f"  {name:<14}" + "".join(f" {cell(result):>18}" for _, result in results))
    print()
    share = " * (1 - foreign share)" if args.foreign else ""
    ideal = f"(requests - burst) / (rate{share})"
    if args.dialect == "litellm":
        ideal = f"the start of the last {WINDOW:g}-s window the requests need"
    elif args.dialect == "litellm-unenforced":
        ideal = "0 (nothing is enforced)"
    print(
        f"ideal time = {ideal}; efficiency = ideal time / wall time, for a batch that lost no request; "
        "sent early = requests that reached the endpoint before a time one of its 429s stated"
    )
    for label, result in results:
        if result.first_error is not None:
            print(f"first failure ({label}): {result.first_error}")


_COMMANDS = {"ask": _ask, "limits": _limits, "schedule": _schedule, "simulate": _simulate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aicoder`` command with ``argv`` and return its exit code; never raises for user errors."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except _Exit as done:
        return done.status
    with _stderr_logging(_loudness(args)):
        return _run_command(args)


def _loudness(args: argparse.Namespace) -> int:
    """What the command's own handler shows: -v or -q if given, else warnings (simulate: errors only,
    as its retries would drown its summary, unless its --verbose asks for them)."""
    if args.loudness is not None:
        return int(args.loudness)
    if args.command == "simulate":
        return logging.INFO if args.simulate_verbose else logging.ERROR
    return logging.WARNING


@contextlib.contextmanager
def _stderr_logging(level: int) -> Iterator[None]:
    """Show aicoder's log lines of ``level`` and above on stderr, through a handler of the command's own.

    The ``aicoder`` logger's level is lowered only if ``level`` needs it, and put back as it was after.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aicoder: %(levelname)s: %(message)s"))
    handler.setLevel(level)
    logger = logging.getLogger("aicoder")
    previous_level = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def _run_command(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"aicoder: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"aicoder: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("aicoder: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
