"""The one clock: timezone-aware UTC, as every timestamp column stores it.

Every timestamp the engine writes comes from `utcnow`, so `travel_to` moves all of them at once:
how tests cross a month boundary (budgets reset on the 1st, UTC) without waiting for one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def utcnow() -> datetime:
    return datetime.now(UTC) + _offset


@contextmanager
def travel_to(moment: datetime) -> Iterator[None]:
    """Run the block as if it were `moment` (the clock keeps ticking from there)."""
    global _offset
    saved = _offset
    _offset = moment - datetime.now(UTC)
    try:
        yield
    finally:
        _offset = saved
