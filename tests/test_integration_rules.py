"""Pair rules end to end through a real Mosquitto and the engine's CLI: an approach alarm
before the breach, boundary probing, and the offender's "move away" notices."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.broker import LocalBroker, free_port
from simulator.process import EngineProcess
from storage.evidence import read_track
from tests.conftest import Listener, Publisher, now, run_cli, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

HOME = (50.8700, 4.3000)
SUMMARY = {"offender_name": "K. Claes", "victim_name": "L. Wouters"}


def _case(case_id: str, offender: str, victim: str) -> dict[str, Any]:
    return {
        "id": case_id,
        "offenders": [offender],
        "protected": [victim],
        "order": {"distance_m": 500, "warning_distance_m": 1000},
        "summary": SUMMARY,
        "mobility": {"offenders": "driving", "protected": "walking"},
    }


CASES = [
    _case("BE-R-APPROACH", "tag-a", "phone-a"),
    _case("BE-R-PROBE", "tag-p", "phone-p"),
    _case("BE-R-OWNTRACKS", "tag-o", "phone-o"),
]
#: The protected person of the last case runs the OwnTracks app as user "jane", device "pixel".
DEVICES = [
    {"id": "phone-o", "owntracks": {"user": "jane", "device": "pixel"}},
    {"id": "tag-o", "osmand": {"secret": "Zq81-tag-o-secret"}},  # reports by HTTP too
]
HTTP_PORT = free_port()

#: Set-up moves are instantaneous (the jump filter has its own tests), and a level is left on
#: the first fix beyond it (the dwell has its own tests).
ARGS = ("--implausible-speed-mps", "1e9", "--dwell-s", "0", "--http", f"127.0.0.1:{HTTP_PORT}")


@pytest.fixture(scope="module")
def engine(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("engine")
    # Probing entries here are seconds apart: each counts (no minimum gap between visits).
    env = {"PROXIMITY_PROBE_MIN_GAP_S": "0"}
    with running_engine(broker, tmp, CASES, *ARGS, devices=DEVICES, env=env) as proc:
        yield proc


@pytest.fixture
def cic(broker: LocalBroker, engine: EngineProcess) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "devices/tag-a/notice", "proximity/rejected"])
    yield listener
    listener.close()


def of(cic: Listener, case_id: str) -> list[dict[str, Any]]:
    return [m for m in cic.on("cic/alarms") if m["case_id"] == case_id]


def wait_count(cic: Listener, case_id: str, state: str, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` proximity messages of ``case_id`` are in ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in of(cic, case_id) if m["type"] == "proximity" and m["state"] == state]
        if len(got) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} {state} messages of {case_id} expected: {of(cic, case_id)}")


def test_a_car_closing_in_raises_an_approach_alarm_before_the_breach(
    pub: Publisher, cic: Listener, engine: EngineProcess, tmp_path: Path
) -> None:
    victim = HOME
    # He drives straight at her from 2.2 km at 20 m/s. The last half minute, one fix a
    # second, is sent at once (only settled estimates predict: a device's first fixes
    # cannot); then one fix every 0.1 s, each stamped as it is sent, until the approach
    # (which must hold for 3 s).
    t0 = now() - 30.0
    pub.fix("phone-a", *victim, ts=t0)
    pub.fix("phone-a", *victim, ts=t0 + 20.0)
    start = offset(*victim, 300.0, 2200.0)
    for k in range(30):
        pub.fix("tag-a", *offset(*start, 120.0, 20.0 * k), ts=t0 + k)
    for _ in range(100):
        t = now()
        pub.fix("tag-a", *offset(*start, 120.0, 20.0 * (t - t0)), ts=t)
        time.sleep(0.1)
        if any(m["type"] == "approach" for m in of(cic, "BE-R-APPROACH")):
            break
    approach = cic.wait_for(
        "cic/alarms", lambda m: m["type"] == "approach" and m["case_id"] == "BE-R-APPROACH"
    )
    # A prediction is a pre-alert: the breach it predicts is the alarm.
    assert (approach["state"], approach["level"]) == ("open", "pre_alert")
    assert approach["distance_m"] > 1000  # long before the order distance
    assert approach["closing_speed_mps"] == pytest.approx(20.0, abs=3.0)
    assert 0 < approach["time_to_breach_s"] <= 120
    assert approach["reason"].startswith("approach: offender tag-a")
    pub.fix("phone-a", *victim)
    # He arrives and stays: the breach alarm supersedes the approach. (His sudden arrival is
    # a manoeuvre: the breach is likely until confirm_s of his fixes has confirmed it, each
    # current for his cadence, 0.1 s, plus 3 s: so his tag keeps reporting.)
    for _ in range(80):
        pub.fix("tag-a", *offset(*victim, 300.0, 200.0), ts=now())
        time.sleep(0.5)
        if any(m["state"] == "ended" and m["type"] == "approach" for m in of(cic, "BE-R-APPROACH")):
            break
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == approach["alarm_id"] and m["state"] == "ended"
    )
    assert ended["reason"].startswith("superseded by the breach alarm")
    breach = cic.wait_for(
        "cic/alarms",
        lambda m: m["type"] == "proximity" and m["level"] in ("alarm", "escalation"),
    )
    assert breach["case_id"] == "BE-R-APPROACH"
    # His device was told to move away (a warning), then that he is in breach; never where
    # she is.
    warning = cic.wait_for("devices/tag-a/notice", lambda m: m["severity"] == "warning")
    violation = cic.wait_for("devices/tag-a/notice", lambda m: m["severity"] == "violation")
    for n in (warning, violation):
        assert set(n) == {"notice_id", "kind", "severity", "text", "issued"}
        assert n["kind"] == "stay_away" and not any(c.isdigit() for c in n["text"])
    # The evidence record holds his fixes and every alarm message, and its export verifies.
    # (A running engine's chain holds the fixes up to its last fold, every 60 s; the ones
    # staged since are in the record too, and on the case's track.)
    track = read_track(engine.db.with_suffix(".evidence.sqlite"), "BE-R-APPROACH", 0.0)
    assert len(track) >= 20 and {f["device"] for f in track} == {"tag-a", "phone-a"}
    out = tmp_path / "evidence.jsonl"
    exported = run_cli(
        "evidence", "export", "BE-R-APPROACH", "--db", str(engine.db), "--out", str(out)
    )
    assert exported.returncode == 0, exported.stderr
    entries = [orjson.loads(line) for line in out.read_bytes().splitlines()[:-1]]
    kinds = [e["kind"] for e in entries]
    assert kinds.count("alarm") >= 3  # opened, ended, breach
    recorded = {e["body"]["alarm_id"] for e in entries if e["kind"] == "alarm"}
    assert {approach["alarm_id"], breach["alarm_id"]} <= recorded
    verified = run_cli("evidence", "verify", str(out))
    assert verified.returncode == 0 and verified.stdout.startswith("intact"), verified.stdout


def test_three_short_entries_into_the_warning_band_raise_a_probing_alarm(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.1, HOME[1])
    pub.fix("phone-p", *victim)
    for k in range(1, 4):
        pub.fix("tag-p", *offset(*victim, 90.0 + 20 * k, 800.0))  # in the warning band
        wait_count(cic, "BE-R-PROBE", "open", k)
        pub.fix("tag-p", *offset(*victim, 90.0, 2500.0))  # and out again
        wait_count(cic, "BE-R-PROBE", "ended", k)
    probe = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-R-PROBE" and m["type"] == "probing"
    )
    assert (probe["state"], probe["level"]) == ("open", "alarm")
    assert probe["reason"].startswith("boundary probing: 3 entries within the warning distance")
    assert probe["summary"] == SUMMARY


def test_the_cic_acknowledges_and_closes_alarms_on_cic_acks(pub: Publisher, cic: Listener) -> None:
    victim = (HOME[0] + 0.2, HOME[1])
    pub.fix("phone-p", *victim)
    pub.fix("tag-p", *offset(*victim, 0.0, 100.0))  # a breach
    alarm = cic.wait_for(
        "cic/alarms",
        lambda m: m["case_id"] == "BE-R-PROBE" and m["level"] in ("alarm", "escalation"),
    )
    ack = {"alarm_id": alarm["alarm_id"], "operator": "CIC Brussels, desk 4", "ts": now()}
    pub.raw("cic/acks", orjson.dumps(ack))
    acked = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm["alarm_id"] and m["state"] == "acknowledged"
    )
    assert acked["operator"] == "CIC Brussels, desk 4" and acked["trigger"]["cause"] == "operator"
    close = {**ack, "action": "close", "note": "offender warned by phone"}
    pub.raw("cic/acks", orjson.dumps(close))
    closed = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm["alarm_id"] and m["state"] == "closed"
    )
    assert closed["reason"] == "closed by CIC Brussels, desk 4: offender warned by phone"
    # An unknown alarm, and a close without a reason, are rejected with a reason.
    pub.raw("cic/acks", orjson.dumps({**ack, "alarm_id": "no-such-alarm"}))
    pub.raw("cic/acks", orjson.dumps({**ack, "action": "close"}))
    bad = cic.wait_for("proximity/rejected", lambda m: m["reason"] == "unknown_alarm")
    assert "no-such-alarm" in bad["detail"]
    cic.wait_for("proximity/rejected", lambda m: "needs a 'resolution'" in m["detail"])


def test_a_victim_running_owntracks_is_protected_like_any_device(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.3, HOME[1])
    body = {
        "_type": "location",
        "lat": victim[0],
        "lon": victim[1],
        "acc": 8.5,
        "tst": int(now()),
        "tid": "ja",
    }
    pub.raw("owntracks/jane/pixel", orjson.dumps(body))
    pub.fix("tag-o", *offset(*victim, 45.0, 150.0))
    alarm = cic.wait_for(
        "cic/alarms",
        lambda m: m["case_id"] == "BE-R-OWNTRACKS" and m["level"] in ("alarm", "escalation"),
    )
    assert alarm["victim"]["device"] == "phone-o" and alarm["victim"]["acc_m"] == 8.5
    assert alarm["distance_m"] == pytest.approx(150.0, abs=3.0)
    pub.raw("owntracks/jane/pixel", b'{"_type":"encrypted","data":"AbCd=="}')
    bad = cic.wait_for("proximity/rejected", lambda m: m["reason"] == "encrypted")
    assert bad["device"] == "phone-o" and "no key" in bad["detail"]


def test_an_offender_reporting_by_http_with_his_secret_is_watched(
    pub: Publisher, cic: Listener
) -> None:
    victim = (HOME[0] + 0.35, HOME[1])
    pub.fix("phone-o", *victim)
    lat, lon = offset(*victim, 200.0, 120.0)
    q = f"id=tag-o&timestamp={now():.3f}&lat={lat}&lon={lon}&accuracy=6"
    base = f"http://127.0.0.1:{HTTP_PORT}/osmand"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/not-the-secret?{q}", timeout=5)
    assert refused.value.code == 403
    refused.value.close()
    with urllib.request.urlopen(f"{base}/Zq81-tag-o-secret?{q}", timeout=5) as resp:
        assert resp.status == 200
    alarm = cic.wait_for(
        "cic/alarms",
        lambda m: (
            m["case_id"] == "BE-R-OWNTRACKS"
            and m["offender"]["acc_m"] == 6.0
            and m["level"] in ("alarm", "escalation")
        ),
    )
    assert alarm["distance_m"] == pytest.approx(120.0, abs=3.0)
