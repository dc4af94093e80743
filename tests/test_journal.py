"""The outbox journal keeps messages, in order, until they are marked delivered, across
reopening the file; while it refuses writes, the channel publishes all the same and journals
the messages later."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cic.channel import MqttAlarmChannel
from cic.journal import Journal
from ingest.transport import Access, connect, disconnect, make_client, parse_broker_url
from proximity.cases import Case
from proximity.errors import ProximityError
from proximity.memory import Delta
from service.broker import default_broker_user, write_config
from simulator.broker import LocalBroker
from tests.conftest import Listener, disk_back, disk_full


def test_undelivered_messages_survive_reopening_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    a = j.append([("A", "cic/alarms", b"1"), ("A", "cic/alarms/cap", b"<1/>")], 10.0)
    b = j.append([("B", "cic/alarms", b"2")], 11.0)
    assert a[0] < a[1] < b[0]
    j.mark_delivered([(a[0], 12.0)])
    j.close()
    j = Journal(path)  # a new process
    assert [(e.seq, e.alarm_id, e.topic, e.payload) for e in j.undelivered()] == [
        (a[1], "A", "cic/alarms/cap", b"<1/>"),
        (b[0], "B", "cic/alarms", b"2"),
    ]
    j.mark_delivered([(a[1], 13.0), (b[0], 13.0)])
    j.mark_delivered([(b[0], 14.0)])  # a repeated acknowledgement changes nothing
    assert j.undelivered() == []
    j.close()


def test_a_journal_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProximityError, match="does not exist"):
        Journal(tmp_path / "nope" / "j.sqlite")


@pytest.mark.broker
def test_a_journal_that_refuses_writes_holds_the_messages_and_writes_them_when_it_can(
    tmp_path: Path, broker: LocalBroker
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    db = journal._db
    disk_full(db)
    cic = Listener(broker.url, ["cic/alarms"])
    client = make_client("journal-test")
    connect(client, parse_broker_url(broker.url))
    channel = MqttAlarmChannel(client, "cic/alarms", journal)
    try:
        for i in range(10):
            channel.send({"alarm_id": f"A{i}", "times": {}, "pad": "x" * 3000})
        assert channel.retry.failing and 0 < channel.held < 10
        # Every message reaches the CIC, in order; those the journal refused say so.
        cic.wait_for("cic/alarms", lambda m: m["alarm_id"] == "A9")
        got = cic.on("cic/alarms")
        assert [m["alarm_id"] for m in got] == [f"A{i}" for i in range(10)]
        refused = [m["alarm_id"] for m in got if m.get("journalled") is False]
        assert refused == [f"A{i}" for i in range(10 - channel.held, 10)]
        deadline = time.monotonic() + 10.0
        while channel.unacknowledged and time.monotonic() < deadline:
            channel.poll()
            time.sleep(0.01)
        assert channel.unacknowledged == 0 and channel.retry.failing
        disk_back(db)  # the disk is back
        while channel.retry.failing and time.monotonic() < deadline:
            channel.poll()  # tries again when due (backoff)
            time.sleep(0.01)
        assert not channel.retry.failing and channel.held == 0
        # Everything is journalled, in order, and delivered.
        rows = db.execute("SELECT alarm_id, delivered FROM outbox ORDER BY seq").fetchall()
        assert [a for a, _ in rows] == [f"A{i}" for i in range(10)]
        assert all(d is not None for _, d in rows) and journal.undelivered() == []
    finally:
        cic.close()
        disconnect(client)
        journal.close()


@pytest.mark.broker
def test_a_refused_state_save_ends_with_the_next_write_that_goes_through(
    tmp_path: Path, broker: LocalBroker
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    db = journal._db
    disk_full(db, spare_pages=2)
    client = make_client("journal-state-test")
    connect(client, parse_broker_url(broker.url))
    channel = MqttAlarmChannel(client, "cic/alarms", journal)
    big = Delta(full=True, layout={"x": ("device", "<f8", (100_000,))})
    big.chunks = [("x", 0, np.zeros(100_000))]
    try:
        assert not channel.save_state(big)  # too big for the disk: refused, nothing held
        assert channel.retry.failing and channel.held == 0
        disk_back(db)  # the disk is back
        channel.send({"alarm_id": "A", "times": {}})  # a message goes through: fault over
        assert not channel.retry.failing
    finally:
        disconnect(client)
        journal.close()


@pytest.mark.broker
def test_a_message_the_broker_refuses_stays_undelivered_and_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An ACL that does not give the engine the topic it publishes on (the engine's settings
    # and the broker's configuration disagree): the broker answers "not authorised".
    work = Path(tempfile.mkdtemp(prefix="proximity-refused-"))
    work.chmod(0o755)  # Mosquitto started as root reads the files as its own user
    case = Case("A", ("tag-1",), ("phone-1",), 500.0, 1000.0)
    write_config(work, [case], [], broker_user=default_broker_user())
    passwords = {
        a["account"]: a["password"]
        for a in json.loads((work / "accounts.json").read_text())["accounts"]
    }
    journal = Journal(tmp_path / "j.sqlite")
    client = make_client("")
    try:
        with LocalBroker(config=work / "mosquitto.conf") as broker:
            out = Access("proximity-engine-out", passwords["proximity-engine-out"], work / "ca.crt")
            connect(client, parse_broker_url(broker.url.replace("mqtt:", "mqtts:")), access=out)
            channel = MqttAlarmChannel(client, "cic/elsewhere", journal)
            channel.send({"alarm_id": "A", "times": {}})
            deadline = time.monotonic() + 10.0
            while not channel.refused and time.monotonic() < deadline:
                channel.poll()
                time.sleep(0.01)
            assert len(channel.refused) == 1 and channel.unacknowledged == 1
            assert [e.alarm_id for e in journal.undelivered()] == ["A"]  # replayed at start
            assert "the broker refused message" in caplog.text
            disconnect(client)
    finally:
        journal.close()
        shutil.rmtree(work, ignore_errors=True)
