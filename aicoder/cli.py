"""The ``aicoder`` command: argument parsing and output only; the work happens in the library."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from aicoder.config import Config, ConfigError
from aicoder.llm.api_client import LLMClient
from aicoder.llm.schedule import linear_delays

__all__ = ["main", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises instead of exiting, so :func:`main` returns the code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(Exception):
    """Bad command-line usage; the message is shown after the usage line."""


def _build_parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog="aicoder",
        description="LLM API calls that survive HTTP 429, with linear-backoff retries.",
        epilog="Settings come from LLM_RETRY_* and the API key variables, in the environment or .env.",
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

    schedule = commands.add_parser(
        "schedule",
        help="show the wait before each retry",
        description="Show the wait before each retry and the worst-case total, for the loaded settings "
        "or the values given.",
    )
    _add_retry_flags(schedule)
    return parser


def _add_retry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=_count, help="retries after the first attempt (LLM_RETRY_COUNT)")
    parser.add_argument("--min", type=_seconds, dest="min_delay", help="first wait, seconds (LLM_RETRY_MIN_DELAY)")
    parser.add_argument("--max", type=_seconds, dest="max_delay", help="last and largest wait (LLM_RETRY_MAX_DELAY)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds >= 0")
    return value


def _retry_config(args: argparse.Namespace) -> Config:
    """The loaded settings, with the command line's ``--count``/``--min``/``--max`` over them."""
    overrides = {"retry_count": args.count, "retry_min_delay": args.min_delay, "retry_max_delay": args.max_delay}
    try:
        return dataclasses.replace(Config.load(), **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"{exc} (the flags --min and --max set these)") from None


def _ask(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    client = LLMClient(args.model)
    print(client.sendRequest(args.system, prompt))
    return EXIT_OK


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


_COMMANDS = {"ask": _ask, "schedule": _schedule}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aicoder`` command with ``argv`` and return its exit code; never raises for user errors."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aicoder: %(levelname)s: %(message)s"))
    logger = logging.getLogger("aicoder")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"aicoder: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        print(f"aicoder: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
