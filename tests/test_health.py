"""Device health (silence) and device events (panic, tamper, ...) in the engine and codec."""

from __future__ import annotations

import math

import orjson
import pytest

from cic.messages import alarm_message
from ingest.codec import decode_event
from ingest.model import DeviceEvent, Rejection, RejectReason
from proximity.cases import Case, Device
from proximity.engine import Engine
from proximity.events import AlarmLevel, AlarmState, AlarmType
from proximity.health import GAP_SETTLE_S
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock, case, engine, events_of, fix


def test_a_silent_offender_raises_signal_lost_once_and_a_fix_ends_it() -> None:
    clock = Clock(T0)
    # Top speed 0: the old fixes stay as certain as they were (no proximity alarm).
    eng = engine([case("C", ("o",), ("v",))], clock=clock, default_top_speed_mps=0.0)
    events_of(eng, fix("o", offset(*HOME, 0, 3000), 0), fix("v", HOME, 0))
    clock.t = T0 + 120.0  # interval 60 s + grace 60 s, counted from arrival (at T0)
    assert eng.sweep() == []
    clock.t += 1.0
    [lost, silent] = sorted(eng.sweep(), key=lambda e: e.type)
    assert (lost.type, lost.level, lost.state) == (
        AlarmType.SIGNAL_LOST,
        AlarmLevel.ALARM,
        AlarmState.OPEN,
    )
    assert lost.device == "o" and lost.trigger.device == "o" and lost.cause == "time"
    assert lost.reason.startswith("no message from offender device o for 121 s")
    assert "cannot be assessed" in lost.reason
    assert (silent.type, silent.level) == (AlarmType.VICTIM_SILENT, AlarmLevel.PRE_ALERT)
    assert eng.sweep() == [] and eng.open_alarms == 2
    clock.t += 30.0
    [back] = events_of(eng, fix("o", offset(*HOME, 0, 2900), clock.t - T0), now=clock.t)
    assert (back.alarm_id, back.state, back.cause) == (lost.alarm_id, AlarmState.ENDED, "fix")
    assert eng.open_alarms == 1


def test_reporting_interval_and_grace_per_device_and_silence_from_the_start() -> None:
    clock = Clock(T0)
    devices = [Device("o", {"reporting_interval_s": 10, "signal_grace_s": 5})]
    # "o" is in two cases: one alarm per case, each with its case's victim.
    cases = [case("A", ("o",), ("v",)), case("B", ("o",), ("w",))]
    eng = Engine(cases, devices, clock=clock)
    clock.t = T0 + 15.5  # nothing ever arrived from "o": silent since the engine started
    events = eng.sweep()
    assert sorted((e.case_id, e.type, e.victim.device) for e in events) == [
        ("A", AlarmType.SIGNAL_LOST, "v"),
        ("B", AlarmType.SIGNAL_LOST, "w"),
    ]


@pytest.mark.parametrize(
    ("kind", "alarm", "level"),
    [
        ("tamper", AlarmType.TAMPER, AlarmLevel.ALARM),
        ("strap_removed", AlarmType.TAMPER, AlarmLevel.ALARM),
        ("power_off", AlarmType.POWER_OFF, AlarmLevel.ALARM),
        ("separated", AlarmType.SEPARATED, AlarmLevel.ALARM),
        ("battery_low", AlarmType.BATTERY_LOW, AlarmLevel.PRE_ALERT),
    ],
)
def test_offender_device_events_become_their_own_alarms(
    kind: str, alarm: AlarmType, level: AlarmLevel
) -> None:
    eng = engine([case("C", ("o",), ("v",))])
    events_of(eng, fix("o", offset(*HOME, 0, 3000), 0), fix("v", HOME, 0))
    [ev] = eng.handle_events([DeviceEvent("o", kind, T0 + 5, T0 + 5.1, seq=9)])
    assert (ev.type, ev.level, ev.state, ev.cause) == (alarm, level, AlarmState.OPEN, "event")
    assert ev.trigger.device == "o" and ev.trigger.seq == 9 and ev.trigger.t_recv == T0 + 5.1
    assert ev.offender.lat == pytest.approx(offset(*HOME, 0, 3000)[0])  # last fix, no position
    assert kind.replace("_", " ") in ev.reason


