"""The pace model's rules, one by one, on a clock that only moves when told to."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicoder.http.pace import (
    HURRY_STEP,
    MAX_PACED_WINDOW,
    MAX_TAKEN_BY_OTHERS,
    SAFETY_MARGIN,
    SPEND_WITHIN,
    Feedback,
    Lane,
    OtherClients,
    Pace,
    Refusal,
)
from aicoder.http.quotas import Quota
from aicoder.http.tokens import RequestCost
from tests.pacing import waiting


def per_minute(dimension: str, limit: float, remaining: float, reset: float) -> Quota:
    return Quota(dimension, limit, remaining, reset, 60.0, "bucket", "openai", f"x-ratelimit-reset-{dimension}")


def turns(pace: Pace, count: int, now: float = 0.0, cost: RequestCost | None = None) -> list[float]:
    return [round(pace.next_turn(now, cost)[0], 6) for _ in range(count)]


# --- lanes ---


def test_lane_spaces_strictly_without_burst() -> None:
    """GCRA with no burst: one unit every 1/rate, from the first."""
    lane = Lane(rate=4.0)
    times = []
    for _ in range(3):
        at = max(0.0, lane.ready_at(1))
        lane.take(at, 1)
        times.append(at)
    assert times == [0.0, 0.25, 0.5]


def test_lane_burst_lets_units_ahead_of_the_pace() -> None:
    """A burst of 3 lets three units go at once, the fourth a full interval after the first."""
    lane = Lane(rate=1.0, burst=3.0)
    ready = []
    for _ in range(4):
        at = max(0.0, lane.ready_at(1))
        lane.take(at, 1)
        ready.append(at)
    assert ready == [0.0, 0.0, 0.0, 1.0]


# --- quotas ---


def test_a_per_minute_limit_is_a_rate() -> None:
    """600 requests a minute, nothing said of what remains: ten a second, evenly, never 600 at once."""
    pace = Pace()
    pace.learn(0.0, [Quota("requests", 600, None, None, 60.0, "bucket", "openai", "x-ratelimit-limit-requests")])
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    assert turns(pace, 4) == pytest.approx([0.0, interval, 2 * interval, 3 * interval])


def test_what_remains_is_spent_then_the_rate_paces() -> None:
    """The answer to turn 2 says 3 remain: turns 3 to 5 go at once, turn 6 one step of the rate after them."""
    pace = Pace()
    assert [pace.next_turn(0.0, None).serial for _ in range(2)] == [1, 2]
    pace.answered(1)
    pace.learn(0.0, [per_minute("requests", 600, 3, 0.3)], serial=2)
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    assert turns(pace, 4) == pytest.approx([0.0, 0.0, 0.0, interval])


@pytest.mark.parametrize(
    ("coarse", "spent_at_once"),
    [(False, True), (True, False)],
    ids=["reset in milliseconds: spent faster", "reset in whole seconds: at the stated rate"],
)
def test_what_remains_of_a_rate_stated_in_whole_seconds_is_spent_at_that_rate(
    coarse: bool, spent_at_once: bool
) -> None:
    """599 of 600 a minute remain. Where the server times its reset (and so its 429s) in milliseconds, they are
    spent from the rate up; where in whole seconds (Anthropic, IETF), a refusal would cost a second: the turns
    keep to ten a second."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.answered(1)
    quota = Quota("requests", 600, 599, 1.0, 60.0, "bucket", "anthropic", "anthropic-ratelimit-requests-reset", coarse)
    pace.learn(0.0, [quota], first=True, serial=1)
    times = turns(pace, 10)
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    assert (times[-1] < 9 * interval * 0.9) is spent_at_once
    if not spent_at_once:
        assert times == pytest.approx([n * interval for n in range(10)])


def test_an_older_answer_never_outbids_a_newer_one() -> None:
    """Answers come back out of order: what turn 1's answer says remains counts only until turn 2's is in."""
    pace = Pace()
    for _ in range(2):
        pace.next_turn(0.0, None)
    pace.answered(2)
    pace.learn(0.0, [per_minute("requests", 600, 0, 60.0)], serial=2)
    pace.answered(1)
    pace.learn(0.0, [per_minute("requests", 600, 9, 60.0)], serial=1)
    assert pace.spend_until == 1  # turn 1 was unanswered when turn 2's answer came: it may not have been counted


def test_turns_still_unanswered_before_an_answer_may_not_be_counted_in_it() -> None:
    """A server that counts out of order: the answer to turn 5 says 10 remain, with turns 2 and 4 unanswered;
    they may yet be counted, so turns up to 13, not 15, spend it."""
    pace = Pace()
    for _ in range(5):
        pace.next_turn(0.0, None)
    for serial in (1, 3, 5):
        pace.answered(serial)
    pace.learn(0.0, [Quota("requests", 100, 10, None, None, "window", "litellm", "x")], serial=5)
    assert pace.spend_until == 13


