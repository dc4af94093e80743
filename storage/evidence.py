"""The evidence record: per case, an append-only, hash-chained log of the fixes used, the
alarm messages sent (each one a decision) and the purges, exportable for a court.

Each entry is ``(case_id, seq, t, kind, body)``: ``seq`` counts the case's entries from 1,
``t`` is UTC epoch seconds, ``kind`` is ``fix`` (the case's fixes of one batch, as columns:
``device``, ``t_fix``, ``t_recv``, ``lat``, ``lon``, ``acc_m`` (-1 unknown), ``seq`` (-1
none); ``t`` is the newest fix time), ``alarm`` (one message sent) or ``purge``, and ``body``
a JSON object. Its ``body_hash`` is the SHA-256 of the body's canonical JSON (sorted keys, no
spaces), and its ``hash`` is the SHA-256 of the previous entry's hash and the entry's other
fields (:func:`entry_hash`): changing, removing or reordering any entry breaks every hash
after it. Retention removes old bodies but keeps their hashes, so the chain still verifies
and shows what was removed and when (a ``purge`` entry records each purge).

``proximity evidence export CASE`` writes the case's chain as JSON Lines, ending with a
``head`` line (count and last hash); ``proximity evidence verify FILE`` checks it
(:func:`verify_lines`). The head hash is also logged by the engine, so an export can be
compared with what the engine recorded at the time.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from storage.store import open_durable, transaction

GENESIS = "0" * 64
KINDS = frozenset({"fix", "alarm", "purge"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    case_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    t         REAL NOT NULL,
    kind      TEXT NOT NULL,
    body      BLOB,           -- canonical JSON; NULL once purged
    body_hash TEXT NOT NULL,
    prev      TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (case_id, seq)
);
CREATE INDEX IF NOT EXISTS evidence_by_time ON evidence(kind, t);
CREATE TRIGGER IF NOT EXISTS evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'the evidence record is append-only'); END;
CREATE TRIGGER IF NOT EXISTS evidence_no_rewrite BEFORE UPDATE ON evidence
WHEN NEW.case_id IS NOT OLD.case_id OR NEW.seq IS NOT OLD.seq OR NEW.t IS NOT OLD.t
  OR NEW.kind IS NOT OLD.kind OR NEW.body_hash IS NOT OLD.body_hash
  OR NEW.prev IS NOT OLD.prev OR NEW.hash IS NOT OLD.hash OR NEW.body IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'evidence entries are never rewritten, only purged'); END;
"""


def canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_hash(prev: str, case_id: str, seq: int, t: float, kind: str, body_hash: str) -> str:
    """The chain hash of one entry: SHA-256 over the previous hash and the entry's fields."""
    fields = orjson.dumps([prev, case_id, seq, repr(float(t)), kind, body_hash])
    return sha256(fields)


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    what: str


