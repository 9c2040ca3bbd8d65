"""Time stamps as RFC 3339 strings in UTC (``2026-12-02T10:00:00.123Z``), and back."""

from __future__ import annotations

import datetime as dt


def now(timespec: str = "milliseconds") -> str:
    return format_time(dt.datetime.now(dt.UTC), timespec)


def from_unix(seconds: float, timespec: str = "seconds") -> str:
    return format_time(dt.datetime.fromtimestamp(seconds, dt.UTC), timespec)


def format_time(when: dt.datetime, timespec: str = "milliseconds") -> str:
    return when.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def age_seconds(stamp: str) -> float:
    """Seconds since ``stamp``."""
    return (dt.datetime.now(dt.UTC) - parse(stamp)).total_seconds()