def test_a_refusal_within_what_remained_ends_the_spending() -> None:
    """The server said 100 remain, then refused turn 4 (it enforces its minute in shorter slices, or counted in
    another order): the stated time answers it, nothing is cut, and from then on the rate paces every turn."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.learn(0.0, [per_minute("requests", 600, 100, 1.0)], serial=1)
    turns(pace, 3)
    assert not pace.refused(Refusal(0.01, 0.0, 0.0, 0.05, serial=4))  # ends the spending, cuts nothing
    assert not pace.spends and pace.rate is None
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    later = turns(pace, 3, now=1.0)
    assert later[2] - later[1] == pytest.approx(interval)


def test_a_refusal_that_says_a_window_ran_out_ends_no_spending() -> None:
    """A LiteLLM proxy said 100 remain in its window, then refused turn 4: its count ran ahead of its answers
    (32 requests in flight), or another client spent it. The window is waited out and then spent; nothing
    says the rate was wrong, so nothing is cut and the spending goes on."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.learn(0.0, [Quota("requests", 100, 100, None, None, "window", "litellm", "x")], serial=1)
    turns(pace, 3)
    assert not pace.refused(Refusal(0.01, 0.0, 0.0, None, serial=4, window_ran_out=True))
    assert pace.spends and pace.rate is None
    assert turns(pace, 3, now=1.0) == [1.0, 1.0, 1.0]


def test_tokens_are_paced_by_each_requests_cost() -> None:
    """6,000 tokens a minute (100 a second): a 50-token request, then the next half a second later."""
    pace = Pace()
    pace.learn(0.0, [per_minute("tokens", 6000, 6000, 0.0001)])
    cost = RequestCost(20, 30)
    assert pace.counts_tokens
    assert turns(pace, 3, cost=cost) == pytest.approx([0.0, 0.5 / (1 - SAFETY_MARGIN), 1.0 / (1 - SAFETY_MARGIN)])


def test_an_empty_bucket_is_mirrored() -> None:
    """With 0 of 60 left, a bucket that refills at 1 a second gives the next request after 1 s."""
    pace = Pace()
    pace.learn(0.0, [per_minute("requests", 60, 0, 60.0)])
    assert turns(pace, 1)[0] == pytest.approx(1.0)


def test_a_spent_window_holds_until_it_resets() -> None:
    """``remaining: 0`` with a reset in 3 s on a window quota: nothing goes before then."""
    pace = Pace()
    pace.learn(0.0, [Quota("requests", 20, 0, 3.0, None, "window", "x-ratelimit", "x-ratelimit-reset")])
    assert turns(pace, 1) == [3.0]


def test_long_windows_are_a_budget_not_a_pace() -> None:
    """A per-day limit does not space requests out."""
    day = Quota("requests", 14400, 14000, 3600.0, 86400.0, "window", "periodic", "x")
    assert day.window > MAX_PACED_WINDOW
    pace = Pace()
    pace.learn(0.0, [day])
    assert turns(pace, 3) == [0.0, 0.0, 0.0]


# --- feedback ---


def fed(pace: Pace, times: list[float]) -> None:
    """Record sends at ``times``."""
    for at in times:
        pace.feedback.sent(at)


def test_nothing_is_slowed_before_a_429() -> None:
    """A destination that never refuses is never paced."""
    pace = Pace()
    pace.learn(0.0, [])
    assert pace.feedback.rate is None
    assert turns(pace, 5) == [0.0] * 5


def test_first_429_cuts_to_beta_of_the_send_rate() -> None:
    """botocore's rule: 0.7 times the rate the refused request was sent at."""
    feedback = Feedback()
    for at in (0.0, 0.1, 0.2, 0.3):
        feedback.sent(at)
    assert feedback.refused(now=0.4, sent_at=0.3, granted_at=0.3)
    assert feedback.rate == pytest.approx(Feedback.BETA * 4 / 0.4)


def test_a_429_read_late_cuts_from_the_rate_its_request_went_at() -> None:
    """Requests went at 50 a second; the 429 for the last is read 0.4 s later, behind a busy event loop. The wait
    for its answer was no pause in sending: the cut is 0.7 of 50, not of the 9 a second the last four sends
    would make over the time up to the answer."""
    feedback = Feedback()
    for n in range(10):
        feedback.sent(n * 0.02)
    assert feedback.refused(now=0.18 + 0.4, sent_at=0.18, granted_at=0.18)
    assert feedback.rate == pytest.approx(Feedback.BETA * 50)


def test_a_crowd_of_refusals_is_one_cut() -> None:
    """Refusals of requests granted before the cut say nothing new and cut nothing."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    assert feedback.refused(now=0.05, sent_at=0.03, granted_at=0.0)
    rate = feedback.rate
    assert not feedback.refused(now=0.06, sent_at=0.03, granted_at=0.01)
    assert feedback.rate == rate


def a_window_spent_and_waited_out(pace: Pace) -> float:
    """100 requests in a second, a 429 asking for the whole 10-s window, and its hold: return the hold's end."""
    for index in range(100):
        pace.sent(index / 100)
    assert pace.refused(Refusal(now=1.0, sent_at=1.0, granted_at=1.0))
    pace.sent(1.0)
    assert pace.hold(11.0, now=1.0)
    return 11.0


