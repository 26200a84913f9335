"""Rate-limit hints in HTTP headers (Retry-After, X-RateLimit-*)."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any


def _header(headers: Any, name: str) -> str | None:
    getter = getattr(headers, "get", None)
    if getter is None:
        raise TypeError(f"headers must be a mapping with .get(), got {type(headers).__name__}")
    value = getter(name)
    if value is None:
        value = getter(name.lower())
    return None if value is None else str(value).strip()


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _http_date(text: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp()


def retry_after_seconds(headers: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait according to the headers, or None when they say nothing."""
    current = time.time() if now is None else now
    retry_after = _header(headers, "Retry-After")
    if retry_after is not None:
        seconds = _number(retry_after)
        if seconds is None:
            when = _http_date(retry_after)
            seconds = None if when is None else when - current
        if seconds is not None:
            return max(0.0, seconds)
    if _number(_header(headers, "X-RateLimit-Remaining")) == 0:
        reset = _number(_header(headers, "X-RateLimit-Reset"))
        if reset is not None:
            return max(0.0, reset - current)
    return None
