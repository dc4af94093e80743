"""Device rules end to end through a real Mosquitto and the engine's CLI: signal lost and
back, a victim's panic button, a tag's strap removed, and a bad event rejected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, now, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

HOME = (50.8300, 4.4000)


def _case(cid: str, off: str, vic: str) -> dict[str, Any]:
    return {
        "id": cid,
        "offenders": [off],
        "protected": [vic],
        "order": {"distance_m": 500},
        "summary": {"offender_name": "D. Peeters", "victim_phone": "+32 470 11 22 33"},
        "mobility": "walking",
    }


CASES = [
    _case("BE-D-SILENT", "tag-q", "phone-q"),
    _case("BE-D-PANIC", "tag-p", "phone-p"),
]
DEVICES: list[dict[str, Any]] = [
    # A tag expected every second, with one second of grace: silent after 2 s.
    {"id": "tag-q", "reporting_interval_s": 1, "signal_grace_s": 1},
    # Everyone else is expected rarely, so that only tag-q can go silent here.
    *({"id": d, "reporting_interval_s": 3600} for d in ("phone-q", "tag-p", "phone-p")),
]


@pytest.fixture(scope="module")
def setup(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    tmp = tmp_path_factory.mktemp("devices")
    with running_engine(broker, tmp, CASES, devices=DEVICES) as proc:
        yield proc


@pytest.fixture
def cic(broker: LocalBroker, setup: EngineProcess) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "proximity/rejected"])
    yield listener
    listener.close()


def event(pub: Publisher, device: str, kind: str, **extra: Any) -> None:
    body = {"ts": now(), "type": kind, **extra}
    pub.raw(f"devices/{device}/event", orjson.dumps(body))


def test_a_silent_tag_raises_signal_lost_and_a_fix_ends_it(pub: Publisher, cic: Listener) -> None:
    pub.fix("phone-q", *HOME)
    pub.fix("tag-q", *offset(*HOME, 0, 4000))
    lost = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-D-SILENT" and m["type"] == "signal_lost"
    )
    assert (lost["level"], lost["state"]) == ("alarm", "open")
    assert lost["trigger"] == {"device": "tag-q", "seq": None, "cause": "time"}
    assert "no message from offender device tag-q" in lost["reason"]
    assert lost["summary"]["offender_name"] == "D. Peeters"
    pub.fix("tag-q", *offset(*HOME, 0, 3990), seq=5)
    back = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == lost["alarm_id"] and m["state"] == "ended"
    )
    assert back["trigger"] == {"device": "tag-q", "seq": 5, "cause": "fix"}


def test_panic_and_strap_removed_are_forwarded_as_their_own_alarms(
    pub: Publisher, cic: Listener
) -> None:
    pub.fix("tag-p", *offset(*HOME, 90, 900))
    here = offset(*HOME, 0, 10)
    event(pub, "phone-p", "panic", lat=here[0], lon=here[1], acc=9)
    panic = cic.wait_for("cic/alarms", lambda m: m["type"] == "panic")
    assert (panic["case_id"], panic["level"], panic["state"]) == (
        "BE-D-PANIC",
        "escalation",
        "open",
    )
    assert panic["victim"]["device"] == "phone-p" and panic["victim"]["acc_m"] == 9.0
    assert panic["victim"]["lat"] == pytest.approx(here[0], abs=1e-7)
    assert panic["offender"]["device"] == "tag-p" and panic["offender"]["lat"] is not None
    assert panic["category"] == "stalking" and panic["trigger"]["cause"] == "event"
    event(pub, "tag-p", "strap_removed")
    tamper = cic.wait_for("cic/alarms", lambda m: m["type"] == "tamper")
    assert (tamper["case_id"], tamper["level"]) == ("BE-D-PANIC", "alarm")
    assert "strap removed reported by offender device tag-p" in tamper["reason"]


def test_an_unknown_event_type_is_rejected_with_its_reason(pub: Publisher, cic: Listener) -> None:
    event(pub, "tag-p", "fire")
    rejected = cic.wait_for("proximity/rejected", lambda m: m["device"] == "tag-p")
    assert rejected["reason"] == "unknown_event" and "'fire'" in rejected["detail"]
    assert rejected["topic"] == "devices/tag-p/event"
