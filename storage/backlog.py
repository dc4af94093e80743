"""Storage faults: a write the disk refuses is kept in memory and tried again, with backoff.

The engine writes two files while it runs: the outbox journal (every message to the CIC,
before it is published) and the evidence record (the fixes used, the alarms sent). When the
disk refuses a write (full, read-only, failing: :data:`storage.store.WRITE_ERRORS`), the
engine does not stop: it goes on deciding in memory, publishes its alarms without the journal
(marked ``"journalled": false``), keeps every refused write in order, and tries again after
0.25 s, then twice as long each time, up to :data:`MAX_DELAY_S`. The messages of the fixes it
could not record are not acknowledged to the broker until they are on disk, so an engine that
dies during the fault gets them again when it restarts. The CIC gets an ``engine_fault``
alarm for every case when the fault begins, and its end when everything is written.

:class:`Retry` is the schedule of one file's writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

FIRST_DELAY_S = 0.25
#: The longest wait between two tries: a disk that is back is used within this time.
MAX_DELAY_S = 2.0


class Retry:
    """When to try a refused write again, and what the last refusal was."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self._clock = clock
        self.failing_since = math.nan  # monotonic time of the first refusal of this fault
        self.error = ""
        self.failures = 0  # refusals in this fault
        self._next = 0.0
        self._delay = FIRST_DELAY_S

    @property
    def failing(self) -> bool:
        return not math.isnan(self.failing_since)

    def due(self) -> bool:
        """Whether a write should be tried now (always, unless a fault waits for its next try)."""
        return not self.failing or self._clock() >= self._next

    def failed(self, exc: BaseException) -> bool:
        """Record a refusal; True when it begins a fault."""
        began = not self.failing
        now = self._clock()
        if began:
            self.failing_since = now
            self._delay = FIRST_DELAY_S
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self._next = now + self._delay
        self._delay = min(MAX_DELAY_S, self._delay * 2.0)
        return began

    def succeeded(self) -> bool:
        """Record a write that went through; True when it ends a fault."""
        ended = self.failing
        self.failing_since = math.nan
        self.failures = 0
        self.error = ""
        return ended
