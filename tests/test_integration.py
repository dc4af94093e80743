"""End to end through a real Mosquitto and the engine's CLI: fixes in, alarms out.

"No alarm" is asserted with a barrier instead of a wait: after the fixes that must not alarm,
a sentinel pair is driven into breach; fixes are processed in order, so once the sentinel's
alarm has arrived, any alarm the earlier fixes caused would already be there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, now, run_cli, running_engine
from tests.naive import geod_distance_m, offset
from tests.test_formats import VALIDATOR

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

#: These tests place a device anywhere at once to set up each situation, which the
#: implausible-jump filter would set aside; the filter has its own tests. Levels are left
#: without a dwell, so that one fix ends an alarm (the dwell has its own tests).
TELEPORT = ("--implausible-speed-mps", "1e9", "--dwell-s", "0")

HOME = (50.8503, 4.3517)  # Brussels
ORDER_M = 500.0
SUMMARY = {
    "offender_name": "Jan Peeters",
    "offender_description": "male, 45, grey van 1-ABC-123",
    "victim_name": "Els Maes",
    "victim_phone": "+32 470 12 34 56",
    "risk_notes": "prior violence; owns a hunting rifle",
}


def _case(
    case_id: str, offenders: list[str], protected: list[str], mobility: object = "walking"
) -> dict[str, Any]:
    # Walking (3 m/s): fix ages widen the uncertainty slowly, so pairs that the tests leave
    # behind do not turn into possible breaches while the module runs (a minute or less).
    return {
        "id": case_id,
        "offenders": offenders,
        "protected": protected,
        "order": {"distance_m": ORDER_M, "warning_distance_m": 2 * ORDER_M},
        "summary": SUMMARY,
        "mobility": mobility,
    }


CASES = [
    _case("BE-2026-0001", ["tag-1"], ["phone-1"]),
    _case("BE-2026-0002", ["tag-2"], ["phone-2"]),
    _case("BE-2026-0003", ["tag-3"], ["phone-3"]),  # victim of two offenders:
    _case("BE-2026-0004", ["tag-4"], ["phone-3"]),  # tag-3 and tag-4
    _case("BE-2026-0005", ["tag-5"], ["phone-5"]),
    _case("BE-2026-SENT", ["tag-s"], ["phone-s"]),  # sentinel pair for barriers
    # A fast offender (100 m/s): his fix's uncertainty grows 100 m per second of silence.
    _case("BE-2026-0006", ["tag-6"], ["phone-6"], {"offenders": 100.0, "protected": "walking"}),
]


@pytest.fixture(scope="module")
def engine(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("engine")
    # These tests are about messages and transport, and send each device's first fixes: no
    # confirmation time, so that first fixes count at once (tests/test_engine.py has the
    # confirmation rules, first fixes included).
    args = ("--status-interval-s", "0.5", "--confirm-s", "0")
    with running_engine(broker, tmp, CASES, *TELEPORT, *args) as proc:
        yield proc


@pytest.fixture
def cic(broker: LocalBroker, engine: EngineProcess) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "cic/alarms/cap", "proximity/rejected"])
    yield listener
    listener.close()


_barriers = 0


def barrier(pub: Publisher, cic: Listener) -> None:
    """Open and end a sentinel alarm; return when both messages have arrived."""
    global _barriers
    _barriers += 1
    lat, lon = HOME[0] + 0.5, HOME[1] + 0.5 + 0.01 * _barriers
    pub.fix("phone-s", lat, lon)
    pub.fix("tag-s", *offset(lat, lon, 30.0, 100.0))
    opened = cic.wait_for(
        "cic/alarms",
        lambda m: (
            m["case_id"] == "BE-2026-SENT"
            and m["state"] == "open"
            and m["alarm_id"] not in _seen_sentinels
        ),
    )
    _seen_sentinels.add(opened["alarm_id"])
    pub.fix("tag-s", *offset(lat, lon, 30.0, 5000.0))
    cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == opened["alarm_id"] and m["state"] == "ended"
    )


_seen_sentinels: set[str] = set()


def alarms_of(cic: Listener, case_id: str) -> list[dict[str, Any]]:
    return [m for m in cic.on("cic/alarms") if m["case_id"] == case_id]


def _iso(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    assert t.tzinfo is not None and t.utcoffset().total_seconds() == 0, s  # type: ignore[union-attr]
    return t


def test_breach_raises_one_alarm_with_every_field_then_ends(pub: Publisher, cic: Listener) -> None:
    victim = HOME
    offender = offset(*victim, 45.0, 400.0)  # diagonal: north-east
    pub.fix("phone-1", *victim, acc=8.0, seq=1)
    pub.fix("tag-1", *offender, acc=6.0, seq=7)
    alarm = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0001")

    expected = float(geod_distance_m(victim[0], victim[1], offender[0], offender[1]))
    assert abs(alarm["distance_m"] - expected) <= 1.0
    assert abs(alarm["distance_m"] - 400.0) <= 1.0
    assert alarm["type"] == "proximity"
    assert alarm["level"] == "alarm"
    assert alarm["state"] == "open"
    assert alarm["category"] == "stalking"
    assert alarm["order_distance_m"] == ORDER_M
    assert alarm["summary"] == SUMMARY
    assert alarm["offender"]["device"] == "tag-1"
    assert alarm["victim"]["device"] == "phone-1"
    assert alarm["offender"]["lat"] == pytest.approx(offender[0], abs=1e-7)
    assert alarm["offender"]["lon"] == pytest.approx(offender[1], abs=1e-7)
    assert alarm["victim"]["lat"] == pytest.approx(victim[0], abs=1e-7)
    assert alarm["offender"]["acc_m"] == 6.0
    assert alarm["victim"]["acc_m"] == 8.0
    assert alarm["offender"]["age_s"] >= 0.0
    assert alarm["trigger"] == {"device": "tag-1", "seq": 7, "cause": "fix"}
    assert alarm["classification"] == "certain_breach"
    assert alarm["probability"] == 1.0
    assert 0 < alarm["uncertainty_m"] < 50
    assert alarm["offender"]["old_fix"] is False and alarm["offender"]["radius_m"] >= 6.0
    assert alarm["alarm_id"] and alarm["reason"]
    times = {k: _iso(alarm["times"][k]) for k in ("fix", "received", "decided", "published")}
    _iso(alarm["offender"]["fix_time"])
    assert times["fix"] <= times["received"] <= times["decided"] <= times["published"]
    # As it arrived on the wire, it is a valid message of the published schema, and the same
    # alarm arrived as CAP 1.2 on its own topic.
    assert [e.message for e in VALIDATOR.iter_errors(alarm)] == []
    cap = cic.wait_for("cic/alarms/cap", lambda m: alarm["alarm_id"] in m["xml"])
    assert "<msgType>Alert</msgType>" in cap["xml"] and "<status>Actual</status>" in cap["xml"]
    assert f"<incidents>{alarm['incident_id']} {alarm['alarm_id']}</incidents>" in cap["xml"]

    # Further fixes inside the order distance change nothing: no repeated message.
    pub.fix("tag-1", *offset(*victim, 45.0, 380.0))
    pub.fix("phone-1", *victim)
    # Inside the hysteresis margin (500 < 520 <= 500 + 50): still no change.
    pub.fix("tag-1", *offset(*victim, 225.0, 520.0))
    barrier(pub, cic)
    assert len(alarms_of(cic, "BE-2026-0001")) == 1

    # Beyond it: back to a pre-alert (600 m is within the warning distance of 1000 m).
    pub.fix("tag-1", *offset(*victim, 225.0, 600.0))
    lower = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-2026-0001" and m["state"] == "update"
    )
    assert (lower["level"], lower["previous_level"]) == ("pre_alert", "alarm")
    assert lower["alarm_id"] == alarm["alarm_id"]
    assert lower["distance_m"] == pytest.approx(600.0, abs=1.0)
    pub.fix("tag-1", *offset(*victim, 225.0, 1200.0))
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-2026-0001" and m["state"] == "ended"
    )
    assert ended["alarm_id"] == alarm["alarm_id"]
    assert len(alarms_of(cic, "BE-2026-0001")) == 3


def test_offender_at_600_m_raises_only_a_pre_alert(
    pub: Publisher, cic: Listener, engine: EngineProcess
) -> None:
    victim = (HOME[0] + 0.1, HOME[1])
    pub.fix("phone-2", *victim)
    pub.fix("tag-2", *offset(*victim, 135.0, 600.0))  # south-east
    pub.fix("tag-2", *offset(*victim, 315.0, 600.0))  # north-west
    barrier(pub, cic)
    [pre] = alarms_of(cic, "BE-2026-0002")
    assert (pre["state"], pre["level"], pre["classification"]) == ("open", "pre_alert", "warning")
    # The engine's log: a pre-alert is information, a breach alarm (the barrier's) a warning.
    assert log_levels(engine, pre["alarm_id"]) == ["INFO"]
    [opened] = [m for m in alarms_of(cic, "BE-2026-SENT") if m["state"] == "open"][-1:]
    assert opened["level"] in ("alarm", "escalation")
    assert log_levels(engine, opened["alarm_id"])[0] == "WARNING"


def log_levels(engine: EngineProcess, alarm_id: str) -> list[str]:
    """The levels of the engine's log lines about alarm ``alarm_id``, in order."""
    return [
        line.split()[2]
        for line in engine.log.read_text().splitlines()
        if f" alarm {alarm_id[:8]} " in line
    ]