def test_a_panic_is_an_escalation_with_the_victims_position_and_the_offenders() -> None:
    c = case("C", ("o",), ("v",))
    eng = engine([c])
    events_of(eng, fix("o", offset(*HOME, 90, 800), 0), fix("v", HOME, 0))
    here = offset(*HOME, 180, 40)
    [ev] = eng.handle_events([DeviceEvent("v", "panic", T0 + 9, T0 + 9.2, *here, 12.0)])
    assert (ev.type, ev.level) == (AlarmType.PANIC, AlarmLevel.ESCALATION)
    assert ev.reason == "PANIC button pressed by the protected person (v)"
    msg = alarm_message(ev, c)
    assert (msg["type"], msg["level"], msg["state"]) == ("panic", "escalation", "open")
    assert msg["victim"]["lat"] == pytest.approx(here[0]) and msg["victim"]["acc_m"] == 12.0
    assert msg["offender"]["device"] == "o" and msg["distance_m"] is None
    assert msg["trigger"] == {"device": "v", "seq": None, "cause": "event"}
    # The same event delivered twice (QoS 1) keeps its alarm id: the CIC drops the repeat.
    [again] = eng.handle_events([DeviceEvent("v", "panic", T0 + 9, T0 + 9.9, *here, 12.0)])
    assert again.alarm_id == ev.alarm_id


def test_an_event_ends_the_silence_of_its_device() -> None:
    clock = Clock(T0)
    eng = engine([Case("C", ("o",), ("v",), 500.0, 1000.0)], clock=clock)
    clock.t = T0 + 200
    assert {e.type for e in eng.sweep()} == {AlarmType.SIGNAL_LOST, AlarmType.VICTIM_SILENT}
    events = eng.handle_events([DeviceEvent("v", "battery_low", T0 + 200, T0 + 200)])
    assert [(e.type, e.state) for e in events] == [
        (AlarmType.VICTIM_SILENT, AlarmState.ENDED),
        (AlarmType.BATTERY_LOW, AlarmState.OPEN),
    ]
    assert math.isnan(events[1].victim.lat)  # no fix and no position in the event


def test_event_codec() -> None:
    topic = "devices/phone-1/event"
    ok = decode_event(topic, orjson.dumps({"ts": T0, "type": "panic", "lat": 50.8, "lon": 4.3}), T0)
    assert isinstance(ok, DeviceEvent) and (ok.kind, ok.lat, ok.lon) == ("panic", 50.8, 4.3)
    assert math.isnan(ok.acc_m)
    bad = {
        orjson.dumps({"ts": T0, "type": "fire"}): RejectReason.UNKNOWN_EVENT,
        orjson.dumps({"ts": T0}): RejectReason.MISSING_FIELD,
        orjson.dumps({"ts": T0, "type": "panic", "lat": 50.8}): RejectReason.MISSING_FIELD,
        orjson.dumps({"ts": T0 + 1000, "type": "panic"}): RejectReason.FUTURE_TIMESTAMP,
        b'{"type": "panic"}': RejectReason.MISSING_FIELD,
        b"panic": RejectReason.MALFORMED_JSON,
    }
    for payload, reason in bad.items():
        r = decode_event(topic, payload, T0)
        assert isinstance(r, Rejection) and r.reason == reason, payload
    r = decode_event("devices/a/b/event", b"{}", T0)
    assert isinstance(r, Rejection) and r.reason == RejectReason.BAD_TOPIC


