"""The broker crashes (SIGKILL): with the deployment's configuration (deploy/mosquitto.conf)
every fix the broker acknowledged is processed, or, when the crash took the last ones before
they were saved, named by a data_gap alarm (the device's numbers show the gap); without
persistence the engine finds its session gone when it reconnects and says so, for every case,
with a data_gap alarm."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ingest.model import Fix
from ingest.subscriber import FixSubscriber
from ingest.transport import parse_broker_url
from proximity.health import GAP_SETTLE_S
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, import_cases, now
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.wallclock]

ROOT = Path(__file__).resolve().parent.parent
HOME = (50.8503, 4.3517)
CASES: list[dict[str, Any]] = [
    {
        "id": f"BE-S-{k}",
        "offenders": [f"tag-s{k}"],
        "protected": [f"phone-s{k}"],
        "order": {"distance_m": 500},
        "mobility": "walking",
    }
    for k in (1, 2)
]
#: Fixes queued for the engine while it is down, then the broker is killed.
QUEUED = 300


def test_a_killed_broker_without_persistence_is_a_data_gap_for_every_case(
    tmp_path: Path,
) -> None:
    with LocalBroker() as broker:
        db = import_cases(tmp_path, CASES)
        engine = EngineProcess(broker.url, db, tmp_path / "engine.log").start()
        try:
            pub = Publisher(broker.url)
            pub.fix("tag-s1", *offset(*HOME, 0.0, 3000.0))  # the engine has taken fixes
            pub.close()
            broker.kill()
            lost = now()
            broker.start(broker.port)  # the same URL; an empty broker
            cic = Listener(broker.url, ["cic/alarms"])
            try:

                def gap_per_case(m: dict[str, Any]) -> bool:
                    cases = {x["case_id"] for x in cic.on("cic/alarms") if x["type"] == "data_gap"}
                    return cases == {c["id"] for c in CASES}

                cic.wait_for("cic/alarms", gap_per_case, timeout=60.0)
                gaps = [m for m in cic.on("cic/alarms") if m["type"] == "data_gap"]
            finally:
                cic.close()
            assert len(gaps) == len(CASES)
            for g in gaps:
                assert (g["level"], g["state"]) == ("alarm", "open")
                assert "kept no session" in g["reason"] and "may be lost" in g["reason"]
                # The span starts when the engine lost the broker.
                since = g["reason"].split("between ")[1].split(" and ")[0]
                assert abs(_epoch(since) - lost) < 30.0
        finally:
            assert engine.stop() == 0, engine.log.read_text()[-2000:]
        assert "kept no session for the engine" in engine.log.read_text()


def test_with_the_deployment_configuration_a_killed_broker_loses_no_fix_unnamed(
    tmp_path: Path,
) -> None:
    with LocalBroker(config=ROOT / "deploy" / "mosquitto.conf") as broker:
        db = import_cases(tmp_path, CASES)
        args = ("--status-interval-s", "0.5")
        first = EngineProcess(broker.url, db, tmp_path / "engine1.log", *args).start()
        assert first.stop() == 0  # its session stays at the broker, on disk
        # While the engine is down, its fixes queue at the broker, each acknowledged (QoS 1):
        # she stands at home, he walks in to 100 m of her.
        pub = Publisher(broker.url)
        t0 = now() - QUEUED
        pub.fix("phone-s1", *HOME, ts=t0 - 20.0, seq=0)  # twice: a first fix alone is unchecked
        start = offset(*HOME, 0.0, 700.0)
        walk = [offset(*start, 180.0, 600.0 * k / (QUEUED - 3)) for k in range(QUEUED - 2)]
        for k, p in enumerate(walk):
            pub.fix("tag-s1", *p, ts=t0 + k, seq=k)
        pub.fix("phone-s1", *HOME, ts=now(), seq=1)
        pub.close()
        # Killed at once: Mosquitto saves a change after it has acknowledged it, so the last
        # fixes acknowledged before the crash may be gone (docs/operations.md).
        broker.kill()
        broker.start(broker.port)
        status = Listener(broker.url, ["proximity/status", "cic/alarms"])
        second = EngineProcess(broker.url, db, tmp_path / "engine2.log", *args).start()
        try:
            # The devices report once more: a gap in their numbers shows what was lost.
            pub = Publisher(broker.url)
            pub.fix("tag-s1", *walk[-1], ts=now(), seq=QUEUED - 2)
            pub.fix("phone-s1", *HOME, ts=now(), seq=2)
            pub.close()
            sent = QUEUED + 2
            done = status.wait_for(
                "proximity/status",
                lambda m: (
                    m.get("state") == "online" and m["fixes_processed"] + m["fixes_missing"] >= sent
                ),
                timeout=60.0 + GAP_SETTLE_S,  # a gap is named when it stayed open that long
            )
            # Every fix was processed, or is named as lost by a data_gap alarm of its case.
            assert done["fixes_processed"] + done["fixes_missing"] == sent
            gaps = [m for m in status.on("cic/alarms") if m["type"] == "data_gap"]
            named = sum(int(m["reason"].split("data gap: ")[1].split(" ")[0]) for m in gaps)
            assert named == done["fixes_missing"]
            for g in gaps:
                assert g["case_id"] == "BE-S-1" and "never arrived" in g["reason"]
            alarm = status.wait_for(
                "cic/alarms",
                lambda m: m["case_id"] == "BE-S-1" and m["level"] in ("alarm", "escalation"),
            )
            assert alarm["offender"]["device"] == "tag-s1"
        finally:
            status.close()
            assert second.stop() == 0, (tmp_path / "engine2.log").read_text()[-2000:]


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_held_acknowledgements_are_sent_once_and_never_into_a_new_session() -> None:
    """Messages the engine holds unacknowledged (a storage fault) keep their meaning: a message
    the broker sends again after a reconnect is acknowledged once, and none is acknowledged
    into a session the broker started afresh (its ids name other messages there)."""
    with LocalBroker(config=ROOT / "deploy" / "mosquitto.conf") as broker:
        sub = FixSubscriber(
            parse_broker_url(broker.url), "held-acks", session_expiry_s=600, clock=now
        )
        sub.start()
        try:
            assert sub.connected.wait(30.0)
            pub = Publisher(broker.url)
            for k in range(3):
                pub.fix("tag-s1", *HOME, ts=now() - 10 + k, seq=k)
            pub.close()
            items = _drain(sub, 3)
            assert [i.seq for i in items] == [0, 1, 2] and sub.unacknowledged == 3
            # The broker restarts with the session on disk: it sends the three again.
            broker.stop()
            sub.connected.clear()
            broker.start(broker.port)
            assert sub.connected.wait(30.0)
            again = _drain(sub, 3)
            assert [i.seq for i in again] == [0, 1, 2] and sub.unacknowledged == 6
            assert sub.acknowledge() == 3  # each once
            # Held again, then the broker loses everything: nothing goes into the new session.
            pub = Publisher(broker.url)
            pub.fix("tag-s1", *HOME, ts=now(), seq=3)
            pub.close()
            assert [i.seq for i in _drain(sub, 1)] == [3]
            broker.kill()
            assert broker.persistence_dir is not None
            for saved in broker.persistence_dir.iterdir():  # its store is lost
                saved.unlink()
            sub.connected.clear()
            broker.start(broker.port)
            assert sub.connected.wait(30.0)
            assert sub.acknowledge() == 0
        finally:
            sub.stop()


def test_a_batch_of_acknowledgements_in_one_write_reaches_the_broker() -> None:
    """The batch's PUBACKs go out as one write: the broker takes every one (the session
    comes back empty), and the ones not sent are what comes back."""
    with LocalBroker(config=ROOT / "deploy" / "mosquitto.conf") as broker:

        def session() -> FixSubscriber:
            sub = FixSubscriber(
                parse_broker_url(broker.url), "batched-acks", session_expiry_s=600, clock=now
            )
            sub.start()
            assert sub.connected.wait(30.0)
            return sub

        sub = session()
        pub = Publisher(broker.url)
        for k in range(1500):
            pub.fix(f"tag-{k % 50}", *HOME, ts=now() - 2000 + k, seq=k)
        pub.close()
        first: list[Fix] = []  # the first 1000 the broker hands out
        deadline = time.monotonic() + 30.0
        while len(first) < 1000 and time.monotonic() < deadline:
            items, _ = sub.drain(timeout=0.2, limit=1000 - len(first))
            first.extend(i for i in items if isinstance(i, Fix))
        assert len(first) == 1000
        assert sub.acknowledge() == 1000
        sub.stop()
        sub = session()
        try:
            rest = _drain(sub, 500)  # the other 500 again, none of the acknowledged
            assert sorted(f.seq for f in rest) == sorted(set(range(1500)) - {f.seq for f in first})
            assert _drain(sub, 1, timeout=1.0) == []
        finally:
            sub.stop()


def _drain(sub: FixSubscriber, n: int, timeout: float = 30.0) -> list[Fix]:
    """The next ``n`` fixes the subscriber queues (other items, such as a session loss, are
    skipped); bounded."""
    fixes: list[Fix] = []
    deadline = time.monotonic() + timeout
    while len(fixes) < n and time.monotonic() < deadline:
        items, _ = sub.drain(timeout=0.2)
        fixes.extend(i for i in items if isinstance(i, Fix))
    return fixes
