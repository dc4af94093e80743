"""The engine is killed (SIGKILL) and started again: its alarm book, its rules' state and its
devices' state are saved with each batch (in the journal's transaction) and put back before
the backlog is taken in, and a fix is acknowledged to the broker only once its effect is
saved. So an ongoing episode keeps its id (no second ``open``), an episode that ended while
the engine was down is ended, an operator's acknowledgement of an alarm raised before the
restart is applied, CAP alerts keep referencing the alarm's first alert, and no fix the
broker was told is processed is forgotten. Real Mosquitto, real engine processes."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from tests.conftest import Listener, import_cases, now
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.wallclock]

N = 150
CAP_NS = "{urn:oasis:names:tc:emergency:cap:1.2}"
#: Each case far from the others; the order distance is 500 m.
HOMES = [(50.0 + 0.02 * (k // 15), 3.5 + 0.03 * (k % 15)) for k in range(N)]
CASES: list[dict[str, Any]] = [
    {
        "id": f"BE-R-{k:03d}",
        "offenders": [f"tag-r{k:03d}"],
        "protected": [f"phone-r{k:03d}"],
        "order": {"distance_m": 500},
        "mobility": "walking",
    }
    for k in range(N)
]
#: Shorter rule timings than the defaults, so that a test takes seconds.
RULES = ("--confirm-s", "3", "--dwell-s", "4", "--sweep-interval-s", "0.5")
WAIT_S = 90.0


class Devices:
    """Every case's two devices, reporting in one burst per call (QoS 1, then all waited)."""

    def __init__(self, url: str) -> None:
        self.client = make_client("")
        connect(self.client, parse_broker_url(url))

    def report(self, distance_m: float, cases: range = range(N)) -> None:
        t = now()
        infos = []
        for k in cases:
            home = HOMES[k]
            there = offset(*home, 90.0, distance_m)
            for dev, (lat, lon) in ((f"phone-r{k:03d}", home), (f"tag-r{k:03d}", there)):
                body = orjson.dumps({"ts": t, "lat": lat, "lon": lon, "acc": 5.0})
                infos.append(self.client.publish(f"devices/{dev}/fix", body, qos=1))
        for info in infos:
            info.wait_for_publish(10.0)

    def close(self) -> None:
        disconnect(self.client)


def close_all(devices: Devices, engine: EngineProcess, cic: Listener) -> int | None:
    """Stop what a test started; the engine's exit status."""
    devices.close()
    stopped = engine.stop()
    cic.close()
    return stopped


def kill(engine: EngineProcess) -> None:
    assert engine.proc is not None
    os.kill(engine.proc.pid, signal.SIGKILL)
    engine.proc.wait(10.0)