def test_a_hold_is_no_measure_of_the_server() -> None:
    """The 10 s this client held says nothing of the server: the rate is never read from a span across it."""
    pace = Pace()
    held_until = a_window_spent_and_waited_out(pace)
    rate = pace.rate
    assert rate is not None and rate > 30  # 0.7 of what went in the burst, not 100 requests over 11 s
    pace.sent(held_until)
    assert not pace.refused(Refusal(now=held_until + 0.01, sent_at=held_until, granted_at=held_until - 1))
    assert pace.rate == rate  # the first request after a hold was refused: the hold was short, the rate is not wrong
    for index in range(1, 8):
        pace.sent(held_until + index * 0.05)
    assert pace.refused(Refusal(now=held_until + 0.4, sent_at=held_until + 0.35, granted_at=held_until + 0.35))
    # Measured after the hold alone: the six it took between the two refusals, in 0.35 s, bound the cut.
    assert pace.rate == pytest.approx((1 - SAFETY_MARGIN) * 6 / 0.35)


def test_a_probe_after_a_hold_refused_again_never_collapses_the_rate() -> None:
    """The logged collapse: a probe refused right after a hold cut to 0.7 x (4 sends / 9 s) = 0.31 a second."""
    pace = Pace()
    held_until = a_window_spent_and_waited_out(pace)
    rate = pace.rate
    pace.sent(held_until)
    pace.refused(Refusal(now=held_until + 0.01, sent_at=held_until, granted_at=held_until))
    pace.hold(held_until + 10, now=held_until + 0.01)
    assert pace.rate == rate and pace.quiet_until == held_until


def test_a_precise_hint_caps_the_cut() -> None:
    """The server's next token comes within one interval: 0.1 s means at most 10 a second."""
    feedback = Feedback()
    for at in (0.0, 0.001, 0.002, 0.003):
        feedback.sent(at)
    feedback.refused(now=0.005, sent_at=0.003, granted_at=0.003, hint=0.1)
    assert feedback.rate == pytest.approx(10.0)


def test_what_the_server_took_while_busy_is_its_rate() -> None:
    """Between two refusals, 20 steady requests in 2 s: the rate goes just under 10 a second."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03)
    steady = [0.03 + 0.1 * n for n in range(1, 21)]
    for at in steady:
        feedback.sent(at)
    feedback.sent(2.04)
    assert feedback.refused(now=2.05, sent_at=2.04, granted_at=2.0)
    assert feedback.rate == pytest.approx(20 / 2.01 * (1 - SAFETY_MARGIN), rel=1e-3)


def test_a_few_requests_between_refusals_bound_the_cut_but_measure_nothing() -> None:
    """5 steady requests between two refusals: one more or less is a fifth of the count, too coarse to be the
    server's rate. The cut goes no lower than they show, but the search for more stays at full speed."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03)
    for at in [0.03 + 0.1 * n for n in range(1, 6)] + [0.54]:
        feedback.sent(at)
    assert feedback.refused(now=0.55, sent_at=0.54, granted_at=0.5)
    assert not feedback.measured
    assert feedback.scale == Feedback.SCALE
    assert feedback.rate is not None and feedback.rate >= 5 / 0.51 * (1 - SAFETY_MARGIN) - 1e-9


def test_after_a_refusal_the_rate_dwells_below_what_was_refused() -> None:
    """Between two refusals, the server took 9 a second where 12 were sent: its rate lies between. The rate
    regrows to the middle of that range and dwells there, not at the 12 a second just refused."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03)
    sends = [0.03 + 0.5 + n / 12 for n in range(1, 13)]  # half a second idle, then 12 a second
    for at in sends:
        feedback.sent(at)
    refused_at = sends[-1] + 1 / 12
    assert feedback.refused(now=refused_at, sent_at=refused_at, granted_at=refused_at)
    assert not feedback.measured
    accepted = 12 / (refused_at - 0.03)
    assert feedback.w_max == pytest.approx(math.sqrt(accepted * 12), rel=0.05)
    assert feedback.w_max < 12 * 0.95


@pytest.mark.parametrize(("costly", "scale"), [(False, Feedback.SCALE), (True, Feedback.MEASURED_SCALE)])
def test_a_refusal_that_costs_a_second_makes_the_regrowth_gentle(costly: bool, scale: float) -> None:
    """A server that states its waits in whole seconds holds everything for one at each refusal: past the cut,
    the rate searches for more as gently as a measured one, so that it overshoots less often."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    assert feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03, costly=costly)
    assert feedback.scale == scale


def test_an_idle_spell_makes_the_accepted_count_a_floor_only() -> None:
    """After a pause the server's bucket may have filled: what it took is a floor, not its rate."""
    feedback = Feedback()
    for at in (0.0, 0.01, 0.02, 0.03):
        feedback.sent(at)
    feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03)
    for at in (1.0, 1.01, 1.02, 1.03, 1.04, 1.05):  # idle for a second, then a burst
        feedback.sent(at)
    feedback.refused(now=1.07, sent_at=1.06, granted_at=1.06)
    floor = 5 / 1.03 * (1 - SAFETY_MARGIN)
    assert feedback.rate is not None and feedback.rate > floor


