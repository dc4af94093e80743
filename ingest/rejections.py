"""Reporting rejected input: counters per reason, a rate-limited log, and a rejection topic;
and :func:`internal_error`, the rejection of an input that made a decoder fail."""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from ingest.model import Rejection, RejectReason

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


def internal_error(
    topic: str,
    payload: bytes | bytearray,
    t_recv: float,
    exc: BaseException,
    device: str | None = None,
) -> Rejection:
    """The rejection of an input that made a decoder raise ``exc``: a bug of the engine, which
    must not stop the intake (the input paths call this from their catch-all).

    Logged at WARNING with the exception's type, where it was raised and the payload's SHA-256
    digest (a payload can hold a protected person's position: neither it nor the exception's
    message, which may quote it, is logged); the digest finds the payload again in the
    sender's or the broker's records."""
    digest = hashlib.sha256(payload).hexdigest()
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    where = f"{Path(last.filename).name}:{last.lineno} in {last.name}" if last else "?"
    kind = type(exc).__name__
    log.warning(
        "internal error: %s at %s decoding a message on %s (payload sha256 %s, %d bytes);"
        " rejected as %s",
        kind,
        where,
        topic,
        digest,
        len(payload),
        RejectReason.INTERNAL_ERROR.value,
    )
    return Rejection(
        topic,
        device,
        RejectReason.INTERNAL_ERROR,
        f"the engine failed to decode this message ({kind}; payload sha256 {digest}):"
        " a bug to report, the message is not used",
        t_recv,
    )
