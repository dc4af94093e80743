"""Zones end to end through a real Mosquitto and the engine's CLI: an exclusion zone entered
and left, and a curfew that starts while the offender is away (no new fix needed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from geofence.model import circle, feature_collection
from proximity.engine import Engine
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, now, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

#: These tests place a device anywhere at once to set up each situation, which the
#: implausible-jump filter would set aside; the filter has its own tests.
TELEPORT = ("--implausible-speed-mps", "1e9", "--dwell-s", "0")  # see test_integration

WORK = (50.8466, 4.3528)  # the victim's workplace, Brussels
HOME = (50.8800, 4.4200)  # the offender's home
VICTIM = (50.8000, 4.3000)
#: The curfew starts this long after the engine's cases are written: time for the engine to
#: start and for the offender's fix to arrive before it.
CURFEW_LEAD_S = 15.0


def workplace() -> dict[str, Any]:
    corners = [offset(*WORK, b, 150 * 2**0.5) for b in (45, 135, 225, 315, 45)]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[lon, lat] for lat, lon in corners]]},
        "properties": {"kind": "exclusion", "label": "victim's workplace", "warning_m": 100},
    }


def curfew_from(start: float) -> dict[str, Any]:
    """A one-hour curfew window starting at UTC epoch ``start``, in Brussels wall time."""
    local = datetime.fromtimestamp(start, ZoneInfo("Europe/Brussels"))
    end = local + timedelta(hours=1)
    return {
        "timezone": "Europe/Brussels",
        "weekly": [{"start": local.strftime("%H:%M:%S"), "end": end.strftime("%H:%M:%S")}],
    }


def _case(cid: str, off: str, vic: str, zones: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": cid,
        "offenders": [off],
        "protected": [vic],
        "order": {"distance_m": 200},
        "summary": {"offender_name": "P. Janssens", "victim_name": "L. Claes"},
        "zones": feature_collection(zones),
        "mobility": "walking",
    }


@pytest.fixture(scope="module")
def setup(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EngineProcess, float]]:
    tmp = tmp_path_factory.mktemp("zones")
    # Compile (or load) the kernels here, so the engine's start below is a cache load and
    # the curfew's start can be close.
    Engine([]).warm_up()
    curfew_start = float(int(now() + CURFEW_LEAD_S))
    home = circle(
        HOME[1],
        HOME[0],
        100,
        kind="inclusion",
        label="offender's home",
        schedule=curfew_from(curfew_start),
    )
    cases = [
        _case("BE-Z-WORK", "tag-w", "phone-w", [workplace()]),
        _case("BE-Z-CURFEW", "tag-c", "phone-c", [home]),
    ]
    with running_engine(broker, tmp, cases, *TELEPORT) as proc:
        yield proc, curfew_start


@pytest.fixture
def cic(broker: LocalBroker, setup: Any) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms"])
    yield listener
    listener.close()


def test_walking_into_the_workplace_raises_a_zone_alarm_and_leaving_ends_it(
    pub: Publisher, cic: Listener
) -> None:
    pub.fix("phone-w", *VICTIM)
    for d in (600.0, 400.0, 250.0):  # walking north towards the zone: into its warning band
        pub.fix("tag-w", *offset(*WORK, 200.0, d))
    pub.fix("tag-w", *offset(*WORK, 200.0, 60.0), seq=42)  # inside
    opened = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-Z-WORK")
    assert (opened["type"], opened["state"], opened["zone"], opened["zone_kind"]) == (
        "zone",
        "open",
        "victim's workplace",
        "exclusion",
    )
    assert (opened["level"], opened["classification"]) == ("pre_alert", "warning")
    alarm = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == opened["alarm_id"] and m["state"] == "update"
    )
    assert (alarm["level"], alarm["classification"]) == ("alarm", "certain_breach")
    assert alarm["zone_inside_m"] > 50 and alarm["trigger"] == {
        "device": "tag-w",
        "seq": 42,
        "cause": "fix",
    }
    assert 'inside exclusion zone "victim\'s workplace"' in alarm["reason"]
    assert alarm["summary"]["offender_name"] == "P. Janssens"
    pub.fix("tag-w", *offset(*WORK, 200.0, 500.0))  # leaves
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == opened["alarm_id"] and m["state"] == "ended"
    )
    assert ended["zone"] == "victim's workplace" and ended["zone_inside_m"] < -300
    states = [m["state"] for m in cic.on("cic/alarms") if m["case_id"] == "BE-Z-WORK"]
    assert states == ["open", "update", "ended"]


def test_curfew_starting_while_the_offender_is_away_raises_an_alarm_without_a_fix(
    pub: Publisher, cic: Listener, setup: tuple[EngineProcess, float]
) -> None:
    _, start = setup
    assert now() < start - 1.0, "the engine took too long to start; raise CURFEW_LEAD_S"
    pub.fix("phone-c", *VICTIM)
    pub.fix("tag-c", *offset(*HOME, 70.0, 3000.0))  # 3 km from home, before the curfew
    alarm = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-Z-CURFEW", timeout=CURFEW_LEAD_S + 20
    )
    decided = datetime.fromisoformat(alarm["times"]["decided"]).timestamp()
    assert decided >= start
    assert (alarm["type"], alarm["state"], alarm["zone"], alarm["zone_kind"]) == (
        "curfew",
        "open",
        "offender's home",
        "inclusion",
    )
    assert alarm["trigger"]["cause"] == "time"  # no fix arrived: the schedule did it
    assert "the curfew began" in alarm["reason"]
    assert alarm["zone_inside_m"] == pytest.approx(-2900, abs=5)
    pub.fix("tag-c", *offset(*HOME, 70.0, 20.0))  # home
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm["alarm_id"] and m["state"] == "ended"
    )
    assert ended["reason"].startswith("back inside")
