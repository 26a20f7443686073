"""A destination whose feedback rate has been cut, then regrown: the setting of the hurry's tests; and turns
waiting to be moved, for the paces' reschedules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from aicoder.http.cooldown import Cooldowns, Turn
from aicoder.http.destinations import DestinationKey
from aicoder.http.pace import Pace, Refusal
from aicoder.http.tokens import RequestCost


def slowed_to_five_a_second(cooldowns: Cooldowns, key: DestinationKey) -> Turn:
    """Cut ``key``'s feedback rate to 5 a second; return the turn granted next, now."""
    probe = cooldowns.take_turn(key)
    cooldowns.observe(probe, 200, {})  # says nothing of its limits
    now = cooldowns.clock.now()
    pace = paced(cooldowns, key)
    for n in range(4):
        pace.sent(now - 0.4 + n * 0.1)
    assert pace.refused(Refusal(now, now - 0.1, now, next_token=0.2))  # at most 5 a second
    return cooldowns.take_turn(key)


def regrown_to_twenty_a_second(cooldowns: Cooldowns, key: DestinationKey, turn: Turn) -> None:
    """Grow ``key``'s feedback rate to 20 a second (as if learnt elsewhere), then answer ``turn`` with a 200."""
    feedback = paced(cooldowns, key).feedback
    feedback.adopt({"rate": 20.0, "w_max": 20.0, "cut_at": feedback.cut_at}, cooldowns.clock.now())
    cooldowns.observe(turn, 200, {})


def paced(cooldowns: Cooldowns, key: DestinationKey) -> Pace:
    pace = cooldowns.pace(key)
    assert isinstance(pace, Pace)
    return pace


class Waiting(NamedTuple):
    """A turn handed out and not yet taken (a :class:`~aicoder.http.pace.PendingTurn`), for a pace to move."""

    due: float
    ticket: str | None = None
    cost: RequestCost | None = None


def waiting(times: Iterable[float], cost: RequestCost | None = None) -> list[Waiting]:
    """Turns due at ``times``, each for a request of ``cost``."""
    return [Waiting(at, cost=cost) for at in times]
