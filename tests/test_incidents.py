"""One event, one incident (proximity.incidents): the alarms of one situation grouped, with
one id and a priority, and each change of it a message that the schema describes."""

from __future__ import annotations

import json

import jsonschema

from cic.messages import INCIDENT_SCHEMA_PATH, alarm_message, incident_message
from ingest.model import DeviceEvent
from proximity.cases import Case, Device
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmState, AlarmType
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock, case, events_of, fix

VALIDATOR = jsonschema.Draft202012Validator(json.loads(INCIDENT_SCHEMA_PATH.read_text()))


def _two_cases(clock: Clock) -> Engine:
    # One protected person ("v") whom two offenders must keep away from: two cases.
    cases = [case("A", ("o1",), ("v",)), case("B", ("o2",), ("v",))]
    devices = [Device(d, {"reporting_interval_s": 60}) for d in ("o1", "o2", "v")]
    return Engine(cases, devices, clock=clock, rules=RuleConfig())


def _valid(changes: list[dict[str, object]]) -> None:
    for m in changes:
        m["times"]["published"] = m["times"]["decided"]  # type: ignore[index]
        assert list(VALIDATOR.iter_errors(m)) == [], m


def test_one_panic_press_of_a_shared_phone_is_one_incident_of_high_priority() -> None:
    clock = Clock()
    eng = _two_cases(clock)
    panics = eng.handle_events([DeviceEvent("v", "panic", T0, T0, *HOME, 10.0)])
    assert [e.type for e in panics] == [AlarmType.PANIC, AlarmType.PANIC]
    assert {e.case_id for e in panics} == {"A", "B"}
    [incident] = {e.incident_id for e in panics}
    assert incident is not None
    [change] = [incident_message(c) for c in eng.incidents.take()]
    assert (change["incident_id"], change["state"], change["priority"]) == (
        incident,
        "open",
        "high",
    )
    assert change["kind"] == "person" and change["subject"] == "v"
    assert change["case_ids"] == ["A", "B"] and len(change["alarms"]) == 2
    assert change["reason"] == "opened by a panic alarm of 2 cases"
    _valid([change])
    # The alarm messages carry it, beside their own ids.
    m = alarm_message(panics[0], eng.cases[panics[0].case_id])
    assert m["incident_id"] == incident and m["alarm_id"] == panics[0].alarm_id
    # Closing one is an update; closing the other ends the incident.
    [closed] = eng.close(panics[0].alarm_id, "desk-1", "", "intervention_sent")
    assert closed.incident_id == incident
    [update] = [incident_message(c) for c in eng.incidents.take()]
    assert (update["state"], update["priority"]) == ("update", "high")
    eng.close(panics[1].alarm_id, "desk-1", "", "intervention_sent")
    [ended] = [incident_message(c) for c in eng.incidents.take()]
    assert ended["state"] == "ended" and ended["incident_id"] == incident
    _valid([update, ended])


def test_one_silent_phone_of_two_cases_is_one_incident() -> None:
    clock = Clock()
    eng = _two_cases(clock)
    eng.start(T0)
    events_of(eng, fix("v", HOME, 0), fix("o1", offset(*HOME, 0, 5000), 0))
    events_of(eng, fix("o2", offset(*HOME, 90, 5000), 0))
    eng.incidents.take()
    out: list[AlarmEvent] = []
    for t in range(1, 200):
        clock.t = T0 + t
        out += events_of(eng, fix("o1", offset(*HOME, 0, 5000), t))
        out += events_of(eng, fix("o2", offset(*HOME, 90, 5000), t))
        out += eng.sweep()
    silent = [e for e in out if e.type == AlarmType.VICTIM_SILENT]
    assert len(silent) == 2 and len({e.incident_id for e in silent}) == 1
    changes = [incident_message(c) for c in eng.incidents.take()]
    assert [(c["state"], c["kind"], c["priority"]) for c in changes] == [("open", "device", "low")]


def test_the_offenders_near_one_protected_person_are_one_incident_and_its_priority_rises() -> None:
    clock = Clock()
    eng = _two_cases(clock)
    out: list[AlarmEvent] = []
    changes: list[dict[str, object]] = []
    for t in range(0, 120):
        # Both come closer: o1 to 800 m (a pre-alert), o2 on to 150 m (a breach, within half
        # the order distance: an escalation).
        d2 = max(1500.0 - 20.0 * t, 150.0)
        out += events_of(
            eng,
            fix("v", HOME, t),
            fix("o1", offset(*HOME, 0, 800), t),
            fix("o2", offset(*HOME, 90, d2), t),
        )
        changes += [incident_message(c) for c in eng.incidents.take()]
    pair = [e for e in out if e.type in (AlarmType.PROXIMITY, AlarmType.APPROACH)]
    assert {e.case_id for e in pair} == {"A", "B"}
    assert len({e.incident_id for e in pair}) == 1
    assert changes[0]["state"] == "open" and changes[0]["priority"] == "low"
    rises = [(c["priority"], c["previous_priority"]) for c in changes if c["previous_priority"]]
    assert ("medium", "low") in rises
    assert "high" in [c["priority"] for c in changes]  # o2 within half the order distance
    _valid(changes)
    # Reminders and acknowledgements change no incident.
    opened = [e for e in out if e.state == AlarmState.OPEN]
    eng.acknowledge(opened[0].alarm_id, "desk-1")
    assert eng.incidents.take() == []


def test_incidents_survive_a_restart() -> None:
    from proximity.memory import EngineMemory

    clock = Clock()
    eng = _two_cases(clock)
    [p1, p2] = eng.handle_events([DeviceEvent("v", "panic", T0, T0)])
    records = EngineMemory(eng)._current_records()
    again = _two_cases(Clock())
    again.incidents.restore(records["incidents"], set(again.cases))
    for e in (p1, p2):
        again.book.write([e])
    [closed] = again.close(p1.alarm_id, "desk-1", "", "technical")
    assert closed.incident_id == p1.incident_id
    assert [c.state for c in again.incidents.take()] == ["update"]


def test_what_each_alarm_is_about_decides_its_incident() -> None:
    from dataclasses import replace

    from proximity.incidents import incident_key

    clock = Clock()
    eng = Engine([Case("C", ("o",), ("v",), 500.0, 1000.0)], clock=clock)
    [panic] = eng.handle_events([DeviceEvent("v", "panic", T0, T0)])
    assert incident_key(panic) == ("person", "v")
    [tamper] = eng.handle_events([DeviceEvent("o", "tamper", T0, T0)])
    assert incident_key(tamper) == ("device", "o", "tamper")
    curfew = replace(panic, type=AlarmType.CURFEW, device=None)
    assert incident_key(curfew) == ("offender", "o")
    zone = replace(panic, type=AlarmType.ZONE, device=None)
    assert incident_key(zone) == ("person", "v")
    for kind in (AlarmType.DATA_GAP, AlarmType.ENGINE_FAULT):
        assert incident_key(replace(panic, type=kind, device=None)) == ("engine", kind.name.lower())
