"""hp.Retry and hp.Backoff: counts, delays, caps, jitter and clear errors."""

from __future__ import annotations

import pytest

import hydrapool as hp


def test_backoff_kinds() -> None:
    assert [hp.Backoff.none().delay(n) for n in (1, 2, 3)] == [0, 0, 0]
    assert [hp.Backoff.fixed(2).delay(n) for n in (1, 2, 3)] == [2, 2, 2]
    assert [hp.Backoff.linear(1, 0.5).delay(n) for n in (1, 2, 3)] == [1, 1.5, 2]
    assert [hp.Backoff.linear(1).delay(n) for n in (1, 2, 3)] == [1, 2, 3]
    assert [hp.Backoff.exponential(0.1).delay(n) for n in (1, 2, 3, 4)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8]
    )
    assert hp.Backoff.exponential(5, factor=3).delay(3) == 45


def test_backoff_cap_and_huge_retry_numbers() -> None:
    backoff = hp.Backoff.exponential(1, factor=2, max=30)
    assert [backoff.delay(n) for n in (1, 5, 6, 10_000)] == [1, 16, 30, 30]
    assert hp.Backoff.linear(1, 1, max=3).delay(100) == 3


def test_retry_counts_every_try() -> None:
    retry = hp.Retry(attempts=3)
    assert retry.should_retry(ValueError(), 1)
    assert retry.should_retry(ValueError(), 2)
    assert not retry.should_retry(ValueError(), 3)
    assert not hp.Retry().should_retry(ValueError(), 1), "default is one try"


def test_retry_on_filters_and_never_retries_cancellation() -> None:
    import asyncio

    retry = hp.Retry(attempts=5, retry_on=(ConnectionError, TimeoutError))
    assert retry.should_retry(ConnectionResetError(), 1)
    assert not retry.should_retry(ValueError(), 1)
    assert not hp.Retry(attempts=5).should_retry(asyncio.CancelledError(), 1)
    assert hp.Retry(attempts=2, retry_on=KeyError).retry_on == (KeyError,)


def test_retry_number_backoff_means_fixed_seconds() -> None:
    assert hp.Retry(attempts=2, backoff=0.25).delay(1) == 0.25


def test_jitter_stays_within_its_fraction() -> None:
    retry = hp.Retry(attempts=9, backoff=hp.Backoff.fixed(1.0), jitter=0.3)
    delays = [retry.delay(1) for _ in range(500)]
    assert all(0.7 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: hp.Retry(attempts=0), ValueError, "attempts"),
        (lambda: hp.Retry(attempts=1.5), TypeError, "1.5"),
        (lambda: hp.Retry(attempts=True), TypeError, "True"),
        (lambda: hp.Retry(jitter=2), ValueError, "jitter"),
        (lambda: hp.Retry(backoff=-1), ValueError, "-1"),
        (lambda: hp.Retry(retry_on=(ValueError, "x")), TypeError, "'x'"),
        (lambda: hp.Backoff.fixed(float("nan")), ValueError, "nan"),
        (lambda: hp.Backoff.exponential(1, factor=0.5), ValueError, "0.5"),
        (lambda: hp.Backoff.exponential(1, max=-3), ValueError, "-3"),
        (lambda: hp.Backoff("cubic", 1), ValueError, "cubic"),
    ],
)
def test_bad_input_names_value_and_rule(make, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        make()
