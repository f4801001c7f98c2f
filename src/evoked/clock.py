"""The one timestamp of evoked: UTC, ISO 8601, to the second (stores, runs, reports, indexes)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now in UTC, e.g. ``2026-12-05T14:05:30+00:00``: comparable across machines and time zones."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