class EvidenceLog:
    """The evidence record in a SQLite file (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # One disk flush per batch of fixes would bound the engine's intake by the disk's
        # flush latency; the chain stays consistent without it (an alarm's durability is
        # the journal's job, which flushes every commit).
        self._db = open_durable(self.path, "evidence record", _SCHEMA, synchronous="NORMAL")
        self._heads: dict[str, tuple[int, str]] = {}

    def _head(self, case_id: str) -> tuple[int, str]:
        if case_id not in self._heads:
            row = self._db.execute(
                "SELECT seq, hash FROM evidence WHERE case_id=? ORDER BY seq DESC LIMIT 1",
                (case_id,),
            ).fetchone()
            self._heads[case_id] = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        return self._heads[case_id]

    def append(self, entries: Iterable[tuple[str, float, str, dict[str, Any]]]) -> int:
        """Append ``(case_id, t, kind, body)`` entries in one transaction; return how many."""
        return self._write(entries)

    def _write(
        self,
        entries: Iterable[tuple[str, float, str, dict[str, Any]]],
        before: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        """Chain and insert ``entries`` in one transaction, after ``before`` (run in it)."""
        rows = []
        heads = dict(self._heads)
        for case_id, t, kind, body in entries:
            if kind not in KINDS:
                raise ValueError(f"unknown evidence kind {kind!r}")
            seq, prev = heads.get(case_id) or self._head(case_id)
            seq += 1
            data = canonical(body)
            body_hash = sha256(data)
            h = entry_hash(prev, case_id, seq, t, kind, body_hash)
            rows.append((case_id, seq, t, kind, data, body_hash, prev, h))
            heads[case_id] = (seq, h)
        if not rows and before is None:
            return 0
        try:
            with transaction(self._db) as db:
                if before is not None:
                    before(db)
                db.executemany(
                    "INSERT INTO evidence(case_id, seq, t, kind, body, body_hash, prev, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except BaseException:
            self._heads = {}  # read again from the file
            raise
        self._heads = heads
        return len(rows)

    def head(self, case_id: str) -> tuple[int, str]:
        """The case's entry count and last hash (``0, GENESIS`` when it has none)."""
        return self._head(case_id)

    def purge(self, older_than: float, keep_cases: set[str], now: float) -> dict[str, int]:
        """Remove the bodies of fix entries taken before ``older_than``, except in
        ``keep_cases`` (cases with an open alarm); record each case's purge; return how many
        bodies each case lost."""
        counts = {
            str(c): int(n)
            for c, n in self._db.execute(
                "SELECT case_id, COUNT(*) FROM evidence WHERE kind='fix' AND t < ?"
                " AND body IS NOT NULL GROUP BY case_id",
                (older_than,),
            )
            if c not in keep_cases
        }

        def remove(db: sqlite3.Connection) -> None:
            for case_id in counts:
                db.execute(
                    "UPDATE evidence SET body=NULL WHERE case_id=? AND kind='fix' AND t < ?",
                    (case_id, older_than),
                )

        # The bodies go and the purge is recorded in one transaction: a disk that refuses
        # it leaves both as they were (tried again later).
        self._write(
            (
                (c, now, "purge", {"fix_entries_removed": n, "taken_before": older_than})
                for c, n in counts.items()
            ),
            remove if counts else None,
        )
        return counts

    def export(self, case_id: str) -> Iterator[bytes]:
        """The case's chain as JSON Lines, then a ``head`` line."""
        count, last = 0, GENESIS
        for seq, t, kind, body, body_hash, prev, h in self._db.execute(
            "SELECT seq, t, kind, body, body_hash, prev, hash FROM evidence WHERE case_id=?"
            " ORDER BY seq",
            (case_id,),
        ):
            entry = {
                "case_id": case_id,
                "seq": seq,
                "t": t,
                "kind": kind,
                "body": orjson.loads(body) if body is not None else None,
                "body_hash": body_hash,
                "prev": prev,
                "hash": h,
            }
            count, last = seq, h
            yield orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n"
        yield orjson.dumps({"head": {"case_id": case_id, "count": count, "hash": last}}) + b"\n"

    def last_fix_time(self) -> float:
        """The newest time of a fix entry in the record (NaN: none): where an earlier run of
        the engine stopped taking fixes."""
        (t,) = self._db.execute("SELECT MAX(t) FROM evidence WHERE kind = 'fix'").fetchone()
        return float(t) if t is not None else float("nan")

    def cases(self) -> list[str]:
        return [str(c) for (c,) in self._db.execute("SELECT DISTINCT case_id FROM evidence")]

    def close(self) -> None:
        self._db.close()


def verify_lines(lines: Iterable[bytes]) -> tuple[int, str, list[Problem]]:
    """Check an export: every line parses, the chain is unbroken from the genesis hash, each
    kept body matches its hash, sequence numbers run 1, 2, 3 ..., and the head line names the
    last entry. Return (entries, last hash, problems)."""
    problems: list[Problem] = []
    prev, expected_seq, case_id, head_seen = GENESIS, 1, None, False
    n = 0
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if head_seen:
            problems.append(Problem(i, "a line after the head line"))
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            problems.append(Problem(i, f"not valid JSON: {exc}"))
            prev = "?"  # the chain cannot continue from an unreadable line
            expected_seq += 1
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(i, "not a JSON object"))
            continue
        if "head" in obj:
            head_seen = True
            head = obj["head"]
            if not isinstance(head, dict) or head.get("count") != n or head.get("hash") != prev:
                problems.append(
                    Problem(
                        i, f"the head line does not match the chain ({n} entries, last {prev[:12]})"
                    )
                )
            continue
        try:
            c, seq, t, kind = obj["case_id"], obj["seq"], obj["t"], obj["kind"]
            body, body_hash, p, h = obj["body"], obj["body_hash"], obj["prev"], obj["hash"]
        except KeyError as exc:
            problems.append(Problem(i, f"missing field {exc}"))
            continue
        n += 1
        case_id = case_id or c
        if c != case_id:
            problems.append(Problem(i, f"entry of case {c!r} in the export of {case_id!r}"))
        if seq != expected_seq:
            problems.append(
                Problem(
                    i, f"sequence {seq} where {expected_seq} was due (removed or reordered entries)"
                )
            )
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
        if p != prev:
            problems.append(
                Problem(i, "does not follow the previous entry (removed, inserted or reordered)")
            )
        if body is not None and sha256(canonical(body)) != body_hash:
            problems.append(Problem(i, "its body does not match its body hash (edited)"))
        try:
            recomputed = entry_hash(p, c, seq, t, kind, body_hash)
        except (TypeError, ValueError):
            recomputed = ""
        if recomputed != h:
            problems.append(Problem(i, "its hash does not match its contents (edited)"))
        prev = h
    if not head_seen:
        problems.append(Problem(n + 1, "no head line: the export is truncated"))
    return n, prev, problems
