"""Incidents: the alarms that describe one situation, grouped, with one id and a priority.

Operators work incidents, not rule firings. One panic press of a phone that two cases share
opens a panic alarm per case; one offender near a protected person may have a proximity, an
approach and a zone alarm at once; one silent phone of two cases opens two silence alarms.
Each is one situation, so each alarm belongs to an incident, by what it is about
(:func:`incident_key`):

- ``person``: a protected person and the offender(s) near that person: the pair rules
  (proximity, approach, probing), the exclusion zones of the person's cases, and a panic from
  the person's device;
- ``offender``: an offender's curfew;
- ``device``: one device's own events and silences (tamper, strap, power, separation,
  battery; a silent device), one incident per device and kind;
- ``engine``: a data gap or an engine fault, one incident for all the cases it touches.

An incident opens with its first alarm, takes in every alarm with the same key while it is
open, and ends when none of its alarms is open any more (ended or closed). Its priority is
its highest member's: ``high`` for an escalation, a panic or an engine fault, ``medium`` for
an alarm, ``low`` for a pre-alert (the split that alarm management asks of what reaches an
operator is about 5/15/80 %). Every change of an incident (opened, a member in or out, a
change of level or priority, ended) is an :class:`IncidentChange`, published next to the
alarm messages; a reminder or an acknowledgement changes no incident.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType

INCIDENT_NAMESPACE = uuid.UUID("5d7c9e21-8a4f-4b3e-9c61-2f0e7b8d4a95")
PRIORITIES = ("high", "medium", "low")
_PERSON = frozenset(
    {AlarmType.PROXIMITY, AlarmType.APPROACH, AlarmType.PROBING, AlarmType.ZONE, AlarmType.PANIC}
)
_ENGINE = frozenset({AlarmType.DATA_GAP, AlarmType.ENGINE_FAULT})
_SILENCE = frozenset({AlarmType.SIGNAL_LOST, AlarmType.VICTIM_SILENT})
_OVER = (AlarmState.ENDED, AlarmState.CLOSED)

Key = tuple[Hashable, ...]


def incident_key(e: AlarmEvent) -> Key:
    """What situation alarm ``e`` is part of (see the module docstring)."""
    if e.type in _ENGINE:
        return ("engine", e.type.name.lower())
    if e.type == AlarmType.PANIC:
        return ("person", e.device or e.victim.device)
    if e.type in _PERSON:
        return ("person", e.victim.device)
    if e.type == AlarmType.CURFEW:
        return ("offender", e.offender.device)
    kind = "silent" if e.type in _SILENCE else e.type.name.lower()
    return ("device", e.device or e.offender.device, kind)


def _instant(e: AlarmEvent) -> float:
    """When the fix or event that caused ``e`` arrived (what orders decisions); a sweep's and
    an operator's events keep the order they come in (one instant)."""
    t = e.trigger.t_recv if e.cause in ("fix", "event") else math.inf
    return t if t == t else math.inf  # NaN (a device without a fix): no instant of its own


def priority_of(level: AlarmLevel, type_: AlarmType) -> str:
    if level >= AlarmLevel.ESCALATION or type_ in (AlarmType.PANIC, AlarmType.ENGINE_FAULT):
        return "high"
    return "medium" if level >= AlarmLevel.ALARM else "low"


@dataclass
class Member:
    case_id: str
    type: AlarmType
    level: AlarmLevel
    state: AlarmState


@dataclass
class Incident:
    incident_id: str
    key: Key
    opened: float
    members: dict[str, Member] = field(default_factory=dict)
    priority: str = "low"
    level: AlarmLevel = AlarmLevel.PRE_ALERT

    @property
    def open_members(self) -> dict[str, Member]:
        return {a: m for a, m in self.members.items() if m.state not in _OVER}

    def figures(self) -> tuple[str, AlarmLevel]:
        """Its priority and level, from its open members (all of them, once none is)."""
        live = self.open_members or self.members
        level = max(m.level for m in live.values())
        best = min((priority_of(m.level, m.type) for m in live.values()), key=PRIORITIES.index)
        return best, level


@dataclass
class _Touch:
    """What one :meth:`Incidents.tag` call did to one incident."""

    inc: Incident
    new: bool
    was: tuple[str, AlarmLevel]
    changed: list[AlarmEvent] = field(default_factory=list)
    joined: bool = False
    left: bool = False


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """One change of an incident, as published: ``state`` open, update or ended."""

    incident_id: str
    state: str
    priority: str
    previous_priority: str | None
    level: AlarmLevel
    key: Key
    opened: float
    decided: float
    #: Every member: (alarm id, case id, type, level, state), the one that changed first.
    members: tuple[tuple[str, str, AlarmType, AlarmLevel, AlarmState], ...]
    reason: str