def drain(feedback: Feedback, start: float, rates: Sequence[float], bucket: list[float]) -> float:
    """Send at ``rates`` (one a second per send, then the last one on) from ``start`` to a server's token bucket
    ``[level, burst, rate, when]`` until it refuses one, as a whole-second Retry-After does; return when."""
    level, burst, rate, when = bucket
    at = start
    for index in itertools.count():
        level = min(burst, level + rate * (at - when))
        when = at
        feedback.sent(at)
        if level < 1:
            feedback.refused(now=at + 0.001, sent_at=at, granted_at=at, costly=True)
            bucket[:] = [level, burst, rate, when]
            return at
        level -= 1
        at += 1 / rates[min(index, len(rates) - 1)]
    raise AssertionError


def test_two_runs_after_holds_tell_the_rate_from_the_burst() -> None:
    """A server of 10 a second with a burst of 5 that states whole seconds: each hold fills its bucket, so what it
    took across a hold is only a floor. A run at 30 a second took 7 in 0.23 s; one at 12 a second, 30 in 2.4 s.
    7 = 5 + 10 x 0.23 and 30 = 5 + 10 x 2.4: the rate goes just under 10, not to 0.7 of the 12 refused."""
    feedback = Feedback()
    bucket = [5.0, 5.0, 10.0, 0.0]
    refused = drain(feedback, 0.0, [30.0], bucket)
    refused = drain(feedback, refused + 1.0, [12.0], bucket)
    assert feedback.measured
    assert feedback.rate == pytest.approx(10 * (1 - SAFETY_MARGIN), rel=0.03)


def test_runs_that_did_not_drain_the_bucket_steadily_tell_no_rate() -> None:
    """A run that began slowly (slow start) left the bucket at its brim and lost what it refilled: it tells
    nothing, and the cut searches between what was taken and what was refused, as before."""
    feedback = Feedback()
    bucket = [5.0, 5.0, 10.0, 0.0]
    refused = drain(feedback, 0.0, [2.0, 4.0, 8.0, 16.0, 32.0], bucket)
    refused = drain(feedback, refused + 1.0, [2.0, 4.0, 12.0], bucket)
    assert not feedback.measured
    assert feedback.rate == pytest.approx(12 * Feedback.BETA, rel=0.01)


def test_regrowth_only_counts_requests_the_rate_held_back() -> None:
    """Successes that the rate did not delay do not regrow it (an application-limited sender)."""
    feedback = Feedback()
    for at in (0.0, 0.1, 0.2, 0.3):
        feedback.sent(at)
    feedback.refused(now=0.4, sent_at=0.3, granted_at=0.3)
    cut = feedback.rate
    for n in range(200):
        feedback.accepted(now=1 + n, held_back=False)
    assert feedback.rate == cut
    for n in range(60):
        feedback.sent(0.5 + n * 0.01)
        feedback.accepted(now=0.5 + n * 0.01, held_back=True)
    assert feedback.rate is not None and cut is not None and feedback.rate > cut


def test_successes_of_requests_sent_before_the_cut_regrow_nothing() -> None:
    """Requests in flight when a cut came went at the rate it refused: their successes say nothing of whether the
    new rate could be higher (256 of them undid each cut within 0.1 s), in one process and through Redis alike
    (RedisPace counts its regrowths by the same rule, Pace.regrows)."""
    pace = Pace()
    fed(pace, [0.0, 0.01, 0.02, 0.03])
    pace.refused(Refusal(now=0.04, sent_at=0.03, granted_at=0.03, next_token=0.25))
    cut = pace.rate
    for n in range(40):
        assert not pace.regrows(True, 0.035)
        pace.accepted(0.05 + n * 0.01, held_back=True, sent_at=0.035)  # sent before the cut at 0.04
    assert pace.rate == cut
    assert pace.regrows(True, 0.05)
    for n in range(40):
        pace.sent(0.05 + n * 0.25)
        pace.accepted(0.05 + n * 0.25, held_back=True, sent_at=0.05 + n * 0.25)
    assert pace.rate is not None and cut is not None and pace.rate > cut


def test_regrowth_follows_the_cubic_and_stops_at_twice_the_send_rate() -> None:
    """The curve returns to the refused rate after K held-back successes, and never beyond 2x what is sent."""
    feedback = Feedback()
    for at in (0.0, 0.1, 0.2, 0.3):
        feedback.sent(at)
    feedback.refused(now=0.4, sent_at=0.3, granted_at=0.3)
    w_max, k = feedback.w_max, feedback.k
    for n in range(1, round(k) + 1):
        feedback.sent(0.4 + n * 0.1)
        feedback.accepted(now=0.4 + n * 0.1, held_back=True)
    assert feedback.rate == pytest.approx(w_max * (1 + Feedback.SCALE * (round(k) - k) ** 3))
    for n in range(200):
        feedback.accepted(now=100.0 + n, held_back=True)  # nothing sent for 100 s: the send rate is tiny
    measured = feedback.send_rate(299.0)
    assert measured is not None and feedback.rate is not None
    assert feedback.rate <= max(2 * measured, w_max * 2)


