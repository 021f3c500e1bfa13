"""Time for the emulator: the injectable clock type and Smithery's timestamp format.

Everything time-dependent takes a ``Clock`` (seconds since the epoch, like ``time.time``) so tests
control it. Internally instants are whole milliseconds since the epoch (``*_ms``), because
Smithery's timestamps carry milliseconds. This module does no I/O and keeps no state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], float]
"""Returns the current time in seconds since the Unix epoch (``time.time`` is one)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_epoch_ms(epoch_seconds: float) -> int:
    """Whole milliseconds since the epoch, rounded down (an instant never moves later)."""
    return math.floor(epoch_seconds * 1000)


def format_timestamp(epoch_ms: int) -> str:
    """ISO 8601 in UTC with milliseconds and ``Z``, e.g. ``2024-01-01T01:00:00.000Z``.

    This is JavaScript's ``Date.prototype.toISOString`` format, which Smithery answers with.
    """
    instant = _EPOCH + timedelta(milliseconds=epoch_ms)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
