"""Suspensions: an operator silences a known-false or handled alarm source for a while.

An operator suspends an alarm (``cic/acks``, action ``suspend``, with ``until`` 15 min to 2 h
ahead and a note saying why: see :func:`ingest.codec.decode_ack`). What is suspended is the
alarm's *source*, the rule and what it watches (a pair's proximity rule, an offender against a
zone, a device's silence in a case), so that a new episode of the same source within the
window is held back too. Until then the engine still decides everything, and every decision
goes into the alarm book, but the messages of that source are held back: openings, reminders
and rises below escalation. Its ends are published (an episode that is over is news), and
an escalation is never held back: it is published and lifts the suspension. A panic, or an
alarm at escalation level, cannot be suspended at all. When the suspension runs out, the
source's alarm, if still open, is announced again as it stands (opened, if its opening was
held back).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import Any

from proximity import reasons
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType

#: Alarms that are never suspended.
NEVER = frozenset({AlarmType.PANIC})

Source = tuple[Hashable, ...]


def source_of(e: AlarmEvent) -> Source:
    """The rule and subject an alarm is about: what a suspension silences."""
    zone = e.zone.label if e.zone is not None else ""
    return (e.case_id, e.type.name, e.offender.device, e.victim.device, zone, e.device or "")


@dataclass
class Suspension:
    alarm_id: str
    operator: str
    note: str
    until: float
    #: Alarm id -> its last event held back; the alarms whose opening was held back, and
    #: their opening's reason (what they are announced with when the suspension is over).
    held: dict[str, AlarmEvent] = field(default_factory=dict)
    unopened: dict[str, str] = field(default_factory=dict)


class Suspensions:
    """The suspensions in force, by source."""

    def __init__(self) -> None:
        self.by_source: dict[Source, Suspension] = {}

    def __len__(self) -> int:
        return len(self.by_source)

    def refusal(self, last: AlarmEvent) -> str | None:
        """Why alarm ``last`` cannot be suspended (None: it can)."""
        if last.type in NEVER:
            return f"a {last.type.name.lower()} alarm is never suspended"
        if last.level >= AlarmLevel.ESCALATION:
            return "an alarm at escalation level is never suspended"
        return None

    def suspend(
        self, last: AlarmEvent, operator: str, note: str, until: float, at: float
    ) -> AlarmEvent:
        """Suspend the source of alarm ``last`` until ``until``; the ``suspended`` event."""
        self.by_source[source_of(last)] = Suspension(last.alarm_id, operator, note, until)
        return last.restated(
            AlarmState.SUSPENDED,
            at,
            reasons.suspended(operator, note, iso_utc(until) or f"{until!r}"),
            "operator",
            operator=operator,
            suspended_until=until,
        )

    def filter(self, events: list[AlarmEvent]) -> list[AlarmEvent]:
        """The events to publish: those of suspended sources are held back, but for ends
        and escalations (an escalation lifts its source's suspension)."""
        if not self.by_source:
            return events
        out = []
        for e in events:
            key = source_of(e)
            s = self.by_source.get(key)
            if s is None or e.state not in (AlarmState.OPEN, AlarmState.UPDATE):
                if s is not None and e.state in (AlarmState.ENDED, AlarmState.CLOSED):
                    s.held.pop(e.alarm_id, None)
                    if s.unopened.pop(e.alarm_id, None) is not None:  # never announced:
                        continue  # its end is no news
                out.append(e)
                continue
            if e.level >= AlarmLevel.ESCALATION:
                del self.by_source[key]
                opened = e.alarm_id in s.unopened
                out.append(replace(e, state=AlarmState.OPEN) if opened else e)
                continue
            s.held[e.alarm_id] = e
            if e.state == AlarmState.OPEN:
                s.unopened[e.alarm_id] = e.reason
        return out

    def expired(self, now: float, book_last: Any) -> list[AlarmEvent]:
        """Suspensions that have run out by ``now``: each source's alarm, if still open, as
        it stands (``book_last(alarm_id)`` gives an alarm's last event)."""
        done = [k for k, s in self.by_source.items() if s.until <= now]
        out = []
        for key in done:
            s = self.by_source.pop(key)
            ids = list(s.held) or [s.alarm_id]
            for alarm_id in ids:
                last = book_last(alarm_id)
                if last is None or last.state in (AlarmState.ENDED, AlarmState.CLOSED):
                    continue
                opening = s.unopened.get(alarm_id)
                state = AlarmState.UPDATE if opening is None else AlarmState.OPEN
                reason = reasons.suspension_over(s.operator, opening or last.reason)
                out.append(last.restated(state, now, reason, "time"))
        return out
