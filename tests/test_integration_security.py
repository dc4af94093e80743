"""The secured deployment, tried as an attacker on the same network would: a real Mosquitto
started with the configuration ``proximity broker config`` made from the registry (TLS, one
account per device, desk and engine, the generated ACL), the engine on it over TLS with its
own account, devices and CIC desks with theirs.

"Refused" is shown twice: by the broker's answer to the publish (MQTT 5 PUBACK reason code
135, not authorised) and by what reached the other side. "Nothing arrived" is asserted with a
barrier instead of a wait: after the attack, a sentinel pair is driven into breach by its own
devices; the broker hands messages on in the order it took them and the engine decides in
that order, so once the sentinel's alarm has arrived, anything the attack caused would be
there already.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.model import IngestError
from ingest.transport import Access, connect, disconnect, make_client, parse_broker_url
from simulator.broker import find_mosquitto, free_port
from simulator.process import EngineProcess, stop_process
from tests.conftest import Listener, Publisher, import_cases, now, run_cli
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.wallclock, pytest.mark.slow]

TELEPORT = ("--implausible-speed-mps", "1e9", "--dwell-s", "0", "--confirm-s", "0")
HOME = (50.8503, 4.3517)
FAR = offset(*HOME, 5000.0, 0.0)
NEAR = offset(*HOME, 50.0, 90.0)
NOT_AUTHORISED = 135
VICTIM = {"victim_name": "Els Maes", "victim_phone": "+32 470 12 34 56"}


def _case(n: int) -> dict[str, Any]:
    return {
        "id": f"BE-2026-000{n}",
        "offenders": [f"tag-{n}"],
        "protected": [f"phone-{n}"],
        "order": {"distance_m": 500},
        "summary": {"offender_name": f"Offender {n}", **VICTIM},
        "mobility": "walking",
    }


# 1: the normal flow; 2: the attacks' target; 3: the attacker's own case, the barrier.
# (One connection per account: the broker takes the account as the client id, so a second
# connection of the same account ends the first.)
CASES = [_case(1), _case(2), _case(3)]
DEVICES = [{"id": "phone-2", "owntracks": {"user": "els", "device": "pixel"}}]


@dataclass
class Secured:
    url: str
    ca: Path
    passwords: dict[str, str]
    engine: EngineProcess
    config: Path

    def access(self, account: str, password: str | None = None) -> Access:
        pw = self.passwords[account] if password is None else password
        return Access(account, pw, self.ca)

    def publisher(self, account: str) -> Publisher:
        return Publisher(self.url, self.access(account))

    def listener(self, account: str, topics: list[str]) -> Listener:
        return Listener(self.url, topics, self.access(account))


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    import socket

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"mosquitto did not start: {log.read_text(errors='replace')}")


def _passwords(out: Path) -> dict[str, str]:
    doc = json.loads((out / "accounts.json").read_text())
    return {a["account"]: a["password"] for a in doc["accounts"]}


def _start_broker(out: Path, port: int) -> subprocess.Popen[bytes]:
    """Mosquitto with the generated configuration in ``out``, listening on ``port``."""
    log = out.parent / "mosquitto.log"
    with log.open("wb") as fh:
        broker = subprocess.Popen(
            [find_mosquitto(), "-c", str(out / "mosquitto.conf")], stdout=fh, stderr=fh
        )
    _wait_port(port, broker, log)
    return broker


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    # Mosquitto started as root drops to its own user: the folder must be reachable by it.
    work = Path(tempfile.mkdtemp(prefix="proximity-secured-"))
    work.chmod(0o755)
    broker: subprocess.Popen[bytes] | None = None
    engine: EngineProcess | None = None
    try:
        db = import_cases(work, CASES, DEVICES)
        port = free_port()
        out = work / "broker"
        made = run_cli(
            "broker", "config", "--db", str(db), "--out", str(out), "--cic", "desk-1",
            "--cic", "desk-2", "--port", str(port), "--bind", "127.0.0.1",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        passwords = _passwords(out)
        broker = _start_broker(out, port)
        url = f"mqtts://127.0.0.1:{port}"
        ca = out / "ca.crt"
        engine = EngineProcess(
            url,
            db,
            work / "engine.log",
            "--broker-ca", str(ca),
            "--broker-username", "proximity-engine",
            "--broker-password-file", str(out / "engine.password"),
            "--anchor-interval-s", "1",
            *TELEPORT,
            watcher=Access("desk-2", passwords["desk-2"], ca),
        ).start()  # fmt: skip
        yield Secured(url, ca, passwords, engine, out)
        assert engine.stop() == 0, engine.log.read_text()
        engine = None
    finally:
        if engine is not None:
            engine.stop()
        stop_process(broker)
        shutil.rmtree(work, ignore_errors=True)


def _breach(
    s: Secured, n: int, desk: Listener, offender: Publisher | Listener | None = None
) -> dict[str, Any]:
    """Case n's own devices report the offender 50 m from the victim (through ``offender``, a
    client of the offender's account, when it is connected already): its alarm."""
    case = f"BE-2026-000{n}"
    victim = s.publisher(f"phone-{n}")
    own = offender is None
    tag = s.publisher(f"tag-{n}") if offender is None else offender
    try:
        assert victim.fix(f"phone-{n}", *HOME) == 0
        assert tag.raw(f"devices/tag-{n}/fix", _fix(*NEAR)) == 0
    finally:
        victim.close()
        if own:
            tag.close()
    return desk.wait_for(
        "cic/alarms", lambda m: m["case_id"] == case and m["level"] in ("alarm", "escalation")
    )


