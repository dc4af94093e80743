"""The wall clock of the project's tools, moved as the engine's is.

The engine's clock is the wall clock plus its ``clock_offset_s`` setting (0 in service). The
tools that stamp fixes for an engine they start (the demo's simulated devices, the
evaluation's publisher, the test suite) read the same offset from the environment variable
the setting is read from, ``PROXIMITY_CLOCK_OFFSET_S``, so that they and the engine agree on
what time it is. The test suite runs its wall-clock tests a second time a year ahead this
way: a fix time written as a date, which a week later the engine rightly calls stale, cannot
pass unnoticed.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime

from proximity.errors import ConfigError

#: The environment variable of the engine's clock_offset_s setting.
OFFSET_VARIABLE = "PROXIMITY_CLOCK_OFFSET_S"


def offset_s() -> float:
    """Seconds the clock is moved by (``PROXIMITY_CLOCK_OFFSET_S``, default 0)."""
    text = os.environ.get(OFFSET_VARIABLE, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{OFFSET_VARIABLE}={text!r}: give a number of seconds, e.g. 0")
    return value


def now() -> float:
    """UTC epoch seconds on the moved clock: ``time.time()`` plus :func:`offset_s`."""
    return time.time() + offset_s()


def iso_utc(t: float) -> str | None:
    """Epoch seconds -> ISO 8601 UTC with milliseconds and ``Z``; NaN -> None.

    >>> iso_utc(1795428000.25)
    '2026-11-23T10:00:00.250Z'
    """
    if not math.isfinite(t):
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