def test_case_file_rejects_a_bad_reporting_interval() -> None:
    from proximity.cases import parse_case_file
    from proximity.errors import CaseFileError

    doc = {
        "cases": [{"id": "C", "offenders": ["o"], "protected": ["v"], "order": {"distance_m": 1}}],
        "devices": [
            {"id": "o", "reporting_interval_s": 0, "signal_grace_s": 0},
            {"id": "v", "signal_grace_s": "1m"},
        ],
    }
    with pytest.raises(CaseFileError) as info:
        parse_case_file(doc)
    assert info.value.problems == [
        "devices[0] (o): 'reporting_interval_s' must be a number of seconds > 0, got 0",
        "devices[1] (v): 'signal_grace_s' must be a number of seconds >= 0, got '1m'",
    ]


def test_a_gap_in_a_devices_fix_numbers_is_a_data_gap_in_each_of_its_cases() -> None:
    clock = Clock(T0)
    eng = engine(
        [case("A", ("o",), ("v",)), case("B", ("o",), ("w",))],
        clock=clock,
        default_top_speed_mps=0.0,
        rules=RuleConfig(reporting_interval_s=600.0),  # no silence alarms in the way
    )
    far = offset(*HOME, 0, 3000)
    assert events_of(eng, fix("o", far, 0, seq=1), fix("o", far, 1, seq=2)) == []
    # Numbers 3 and 4 have not arrived: not yet a gap (they may come late, stored).
    assert events_of(eng, fix("o", far, 4, seq=5), now=T0 + 4.2) == []
    clock.t = T0 + 4.2 + GAP_SETTLE_S - 0.1
    assert eng.sweep() == []
    clock.t += 0.1  # still missing: one alarm per case of the device
    gaps = eng.sweep()
    assert sorted(g.case_id for g in gaps) == ["A", "B"]
    for g in gaps:
        assert (g.type, g.level, g.state, g.device) == (
            AlarmType.DATA_GAP,
            AlarmLevel.ALARM,
            AlarmState.OPEN,
            "o",
        )
        assert g.reason.startswith("data gap: 2 fix(es) of offender device o never arrived")
        assert "(numbers 3 to 4; the fixes before and after them arrived at" in g.reason
    assert eng.health.fixes_missing == 2 and eng.sweep() == []


def test_numbers_that_come_late_fill_their_gap_and_a_new_count_is_no_gap() -> None:
    clock = Clock(T0)
    eng = engine(
        [case("A", ("o",), ("v",))],
        clock=clock,
        default_top_speed_mps=0.0,
        rules=RuleConfig(reporting_interval_s=600.0),
    )
    far = offset(*HOME, 0, 3000)
    events_of(eng, fix("o", far, 0, seq=100))
    events_of(eng, fix("o", far, 1, seq=105))  # 101 to 104 not yet
    # Stored fixes sent after the live ones: three of the four come, and a repeat.
    events_of(eng, fix("o", far, 0.2, seq=101), fix("o", far, 0.4, seq=103), now=T0 + 2)
    events_of(eng, fix("o", far, 0.6, seq=104), fix("o", far, 0.6, seq=104), now=T0 + 3)
    events_of(eng, fix("o", far, 5, seq=106))  # the count goes on
    clock.t = T0 + 1.1 + GAP_SETTLE_S
    [gap] = eng.sweep()
    assert "1 fix(es)" in gap.reason and "(1 of the numbers 101 to 104;" in gap.reason
    # Fixes without numbers say nothing; a device that starts counting again (far below
    # its last number) is no gap, and its new count is watched from there.
    events_of(eng, fix("o", far, 40), fix("o", far, 41, seq=0), fix("o", far, 42, seq=1))
    events_of(eng, fix("o", far, 43, seq=3))
    clock.t = T0 + 43.1 + GAP_SETTLE_S
    [gap] = eng.sweep()
    assert "(number 2;" in gap.reason
    assert eng.health.fixes_missing == 2