def _fix(lat: float, lon: float) -> bytes:
    return orjson.dumps({"ts": now(), "lat": lat, "lon": lon, "acc": 5.0})


def _location(lat: float, lon: float) -> bytes:
    return orjson.dumps({"_type": "location", "tst": int(now()), "lat": lat, "lon": lon})


def _answer(s: Secured, account: str, topic: str, payload: bytes, retain: bool = False) -> int:
    """The broker's answer to one publish by ``account`` on a connection of its own."""
    client = s.publisher(account)
    try:
        return client.raw(topic, payload, retain)
    finally:
        client.close()


def test_anonymous_wrong_password_plaintext_and_unverified_connections_are_refused(
    secured: Secured,
) -> None:
    broker = parse_broker_url(secured.url)
    cases = [
        (Access(ca_file=secured.ca), "refused"),  # anonymous
        (secured.access("tag-1", "not-the-password"), "refused"),
        (Access("nobody", "x", secured.ca), "refused"),
        (Access("tag-1", secured.passwords["tag-1"]), "does not verify"),  # system CAs only
    ]
    for access, said in cases:
        client = make_client("")
        with pytest.raises(IngestError, match=said):
            connect(client, broker, access=access, wait_s=5.0)
    plain = make_client("")
    with pytest.raises(IngestError, match="use mqtts://"):  # MQTT without TLS on the TLS port
        connect(plain, parse_broker_url(secured.url.replace("mqtts", "mqtt")), wait_s=2.0)
    disconnect(plain)


