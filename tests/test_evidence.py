"""The evidence record: hash-chained and signed per case, exportable, and any alteration of an
export or of the file is detected: a byte changed, a line removed, two lines swapped, an entry
edited with every hash after it recomputed, a cut end with a rewritten head line, bodies
removed without a purge, an anchor forged or beyond the end, another key's signatures."""

from __future__ import annotations

import re
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cic.journal import Journal
from proximity.clock import iso_utc
from proximity.errors import ProximityError
from storage.evidence import (
    GENESIS,
    EvidenceLog,
    canonical,
    entry_hash,
    export_message,
    head_message,
    sha256,
    verify_export,
    verify_lines,
)
from storage.signing import EvidenceKey
from tests.conftest import T0, disk_full, run_cli

#: The evidence record's schema before entries were signed (no ``sig`` column, a guard that
#: lets any body be removed).
OLD_SCHEMA = """
CREATE TABLE evidence (
    case_id TEXT NOT NULL, seq INTEGER NOT NULL, t REAL NOT NULL, kind TEXT NOT NULL,
    body BLOB, body_hash TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (case_id, seq)
);
CREATE INDEX evidence_by_time ON evidence(kind, t);
CREATE TRIGGER evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'the evidence record is append-only'); END;
CREATE TRIGGER evidence_no_rewrite BEFORE UPDATE ON evidence
WHEN NEW.case_id IS NOT OLD.case_id OR NEW.seq IS NOT OLD.seq OR NEW.t IS NOT OLD.t
  OR NEW.kind IS NOT OLD.kind OR NEW.body_hash IS NOT OLD.body_hash
  OR NEW.prev IS NOT OLD.prev OR NEW.hash IS NOT OLD.hash OR NEW.body IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'evidence entries are never rewritten, only purged'); END;
"""


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


def lines_of(
    log: EvidenceLog, case: str, anchors: list[dict[str, Any]] | None = None
) -> list[bytes]:
    return b"".join(log.export(case, anchors or (), now=T0 + 60)).splitlines()


def problems_of(lines: list[bytes], public_key: str | None = None) -> list[tuple[int, str]]:
    return [(p.line, p.what) for p in verify_lines(lines, public_key)[2]]


def rehashed(lines: list[bytes], edit: Callable[[list[dict[str, Any]]], None]) -> list[bytes]:
    """What whoever can write an export, without the key, can make of it: its entries edited
    (or removed), then every body hash, the chain and the head line's count and hash
    recomputed with the module's own functions; the signatures left as they were."""
    docs = [orjson.loads(x) for x in lines]
    entries = [d for d in docs if "seq" in d]
    anchors = [d for d in docs if "anchor" in d]
    head = docs[-1]["head"]
    edit(entries)
    prev = GENESIS
    for e in entries:
        if e["body"] is not None:
            e["body_hash"] = sha256(canonical(e["body"]))
        e["prev"] = prev
        e["hash"] = prev = entry_hash(
            prev, e["case_id"], e["seq"], e["t"], e["kind"], e["body_hash"]
        )
    head |= {"count": len(entries), "hash": prev}
    return [orjson.dumps(d) for d in [*entries, *anchors, {"head": head}]]


def resigned(lines: list[bytes], key: EvidenceKey) -> list[bytes]:
    """What whoever also holds a key can make of an export: every entry and the head line
    signed again (with ``key``)."""
    docs = [orjson.loads(x) for x in lines]
    for d in docs:
        if "seq" in d:
            d["sig"] = key.sign(head_message(d["case_id"], d["seq"], d["hash"]))
    head = docs[-1]["head"]
    fields = [head[k] for k in ("case_id", "count", "hash", "exported", "anchors")]
    head |= {"key": key.public_key, "signature": key.sign(export_message(*fields))}
    return [orjson.dumps(d) for d in docs]


