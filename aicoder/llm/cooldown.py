"""Coordinated backoff: one shared view, per API and key, of when the server will take the next request.

Per-request backoff fails many threads: every waiting thread wakes when the
server's hint expires, one wins, the rest burn a retry. Instead, every request
bound for the same destination (origin and credentials) asks :class:`Cooldowns`
for a turn before it is sent, first attempts and retries alike:

- **Hold.** A 429 with a hint holds the destination until the hint expires.
- **Staggered release.** Turns are handed out at the pace the server allows,
  learnt from its ``x-ratelimit-limit/remaining/reset-requests`` headers (a
  client-side mirror of its token bucket, GCRA), or, without those headers,
  from the hint itself.
- **Relaxation.** With headers, turns come at once whenever the server's bucket
  has room; without them, the pace speeds up with every success and is dropped
  once it is faster than a millisecond.
- **First contact.** While the first request to a new destination is in flight,
  others wait for its answer (at most ``probe_timeout`` seconds) so the limits
  are known before a crowd is sent.

Waiting before a first attempt is not a retry: it never uses up ``LLM_RETRY_COUNT``.
No lock is held while waiting, and waits go through :func:`aicoder.llm.waiting.sleep`,
so Ctrl-C ends them and :func:`~aicoder.llm.waiting.instant_waits` skips them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

from aicoder.llm import waiting
from aicoder.llm.hints import ServerHint, parse_duration

__all__ = ["Cooldowns", "Destination", "Turn", "current_turn", "destination_key", "shared_cooldowns"]

log = logging.getLogger(__name__)

#: Request headers that carry credentials; their values are hashed into the key, never kept.
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
#: Pace a little slower than the measured rate, which is known only from below.
SAFETY_MARGIN = 0.01
#: Without rate headers, each success shortens the pace by this factor ...
RELAX_FACTOR = 0.8
#: ... and a pace faster than this is no pace at all.
RELAXED_INTERVAL = 0.001
_SALT = os.urandom(16)


def destination_key(url: str, headers: Mapping[str, str]) -> str:
    """Return the key for ``url``'s origin and the credentials in ``headers``.

    The credentials are hashed with a per-process random salt: the key can
    tell two API keys apart but not reveal either.
    """
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
    if not isinstance(headers, CaseInsensitiveDict):
        headers = CaseInsensitiveDict(headers)
    credentials = "\n".join([headers.get(name) or "" for name in CREDENTIAL_HEADERS])
    fingerprint = hashlib.blake2b(credentials.encode(), key=_SALT, digest_size=12).hexdigest()
    return f"{origin} {fingerprint}"


@dataclass(eq=False)
class Destination:
    """What is known of one destination's rate limit. Guarded by its :class:`Cooldowns`' lock."""

    key: str
    #: Seconds per request the server allows, ``None`` when unknown (no pacing).
    interval: float | None = None
    #: Requests the server allows at once (``x-ratelimit-limit-requests``); 1 when unknown.
    burst: int = 1
    #: Whether ``interval`` and ``burst`` come from rate headers, not from hints.
    measured: bool = False
    #: GCRA's theoretical arrival time: a turn is free at ``tat - (burst - 2) * interval`` (one token spare).
    tat: float = 0.0
    #: No turn before this (monotonic) time: the latest hint's expiry.
    held_until: float = 0.0
    #: Recent interval measurements, each at most the true one (see :meth:`Cooldowns._learn`).
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    #: Set once the first request's answer (or failure) is in; ``None`` after that.
    first_answer: threading.Event | None = None

    @property
    def origin(self) -> str:
        return self.key.split(" ", 1)[0]


class Cooldowns:
    """Turns for requests, per destination, shared by every adapter that uses this instance.

    Thread-safe. Remembers at most ``max_destinations`` (least recently used go
    first). ``clock`` and ``sleep`` are injectable so the rules can be tested
    without waiting.
    """

    def __init__(
        self,
        *,
        max_destinations: int = 1024,
        probe_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = waiting.sleep,
    ) -> None:
        self.max_destinations = max_destinations
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._destinations: OrderedDict[str, Destination] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._destinations)

    def clear(self) -> None:
        """Forget every destination (for tests, or after changing keys)."""
        with self._lock:
            for destination in self._destinations.values():
                if destination.first_answer is not None:
                    destination.first_answer.set()
            self._destinations.clear()

    def take_turn(self, key: str, max_wait: float = math.inf) -> Destination:
        """Wait for a turn for a first attempt bound for ``key``, and return its destination.

        The first request to a new destination goes at once: it is the probe the
        others wait for. ``max_wait`` is as for :meth:`wait_turn`.
        """
        with self._lock:
            destination = self._destinations.get(key)
            if destination is None:
                return self._add(key)
            self._destinations.move_to_end(key)
            # The common case, decided under one lock: no probe in flight, so take the turn now.
            wait = None if destination.first_answer is not None else self._reserve(destination, 0.0, max_wait)
        if wait is None:
            self.wait_turn(destination, max_wait=max_wait)
        elif wait > 0:
            self._sleep(wait)
        return destination

    def wait_turn(self, destination: Destination, delay: float = 0.0, max_wait: float = math.inf) -> float:
        """Wait until ``destination`` may take another request, at least ``delay`` seconds, and take the turn.

        ``delay`` is the caller's own minimum, such as a retry's backoff. A hold
        or a pace longer than ``max_wait`` (the caller's ``LLM_RETRY_MAX_DELAY``)
        is not waited for: the request goes, and the server's answer says how long
        it wants, so the caller can give up with that message instead of hanging.
        Waiting behind other requests at an allowed pace has no limit. Returns the
        seconds waited.
        """
        with self._lock:
            first_answer = destination.first_answer
        if first_answer is not None and not first_answer.is_set():
            first_answer.wait(min(self.probe_timeout, max_wait))
        with self._lock:
            wait = self._reserve(destination, delay, max_wait)
        if wait > 0:
            self._sleep(wait)
        return wait

    def _reserve(self, destination: Destination, delay: float, max_wait: float) -> float:
        """Take ``destination``'s next turn and return the seconds until it comes. Call with the lock held."""
        now = self._clock()
        hold = destination.held_until - now
        wait = max(delay, hold if hold <= max_wait else 0.0, 0.0)
        interval = destination.interval
        if interval is not None and interval <= max_wait:
            wait = max(wait, destination.tat - _tolerance(destination) - now)
            destination.tat = max(destination.tat, now + wait) + interval
        return wait

    def observe(
        self, destination: Destination, status: int, headers: Mapping[str, str], hint: ServerHint | None
    ) -> None:
        """Learn from an answer: its rate headers, and for a 429 its hint."""
        limits = _rate_limits(headers)
        with self._lock:
            now = self._clock()
            if limits is not None:
                self._learn(destination, now, *limits)
            if status == 429 and hint is not None:
                self._hold(destination, now, hint)
            elif status < 400 and not destination.measured and destination.interval is not None:
                destination.interval *= RELAX_FACTOR
                if destination.interval < RELAXED_INTERVAL:
                    destination.interval = None
            self._answered(destination)

    def failed(self, destination: Destination) -> None:
        """The request got no answer at all; let those waiting on a first answer go."""
        with self._lock:
            self._answered(destination)

    def _add(self, key: str) -> Destination:
        # The first request to a new destination is the probe; others wait for its answer.
        destination = Destination(key, first_answer=threading.Event())
        self._destinations[key] = destination
        while len(self._destinations) > self.max_destinations:
            _, evicted = self._destinations.popitem(last=False)
            if evicted.first_answer is not None:
                evicted.first_answer.set()
        return destination

    def _learn(self, destination: Destination, now: float, limit: int, remaining: int, reset: float) -> None:
        """Mirror the server's bucket from its ``x-ratelimit-*-requests`` answer."""
        # `remaining` is rounded down, so reset / (limit - remaining) is never above the true interval;
        # the largest recent measurement is the closest, and a margin covers the rest.
        destination.samples.append(reset / (limit - remaining))
        destination.interval = max(destination.samples) * (1 + SAFETY_MARGIN)
        destination.burst = limit
        destination.measured = True
        # The server's bucket is full again after `reset`: in GCRA terms that is its theoretical arrival
        # time. No turn of ours may come sooner than that allows.
        destination.tat = max(destination.tat, now + reset)

    def _hold(self, destination: Destination, now: float, hint: ServerHint) -> None:
        held_until = now + hint.seconds
        if held_until > destination.held_until:
            log.info(
                "Holding requests to %s for %.3g s (%s)%s",
                destination.origin,
                hint.seconds,
                hint.header,
                f", then one every {destination.interval:.3g} s" if destination.interval else "",
            )
        destination.held_until = max(destination.held_until, held_until)
        if not destination.measured:
            # Without rate headers, the wait for one more turn is the best estimate of the pace.
            destination.interval = max(destination.interval or 0.0, hint.seconds, RELAXED_INTERVAL)
            destination.burst = 1
        if destination.interval is not None:
            # No turn before the hold ends. (The refused request's own turn is not given back: other
            # turns may already be handed out behind it, and reusing it would overbook the server.)
            destination.tat = max(destination.tat, held_until + _tolerance(destination))

    @staticmethod
    def _answered(destination: Destination) -> None:
        if destination.first_answer is not None:
            destination.first_answer.set()
            destination.first_answer = None


def _rate_limits(headers: Mapping[str, str]) -> tuple[int, int, float] | None:
    """``(limit, remaining, reset)`` from ``x-ratelimit-*-requests``, or ``None`` if absent or inconsistent."""
    try:
        limit = int(headers.get("x-ratelimit-limit-requests") or "")
        remaining = int(headers.get("x-ratelimit-remaining-requests") or "")
    except ValueError:
        return None
    reset = parse_duration(headers.get("x-ratelimit-reset-requests"))
    if reset is None or not 0 <= remaining < limit or reset <= 0:
        return None
    return limit, remaining, reset


def _tolerance(destination: Destination) -> float:
    """How far ahead of the pace a turn may come: the server's burst, less one token kept in
    reserve so that a request arriving a little early still finds one."""
    assert destination.interval is not None
    return max(destination.burst - 2, 0) * destination.interval


_shared = Cooldowns()


def shared_cooldowns() -> Cooldowns:
    """The process-wide :class:`Cooldowns` every :class:`~aicoder.llm.retry.LinearBackoffAdapter` uses by default."""
    return _shared


class Turn(NamedTuple):
    """The destination a request in this thread is bound for, and the cooldowns that pace it."""

    cooldowns: Cooldowns
    destination: Destination


#: Set by the adapter around each send, so that the retry policy, which urllib3 runs in the
#: same thread, paces its retries through the same destination.
current_turn: ContextVar[Turn | None] = ContextVar("aicoder_current_turn", default=None)
