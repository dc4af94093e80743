"""No alarm is lost: journalled before it is published, delivered when the broker is back,
and re-published by the next engine after a crash. Real Mosquitto, real engine processes."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, import_cases, now, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.wallclock]

HOME = (50.8100, 4.3800)
OFFENDERS = ["tag-d1", "tag-d2", "tag-d3"]
CASES = [
    {
        "id": f"BE-D-{k}",
        "offenders": [tag],
        "protected": ["phone-d"],
        "order": {"distance_m": 500},
        "summary": {"victim_name": "M. Peeters"},
    }
    for k, tag in enumerate(OFFENDERS, start=1)
]
#: Tags expected every 2, 3 and 4 s, no grace: signal lost at staggered moments. The phone
#: reports rarely (it stays out of the way).
DEVICES = [
    {"id": tag, "reporting_interval_s": 2 + k, "signal_grace_s": 0}
    for k, tag in enumerate(OFFENDERS)
] + [{"id": "phone-d", "reporting_interval_s": 3600}]


def undelivered(journal: Path) -> list[tuple[int, str, str]]:
    """(seq, alarm id, topic) of the journal's undelivered messages, in order."""
    with sqlite3.connect(journal) as db:
        return [
            (int(s), a, t)
            for s, a, t in db.execute(
                "SELECT seq, alarm_id, topic FROM outbox WHERE delivered IS NULL ORDER BY seq"
            )
        ]


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class CicSession:
    """A CIC-side client with a persistent session: the broker keeps its subscription and
    queues its messages across a broker restart (the broker saves sessions on disk)."""

    def __init__(self, url: str) -> None:
        self.alarms: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = make_client("cic-durable-listener")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: ready.set()
        connect(self.client, parse_broker_url(url), clean_start=False, session_expiry_s=600)
        self.client.subscribe("cic/alarms", qos=1)
        assert ready.wait(10.0)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.alarms.append(orjson.loads(msg.payload))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [a for a in self.alarms if a["type"] == kind]

    def close(self) -> None:
        disconnect(self.client)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = LocalBroker(workdir, persistence=True).start()
    yield b
    b.close()


def report_all(pub: Publisher) -> None:
    pub.fix("phone-d", *HOME)
    for k, tag in enumerate(OFFENDERS):
        pub.fix(tag, *offset(*HOME, 90.0 * k, 3000.0))


def test_alarms_raised_while_the_broker_is_away_all_arrive_in_order(
    broker: LocalBroker, tmp_path: Path
) -> None:
    cic = CicSession(broker.url)
    journal = tmp_path / "registry.journal.sqlite"
    try:
        with running_engine(broker, tmp_path, CASES, devices=DEVICES):
            pub = Publisher(broker.url)
            report_all(pub)
            pub.close()
            time.sleep(0.5)  # taken in
            broker.stop()
            # Each tag falls silent while the broker is down: three signal-lost alarms,
            # journalled (with their CAP forms), not delivered.
            wait_until(
                lambda: len({a for _, a, t in undelivered(journal) if t == "cic/alarms"}) >= 3,
                20.0,
                "three alarms in the journal",
            )
            order = [a for _, a, t in undelivered(journal) if t == "cic/alarms"]
            broker.start(broker.port)
            wait_until(lambda: len(cic.of_type("signal_lost")) >= 3, 60.0, "the alarms to arrive")
            arrived = [a["alarm_id"] for a in cic.of_type("signal_lost")]
            # Every one, in the order decided (QoS 1 may repeat one: the id tells).
            assert list(dict.fromkeys(arrived))[:3] == order[:3]
            wait_until(lambda: undelivered(journal) == [], 10.0, "the journal to mark delivery")
    finally:
        cic.close()