def proximity_alarms(cic: Listener) -> dict[str, list[dict[str, Any]]]:
    """Each proximity alarm's distinct messages, in order (a re-published copy once)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[bytes] = set()
    for m in cic.on("cic/alarms"):
        key = orjson.dumps(m, option=orjson.OPT_SORT_KEYS)
        if m.get("type") == "proximity" and key not in seen:
            seen.add(key)
            out[m["alarm_id"]].append(m)
    return out


def wait(
    pred: Callable[[], bool],
    what: str,
    timeout: float = WAIT_S,
    tick: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if tick is not None:
            tick()
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def at_alarm(cic: Listener) -> set[str]:
    """Cases with a proximity alarm at level alarm or above."""
    return {
        m["case_id"]
        for ms in proximity_alarms(cic).values()
        for m in ms
        if m["level"] in ("alarm", "escalation")
    }


def _all_alarmed(cic: Listener) -> bool:
    return len(at_alarm(cic)) == N


def cap_references(cic: Listener) -> dict[str, list[tuple[str, str | None]]]:
    """Per alarm id (CAP ``incidents``): each alert's identifier and what it references (a
    re-published copy once)."""
    out: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for m in cic.on("cic/alarms/cap"):
        root = ET.fromstring(m["xml"])
        alert = (root.findtext(f"{CAP_NS}identifier") or "", root.findtext(f"{CAP_NS}references"))
        alerts = out[root.findtext(f"{CAP_NS}incidents") or ""]
        if alert not in alerts:
            alerts.append(alert)
    return out


@pytest.mark.parametrize(
    "moment", ["during the burst", "while alarms are being raised", "after all are raised"]
)
def test_a_killed_engine_goes_on_with_the_same_alarms(tmp_path: Path, moment: str) -> None:
    with LocalBroker() as broker:
        db = import_cases(tmp_path, CASES)
        cic = Listener(broker.url, ["cic/alarms", "cic/alarms/cap"])
        devices = Devices(broker.url)
        engine = EngineProcess(broker.url, db, tmp_path / "engine-1.log", *RULES).start()
        try:
            devices.report(100.0)
            if moment == "during the burst":
                time.sleep(0.3)
            elif moment == "while alarms are being raised":
                wait(
                    lambda: len(at_alarm(cic)) > 0,
                    "the first alarms",
                    tick=lambda: devices.report(100.0),
                )
            else:
                wait(
                    lambda: len(at_alarm(cic)) == N,
                    "every alarm",
                    tick=lambda: devices.report(100.0),
                )
            kill(engine)
            before = set(proximity_alarms(cic))
            # While the engine is down the breaches go on (the broker keeps the fixes).
            devices.report(100.0)
            engine = EngineProcess(broker.url, db, tmp_path / "engine-2.log", *RULES).start()
            wait(lambda: len(at_alarm(cic)) == N, "every alarm", tick=lambda: devices.report(100.0))
            # An operator acknowledges an alarm raised before the restart (or the first one).
            alarms = proximity_alarms(cic)
            target = sorted(before)[0] if before else sorted(alarms)[0]
            ack = {"alarm_id": target, "operator": "desk-3", "ts": now()}
            devices.client.publish("cic/acks", orjson.dumps(ack), qos=1).wait_for_publish(10.0)

            def acknowledged() -> bool:
                return any(m["state"] == "acknowledged" for m in proximity_alarms(cic)[target])

            wait(acknowledged, "the acknowledgement", tick=lambda: devices.report(100.0))

            # The pairs separate: every alarm ends.
            def all_ended() -> bool:
                return all(ms[-1]["state"] == "ended" for ms in proximity_alarms(cic).values())

            wait(all_ended, "every alarm to end", tick=lambda: devices.report(3000.0))
        finally:
            stopped = close_all(devices, engine, cic)
        assert stopped == 0, engine.log.read_text()[-3000:]
        alarms = proximity_alarms(cic)
        assert len(alarms) == N, f"{len(alarms)} alarm ids for {N} episodes"
        assert {ms[0]["case_id"] for ms in alarms.values()} == {c["id"] for c in CASES}
        for alarm_id, ms in alarms.items():
            states = [m["state"] for m in ms]
            assert states.count("open") == 1 and states[0] == "open", (alarm_id, states)
            assert states[-1] == "ended", (alarm_id, states)
        # CAP: every later alert of an alarm references its first one.
        for alarm_id, alerts in cap_references(cic).items():
            first = alerts[0][0]
            assert all(ref is not None and first in ref for _, ref in alerts[1:]), alarm_id
        log = (tmp_path / "engine-2.log").read_text()
        assert "restored the engine's state" in log or moment == "during the burst", log[-2000:]


def test_a_breach_that_ended_while_the_engine_was_down_is_ended(tmp_path: Path) -> None:
    with LocalBroker() as broker:
        db = import_cases(tmp_path, CASES[:20])
        cic = Listener(broker.url, ["cic/alarms"])
        devices = Devices(broker.url)
        engine = EngineProcess(broker.url, db, tmp_path / "engine-1.log", *RULES).start()
        try:
            wait(
                lambda: len(at_alarm(cic)) == 20,
                "every alarm",
                tick=lambda: devices.report(100.0, range(20)),
            )
            kill(engine)
            # Down: they separate, and report so, a few times; then nothing more comes.
            for _ in range(3):
                devices.report(3000.0, range(20))
                time.sleep(1.0)
            engine = EngineProcess(broker.url, db, tmp_path / "engine-2.log", *RULES).start()
            wait(
                lambda: all(ms[-1]["state"] == "ended" for ms in proximity_alarms(cic).values()),
                "every alarm to end without a new fix",
            )
        finally:
            stopped = close_all(devices, engine, cic)
        assert stopped == 0, engine.log.read_text()[-3000:]
        alarms = proximity_alarms(cic)
        assert len(alarms) == 20
        assert all([m["state"] for m in ms].count("open") == 1 for ms in alarms.values())


#: How many times the kill 50 ms after the first fixes is tried (PROXIMITY_RESTART_RUNS=20
#: for the 20 runs of the acceptance; 5 by default, to keep the suite short).
RUNS = int(os.environ.get("PROXIMITY_RESTART_RUNS", "5"))


def test_no_acknowledged_first_fix_is_forgotten_by_a_kill(tmp_path: Path) -> None:
    failures = []
    with LocalBroker() as broker:
        for run in range(RUNS):
            work = tmp_path / f"run-{run}"
            work.mkdir()
            db = import_cases(work, CASES)
            cic = Listener(broker.url, ["cic/alarms"])
            devices = Devices(broker.url)
            engine = EngineProcess(broker.url, db, work / "engine-1.log", *RULES).start()
            try:
                devices.report(100.0)  # every pair's first fixes, once
                time.sleep(0.05)
                kill(engine)
                engine = EngineProcess(broker.url, db, work / "engine-2.log", *RULES).start()
                try:
                    wait(partial(_all_alarmed, cic), "every alarm", timeout=30.0)
                except AssertionError:
                    failures.append((run, N - len(at_alarm(cic))))
            finally:
                stopped = close_all(devices, engine, cic)
            assert stopped == 0, engine.log.read_text()[-3000:]
    assert failures == [], f"(run, cases that never alarmed): {failures}"
