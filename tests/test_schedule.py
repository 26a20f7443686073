"""The linear schedule is the one formula the retry policy, the docs and the CLI share."""

import pytest

from aicoder.http.schedule import linear_delay, linear_delays


def test_defaults_climb_from_min_to_max() -> None:
    """The default settings wait 2, 9, 16, 23 and 30 seconds."""
    assert linear_delays(5, 2, 30) == (2, 9, 16, 23, 30)


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, ()), (1, (2.0,)), (2, (2.0, 30.0)), (5, (2.0, 9.0, 16.0, 23.0, 30.0))],
)
def test_counts(count: int, expected: tuple[float, ...]) -> None:
    """N = 0 means no retry; N = 1 waits MIN once; N = 2 waits MIN then MAX."""
    assert linear_delays(count, 2, 30) == expected


def test_equal_bounds_give_a_constant_wait() -> None:
    """MIN = MAX waits the same before every retry."""
    assert linear_delays(4, 7, 7) == (7, 7, 7, 7)


def test_zero_minimum_starts_at_once() -> None:
    """MIN = 0 retries the first time without waiting."""
    assert linear_delays(3, 0, 10) == (0, 5, 10)


def test_all_zero_never_waits() -> None:
    """MIN = MAX = 0 retries without waiting."""
    assert linear_delays(3, 0, 0) == (0, 0, 0)


def test_waits_never_exceed_max() -> None:
    """Floating-point steps never overshoot the cap."""
    waits = linear_delays(1000, 0.1, 0.7)
    assert max(waits) == 0.7
    assert waits == tuple(sorted(waits))


def test_single_retry_matches_the_table() -> None:
    """``linear_delay`` for retry k is the k-th entry of ``linear_delays``."""
    assert [linear_delay(k, 5, 2, 30) for k in range(1, 6)] == list(linear_delays(5, 2, 30))