def test_victim_protected_from_two_offenders_gets_two_independent_alarms(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.2, HOME[1])
    pub.fix("phone-3", *victim)
    pub.fix("tag-3", *offset(*victim, 10.0, 300.0))
    pub.fix("tag-4", *offset(*victim, 200.0, 450.0))
    a3 = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0003")
    a4 = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0004")
    assert a3["alarm_id"] != a4["alarm_id"]
    assert (a3["offender"]["device"], a4["offender"]["device"]) == ("tag-3", "tag-4")
    assert a3["distance_m"] == pytest.approx(300.0, abs=1.0)
    assert a4["distance_m"] == pytest.approx(450.0, abs=1.0)

    # One offender leaving ends only his alarm.
    pub.fix("tag-3", *offset(*victim, 10.0, 2000.0))
    cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0003" and m["state"] == "ended")
    barrier(pub, cic)
    assert [m["state"] for m in alarms_of(cic, "BE-2026-0004")] == ["open"]


def test_garbage_is_rejected_and_the_next_valid_fix_still_alarms(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.3, HOME[1])
    pub.fix("phone-5", *victim)
    pub.raw("devices/tag-5/fix", b"\x00\xff not json")
    pub.raw("devices/tag-5/fix", b"[1, 2, 3]")
    pub.raw("devices/tag-5/fix", orjson.dumps({"ts": now(), "lat": 123.0, "lon": 4.3}))
    pub.raw("devices/tag-5/fix", b'{"lat": 50.0, "lon": 4.3}')
    pub.raw("devices/nobody/fix", orjson.dumps({"ts": now(), "lat": 50.0, "lon": 4.3, "acc": 5}))
    pub.fix("tag-5", *offset(*victim, 80.0, 250.0))
    alarm = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0005")
    assert alarm["distance_m"] == pytest.approx(250.0, abs=1.0)

    reasons = [r["reason"] for r in cic.on("proximity/rejected")]
    for reason in (
        "malformed_json",
        "not_an_object",
        "out_of_range",
        "missing_field",
        "unknown_device",
    ):
        assert reason in reasons
    rejected = {r["reason"]: r for r in cic.on("proximity/rejected")}
    assert rejected["out_of_range"]["device"] == "tag-5"
    assert "lat" in rejected["out_of_range"]["detail"]
    assert rejected["unknown_device"]["device"] == "nobody"


