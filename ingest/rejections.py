"""Reporting rejected input: counters per reason, a rate-limited log, and a rejection topic."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

from ingest.model import Rejection

log = logging.getLogger(__name__)

REJECTED_TOPIC = "proximity/rejected"
#: One log line per (device, reason) per this many seconds; the counters still count all.
LOG_INTERVAL_S = 60.0


class RejectionReporter:
    """Counts rejections by reason, logs each (device, reason) at most once per interval, and
    hands every rejection to ``publish`` (the rejection topic)."""

    def __init__(
        self,
        publish: Callable[[Rejection], None] | None = None,
        *,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self._publish = publish
        self._interval = log_interval_s
        self._clock = clock
        self._last_logged: dict[tuple[str | None, str], float] = {}
        self._suppressed: Counter[tuple[str | None, str]] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, rejections: Iterable[Rejection]) -> None:
        now = self._clock()
        for r in rejections:
            self.counts[r.reason.value] += 1
            key = (r.device, r.reason.value)
            last = self._last_logged.get(key)
            if last is None or now - last >= self._interval:
                more = self._suppressed.pop(key, 0)
                suffix = f" (+{more} similar since last report)" if more else ""
                log.warning("rejected %s on %s: %s%s", r.reason.value, r.topic, r.detail, suffix)
                self._last_logged[key] = now
            else:
                self._suppressed[key] += 1
            if self._publish is not None:
                self._publish(r)
