"""hp.RateLimit validation and the exact sliding window behind it."""

from __future__ import annotations

import pytest

import hydrapool as hp
from hydrapool.ratelimit import SlidingWindow


def test_window_allows_n_then_waits_for_the_oldest() -> None:
    window = SlidingWindow(hp.RateLimit(3, per=1.0))
    for t in (0.0, 0.1, 0.2):
        assert window.wait(t) == 0
        window.take(t)
    assert window.wait(0.3) == pytest.approx(0.7)
    assert window.wait(1.0) == 0
    window.take(1.0)
    assert window.wait(1.05) == pytest.approx(0.05)  # now the oldest is 0.1


def test_never_more_than_n_in_any_window() -> None:
    window = SlidingWindow(hp.RateLimit(5, per=1.0))
    taken: list[float] = []
    t = 0.0
    while len(taken) < 50:
        wait = window.wait(t)
        if wait == 0:
            window.take(t)
            taken.append(t)
        t += max(wait, 0.013)
    for i in range(len(taken) - 5):
        assert taken[i + 5] - taken[i] >= 1.0 - 1e-9


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [((0,), ValueError, "limit"), ((1.5,), TypeError, "1.5"), ((3, 0), ValueError, "per")],
)
def test_bad_rate_limits(args, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        hp.RateLimit(*args)
