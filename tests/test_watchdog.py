"""The watchdog, with the service running in this process against a real Mosquitto: a
decision loop that stops going round, and an MQTT client whose network thread has died,
each become an engine_fault alarm for every case on the CIC channel and the exit status 3.
(The faults are made the only way a test can make them: the loop is held inside a batch,
and the client's network loop is stopped.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cic.messages import ALARM_SCHEMA_PATH
from ingest.batch import FixBatch
from proximity.events import AlarmEvent
from service.run import EXIT_FAULT, EngineService
from service.settings import load_settings
from simulator.broker import LocalBroker
from tests.conftest import Listener, Publisher, import_cases

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

CASES = [
    {"id": c, "offenders": [f"tag-{c}"], "protected": [f"phone-{c}"], "order": {"distance_m": 500}}
    for c in ("W-1", "W-2")
]


class Running:
    """An EngineService in a thread; ``exits`` records the status it asked to exit with."""

    def __init__(self, broker: LocalBroker, tmp: Path) -> None:
        db = import_cases(tmp, CASES)
        settings = load_settings(None, broker=broker.url, db=db, watchdog_s=1.0)
        self.exits: list[int] = []
        self.stop = threading.Event()
        self.exited = threading.Event()
        self._built = threading.Event()
        self.service: EngineService | None = None

        def serve() -> None:  # the service's SQLite files belong to the thread that opens them
            self.service = EngineService(settings, exit_process=self._exit)
            self._built.set()
            self.service.run(self.stop)

        self.thread = threading.Thread(target=serve, daemon=True)

    def _exit(self, status: int) -> None:
        self.exits.append(status)
        self.exited.set()
        self.stop.set()

    def __enter__(self) -> Running:
        self.thread.start()
        assert self._built.wait(60.0)
        return self

    @property
    def engine_service(self) -> EngineService:
        assert self.service is not None
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20.0)


@pytest.fixture
def cic(broker: LocalBroker) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "proximity/status"])
    yield listener
    listener.close()


def _faults(cic: Listener) -> list[dict[str, Any]]:
    """The engine_fault alarms, once one has come for each case."""

    def one_per_case(m: dict[str, Any]) -> bool:
        faults = {x["case_id"] for x in cic.on("cic/alarms") if x["type"] == "engine_fault"}
        return faults == {"W-1", "W-2"}

    cic.wait_for("cic/alarms", one_per_case)
    return [m for m in cic.on("cic/alarms") if m["type"] == "engine_fault"]


def _check(faults: list[dict[str, Any]], words: str) -> None:
    schema = jsonschema.Draft202012Validator(json.loads(ALARM_SCHEMA_PATH.read_text()))
    assert len(faults) == 2
    for m in faults:
        assert [e.message for e in schema.iter_errors(m)] == []
        assert (m["level"], m["state"]) == ("escalation", "open")
        assert words in m["reason"] and "not watched" in m["reason"]


def test_a_decision_loop_that_stops_is_an_engine_fault_and_an_exit(
    broker: LocalBroker, cic: Listener, tmp_path: Path
) -> None:
    with Running(broker, tmp_path) as run:
        held = threading.Event()
        release = threading.Event()
        process = run.engine_service.engine.process

        def stuck(batch: FixBatch) -> list[AlarmEvent]:
            held.set()
            release.wait(30.0)  # the loop is stuck inside a batch
            return process(batch)

        cic.wait_for("proximity/status", lambda m: m.get("state") == "online")
        run.engine_service.engine.process = stuck  # type: ignore[method-assign]
        pub = Publisher(broker.url)
        pub.fix("tag-W-1", 50.85, 4.35)
        assert held.wait(20.0)
        assert run.exited.wait(20.0), "the watchdog did not end the stuck engine"
        release.set()
        pub.close()
    assert run.exits == [EXIT_FAULT]
    _check(_faults(cic), "the decision loop has not gone round")


def test_a_dead_network_thread_is_an_engine_fault_and_an_exit(
    broker: LocalBroker, cic: Listener, tmp_path: Path
) -> None:
    with Running(broker, tmp_path) as run:
        cic.wait_for("proximity/status", lambda m: m.get("state") == "online")
        run.engine_service.subscriber._client.loop_stop()  # the thread that receives every message
        assert run.exited.wait(20.0), "the watchdog did not see the dead network thread"
    assert run.exits == [EXIT_FAULT]
    _check(_faults(cic), "network thread has stopped")
