"""Every kind of alarm message the engine makes, from one scripted run (for the format tests).

One engine watches a pair with an exclusion zone and a curfew; the script walks the offender
through a pre-alert, an approach, a breach, its escalation and its end, into the zone, outside
the curfew, in and out of the warning band three times (probing), lets both devices fall
silent, and sends each device event; an operator acknowledges and closes alarms. Every event
comes back with its case.
"""

from __future__ import annotations

from ingest.batch import build_batch
from ingest.model import DeviceEvent, Fix
from proximity.cases import Case
from proximity.engine import Engine
from proximity.events import AlarmEvent
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock

WORK = offset(*HOME, 90.0, 3000.0)  # the victim's workplace, an exclusion zone
OWN_HOME = offset(*HOME, 270.0, 6000.0)  # the offender's home, a curfew from 22:00 to 06:00


def _zones() -> dict[str, object]:
    from geofence.model import circle, feature_collection

    return feature_collection(
        [
            circle(
                WORK[1], WORK[0], 150, kind="exclusion", label="victim's workplace", warning_m=100
            ),
            circle(
                OWN_HOME[1],
                OWN_HOME[0],
                80,
                kind="inclusion",
                label="offender's home",
                schedule={"weekly": [{"start": "22:00", "end": "06:00"}]},
            ),
        ]
    )


def every_alarm() -> tuple[list[AlarmEvent], Case]:
    case = Case(
        "BE-2026-0042",
        ("tag-7",),
        ("phone-9",),
        500.0,
        1000.0,
        {
            "offender_name": "Jan Peeters",
            "victim_name": "Els Maes",
            "victim_phone": "+32 470 12 34 56",
        },
        _zones(),
    )
    # Entries into the warning band 80 s apart, each counted (probe_min_gap_s 0).
    rules = RuleConfig(
        reporting_interval_s=30.0, signal_grace_s=10.0, renotify_s=120.0, probe_min_gap_s=0.0
    )
    clock = Clock(T0)  # 2026-11-23 10:00 UTC: no curfew
    eng = Engine([case], rules=rules, clock=clock)
    events: list[AlarmEvent] = []

    def at(
        t: float, off: tuple[float, float] | None, vic: tuple[float, float] | None = HOME
    ) -> None:
        clock.t = T0 + t
        fixes = [
            Fix(d, T0 + t, T0 + t + 0.05, *p, 6.0, seq=int(t))
            for d, p in (("tag-7", off), ("phone-9", vic))
            if p
        ]
        if fixes:
            events.extend(eng.process(build_batch(fixes, eng.slot_of)[0]))
        events.extend(eng.sweep())

    t = 0.0
    # A drive straight at her: pre-alert, approach, breach (certain), escalation.
    start = offset(*HOME, 0.0, 1500.0)
    for k in range(90):
        at(t, offset(*start, 180.0, 15.0 * k))
        t += 1
    # A reminder, then an acknowledgement, then he leaves: lower, end.
    for _ in range(130):
        at(t, offset(*HOME, 0.0, 300.0))
        t += 1
    open_ids = list(eng.alarm_ids.values())
    events.extend(eng.acknowledge(open_ids[0], "operator 12", "team dispatched"))
    for _ in range(40):
        at(t, offset(*HOME, 0.0, 700.0))
        t += 1
    for _ in range(40):
        at(t, offset(*HOME, 0.0, 3000.0))
        t += 1
    # Probing: two more entries into the warning band.
    for _ in range(2):
        for _ in range(40):
            at(t, offset(*HOME, 0.0, 900.0))
            t += 1
        for _ in range(40):
            at(t, offset(*HOME, 0.0, 3000.0))
            t += 1
    # Into her workplace (an exclusion zone), while she is elsewhere.
    for d in (400.0, 200.0, 120.0, 20.0, 0.0):
        for _ in range(20):
            at(t, offset(*WORK, 180.0, d), offset(*HOME, 180.0, 5000.0))
            t += 1
    zone_ids = list(eng.zones.alarm_ids.values())
    suspended = eng.suspend(
        zone_ids[0], "operator 12", "the offender works there today", clock.t + 1800
    )
    assert not isinstance(suspended, str)
    events.extend(suspended)
    events.extend(eng.close(zone_ids[0], "operator 12", "offender detained at the workplace"))
    # Both devices fall silent; then every device event.
    for _ in range(60):
        at(t, None, None)
        t += 1
    device_events = [
        DeviceEvent("phone-9", "panic", T0 + t, T0 + t, *HOME, 10.0, seq=1),
        DeviceEvent("tag-7", "tamper", T0 + t, T0 + t),
        DeviceEvent("tag-7", "strap_removed", T0 + t, T0 + t),
        DeviceEvent("tag-7", "battery_low", T0 + t, T0 + t),
        DeviceEvent("tag-7", "power_off", T0 + t, T0 + t),
        DeviceEvent("tag-7", "separated", T0 + t, T0 + t),
    ]
    events.extend(eng.handle_events(device_events))
    # At night, away from home: a curfew violation.
    night = 12 * 3600.0 + 30 * 60.0  # 22:30 UTC, 23:30 in Brussels
    for k in range(30):
        at(night + k, offset(*OWN_HOME, 90.0, 2000.0), HOME)
    # The broker lost the engine's session for a minute: a data gap.
    events.extend(eng.data_gap_events(clock.t - 60.0, clock.t))
    # The watchdog finds the engine stalled: an engine fault for the case.
    events.extend(eng.fault_events("the decision loop has not gone round for 31 s", clock.t))
    return events, case
