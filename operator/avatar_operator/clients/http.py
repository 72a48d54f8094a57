"""What every HTTP client here reads the same way: a Retry-After header."""

from __future__ import annotations

import datetime
import email.utils
import math


def retry_after_s(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP-date), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return max((when - now).total_seconds(), 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
