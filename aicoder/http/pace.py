"""When one destination will take the next request: the model behind coordinated backoff.

A :class:`Pace` combines five constraints; a turn comes when all of them allow it.

- **Hold.** No request before ``held_until``, the expiry of the latest server hint.
- **Sustained lanes**, one per dimension (requests, tokens, input-tokens,
  output-tokens), from quotas whose window is a minute or less: ``limit / window``
  units a second, with no burst. A per-minute limit is a rate, never a burst to
  spend at once. The requests lane leaves other clients on the key what the
  server's count shows them taking (:class:`OtherClients`).
- **Bucket mirrors**, for servers that refill a bucket continuously and say how
  full it is (OpenAI, Anthropic): the server's own level, so that other clients
  on the same key are accounted for.
- **Feedback** (:class:`Feedback`): a request rate learnt from 429s alone, so
  that a server that says nothing, speaks an unknown dialect, or shares the key
  with other clients still converges to what it really allows.
- **What remains is spent.** When an answer (not a 429) says how many requests
  remain, the turns handed out after it, up to that many, wait for neither the
  sustained lanes nor the feedback rate: only for the hold, the bucket mirrors,
  and slow start, which ramps them up from the first answer (from the lane's
  rate, or for a window from a rate that would spend all of it within
  ``SPEND_WITHIN``, doubling) so that a limit enforced in shorter slices than it
  is stated costs a 429 or two, not dozens. Turns are numbered (``serial``) so
  that an answer counts the turns handed out after its own, and the turns before
  it still unanswered, which a server answering out of order may not have
  counted yet. While this lasts, a refusal cuts nothing. Once the server refuses
  a turn it said there was room for, what it says remains is no longer spent at
  once: the turns handed out are put through the lanes, which pace from then on
  with the feedback rate, and the next refusal cuts as usual. The first turn past
  all it said remained asks, as the first turn to a new destination does
  (``Grant.probe``): the turns after it wait for its answer. A 429 for it is a
  window running out, not a rate too high: it holds until the time the server
  states. So is any 429 that says a window ran out (LiteLLM's ``reset_at``): it
  cuts nothing and ends no spending, and the next window is spent. A rate
  stated with resets in whole seconds is not spent faster than it states
  (:func:`requests_remaining`): there, a refusal costs a second.

What the feedback knows of the server's rate goes through four states:

- *unknown*: nothing has been said or refused; the first request asks alone.
- *slow start*: its answer said nothing of the limits, or said what remains:
  turns ramp up from a starting rate, doubling (:meth:`Feedback.start_slowly`).
- *paced*: a 429 ended slow start with a cut, or quotas state the rate; the
  lanes and the feedback rate (regrowing along CUBIC's curve) space the turns.
- *measured*: a cut found what the server took while kept busy
  (``Feedback.measured``); the rate dwells just under it and searches gently.

A state moves only forward, except that a new destination starts unknown.

The turns handed out keep two invariants, whatever moves them:

- a reschedule (a hold, a cut, the end of spending) never moves a turn earlier;
- a hurry (the feedback rate regrew) never moves one later, nor before the hold.

Each lane is GCRA (:class:`Lane`). Times are monotonic seconds. A :class:`Pace`
is not thread-safe: :class:`~aicoder.http.cooldown.Cooldowns` guards it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import ClassVar, NamedTuple, Protocol

from aicoder.http.quotas import Quota
from aicoder.http.tokens import RequestCost

__all__ = ["Feedback", "Grant", "Lane", "Pace", "Refusal", "requests_remaining"]

#: Pace a little slower than the server allows: its clock and ours drift, and requests arrive with jitter.
SAFETY_MARGIN = 0.01
#: Longer windows (per hour, per day) are a budget, not a pace: only running out of them holds requests.
MAX_PACED_WINDOW = 60.0
#: Turns handed out come sooner once the feedback rate has grown this much since they were spaced (:meth:`Pace.hurry`).
HURRY_STEP = 0.02
#: What remains of a window is spent from a rate that would spend it all in this many seconds, doubling from there.
SPEND_WITHIN = 0.1
#: The most of a stated rate this client leaves to others on the key (:class:`OtherClients`): where several
#: clients each read the others' share, one that left them more would starve.
MAX_TAKEN_BY_OTHERS = 0.5
#: A sustained lane that slows by more than this puts the turns handed out through it again.
RELANE_STEP = 0.05
#: The most turns a pace keeps as handed out and unanswered.
MAX_UNANSWERED = 4096


class Lane:
    """GCRA over one dimension: ``rate`` units a second, at most ``burst`` units ahead of that pace.

    Invariant: ``tat`` (the theoretical arrival time) is when every unit granted so
    far would have been spent at ``rate``. A request of ``cost`` units may go at
    ``t`` if ``tat - t <= (burst - cost) / rate``: the lane is then at most
    ``burst`` units ahead. ``burst=0`` spaces requests strictly.
    """

    __slots__ = ("burst", "rate", "tat")

    def __init__(self, rate: float, burst: float = 0.0, tat: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tat = tat

    def ready_at(self, cost: float, share: float = 1.0) -> float:
        """The earliest time a request of ``cost`` units conforms, if this client has ``share`` of the rate."""
        return self.tat - max(self.burst - cost, 0.0) / (self.rate * share)

    def take(self, at: float, cost: float, share: float = 1.0) -> None:
        """Grant ``cost`` units at ``at``."""
        self.tat = max(self.tat, at) + cost / (self.rate * share)

    def __repr__(self) -> str:
        return f"Lane(rate={self.rate:.6g}, burst={self.burst:g}, tat={self.tat:.6f})"


class Feedback:
    """A request rate learnt from 429s alone, after botocore's adaptive retry mode (CUBIC).

    **Slow start.** A destination whose first answer says nothing of its limits may
    have none, or any: its requests start at ``SLOW_START`` a second, doubling every
    ``DOUBLING`` seconds, so a crowd of threads finds the limit with a few 429s,
    not dozens. The first 429 ends it, with a cut; so does a rate past
    ``SLOW_START_END``, after which nothing is slowed.

    **Cuts.** Each 429 for a request granted its turn under the current rate means
    the rate is wrong, and cuts it to ``BETA`` times the lower of the rate and the
    send rate measured up to the refused request (not up to its answer, which may
    come late), as botocore does (the rate being never above what stated quotas
    paced requests at), corrected by what the server has shown:

    - *at most* ``1 / hint`` for a precise hint: with its bucket empty, the server
      says when its next token comes, and that is never later than one interval;
    - *at least* what it demonstrably accepted: between two refusals its bucket was
      empty at both ends, so the requests it took in between (the latest such span
      with a few of them), over the time between, are its rate, or less if its
      bucket filled up meanwhile. When requests went steadily in between, it never
      filled up: that *is* its rate, and the new rate goes just under it, provided
      there were enough of them (``MIN_MEASURED``) for one more or less not to matter. Otherwise
      the rate lies between what it took and what it refused, and the cut goes to
      their geometric mean if that is lower, which narrows the range quickly;
    - *just under* the rate two runs of sends tell apart from the burst: after a
      hold the server's bucket is full, so a run that drains it steadily takes the
      burst plus the rate times its length before it is refused, and two runs of
      different lengths give both (:meth:`_fitted_rate`). Where each refusal holds
      everything for a whole second, the rate goes there at once, not below it to
      regrow slowly.

    A 429 for a request granted its turn *before* the last cut says nothing new (it
    was paced at the old rate) and cuts nothing, so a crowd of refusals is one cut,
    not forty.

    **Silence is no measure.** A span in which this client itself held (waiting out
    a time the server stated) says nothing of how fast it sends: the send rate is
    measured only over the sends since the latest hold ended (``since``). (What the
    server accepted between two refusals stays a lower bound across a hold: its
    bucket was empty at both ends, whatever this client did in between.) A 429 for
    the first request after a hold says the hold was short, not that the rate is
    wrong, and cuts nothing: the new hold answers it.

    **Regrowth.** After a cut the rate regrows along CUBIC's curve,
    ``w_max * (1 + C * (n - K)**3)``: flat near the rate that was refused, steeper
    beyond it, never faster than twice the measured send rate. botocore counts ``n``
    in seconds, with ``C`` = 0.4 requests/s³; here ``n`` counts the successes of
    requests this rate held back, with ``C`` = 0.4 / 10⁴: botocore's curve at 10
    requests a second, and the same shape at 2 a second as at 200. A cut of 30 %
    regrows in about 20 such requests. Requests the rate did not hold back say
    nothing about whether it could be higher, and do not regrow it (TCP's rule for
    an application-limited sender); nor do requests sent before the latest cut, at
    the rate it refused (:meth:`Pace.accepted`). Once a cut has measured the server's rate, the
    search for more is gentler (``MEASURED_SCALE``): it is only for a limit that has
    risen since.
    """

    BETA = 0.7
    SCALE = 0.4 / 10**4
    #: Once the server's rate has been measured, more is only worth a gentler search: an eighth of ``SCALE``.
    MEASURED_SCALE = SCALE / 8
    SLOW_START, DOUBLING, SLOW_START_END = 10.0, 0.1, 10_000.0
    MIN_ACCEPTED = 4
    #: A span of fewer accepted requests than this is too coarse to be the server's rate: one request more or
    #: less is over 10 % of it. It still bounds the cut, but the search for more stays brisk.
    MIN_MEASURED = 10
    SAMPLES = 256
    #: Sends this far apart or more are two runs (:meth:`_fitted_rate`), and two runs this much apart in length
    #: tell a rate.
    RUN_PAUSE, MIN_FIT_SPAN = 0.25, 0.2
    #: The send rate is measured over the last few sends, and over no less than a few milliseconds.
    MEASURED_SENDS, MIN_WINDOW = 4, 0.02

    def __init__(self, min_rate: float = 1 / 120) -> None:
        self.min_rate = min_rate
        self.rate: float | None = None
        self.lane: Lane | None = None
        self.w_max = 0.0
        self.scale = self.SCALE
        self.k = 0.0
        self.cut_at = -math.inf
        #: Whether a cut has measured the server's rate (what it accepted while kept busy).
        self.measured = False
        #: When slow start began, while it lasts, the rate it began at, and the turns it has handed out.
        self.slow_start: float | None = None
        self.slow_from = self.SLOW_START
        self._slow_granted = 0
        #: Successes of requests held back by this rate since the last cut: CUBIC's clock.
        self.regrowth = 0
        self._sends: deque[float] = deque(maxlen=self.SAMPLES)
        self._refusals: deque[float] = deque(maxlen=self.SAMPLES)

    def state(self) -> dict[str, float]:
        """What another process needs to go on from here (:meth:`restore`): the rate and its curve."""
        state = {"rate": self.rate, "w_max": self.w_max, "scale": self.scale, "k": self.k, "cut_at": self.cut_at}
        state |= {"measured": float(self.measured), "slow_start": self.slow_start, "slow_from": self.slow_from}
        return {name: value for name, value in state.items() if value is not None}

    @classmethod
    def restore(
        cls, state: dict[str, float], sends: Iterable[float], refusals: Iterable[float], min_rate: float = 1 / 120
    ) -> Feedback:
        """A :class:`Feedback` in ``state`` (from :meth:`state`), with these send and refusal samples."""
        feedback = cls(min_rate)
        feedback._load(state)
        feedback._sends.extend(sends)
        feedback._refusals.extend(refusals)
        return feedback

    def adopt(self, state: dict[str, float], now: float) -> None:
        """Go on from ``state`` (from :meth:`state`), learnt elsewhere, keeping this one's samples and lane."""
        cut_at = self.cut_at
        self._load(state)
        if self.cut_at != cut_at:
            self.regrowth = 0
        if self.rate is not None:
            self._set(self.rate, now)
        else:
            self.lane = None

    def _load(self, state: dict[str, float]) -> None:
        self.rate = state.get("rate")
        self.w_max = state.get("w_max", self.w_max)
        self.scale = state.get("scale", self.scale)
        self.k = state.get("k", self.k)
        self.cut_at = state.get("cut_at", self.cut_at)
        self.measured = bool(state.get("measured", 0.0))
        self.slow_start = state.get("slow_start")
        self.slow_from = state.get("slow_from", self.SLOW_START)

    def start_slowly(self, now: float, rate: float = 0.0) -> None:
        """Begin slow start: the first answer said nothing of the limits, or said what remains to be spent. It
        begins at ``rate`` (the rate the quotas allow for good), if that is faster than ``SLOW_START``."""
        if self.rate is None:
            self.slow_start = now
            self.slow_from = max(self.SLOW_START, rate)
            self._slow_granted = 0

    def stop_slow_start(self) -> None:
        """The limits are known (from quotas, or a 429), or slow start outgrew them: it is over."""
        self.slow_start = None

    def slow_rate(self, now: float) -> float:
        """The rate slow start has reached at ``now``."""
        assert self.slow_start is not None
        return self.slow_from * 2 ** (max(now - self.slow_start, 0.0) / self.DOUBLING)

    def ready_at(self) -> float | None:
        """When this rate allows the next turn, or ``None`` if it sets no limit."""
        if self.slow_start is not None:
            # Turn n + 1 of slow start comes when the integral of its doubling rate reaches n.
            n = self._slow_granted
            return self.slow_start + self.DOUBLING * math.log2(1 + n * math.log(2) / (self.slow_from * self.DOUBLING))
        if self.lane is not None:
            return self.lane.ready_at(1)
        return None

    def granted(self, at: float) -> None:
        """A turn at ``at`` was handed out: it takes its place in the paced lane."""
        if self.slow_start is not None:
            self._slow_granted += 1
            if self.slow_rate(at) > self.SLOW_START_END:
                self.stop_slow_start()
        elif self.lane is not None:
            self.lane.take(at, 1)

    def sent(self, at: float) -> None:
        """A request went at ``at``: a sample for the send rate and for what the server accepted."""
        self._sends.append(at)

    def refusal(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was refused: a sample for what the server accepted."""
        self._refusals.append(sent_at)

    def send_rate(self, now: float, since: float = -math.inf) -> float | None:
        """Requests a second over the last few sends from ``since`` up to ``now``: a pause lowers it at once."""
        recent = self._last_sends(since, now)
        if len(recent) < 2:
            return None
        return len(recent) / max(now - recent[-1], self.MIN_WINDOW)

    def rate_sent_at(self, sent_at: float, since: float = -math.inf) -> float | None:
        """Requests a second over the last few sends from ``since`` up to the one at ``sent_at``: the rate in
        force when that request went, however late its answer is read. (Read up to then, a 429 that a busy
        event loop took 0.4 s to get to looks like a pause, and cut a rate of 50 a second to 11.)"""
        recent = self._last_sends(since, sent_at)
        if len(recent) < 2:
            return None
        return (len(recent) - 1) / max(recent[0] - recent[-1], self.MIN_WINDOW)

    def _last_sends(self, since: float, until: float) -> list[float]:
        """The last few sends from ``since`` up to ``until``, latest first (a shared pace also knows the turns to
        come, after ``until``)."""
        past = (at for at in reversed(self._sends) if since <= at <= until)
        return list(itertools.islice(past, self.MEASURED_SENDS))

    def refused(
        self,
        now: float,
        sent_at: float,
        granted_at: float,
        hint: float | None = None,
        since: float = -math.inf,
        costly: bool = False,
        ceiling: float | None = None,
    ) -> bool:
        """Learn from a 429 for a request granted its turn at ``granted_at`` and sent at ``sent_at``.

        ``hint`` is the time until the server's next token, if it said so precisely;
        ``since``, when the latest hold before the request ended. ``costly``: the server
        stated a wait of a second or more, or in whole seconds, so each refusal holds
        everything for that long: the rate then regrows as gently as a measured one
        (``MEASURED_SCALE``), since finding more sooner is worth less than what each
        overshoot costs. ``ceiling``: the rate the server's stated quotas pace requests
        at, if they do; the rate in force was never above it, so the cut starts from
        there, not from a feedback rate the quotas kept from being used. Returns whether
        the rate was cut.
        """
        first_after_hold = since > -math.inf and not any(since <= at < sent_at for at in self._sends)
        self.refusal(sent_at)
        if granted_at < self.cut_at or first_after_hold:
            return False
        rate = self.rate
        if self.slow_start is not None:
            rate = self.slow_rate(now)
            self.stop_slow_start()
        known = [value for value in (rate, ceiling, self.rate_sent_at(sent_at, since)) if value is not None]
        if not known:  # one lone request so far: no rate to cut from yet
            return False
        current = min(known)  # the rate, the stated quotas' and the measured send rate: the lowest was in force
        new, w_max, scale = current * self.BETA, current, self.MEASURED_SCALE if costly else self.SCALE
        if hint:  # the server's next token comes within one interval: it allows at most 1 / hint
            new, w_max = min(new, 1 / hint), min(w_max, 1 / hint)
        accepted, saturated = self._accepted_rate(sent_at)
        if accepted is not None and accepted < current:
            fitted = None if saturated else self._fitted_rate(sent_at)
            if saturated:  # what the server took while kept busy is its rate: go just under it, regrow around it
                new, w_max, scale = accepted * (1 - SAFETY_MARGIN), accepted, self.MEASURED_SCALE
                self.measured = True
            elif fitted is not None and accepted <= fitted[0] < current:
                # Two runs after pauses tell the rate apart from the burst the pauses refilled: go just under it
                rate, precise = fitted
                new, w_max = rate * (1 - SAFETY_MARGIN), rate
                if precise:
                    scale, self.measured = self.MEASURED_SCALE, True
            else:  # its rate lies between what it took and what it refused: search that range geometrically,
                # and dwell at its middle, not at the rate it just refused
                middle = math.sqrt(accepted * w_max)
                new, w_max = max(accepted * (1 - SAFETY_MARGIN), min(new, middle)), middle
        new = max(new, self.min_rate)
        self.w_max = max(w_max, new)
        self.scale = scale
        self.k = ((1 - new / self.w_max) / scale) ** (1 / 3)
        self.regrowth = 0
        self.cut_at = now
        self._set(new, now)
        return True

    def accepted(self, now: float, held_back: bool) -> None:
        """Regrow the rate after a success of a request it ``held_back``, along the cubic, to at most
        twice the measured send rate."""
        if self.rate is None or not held_back:
            return
        self.regrowth += 1
        grown = self.w_max * (1 + self.scale * (self.regrowth - self.k) ** 3)
        measured = self.send_rate(now)
        if measured is not None:
            grown = min(grown, max(2 * measured, self.rate))
        if grown > self.rate:
            self._set(grown, now)

    def _set(self, rate: float, now: float) -> None:
        self.rate = rate
        if self.lane is None:
            self.lane = Lane(rate, tat=now)
        else:
            self.lane.rate = rate

    def _fitted_rate(self, sent_at: float) -> tuple[float, bool] | None:
        """The server's rate from the two latest runs of sends that each began after a pause, went steadily, and
        ended in a refusal (the one at ``sent_at`` ends the second); and whether it is precise.

        A pause (a hold) lets the server's bucket fill up to its burst ``b``, so a run
        that drains it at a steady rate above the server's ``r`` takes ``b + r * T``
        requests before the first refusal, ``T`` after it began. Two runs of different
        lengths give ``r`` and ``b``. Across a hold the requests taken are only a lower
        bound, as the bucket stopped filling once full; this tells the rate apart
        from the burst. It is precise when the runs differ by ``MIN_MEASURED`` requests.
        ``None`` when the runs do not tell: too alike, not steady, or not consistent
        with a bucket that was full at the start of both.
        """
        sends, refusals = sorted(self._sends), sorted(self._refusals)
        runs: list[tuple[float, float, int]] = []  # (pause before it, seconds to its first refusal, requests taken)
        last = bisect.bisect_right(sends, sent_at) - 1  # the refused request's own send ends this run
        while len(runs) < 2 and last >= 0:
            start = last
            while start > 0 and sends[start] - sends[start - 1] < self.RUN_PAUSE:
                start -= 1
            if start == 0 and len(sends) == self.SAMPLES:
                return None  # it began before the samples kept
            first = sends[start]
            index = bisect.bisect_left(refusals, first)
            if index == len(refusals) or refusals[index] > sends[last]:
                return None  # it ended in no refusal
            refused_at = refusals[index]
            taken = bisect.bisect_left(sends, refused_at) - start
            if taken < self.MIN_ACCEPTED:
                return None  # too few to tell
            moments = [*sends[start : start + taken], refused_at]
            if (
                max(later - earlier for earlier, later in itertools.pairwise(moments))
                > 2 * (refused_at - first) / taken
            ):
                return None  # not steady: a bucket at its brim loses what it refills
            runs.append((first - sends[start - 1] if start > 0 else math.inf, refused_at - first, taken))
            last = start - 1
        if len(runs) < 2:
            return None
        (pause, seconds, taken), (earlier_pause, earlier_seconds, earlier_taken) = runs
        if abs(seconds - earlier_seconds) < self.MIN_FIT_SPAN:
            return None
        rate = (taken - earlier_taken) / (seconds - earlier_seconds)
        burst = taken - rate * seconds
        if rate <= 0 or burst < -1 or min(pause, earlier_pause) * rate < burst:
            return None  # not what a bucket full at the start of both runs takes
        return rate, abs(taken - earlier_taken) >= self.MIN_MEASURED

    def _accepted_rate(self, sent_at: float) -> tuple[float | None, bool]:
        """Requests the server took per second since the latest refusal that leaves enough to tell.

        Also whether requests went steadily meanwhile, with no pause longer than two
        of its intervals: then its bucket never filled up, and what it took is all
        it gave.
        """
        sends = sorted(self._sends)
        refusals = sorted(self._refusals)
        if not sends:
            return None, False
        end = bisect.bisect_left(refusals, sent_at)
        for index in range(end - 1, -1, -1):
            start = refusals[index]
            if start < sends[0]:
                break  # older than the samples kept
            first, last = bisect.bisect_right(sends, start), bisect.bisect_left(sends, sent_at)
            accepted = (last - first) - (end - index - 1)
            if accepted >= self.MIN_ACCEPTED and sent_at > start:
                rate = accepted / (sent_at - start)
                moments = [start, *sends[first:last], sent_at]
                longest_pause = max(later - earlier for earlier, later in itertools.pairwise(moments))
                return rate, longest_pause <= 2 / rate and accepted >= self.MIN_MEASURED
        return None, False


class OtherClients:
    """The requests a second other clients on the same key take, read from the server's count.

    Between two answers, the server's count of what is used (``limit - remaining``)
    grows by this client's turns and everyone else's, less what it refilled: so what
    it grew by, less the turns handed out in between (their ``serial`` s count them),
    is everyone else's, plus the refill if there is one. A window refills nothing
    until it turns; a bucket refills at its stated rate, and so does a server that
    calls its limit a window (IETF's headers) when its count grows more slowly than
    this client's turns alone. A least-squares slope over the last ``SPAN`` seconds
    smooths out the server's whole numbers, and only a share clear of the slope's own
    error counts. The count speaks only while it rises: a full bucket wastes its
    refill, and a window that turns starts over. Then the share last read stands,
    fading by half every ``HALF_LIFE`` seconds: if the others still take it, this
    client's rate, grown back, soon shows it again. A limit is often enforced in
    shorter slices than it is stated (OpenAI's), where the others' share runs out
    long before the stated one does: the sustained lane gives it up
    (:meth:`Pace.learn`).
    """

    #: Seconds of answers the slope is read over, the least it needs, and the fewest answers.
    SPAN, MIN_SPAN, MIN_SAMPLES = 3.0, 0.5, 6
    #: A bucket counted this close to full may be full (its count is a whole number, rounded), and a count
    #: that rose by less says nothing.
    FULL = 2.0
    HALF_LIFE = 30.0

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, float]] = deque()
        self._share = 0.0
        self._read_at = -math.inf

    def observe(self, now: float, serial: int, used: float, rate: float, window: bool) -> None:
        """The answer to turn ``serial``, at ``now``, says the server has counted ``used`` of a limit of ``rate``
        requests a second: a bucket, or a ``window``."""
        samples = self._samples
        if used < self.FULL:  # what came before says nothing of what follows
            samples.clear()
            return
        samples.append((now, serial, used))
        while samples[0][0] < now - self.SPAN:
            samples.popleft()
        if len(samples) < self.MIN_SAMPLES or now - samples[0][0] < self.MIN_SPAN or used - samples[0][2] < self.FULL:
            return  # too few answers, or a count that did not rise: the bucket may be full, wasting its refill
        count = len(samples)
        mean_t = sum(t for t, _, _ in samples) / count
        mean_y = sum(used - serial for _, serial, used in samples) / count
        spread = sum((t - mean_t) ** 2 for t, _, _ in samples)
        slope = sum((t - mean_t) * (used - serial - mean_y) for t, serial, used in samples) / spread
        residual = sum((used - serial - mean_y - slope * (t - mean_t)) ** 2 for t, serial, used in samples)
        others = slope if window and slope >= 0 else slope + rate
        self._share = others if others > 2 * math.sqrt(residual / (count - 2) / spread) else 0.0
        self._read_at = now

    def rate(self, now: float) -> float:
        """Requests a second the others take, as last read, faded since."""
        return self._share * math.pow(0.5, max(now - self._read_at, 0.0) / self.HALF_LIFE)


class PendingTurn(Protocol):
    """A turn handed out and not yet taken, as a pace moves it: when it is due, what names it where the pace is
    kept (``None`` here), and the cost of its request."""

    @property
    def due(self) -> float: ...

    @property
    def ticket(self) -> str | None: ...

    @property
    def cost(self) -> RequestCost | None: ...


class Grant(NamedTuple):
    """A turn handed out: its time, whether the feedback rate set it, what names it where the pace is kept,
    its number among the destination's turns, and whether it is the first past all the server said remained
    (``probe``: the turns after it should wait for its answer)."""

    at: float
    held_back: bool
    ticket: str | None = None
    serial: int = 0
    probe: bool = False


class Refusal(NamedTuple):
    """A 429 for turn ``serial``, as a pace learns from it: when it came (``now``), when the turn was granted and
    its request sent, the seconds until the server's next token if it said so precisely (``next_token``),
    whether it said a window ran out, and whether it is ``costly``: it holds everything for a second or more."""

    now: float
    sent_at: float
    granted_at: float
    next_token: float | None = None
    serial: int = 0
    window_ran_out: bool = False
    costly: bool = False


class DestinationPace(Protocol):
    """What :class:`~aicoder.http.cooldown.Cooldowns` asks of one destination's pace: :class:`Pace`, kept in this
    process, or :class:`~aicoder.http.redis_pace.RedisPace`, kept in Redis for every process. Times are this
    process's monotonic seconds; turns are numbered (``serial``) where the pace is kept."""

    REMOTE: ClassVar[bool]

    @property
    def held_until(self) -> float:
        """No turn before this time, as this process knows it: the latest hint's expiry."""
        ...

    @property
    def counts_tokens(self) -> bool: ...

    @property
    def knows_rate(self) -> bool: ...

    @property
    def rate(self) -> float | None: ...

    def next_turn(self, now: float, cost: RequestCost | None, max_wait: float = math.inf) -> Grant: ...

    def learn(self, now: float, quotas: Iterable[Quota], first: bool = False, serial: int = 0) -> bool: ...

    def hold(self, until: float, now: float) -> bool: ...

    def sent(self, at: float) -> None: ...

    def answered(self, serial: int) -> None: ...

    def refused(self, refusal: Refusal) -> bool: ...

    def accepted(self, now: float, held_back: bool, sent_at: float = -math.inf) -> bool: ...

    def reschedule(self, turns: Sequence[PendingTurn]) -> list[float]: ...

    def hurry(self, turns: Sequence[PendingTurn]) -> list[float]: ...


class RemotePace(DestinationPace, Protocol):
    """A pace kept elsewhere (``REMOTE``), which names the turns it hands out (:attr:`Grant.ticket`): a turn
    that will not be taken is withdrawn there by its name, and a turn whose time has come asks there, by its
    name, whether a hold or cut made elsewhere moved it."""

    def cancel(self, ticket: str) -> None: ...

    def follow(self, turn: PendingTurn) -> float: ...


class Pace:
    """Everything known about when one destination takes requests; see the module docstring. A
    :class:`DestinationPace`."""

    #: Whether the pace is kept elsewhere (in Redis), guarding its own state: then it is asked for turns
    #: without the lock of its :class:`~aicoder.http.cooldown.Cooldowns`, which holds up no thread on a round
    #: trip; and a turn, when it comes, asks whether a hold or cut made in another process moved it.
    REMOTE: ClassVar[bool] = False

    def __init__(self, min_rate: float = 1 / 120) -> None:
        #: No turn before this time: the latest hint's expiry.
        self.held_until = -math.inf
        #: When the hold before the latest one ended (the sends since then measure the server, not a silence), and
        #: when the latest hold began.
        self.quiet_until = -math.inf
        self._hold_began = -math.inf
        #: The part of the quotas' rates this process may use: 1, unless it paces alone for several clients.
        self.share = 1.0
        self.lanes: dict[str, Lane] = {}
        self.mirrors: dict[str, Lane] = {}
        #: When the quotas first stated a request rate (a lane or a mirror of requests).
        self._requests_stated_at = math.inf
        self.feedback = Feedback(min_rate)
        #: The feedback rate the turns handed out are spaced at: the latest cut's, or the latest hurry's.
        self._spaced_at = math.inf
        #: Turns handed out so far; turns up to ``spend_until`` spend what the answer to turn ``_spend_said_by``
        #: said remains; ``spends`` until the server refuses such a turn.
        self.serial = 0
        self.spend_until = 0
        self._spend_said_by = -1
        self.spends = True
        #: Turns handed out and not yet answered: a server may not have counted them in what it says remains.
        self._unanswered: set[int] = set()
        #: Whether a lane is new: the next reschedule puts the turns slow start handed out through it.
        self._relane = False
        #: Whether a request's token cost matters here: the server has told of a token limit.
        self.counts_tokens = False
        #: What the server's count shows other clients on the key taking, which the requests lane leaves them.
        self.others = OtherClients()

    @property
    def knows_rate(self) -> bool:
        """Whether the server's rate is known: from its quotas, or measured between its 429s."""
        return bool(self.lanes) or self.feedback.measured

    def next_turn(self, now: float, cost: RequestCost | None, max_wait: float = math.inf) -> Grant:
        """Take the next turn for a request of ``cost``; return its time, and whether the feedback rate set it.

        A hold, or one lane's step, longer than ``max_wait`` is not waited for: the
        request goes, and the server's answer says how long it really wants.
        """
        self.serial += 1
        spending = self.spends and self.serial <= self.spend_until
        at = now
        if self.held_until - now <= max_wait:
            at = max(at, self.held_until)
        share = self.share
        lanes = self.mirrors.items() if spending else [*self.lanes.items(), *self.mirrors.items()]
        taken = [(lane, _units(cost, dimension)) for dimension, lane in lanes]
        for lane, units in taken:
            if units / (lane.rate * share) <= max_wait:
                at = max(at, lane.ready_at(units, share))
        held_back = False
        ready = self.feedback.ready_at() if not spending or self.feedback.slow_start is not None else None
        if ready is not None and ready - now <= max_wait:
            held_back = ready >= at
            at = max(at, ready)
        for lane, units in taken:
            lane.take(at, units, share)
        if spending:  # the sustained lanes resume one step after the last turn spent, not from before the spending
            for dimension, lane in self.lanes.items():
                lane.tat = max(lane.tat, at + _units(cost, dimension) / (lane.rate * share))
        if ready is not None:
            self.feedback.granted(at)
        probe = self.spends and self._spend_said_by >= 0 and self.serial == self.spend_until + 1
        self.awaiting(self.serial)
        return Grant(at, held_back, serial=self.serial, probe=probe)

    def awaiting(self, serial: int) -> None:
        """Turn ``serial`` was handed out (here, or where the pace is kept) and awaits its answer."""
        self._unanswered.add(serial)
        if len(self._unanswered) > MAX_UNANSWERED:  # turns never answered (a caller gave up on them) age out
            self._unanswered = set(sorted(self._unanswered)[-MAX_UNANSWERED // 2 :])

    def answered(self, serial: int) -> None:
        """Turn ``serial`` was answered, failed, or will not be sent."""
        self._unanswered.discard(serial)

    def last_to_spend(self, serial: int, remaining: float) -> int:
        """The last turn that may spend the ``remaining`` requests the answer to turn ``serial`` says are left,
        less the turns before it still unanswered, which the server may not have counted yet."""
        return serial + math.floor(remaining) - sum(1 for other in self._unanswered if other < serial)

    def learn(
        self, now: float, quotas: Iterable[Quota], first: bool = False, serial: int = 0, counted: int | None = None
    ) -> bool:
        """Adopt the limits the answer to turn ``serial`` describes (``-1``: a refusal, or a turn numbered
        elsewhere, whose remaining count is not this pace's to spend); a ``first`` success that tells no rate,
        or tells what remains, starts slow start. ``counted``: the number of that turn among every client's
        that share the pace (where it is kept in Redis), by which the server's count tells others on the key
        (:class:`OtherClients`); ``serial`` by default. Return whether a sustained lane slowed: the turns handed
        out should then be put through it again (:meth:`reschedule`)."""
        quotas = tuple(quotas)
        counted = serial if counted is None else counted
        slowed = False
        count = _shortest_count(quotas)
        if count is not None and counted > 0:
            self.others.observe(now, counted, *count)
        others = self.others.rate(now)
        rates: dict[str, float] = {}
        for quota in quotas:
            rate = quota.rate
            if rate and _paced(quota):
                # What other clients on the key take of a request rate is not this client's to pace at.
                mine = rate - min(others, rate * MAX_TAKEN_BY_OTHERS) if quota.dimension == "requests" else rate
                rates[quota.dimension] = min(rates.get(quota.dimension, math.inf), mine * (1 - SAFETY_MARGIN))
            if quota.refill == "bucket" and rate and quota.limit and quota.remaining is not None:
                mirror = self.mirrors.get(quota.dimension)
                if mirror is None:
                    mirror = self.mirrors[quota.dimension] = Lane(rate, quota.limit)
                mirror.rate, mirror.burst = rate, quota.limit
                mirror.tat = max(mirror.tat, now + (quota.limit - quota.remaining) / rate)
            elif quota.refill == "window" and quota.reset and quota.remaining is not None and quota.remaining < 1:
                self.hold(now + quota.reset, now)  # spent: nothing fits until it resets
        remaining, windows = requests_remaining(quotas)
        if remaining is not None and serial > self._spend_said_by:
            self._spend_said_by, self.spend_until = serial, self.last_to_spend(serial, remaining)
        if first and ((remaining is not None and remaining >= 1 and self.spends) or not rates):
            # What remains is spent from the lane's rate up, doubling; what remains of a window (all there until it
            # resets, where a bucket may be enforced in shorter slices), from all of it within SPEND_WITHIN.
            window = remaining if remaining is not None and windows else 0.0
            self.feedback.start_slowly(now, max(rates.get("requests", 0.0), window / SPEND_WITHIN))
        elif rates and not (self.spends and self.serial < self.spend_until):
            self.feedback.stop_slow_start()
        for dimension, rate in rates.items():
            lane = self.lanes.get(dimension)
            if lane is None:
                self.lanes[dimension] = Lane(rate, tat=now)
                # Unless what remains is spent, the turns handed out before it was known (slow start's) go
                # through it at the next reschedule (in Redis too: 'L:new').
                self._relane = self._relane or self._spend_said_by < 0
            else:
                # A lane slowed by more than a step (others on the key took more) moves the turns handed out.
                slowed = slowed or rate < lane.rate * (1 - RELANE_STEP)
                lane.rate = rate
        if "requests" in self.lanes or "requests" in self.mirrors:
            self._requests_stated_at = min(self._requests_stated_at, now)
        self.counts_tokens = any(dimension != "requests" for dimension in (*self.lanes, *self.mirrors))
        self._relane = self._relane or slowed
        return slowed

    def reschedule(self, turns: Sequence[PendingTurn]) -> list[float]:
        """Move ``turns`` already handed out (sorted by when they are due) behind the hold and the feedback rate,
        if they changed; and behind every sustained lane, as they would have been granted without spending,
        once a refusal has ended the spending of what remained (or once, when a lane is first known while
        nothing is spent). Return their new times.

        Threads asleep until their turn then wake at the new time: a cut or a hold
        takes effect at once, not after the queue granted at the old rate has drained.
        """
        times = [turn.due for turn in turns]
        moved: list[float] = []
        interval = 1 / self.feedback.rate if self.feedback.rate else 0.0
        # Once spending has ended, turns are lane-paced for good: every reschedule keeps them so, not a hold alone.
        relane, self._relane = self._relane or not self.spends, False
        if relane and times:  # the lanes stood one step after the last turn spent: these turns among them
            for lane in self.lanes.values():
                lane.tat = min(lane.tat, times[0])
        for index, at in enumerate(times):
            at = max(at, self.held_until, moved[-1] + interval if moved else at)
            if relane:
                cost = turns[index].cost if self.counts_tokens else None
                for dimension, lane in self.lanes.items():
                    at = max(at, lane.ready_at(_units(cost, dimension), self.share))
                for dimension, lane in self.lanes.items():
                    lane.take(at, _units(cost, dimension), self.share)
            moved.append(at)
        if moved and self.feedback.lane is not None:
            self.feedback.lane.tat = max(self.feedback.lane.tat, moved[-1] + interval)
        return moved

    def sent(self, at: float) -> None:
        """A request went at ``at``."""
        self.feedback.sent(at)

    def refused(self, refusal: Refusal) -> bool:
        """Learn from ``refusal``; return whether it cut the rate (see :meth:`Feedback.refused`). While what the
        server says remains is spent, a refusal cuts nothing: within it, it ends the spending; past it, the
        server's window ran out. A refusal that says its window ran out (as LiteLLM's do) cuts nothing and ends
        no spending: the window is waited out, then spent.
        """
        now, sent_at, granted_at, next_token, serial, window_ran_out, costly = refusal
        if window_ran_out:  # counted elsewhere too (other clients, answers out of order): the rate was right
            self.feedback.refusal(sent_at)
            return False
        if self.spends and self._spend_said_by >= 0 and serial > 0:
            # Within what the server said remained, it does not let what it says be spent at once (it enforces
            # a shorter slice, or counted in another order): no longer spent. Past it, its window ran out. Either
            # way the stated time answers it, and nothing says the rate is wrong: nothing is cut.
            self.spends = serial > self.spend_until
            self.feedback.refusal(sent_at)
            return False
        since = self.held_until if self.held_until <= sent_at else self.quiet_until
        cut = self.feedback.refused(now, sent_at, granted_at, next_token, since, costly, self.stated_rate(granted_at))
        if cut:
            self._spaced_at = self.feedback.rate or math.inf
        return cut

    def accepted(self, now: float, held_back: bool, sent_at: float = -math.inf) -> bool:
        """A request sent at ``sent_at`` succeeded; ``held_back`` if the feedback rate set its turn.

        A request sent soon after a hold (within as long as the hold lasted) spent
        what the server refilled while this client was silent, and one sent before
        the latest cut went at the rate that was refused: neither success says
        whether the rate could be higher, and neither regrows it. (With 256 requests
        in flight, their successes undid each cut within a tenth of a second.)
        Returns whether the feedback rate has now grown enough (``HURRY_STEP``) for
        the turns already handed out to come sooner (:meth:`hurry`).
        """
        self.feedback.accepted(now, self.regrows(held_back, sent_at))
        rate = self.feedback.rate
        return self.hurries and rate is not None and rate >= self._spaced_at * (1 + HURRY_STEP)

    @property
    def hurries(self) -> bool:
        """Whether the feedback rate paces the turns handed out, so that they may follow it when it regrows: it
        has been cut, nothing is being spent, and the turns have gone through the lanes (which a hurry keeps)."""
        return self.feedback.lane is not None and (not self.spends or self._spend_said_by < 0) and not self._relane

    def hurry(self, turns: Sequence[PendingTurn]) -> list[float]:
        """Bring ``turns`` already handed out (sorted by when they are due) forward to the feedback rate, which
        has grown; return their new times.

        A deep queue granted at the rate of a cut would otherwise keep that spacing
        until it drains, however fast the rate regrows meanwhile (:meth:`accepted`
        says when). The first turn keeps its time; the others follow it one new
        interval apart, and a lane's step apart, never later than before, never
        before the hold.
        """
        feedback, lane = self.feedback, self.feedback.lane
        assert feedback.rate is not None and lane is not None
        self._spaced_at = feedback.rate
        interval = 1 / feedback.rate
        times = [turn.due for turn in turns]
        if times:  # the lanes stood one step after the last of these turns: they are taken again, sooner
            for sustained in self.lanes.values():
                sustained.tat = min(sustained.tat, times[0])
        moved: list[float] = []
        for turn, before in zip(turns, times, strict=True):
            at = min(before, max(moved[-1] + interval, self.held_until)) if moved else before
            cost = turn.cost if self.counts_tokens else None
            for dimension, sustained in self.lanes.items():
                at = max(at, sustained.ready_at(_units(cost, dimension), self.share))
            at = min(at, before)  # a turn the lanes never spaced (granted while spending) is left no later
            for dimension, sustained in self.lanes.items():
                sustained.take(at, _units(cost, dimension), self.share)
            moved.append(at)
        if moved:
            lane.tat = moved[-1] + interval
        return moved

    @property
    def rate(self) -> float | None:
        """The feedback rate, requests a second, if 429s have set one."""
        return self.feedback.rate

    def stated_rate(self, before: float) -> float | None:
        """The requests a second the server's quotas let this client send, if they stated a rate before ``before``
        (a rate first stated then or later, by the very 429 being learnt from, was not in force)."""
        if self._requests_stated_at >= before:
            return None
        rates = [lane.rate for dimension, lane in self._lanes() if dimension == "requests"]
        return min(rates) * self.share if rates else None

    def hold(self, until: float, now: float) -> bool:
        """No turn before ``until`` (``now`` is the time it is said at); return whether that is later than before."""
        if until <= self.held_until:
            return False
        if self.held_until <= now:
            self.quiet_until, self._hold_began = self.held_until, now
        self.held_until = until
        return True

    def regrows(self, held_back: bool, sent_at: float) -> bool:
        """Whether the success of a request sent at ``sent_at`` regrows the feedback rate (:meth:`accepted`): the
        rate held it back, it went after the latest cut, and it spent nothing a hold refilled."""
        return held_back and sent_at >= self.feedback.cut_at and not self.refilled(sent_at)

    def refilled(self, sent_at: float) -> bool:
        """Whether a request sent at ``sent_at`` went within as long after the latest hold as the hold lasted:
        what the server took then, it had refilled while this client held."""
        if self._hold_began == -math.inf:
            return False
        return self.held_until <= sent_at < 2 * self.held_until - self._hold_began

    def _lanes(self) -> Iterable[tuple[str, Lane]]:
        yield from self.lanes.items()
        yield from self.mirrors.items()


def requests_remaining(quotas: Iterable[Quota]) -> tuple[float | None, bool]:
    """The fewest requests any of ``quotas`` says remain and may be spent faster than their rate (``None`` if
    none says), and whether all of it is there at once: every quota that says so is a window, or says nothing
    of a reset (a count, such as a LiteLLM router's, with no bucket refilling behind it).

    A quota that states its rate and times its reset in whole seconds is spent at
    that rate, no faster: a server that speaks in whole seconds states whole seconds
    in its 429s too, so a refusal found by spending faster costs up to a second,
    more than spending a slice it does not state could gain.
    """
    said = [quota for quota in quotas if quota.dimension == "requests" and quota.remaining is not None]
    if not said or any(quota.coarse and _paced(quota) for quota in said):
        return None, False
    return min(quota.remaining for quota in said if quota.remaining is not None), all(
        quota.refill == "window" or quota.reset is None for quota in said
    )


def _shortest_count(quotas: Iterable[Quota]) -> tuple[float, float, bool] | None:
    """What the paced request quota with the shortest window says is used, its rate, and whether it is a window:
    the count that shows other clients on the key (:class:`OtherClients`). A day's count beside a minute's says
    nothing of a refill."""
    counts = [
        (quota.window, quota.limit - quota.remaining, rate, quota.refill == "window")
        for quota in quotas
        if quota.dimension == "requests" and _paced(quota) and quota.limit and quota.remaining is not None
        if (rate := quota.rate)
    ]
    if not counts:
        return None
    _, used, rate, window = min(counts)
    return used, rate, window


def _paced(quota: Quota) -> bool:
    """Whether ``quota`` states a rate the sustained lanes pace at."""
    return bool(quota.rate and quota.window and quota.window <= MAX_PACED_WINDOW)


def _units(cost: RequestCost | None, dimension: str) -> float:
    if dimension == "requests":
        return 1.0
    return float(cost.of(dimension)) if cost is not None else 0.0
