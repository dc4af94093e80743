"""The zone rule in the engine: exclusion zones, curfews that start without a new fix, and
the alarm messages that name the zone."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cic.messages import alarm_message
from geofence.model import circle, feature_collection
from ingest.model import Fix
from numerics.uncertainty import Classification
from proximity.cases import Case
from proximity.engine import Engine
from proximity.errors import RegistryError
from proximity.events import AlarmLevel, AlarmState, AlarmType
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import GAP, T0, Clock, engine, events_of, fix

WORK = (50.8466, 4.3528)
HOME = (50.80, 4.30)  # the offender's home, 6 km away
VICTIM = (50.90, 4.45)
CURFEW = {"weekly": [{"start": "22:00", "end": "06:00"}]}


def square(centre: tuple[float, float], half_m: float, **props: Any) -> dict[str, Any]:
    corners = [offset(*centre, b, half_m * 2**0.5) for b in (45, 135, 225, 315, 45)]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[lon, lat] for lat, lon in corners]]},
        "properties": props,
    }


def zone_case(
    *features: dict[str, Any], cid: str = "BE-Z", offenders: tuple[str, ...] = ("o",)
) -> Case:
    return Case(
        cid,
        offenders,
        ("v",),
        200.0,
        400.0,
        {"victim_name": "A."},
        feature_collection(list(features)),
    )


def zengine(cases: list[Case], **kw: Any) -> Engine:
    """An engine whose device-silence rule and reminders stay out of the way: these tests
    leave devices silent for an hour on purpose (both have their own tests)."""
    day = 86_400.0
    kw.setdefault(
        "rules", RuleConfig(reporting_interval_s=day, renotify_s=day, escalate_after_s=day)
    )
    return engine(cases, **kw)


BRUSSELS = ZoneInfo("Europe/Brussels")


def local(clock_time: str, day: int = 0) -> float:
    """UTC epoch seconds of ``clock_time`` ("21:00", "20:59:59") in Brussels, on the day of
    the tests' epoch T0 plus ``day``: times a test controls, whatever today is."""
    d = datetime.fromtimestamp(T0, BRUSSELS).date() + timedelta(days=day)
    return datetime.combine(d, time.fromisoformat(clock_time), BRUSSELS).timestamp()


def at(dev: str, pos: tuple[float, float], t: float) -> Fix:
    """A fresh 5 m fix taken at UTC epoch seconds ``t``."""
    return Fix(dev, t, t + 0.1, pos[0], pos[1], 5.0)


def test_offender_walking_into_the_workplace_raises_and_ends_a_zone_alarm() -> None:
    c = zone_case(square(WORK, 150, kind="exclusion", label="victim's workplace", warning_m=100))
    eng = zengine([c], default_top_speed_mps=0.0)  # fixes GAP apart: taken as they are
    # 400 m south of the centre: 250 m outside the square, beyond any doubt.
    assert events_of(eng, fix("v", VICTIM, 0), fix("o", offset(*WORK, 180, 400), 10 * GAP)) == []
    # 160 m south: 10 m outside, within the 99 % radius of a 5 m fix: possible entry, a
    # pre-alert until it is confirmed.
    [ev] = events_of(eng, fix("o", offset(*WORK, 180, 160), 20 * GAP))
    assert (ev.type, ev.state, ev.classification, ev.level) == (
        AlarmType.ZONE,
        AlarmState.OPEN,
        Classification.POSSIBLE_BREACH,
        AlarmLevel.PRE_ALERT,
    )
    assert ev.zone is not None and ev.zone.label == "victim's workplace"
    assert ev.zone.inside_m == pytest.approx(-10.0, abs=0.05)
    assert ev.reason.startswith("possible entry, confirming: offender o is 10 m outside")
    # 100 m south: 50 m inside: certain, the alarm level at once.
    [ev] = events_of(eng, fix("o", offset(*WORK, 180, 100), 30 * GAP))
    assert (ev.state, ev.classification, ev.level) == (
        AlarmState.UPDATE,
        Classification.CERTAIN_BREACH,
        AlarmLevel.ALARM,
    )
    msg = alarm_message(ev, c)
    assert (msg["type"], msg["zone"], msg["zone_kind"], msg["level"]) == (
        "zone",
        "victim's workplace",
        "exclusion",
        "alarm",
    )
    assert msg["previous_level"] == "pre_alert"
    assert msg["zone_inside_m"] == pytest.approx(50.0, abs=0.1)
    assert msg["distance_m"] == pytest.approx(50.0, abs=0.1)
    assert msg["probability"] > 0.999 and msg["victim"]["device"] == "v"
    assert msg["reason"].startswith("certain entry: offender o is 50 m inside")
    assert '"victim\'s workplace"' in msg["reason"]
    assert events_of(eng, fix("o", offset(*WORK, 180, 120), 40 * GAP)) == []  # still inside
    # Just outside: within the margin (25 m) plus the fix's uncertainty: still open.
    assert events_of(eng, fix("o", offset(*WORK, 180, 170), 50 * GAP)) == []
    # Beyond the margin: the alarm level is left after the dwell, the pre-alert beyond the
    # warning band (100 m) plus the margin.
    assert events_of(eng, fix("o", offset(*WORK, 180, 200), 60 * GAP)) == []
    [ev] = events_of(eng, fix("o", offset(*WORK, 180, 200), 61 * GAP))
    assert (ev.state, ev.level) == (AlarmState.UPDATE, AlarmLevel.PRE_ALERT)
    assert "beyond the margin" in ev.reason
    assert events_of(eng, fix("o", offset(*WORK, 180, 400), 62 * GAP)) == []
    [ev] = events_of(eng, fix("o", offset(*WORK, 180, 400), 63 * GAP))
    assert ev.state == AlarmState.ENDED and "beyond the margin" in ev.reason
    assert eng.open_alarms == 0


