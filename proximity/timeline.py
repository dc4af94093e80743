"""The engine's timeline: every message decided at its arrival, sweeps on a fixed grid.

A decision must depend on the messages, never on how they were batched or how busy the
machine was. So the engine takes no reading of the clock for a decision: a fix, a device
event or an operator action is decided at its arrival stamp (``t_recv``, stamped by the
ingest edge as it queues the message), and the periodic sweep for what time alone changes
(an old fix's growing uncertainty, silence, schedules) runs at the instants of a fixed grid
of the engine's clock, ``k * sweep_interval_s``, after every message stamped at or before
its instant and before every later one. An engine that fell behind therefore replays the
sweeps it owes between the messages that piled up, and decides as it would have on time.

Only an engine that falls very far behind (more than :data:`MAX_CATCH_UP` sweeps) skips the
oldest sweeps it owes; they are counted (``sweeps_skipped`` in the status).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ingest.batch import FixBatch, build_batch, unknown_device
from ingest.codec import ACK_TOPIC
from ingest.model import (
    DeviceEvent,
    Fix,
    OperatorAction,
    Rejection,
    RejectReason,
    SessionLost,
)
from proximity.engine import Engine
from proximity.events import AlarmEvent

#: What the ingest edge hands out.
Item = Fix | DeviceEvent | OperatorAction | Rejection | SessionLost

#: Most sweeps replayed at once by an engine that fell behind (at the default interval of
#: 1 s, ten minutes of backlog); beyond it the oldest are skipped and counted.
MAX_CATCH_UP = 600


class SweepGrid:
    """Due times of the periodic sweep: whole multiples of ``interval_s`` after ``start``."""

    def __init__(self, interval_s: float, start: float, max_catch_up: int = MAX_CATCH_UP) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"the sweep interval must be > 0 s, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.max_catch_up = max_catch_up
        self._k = math.floor(start / self.interval_s) + 1
        #: Sweeps skipped because the engine fell more than max_catch_up behind.
        self.skipped = 0

    @property
    def next(self) -> float:
        """The next due time."""
        return self._k * self.interval_s

    def take(self, horizon: float) -> list[float]:
        """The due times before ``horizon``, in order; the grid moves past them. The horizon
        is an instant before which every message has been handed out: a message stamped at
        the horizon itself may still come, and a sweep at that instant comes after it."""
        if not math.isfinite(horizon):
            return []
        last = math.ceil(horizon / self.interval_s) - 1
        if last < self._k:
            return []
        due = last - self._k + 1
        if due > self.max_catch_up:
            self.skipped += due - self.max_catch_up
            self._k = last - self.max_catch_up + 1
        out = [k * self.interval_s for k in range(self._k, last + 1)]
        self._k = last + 1
        return out


def arrival_order(stamps: Sequence[float]) -> list[float]:
    """The stamps as a non-decreasing sequence (each at least the one before): two inputs
    (MQTT and HTTP) stamp in their own threads, and a decision never goes back in time."""
    return list(itertools.accumulate(stamps, max))


def split_at(stamps: Sequence[float], instant: float, lo: int = 0) -> int:
    """Index of the first of the non-decreasing ``stamps`` (from ``lo``) after ``instant``."""
    return bisect_right(stamps, instant, lo)


@dataclass(frozen=True, slots=True)
class Segment:
    """One step of the timeline and what the engine decided in it.

    ``kind`` is ``fixes`` (``batch`` holds them; ``rejected`` the fixes of unknown devices),
    ``events`` (device events; ``rejected`` those of unknown devices), ``action`` (one
    operator action; ``action`` holds it, ``alarms`` is empty when it names no alarm the
    engine knows), ``gap`` (the broker lost the engine's session, at ``at``) or ``sweep``
    (at time ``at``).
    """

    kind: str
    alarms: list[AlarmEvent]
    batch: FixBatch | None = None
    rejected: list[Rejection] = field(default_factory=list)
    action: OperatorAction | None = None
    at: float = math.nan


class Timeline:
    """Feeds an engine its messages in arrival order and its sweeps on the grid, between
    them by their times: the service's code path (the in-process evaluation, which hands the
    engine arrays rather than messages, splits its chunks at the same instants).

    :meth:`step` takes the messages handed out together (in arrival order) and the horizon
    up to which every message has been handed out, and yields one :class:`Segment` at a
    time, so that the caller records and publishes each before the next is decided. How the
    messages are split into steps changes nothing in the decisions.
    """

    def __init__(self, engine: Engine, grid: SweepGrid) -> None:
        self.engine = engine
        self.grid = grid

    def step(self, items: Sequence[Item], horizon: float) -> Iterator[Segment]:
        due = self.grid.take(horizon)
        stamps = arrival_order([i.t_recv for i in items]) if due else []
        pos = 0
        for at in due:
            end = split_at(stamps, at, pos)
            if end > pos:
                yield from self._messages(items[pos:end])
                pos = end
            yield Segment("sweep", self.engine.sweep(at), at=at)
        if pos < len(items):
            yield from self._messages(items[pos:])

    def _messages(self, items: Sequence[Item]) -> Iterator[Segment]:
        """Runs of fixes as batches; device events and operator actions where they came."""
        eng = self.engine
        for kind, run in itertools.groupby(
            (i for i in items if not isinstance(i, Rejection)), key=type
        ):
            if kind is Fix:
                batch, unknown = build_batch([i for i in run if isinstance(i, Fix)], eng.slot_of)
                yield Segment("fixes", eng.process(batch), batch=batch, rejected=unknown)
            elif kind is DeviceEvent:
                events = [i for i in run if isinstance(i, DeviceEvent)]
                unknown = [
                    unknown_device(f"devices/{e.device}/event", e.device, e.t_recv)
                    for e in events
                    if e.device not in eng.slot_of
                ]
                yield Segment("events", eng.handle_events(events), rejected=unknown)
            elif kind is SessionLost:
                for g in run:
                    if isinstance(g, SessionLost):
                        yield Segment("gap", eng.data_gap_events(g.t_lost, g.t_recv), at=g.t_recv)
            else:
                for a in run:
                    if isinstance(a, OperatorAction):
                        if a.action == "suspend":
                            done = eng.suspend(a.alarm_id, a.operator, a.note, a.until)
                            if isinstance(done, str):  # refused: a panic, an escalation
                                refused = Rejection(
                                    ACK_TOPIC,
                                    None,
                                    RejectReason.NOT_SUSPENDABLE,
                                    f"alarm {a.alarm_id!r}: {done}",
                                    a.t_recv,
                                )
                                yield Segment("action", [], action=a, rejected=[refused])
                                continue
                        elif a.action == "close":
                            done = eng.close(a.alarm_id, a.operator, a.note, a.resolution)
                        else:
                            done = eng.acknowledge(a.alarm_id, a.operator, a.note)
                        yield Segment("action", done, action=a)