# --- slow start ---


def test_slow_start_doubles_the_rate_every_tenth_of_a_second() -> None:
    """A first answer without limits: turn n + 1 when the integral of 10 a second, doubling, reaches n."""
    pace = Pace()
    pace.learn(0.0, [], first=True)
    granted = turns(pace, 30)
    expected = [0.1 * math.log2(1 + n * math.log(2) / (10 * 0.1)) for n in range(30)]
    assert granted == pytest.approx(expected, abs=1e-6)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert gaps[-1] < gaps[0] / 4
    assert granted[-1] < 0.5


def test_slow_start_ends_at_the_first_429_with_a_cut() -> None:
    """The first refusal ends slow start and sets a rate below the one it reached."""
    pace = Pace()
    pace.learn(0.0, [], first=True)
    times = turns(pace, 10)
    fed(pace, times)
    pace.feedback.refused(now=times[-1] + 0.01, sent_at=times[-1], granted_at=0.0)
    assert pace.feedback.slow_start is None
    assert pace.feedback.rate is not None


def test_limits_in_the_first_answer_skip_slow_start() -> None:
    """A first answer that tells a rate and nothing to spend is paced by it, with no slow start; one that says
    what remains spends it in a slow start that begins at that rate."""
    pace = Pace()
    pace.learn(0.0, [Quota("requests", 60000, None, None, 60.0, "bucket", "openai", "x")], first=True)
    assert pace.feedback.slow_start is None
    spending = Pace()
    spending.learn(0.0, [per_minute("requests", 60000, 60000, 0.001)], first=True, serial=1)
    assert spending.feedback.slow_start == 0.0
    assert spending.feedback.slow_from == pytest.approx(1000 * (1 - SAFETY_MARGIN))
    window = Pace()  # all of a window is there until it resets: it is spent from all of it within SPEND_WITHIN up
    window.learn(0.0, [Quota("requests", 100, 99, None, None, "window", "litellm", "x")], first=True, serial=1)
    assert window.feedback.slow_from == pytest.approx(99 / SPEND_WITHIN)
    # A count with no reset (a LiteLLM router's declared limit) says nothing of a bucket refilling: a budget
    budget = Pace()
    budget.learn(0.0, [Quota("requests", 600, 599, None, 60.0, "bucket", "openai", "x")], first=True, serial=1)
    assert budget.feedback.slow_from == pytest.approx(599 / SPEND_WITHIN)


def test_a_rate_first_stated_by_a_refusal_paces_the_turns_handed_out_before_it() -> None:
    """Gemini states its rate only in a 429's body. The turns slow start handed out before it go behind the hold
    at that rate, not at the feedback rate slow start was cut to: spaced at its pace, they meet no second 429."""
    pace = Pace()
    pace.learn(0.0, [], first=True)
    times = turns(pace, 12)
    fed(pace, times[:8])
    pace.learn(times[7], [Quota("requests", 600, None, None, 60.0, "window", "gemini", "body")], serial=-1)
    pace.hold(times[7] + 1.0, times[7])
    pace.refused(Refusal(times[7], times[7], times[7], None, serial=8, costly=True))
    assert pace.feedback.rate is not None and pace.feedback.rate > 10  # the cut alone would let them go faster
    moved = pace.reschedule(waiting(times[8:]))
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    assert moved[0] >= times[7] + 1.0
    assert [b - a for a, b in itertools.pairwise(moved)] == pytest.approx([interval] * 3)
    assert pace.next_turn(times[7], None).at == pytest.approx(moved[-1] + interval)


@pytest.mark.parametrize("stated_at", [0.0, 0.7])
def test_a_cut_starts_from_the_stated_rate_in_force(stated_at: float) -> None:
    """Quotas pace requests at 10 a second when another client on the key takes 30 % (which no header shows): the
    429 cuts from that rate, not from the faster rate the last few sends happened to measure (13.3 a second here),
    so one cut lands under the 7 left. A rate first stated after the refused turn was granted (by that very 429,
    as Gemini states its rate) was not in force: it bounds nothing."""
    pace = Pace()
    ietf = Quota("requests", 600, None, None, 60.0, "window", "ietf", "RateLimit-Policy")
    pace.learn(stated_at, [ietf], first=True)
    sends = [0.1 + n * 0.075 for n in range(8)]  # 13.3 a second, over the last few
    fed(pace, sends)
    now = sends[-1] + 0.01
    assert pace.refused(Refusal(now, sends[-1], 0.5, costly=True))
    measured = (Feedback.MEASURED_SENDS - 1) / (sends[-1] - sends[-Feedback.MEASURED_SENDS])  # 13.3 a second
    current = 10 * (1 - SAFETY_MARGIN) if stated_at < 0.5 else measured
    assert pace.feedback.rate == pytest.approx(Feedback.BETA * current)


