"""The watchdog: an engine that says ``online`` must be deciding.

A thread of its own checks, every second, that the decision loop has gone round within the
last ``watchdog_s`` seconds and that the MQTT client's network thread is alive (the checks
are the service's). When one fails it hands the reason to ``on_fault`` once: the service
then tells the CIC (an ``engine_fault`` alarm for every case) and exits non-zero, so that
its supervisor restarts it and the broker publishes the ``offline`` will. An engine whose
intake has stopped must never look healthy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

#: How often the checks run (seconds).
CHECK_EVERY_S = 1.0

#: A check returns why the engine is not working, or None.
Check = Callable[[], str | None]


class Watchdog:
    """Runs ``checks`` every :data:`CHECK_EVERY_S` until stopped; the first failure goes to
    ``on_fault`` (once) and ends the watch."""

    def __init__(
        self,
        checks: Sequence[Check],
        on_fault: Callable[[str], None],
        every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._checks = tuple(checks)
        self._on_fault = on_fault
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        #: The reason of the fault it found, if any.
        self.fault: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            for check in self._checks:
                try:
                    why = check()
                except Exception as exc:  # a broken check is a fault too, not a dead watchdog
                    why = f"a watchdog check failed: {exc!r}"
                if why is not None:
                    self.fault = why
                    log.critical("engine fault: %s", why)
                    self._on_fault(why)
                    return