def test_a_silent_offender_s_growing_uncertainty_raises_nothing_his_next_fix_does(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.4, HOME[1])
    pub.fix("phone-6", *victim)
    pub.fix("tag-6", *offset(*victim, 300.0, 1500.0))
    # No further fix: after 5 s his 99 % radius (growing 100 m a second) reaches the warning
    # distance, after 10 s it is beyond max_uncertainty_m. The periodic sweep (every second)
    # sees both, and must raise nothing on uncertainty alone.
    time.sleep(12.0)
    barrier(pub, cic)
    assert alarms_of(cic, "BE-2026-0006") == []
    # A fresh fix within the warning distance does.
    pub.fix("tag-6", *offset(*victim, 300.0, 900.0))
    pub.fix("phone-6", *victim)
    alarm = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-2026-0006")
    assert (alarm["state"], alarm["level"], alarm["trigger"]["cause"]) == (
        "open",
        "pre_alert",
        "fix",
    )
    assert alarm["distance_m"] == pytest.approx(900.0, abs=1.0)
    # A fresh fix far away ends it.
    pub.fix("tag-6", *offset(*victim, 300.0, 3500.0))
    pub.fix("phone-6", *victim)
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-2026-0006" and m["state"] == "ended"
    )
    assert ended["alarm_id"] == alarm["alarm_id"]


def test_cli_run_rejects_a_bad_broker_url(tmp_path: Path) -> None:
    result = run_cli("run", "--broker", "http://example", "--db", str(tmp_path / "r.sqlite"))
    assert result.returncode == 1
    assert "mqtt://HOST:PORT" in result.stderr