def test_an_engine_the_broker_refuses_stops_at_start_saying_why(
    secured: Secured, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-engines-password\n")
    result = run_cli(
        "run", "--broker", secured.url, "--db", str(secured.engine.db),
        "--journal", str(tmp_path / "j.sqlite"), "--evidence", str(tmp_path / "e.sqlite"),
        "--broker-ca", str(secured.ca), "--broker-username", "proximity-engine",
        "--broker-password-file", str(wrong),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "refused the connection (user proximity-engine-out): Not authorized" in result.stderr
    assert "not-the-engines-password" not in result.stderr + result.stdout
    assert secured.engine.proc is not None and secured.engine.proc.poll() is None  # untouched


def test_the_engine_devices_and_desks_work_over_tls_and_the_operator_is_the_account(
    secured: Secured,
) -> None:
    desk = secured.listener("desk-2", ["cic/alarms", "cic/evidence"])
    acker = secured.publisher("desk-1")
    try:
        alarm = _breach(secured, 1, desk)
        assert alarm["summary"]["victim_name"] == "Els Maes"
        # The payload claims someone else: the engine records the account, the claim beside.
        ack = {"alarm_id": alarm["alarm_id"], "operator": "chief", "ts": now()}
        assert acker.raw("cic/acks/desk-1", orjson.dumps(ack)) == 0
        seen = desk.wait_for(
            "cic/alarms", lambda m: m["alarm_id"] == alarm["alarm_id"] and bool(m.get("operator"))
        )
        assert seen["operator"] == "desk-1 (chief)"
        # The case's evidence head, signed, anchored on the CIC channel within a second.
        anchor = desk.wait_for("cic/evidence", lambda m: m["case_id"] == "BE-2026-0001")
    finally:
        desk.close()
        acker.close()
    assert secured.engine.status["state"] == "online"
    log = secured.engine.log.read_text()
    assert secured.passwords["proximity-engine"] not in log  # the secret is never logged
    assert "broker mqtts://127.0.0.1" in log and "user proximity-engine" in log
    # The public key, from the deployment; the export verifies with it and the anchor.
    db = str(secured.engine.db)
    key = run_cli("evidence", "key", "--db", db)
    assert key.returncode == 0, key.stderr
    assert anchor["key"] == key.stdout.strip()
    export = secured.config.parent / "BE-2026-0001.jsonl"
    exported = run_cli("evidence", "export", "BE-2026-0001", "--db", db, "--out", str(export))
    assert exported.returncode == 0, exported.stderr
    lines = export.read_bytes().splitlines()
    assert [orjson.loads(x)["anchor"] for x in lines if b'"anchor"' in x[:12]]
    checked = run_cli("evidence", "verify", str(export), "--public-key", key.stdout.strip())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "intact" in checked.stdout and "anchor(s) agree" in checked.stdout


def test_no_account_can_speak_for_another_and_an_offender_reads_nothing_of_the_victim(
    secured: Secured,
) -> None:
    desk = secured.listener("desk-2", ["cic/alarms", "cic/alarms/cap", "proximity/status"])
    # The offender of case 3 listens to everything it can name.
    spy = secured.listener(
        "tag-3", ["#", "cic/#", "devices/+/fix", "owntracks/#", "proximity/#", "$SYS/#"]
    )
    try:
        forged_alarm = orjson.dumps(
            {"alarm_id": "forged", "case_id": "BE-2026-0002", "level": "escalation"}
        )
        ack = orjson.dumps({"alarm_id": "x", "operator": "desk-2", "ts": now()})
        # The offender of case 2 attacks that case (Mosquitto answers a refused publish,
        # then ends the connection: each attempt connects anew).
        attempts = [
            # The victim's device placed next to the offender, a panic, the victim's OwnTracks app.
            ("tag-2", "devices/phone-2/fix", _fix(*NEAR)),
            ("tag-2", "devices/phone-2/event", orjson.dumps({"ts": now(), "type": "panic"})),
            ("tag-2", "owntracks/els/pixel", _location(*NEAR)),
            # Another offender's fix, an alarm, a CAP alert, an acknowledgement, a notice.
            ("tag-2", "devices/tag-1/fix", _fix(*HOME)),
            ("tag-2", "cic/alarms", forged_alarm),
            ("tag-2", "cic/alarms/cap", forged_alarm),
            ("tag-2", "cic/acks/tag-2", ack),
            ("tag-2", "cic/acks/desk-2", ack),
            ("tag-2", "devices/phone-2/notice", orjson.dumps({"notice": "forged"})),
            # A desk acknowledges only on its own topic, and publishes no alarm.
            ("desk-1", "cic/acks/desk-2", ack),
            ("desk-1", "cic/alarms", forged_alarm),
            # A desk's watching account only reads; the victim's device cannot close alarms.
            ("desk-1-watch", "cic/acks/desk-1", ack),
            ("phone-2", "cic/acks/phone-2", ack),
        ]
        for account, topic, body in attempts:
            assert _answer(secured, account, topic, body) == NOT_AUTHORISED, (account, topic)
        forged_status = orjson.dumps({"state": "online", "forged": True})
        answer = _answer(secured, "tag-2", "proximity/status", forged_status, retain=True)
        assert answer == NOT_AUTHORISED
        # The victim's own app may publish on its OwnTracks topic (far away: no alarm).
        assert _answer(secured, "phone-2", "owntracks/els/pixel", _location(*FAR)) == 0
        # The barrier: case 3 into breach by its own devices; its offender gets a notice.
        _breach(secured, 3, desk, offender=spy)
        spy.wait_for("devices/tag-3/notice", lambda m: True)
        alarms = desk.on("cic/alarms")
        assert not [m for m in alarms if m["alarm_id"] == "forged"]
        assert not [m for m in alarms if m["case_id"] == "BE-2026-0002"]
        assert all(s.get("forged") is None for s in desk.on("proximity/status"))
        # The offender got its own notices and commands (pursuit: report faster) and nothing
        # else: no alarm, no fix, no status; and nothing in them names the victim.
        topics = {t for t, _ in spy.messages}
        assert topics <= {"devices/tag-3/notice", "devices/tag-3/cmd"}, topics
        assert "devices/tag-3/notice" in topics
        text = b"".join(orjson.dumps(m) for _, m in spy.messages)
        assert b"Els" not in text and b"+32" not in text and b"phone-3" not in text
    finally:
        for c in (desk, spy):
            c.close()
    # A new reader of the retained status sees the engine's, not the forged one.
    fresh = secured.listener("desk-1", ["proximity/status"])
    try:
        status = fresh.wait_for("proximity/status", lambda m: True)
        assert status["state"] == "online" and "forged" not in status
    finally:
        fresh.close()


def test_a_rerun_keeps_the_passwords_and_removes_the_accounts_of_removed_devices(
    secured: Secured, tmp_path: Path
) -> None:
    # A copy of the configuration, so the running broker's files stay as they are.
    out = tmp_path / "broker"
    shutil.copytree(secured.config, out, ignore=shutil.ignore_patterns("data"))
    db = import_cases(tmp_path, CASES[:2], DEVICES)
    again = run_cli("broker", "config", "--db", str(db), "--out", str(out), "--cic", "desk-3")
    assert again.returncode == 0, again.stderr
    assert "removed accounts: phone-3, tag-3" in again.stdout
    assert "new accounts: desk-3, desk-3-watch" in again.stdout
    doc = json.loads((out / "accounts.json").read_text())
    after = {a["account"]: a["password"] for a in doc["accounts"]}
    assert after["tag-1"] == secured.passwords["tag-1"]
    assert {"desk-1", "desk-2", "desk-3"} <= set(after) and "tag-3" not in after
    assert (out / "ca.crt").read_bytes() == (secured.config / "ca.crt").read_bytes()
    acl = (out / "acl").read_text()
    assert "user tag-3" not in acl and "topic write cic/acks/desk-3" in acl


@dataclass
class Private:
    """A broker of a test's own, started with the configuration made for ``db``."""

    work: Path
    db: Path
    out: Path
    url: str
    made: subprocess.CompletedProcess[str]
    broker: subprocess.Popen[bytes]


@contextmanager
def _own_broker(prefix: str, cases: list[dict[str, Any]], *flags: str) -> Iterator[Private]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)  # Mosquitto started as root reads the files as its own user
    broker: subprocess.Popen[bytes] | None = None
    try:
        db = import_cases(work, cases)
        port, out = free_port(), work / "broker"
        made = run_cli(
            "broker", "config", "--db", str(db), "--out", str(out), "--port", str(port),
            "--bind", "127.0.0.1", *flags,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        broker = _start_broker(out, port)
        yield Private(work, db, out, f"mqtts://127.0.0.1:{port}", made, broker)
    finally:
        stop_process(broker)
        shutil.rmtree(work, ignore_errors=True)


def test_with_client_certificates_the_engine_connects_with_its_own() -> None:
    # Mutual TLS on a broker of its own: every client presents a certificate signed by the
    # deployment's CA besides its password; the engine's serves both its accounts.
    with _own_broker("proximity-mutual-", CASES[:1], "--client-certs", "--cic", "desk-1") as b:
        assert "--broker-cert" in b.made.stdout
        ca, passwords, certs = b.out / "ca.crt", _passwords(b.out), b.out / "certs"
        without = make_client("")
        with pytest.raises(IngestError, match="client certificate"):  # a password alone fails
            connect(
                without, parse_broker_url(b.url), access=Access("desk-1", passwords["desk-1"], ca)
            )
        desk = Access("desk-1", passwords["desk-1"], ca, certs / "desk-1.crt", certs / "desk-1.key")
        engine = EngineProcess(
            b.url,
            b.db,
            b.work / "engine.log",
            "--broker-ca", str(ca),
            "--broker-username", "proximity-engine",
            "--broker-password-file", str(b.out / "engine.password"),
            "--broker-cert", str(certs / "proximity-engine.crt"),
            "--broker-key", str(certs / "proximity-engine.key"),
            watcher=desk,
        ).start()  # fmt: skip
        # Online: both its clients connected with its certificate.
        assert engine.stop() == 0, engine.log.read_text()


def test_after_the_cases_change_a_rerun_and_a_reload_let_in_only_the_devices_of_the_cases() -> None:
    with _own_broker("proximity-reload-", CASES[:2]) as b:
        before = _passwords(b.out)
        # Case 2 ends, case 3 begins: the same command again (its listener is kept), a reload.
        removed = run_cli("cases", "remove", "BE-2026-0002", "--db", str(b.db))
        assert removed.returncode == 0, removed.stderr
        import_cases(b.work, [CASES[2]])
        again = run_cli("broker", "config", "--db", str(b.db), "--out", str(b.out))
        assert again.returncode == 0, again.stderr
        assert "removed accounts: phone-2, tag-2" in again.stdout
        pid_file = b.out / "data" / "mosquitto.pid"
        assert f'kill -HUP "$(cat {pid_file})"' in again.stdout
        pid = int(pid_file.read_text())
        assert pid == b.broker.pid  # the broker we started, by its pid
        os.kill(pid, signal.SIGHUP)
        ca, after = b.out / "ca.crt", _passwords(b.out)
        deadline = time.monotonic() + 10.0
        while True:  # the reload takes a moment
            client = make_client("")
            try:
                connect(client, parse_broker_url(b.url), access=Access("tag-3", after["tag-3"], ca))
                break
            except IngestError:
                assert time.monotonic() < deadline, "the new device was never let in"
                time.sleep(0.1)
        disconnect(client)
        gone = make_client("")
        with pytest.raises(IngestError, match="refused"):
            connect(gone, parse_broker_url(b.url), access=Access("tag-2", before["tag-2"], ca))
        kept = make_client("")
        connect(kept, parse_broker_url(b.url), access=Access("tag-1", before["tag-1"], ca))
        disconnect(kept)