def resigned_head(lines: list[bytes], log: EvidenceLog) -> list[bytes]:
    """The head line signed again with the record's key (an export made by the engine's host
    of a record altered in its file)."""
    docs = [orjson.loads(x) for x in lines]
    head = docs[-1]["head"]
    fields = [head[k] for k in ("case_id", "count", "hash", "exported", "anchors")]
    head["signature"] = EvidenceKey.load(log.key_path).sign(export_message(*fields))
    return [orjson.dumps(d) for d in docs]


def move_third_fix(entries: list[dict[str, Any]]) -> None:
    entries[2]["body"]["lat"] = 50.86  # about 1 km north


def test_an_untouched_export_verifies(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")
    n, head, problems = verify_lines(lines, log.public_key)
    assert (n, problems) == (6, []) and head == log.head("A")[1]
    last = orjson.loads(lines[-1])["head"]
    assert last.pop("signature")
    assert last == {
        "case_id": "A",
        "count": 6,
        "hash": head,
        "anchors": 0,
        "exported": iso_utc(T0 + 60),  # lines_of exports at T0 + 60
        "key": log.public_key,
    }
    assert log.head("B")[0] == 5  # each case has its own chain


def test_each_write_signs_every_entry(tmp_path: Path) -> None:
    log = EvidenceLog(tmp_path / "registry.evidence.sqlite")
    log.append(
        [
            ("A", T0, "fix", {"device": ["tag-1"]}),
            ("B", T0, "fix", {"device": ["tag-2"]}),
            ("A", T0 + 1, "fix", {"device": ["tag-1"]}),
            ("A", T0 + 2, "alarm", {"alarm_id": "x", "state": "open"}),
        ]
    )
    signed = {c: [orjson.loads(x)["sig"] is not None for x in lines_of(log, c)[:-1]] for c in "AB"}
    assert signed == {"A": [True, True, True], "B": [True]}
    assert problems_of(lines_of(log, "A"), log.public_key) == []


def test_the_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.evidence.sqlite"
    log = EvidenceLog(path)
    key = tmp_path / "registry.evidence.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    assert (tmp_path / "registry.evidence.pub").read_text() == log.public_key + "\n"
    log.close()
    seed = key.read_text()
    again = EvidenceLog(path)
    assert again.public_key == log.public_key and key.read_text() == seed
    again.close()
    elsewhere = EvidenceLog(path, tmp_path / "elsewhere.key")
    assert elsewhere.public_key != log.public_key
    elsewhere.close()


def test_a_key_file_that_holds_no_key_or_cannot_be_read_is_refused_by_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.evidence.sqlite"
    bad = tmp_path / "bad.key"
    bad.write_text("0123 not a key\n")
    with pytest.raises(ProximityError, match=f"the evidence key {re.escape(str(bad))} holds no"):
        EvidenceLog(path, bad)
    unreadable = tmp_path / "folder.key"
    unreadable.mkdir()
    with pytest.raises(
        ProximityError, match=f"cannot read the evidence key {re.escape(str(unreadable))}"
    ):
        EvidenceLog(path, unreadable)
    with pytest.raises(
        ProximityError, match=f"no evidence key at {re.escape(str(tmp_path / 'none.key'))}"
    ):
        EvidenceLog(path, tmp_path / "none.key", create_key=False)
    assert not (tmp_path / "none.key").exists()


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
    assert "exported 6 entries and 0 anchor(s)" in exported.stdout
    # No journal, no anchors: said, and no journal made.
    assert "no journal at" in exported.stderr and not db.with_suffix(".journal.sqlite").exists()
    ok = run_cli("evidence", "verify", str(out))
    assert ok.returncode == 0 and ok.stdout.startswith("intact: 6 entries")
    assert "only that the export is consistent" in ok.stdout and "--public-key" in ok.stdout
    data = out.read_bytes()
    out.write_bytes(data.replace(b'"breach"', b'"breaco"', 1))  # a single byte
    bad = run_cli("evidence", "verify", str(out))
    assert bad.returncode == 1 and "ALTERED" in bad.stderr and "A.jsonl:6:" in bad.stdout
    missing = run_cli("evidence", "export", "NOPE", "--db", str(db))
    assert missing.returncode == 2 and "no evidence for case 'NOPE'" in missing.stderr


def test_a_signed_export_verifies_with_only_the_file_and_the_public_key(tmp_path: Path) -> None:
    log = record(tmp_path)
    anchors = [log.anchor("A", T0 + 10), log.anchor("B", T0 + 10)]
    log.close()
    db = tmp_path / "registry.sqlite"
    journal = Journal(db.with_suffix(".journal.sqlite"))
    journal.append(
        [
            ("anchor-A", "cic/evidence", orjson.dumps(anchors[0])),
            ("anchor-B", "cic/evidence", orjson.dumps(anchors[1])),
            ("x", "cic/alarms", b'{"type": "evidence_anchor", "case_id": "A"}'),
        ],
        now=T0 + 10,
    )
    journal.close()
    key = run_cli("evidence", "key", "--db", str(db))
    assert key.returncode == 0, key.stderr
    public = key.stdout.strip()
    assert public == (tmp_path / "registry.evidence.pub").read_text().strip()
    court = tmp_path / "court"
    court.mkdir()
    out = court / "A.jsonl"
    exported = run_cli("evidence", "export", "A", "--db", str(db), "--out", str(out))
    assert "exported 6 entries and 1 anchor(s) of case A" in exported.stdout, exported.stderr
    for f in tmp_path.glob("registry.*"):  # the court has none of the engine's files
        f.unlink()
    ok = run_cli("evidence", "verify", str(out), "--public-key", public)
    assert ok.returncode == 0, ok.stdout
    head = orjson.loads(out.read_bytes().splitlines()[-1])["head"]["hash"]
    assert ok.stdout == (
        f"intact: 6 entries, head {head}, 1 anchor(s) agree; signed by the key given, {public}\n"
    )
    (court / "deployment.pub").write_text(public + "\n")
    from_file = run_cli(
        "evidence", "verify", str(out), "--public-key", str(court / "deployment.pub")
    )
    assert from_file.returncode == 0, from_file.stdout
    other = EvidenceLog(court / "other.evidence.sqlite")
    other.close()
    wrong = run_cli("evidence", "verify", str(out), "--public-key", other.public_key)
    assert wrong.returncode == 1 and "signed by another key" in wrong.stdout
    nonsense = run_cli("evidence", "verify", str(out), "--public-key", "0123")
    assert nonsense.returncode == 2 and "neither 64 hex digits nor a file" in nonsense.stderr
    no_key = run_cli("evidence", "key", "--db", str(db))
    assert no_key.returncode == 2 and "no evidence key at" in no_key.stderr


def test_an_export_edited_and_fully_rehashed_is_detected(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")
    forged = rehashed(lines, move_third_fix)
    found = problems_of(forged, log.public_key)
    # The chain itself is flawless; the signatures show the edit, and where it begins.
    assert not [w for _, w in found if "edited" in w or "follow" in w or "sequence" in w]
    assert [line for line, _ in found] == [3, 7]
    assert "its signature does not match it" in found[0][1]
    assert "the 3 signed entries after it (to line 6)" in found[0][1]
    assert "the head line's signature does not match it" in found[1][1]

    def unsigned(entries: list[dict[str, Any]]) -> None:
        move_third_fix(entries)
        for e in entries[2:]:
            e["sig"] = None

    stripped = problems_of(rehashed(lines, unsigned), log.public_key)
    assert stripped[0][0] == 3
    assert "carries no signature, where every entry after the first signed one" in stripped[0][1]
    assert "so do the 3 after it (to line 6)" in stripped[0][1]

    def all_unsigned(entries: list[dict[str, Any]]) -> None:
        move_third_fix(entries)
        for e in entries:
            e["sig"] = None

    # Every signature removed, the head line signed again by whoever holds the key.
    bare = problems_of(resigned_head(rehashed(lines, all_unsigned), log), log.public_key)
    assert [line for line, _ in bare] == [1] and "no entry carries a signature" in bare[0][1]


def test_a_cut_end_with_a_rewritten_head_line_is_detected(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")

    def cut(entries: list[dict[str, Any]]) -> None:
        del entries[4:]  # the alarm and the fix before it

    cut_lines = rehashed(lines, cut)
    assert orjson.loads(cut_lines[-1])["head"]["count"] == 4
    assert problems_of(cut_lines, log.public_key) == [
        (
            5,
            "the head line's signature does not match it: the head line was rewritten (to hide"
            " a cut end, or entries changed and re-hashed to the end)",
        )
    ]
    head = orjson.loads(cut_lines[-1])
    del head["head"]["signature"]
    found = problems_of([*cut_lines[:-1], orjson.dumps(head)], log.public_key)
    assert [(line, "the head line is not signed" in w) for line, w in found] == [(5, True)]


def test_bodies_removed_in_the_file_without_a_purge_are_detected(tmp_path: Path) -> None:
    log = record(tmp_path)
    assert log.purge(T0 + 2.5, keep_cases=set(), now=T0 + 100)["A"] == 3  # fixes 1-3
    log.close()
    path = tmp_path / "registry.evidence.sqlite"
    db = sqlite3.connect(path)
    blank_alarms = "UPDATE evidence SET body=NULL WHERE kind='alarm'"
    with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
        db.execute(blank_alarms)
    db.execute("DROP TRIGGER evidence_no_rewrite")  # whoever can write the file can do this
    db.execute(blank_alarms)
    db.execute("UPDATE evidence SET body=NULL WHERE case_id='A' AND seq=4")  # t after the cutoff
    db.commit()
    db.close()
    log = EvidenceLog(path)  # opening the record gives it its guard again
    found = problems_of(lines_of(log, "A"), log.public_key)
    assert [line for line, _ in found] == [4, 6]
    assert "the body of this fix entry was removed, and no purge entry after it" in found[0][1]
    assert "the body of this alarm entry was removed; retention removes only" in found[1][1]
    log.close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
        db.execute(blank_alarms)
    db.close()


def test_anchors_show_a_cut_end_and_an_edit_even_to_whoever_holds_the_key(
    tmp_path: Path,
) -> None:
    log = EvidenceLog(tmp_path / "registry.evidence.sqlite")
    anchors = []
    for k in range(6):
        log.append([("A", T0 + k, "fix", {"device": ["tag-1"], "lat": [50.85 + k * 1e-4]})])
        anchors.append(log.anchor("A", T0 + k + 0.5))  # anchor k holds k + 1 entries
    other_case = log.anchor("B", T0 + 9)
    lines = lines_of(log, "A", [*anchors, other_case])
    found = verify_export(lines, log.public_key)
    assert (found.problems, found.anchors) == ([], 6)  # the other case's anchor is left out
    key = EvidenceKey.load(log.key_path)

    def cut(entries: list[dict[str, Any]]) -> None:
        del entries[4:]

    cut_found = problems_of(resigned(rehashed(lines, cut), key), log.public_key)
    assert [line for line, _ in cut_found] == [9, 10]  # the anchors of 5 and 6 entries
    assert cut_found[0][1] == (
        f"the anchor of {iso_utc(T0 + 4.5)} shows that the record then held 5 entries;"
        " the export holds 4: entries were cut off its end"
    )
    edit_found = problems_of(resigned(rehashed(lines, move_third_fix), key), log.public_key)
    assert [line for line, _ in edit_found] == [9, 10, 11, 12]  # the anchors of 3 to 6
    assert edit_found[0][1] == (
        f"entry 3 (line 3) is not the one the anchor of {iso_utc(T0 + 2.5)} recorded: it,"
        " or an entry before it, was changed after the anchor was made"
    )


def test_a_forged_or_altered_anchor_is_detected(tmp_path: Path) -> None:
    log = record(tmp_path)
    anchor = log.anchor("A", T0 + 10)
    altered = anchor | {"count": 5, "hash": orjson.loads(lines_of(log, "A")[4])["hash"]}
    other = EvidenceLog(tmp_path / "other.evidence.sqlite")
    other.append([("A", T0, "fix", {"device": ["tag-1"]})])
    forged = other.anchor("A", T0 + 10)
    found = problems_of(lines_of(log, "A", [anchor, altered, forged]), log.public_key)
    assert [line for line, _ in found] == [8, 9]
    assert (
        "the anchor's signature does not match it: the anchor was forged or altered"
        in (found[0][1])
    )
    assert f"the anchor is signed by another key ({other.public_key})" in found[1][1]


def test_an_export_signed_with_another_key_fails_against_the_deployments(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")
    other = EvidenceLog(tmp_path / "other.evidence.sqlite")
    # A record rebuilt and signed with a key of one's own is consistent with that key ...
    rebuilt = resigned(rehashed(lines, move_third_fix), EvidenceKey.load(other.key_path))
    assert problems_of(rebuilt) == []
    assert verify_export(rebuilt).key == other.public_key
    # ... and shows as what it is against the deployment's key.
    assert problems_of(rebuilt, log.public_key) == [
        (7, f"signed by another key ({other.public_key}), not by the key given")
    ]
    assert verify_export(lines, log.public_key).key_given
    assert not verify_export(rebuilt, log.public_key).key_given


def test_an_export_without_signatures_is_reported_as_unsigned(tmp_path: Path) -> None:
    # As exports were before the record was signed: no sig, a head line of three fields.
    lines = lines_of(record(tmp_path), "A")
    docs = [orjson.loads(x) for x in lines]
    for d in docs[:-1]:
        del d["sig"]
    docs[-1]["head"] = {k: docs[-1]["head"][k] for k in ("case_id", "count", "hash")}
    old = [orjson.dumps(d) for d in docs]
    found = verify_export(old)
    assert not found.signed and found.key is None
    assert [(p.line, p.what.split(":")[0]) for p in found.problems] == [
        (
            7,
            "the export carries no signature (made before the evidence record was signed,"
            " or its signatures were removed)",
        )
    ]


def test_a_record_of_an_older_version_opens_and_is_signed_from_then_on(tmp_path: Path) -> None:
    path = tmp_path / "registry.evidence.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    prev = GENESIS
    for seq in (1, 2, 3):
        data = canonical({"device": ["tag-1"], "lat": [50.85 + seq * 1e-4]})
        h = entry_hash(prev, "A", seq, T0 + seq, "fix", sha256(data))
        db.execute(
            "INSERT INTO evidence VALUES (?, ?, ?, 'fix', ?, ?, ?, ?)",
            ("A", seq, T0 + seq, data, sha256(data), prev, h),
        )
        prev = h
    db.commit()
    db.close()
    log = EvidenceLog(path)
    found = problems_of(lines_of(log, "A"), log.public_key)
    assert [line for line, _ in found] == [1]
    assert "no entry carries a signature" in found[0][1]
    log.append([("A", T0 + 9, "alarm", {"alarm_id": "x", "state": "open"})])
    assert problems_of(lines_of(log, "A"), log.public_key) == []  # entry 4 vouches for 1-3
    log.close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
        # The old guard knew no signatures: it would let one be added to a purged fix.
        db.execute("UPDATE evidence SET body=NULL, sig='00' WHERE seq=3")
    db.close()


def test_retention_removes_old_fixes_but_keeps_the_chain_and_records_the_purge(
    tmp_path: Path,
) -> None:
    log = record(tmp_path)
    removed = log.purge(T0 + 2.5, keep_cases={"B"}, now=T0 + 100)  # B has an open alarm
    assert removed == {"A": 3}
    lines = lines_of(log, "A")
    n, _, problems = verify_lines(lines, log.public_key)
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
    for rewrite in (
        "UPDATE evidence SET body=X'7B7D' WHERE case_id='A' AND seq=2",
        # A purge may remove a fix's body, never its signature with it.
        "UPDATE evidence SET body=NULL, sig=NULL WHERE case_id='A' AND seq=2",
        "UPDATE evidence SET body=NULL WHERE kind='alarm'",  # only fix bodies are purged
    ):
        with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
            db.execute(rewrite)
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
    assert lines_of(service.evidence, "A")[:-1] == []  # staged, not in the chain yet
    service.evidence.fold_all(T0 + 1)
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
    assert service.evidence.staged_fixes == 1
    service.evidence.fold_all(T0 + 2)
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
    n, _, problems = verify_lines(lines_of(log, "A"), log.public_key)
    assert (n, problems) == (7, [])


def test_the_cics_own_anchors_show_a_record_cut_with_its_journal(tmp_path: Path) -> None:
    # Whoever holds the key and the database cuts the record and the journal's anchors: the
    # export is consistent, and only the anchors the CIC received show the cut.
    log = EvidenceLog(tmp_path / "registry.evidence.sqlite")
    received = []
    for k in range(4):
        log.append([("A", T0 + k, "fix", {"device": ["tag-1"], "lat": [50.85 + k * 1e-4]})])
        received.append(orjson.dumps(log.anchor("A", T0 + k + 0.5)))
    received.append(orjson.dumps(log.anchor("B", T0 + 9)))  # another case's: left out
    received.append(b'cic/alarms {"alarm_id": "x", "case_id": "A"}')  # a message, not an anchor
    received[1] = b"cic/evidence " + received[1]  # as mosquitto_sub -v writes it
    key = EvidenceKey.load(log.key_path)

    def cut(entries: list[dict[str, Any]]) -> None:
        del entries[2:]

    forged = resigned(rehashed(lines_of(log, "A"), cut), key)
    assert verify_export(forged, log.public_key).problems == []
    found = verify_export(forged, log.public_key, received, "cic-anchors.jsonl")
    assert found.outside == 4
    assert [(p.source, p.line) for p in found.problems] == [
        ("cic-anchors.jsonl", 3),
        ("cic-anchors.jsonl", 4),
    ]
    assert "entries were cut off its end" in found.problems[0].what


def test_a_field_added_to_an_export_is_detected(tmp_path: Path) -> None:
    log = record(tmp_path)
    lines = lines_of(log, "A")
    for n in (2, len(lines) - 1):  # an entry, the head line
        doc = orjson.loads(lines[n])
        doc.get("head", doc)["note"] = "added"
        altered = [*lines[:n], orjson.dumps(doc), *lines[n + 1 :]]
        found = problems_of(altered, log.public_key)
        assert found == [
            (n + 1, "holds a field an export does not have (note): something was added to it")
        ]


def test_a_private_key_given_for_the_public_one_is_refused_and_never_shown(
    tmp_path: Path,
) -> None:
    log = record(tmp_path)
    export = tmp_path / "A.jsonl"
    export.write_bytes(b"\n".join(lines_of(log, "A")) + b"\n")
    seed = log.key_path.read_text().strip()
    for given in (str(log.key_path), seed):
        out = run_cli("evidence", "verify", str(export), "--public-key", given)
        assert out.returncode == 2 and "holds the private evidence key" in out.stderr
        assert seed not in out.stdout + out.stderr
    # An export that names no key (its head line gone): nothing shows the key, and no message
    # repeats what was given.
    headless = tmp_path / "headless.jsonl"
    headless.write_bytes(b"\n".join(lines_of(log, "A")[:-1]) + b"\n")
    out = run_cli("evidence", "verify", str(headless), "--public-key", seed)
    assert out.returncode == 1 and seed not in out.stdout + out.stderr
    pub = log.key_path.with_suffix(".pub")
    wrong = run_cli(
        "evidence", "key", "--db", str(tmp_path / "registry.sqlite"), "--evidence-key", str(pub)
    )
    assert wrong.returncode != 0 and "is a public key file" in wrong.stderr


def test_the_files_that_hold_personal_data_are_their_owners_only(tmp_path: Path) -> None:
    # Names, phones and positions: the registry, the journal, the record and its export.
    db = tmp_path / "registry.sqlite"
    case = {"id": "A", "offenders": ["t"], "protected": ["p"], "order": {"distance_m": 1}}
    (tmp_path / "c.json").write_text(orjson.dumps({"cases": [case]}).decode())
    assert run_cli("cases", "import", str(tmp_path / "c.json"), "--db", str(db)).returncode == 0
    Journal(tmp_path / "registry.journal.sqlite").close()
    record(tmp_path).close()
    export = tmp_path / "A.jsonl"
    out = run_cli("evidence", "export", "A", "--db", str(db), "--out", str(export))
    assert out.returncode == 0, out.stderr
    for name in ("registry.sqlite", "registry.journal.sqlite", "registry.evidence.sqlite"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    onto_folder = run_cli("evidence", "export", "A", "--db", str(db), "--out", str(tmp_path))
    assert onto_folder.returncode == 2 and "cannot write" in onto_folder.stderr


def test_a_record_altered_in_its_file_and_extended_by_the_engine_still_shows_it(
    tmp_path: Path,
) -> None:
    # Whoever can write the file, not the key: the engine stopped, its newest entries edited
    # and re-hashed, their signatures removed; the engine then starts and signs on top.
    path = tmp_path / "registry.evidence.sqlite"
    log = EvidenceLog(path)
    for k in range(3):
        log.append([("A", T0 + k, "alarm", {"alarm_id": "x", "level": "escalation", "k": k})])
    log.close()
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER evidence_no_rewrite")
    rows = db.execute("SELECT seq, t, kind, body FROM evidence ORDER BY seq").fetchall()
    prev = db.execute("SELECT hash FROM evidence WHERE seq = 1").fetchone()[0]
    for seq, t, kind, body in rows[1:]:
        edited = canonical({**orjson.loads(body), "level": "pre_alert"})
        h = entry_hash(prev, "A", seq, t, kind, sha256(edited))
        db.execute(
            "UPDATE evidence SET body=?, body_hash=?, prev=?, hash=?, sig=NULL WHERE seq=?",
            (edited, sha256(edited), prev, h, seq),
        )
        prev = h
    db.commit()
    db.close()
    log = EvidenceLog(path)  # the engine again
    log.append([("A", T0 + 9, "alarm", {"alarm_id": "y", "level": "alarm"})])
    found = problems_of(lines_of(log, "A"), log.public_key)
    assert [line for line, _ in found] == [2]
    assert "carries no signature" in found[0][1] and "so do the 1 after it" in found[0][1]


def test_a_field_named_twice_is_detected(tmp_path: Path) -> None:
    # A JSON reader keeps the last: a body put first would be what a person reads.
    log = record(tmp_path)
    lines = lines_of(log, "A")
    doubled = b'{"body":{"lat":51.0,"device":"tag-1"},' + lines[1][1:]
    found = problems_of([lines[0], doubled, *lines[2:]], log.public_key)
    assert found == [
        (2, "names a field twice (body): what a reader sees may not be what was checked")
    ]


def test_a_refused_write_does_not_make_the_record_forget_what_it_wrote(tmp_path: Path) -> None:
    # The engine anchors the cases written since it opened the record: a full disk in between
    # must not make it forget one (it would never be anchored again in that run).
    log = EvidenceLog(tmp_path / "registry.evidence.sqlite")
    log.append([("A", T0, "fix", {"device": ["tag-1"]})])
    db = log._db
    disk_full(db)
    with pytest.raises(sqlite3.OperationalError):
        log.append([("B", T0, "fix", {"device": ["tag-2"], "pad": "x" * 100_000})])
    assert log.known() == ["A"] and log.head("A")[0] == 1