def test_curfew_starting_while_the_offender_is_away_raises_an_alarm_without_a_fix() -> None:
    home = circle(HOME[1], HOME[0], 80, kind="inclusion", label="offender's home", schedule=CURFEW)
    clock = Clock(local("21:00"))
    eng = zengine([zone_case(home)], clock=clock, default_top_speed_mps=3.0)
    # 2 km from home at 21:00 and at 21:59: no curfew yet.
    assert events_of(eng, at("o", offset(*HOME, 30, 2000), clock.t)) == []
    assert events_of(eng, at("o", offset(*HOME, 35, 2000), local("21:59"))) == []
    clock.t = local("21:59:59")
    assert eng.sweep() == []
    clock.t = local("22:00")  # the curfew begins
    [ev] = eng.sweep()
    assert (ev.type, ev.state, ev.cause) == (AlarmType.CURFEW, AlarmState.OPEN, "time")
    assert ev.classification == Classification.CERTAIN_BREACH
    assert ev.reason.startswith("certain curfew violation (the curfew began): offender o is")
    assert 'outside inclusion zone "offender\'s home"' in ev.reason
    assert ev.zone is not None and ev.zone.inside_m < -1900
    assert eng.sweep() == []  # no repeats
    # He comes home: the alarm ends once he has been back for the dwell (30 s).
    assert events_of(eng, at("o", offset(*HOME, 30, 10), clock.t + 1800)) == []
    clock.t += 29
    assert eng.sweep() == []
    clock.t += 1
    [ev] = eng.sweep()
    assert ev.state == AlarmState.ENDED and ev.reason.startswith("back inside")


def test_curfew_alarm_ends_when_the_curfew_ends() -> None:
    home = circle(HOME[1], HOME[0], 80, kind="inclusion", label="home", schedule=CURFEW)
    clock = Clock(local("05:00", day=1))
    eng = zengine([zone_case(home)], clock=clock)
    [ev] = events_of(eng, at("o", offset(*HOME, 0, 500), clock.t))
    assert ev.state == AlarmState.OPEN and ev.cause == "fix"
    clock.t = local("06:00", day=1)  # the curfew ends
    [ev] = eng.sweep()
    assert ev.state == AlarmState.ENDED and "no longer in force" in ev.reason
    assert ev.zone is not None and not ev.zone.in_force


def test_a_zone_outside_its_validity_dates_raises_nothing() -> None:
    school = square(
        WORK,
        100,
        kind="exclusion",
        label="school",
        schedule={"dates": [{"from": "2025-01-01", "until": "2025-12-31"}]},
    )
    eng = zengine([zone_case(school)], clock=Clock(local("12:00")))
    assert events_of(eng, at("o", WORK, local("12:00"))) == []