def counted_by_the_server(ours: float, others: float, seconds: float) -> list[tuple[float, int, float]]:
    """(time, our turn, what the server has used) at each of our answers, while we send ``ours`` a second and others
    on the key ``others``, into a bucket of 600 a minute (10 a second) that starts full: whole numbers, as
    servers write them."""
    answers, used, at = [], 0.0, 0.0
    for serial in itertools.count(1):
        at = serial / ours
        if at > seconds:
            return answers
        used = max(used + 1 + (others - 10) / ours, 0.0)
        answers.append((at, serial, float(math.floor(used))))
    raise AssertionError


@pytest.mark.parametrize("others", [3.0, 5.0])
def test_what_others_on_the_key_take_is_read_from_the_servers_count(others: float) -> None:
    """The server counts 10 a second refilled, 9.9 of ours and 3 of another client's: its count rises by 2.9 a
    second, 7 more than ours would leave it. Read within two seconds, to a tenth."""
    clients = OtherClients()
    for at, serial, used in counted_by_the_server(9.9, others, 2.0):
        clients.observe(at, serial, used, 10.0, window=False)
    assert clients.rate(2.0) == pytest.approx(others, rel=0.1)


@pytest.mark.parametrize("ours", [5.0, 9.9])
def test_a_full_bucket_says_nothing_of_others(ours: float) -> None:
    """Alone on the key, at or under the refill, the count never rises: no one else is there."""
    clients = OtherClients()
    for at, serial, used in counted_by_the_server(ours, 0.0, 3.0):
        clients.observe(at, serial, used, 10.0, window=False)
    assert clients.rate(3.0) == 0.0


def test_what_others_took_stands_while_the_bucket_is_full_then_fades() -> None:
    """Once this client leaves the others their share, the bucket fills and its count says nothing more: the share
    read stands, fading by half every HALF_LIFE seconds, so that a client that has left is found out."""
    clients = OtherClients()
    for at, serial, used in counted_by_the_server(9.9, 3.0, 2.0):
        clients.observe(at, serial, used, 10.0, window=False)
    read = clients.rate(2.0)
    assert read > 0
    clients.observe(2.1, 21, 1.0, 10.0, window=False)  # full again
    assert clients.rate(2.1) == pytest.approx(read, rel=0.01)
    assert clients.rate(2.0 + OtherClients.HALF_LIFE) == pytest.approx(read / 2, rel=0.01)


def counted_in_a_window(ours: float, others: float, seconds: float) -> list[tuple[float, int, float]]:
    """As :func:`counted_by_the_server`, for a window that refills nothing before it turns."""
    return [(serial / ours, serial, float(math.floor(serial * (1 + others / ours)))) for serial in range(1, 200)][
        : int(seconds * ours)
    ]


@pytest.mark.parametrize("counted", [counted_by_the_server, counted_in_a_window])
def test_a_window_refills_nothing_unless_its_count_says_so(counted: Any) -> None:
    """Stated as a window (IETF's headers): a count that rises by more than this client's turns is a window that
    others share (3 a second here); one that rises by less refills, as a bucket at the stated rate does."""
    clients = OtherClients()
    for at, serial, used in counted(9.9, 3.0, 2.0):
        clients.observe(at, serial, used, 10.0, window=True)
    assert clients.rate(2.0) == pytest.approx(3.0, rel=0.1)


def test_others_are_read_from_the_count_of_the_shortest_paced_limit() -> None:
    """Cerebras and Mistral state a limit per minute and one per day, each with its count. The day's count
    rises by this client's turns alone and says nothing of the refill: read beside the minute's, the slope
    would mix the two. Only the minute's is read, and the 3 a second others take is left to them."""
    pace = Pace()
    for at, serial, used in counted_by_the_server(9.9, 3.0, 2.0):
        pace.next_turn(at, None)
        minute = Quota("requests", 600, 600 - used, 60.0, 60.0, "window", "periodic", "x-ratelimit-reset-requests")
        day = Quota("requests", 10**5, 10**5 - serial, 8e4, 86400.0, "window", "periodic", "x-ratelimit-reset")
        pace.learn(at, [day, minute], serial=serial)
    assert pace.lanes["requests"].rate == pytest.approx(7 * (1 - SAFETY_MARGIN), rel=0.05)


def test_others_are_never_left_more_than_half() -> None:
    """Several clients on a key, each reading the others' share, must not starve one another: one that reads 9 of
    10 a second taken by others keeps half the rate."""
    pace = Pace()
    for at, serial, used in counted_by_the_server(9.9, 9.0, 2.0):
        pace.next_turn(at, None)
        pace.learn(at, [Quota("requests", 600, 600 - used, 60.0, 60.0, "bucket", "openai", "reset")], serial=serial)
    assert pace.others.rate(2.0) > 8
    assert pace.lanes["requests"].rate == pytest.approx(10 * MAX_TAKEN_BY_OTHERS * (1 - SAFETY_MARGIN))


