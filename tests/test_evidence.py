"""The evidence record: hash-chained per case, exportable, and any alteration of an export
(a byte changed, a line removed, two lines swapped) is detected."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from storage.evidence import EvidenceLog, verify_lines
from tests.conftest import T0, run_cli


def record(tmp_path: Path) -> EvidenceLog:
    log = EvidenceLog(tmp_path / "registry.evidence.sqlite")
    for k in range(5):
        log.append(
            [
                ("A", T0 + k, "fix", {"device": "tag-1", "lat": 50.85 + k * 1e-4, "lon": 4.35}),
                ("B", T0 + k, "fix", {"device": "tag-2", "lat": 51.0, "lon": 4.0}),
            ]
        )
    log.append([("A", T0 + 9, "alarm", {"alarm_id": "x", "state": "open", "reason": "breach"})])
    return log


def lines_of(log: EvidenceLog, case: str) -> list[bytes]:
    return b"".join(log.export(case)).splitlines()


def test_an_untouched_export_verifies(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")
    n, head, problems = verify_lines(lines)
    assert (n, problems) == (6, []) and head == log.head("A")[1]
    assert orjson.loads(lines[-1]) == {"head": {"case_id": "A", "count": 6, "hash": head}}
    assert log.head("B")[0] == 5  # each case has its own chain


def test_a_single_changed_byte_a_removed_line_and_swapped_lines_are_detected(
    tmp_path: Path,
) -> None:
    lines = lines_of(record(tmp_path), "A")
    edited = list(lines)
    edited[2] = edited[2].replace(b"50.8502", b"50.8503")  # one digit of a position
    assert edited[2] != lines[2]
    removed = lines[:3] + lines[4:]
    swapped = [lines[0], lines[2], lines[1], *lines[3:]]
    last_removed = lines[:-2] + lines[-1:]
    truncated = lines[:-1]
    for altered, what in (
        (edited, "edited"),
        (removed, "removed"),
        (swapped, "reordered"),
        (last_removed, "does not match the chain"),
        (truncated, "truncated"),
    ):
        _, _, problems = verify_lines(altered)
        assert problems, what
        assert any(what in p.what for p in problems), (what, problems)


def test_the_cli_exports_and_verifies(tmp_path: Path) -> None:
    record(tmp_path).close()
    out = tmp_path / "A.jsonl"
    db = tmp_path / "registry.sqlite"
    exported = run_cli("evidence", "export", "A", "--db", str(db), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "exported 6 entries" in exported.stdout
    ok = run_cli("evidence", "verify", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith("intact: 6 entries")
    data = out.read_bytes()
    out.write_bytes(data.replace(b'"breach"', b'"breaco"', 1))  # a single byte
    bad = run_cli("evidence", "verify", str(out))
    assert bad.returncode == 1 and "ALTERED" in bad.stderr and "A.jsonl:6:" in bad.stdout
    missing = run_cli("evidence", "export", "NOPE", "--db", str(db))
    assert missing.returncode == 2 and "no evidence for case 'NOPE'" in missing.stderr


def test_retention_removes_old_fixes_but_keeps_the_chain_and_records_the_purge(
    tmp_path: Path,
) -> None:
    log = record(tmp_path)
    removed = log.purge(T0 + 2.5, keep_cases={"B"}, now=T0 + 100)  # B has an open alarm
    assert removed == {"A": 3}
    lines = lines_of(log, "A")
    n, _, problems = verify_lines(lines)
    assert (n, problems) == (7, [])
    entries = [orjson.loads(x) for x in lines[:-1]]
    assert [e["body"] is None for e in entries[:5]] == [True, True, True, False, False]
    assert entries[-1]["kind"] == "purge" and entries[-1]["body"]["fix_entries_removed"] == 3
    assert lines_of(log, "B")[0] and all(
        orjson.loads(x)["body"] is not None for x in lines_of(log, "B")[:-1]
    )


def test_the_record_is_append_only(tmp_path: Path) -> None:
    record(tmp_path).close()
    db = sqlite3.connect(tmp_path / "registry.evidence.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM evidence WHERE case_id='A' AND seq=2")
    with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
        db.execute("UPDATE evidence SET body=X'7B7D' WHERE case_id='A' AND seq=2")
    db.close()


def test_the_engine_records_each_used_fix_in_every_case_of_its_device(tmp_path: Path) -> None:
    from ingest.batch import build_batch
    from ingest.model import Fix
    from service.run import EngineService
    from service.settings import load_settings
    from tests.conftest import import_cases

    cases = [
        {"id": "A", "offenders": ["o1"], "protected": ["v"], "order": {"distance_m": 500}},
        {"id": "B", "offenders": ["o2"], "protected": ["v"], "order": {"distance_m": 500}},
    ]
    db = import_cases(tmp_path, cases)
    service = EngineService(load_settings(None, db=db))
    fixes = [
        Fix("v", T0, T0 + 0.1, 50.85, 4.35, 5.0, seq=1),
        Fix("o1", T0, T0 + 0.1, 50.95, 4.35, 5.0, seq=2),
        Fix("o2", T0, T0 + 0.1, 50.75, 4.35, float("nan")),
        Fix("o2", T0, T0 + 0.1, 50.75, 4.35, 5.0),  # a duplicate: not used, not recorded
    ]
    batch, _ = build_batch(fixes, service.engine.slot_of)
    service.engine.process(batch)
    service._record_fixes(batch)
    bodies = {
        c: [orjson.loads(x)["body"] for x in lines_of(service.evidence, c)[:-1]] for c in "AB"
    }
    assert [sorted(b["device"]) for b in bodies["A"]] == [["o1", "v"]]
    [b] = bodies["B"]
    columns = {d: (acc, seq) for d, acc, seq in zip(b["device"], b["acc_m"], b["seq"], strict=True)}
    assert columns == {"v": (5.0, 1), "o2": (-1.0, -1)}  # the unknown accuracy, no seq
    service.evidence.close()


def test_a_batch_whose_every_fix_is_set_aside_records_nothing(tmp_path: Path) -> None:
    # It used to stop the engine (an index error on an empty selection).
    from ingest.batch import build_batch
    from ingest.model import Fix
    from service.run import EngineService
    from service.settings import load_settings
    from tests.conftest import import_cases

    cases = [{"id": "A", "offenders": ["o"], "protected": ["v"], "order": {"distance_m": 500}}]
    db = import_cases(tmp_path, cases)
    service = EngineService(load_settings(None, db=db))
    first, _ = build_batch([Fix("o", T0, T0 + 0.1, 50.85, 4.35, 5.0)], service.engine.slot_of)
    service.engine.process(first)
    service._record_fixes(first)
    # 30 km in one second: a jump, set aside - the batch has no used fix.
    jump, _ = build_batch([Fix("o", T0 + 1, T0 + 1.1, 51.12, 4.35, 5.0)], service.engine.slot_of)
    service.engine.process(jump)
    assert service.engine.stats.fixes_implausible == 1
    service._record_fixes(jump)
    assert len(lines_of(service.evidence, "A")) == 2  # the first fix's entry and the head
    service.evidence.close()


def test_a_purge_the_file_refuses_removes_nothing_and_can_be_done_later(tmp_path: Path) -> None:
    log = record(tmp_path)
    # The purge's record is refused (as a full disk would refuse it) after its bodies were
    # removed in the same transaction: neither may stay.
    log._db.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON evidence WHEN NEW.kind = 'purge'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(sqlite3.Error):
        log.purge(T0 + 2.5, keep_cases=set(), now=T0 + 100)
    entries = [orjson.loads(x) for x in lines_of(log, "A")[:-1]]
    assert all(e["body"] is not None for e in entries) and entries[-1]["kind"] != "purge"
    log._db.execute("DROP TRIGGER refuse")  # the disk is back
    assert log.purge(T0 + 2.5, keep_cases=set(), now=T0 + 100)["A"] == 3
    n, _, problems = verify_lines(lines_of(log, "A"))
    assert (n, problems) == (7, [])
