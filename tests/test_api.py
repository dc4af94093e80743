"""The operator service over real HTTP, against a running engine on a real Mosquitto: cases
created and changed live, alarms acknowledged and closed, the live stream and its resumption,
roles, the audit log, /metrics."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.broker import LocalBroker, free_port
from simulator.metrics import epoch
from simulator.process import EngineProcess
from storage.registry import Registry
from tests.conftest import (
    WAIT_S,
    Listener,
    Publisher,
    add_users,
    import_cases,
    now,
    run_cli,
)
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock]

HOME = (50.8512345, 4.3523456)  # exact positions with all their digits, to look for
SUMMARY = {
    "offender_name": "P. Janssens",
    "victim_name": "M. Peeters",
    "victim_phone": "+32 470 11 22 33",
}
ROLE_OF = {"boss": "admin", "desk-1": "operator", "cm-1": "case_manager", "res-1": "researcher"}


def case(case_id: str, n: str, distance: float = 500.0) -> dict[str, Any]:
    return {
        "id": case_id,
        "offenders": [f"tag-{n}"],
        "protected": [f"phone-{n}"],
        "order": {"distance_m": distance, "warning_distance_m": 2 * distance},
        "summary": SUMMARY,
    }


class Api:
    def __init__(self, port: int, tokens: dict[str, str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.tokens = tokens

    def __call__(
        self, method: str, path: str, who: str | None = None, body: object = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        req = urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S) as resp:
                raw = resp.read()
                kind = resp.headers.get("content-type", "")
                return resp.status, json.loads(raw) if "json" in kind else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


class Stream:
    """A client of /api/stream in a thread: the (seq, message) events it got."""

    def __init__(self, api: Api, who: str, last_event_id: int | None = None) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []
        self._conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=WAIT_S)
        headers = {"Authorization": f"Bearer {api.tokens[who]}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._conn.request("GET", "/api/stream", headers=headers)
        self._resp = self._conn.getresponse()
        assert self._resp.status == 200
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        seq, data = 0, b""
        try:
            for line in self._resp:
                line = line.rstrip(b"\r\n")
                if line.startswith(b"id:"):
                    seq = int(line[3:])
                elif line.startswith(b"data:"):
                    data = line[5:].strip()
                elif not line and data:
                    self.events.append((seq, json.loads(data)))
                    data = b""
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            return  # closed by close(), in the middle of a read

    def wait_for(self, pred: Any) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e[1]):
                    return e
            time.sleep(0.02)
        raise AssertionError(f"no matching event: {self.events}")

    def close(self) -> None:
        self._conn.sock.shutdown(2) if self._conn.sock else None
        self._conn.close()


@pytest.fixture(scope="module")
def service(
    broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Api, EngineProcess, Path]]:
    tmp = tmp_path_factory.mktemp("api")
    db = import_cases(tmp, [case("BE-API-1", "1")])
    tokens = add_users(db, ROLE_OF)
    port = free_port()
    args = ("--dwell-s", "0", "--implausible-speed-mps", "1e9", "--http", f"127.0.0.1:{port}")
    proc = EngineProcess(broker.url, db, tmp / "engine.log", *args).start()
    yield Api(port, tokens), proc, db
    assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture(scope="module")
def cic(broker: LocalBroker) -> Iterator[Listener]:
    listener = Listener(broker.url, ["cic/alarms", "proximity/status"])
    yield listener
    listener.close()


PUBLISHED = {"fixes": 0}


def breach(pub: Publisher, n: str, distance_m: float) -> None:
    """The protected person at HOME, the offender ``distance_m`` north of her."""
    pub.fix(f"phone-{n}", *HOME)
    pub.fix(f"tag-{n}", *offset(*HOME, 0.0, distance_m))
    PUBLISHED["fixes"] += 2


def test_health_ready_and_the_openapi(service: tuple[Api, EngineProcess, Path]) -> None:
    api, _, _ = service
    assert api("GET", "/health") == (200, {"status": "ok"})
    status, ready = api("GET", "/ready")
    assert status == 200 and ready["ready"] and all(ready["checks"].values()), ready
    status, spec = api("GET", "/openapi.json")
    assert status == 200 and "/api/alarms/{alarm_id}/close" in spec["paths"]
    assert api("GET", "/docs")[0] == 200


def test_a_case_created_by_the_api_alarms_without_a_restart(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    bad = {"cases": [{**case("BE-API-2", "2"), "order": {"distance_m": -5}}]}
    status, body = api("POST", "/api/cases", "cm-1", bad)
    assert status == 422
    assert body["detail"][0]["msg"].startswith("cases[0] (BE-API-2): 'order.distance_m' must be")
    status, body = api("POST", "/api/cases", "cm-1", {"cases": [case("BE-API-2", "2")]})
    assert (status, body["created"], body["applied"]) == (200, ["BE-API-2"], True), body
    breach(pub, "2", 100.0)
    alarm = cic.wait_for(
        "cic/alarms", lambda m: m["case_id"] == "BE-API-2" and m["state"] == "open"
    )
    assert alarm["order_distance_m"] == 500.0


def test_the_order_distance_changed_live_is_the_next_decisions(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-3", "cm-1", case("BE-API-3", "3", 100.0))[0] == 200
    breach(pub, "3", 400.0)  # beyond the warning distance of 200 m: nothing
    status, body = api(
        "PATCH",
        "/api/cases/BE-API-3",
        "cm-1",
        {"order": {"distance_m": 500, "warning_distance_m": 1000}},
    )
    assert status == 200 and body["updated"] == ["BE-API-3"], body
    assert api("GET", "/api/cases/BE-API-3", "cm-1")[1]["order"]["distance_m"] == 500
    breach(pub, "3", 400.0)
    alarm = cic.wait_for("cic/alarms", lambda m: m["case_id"] == "BE-API-3")
    assert (alarm["state"], alarm["order_distance_m"]) == ("open", 500.0)


def test_cases_import_on_a_running_engine_takes_effect_at_once(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher, tmp_path: Path
) -> None:
    api, _, db = service
    path = tmp_path / "more.json"
    path.write_text(json.dumps({"cases": [case("BE-API-4", "4")]}))
    got = run_cli("cases", "import", str(path), "--db", str(db))
    assert got.returncode == 0, got.stderr
    with Registry(db) as registry:
        version = registry.last_change()  # the import's own change
    deadline = time.monotonic() + WAIT_S  # applied at the engine's next batch boundary
    while api("GET", "/api/status", "boss")[1]["registry_version"] < version:
        assert time.monotonic() < deadline, "the engine never applied the import"
        time.sleep(0.1)
    breach(pub, "4", 100.0)
    _open_alarm(cic, "BE-API-4")


def _open_alarm(cic: Listener, case_id: str) -> str:
    return cic.wait_for("cic/alarms", lambda m: m["case_id"] == case_id and m["state"] == "open")[
        "alarm_id"
    ]


def test_acknowledged_and_closed_by_the_api_shows_on_cic_alarms(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-5", "cm-1", case("BE-API-5", "5"))[0] == 200
    breach(pub, "5", 100.0)
    alarm_id = _open_alarm(cic, "BE-API-5")
    status, queue = api("GET", "/api/alarms", "desk-1")
    assert status == 200 and alarm_id in [a["alarm_id"] for a in queue["alarms"]]
    mine = next(a for a in queue["alarms"] if a["alarm_id"] == alarm_id)
    levels = {"pre_alert": "low", "alarm": "medium", "escalation": "high"}
    assert mine["awaiting_operator"] and mine["priority"] == levels[mine["level"]]
    status, got = api("POST", f"/api/alarms/{alarm_id}/acknowledge", "desk-1", {"note": "seen"})
    assert status == 200 and got["message"]["state"] == "acknowledged", got
    acked = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["state"] == "acknowledged"
    )
    assert acked["operator"] == "desk-1"
    # A close needs a resolution (or a note), from the list.
    assert api("POST", f"/api/alarms/{alarm_id}/close", "desk-1", {})[0] == 422
    assert api("POST", f"/api/alarms/{alarm_id}/close", "desk-1", {"resolution": "lunch"})[0] == 422
    status, got = api(
        "POST", f"/api/alarms/{alarm_id}/close", "desk-1", {"resolution": "intervention_sent"}
    )
    assert status == 200, got
    closed = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["state"] == "closed"
    )
    assert (closed["operator"], closed["resolution"]) == ("desk-1", "intervention_sent")
    assert (
        api(
            "POST", f"/api/alarms/{alarm_id}/close", "desk-1", {"resolution": "other", "note": "x"}
        )[0]
        == 409
    )
    status, one = api("GET", f"/api/alarms/{alarm_id}", "desk-1")
    assert [m["message"]["state"] for m in one["trail"]][-2:] == ["acknowledged", "closed"]
    assert api("POST", "/api/alarms/no-such-alarm/acknowledge", "desk-1", {})[0] == 404


def test_the_stream_delivers_and_resumes_without_a_gap(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-6", "cm-1", case("BE-API-6", "6"))[0] == 200
    stream = Stream(api, "desk-1")
    breach(pub, "6", 100.0)
    seq, first = stream.wait_for(lambda m: m["case_id"] == "BE-API-6")
    stream.close()
    # While no client listens: an acknowledgement and more fixes.
    assert api("POST", f"/api/alarms/{first['alarm_id']}/acknowledge", "desk-1")[0] == 200
    breach(pub, "6", 60.0)
    cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == first["alarm_id"] and m["state"] == "acknowledged"
    )
    again = Stream(api, "desk-1", last_event_id=seq)
    _, history = api("GET", "/api/alarms/history?limit=1000", "desk-1")
    expected = sorted(m["seq"] for m in history["messages"] if m["seq"] > seq)
    assert expected, "nothing happened after the first event"
    deadline = time.monotonic() + WAIT_S
    while [q for q, _ in again.events][: len(expected)] != expected:
        assert time.monotonic() < deadline, (again.events, expected)
        time.sleep(0.05)
    again.close()


def test_each_role_gets_403_on_what_it_may_not_do(
    service: tuple[Api, EngineProcess, Path],
) -> None:
    api, _, _ = service
    assert api("GET", "/api/alarms")[0] == 401
    assert api("GET", "/api/alarms", "pxt_not-a-token")[0] == 401
    forbidden = [
        ("res-1", "GET", "/api/alarms"),
        ("res-1", "GET", "/api/cases"),
        ("res-1", "GET", "/api/cases/BE-API-1/positions"),
        ("cm-1", "GET", "/api/alarms"),
        ("cm-1", "GET", "/api/stream"),
        ("desk-1", "GET", "/api/cases"),
        ("desk-1", "POST", "/api/cases"),
        ("desk-1", "GET", "/api/audit"),
        ("desk-1", "GET", "/api/research/alarms"),
        ("cm-1", "GET", "/api/audit"),
    ]
    for who, method, path in forbidden:
        status, body = api(method, path, who, {} if method == "POST" else None)
        assert status == 403, (who, method, path, status, body)
    assert api("GET", "/api/me", "res-1") == (200, {"name": "res-1", "role": "researcher"})


def test_a_researcher_never_sees_a_name_phone_id_or_exact_position(
    service: tuple[Api, EngineProcess, Path], cic: Listener
) -> None:
    api, _, _ = service
    status, raw = api("GET", "/api/research/alarms", "res-1")
    assert status == 200 and raw["messages"], raw
    text = json.dumps(raw)
    exact = [m for m in cic.on("cic/alarms") if m["victim"]["lat"] is not None]
    assert exact
    for secret in [*SUMMARY.values(), "BE-API-", "tag-", "phone-"]:
        assert secret not in text
    for m in exact[:20]:
        assert str(m["victim"]["lat"]) not in text and str(m["offender"]["lon"]) not in text
    cell = raw["messages"][0]["message"]["victim"]["cell"]
    assert cell is None or abs(cell["lat"] - HOME[0]) < 0.01


def test_every_position_read_is_in_the_audit_log(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, db = service
    assert api("PUT", "/api/cases/BE-API-7", "cm-1", case("BE-API-7", "7"))[0] == 200
    breach(pub, "7", 100.0)
    alarm_id = _open_alarm(cic, "BE-API-7")
    status, where = api("GET", "/api/cases/BE-API-7/positions", "desk-1")
    assert status == 200 and where["protected"][0]["device"] == "phone-7", where
    assert where["track"], "no recent track"
    status, _ = api("GET", f"/api/alarms/{alarm_id}", "desk-1")
    assert status == 200
    status, log = api("GET", "/api/audit?case_id=BE-API-7", "boss")
    rows = [(r["user"], r["alarm_id"], r["what"]) for r in log["audit"]]
    assert ("desk-1", alarm_id, "GET /api/cases/BE-API-7/positions") in rows
    assert ("desk-1", alarm_id, f"GET /api/alarms/{alarm_id}") in rows
    exported = run_cli("audit", "export", "--db", str(db), "--case", "BE-API-7")
    assert exported.returncode == 0 and alarm_id in exported.stdout
    # A case without an open alarm: no positions.
    assert api("GET", "/api/cases/BE-API-1/positions", "desk-1")[0] == 403


def test_ending_a_case_ends_its_open_alarms(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-8", "cm-1", case("BE-API-8", "8"))[0] == 200
    breach(pub, "8", 100.0)
    alarm_id = _open_alarm(cic, "BE-API-8")
    assert api("DELETE", "/api/cases/BE-API-8", "cm-1")[0] == 200
    ended = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["state"] == "ended"
    )
    assert "ended in the registry by api:cm-1" in ended["reason"]
    assert api("GET", "/api/cases/BE-API-8", "cm-1")[0] == 404


def test_metrics_parse_and_match_the_status(
    service: tuple[Api, EngineProcess, Path], cic: Listener
) -> None:
    api, _, _ = service
    deadline = time.monotonic() + WAIT_S
    while True:  # quiet: every fix published is taken
        status = api("GET", "/api/status", "boss")[1]
        if status.get("fixes_processed") == PUBLISHED["fixes"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    text = api("GET", "/metrics")[1]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    status = api("GET", "/api/status", "boss")[1]
    assert status["fixes_processed"] == PUBLISHED["fixes"]
    assert samples[("proximity_fixes_processed_total", ())] == PUBLISHED["fixes"]
    assert samples[("proximity_alarm_messages_total", ())] == status["alarms_published"]
    by_type = sum(
        v for (n, _), v in samples.items() if n == "proximity_alarm_messages_by_type_total"
    )
    assert by_type == status["alarms_published"]
    assert samples[("proximity_open_alarms", ())] == status["open_alarms"]
    assert samples[("proximity_alarms_unacknowledged", ())] == status["alarms_awaiting_operator"]
    assert samples[("proximity_messages_undelivered", ())] == status["messages_undelivered"]
    assert samples[("proximity_batch_size_fixes_count", ())] == status["batches"]
    # The queue (read from the journal) and the engine's own counts agree once nothing more
    # happens (time alone may open an alarm between two reads: a silent device).
    deadline = time.monotonic() + WAIT_S
    while True:
        queue = api("GET", "/api/alarms", "desk-1")[1]
        time.sleep(0.3)  # the counters are taken every 0.2 s
        status = api("GET", "/api/status", "boss")[1]
        seen = (queue["open"], queue["awaiting_operator"])
        if seen == (status["open_alarms"], status["alarms_awaiting_operator"]):
            break
        assert time.monotonic() < deadline, (seen, status)


def test_the_alarms_command_acknowledges_closes_and_watches(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-9", "cm-1", case("BE-API-9", "9"))[0] == 200
    breach(pub, "9", 100.0)
    alarm_id = _open_alarm(cic, "BE-API-9")
    env = dict(os.environ, PROXIMITY_API=api.base, PROXIMITY_API_TOKEN=api.tokens["desk-1"])
    watch = subprocess.Popen(
        [sys.executable, "-m", "cli", "alarms", "watch", "--queue"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or []), daemon=True)
    reader.start()
    try:
        acked = run_cli("alarms", "ack", alarm_id, "--note", "seen", env=env)
        assert acked.returncode == 0 and "ACKNOWLEDGED" in acked.stdout, acked
        assert "by desk-1" in acked.stdout
        refused = run_cli("alarms", "close", alarm_id, env=env)
        assert refused.returncode == 1 and "needs a 'resolution'" in refused.stderr, refused
        closed = run_cli("alarms", "close", alarm_id, "--resolution", "false_alarm", env=env)
        assert closed.returncode == 0 and "CLOSED" in closed.stdout, closed
        deadline = time.monotonic() + WAIT_S
        short = alarm_id[:8]
        while not any("CLOSED" in x and short in x for x in list(lines)):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        mine = [x for x in list(lines) if short in x]
        assert any("ACKNOWLEDGED" in x and "by desk-1" in x for x in mine), mine
        assert any(x.startswith("[") and "BE-API-9" in x for x in lines), lines  # --queue
    finally:
        watch.terminate()
        watch.wait(10)
        reader.join(10)
        if watch.stdout is not None:
            watch.stdout.close()
    no_token = dict(env, PROXIMITY_API_TOKEN="")
    got = run_cli("alarms", "ack", alarm_id, env=no_token)
    assert got.returncode == 1 and "no token" in got.stderr


def test_who_changed_what_is_in_the_case_s_evidence_record(
    service: tuple[Api, EngineProcess, Path], tmp_path: Path
) -> None:
    api, _, db = service
    assert api("PUT", "/api/cases/BE-API-10", "cm-1", case("BE-API-10", "10"))[0] == 200
    patch = {"order": {"distance_m": 300, "warning_distance_m": 600}}
    assert api("PATCH", "/api/cases/BE-API-10", "cm-1", patch)[0] == 200
    out = tmp_path / "BE-API-10.jsonl"
    got = run_cli("evidence", "export", "BE-API-10", "--db", str(db), "--out", str(out))
    assert got.returncode == 0, got.stderr
    entries = [json.loads(x) for x in out.read_text().splitlines()]
    changes = [e["body"] for e in entries if e.get("kind") == "change"]
    assert [(c["action"], c["actor"]) for c in changes] == [
        ("case_created", "api:cm-1"),
        ("case_changed", "api:cm-1"),
    ]
    assert changes[1]["detail"]["changed"]["order.distance_m"] == [500.0, 300]
    key = db.with_suffix(".evidence.pub")
    verified = run_cli("evidence", "verify", str(out), "--public-key", str(key))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_device_status_says_last_fix_battery_and_cadence(
    service: tuple[Api, EngineProcess, Path], pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-11", "cm-1", case("BE-API-11", "11"))[0] == 200
    start = now()
    for k in range(4):  # one fix every 2 s of fix time, the last with a battery level
        extra = {"battery": 61} if k == 3 else {}
        pub.fix("tag-11", *offset(*HOME, 0.0, 5000.0), ts=start - 6 + 2 * k, **extra)
        PUBLISHED["fixes"] += 1
    deadline = time.monotonic() + WAIT_S
    while True:
        status, body = api("GET", "/api/devices/status", "desk-1")
        assert status == 200, body
        tag = next(d for d in body["devices"] if d["device"] == "tag-11")
        if tag["battery_pct"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert tag["battery_pct"] == 61.0 and tag["cases"] == ["BE-API-11"], tag
    assert tag["reporting_interval_seen_s"] == pytest.approx(2.0), tag
    assert tag["role"] == "offender" and tag["last_fix_age_s"] is not None
    phone = next(d for d in body["devices"] if d["device"] == "phone-11")
    assert phone["last_fix"] is None and phone["battery_pct"] is None
    assert api("GET", "/api/devices/status", "res-1")[0] == 403


def test_alarms_watch_over_mqtt_prints_the_alarm_topic(
    service: tuple[Api, EngineProcess, Path], broker: LocalBroker, pub: Publisher
) -> None:
    api, _, _ = service
    watch = subprocess.Popen(
        [sys.executable, "-m", "cli", "alarms", "watch", "--broker", broker.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PROXIMITY_API"},
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or []), daemon=True)
    reader.start()
    try:
        assert watch.stderr is not None
        assert watch.stderr.readline().startswith("watching cic/alarms at mqtt://")
        assert api("PUT", "/api/cases/BE-API-12", "cm-1", case("BE-API-12", "12"))[0] == 200
        breach(pub, "12", 100.0)
        deadline = time.monotonic() + WAIT_S
        while not any("BE-API-12" in x and "OPEN" in x for x in list(lines)):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        watch.terminate()
        watch.wait(10)
        reader.join(10)
        for stream in (watch.stdout, watch.stderr):
            if stream is not None:
                stream.close()


def test_bad_queries_are_422_and_unknown_cases_404(
    service: tuple[Api, EngineProcess, Path],
) -> None:
    api, _, _ = service
    for query in ("since=yesterday", "until=garbage", "level=foo", "state=opened", "type=x"):
        status, body = api("GET", f"/api/alarms/history?{query}", "desk-1")
        assert status == 422, (query, body)
    # An offset is taken into account: 11:00+01:00 is 10:00Z (as text it would sort later).
    _, every = api("GET", "/api/alarms/history?limit=1000", "desk-1")
    times = sorted(m["message"]["times"]["decided"] for m in every["messages"])
    middle = datetime.fromisoformat(times[len(times) // 2].replace("Z", "+00:00"))
    ahead = middle.astimezone(timezone(timedelta(hours=1))).isoformat()
    _, utc = api("GET", f"/api/alarms/history?limit=1000&since={times[len(times) // 2]}", "desk-1")
    _, cet = api("GET", f"/api/alarms/history?limit=1000&since={quote(ahead)}", "desk-1")
    assert utc == cet and 0 < len(utc["messages"]) < len(every["messages"])
    status, body = api("GET", "/api/cases/NOPE/positions", "desk-1")
    assert status == 404 and "no case 'NOPE'" in body["detail"]
    status, body = api("GET", "/api/alarms", "pxt_made-up")
    assert status == 401 and "not valid" in body["detail"]


def test_a_revoked_token_ends_its_stream_and_its_requests(
    service: tuple[Api, EngineProcess, Path],
) -> None:
    api, _, db = service
    token = add_users(db, {"desk-gone": "operator"})["desk-gone"]
    api.tokens["desk-gone"] = token
    stream = Stream(api, "desk-gone")
    assert api("GET", "/api/me", "desk-gone")[0] == 200
    assert run_cli("users", "revoke", "desk-gone", "--db", str(db)).returncode == 0
    assert api("GET", "/api/me", "desk-gone")[0] == 401
    stream._thread.join(WAIT_S)  # the server ends it
    assert not stream._thread.is_alive()
    stream.close()


def test_the_answer_to_an_acknowledgement_is_audited_and_research_ids_are_hashed(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher
) -> None:
    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-13", "cm-1", case("BE-API-13", "13"))[0] == 200
    breach(pub, "13", 100.0)
    alarm_id = _open_alarm(cic, "BE-API-13")
    assert api("POST", f"/api/alarms/{alarm_id}/acknowledge", "desk-1")[0] == 200
    _, log = api("GET", "/api/audit?case_id=BE-API-13&user=desk-1", "boss")
    assert [r["what"] for r in log["audit"]] == [f"POST /api/alarms/{alarm_id}/acknowledge"]
    _, research = api("GET", "/api/research/alarms", "res-1")
    assert alarm_id not in json.dumps(research)
    ids = {m["message"]["alarm_id"] for m in research["messages"]}
    assert all(i.startswith("alarm-") for i in ids)


# Last: it stops the module's engine and runs another on the same files.
def test_an_operator_suspends_a_source_with_a_reason_and_never_an_escalation(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher, broker: LocalBroker
) -> None:
    from tests.test_cap import XSD
    from tests.test_formats import VALIDATOR

    api, _, _ = service
    assert api("PUT", "/api/cases/BE-API-S", "cm-1", case("BE-API-S", "s"))[0] == 200
    breach(pub, "s", 800.0)  # within the warning distance: a pre-alert
    alarm_id = _open_alarm(cic, "BE-API-S")
    until = datetime.fromtimestamp(now() + 30 * 60, UTC).isoformat()
    body = {"until": until, "note": "his workplace; confirmed by phone"}
    assert api("POST", f"/api/alarms/{alarm_id}/suspend", "desk-1", {"until": until})[0] == 422
    too_long = datetime.fromtimestamp(now() + 3 * 3600, UTC).isoformat()
    bad = {"until": too_long, "note": "x"}
    assert api("POST", f"/api/alarms/{alarm_id}/suspend", "desk-1", bad)[0] == 422
    # Or for a number of minutes by the engine's clock (what the console sends): 15 to 120,
    # and not both.
    for wrong in ({"minutes": 10, "note": "x"}, {"minutes": 30, "until": until, "note": "x"}):
        assert api("POST", f"/api/alarms/{alarm_id}/suspend", "desk-1", wrong)[0] == 422
    # The queue names each alarm's incident and the incident's priority.
    _, queue = api("GET", "/api/alarms", "desk-1")
    [mine] = [a for a in queue["alarms"] if a["alarm_id"] == alarm_id]
    assert mine["incident_id"] == mine["last"]["incident_id"] and mine["incident_priority"] == "low"
    # From a terminal, for the shortest time allowed, by the engine's clock.
    env = dict(os.environ, PROXIMITY_API=api.base, PROXIMITY_API_TOKEN=api.tokens["desk-1"])
    cmd = ("alarms", "suspend", alarm_id, "--for", "15", "--note", body["note"])
    done = run_cli(*cmd, env=env)
    assert done.returncode == 0 and "SUSPENDED" in done.stdout, done
    m = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["state"] == "suspended"
    )
    assert m["operator"] == "desk-1" and m["suspended_until"] is not None
    held_s = epoch(m["suspended_until"]) - epoch(m["times"]["decided"])
    assert 900 - 5 < held_s <= 900
    # Again over HTTP, for 30 minutes (a suspension can be renewed).
    status, got = api("POST", f"/api/alarms/{alarm_id}/suspend", "desk-1", body)
    assert status == 200 and got["message"]["state"] == "suspended", got
    m = got["message"]
    assert m["reason"].endswith(": his workplace; confirmed by phone")
    assert list(VALIDATOR.iter_errors(m)) == []
    if XSD.exists():
        from lxml import etree

        from cic.cap import CapFormatter

        schema = etree.XMLSchema(etree.parse(str(XSD)))
        xml = CapFormatter().alert(m)
        assert schema.validate(etree.fromstring(xml)), schema.error_log
        assert b"<valueName>suspended_until</valueName>" in xml
    # He comes close (a sudden move: a likely breach, confirmed by confirm_s of his fixes):
    # the escalation is never held back.
    for _ in range(40):
        breach(pub, "s", 100.0)
        time.sleep(0.5)
        if any(
            x["alarm_id"] == alarm_id and x["level"] == "escalation" for x in cic.on("cic/alarms")
        ):
            break
    esc = cic.wait_for(
        "cic/alarms", lambda m: m["alarm_id"] == alarm_id and m["level"] == "escalation"
    )
    assert esc["state"] == "update" and esc["suspended_until"] is None
    # An escalation cannot be suspended: 409 here, and on cic/acks a rejection with its
    # reason on proximity/rejected (and nothing held back).
    assert api("POST", f"/api/alarms/{alarm_id}/suspend", "desk-1", body)[0] == 409
    rejected = Listener(broker.url, ["proximity/rejected"])
    try:
        ack = {"alarm_id": alarm_id, "action": "suspend", "ts": now(), **body}
        pub.raw("cic/acks/desk-1", json.dumps(ack).encode())
        refused = rejected.wait_for(
            "proximity/rejected", lambda m: m["reason"] == "not_suspendable"
        )
        assert alarm_id in refused["detail"] and "escalation" in refused["detail"]
    finally:
        rejected.close()
    _, one = api("GET", f"/api/alarms/{alarm_id}", "desk-1")
    assert one["last"]["suspended_until"] is None and one["last"]["state"] != "suspended"
    assert one["incident"]["incident_id"] == one["incident_id"]
    assert alarm_id in [a["alarm_id"] for a in one["incident"]["alarms"]]


def test_incidents_are_published_next_to_the_alarms_and_validate(
    service: tuple[Api, EngineProcess, Path], cic: Listener, pub: Publisher, broker: LocalBroker
) -> None:
    import jsonschema

    from cic.messages import INCIDENT_SCHEMA_PATH
    from tests.test_formats import VALIDATOR

    incidents = jsonschema.Draft202012Validator(json.loads(INCIDENT_SCHEMA_PATH.read_text()))
    listener = Listener(broker.url, ["cic/alarms/incidents"])
    try:
        api, _, _ = service
        assert api("PUT", "/api/cases/BE-API-I", "cm-1", case("BE-API-I", "i"))[0] == 200
        breach(pub, "i", 100.0)
        alarm = cic.wait_for(
            "cic/alarms", lambda m: m["case_id"] == "BE-API-I" and m["state"] == "open"
        )
        assert list(VALIDATOR.iter_errors(alarm)) == []
        incident = listener.wait_for(
            "cic/alarms/incidents", lambda m: m["incident_id"] == alarm["incident_id"]
        )
        assert list(incidents.iter_errors(incident)) == []
        assert (incident["state"], incident["kind"], incident["subject"]) == (
            "open",
            "person",
            "phone-i",
        )
        assert incident["alarms"][0]["alarm_id"] == alarm["alarm_id"]
        assert incident["case_ids"] == ["BE-API-I"]
        # The API shows the engine's incident (members and priority, from its journalled
        # incident messages), not one of its own making.
        _, one = api("GET", f"/api/alarms/{alarm['alarm_id']}", "desk-1")
        seen = [
            m
            for m in listener.on("cic/alarms/incidents")
            if m["incident_id"] == alarm["incident_id"]
        ]
        assert one["incident"]["alarms"] in [m["alarms"] for m in seen]
        assert one["incident_priority"] in [m["priority"] for m in seen]
    finally:
        listener.close()


def test_a_restart_after_live_changes_goes_on_with_the_same_alarms(
    service: tuple[Api, EngineProcess, Path], broker: LocalBroker
) -> None:
    api, proc, db = service
    before = api("GET", "/api/alarms", "desk-1")[1]
    with Registry(db) as registry:
        version = registry.last_change()
    assert before["alarms"] and version > 0
    assert proc.stop() == 0, proc.log.read_text()
    again = EngineProcess(broker.url, db, db.parent / "engine-2.log", *proc.extra_args).start()
    try:
        after = api("GET", "/api/alarms", "desk-1")[1]
        # The same episodes go on (time may have opened others meanwhile: silence).
        kept = {a["alarm_id"] for a in before["alarms"]}
        assert kept <= {a["alarm_id"] for a in after["alarms"]}
        assert api("GET", "/api/status", "boss")[1]["registry_version"] == version
        assert "restored the engine's state" in again.log.read_text()
    finally:
        assert again.stop() == 0, again.log.read_text()
