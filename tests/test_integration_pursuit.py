"""Pursuit mode and the protected person's notices end to end, through a real Mosquitto and
the engine's CLI: an alarm asks both devices to report faster, an obedient device does and
is left alone, one that ignores the command is asked again and then named in a health alarm,
the end of the episode restores the devices' own interval; an OwnTracks phone gets the app's
own commands; an HTTP-only tag cannot be commanded and the alarm says so; the protected
person is warned by level and distance band, and sees the offender only where the case
allows it."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from ingest.codec import parse_timestamp
from ingest.transport import parse_broker_url
from simulator.broker import LocalBroker
from simulator.obey import ObedientDevice
from simulator.process import EngineProcess
from tests.conftest import WAIT_S, Listener, Publisher, now, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

HOME = (50.8500, 4.3500)
OWN_S = 30.0  # the devices' own reporting interval
PURSUIT_S = 2.0  # the pursuit's, short here so that a few of its fixes come quickly
TAIL_S = 3.0


def _case(case_id: str, offender: str, victim: str, **more: Any) -> dict[str, Any]:
    return {
        "id": case_id,
        "offenders": [offender],
        "protected": [victim],
        "order": {"distance_m": 500, "warning_distance_m": 1000},
        "summary": {"offender_name": "P. Janssens", "victim_name": "M. Peeters"},
        "mobility": {"offenders": "driving", "protected": "walking"},
        **more,
    }


CASES = [
    _case("BE-P-MQTT", "tag-1", "phone-1"),
    _case("BE-P-OT", "tag-2", "phone-2"),
    _case("BE-P-HTTP", "tag-3", "phone-3", share_offender_position=True),
]
DEVICES: list[dict[str, Any]] = [
    *({"id": d, "reporting_interval_s": OWN_S} for d in ("tag-1", "phone-1", "tag-2", "phone-3")),
    {
        "id": "phone-2",
        "owntracks": {"user": "jane", "device": "pixel"},
        "reporting_interval_s": OWN_S,
    },
    {"id": "tag-3", "osmand": {"secret": "Pq72-tag-3-secret"}, "reporting_interval_s": OWN_S},
]
ARGS = (
    "--implausible-speed-mps",
    "1e9",
    "--dwell-s",
    "0",
    "--pursuit-interval-s",
    str(PURSUIT_S),
    "--pursuit-tail-s",
    str(TAIL_S),
    "--pursuit-ack-timeout-s",
    "1",
)
TOPICS = [
    "cic/alarms",
    "devices/+/cmd",
    "devices/+/notice",
    "owntracks/jane/pixel/cmd",
    "proximity/rejected",
]


@pytest.fixture(scope="module")
def engine(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("pursuit")
    with running_engine(broker, tmp, CASES, *ARGS, devices=DEVICES) as proc:
        yield proc


@pytest.fixture
def seen(broker: LocalBroker, engine: EngineProcess) -> Iterator[Listener]:
    listener = Listener(broker.url, TOPICS)
    yield listener
    listener.close()


def _on(seen: Listener, topic: str) -> list[dict[str, Any]]:
    return seen.on(topic)


def _wait(seen: Listener, topic: str, pred: Any, timeout: float = WAIT_S) -> dict[str, Any]:
    return seen.wait_for(topic, pred, timeout)


def _cmds(seen: Listener, device: str) -> list[dict[str, Any]]:
    # The listener subscribed to devices/+/cmd: messages carry no device, the topic does.
    with seen._lock:
        return [m for t, m in seen.messages if t == f"devices/{device}/cmd"]


def _wait_cmd(seen: Listener, device: str, pred: Any, timeout: float = WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in _cmds(seen, device):
            if pred(m):
                return m
        time.sleep(0.05)
    raise AssertionError(f"no matching command to {device}: {_cmds(seen, device)}")


def _notices(seen: Listener, device: str) -> list[dict[str, Any]]:
    with seen._lock:
        return [m for t, m in seen.messages if t == f"devices/{device}/notice"]


def test_an_alarm_puts_both_devices_in_pursuit_until_the_episode_ends(
    broker: LocalBroker, engine: EngineProcess, seen: Listener, pub: Publisher
) -> None:
    where = {"tag": offset(*HOME, 90.0, 3000.0)}
    # Her phone reports once and then ignores what it is told; his tag obeys.
    pub.fix("phone-1", *HOME)
    tag = ObedientDevice(parse_broker_url(broker.url), "tag-1", lambda: where["tag"], OWN_S)
    tag.start()
    try:
        # He comes within 100 m: an alarm.
        where["tag"] = offset(*HOME, 90.0, 100.0)
        tag.pace.now_due = True
        alarm = _wait(
            seen,
            "cic/alarms",
            lambda m: m["case_id"] == "BE-P-MQTT" and m["level"] in ("alarm", "escalation"),
        )
        # Both devices are asked, in the same decision, to report every PURSUIT_S.
        for dev in ("tag-1", "phone-1"):
            cmd = _wait_cmd(seen, dev, lambda m: m["command"] == "report_interval")
            assert cmd["interval_s"] == PURSUIT_S and cmd["until"] is not None
            assert cmd["issued"] == alarm["times"]["decided"]
            assert parse_timestamp(cmd["expires"]) > parse_timestamp(cmd["issued"])
            assert cmd["reason"].startswith(f"pursuit: report every {PURSUIT_S:g} s")
        assert alarm["pursuit"]["active"] and alarm["pursuit"]["possible"]
        assert {d["device"]: d["commands"] for d in alarm["pursuit"]["devices"]} == {
            "tag-1": "mqtt",
            "phone-1": "mqtt",
        }
        # Her phone never acknowledges: the command goes again, as often as allowed, then a
        # health alarm names it. His tag acknowledged and reports at pursuit pace: it is not
        # asked again.
        ignored = _wait(
            seen,
            "cic/alarms",
            lambda m: m["type"] == "pursuit_ignored" and m["state"] == "open",
            timeout=30.0,
        )
        assert ignored["case_id"] == "BE-P-MQTT" and ignored["trigger"]["device"] == "phone-1"
        assert "phone-1 ignores pursuit" in ignored["reason"]
        sends = [m["send"] for m in _cmds(seen, "phone-1") if m["command"] == "report_interval"]
        assert sends == [1, 2, 3]
        tag_asks = [m for m in _cmds(seen, "tag-1") if m["command"] == "report_interval"]
        assert [m["send"] for m in tag_asks] == [1]
        # The tag obeyed: since the command it reports at the pursuit's interval (its own
        # was OWN_S).
        asked = parse_timestamp(tag_asks[0]["issued"])
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            with tag._lock:
                since = [t for t in tag.sent if t >= asked]
            fast = [b - a for a, b in itertools.pairwise(since)]
            if len(fast) >= 3:
                break
            time.sleep(0.2)
        assert len(fast) >= 3 and max(fast) < OWN_S / 2, tag.sent
        # He leaves: the alarm ends, and TAIL_S later both devices get their own interval back.
        where["tag"] = offset(*HOME, 90.0, 3000.0)
        ended = _wait(
            seen,
            "cic/alarms",
            lambda m: m["alarm_id"] == alarm["alarm_id"] and m["state"] == "ended",
            timeout=30.0,
        )
        assert ended["pursuit"] is not None
        shown = {d["device"]: d for d in ended["pursuit"]["devices"]}
        assert shown["tag-1"]["acknowledged"] and not shown["phone-1"]["acknowledged"]
        assert shown["tag-1"]["cadence_s"] is not None and shown["tag-1"]["cadence_s"] < OWN_S / 2
        for dev in ("tag-1", "phone-1"):
            back = _wait_cmd(
                seen,
                dev,
                lambda m: m["command"] == "report_interval" and m["until"] is None,
                timeout=30.0,
            )
            assert back["interval_s"] == OWN_S
            assert (
                parse_timestamp(back["issued"])
                >= parse_timestamp(ended["times"]["decided"]) + TAIL_S - 1.0
            )  # the tail (the sweeps' grid: to the second)
        # The health alarm ends with the pursuit, and the tag is back at its own pace.
        _wait(
            seen,
            "cic/alarms",
            lambda m: m["alarm_id"] == ignored["alarm_id"] and m["state"] == "ended",
            timeout=30.0,
        )
        assert tag.pace.interval_s(now()) == OWN_S
    finally:
        tag.stop()
    # Her notices: graded by level, with the band, and nothing about where he is.
    # (A pre-alert at his first close fix, the alarm once it is confirmed.)
    mine = _notices(seen, "phone-1")
    levels = [n["level"] for n in mine]
    assert levels[:2] == ["pre_alert", "alarm"], mine
    ranks = ["pre_alert", "alarm", "escalation"]
    assert levels == sorted(levels, key=ranks.index)  # each notice more serious
    for n in mine:
        assert set(n) == {"notice_id", "kind", "level", "band", "text", "issued"}
        assert n["band"] == "under_200m" and "under 200 m from you" in n["text"]
    assert mine[0]["text"].startswith("Stay alert")
    assert "The police have been alerted" in mine[1]["text"] and "safe place" in mine[1]["text"]
    # His: the "move away" notice, which carries nothing about her.
    for n in _notices(seen, "tag-1"):
        assert set(n) == {"notice_id", "kind", "severity", "text", "issued"}


def test_an_owntracks_phone_gets_the_apps_own_commands(
    engine: EngineProcess, seen: Listener, pub: Publisher
) -> None:
    location = {
        "_type": "location",
        "tst": int(now()),
        "lat": HOME[0],
        "lon": HOME[1],
        "acc": 8,
        "tid": "px",
    }
    assert pub.raw("owntracks/jane/pixel", orjson.dumps(location)) == 0
    pub.fix("tag-2", *offset(*HOME, 0.0, 120.0))
    _wait(
        seen,
        "cic/alarms",
        lambda m: m["case_id"] == "BE-P-OT" and m["level"] in ("alarm", "escalation"),
    )
    config = _wait(seen, "owntracks/jane/pixel/cmd", lambda m: m["action"] == "setConfiguration")
    assert config == {
        "_type": "cmd",
        "action": "setConfiguration",
        "configuration": {
            "_type": "configuration",
            "monitoring": 2,  # move mode
            "locatorInterval": round(PURSUIT_S),
        },
    }
    assert _wait(seen, "owntracks/jane/pixel/cmd", lambda m: m["action"] == "reportLocation")
    # Its notice comes as the app shows one too.
    shown = _wait(seen, "owntracks/jane/pixel/cmd", lambda m: m["action"] == "action")
    assert shown["notification"].startswith(("Stay alert", "The police have been alerted"))
    # No native command reaches an OwnTracks phone's device topic.
    assert _cmds(seen, "phone-2") == []
    pub.fix("tag-2", *offset(*HOME, 0.0, 3000.0))


def test_an_http_only_device_cannot_be_commanded_and_the_alarm_says_so(
    engine: EngineProcess, seen: Listener, pub: Publisher
) -> None:
    pub.fix("phone-3", *HOME)
    pub.fix("tag-3", *offset(*HOME, 180.0, 150.0))
    alarm = _wait(
        seen,
        "cic/alarms",
        lambda m: m["case_id"] == "BE-P-HTTP" and m["level"] in ("alarm", "escalation"),
    )
    p = alarm["pursuit"]
    assert p["possible"] is False
    assert p["not_possible"] and p["not_possible"][0].startswith("tag-3: reports over HTTP only")
    devices = {d["device"]: d for d in p["devices"]}
    assert devices["tag-3"]["commands"] == "none" and devices["tag-3"]["asked_interval_s"] is None
    assert devices["phone-3"]["asked_interval_s"] == PURSUIT_S
    assert p["active"]  # her phone is in pursuit
    _wait_cmd(seen, "phone-3", lambda m: m["command"] == "report_interval")
    time.sleep(1.0)  # the sweep after the alarm: nothing may go to the HTTP-only tag
    assert _cmds(seen, "tag-3") == []
    # This case lets her see him: her notice has his position and the bearing to him; his
    # notice has nothing of hers.
    deadline = time.monotonic() + WAIT_S
    while not _notices(seen, "phone-3") and time.monotonic() < deadline:
        time.sleep(0.05)
    hers = _notices(seen, "phone-3")[0]
    assert hers["kind"] == "protection" and hers["level"] == "pre_alert"
    assert hers["band"] == "under_200m"
    assert hers["offender"]["lat"] == pytest.approx(offset(*HOME, 180.0, 150.0)[0], abs=1e-4)
    assert hers["bearing_deg"] == pytest.approx(180.0, abs=2.0)
    assert 100.0 < hers["distance_m"] < 200.0
    deadline = time.monotonic() + WAIT_S
    while not _notices(seen, "tag-3") and time.monotonic() < deadline:
        time.sleep(0.05)
    for n in _notices(seen, "tag-3"):
        assert set(n) == {"notice_id", "kind", "severity", "text", "issued"}
        assert not re.search(r"\d", n["text"])
    pub.fix("tag-3", *offset(*HOME, 180.0, 3000.0))
