"""hp.Cron: fields, names, OR of day fields, resets, impossible dates, time zones, DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import hydrapool as hp


def nxt(expr: str, start: datetime, tz: str | None = None) -> datetime:
    return hp.Cron(expr, tz=tz).next_after(start)


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # HydraMQ's cases (UTC)
        ("* * * * *", datetime(2023, 1, 1, 0, 0), datetime(2023, 1, 1, 0, 1)),
        ("* * * * *", datetime(2023, 1, 1, 0, 1), datetime(2023, 1, 1, 0, 2)),
        ("* * * * *", datetime(2023, 1, 1, 0, 0, 30), datetime(2023, 1, 1, 0, 1)),
        ("* * * * *", datetime(2023, 1, 1, 0, 59), datetime(2023, 1, 1, 1, 0)),
        ("* * * * *", datetime(2023, 1, 31, 23, 59), datetime(2023, 2, 1, 0, 0)),
        ("*/5 * * * *", datetime(2023, 1, 1, 0, 2), datetime(2023, 1, 1, 0, 5)),
        ("*/5 * * * *", datetime(2023, 1, 1, 0, 4), datetime(2023, 1, 1, 0, 5)),
        ("0 * * * *", datetime(2023, 1, 1, 0, 0), datetime(2023, 1, 1, 1, 0)),
        ("0 * * * *", datetime(2023, 1, 1, 1, 0), datetime(2023, 1, 1, 2, 0)),
        ("0 * * * *", datetime(2023, 1, 1, 0, 30), datetime(2023, 1, 1, 1, 0)),
        ("0 * * * *", datetime(2023, 1, 1, 23, 0), datetime(2023, 1, 2, 0, 0)),
        ("0 * * * *", datetime(2023, 1, 31, 23, 0), datetime(2023, 2, 1, 0, 0)),
        ("0 0 * * 0", datetime(2025, 4, 3, 0, 0), datetime(2025, 4, 6, 0, 0)),
        # HydraMQ's bug: lower fields must reset when a higher one moves
        ("15,45 12 * * *", datetime(2026, 1, 1, 10, 20), datetime(2026, 1, 1, 12, 15)),
        ("0,30 9 15 * *", datetime(2026, 1, 10, 8, 10), datetime(2026, 1, 15, 9, 0)),
        # unsorted lists
        ("3,0-10/5 * * * *", datetime(2026, 1, 1, 0, 59), datetime(2026, 1, 1, 1, 0)),
        # names
        ("0 0 1 JAN *", datetime(2026, 3, 1), datetime(2027, 1, 1)),
        ("0 9 * * MON-FRI", datetime(2026, 1, 3, 12), datetime(2026, 1, 5, 9)),  # Sat -> Mon
        # day-of-month OR day-of-week when both are restricted (Vixie cron)
        ("0 0 13 * FRI", datetime(2026, 1, 1), datetime(2026, 1, 2)),  # a Friday before the 13th
        ("0 0 13 * FRI", datetime(2026, 1, 9, 1), datetime(2026, 1, 13)),  # the 13th, a Tuesday
        # 6 fields: seconds first
        ("*/15 * * * * *", datetime(2026, 1, 1, 0, 0, 7), datetime(2026, 1, 1, 0, 0, 15)),
        ("30 0 12 * * *", datetime(2026, 1, 1, 12, 0, 30), datetime(2026, 1, 2, 12, 0, 30)),
        # a day that only some months have
        ("0 0 31 * *", datetime(2026, 4, 1), datetime(2026, 5, 31)),
        ("0 0 29 2 *", datetime(2026, 1, 1), datetime(2028, 2, 29)),
    ],
)
def test_next_after(expr: str, start: datetime, expected: datetime) -> None:
    assert nxt(expr, start) == expected


def test_next_is_strictly_after_a_matching_instant() -> None:
    assert nxt("0 12 * * *", datetime(2026, 1, 1, 12, 0)) == datetime(2026, 1, 2, 12, 0)


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 0 30 2 *", "never fire: day 30 does not exist in February"),
        ("* * 31 2 *", "never fire"),
        ("0 0 31 4,6,9,11 *", "April, June, September, November"),
        ("* * *", "3 fields"),
        ("* * * * * * *", "7 fields"),
        ("61 * * * *", "invalid"),
        ("*/0 * * * *", "invalid"),
        ("0 0 32 * *", "invalid"),
        ("0 0 * 13 *", "invalid"),
        ("a b c d e", "invalid"),
        ("", "0 fields"),
    ],
)
def test_bad_expressions_fail_at_parse_time(expr: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as info:
        hp.Cron(expr)
    assert repr(expr) in str(info.value)


def test_day_thirty_one_with_a_weekday_is_possible() -> None:
    hp.Cron("0 0 31 2 MON")  # OR with Mondays: fires every Monday in February


def test_bad_types_and_zones() -> None:
    with pytest.raises(TypeError):
        hp.Cron(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Mars/Olympus"):
        hp.Cron("* * * * *", tz="Mars/Olympus")
    with pytest.raises(TypeError):
        hp.Cron("* * * * *").next_after("2026-01-01")  # type: ignore[arg-type]


NY = "America/New_York"


def test_time_zone_fields_are_wall_clock() -> None:
    result = nxt("0 9 * * *", datetime(2026, 1, 1, 15, 0, tzinfo=UTC), tz=NY)
    assert result.isoformat() == "2026-01-02T09:00:00-05:00"


def test_spring_forward_gap_fires_once() -> None:
    cron = hp.Cron("30 2 * * *", tz=NY)  # 2026-03-08 02:00 jumps to 03:00
    first = cron.next_after(datetime(2026, 3, 7, 12, 0))
    second = cron.next_after(first)
    assert first.isoformat() == "2026-03-08T03:00:00-04:00"
    assert second.isoformat() == "2026-03-09T02:30:00-04:00"


def test_fall_back_fixed_time_fires_once() -> None:
    cron = hp.Cron("30 1 * * *", tz=NY)  # 2026-11-01 01:00-01:59 happens twice
    times = [cron.next_after(datetime(2026, 10, 31, 12, 0))]
    for _ in range(2):
        times.append(cron.next_after(times[-1]))
    assert [t.isoformat() for t in times] == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
        "2026-11-03T01:30:00-05:00",
    ]


def test_fall_back_hourly_job_runs_in_both_passes() -> None:
    cron = hp.Cron("0 * * * *", tz=NY)
    times = [cron.next_after(datetime(2026, 11, 1, 0, 30))]
    for _ in range(2):
        times.append(cron.next_after(times[-1]))
    utc = [t.astimezone(UTC).hour for t in times]
    assert utc == [5, 6, 7], "01:00 EDT, 01:00 EST, 02:00 EST: one real hour apart each"


def test_equality_and_repr() -> None:
    assert hp.Cron("0  0 * * *") == hp.Cron("0 0 * * *")
    assert "0 0 * * *" in repr(hp.Cron("0 0 * * *", tz=NY))
    assert hp.Cron("*/5 * * * * *").has_seconds
