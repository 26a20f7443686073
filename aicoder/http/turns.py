"""The turn of the request being sent in this thread or task: all the retry policy needs of the pace.

urllib3 runs the retry policy in the thread that sends, and the async transport
in the task that sends. So the adapter and the transport make a request's turn
current around each send (:func:`enter`, :func:`leave`), and
:class:`~aicoder.http.policy.LinearRetry` finds it with :func:`current`. The
policy depends on this leaf, not on the pace's module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Protocol

from aicoder.http.hints import ServerHint
from aicoder.http.quotas import Quota
from aicoder.http.tokens import RequestCost

__all__ = ["CurrentTurn", "current", "enter", "leave"]


class CurrentTurn(Protocol):
    """A request's place at its destination, as the retry policy uses it (:class:`~aicoder.http.cooldown.Turn`)."""

    #: Seconds spent so far waiting for turns behind other requests.
    queued: float

    @property
    def cost(self) -> RequestCost | None:
        """The request's estimated token cost, if the server counts tokens."""
        ...

    @property
    def paced(self) -> bool:
        """Whether the destination is paced at a known rate."""
        ...

    def observe(
        self, status: int, headers: Mapping[str, str], hint: ServerHint | None, stated: tuple[Quota, ...] = ()
    ) -> None:
        """Learn from the answer to this attempt, for every request bound for the destination; ``stated``: the
        limits its body states."""
        ...

    def wait(self, delay: float, max_wait: float) -> float:
        """Sleep ``delay``, then until the retry's turn comes; return the seconds waited."""
        ...

    def last_look(self, before_waiting: Callable[[], object] | None = None) -> bool:
        """The attempt, its turn taken, is about to be written: wait for a hold learnt since, calling
        ``before_waiting`` first; return whether it waited."""
        ...


_current: ContextVar[CurrentTurn | None] = ContextVar("aicoder_current_turn", default=None)


def enter(turn: CurrentTurn) -> Token[CurrentTurn | None]:
    """Make ``turn`` the turn of the request being sent in this thread or task, until :func:`leave`."""
    return _current.set(turn)


def leave(token: Token[CurrentTurn | None]) -> None:
    """Undo the :func:`enter` that gave ``token``."""
    _current.reset(token)


def current() -> CurrentTurn | None:
    """The turn of the request being sent in this thread or task, if a coordinating adapter sends it."""
    return _current.get()