def test_the_lane_leaves_others_on_the_key_their_share_and_moves_the_turns_handed_out() -> None:
    """Anthropic states 600 a minute; another client takes 3 a second of it, which only the count shows. The lane
    slows to the 7 left once the count shows it, and the turns already handed out are put through it (``learn``
    says so)."""
    pace = Pace()
    answers = counted_by_the_server(9.9, 3.0, 2.0)
    slowed = []
    for at, serial, used in answers:
        pace.next_turn(at, None)
        quota = Quota("requests", 600, 600 - used, used / 10, 60.0, "bucket", "anthropic", "reset", coarse=True)
        slowed.append(pace.learn(at, [quota], serial=serial))
    assert slowed.count(True) == 1
    assert pace.lanes["requests"].rate == pytest.approx(7 * (1 - SAFETY_MARGIN), rel=0.05)
    now = answers[-1][0]
    moved = pace.reschedule(waiting([now + 0.1, now + 0.2, now + 0.3]))
    assert moved[-1] - moved[0] == pytest.approx(2 / pace.lanes["requests"].rate)


def test_a_hold_moves_turns_already_handed_out() -> None:
    """Turns granted for 0.1 and 0.2 s move behind a hold until 1 s, at the feedback rate."""
    pace = Pace()
    for at in (0.0, 0.01, 0.02, 0.03):
        pace.feedback.sent(at)
    pace.feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03, hint=0.25)  # at most 4 a second
    pace.hold(1.0, 0.0)
    assert pace.reschedule(waiting([0.1, 0.2])) == pytest.approx([1.0, 1.25])


def regrow_until_hurried(pace: Pace, queued: list[float]) -> int:
    """Send the ``queued`` turns in order, each a held-back success, until the pace asks for a hurry; return how
    many went."""
    for sent, at in enumerate(queued, 1):
        pace.sent(at)
        if pace.accepted(at, held_back=True, sent_at=at):
            return sent
    return len(queued)


def test_a_regrown_rate_brings_turns_already_handed_out_forward() -> None:
    """A queue granted at a cut's rate follows the rate once it has regrown by HURRY_STEP: the first turn keeps its
    time, the others follow one new interval apart, none later than before, and the next grant follows them."""
    pace = Pace()
    fed(pace, [0.0, 0.01, 0.02, 0.03])
    pace.refused(Refusal(now=0.04, sent_at=0.03, granted_at=0.03, next_token=0.25))  # at most 4 a second
    queued = turns(pace, 40, now=0.04)
    assert queued[1] - queued[0] == pytest.approx(0.25)
    sent = regrow_until_hurried(pace, queued)
    assert sent < len(queued)
    rate = pace.rate
    assert rate is not None and rate >= 4 * (1 + HURRY_STEP)
    left = queued[sent:]
    moved = pace.hurry(waiting(left))
    assert moved[0] == left[0]
    assert [b - a for a, b in itertools.pairwise(moved)] == pytest.approx([1 / rate] * (len(left) - 1))
    assert all(new <= old for new, old in zip(moved, left, strict=True))
    assert pace.next_turn(moved[0], None).at == pytest.approx(moved[-1] + 1 / rate)
    assert not pace.accepted(moved[0], held_back=True)  # spaced at the new rate: no hurry until it grows again


def test_turns_paced_by_quotas_are_hurried_no_closer_than_their_lanes() -> None:
    """Where quotas set a lane (10 a second), a cut to 4 a second spaces the queue at 4; as the rate regrows the
    queue follows it, never closer than the lane's step. (A queue of 256 tasks' turns kept the cut's spacing
    to its end: 1.3x to 2.2x the ideal through Redis.)"""
    pace = Pace()
    pace.learn(0.0, [per_minute("requests", 600, 600, 1.0)])
    pace.spends = False  # the server refused within what it said remained: the lanes pace from now on
    fed(pace, [0.0, 0.1, 0.2, 0.3])
    pace.refused(Refusal(now=0.4, sent_at=0.3, granted_at=0.3, next_token=0.25))
    queued = turns(pace, 40, now=0.4)
    assert queued[1] - queued[0] == pytest.approx(0.25)
    sent = regrow_until_hurried(pace, queued)
    assert sent < len(queued)
    left = queued[sent:]
    moved = pace.hurry(waiting(left))
    assert moved[0] == left[0]
    rate = pace.rate
    assert rate is not None
    gaps = [b - a for a, b in itertools.pairwise(moved)]
    assert gaps == pytest.approx([max(1 / rate, 1 / (10 * (1 - SAFETY_MARGIN)))] * len(gaps))
    assert moved[-1] < left[-1] and all(new <= old for new, old in zip(moved, left, strict=True))
    # Grown past the lane's rate (sent at 9 a second, it may grow to 18), the queue goes a lane's step apart.
    for index in range(1, 400):
        pace.sent(moved[0] + index / 9)
        pace.feedback.accepted(moved[0] + index / 9, held_back=True)
    assert pace.rate is not None and pace.rate > 10
    again = pace.hurry(waiting(moved))
    assert [b - a for a, b in itertools.pairwise(again)] == pytest.approx([1 / (10 * (1 - SAFETY_MARGIN))] * len(gaps))


