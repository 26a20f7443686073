"""Coordinated backoff: one shared view, per API and key, of when the server will take the next request.

Per-request backoff fails many threads: every waiting thread wakes when the
server's hint expires, one wins, the rest burn a retry. Instead, every request
bound for the same destination (origin and credentials) asks :class:`Cooldowns`
for a turn before it is sent, first attempts and retries alike. The turns follow
the destination's :class:`~aicoder.http.pace.Pace`:

- **Hold.** A 429 with a hint holds the destination until the latest time the
  server stated, in full: a stated time is a floor, whole seconds included.
- **Pace.** Turns are handed out at the rate the server's quotas describe, in
  whatever dialect (:mod:`aicoder.http.quotas`), for requests and for tokens.
- **Feedback.** A 429 that arrives while paced means the model is wrong: the
  rate is cut, then regrows (CUBIC), so servers that say nothing converge too.
  Turns already handed out follow it both ways: a cut moves them later, and
  regrowth brings them sooner (:meth:`~aicoder.http.pace.Pace.hurry`), waking
  their sleepers.
- **What remains is spent.** Turns within what an answer says remains go without
  the per-minute pace (:class:`~aicoder.http.pace.Pace`); the first turn past it
  asks, and new turns wait for its answer as they wait for a first contact's.
- **First contact.** While the first request to a new destination is in flight,
  others wait for its answer (at most ``probe_timeout`` seconds) so the limits
  are known before a crowd is sent.

Waiting before a first attempt is not a retry: it never uses up ``LLM_RETRY_COUNT``.
No lock is held while waiting, and waits go through :func:`aicoder.http.waiting.sleep`,
so Ctrl-C ends them and :func:`~aicoder.http.waiting.instant_waits` skips them.
asyncio code takes its turns with the ``a``-prefixed twins (:meth:`Cooldowns.atake_turn`,
:meth:`Cooldowns.await_turn`): the same rules, the same state, each wait an ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TypeVar, cast

from aicoder.http import waiting
from aicoder.http.destinations import DestinationKey
from aicoder.http.hints import ServerHint
from aicoder.http.pace import DestinationPace, Grant, Pace, Refusal, RemotePace
from aicoder.http.quotas import Quota, read_quotas
from aicoder.http.redis_pace import RedisPace, RedisPaces
from aicoder.http.tokens import RequestCost, estimate_cost
from aicoder.instrumentation import HoldDetails, holding

__all__ = ["Cooldowns", "Turn", "default_cooldowns"]

log = logging.getLogger(__name__)

#: The quotas of answers other than 429s are read at most this often per destination, in seconds.
LEARN_INTERVAL = 0.05
#: A refusal whose stated wait is this long (seconds), or in whole seconds, makes the rate regrow gently.
COSTLY_HOLD = 1.0


class _Destination:
    """One destination's pace, and the probe the others wait for. Guarded by its :class:`Cooldowns`' lock."""

    __slots__ = ("first_answer", "hurried", "key", "learned_at", "pace", "pending", "probing")

    def __init__(self, key: DestinationKey, pace: DestinationPace) -> None:
        self.key = key
        self.pace = pace
        #: When the quotas of an answer were last read (monotonic).
        self.learned_at = -math.inf
        #: Turns handed out that no thread or task has taken yet, due or not: a hold or a cut moves them.
        self.pending: set[Turn] = set()
        #: Set, and replaced, when pending turns are brought forward: it wakes those asleep until their old times.
        self.hurried = waiting.Signal()
        #: Set once the first request's answer (or failure) is in; ``None`` after that. Armed again, with the turn
        #: in ``probing``, for the first turn past all the server said remained: its answer alone releases it.
        self.first_answer: waiting.Signal | None = waiting.Signal()
        self.probing: Turn | None = None


class Turn:
    """One request's place at its destination: when its current attempt went, and what it costs."""

    __slots__ = (
        "_body",
        "_cost",
        "cooldowns",
        "destination",
        "due",
        "granted_at",
        "held_back",
        "max_wait",
        "queued",
        "serial",
        "ticket",
    )

    def __init__(self, cooldowns: Cooldowns, destination: _Destination, body: object = None) -> None:
        self.cooldowns = cooldowns
        self.destination = destination
        #: When the current attempt was granted its turn, and when that turn is due: scheduled then, and moved
        #: by holds, cuts and hurries until it comes, when the attempt goes (monotonic seconds).
        self.granted_at = self.due = 0.0
        #: Whether the destination's feedback rate, not its other limits, set the current attempt's turn.
        self.held_back = False
        #: What names the current attempt's turn where the pace is kept, if not in this process; its number there.
        self.ticket: str | None = None
        self.serial = 0
        #: Seconds spent so far waiting for turns behind other requests (not the retries' own backoffs).
        self.queued = 0.0
        #: The longest hold the current attempt waits for (the caller's ``LLM_RETRY_MAX_HINT``).
        self.max_wait = math.inf
        self._body = body
        self._cost: RequestCost | bool | None = False

    def observe(
        self, status: int, headers: Mapping[str, str], hint: ServerHint | None, stated: tuple[Quota, ...] = ()
    ) -> None:
        """Learn from the answer to this attempt (:meth:`Cooldowns.observe`)."""
        self.cooldowns.observe(self, status, headers, hint, stated)

    def wait(self, delay: float, max_wait: float) -> float:
        """Sleep ``delay``, then until this retry's turn comes (:meth:`Cooldowns.wait_turn`)."""
        return self.cooldowns.wait_turn(self, delay=delay, max_wait=max_wait)

    def last_look(self, before_waiting: Callable[[], object] | None = None) -> bool:
        """The attempt is about to be written (:meth:`Cooldowns.last_look`)."""
        return self.cooldowns.last_look(self, before_waiting)

    @property
    def paced(self) -> bool:
        """Whether the destination is paced at its known rate: from its quotas, or measured from its 429s."""
        return self.destination.pace.knows_rate

    @property
    def cost(self) -> RequestCost | None:
        """The request's token cost (:func:`~aicoder.http.tokens.estimate_cost`), estimated once, on demand."""
        if self._cost is False:
            body = self._body
            self._cost = estimate_cost(body) if isinstance(body, (bytes, str)) else None
        assert self._cost is not True
        return self._cost


