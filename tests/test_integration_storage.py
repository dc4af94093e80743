"""The disk under the journal and the evidence record fills up while the engine runs: it goes
on deciding, tells the CIC (an engine_fault alarm for every case, sent without the journal),
acknowledges to the broker nothing it could not write, and writes everything when the disk is
back. Killed during the fault, the next engine gets the unwritten fixes again from the broker
and raises the breach.

The full disk is a real one: a small tmpfs, which only root can mount (skipped otherwise)."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from storage.evidence import EvidenceLog, verify_lines
from tests.conftest import Listener, Publisher, import_cases, now
from tests.naive import offset

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.wallclock]

HOME = (50.8503, 4.3517)
CASES: list[dict[str, Any]] = [
    {
        "id": f"BE-D-{k}",
        "offenders": [f"tag-d{k}"],
        "protected": [f"phone-d{k}"],
        "order": {"distance_m": 500},
        "mobility": "walking",
    }
    for k in (1, 2)
]
WAIT_S = 60.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a small disk to fill is a tmpfs, and mounting one needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file that does it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def engine_args(disk: Path) -> tuple[str, ...]:
    return (
        "--journal",
        str(disk / "journal.sqlite"),
        "--evidence",
        str(disk / "evidence.sqlite"),
        "--status-interval-s",
        "0.5",
    )


def walk_in(pub: Publisher) -> float:
    """The offender of BE-D-1 reports from 100 m of the protected person: fixes a second
    apart, numbered 0 to 4; the time of the last."""
    t = now()
    for k in range(5):
        pub.fix("tag-d1", *offset(*HOME, 90.0, 100.0), ts=t - 4 + k, seq=k)
    return t


def start_apart(pub: Publisher, listener: Listener) -> None:
    """The protected people at home, the other offender far away: fixes on record."""
    t = now()
    for k in range(2):
        pub.fix("phone-d1", *HOME, ts=t - 1 + k)
        pub.fix("phone-d2", *HOME, ts=t - 1 + k)
        pub.fix("tag-d2", *offset(*HOME, 90.0, 3000.0), ts=t - 1 + k)
    listener.wait_for(
        "proximity/status",
        lambda m: m.get("state") == "online" and m["fixes_processed"] >= 6,
        timeout=WAIT_S,
    )


def fault_of(case_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "engine_fault" and m["case_id"] == case_id


def ended(alarm_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["alarm_id"] == alarm_id and m["state"] == "ended"


def is_breach(m: dict[str, Any]) -> bool:
    return (
        m["case_id"] == "BE-D-1"
        and m["type"] == "proximity"
        and m["state"] in ("open", "update")
        and m["level"] in ("alarm", "escalation")
    )


def test_a_full_disk_is_an_engine_fault_and_the_engine_decides_on_then_writes_it_all(
    tmp_path: Path, small_disk: Path
) -> None:
    with LocalBroker() as broker:
        db = import_cases(tmp_path, CASES)
        cic = Listener(broker.url, ["cic/alarms", "proximity/status"])
        engine = EngineProcess(broker.url, db, tmp_path / "engine.log", *engine_args(small_disk))
        engine.start()
        pub = Publisher(broker.url)
        try:
            start_apart(pub, cic)
            filler = fill(small_disk)
            walk_in(pub)
            # The first write the disk refuses: the CIC hears of it, for every case.
            faults = {}
            for case in CASES:
                faults[case["id"]] = cic.wait_for(
                    "cic/alarms", fault_of(case["id"]), timeout=WAIT_S
                )
            for f in faults.values():
                assert (f["state"], f["level"], f["journalled"]) == ("open", "alarm", False)
                assert "refuses writes" in f["reason"] and "disk" in f["reason"]
            # It decides on: the breach is alarmed during the fault, without the journal.
            breach = cic.wait_for("cic/alarms", is_breach, timeout=WAIT_S)
            assert breach["journalled"] is False
            held = cic.wait_for(
                "proximity/status",
                lambda m: m.get("storage") == "fault" and m["fixes_processed"] >= 11,
                timeout=WAIT_S,
            )
            assert held["storage_held"] > 0 and held["intake_unacknowledged"] >= 5
            assert "refuses writes" in held["storage_error"]

            filler.unlink()  # the disk is back
            for f in faults.values():
                cic.wait_for("cic/alarms", ended(f["alarm_id"]), timeout=WAIT_S)
            ok = cic.wait_for(
                "proximity/status",
                lambda m: m.get("storage") == "ok" and m["intake_unacknowledged"] == 0,
                timeout=WAIT_S,
            )
            assert ok["storage_held"] == 0 and ok["storage_error"] is None
        finally:
            pub.close()
            cic.close()
            assert engine.stop() == 0, engine.log.read_text()[-3000:]
        log = engine.log.read_text()
        assert "refuses writes" in log and "takes writes again" in log
    # Everything the fault held is on disk: the breach in the journal, delivered, and the
    # fixes that made it in the evidence record, whose chain verifies.
    with sqlite3.connect(small_disk / "journal.sqlite") as journal:
        rows = journal.execute(
            "SELECT delivered FROM outbox WHERE alarm_id = ?", (breach["alarm_id"],)
        ).fetchall()
    assert rows and all(d is not None for (d,) in rows)
    evidence = EvidenceLog(small_disk / "evidence.sqlite")
    try:
        lines = list(evidence.export("BE-D-1"))
    finally:
        evidence.close()
    count, _, problems = verify_lines(lines)
    assert problems == [] and count == len(lines) - 1  # every entry, then the head line
    recorded = sum(b'"fix"' in line and b"tag-d1" in line for line in lines)
    assert recorded >= 2  # the fixes before the fault and those during it


def test_an_engine_killed_during_the_fault_gets_the_unwritten_fixes_again(
    tmp_path: Path, small_disk: Path
) -> None:
    with LocalBroker() as broker:
        db = import_cases(tmp_path, CASES)
        cic = Listener(broker.url, ["cic/alarms", "proximity/status"])
        first = EngineProcess(broker.url, db, tmp_path / "engine1.log", *engine_args(small_disk))
        first.start()
        pub = Publisher(broker.url)
        try:
            start_apart(pub, cic)
            filler = fill(small_disk)
            last = walk_in(pub)
            cic.wait_for("cic/alarms", is_breach, timeout=WAIT_S)
            assert first.proc is not None
            first.proc.kill()  # the engine dies during the fault
            first.proc.wait()
            filler.unlink()
            cic.close()
            cic = Listener(broker.url, ["cic/alarms", "proximity/status"])
            second = EngineProcess(
                broker.url, db, tmp_path / "engine2.log", *engine_args(small_disk)
            )
            second.start()
            try:
                # The fixes the first engine could not record were never acknowledged: the
                # broker hands them to the second. When the protected person's phone reports
                # (the engine does not keep positions across a restart yet), the breach is
                # raised from them.
                pub.fix("phone-d1", *HOME, ts=now())
                breach = cic.wait_for("cic/alarms", is_breach, timeout=WAIT_S)
                assert "journalled" not in breach
                assert breach["offender"]["device"] == "tag-d1"
                assert _epoch(breach["offender"]["fix_time"]) == pytest.approx(last, abs=0.01)
                done = cic.wait_for(
                    "proximity/status",
                    lambda m: m.get("state") == "online" and m["fixes_processed"] >= 6,
                    timeout=WAIT_S,
                )
                assert done["storage"] == "ok" and done["intake_unacknowledged"] == 0
            finally:
                assert second.stop() == 0, second.log.read_text()[-3000:]
        finally:
            pub.close()
            cic.close()
            first.stop()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
