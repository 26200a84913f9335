"""hp.RetryAfter: its validation and reading hints from HTTP headers."""

from __future__ import annotations

import pytest

import hydrapool as hp


def test_retry_after_seconds_header() -> None:
    hint = hp.RetryAfter.from_headers({"Retry-After": "12"})
    assert hint is not None
    assert hint.seconds == 12


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    hint = hp.RetryAfter.from_headers({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, now=now)
    assert hint is not None
    assert hint.seconds == pytest.approx(30)


def test_github_rate_limit_headers() -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000045"}
    hint = hp.RetryAfter.from_headers(headers, now=1_700_000_000.0)
    assert hint is not None
    assert hint.seconds == pytest.approx(45)
    assert hp.RetryAfter.from_headers({"X-RateLimit-Remaining": "7"}) is None
    assert hp.RetryAfter.from_headers({}) is None


def test_past_reset_means_no_wait() -> None:
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "10"}
    hint = hp.RetryAfter.from_headers(headers, now=100.0)
    assert hint is not None
    assert hint.seconds == 0


def test_bad_retry_after_values() -> None:
    with pytest.raises(ValueError, match="-1"):
        hp.RetryAfter(-1)
    with pytest.raises(TypeError, match="'soon'"):
        hp.RetryAfter("soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        hp.RetryAfter.from_headers(42)
    assert hp.RetryAfter.from_headers({"Retry-After": "whenever"}) is None