class Cooldowns:
    """Turns for requests, per destination, shared by every adapter that uses this instance.

    Thread-safe. Remembers at most ``max_destinations`` (least recently used go
    first). ``clock`` is where it reads the time and waits: a test's
    (:class:`aicoder.testing.FakeClock`) runs the rules without waiting. ``min_rate`` is the slowest
    pace that 429s alone can impose.
    With ``redis`` (:class:`~aicoder.http.redis_pace.RedisPaces`), every destination's
    pace lives in Redis, shared with every process that uses the same Redis.
    """

    def __init__(
        self,
        *,
        max_destinations: int = 1024,
        probe_timeout: float = 2.0,
        min_rate: float = 1 / 120,
        clock: waiting.Clock = waiting.REAL_CLOCK,
        redis: RedisPaces | None = None,
    ) -> None:
        self.redis = redis
        self.max_destinations = max_destinations
        self.probe_timeout = probe_timeout
        self.min_rate = min_rate
        #: Where it reads the time and waits.
        self.clock = clock
        self._lock = threading.Lock()
        self._destinations: OrderedDict[DestinationKey, _Destination] = OrderedDict()

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

    def pace(self, key: DestinationKey) -> DestinationPace | None:
        """What is known of ``key``'s pace, or ``None`` if nothing is (for inspection and tests)."""
        with self._lock:
            destination = self._destinations.get(key)
            return destination.pace if destination is not None else None

    def take_turn(self, key: DestinationKey, *, body: object = None, max_wait: float = math.inf) -> Turn:
        """Wait for a first attempt's turn at ``key``, and return it.

        ``body`` is the request's body, read for its token cost if the server has a
        token limit. The first request to a new destination goes at once: it is the
        probe the others wait for. ``max_wait`` is as for :meth:`wait_turn`.
        """
        turn, probe, waiting_for_probe = self._new_turn(key, body, max_wait)
        if waiting_for_probe:
            self.wait_turn(turn, max_wait=max_wait)
            return turn
        cost = self._first_cost(turn, probe)
        if turn.destination.pace.REMOTE:
            self._book(turn, cost, max_wait)
        elif self._now_or_later(turn, cost, max_wait):
            return turn
        self._wait_until_sent(turn)
        return turn

    async def atake_turn(self, key: DestinationKey, *, body: object = None, max_wait: float = math.inf) -> Turn:
        """:meth:`take_turn` for asyncio: each wait is an ``await``, and a round trip to Redis runs off the loop.

        Cancelling the task ends its wait at once: its turn is given up (:meth:`cancel`).
        """
        turn, probe, waiting_for_probe = self._new_turn(key, body, max_wait)
        if waiting_for_probe:
            await self.await_turn(turn, max_wait=max_wait)
            return turn
        cost = self._first_cost(turn, probe)
        if turn.destination.pace.REMOTE:
            await self._off_loop(turn, self._book, turn, cost, max_wait)
        elif self._now_or_later(turn, cost, max_wait):
            return turn
        await self._await_until_sent(turn)
        return turn

    def _new_turn(self, key: DestinationKey, body: object, max_wait: float) -> tuple[Turn, bool, bool]:
        """A new turn at ``key``; whether it is the probe, and whether it must wait for the probe's answer."""
        with self._lock:
            destination = self._destinations.get(key)
            probe = destination is None
            if destination is None:
                destination = self._add(key)
            else:
                self._destinations.move_to_end(key)
            waiting_for_probe = not probe and destination.first_answer is not None
        turn = Turn(self, destination, body)
        turn.max_wait = max_wait
        return turn, probe, waiting_for_probe

    @staticmethod
    def _first_cost(turn: Turn, probe: bool) -> RequestCost | None:
        # The probe goes as soon as the pace allows (at once, unless other processes share it): nothing is known.
        return turn.cost if not probe and turn.destination.pace.counts_tokens else None

    def _now_or_later(self, turn: Turn, cost: RequestCost | None, max_wait: float) -> bool:
        """Take ``turn``'s place in the in-process pace; return whether it is now (it then counts as sent)."""
        with self._lock:
            # The common case, decided under one lock: the turn is now.
            if self._reserve(turn, cost, max_wait) <= 0:
                turn.destination.pending.discard(turn)
                turn.destination.pace.sent(turn.due)
                return True
        return False

    def wait_turn(self, turn: Turn, delay: float = 0.0, max_wait: float = math.inf) -> float:
        """Wait until ``turn``'s destination may take another attempt, at least ``delay`` seconds; take it.

        ``delay`` is the caller's own minimum, such as a retry's backoff. A hold
        or a pace step longer than ``max_wait`` (the caller's ``LLM_RETRY_MAX_HINT``)
        is not waited for: the request goes, and the server's answer says how long
        it wants, so the caller can give up with that message instead of hanging.
        Waiting behind other requests at an allowed pace has no limit. Returns the
        seconds waited.
        """
        destination = turn.destination
        turn.max_wait = max_wait
        if delay > 0:
            # The backoff is this request's own: it holds no place in the queue meanwhile, so the
            # turns of others that are due sooner go ahead.
            self.clock.sleep(delay)
        with self._lock:
            first_answer = destination.first_answer
        if first_answer is not None and not first_answer.is_set():
            self.clock.wait_for(first_answer, min(self.probe_timeout, max_wait))
        self._book(turn, turn.cost if destination.pace.counts_tokens else None, max_wait)
        return max(delay, 0.0) + self._wait_until_sent(turn)

    async def await_turn(self, turn: Turn, delay: float = 0.0, max_wait: float = math.inf) -> float:
        """:meth:`wait_turn` for asyncio: each wait is an ``await``; cancelling the task gives up the turn."""
        destination = turn.destination
        turn.max_wait = max_wait
        if delay > 0:
            await self.clock.asleep(delay)
        with self._lock:
            first_answer = destination.first_answer
        if first_answer is not None and not first_answer.is_set():
            await self.clock.await_for(first_answer, min(self.probe_timeout, max_wait))
        cost = turn.cost if destination.pace.counts_tokens else None
        if destination.pace.REMOTE:
            await self._off_loop(turn, self._book, turn, cost, max_wait)
        else:
            with self._lock:
                self._reserve(turn, cost, max_wait)
        return max(delay, 0.0) + await self._await_until_sent(turn)

    def _wait_until_sent(self, turn: Turn) -> float:
        """Sleep until ``turn``'s time, following it if a hold, a cut or a hurry moves it meanwhile; return the
        seconds."""
        now = start = turn.granted_at
        while (due := self._due(turn, now, start)) is not None:
            target, hurried = due
            woken = self.clock.sleep(target - now, hurried)
            now = self._after_sleep(target, woken)
        return now - start

    def last_look(self, turn: Turn, before_waiting: Callable[[], object] | None = None) -> bool:
        """``turn``'s attempt, its turn taken, is about to be written: if a hold was learnt since (another thread
        read a 429 while this one was on its way to the socket), it takes a new turn behind the hold, as the
        turns not yet taken were moved, unless the hold is longer than the attempt waits for;
        ``before_waiting`` is called first. Returns whether it waited. A busy interpreter can keep a thread
        tens of milliseconds between its turn and its first byte."""
        until = turn.destination.pace.held_until
        if until <= turn.due or not 0 < until - self.clock.now() <= turn.max_wait:  # no hold, or one it was behind
            return False
        if before_waiting is not None:
            before_waiting()
        self.wait_turn(turn, max_wait=turn.max_wait)
        return True

    def _after_sleep(self, target: float, woken: bool) -> float:
        """The time after a sleep until ``target``: now if ``woken`` early, or if the sleep lasted longer (a busy
        machine, a test's clock that jumped past it); else ``target`` (:func:`~aicoder.http.waiting.instant_waits`
        skips sleeps, and then it is as if the time had come)."""
        now = self.clock.now()
        return now if woken else max(now, target)

    async def _await_until_sent(self, turn: Turn) -> float:
        """:meth:`_wait_until_sent` for asyncio. Cancelled, the turn is given up: it never counts as sent."""
        now = start = turn.granted_at
        remote = turn.destination.pace.REMOTE
        try:
            while True:
                # Once it has waited, a turn in a shared pace may ask Redis whether it moved: off the loop.
                asks = remote and now > start
                due = await self._off_loop(turn, self._due, turn, now, start) if asks else self._due(turn, now, start)
                if due is None:
                    break
                target, hurried = due
                woken = await self.clock.asleep(target - now, hurried)
                now = self._after_sleep(target, woken)
        except asyncio.CancelledError:
            self.cancel(turn)
            raise
        return now - start

    def _due(self, turn: Turn, now: float, start: float) -> tuple[float, waiting.Signal] | None:
        """When ``turn``'s time comes, if after ``now``, and what is set if it is brought forward; else ``None``:
        it has come, and counts as sent.

        Where the pace is kept elsewhere, for other processes too, a hold or cut made
        there may have moved the turn: when it comes, it asks. Every such turn asks at
        least once, since its grant comes back after ``start`` (when it was asked for):
        so a hold learnt, here or elsewhere, during the grant's round trip holds it too.
        """
        destination = turn.destination
        with self._lock:
            if destination.pace.REMOTE and now > start:
                # This turn alone: asking for every turn waiting, each time one comes, held the lock for a
                # round trip that grew with the queue (256 tasks: 256 tickets a call, 256 calls).
                at = cast(RemotePace, destination.pace).follow(turn)
                if at != turn.due:
                    turn.due, turn.granted_at = at, now
            target = turn.due
            if target > now:
                return target, destination.hurried
            destination.pending.discard(turn)
            destination.pace.sent(target)
            turn.queued += now - start
            return None

    async def _off_loop(self, turn: Turn, call: Callable[..., _T], *args: object) -> _T:
        """Run ``call`` (which may wait on Redis) in a worker thread. Cancelled meanwhile, the task stops
        awaiting at once, and the turn ``call`` may still take is given up when it has."""
        work = asyncio.ensure_future(asyncio.to_thread(call, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(lambda _: self.cancel(turn))
            raise

    def cancel(self, turn: Turn) -> None:
        """``turn``'s request was cancelled before its turn came: it is not sent, nor counted as sent.

        Its place in the pace is not handed to another request: the pace errs, by
        one turn, on the slow side. Where the pace is shared, its ticket is withdrawn.
        """
        destination = turn.destination
        with self._lock:
            destination.pace.answered(turn.serial)
            if destination.probing is turn:
                self._answered(destination, turn)
            if turn not in destination.pending:
                return
            destination.pending.discard(turn)
            ticket, turn.ticket = turn.ticket, None
        if ticket is None:
            return
        pace = cast(RemotePace, destination.pace)  # only a pace kept elsewhere names its turns
        try:  # in asyncio code, the round trip to Redis is no wait of the loop's
            asyncio.get_running_loop().run_in_executor(None, pace.cancel, ticket)
        except RuntimeError:  # no loop running here
            pace.cancel(ticket)

    def _book(self, turn: Turn, cost: RequestCost | None, max_wait: float) -> None:
        """Take the destination's next turn for ``turn``. Lock not held: a pace kept elsewhere is asked
        outside it, so that no thread waits on another's round trip."""
        pace = turn.destination.pace
        if not pace.REMOTE:
            with self._lock:
                self._reserve(turn, cost, max_wait)
            return
        now = self.clock.now()
        grant = pace.next_turn(now, cost, max_wait)
        with self._lock:
            self._granted(turn, now, grant)

    def _reserve(self, turn: Turn, cost: RequestCost | None, max_wait: float) -> float:
        """Take the destination's next turn for ``turn``; return the seconds until it comes. Lock held."""
        now = self.clock.now()
        return self._granted(turn, now, turn.destination.pace.next_turn(now, cost, max_wait))

    @staticmethod
    def _granted(turn: Turn, now: float, grant: Grant) -> float:
        """``turn`` was granted ``grant`` at ``now``; return the seconds until it comes. Lock held.

        The turn is pending until its thread or task takes it, due or not: a hold or a cut meanwhile moves it.
        A turn past all the server said remained is a probe: new turns wait for its answer.
        """
        destination = turn.destination
        turn.granted_at = now
        turn.due, turn.held_back, turn.ticket, turn.serial = grant.at, grant.held_back, grant.ticket, grant.serial
        if grant.probe and destination.first_answer is None:
            destination.first_answer, destination.probing = waiting.Signal(), turn
        destination.pending.add(turn)
        return turn.due - now

    def observe(
        self,
        turn: Turn,
        status: int,
        headers: Mapping[str, str],
        hint: ServerHint | None = None,
        stated: tuple[Quota, ...] = (),
    ) -> None:
        """Learn from the answer to ``turn``'s latest attempt: its quotas, those its body ``stated``, and for a
        429 its hint.

        The quotas of answers that are not 429s are read at most every ``LEARN_INTERVAL``
        seconds per destination: they change little between two answers, and reading
        them is most of the cost of coordination when requests come fast.
        """
        destination = turn.destination
        now = self.clock.now()
        holds: HoldDetails | None = None
        quotas = read_quotas(headers) if status == 429 or now - destination.learned_at >= LEARN_INTERVAL else None
        if stated:
            quotas = (*(quotas or ()), *stated)
        with self._lock:
            pace = destination.pace
            if quotas is not None:
                destination.learned_at = now
                # Slow start is for a destination whose limits are unknown, not one that has already refused.
                first = destination.first_answer is not None and destination.probing is None and status < 400
                # Only an answer that was no refusal tells what remains to be spent.
                slowed = pace.learn(now, quotas, first, turn.serial if status < 400 else -1)
                if slowed and status < 400 and destination.pending:
                    self._reschedule(destination, now)
            if status == 429:
                # The hold first: where the pace is shared, other processes follow it from then on. The refusal
                # measures the server from the sends since the hold before it, which the new one leaves as it was.
                held = hint is not None and pace.hold(now + hint.seconds, now)  # a stated time is a floor
                next_token = hint.next_token if hint is not None else None
                # A refusal that holds everything for a second or more (whole-second waits, Gemini's retryDelay)
                # is costly: the rate regrows gently after it.
                ran_out = hint is not None and hint.window_ran_out
                costly = hint is not None and (hint.coarse or hint.seconds >= COSTLY_HOLD)
                cut = pace.refused(Refusal(now, turn.due, turn.granted_at, next_token, turn.serial, ran_out, costly))
                if held and hint is not None:
                    holds = HoldDetails(destination.key.origin, hint.seconds, hint.source)
                if cut:
                    log.info(
                        "Rate limited while paced: requests to %s now go at most %.3g a second",
                        destination.key.origin,
                        pace.rate,
                    )
                if (held or cut) and destination.pending:
                    self._reschedule(destination, now)
            elif status < 400 and pace.accepted(now, turn.held_back, turn.due) and destination.pending:
                self._hurry(destination, now)
            pace.answered(turn.serial)
            self._answered(destination, turn)
        if holds is not None:
            holding(holds)  # outside the lock: hooks are the user's code

    @staticmethod
    def _reschedule(destination: _Destination, now: float) -> None:
        """Move the turns handed out but not yet taken behind a new hold or rate: they are granted anew. Lock held.

        A turn whose time has come but whose thread or task has not yet taken it (a
        busy interpreter can keep it tens of milliseconds) has not gone: it moves too,
        or it would go after a hold the server stated.
        """
        pending = _untaken(destination)
        times = destination.pace.reschedule(pending)
        for turn, at in zip(pending, times, strict=True):
            turn.due, turn.granted_at = at, now

    @staticmethod
    def _hurry(destination: _Destination, now: float) -> None:
        """Bring the turns not yet due forward to a rate that has grown, and wake their sleepers. Lock held."""
        pace = destination.pace
        pending = _waiting(destination, now)
        for turn, at in zip(pending, pace.hurry(pending), strict=True):
            turn.due, turn.granted_at = at, now
        hurried, destination.hurried = destination.hurried, waiting.Signal()
        hurried.set()

    def failed(self, turn: Turn) -> None:
        """The request got no answer at all; let those waiting on a first answer go."""
        with self._lock:
            turn.destination.pace.answered(turn.serial)
            self._answered(turn.destination, turn)

    def _add(self, key: DestinationKey) -> _Destination:
        # The first request to a new destination is the probe; others wait for its answer.
        pace = Pace(self.min_rate)
        destination = _Destination(
            key, pace if self.redis is None else RedisPace(self.redis, key, pace, self._lock, self.clock.now)
        )
        self._destinations[key] = destination
        while len(self._destinations) > self.max_destinations:
            _, evicted = self._destinations.popitem(last=False)
            if evicted.first_answer is not None:
                evicted.first_answer.set()
        return destination

    @staticmethod
    def _answered(destination: _Destination, turn: Turn | None = None) -> None:
        """``turn`` was answered (or failed, or was cancelled): release the turns waiting on it, if it is the
        probe they wait for. Any answer releases those waiting on the first. Lock held."""
        if destination.first_answer is not None and destination.probing in (None, turn):
            destination.first_answer.set()
            destination.first_answer, destination.probing = None, None


def _untaken(destination: _Destination) -> list[Turn]:
    """``destination``'s pending turns, due or not, that no thread or task has taken yet, soonest first."""
    return sorted(destination.pending, key=lambda turn: turn.due)


def _waiting(destination: _Destination, now: float) -> list[Turn]:
    """``destination``'s pending turns due after ``now``, soonest first. Lock held."""
    return sorted((turn for turn in destination.pending if turn.due > now), key=lambda turn: turn.due)


_T = TypeVar("_T")
_defaults: dict[str | None, Cooldowns] = {None: Cooldowns()}
_defaults_lock = threading.Lock()


def default_cooldowns(redis_url: str | None = None) -> Cooldowns:
    """The process-wide :class:`Cooldowns` every :class:`~aicoder.http.adapter.LinearBackoffAdapter` uses by default.

    With ``redis_url``, the one that shares every pace through that Redis
    (:mod:`aicoder.http.redis_pace`), connected on first use.
    """
    with _defaults_lock:
        cooldowns = _defaults.get(redis_url)
        if cooldowns is None:
            assert redis_url is not None  # the in-process one is always there
            cooldowns = _defaults[redis_url] = Cooldowns(redis=RedisPaces(redis_url))
        return cooldowns