def test_an_alarm_journalled_before_a_crash_is_delivered_by_the_next_engine(
    broker: LocalBroker, tmp_path: Path
) -> None:
    journal = tmp_path / "registry.journal.sqlite"
    db = import_cases(tmp_path, CASES, DEVICES)
    first = EngineProcess(broker.url, db, tmp_path / "engine1.log").start()
    assert first.proc is not None
    try:
        pub = Publisher(broker.url)
        report_all(pub)
        pub.close()
        time.sleep(0.5)
        broker.stop()  # the alarm cannot be published...
        wait_until(lambda: len(undelivered(journal)) >= 2, 20.0, "an alarm in the journal")
        [(_, lost, _), *_] = undelivered(journal)
    finally:
        first.proc.kill()  # ... and the engine dies (SIGKILL): its MQTT queue is gone
        first.proc.wait(10.0)
    broker.start(broker.port)
    cic = CicSession(broker.url)
    try:
        # The next engine, on the same registry and journal, publishes it first.
        second = EngineProcess(broker.url, db, tmp_path / "engine2.log").start()
        try:
            wait_until(
                lambda: any(a["alarm_id"] == lost for a in cic.alarms),
                30.0,
                f"alarm {lost} to be re-published",
            )
            [alarm] = [a for a in cic.alarms if a["alarm_id"] == lost][:1]
            assert alarm["type"] == "signal_lost" and alarm["state"] == "open"
            wait_until(
                lambda: all(a != lost for _, a, _ in undelivered(journal)),
                10.0,
                "the journal to mark it delivered",
            )
        finally:
            assert second.stop() == 0, (tmp_path / "engine2.log").read_text()
    finally:
        cic.close()


def test_5000_fixes_sent_while_the_engine_is_down_are_each_processed_once(
    broker: LocalBroker, tmp_path: Path
) -> None:
    walking: list[dict[str, Any]] = [{"id": "phone-d", "mobility": "walking"}, *DEVICES[:3]]
    db = import_cases(tmp_path, CASES, walking)
    args = ("--status-interval-s", "0.5")
    first = EngineProcess(broker.url, db, tmp_path / "engine1.log", *args).start()
    assert first.stop() == 0  # the session (and its subscription) stays at the broker

    # While it is down: tag-d1 drives in over 250 s, 5,000 fixes (stamped in the past, 20 m/s).
    pub = Publisher(broker.url)
    t_down = now()
    start = offset(*HOME, 90.0, 5000.0)
    for k in range(5000):
        t = t_down - 255.0 + 0.05 * k
        pub.fix("tag-d1", *offset(*start, 270.0, 4900.0 * k / 4999), ts=t, seq=k)
    pub.fix("phone-d", *HOME, ts=now() - 20.0)  # she reports too (twice: a first fix
    pub.fix("phone-d", *HOME, ts=now())  # alone, unchecked, makes nothing certain)
    pub.close()

    status = Listener(broker.url, ["proximity/status", "cic/alarms"])
    second = EngineProcess(broker.url, db, tmp_path / "engine2.log", *args).start()
    try:
        done = status.wait_for(
            "proximity/status",
            lambda m: m.get("state") == "online" and m["fixes_processed"] >= 5002,
            timeout=60.0,
        )
        # Exactly once: every fix taken, none twice, none lost, none set aside.
        time.sleep(1.0)
        last = status.on("proximity/status")[-1]
        assert (last["fixes_processed"], last["fixes_duplicate"], last["fixes_late"]) == (
            5002,
            0,
            0,
        )
        assert last["fixes_implausible"] == 0 and done["messages_received"] >= 5002

        # And the alarm those fixes imply: he ends 100 m from her. The backlog alone is as old
        # as the restart took (he was driving at 20 m/s, so on a busy machine it only makes the
        # breach possible); his next fixes, live from where he stopped, confirm it (the first
        # after the gap is unchecked, so they hold for confirm_s, 15 s, like a likely breach).
        def breach(m: dict[str, Any]) -> bool:
            return (
                m["case_id"] == "BE-D-1"
                and m["type"] == "proximity"
                and m["level"] in ("alarm", "escalation")
            )

        first_seen = status.wait_for(
            "cic/alarms", lambda m: m["case_id"] == "BE-D-1" and m["type"] == "proximity"
        )
        assert first_seen["offender"]["device"] == "tag-d1"
        assert first_seen["distance_m"] == pytest.approx(100.0, abs=5.0)
        live = Publisher(broker.url)
        try:
            end = offset(*start, 270.0, 4900.0)
            for seq in range(5000, 5030):  # bounded: 30 live fixes, a second apart
                live.fix("tag-d1", *end, ts=now(), seq=seq)
                if any(breach(m) for m in status.on("cic/alarms")):
                    break
                time.sleep(1.0)
        finally:
            live.close()
        alarm = status.wait_for("cic/alarms", breach)
        assert alarm["offender"]["device"] == "tag-d1"
    finally:
        status.close()
        assert second.stop() == 0, (tmp_path / "engine2.log").read_text()[-2000:]
