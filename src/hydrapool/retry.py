"""Retry policy: how many tries a task gets and how long to wait between them.

Shared by every part of hydrapool that reruns work (the in-process Pool now,
worker groups, batchers and the durable queue later), so one policy object
means the same thing everywhere::

    retry = hp.Retry(attempts=5, backoff=hp.Backoff.exponential(0.5, factor=2, max=30), jitter=0.2)
    retry.delay(1)   # seconds to wait after the first failed try: 0.4 .. 0.5
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Retry"]

_KINDS = ("fixed", "linear", "exponential")
MAX_DELAY = 365 * 86400.0  # a year: the longest wait any back-off returns


def _seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before retry number n (n = 1 after the first failed try).

    Build one with ``Backoff.none()``, ``Backoff.fixed(s)``,
    ``Backoff.linear(base, step)`` or ``Backoff.exponential(base, factor, max)``.
    """

    kind: Literal["fixed", "linear", "exponential"]
    base: float
    factor: float = 1.0
    cap: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Backoff kind must be one of {_KINDS}, got {self.kind!r}")
        _seconds("Backoff base", self.base)
        _seconds("Backoff cap", self.cap, allow_none=True)
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)):
            raise TypeError(f"Backoff factor must be a number, got {self.factor!r}")
        least = 1.0 if self.kind == "exponential" else 0.0
        if not math.isfinite(self.factor) or self.factor < least:
            rule = ">= 1" if self.kind == "exponential" else ">= 0"
            raise ValueError(f"Backoff factor must be finite and {rule}, got {self.factor!r}")

    @classmethod
    def none(cls) -> Backoff:
        """Retry at once."""
        return cls("fixed", 0.0)

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        """Wait the same ``seconds`` before every retry."""
        return cls("fixed", seconds)

    @classmethod
    def linear(cls, base: float, step: float | None = None, max: float | None = None) -> Backoff:  # noqa: A002
        """Wait ``base + (n - 1) * step`` (step defaults to base), at most ``max``."""
        return cls("linear", base, base if step is None else step, max)

    @classmethod
    def exponential(cls, base: float, factor: float = 2.0, max: float | None = None) -> Backoff:  # noqa: A002
        """Wait ``base * factor ** (n - 1)``, at most ``max`` seconds."""
        return cls("exponential", base, factor, max)

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        n = max(1, retry_number)
        if self.base == 0:
            return 0.0
        if self.kind == "fixed":
            value = self.base
        elif self.kind == "linear":
            value = self.base + (n - 1) * self.factor
        else:
            # Past ~1000 doublings the float overflows; the cap (if any) wins anyway.
            exponent = min(n - 1, 1000)
            try:
                value = self.base * self.factor**exponent
            except OverflowError:
                value = math.inf
        if self.cap is not None:
            return min(value, self.cap)
        # Without a cap, a huge retry number must still give a number a store can keep.
        return min(value, MAX_DELAY)


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"Retry retry_on must be exception classes, got {item!r}")
    return items


@dataclass(frozen=True, slots=True)
class Retry:
    """How often to try a task and how long to wait in between.

    ``attempts`` counts every try, the first one included: ``Retry(attempts=3)``
    runs a task at most three times. Only exceptions matching ``retry_on``
    are retried (cancellation never is). ``jitter`` in [0, 1] takes up to that
    fraction off each wait at random (1.0 is "full jitter"), so a crowd of
    failing tasks does not retry in lock-step.
    """

    attempts: int = 1
    backoff: Backoff | float = 0.0
    jitter: float = 0.0
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(
                f"Retry attempts counts every try and must be >= 1, got {self.attempts!r}"
            )
        if not isinstance(self.backoff, Backoff):
            seconds = _seconds("Retry backoff", self.backoff)
            object.__setattr__(self, "backoff", Backoff("fixed", seconds or 0.0))
        jitter = _seconds("Retry jitter", self.jitter)
        if jitter is not None and jitter > 1:
            raise ValueError(f"Retry jitter must be between 0 and 1, got {self.jitter!r}")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on))

    def should_retry(self, error: BaseException, tries: int) -> bool:
        """True if a task that failed with ``error`` on try number ``tries`` gets another."""
        return tries < self.attempts and isinstance(error, self.retry_on)

    def delay(self, tries: int) -> float:
        """Seconds to wait after failed try number ``tries`` (jitter applied)."""
        backoff = self.backoff
        assert isinstance(backoff, Backoff)  # normalised in __post_init__
        value = backoff.delay(tries)
        if self.jitter and value > 0 and math.isfinite(value):
            value -= value * self.jitter * random.random()
        return value