class Incidents:
    """The open incidents, by key, and which incident each of their alarms belongs to."""

    def __init__(self) -> None:
        self.open: dict[Key, Incident] = {}
        self.of_alarm: dict[str, str] = {}  # alarm id -> incident id (open incidents)
        #: Changes not yet taken by whoever publishes them (:meth:`take`).
        self.pending: list[IncidentChange] = []

    def tag(self, events: Sequence[AlarmEvent]) -> list[AlarmEvent]:
        """Each event with its ``incident_id``; the incidents' changes go to ``pending``, one
        per incident and decision instant (the alarms one fix opens together make one
        change). The events are taken in the order of their instants (the arrival of the
        fix or event that caused them), so that a batch of fixes gives the incidents that
        the same fixes one at a time give."""
        tagged: dict[int, AlarmEvent] = {}
        order = sorted(range(len(events)), key=lambda k: _instant(events[k]))
        k = 0
        while k < len(order):
            at = _instant(events[order[k]])
            group = []
            while k < len(order) and _instant(events[order[k]]) == at:
                group.append(order[k])
                k += 1
            for j, e in zip(group, self._tag_group([events[j] for j in group]), strict=True):
                tagged[j] = e
        return [tagged[j] for j in range(len(events))]

    def _tag_group(self, events: Sequence[AlarmEvent]) -> list[AlarmEvent]:
        out = []
        touched: dict[str, _Touch] = {}
        for e in events:
            key = incident_key(e)
            inc = self.open.get(key)
            known = self.of_alarm.get(e.alarm_id)
            if known is not None and (inc is None or inc.incident_id != known):
                # An alarm stays in the incident it joined.
                inc = next((i for i in self.open.values() if i.incident_id == known), inc)
            if inc is None:
                if e.state in _OVER:
                    out.append(e)  # the end of an alarm of no open incident (restored)
                    continue
                # Named by what it is about and when it began (the instant of the fix or
                # event that opened it, whichever of that instant's alarms comes first), so
                # that the same messages name it alike however they were batched; a sweep's
                # by its first alarm.
                at = _instant(e)
                when = repr(at) if math.isfinite(at) else e.alarm_id
                name = "/".join(str(k) for k in key) + f"/{when}"
                inc = Incident(str(uuid.uuid5(INCIDENT_NAMESPACE, name)), key, e.t_decided)
                self.open[key] = inc
            out.append(replace(e, incident_id=inc.incident_id))
            t = touched.get(inc.incident_id)
            if t is None:
                t = touched[inc.incident_id] = _Touch(
                    inc, not inc.members, (inc.priority, inc.level)
                )
            before = inc.members.get(e.alarm_id)
            joined = before is None and not t.new
            left = before is not None and before.state not in _OVER and e.state in _OVER
            inc.members[e.alarm_id] = Member(e.case_id, e.type, e.level, e.state)
            self.of_alarm[e.alarm_id] = inc.incident_id
            t.changed.append(e)
            t.joined |= joined
            t.left |= left
        for t in touched.values():
            self._emit(t)
        return out

    def _emit(self, t: _Touch) -> None:
        inc = t.inc
        inc.priority, inc.level = inc.figures()
        over = not inc.open_members
        if not (t.new or t.joined or t.left or over or t.was != (inc.priority, inc.level)):
            return  # reminders, acknowledgements, a change within its figures: no news
        e = t.changed[-1]
        what = e.type.name.lower().replace("_", " ")
        ids = list(dict.fromkeys(x.alarm_id for x in t.changed))
        order = [*ids, *(a for a in inc.members if a not in ids)]
        members = tuple(
            (a, inc.members[a].case_id, inc.members[a].type, inc.members[a].level,
             inc.members[a].state)
            for a in order
        )  # fmt: skip
        states = ["open"] if t.new else []
        if over:
            states.append("ended")
        elif not t.new:
            states.append("update")
        for state in states:
            if state == "open":
                n = len({x.case_id for x in t.changed})
                reason = f"opened by a {t.changed[0].type.name.lower().replace('_', ' ')} alarm"
                reason += f" of case {t.changed[0].case_id}" if n == 1 else f" of {n} cases"
            elif state == "ended":
                reason = (
                    f"no alarm of the incident is open any more (last: {what}, case {e.case_id})"
                )
            elif t.joined:
                reason = f"a {what} alarm of case {e.case_id} joined"
            elif t.left:
                reason = f"the {what} alarm of case {e.case_id} is over"
            else:
                reason = f"the {what} alarm of case {e.case_id} is now {e.level.name.lower()}"
            previous = None if state == "open" or t.was[0] == inc.priority else t.was[0]
            self.pending.append(
                IncidentChange(
                    inc.incident_id,
                    state,
                    inc.priority,
                    previous,
                    inc.level,
                    inc.key,
                    inc.opened,
                    e.t_decided,
                    members,
                    reason,
                )
            )
        if over:
            del self.open[inc.key]
            for a in inc.members:
                self.of_alarm.pop(a, None)

    def take(self) -> list[IncidentChange]:
        """The changes since the last take, in order."""
        out, self.pending = self.pending, []
        return out

    # -- saving and restoring (proximity.memory) --------------------------------------

    def to_plain(self) -> list[dict[str, Any]]:
        return [
            {
                "incident_id": i.incident_id,
                "key": list(i.key),
                "opened": i.opened,
                "members": {
                    a: [m.case_id, m.type.name, m.level.name, m.state.name]
                    for a, m in i.members.items()
                },
            }
            for i in self.open.values()
        ]

    def restore(self, records: list[dict[str, Any]], known_cases: set[str]) -> None:
        for r in records:
            members = {
                a: Member(c, AlarmType[t], AlarmLevel[lv], AlarmState[st])
                for a, (c, t, lv, st) in r.get("members", {}).items()
                if c in known_cases
            }
            if not members:
                continue
            key = tuple(r["key"])
            inc = Incident(r["incident_id"], key, float(r["opened"]), members)
            inc.priority, inc.level = inc.figures()
            if not inc.open_members:
                continue
            self.open[key] = inc
            for a in members:
                self.of_alarm[a] = inc.incident_id
