"""Poison messages through a real Mosquitto and the engine process: each is rejected with its
reason and acknowledged, and the breach that follows is alarmed; the same when the message
waited in the engine's persistent session while it was down, and it does not come back.

A message whose decoding raised inside paho's callback used to end paho's network thread:
the engine went on saying "online" with frozen counters, the message was never acknowledged,
and the session handed it to every later engine (after a restart, no fix was processed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, Publisher, import_cases, now, running_engine
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

ORDER_M = 500.0
HOME = (50.8503, 4.3517)
# No confirmation time and no dwell: one pair of fixes raises the alarm; teleports allowed.
ARGS = (
    "--implausible-speed-mps", "1e9", "--dwell-s", "0", "--confirm-s", "0",
    "--status-interval-s", "0.5",
)  # fmt: skip
DEVICES = [{"id": "phone-1", "owntracks": {"user": "jane", "device": "pixel"}}]


def _case(k: int) -> dict[str, Any]:
    return {
        "id": f"BE-POISON-{k}",
        "offenders": [f"tag-{k}"],
        "protected": [f"phone-{k}"],
        "order": {"distance_m": ORDER_M, "warning_distance_m": 2 * ORDER_M},
        "summary": {"victim_name": "test"},
    }


CASES = [_case(k) for k in range(1, 5)]


def poison(t: float) -> list[tuple[str, bytes, str]]:
    """(topic, payload, reason): the messages of the issue and others of their kind."""
    deep = b"[" * 900 + b"]" * 900
    dump = orjson.dumps
    return [
        ("devices/tag-1/event", dump({"ts": t, "type": ["panic"]}), "bad_type"),
        (
            "cic/acks",
            dump({"alarm_id": "a-1", "operator": "desk 4", "ts": t, "action": ["close"]}),
            "bad_type",
        ),
        ("devices/tag-1/event", dump({"ts": t, "type": {"kind": "panic"}}), "bad_type"),
        ("cic/acks", dump({"alarm_id": {"id": 1}, "operator": "desk 4", "ts": t}), "bad_type"),
        ("devices/tag-1/fix", dump({"ts": t, "lat": [50.85], "lon": 4.35}), "bad_type"),
        ("devices/tag-1/fix", b'{"ts": %d, "lat": 1, "lon": 1, "seq": %s}' % (t, deep), "bad_type"),
        ("devices/tag-1/fix", b'{"ts": %d, "lat": NaN, "lon": 4.35}' % t, "malformed_json"),
        ("devices/tag-1/fix", b"\xff\xfe\x00{", "malformed_json"),
        (
            "owntracks/jane/pixel",
            dump({"_type": "location", "tst": [int(t)], "lat": 50.85, "lon": 4.35}),
            "bad_type",
        ),
        ("devices/tag-1/event", dump({"ts": "²", "type": "panic"}), "bad_timestamp"),
    ]


def expected_counts(t: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, _, reason in poison(t):
        counts[reason] = counts.get(reason, 0) + 1
    return counts


@pytest.fixture
def cic(broker: LocalBroker) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "proximity/rejected", "proximity/status"])
    yield listener
    listener.close()


def breach(pub: Publisher, cic: Listener, k: int) -> dict[str, Any]:
    """Protected person k at home, offender k 200 m away (north-east): the alarm."""
    victim = (HOME[0] + 0.05 * k, HOME[1])
    pub.fix(f"phone-{k}", *victim)
    pub.fix(f"tag-{k}", *offset(*victim, 45.0, 200.0))
    alarm = cic.wait_for("cic/alarms", lambda m: m["case_id"] == f"BE-POISON-{k}")
    assert alarm["state"] == "open" and alarm["level"] in ("alarm", "escalation")
    assert alarm["distance_m"] == pytest.approx(200.0, abs=1.0)
    return alarm


def status_after(cic: Listener, engine: EngineProcess, fixes: int) -> dict[str, Any]:
    """The first status of ``engine`` (this process, not an earlier one's retained status)
    that has processed ``fixes`` fixes: it counts everything that came before them."""
    online_since = engine.status["online_since"]

    def ready(m: dict[str, Any]) -> bool:
        return (
            m.get("state") == "online"
            and m.get("online_since") == online_since
            and m.get("fixes_processed", 0) >= fixes
        )

    return cic.wait_for("proximity/status", ready)


def test_poison_messages_are_rejected_and_a_breach_still_alarms(
    broker: LocalBroker, tmp_path: Path, pub: Publisher, cic: Listener
) -> None:
    args = (*ARGS, "--client-id", "poison-live")
    with running_engine(broker, tmp_path, CASES, *args, devices=DEVICES) as engine:
        t = now()
        for topic, payload, _ in poison(t):
            pub.raw(topic, payload)
        breach(pub, cic, 1)
        status = status_after(cic, engine, 2)
        assert status["rejected"] == expected_counts(t)
        assert engine.proc is not None and engine.proc.poll() is None
        # Every poison message reached the rejection topic with its reason.
        rejected = cic.on("proximity/rejected")
        assert sorted(r["reason"] for r in rejected) == sorted(r for _, _, r in poison(t))
        assert "internal_error" not in engine.log.read_text()
        # And intake goes on: the next breach too.
        breach(pub, cic, 2)


def test_a_poison_message_waiting_in_the_session_is_taken_once(
    broker: LocalBroker, tmp_path: Path, pub: Publisher, cic: Listener
) -> None:
    args = (*ARGS, "--client-id", "poison-restart")
    db = import_cases(tmp_path, CASES, DEVICES)

    def engine(n: int) -> EngineProcess:
        return EngineProcess(broker.url, db, tmp_path / f"engine-{n}.log", *args).start()

    first = engine(1)  # creates the persistent session
    assert first.stop() == 0
    t = now()
    for topic, payload, _ in poison(t):  # queued by the broker for the stopped engine
        pub.raw(topic, payload)

    second = engine(2)
    try:
        breach(pub, cic, 3)
        status = status_after(cic, second, 2)
        assert status["rejected"] == expected_counts(t)
    finally:
        assert second.stop() == 0

    # Acknowledged after their batch: the next engine does not see them again.
    third = engine(3)
    try:
        breach(pub, cic, 4)
        status = status_after(cic, third, 2)
        assert status["rejected"] == {}
        assert status["messages_received"] == 2
    finally:
        assert third.stop() == 0
