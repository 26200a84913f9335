"""Cron expressions: when does a schedule fire next?

``hp.Cron`` is shared by the in-process ``Scheduler`` and the durable queue's
schedules. It takes 5 fields (minute hour day-of-month month day-of-week) or 6
with seconds first, as Poolder writes them (``"*/15 * * * * *"`` = every 15 s).
Fields accept ``*``, lists, ranges, steps and names (JAN-DEC, SUN-SAT).

The rules, and where they differ from cron implementations that got them wrong:

- Lower fields reset when a higher one moves: ``15,45 12 * * *`` from 10:20
  fires at 12:15, not 12:45.
- Day-of-month and day-of-week combine with OR when both are restricted
  (Vixie cron): ``0 0 13 * FRI`` fires on every 13th and on every Friday.
- A date that can never exist (``0 0 30 2 *``) is refused when parsed.
- In a time zone with daylight saving, a time skipped by the spring-forward
  jump fires once, at the first instant after the gap; a fixed-time job in a
  repeated fall-back hour fires once (the first pass), while jobs whose hour
  field is ``*`` fire on both passes, since those hours really happen twice.

croniter does the field arithmetic; this module adds the validation, the
seconds-first form and the fall-back rule.
"""

from __future__ import annotations

import calendar
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError as _CroniterError
from croniter import croniter

__all__ = ["Cron"]

_MONTH_NAMES = ["", *calendar.month_name[1:]]
_FIELD_HELP = "minute hour day-of-month month day-of-week, or 6 fields with seconds first"


def zone_of(tz: str | tzinfo | None) -> tzinfo | None:
    """A tzinfo for a zone name (or a tzinfo, or None); a clear error for an unknown name."""
    if tz is None or isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(f"Cron tz must be a zone name or a tzinfo, got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"Cron tz {tz!r} is not a known IANA time zone") from None


def _max_day(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _check_possible(expr: str, expanded: list[list[Any]]) -> None:
    """Refuse a day-of-month that no allowed month has (when day-of-week can't rescue it)."""
    days, months, weekdays = expanded[2], expanded[3], expanded[4]
    if days == ["*"] or weekdays != ["*"] or not all(isinstance(d, int) for d in days):
        return
    allowed = range(1, 13) if months == ["*"] else [int(m) for m in months]
    if any(min(days) <= _max_day(m) for m in allowed):
        return
    names = ", ".join(_MONTH_NAMES[m] for m in allowed)
    raise ValueError(
        f"cron expression {expr!r} can never fire: day {min(days)} does not exist in {names}"
    )


class Cron:
    """A parsed cron expression; ``next_after(dt)`` gives the next firing time.

    >>> Cron("15,45 12 * * *").next_after(datetime(2026, 1, 1, 10, 20))
    datetime.datetime(2026, 1, 1, 12, 15)

    ``tz`` (a zone name or tzinfo) is the zone the fields are read in; naive
    datetimes passed to ``next_after`` are then taken as wall-clock times in
    it, and results are aware. Without ``tz``, results carry the input's tzinfo
    (or none).
    """

    __slots__ = ("_expanded", "_fixed_hour", "_seconds", "expr", "tz")

    def __init__(self, expr: str, tz: str | tzinfo | None = None) -> None:
        if not isinstance(expr, str):
            raise TypeError(f"cron expression must be a string, got {expr!r}")
        fields = expr.split()
        if len(fields) not in (5, 6):
            count = f"{len(fields)} field{'' if len(fields) == 1 else 's'}"
            raise ValueError(f"cron expression {expr!r} has {count}; it needs 5 ({_FIELD_HELP})")
        self.expr = " ".join(fields)
        self.tz = zone_of(tz)
        self._seconds = len(fields) == 6
        try:
            expanded, _ = croniter.expand(self.expr, second_at_beginning=self._seconds)
        except _CroniterError as exc:
            raise ValueError(f"cron expression {expr!r} is invalid: {exc}") from None
        self._expanded: list[list[Any]] = expanded
        _check_possible(expr, expanded)
        self._fixed_hour = expanded[1] != ["*"]

    @property
    def has_seconds(self) -> bool:
        """True for the 6-field form (seconds first)."""
        return self._seconds

    def next_after(self, when: datetime) -> datetime:
        """The first firing time strictly after ``when``."""
        if not isinstance(when, datetime):
            raise TypeError(f"next_after takes a datetime, got {when!r}")
        if self.tz is not None:
            when = when.replace(tzinfo=self.tz) if when.tzinfo is None else when.astimezone(self.tz)
        it = croniter(self.expr, when, second_at_beginning=self._seconds)
        result: datetime = it.get_next(datetime)
        while self._fixed_hour and _second_pass(result):
            result = it.get_next(datetime)
        return result

    def __repr__(self) -> str:
        zone = f", tz={getattr(self.tz, 'key', self.tz)!r}" if self.tz is not None else ""
        return f"Cron({self.expr!r}{zone})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return (self.expr, self.tz) == (other.expr, other.tz)

    def __hash__(self) -> int:
        return hash((self.expr, self.tz))


def _second_pass(moment: datetime) -> bool:
    """Is ``moment`` the second occurrence of a wall-clock time repeated by a fall-back?"""
    if moment.tzinfo is None or not moment.fold:
        return False
    return moment.replace(fold=0).utcoffset() != moment.utcoffset()