def test_only_the_offenders_own_cases_zones_apply() -> None:
    a = zone_case(square(WORK, 150, kind="exclusion", label="workplace A"), cid="A")
    b = Case("B", ("o2",), ("v2",), 200.0, 400.0)
    eng = zengine([a, b])
    assert len(eng.zones) == 1
    assert events_of(eng, fix("o2", WORK, 0)) == []
    [ev] = events_of(eng, fix("o", WORK, 1))
    assert (ev.case_id, ev.offender.device) == ("A", "o")


def test_an_old_fix_near_a_zone_raises_nothing_on_a_sweep_the_next_fix_decides() -> None:
    c = zone_case(square(WORK, 150, kind="exclusion", label="workplace"))
    clock = Clock(local("12:00"))
    eng = zengine([c], clock=clock, default_top_speed_mps=3.0)
    assert events_of(eng, at("o", offset(*WORK, 90, 250), clock.t)) == []
    for _ in range(120):  # 100 m outside; after a minute at walking speed he may be inside
        clock.t += 1.0
        assert eng.sweep() == []  # but only his uncertainty grew: no level rises on that
    [ev] = events_of(eng, at("o", offset(*WORK, 90, 155), clock.t))  # 5 m outside
    assert (ev.state, ev.cause, ev.level) == (AlarmState.OPEN, "fix", AlarmLevel.PRE_ALERT)


def test_a_stored_zone_that_this_version_rejects_stops_the_engine_with_a_remedy() -> None:
    old = circle(HOME[1], HOME[0], 80, kind="exclusion", label="home")
    del old["properties"]["radius_m"]  # stored by a version that did not check circles
    with pytest.raises(RegistryError, match=r"case BE-Z .* zone 'home' .* import it again"):
        zengine([zone_case(old)])


def test_repeated_entries_into_a_zones_warning_band_are_boundary_probing() -> None:
    c = zone_case(square(WORK, 150, kind="exclusion", label="victim's workplace", warning_m=100))
    eng = zengine([c], default_top_speed_mps=0.0)  # fixes GAP apart: taken as they are
    near, far = offset(*WORK, 180, 220), offset(*WORK, 180, 600)  # 70 m and 450 m outside
    events = events_of(eng, fix("v", VICTIM, 0))
    t = 0
    for _ in range(3):
        for pos in (near, far, far):  # in, out, out for the dwell
            t += 1
            events += events_of(eng, fix("o", pos, t * GAP))
    zone = [(e.type, e.state) for e in events]
    assert zone.count((AlarmType.ZONE, AlarmState.OPEN)) == 3
    assert zone.count((AlarmType.ZONE, AlarmState.ENDED)) == 3
    [probe] = [e for e in events if e.type == AlarmType.PROBING]
    assert (probe.state, probe.level) == (AlarmState.OPEN, AlarmLevel.ALARM)
    assert probe.zone is not None and probe.zone.label == "victim's workplace"
    assert probe.reason.startswith("boundary probing: 3 entries near exclusion zone")
    # An hour without an entry ends the pattern.
    eng._clock.t = T0 + t * GAP + 3601  # type: ignore[attr-defined]
    [end] = eng.sweep()
    assert (end.type, end.state, end.alarm_id) == (
        AlarmType.PROBING,
        AlarmState.ENDED,
        probe.alarm_id,
    )


def test_one_fix_that_raises_the_pair_and_a_zone_alike_sends_the_offender_one_notice() -> None:
    from cic.notice import notices_for

    # Her workplace is an exclusion zone; she is there. His one fix, 300 m from both her and
    # the zone's edge, is within the pair's warning distance (400 m) and the zone's band.
    c = zone_case(circle(WORK[1], WORK[0], 50, kind="exclusion", label="work", warning_m=300))
    eng = zengine([c], default_top_speed_mps=3.0)
    assert events_of(eng, fix("v", WORK, 0)) == []
    events = events_of(eng, fix("o", offset(*WORK, 90, 300), 1))
    assert sorted(e.type.name for e in events) == ["PROXIMITY", "ZONE"]
    assert all(e.level == AlarmLevel.PRE_ALERT for e in events)
    [notice] = notices_for(events)
    assert notice.device == "o" and notice.severity.name == "WARNING"
