"""The JSON edge of the engine: alarm events become CIC alarm messages (DESIGN.md contract).

Every message is a JSON object with the contract's core fields; ``category`` marks it as a
stalking alarm (the panic button's alarms share the topic), and ``trigger`` names the fix that
led to the decision (device and sequence number) for latency accounting, and its ``cause``
(``fix``, or ``time`` when the periodic sweep found that an old fix's uncertainty now admits
a breach). ``classification`` is ``certain_breach`` or ``possible_breach`` (or ``warning`` and
``clear`` on an alarm's end); ``uncertainty_m`` the 99 % radius of the separation; each
party's ``radius_m`` is its fix's 68 % radius at decision time and ``old_fix`` says its age
dominates it.

Zone alarms (``type`` ``zone`` for an exclusion zone, ``curfew`` for an inclusion zone) name
the zone by its ``zone`` label, say its ``zone_kind`` and how far inside it the offender is
(``zone_inside_m``, negative outside); their ``distance_m`` is the distance to the zone's
boundary and ``victim`` the last position of the case's first protected person.

Pair and approach alarms carry ``motion``: both parties' speeds, the difference of their
headings, and ``parallel`` when they travel the same way at similar speeds (the same road in
the same direction: perhaps a coincidental encounter, which the operator triages
differently); null for other alarms.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from proximity.cases import Case
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, Position, PursuitInfo, wire_name
from proximity.incidents import IncidentChange

CATEGORY = "stalking"
SOURCE = "proximity-engine"

#: JSON Schema (draft 2020-12) of the alarm message: the documented contract of cic/alarms.
ALARM_SCHEMA_PATH = Path(__file__).parent / "schemas" / "alarm-message.schema.json"
#: JSON Schema of the incident message (incident_topic).
INCIDENT_SCHEMA_PATH = Path(__file__).parent / "schemas" / "incident-message.schema.json"


def _num(x: float, ndigits: int) -> float | None:
    return round(x, ndigits) if math.isfinite(x) else None


def _position(p: Position, decided: float) -> dict[str, Any]:
    return {
        "device": p.device,
        "lat": _num(p.lat, 7),
        "lon": _num(p.lon, 7),
        "acc_m": _num(p.acc_m, 1),
        "fix_time": iso_utc(p.t_fix),
        "age_s": _num(decided - p.t_fix, 3),
        "radius_m": _num(p.radius_m, 1),
        "old_fix": p.old,
    }


def _motion(event: AlarmEvent) -> dict[str, Any] | None:
    m = event.motion
    if m is None:
        return None
    return {
        "offender_speed_mps": _num(m.offender_speed_mps, 2),
        "victim_speed_mps": _num(m.victim_speed_mps, 2),
        "heading_difference_deg": _num(m.heading_difference_deg, 1),
        "parallel": m.parallel,
    }


def alarm_message(event: AlarmEvent, case: Case) -> dict[str, Any]:
    """The CIC alarm message for one alarm state change. ``times.published`` is filled in by
    the channel at the moment of publication."""
    trigger = event.trigger
    return {
        "alarm_id": event.alarm_id,
        "category": CATEGORY,
        "source": SOURCE,
        "type": wire_name(event.type),
        "level": wire_name(event.level),
        "previous_level": wire_name(event.previous_level) if event.previous_level else None,
        "state": wire_name(event.state),
        "case_id": event.case_id,
        "summary": dict(case.summary),
        "offender": _position(event.offender, event.t_decided),
        "victim": _position(event.victim, event.t_decided),
        "distance_m": _num(event.distance_m, 1),
        "order_distance_m": event.order_distance_m,
        "warning_distance_m": case.warning_distance_m,
        "margin_m": _num(event.margin_m, 1),
        "classification": wire_name(event.classification),
        "probability": _num(event.probability, 4),
        "uncertainty_m": _num(event.uncertainty_m, 1),
        "closing_speed_mps": _num(event.closing_speed_mps, 2),
        # inf (not approaching) and NaN (unknown) both become null: no breach is predicted.
        "time_to_breach_s": _num(event.time_to_breach_s, 1),
        "zone": event.zone.label if event.zone else None,
        "zone_kind": event.zone.kind if event.zone else None,
        "zone_inside_m": _num(event.zone.inside_m, 1) if event.zone else None,
        "motion": _motion(event),
        "reason": event.reason,
        "operator": event.operator,
        "resolution": event.resolution,
        "incident_id": event.incident_id,
        "suspended_until": (
            iso_utc(event.suspended_until) if event.suspended_until is not None else None
        ),
        "pursuit": _pursuit(event.pursuit),
        "trigger": {
            "device": trigger.device,
            "seq": trigger.seq if trigger.seq >= 0 else None,
            "cause": event.cause,
        },
        "times": {
            "fix": iso_utc(trigger.t_fix),
            "received": iso_utc(trigger.t_recv),
            "decided": iso_utc(event.t_decided),
            "published": None,
        },
    }


def _pursuit(p: PursuitInfo | None) -> dict[str, Any] | None:
    """The alarm's pursuit (proximity.pursuit): null when none concerns it."""
    if p is None:
        return None
    return {
        "active": p.active,
        "interval_s": p.interval_s,
        "possible": not p.not_possible,
        "not_possible": [
            f"{d}: reports over HTTP only (OsmAnd / Traccar Client) and cannot be commanded"
            for d in p.not_possible
        ],
        "devices": [
            {
                "device": d.device,
                "commands": d.mode,
                "asked_interval_s": d.asked_interval_s,
                "own_interval_s": _num(d.own_interval_s, 1),
                "acknowledged": d.acknowledged,
                "cadence_s": _num(d.cadence_s, 1) if d.cadence_s is not None else None,
            }
            for d in p.devices
        ],
    }


def incident_message(change: IncidentChange) -> dict[str, Any]:
    """The message of one change of an incident (proximity.incidents), published next to the
    alarm messages (``incident_topic``). ``times.published`` is filled in by the channel."""
    kind = str(change.key[0])
    return {
        "incident_id": change.incident_id,
        "category": CATEGORY,
        "source": SOURCE,
        "state": change.state,
        "priority": change.priority,
        "previous_priority": change.previous_priority,
        "level": wire_name(change.level),
        "kind": kind,
        "subject": "/".join(str(k) for k in change.key[1:]),
        "case_ids": sorted({m[1] for m in change.members}),
        "alarms": [
            {
                "alarm_id": a,
                "case_id": c,
                "type": wire_name(t),
                "level": wire_name(lv),
                "state": wire_name(st),
            }
            for a, c, t, lv, st in change.members
        ],
        "reason": change.reason,
        "times": {
            "opened": iso_utc(change.opened),
            "decided": iso_utc(change.decided),
            "published": None,
        },
    }
