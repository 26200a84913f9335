"""RateLimit: at most ``limit`` starts in any window of ``per`` seconds.

``RateLimit`` is a value (what the limit is); ``SlidingWindow`` is the
in-process state that enforces it. The window is exact, not a token bucket:
a token bucket of size n refilled at n/per lets up to 2n starts through in
some windows of ``per`` seconds, which breaks the promise "n per period" that
APIs with hard quotas hold you to.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["RateLimit", "SlidingWindow"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` starts in any window of ``per`` seconds.

    ``hp.RateLimit(10, per=1.0)`` allows 10 starts per second, never 11
    within any one-second span.
    """

    limit: int
    per: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise TypeError(f"RateLimit limit must be an int, got {self.limit!r}")
        if self.limit < 1:
            raise ValueError(f"RateLimit limit must be >= 1, got {self.limit!r}")
        if isinstance(self.per, bool) or not isinstance(self.per, (int, float)):
            raise TypeError(f"RateLimit per must be a number of seconds, got {self.per!r}")
        if not (math.isfinite(self.per) and self.per > 0):
            raise ValueError(
                f"RateLimit per must be a finite number of seconds > 0, got {self.per!r}"
            )


class SlidingWindow:
    """The times of the last ``limit`` starts; a start is allowed once the oldest is ``per`` old."""

    __slots__ = ("_per", "_starts")

    def __init__(self, rate: RateLimit) -> None:
        self._per = float(rate.per)
        self._starts: deque[float] = deque(maxlen=rate.limit)

    def wait(self, now: float) -> float:
        """Seconds until one more start is allowed (0.0 if allowed now)."""
        starts = self._starts
        if len(starts) < (starts.maxlen or 0):
            return 0.0
        return max(0.0, starts[0] + self._per - now)

    def available(self, now: float) -> int:
        """How many starts are allowed right now."""
        horizon = now - self._per
        recent = sum(1 for t in self._starts if t > horizon)
        return (self._starts.maxlen or 0) - recent

    def take(self, now: float) -> None:
        """Record a start at ``now`` (call only when ``wait(now)`` is 0)."""
        self._starts.append(now)