def test_turns_spent_from_what_remains_are_never_hurried() -> None:
    """While what the server says remains is spent, the feedback rate paces nothing: no hurry."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.learn(0.0, [per_minute("requests", 6000, 5999, 0.01)], serial=1)
    fed(pace, [0.0, 0.01, 0.02, 0.03])
    pace.feedback.refused(now=0.04, sent_at=0.03, granted_at=0.03, hint=0.25)
    assert pace.spends and not pace.hurries


def test_a_refusal_past_all_that_remained_cuts_nothing() -> None:
    """A fixed window: 3 said to remain, spent, then turn 5 refused. The window ran out; the rate is not wrong."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.learn(0.0, [Quota("requests", 4, 3, None, None, "window", "litellm", "x")], serial=1)
    for at in turns(pace, 4):
        pace.sent(at)
    assert not pace.refused(Refusal(0.01, 0.0, 0.0, None, serial=5))
    assert pace.rate is None and pace.spends


def test_turns_spent_at_once_are_put_through_the_lanes_when_the_server_refuses_one() -> None:
    """Three turns handed out while spending, then a refusal within what remained: the next reschedule spaces
    the pending turns by the token lane (10 tokens a second, 5 each), as they would have been without it."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.answered(1)
    pace.learn(0.0, [per_minute("requests", 6000, 100, 1.0), per_minute("tokens", 600, 600, 0.01)], serial=1)
    cost = RequestCost(3, 2)
    spent = [pace.next_turn(0.0, cost).at for _ in range(3)]
    assert spent == [0.0, 0.0, 0.0]
    pace.refused(Refusal(0.01, 0.0, 0.0, 0.05, serial=2))
    moved = pace.reschedule(waiting(spent[1:], cost))
    step = 5 / (10 * (1 - SAFETY_MARGIN))
    assert moved[1] - moved[0] == pytest.approx(step)
    # Once: turns granted through the lanes are not put through again.
    assert pace.reschedule(waiting(moved, cost)) == moved


def test_turns_put_through_the_lanes_keep_the_first_ones_time() -> None:
    """Three turns spent at once behind a hold, then a refusal: they go through the requests lane from the first
    one's time, not from one step after the last of them (which would count them twice)."""
    pace = Pace()
    pace.next_turn(0.0, None)
    pace.answered(1)
    pace.learn(0.0, [per_minute("requests", 600, 100, 1.0)], serial=1)
    pace.hold(1.0, 0.0)
    spent = [pace.next_turn(0.0, None).at for _ in range(3)]
    assert spent == [1.0, 1.0, 1.0]
    pace.refused(Refusal(0.01, 0.0, 0.0, 0.05, serial=2))
    interval = 1 / (10 * (1 - SAFETY_MARGIN))
    assert pace.reschedule(waiting(spent)) == pytest.approx([1.0, 1.0 + interval, 1.0 + 2 * interval])


# --- invariants, on generated histories ---

_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("turn"), st.floats(0, 0.2)),
        st.tuples(st.just("hold"), st.floats(0, 0.2), st.floats(0.001, 2)),
        st.tuples(st.just("refuse"), st.floats(0, 0.2), st.floats(0.001, 1)),
        st.tuples(st.just("accept"), st.floats(0, 0.2), st.booleans()),
        st.tuples(st.just("learn"), st.floats(0, 0.2), st.integers(0, 50)),
    ),
    max_size=40,
)


def _lived(events: list[tuple[object, ...]]) -> tuple[Pace, float, list[float]]:
    """A pace after ``events``, the time they end at, and the turns it handed out that are still to come."""
    pace, now, handed = Pace(), 0.0, []
    for kind, step, *args in events:
        now += float(step)  # type: ignore[arg-type]
        if kind == "turn":
            grant = pace.next_turn(now, None)
            handed.append(grant.at)
            pace.sent(grant.at)
        elif kind == "hold":
            pace.hold(now + float(args[0]), now)  # type: ignore[arg-type]
        elif kind == "refuse":
            pace.refused(Refusal(now, now, now, float(args[0]), serial=pace.serial))  # type: ignore[arg-type]
        elif kind == "accept":
            pace.accepted(now, bool(args[0]), now)
        else:
            pace.learn(now, [per_minute("requests", 600, float(args[0]), 1.0)], serial=pace.serial)  # type: ignore[arg-type]
    return pace, now, sorted(at for at in handed if at > now)


@settings(max_examples=100, deadline=None)
@given(_EVENTS)
def test_a_reschedule_never_moves_a_turn_earlier(events: list[tuple[object, ...]]) -> None:
    pace, _, pending = _lived(events)
    moved = pace.reschedule(waiting(pending))
    assert all(after >= before for before, after in zip(pending, moved, strict=True))


@settings(max_examples=100, deadline=None)
@given(_EVENTS)
def test_a_hurry_never_moves_a_turn_later_nor_before_the_hold(events: list[tuple[object, ...]]) -> None:
    pace, _, pending = _lived(events)
    if pace.feedback.rate is None or not pace.hurries:
        return  # nothing to hurry to, or turns the feedback rate does not pace
    moved = pace.hurry(waiting(pending))
    for before, after in zip(pending, moved, strict=True):
        assert after <= before
        assert after == before or after >= pace.held_until
