"""The evidence record: per case, an append-only, hash-chained and signed log of the fixes used,
the alarm messages sent (each one a decision) and the purges, exportable for a court.

Each entry is ``(case_id, seq, t, kind, body)``: ``seq`` counts the case's entries from 1, ``t``
is UTC epoch seconds, ``kind`` is ``fix`` (the case's fixes since the last fold, as columns:
``device``, ``t_fix``, ``t_recv``, ``lat``, ``lon``, ``acc_m`` (-1 unknown), ``seq`` (-1 none);
``t`` is the newest fix time), ``alarm`` (one message sent), ``purge``, or ``change`` (who
changed what in the case or its devices' descriptions: one row of the registry's change record,
``seq``, ``at``, ``actor``, ``action``, ``case_id``, ``detail``, recorded as the engine applies
it), ``command`` (a command sent to a device: :mod:`cic.commands`), ``command_ack`` (a device's
acknowledgement of one), or ``notice`` (a notice sent to a device, the offender's or the
protected person's: :mod:`cic.notice`), and ``body`` a JSON object. Its ``body_hash`` is the
SHA-256 of the body's canonical JSON (sorted keys, no spaces), and its ``hash`` is the SHA-256
of the previous entry's hash and the entry's other fields (:func:`entry_hash`): changing,
removing or reordering any entry breaks every hash after it. Retention removes old fix bodies
but keeps their hashes, so the chain still verifies and shows what was removed and when (a
``purge`` entry records each purge).

A chain alone shows consistency, not integrity: whoever can write the SQLite file or an export
can edit an entry and recompute every hash after it. So every entry is signed (its ``sig``:
Ed25519, with the record's key, :mod:`storage.signing`, over :func:`head_message`): an entry
rewritten without the key has a signature that does not match, or none, where every entry
after the first signed one has one. As the hash chains everything before it, a valid
signature on entry k also vouches for entries 1..k (those of a record written before it was
signed, by an older version, included). The file's triggers refuse deletions, rewrites (the
signature included) and the removal of any body but a fix's; they only raise the bar, since
whoever can write the file can drop them; the signatures are what an export is checked with.

``proximity evidence export CASE`` writes the case's chain as JSON Lines
(:meth:`EvidenceLog.export`): the entries, then the case's anchors (:meth:`EvidenceLog.anchor`:
its count and head hash, signed at a moment; the engine publishes them to the CIC and journals
them every few minutes, so copies outside the engine's host exist), then a ``head`` line
(count, last hash, time of the export, public key) signed with the key. ``proximity evidence
verify FILE --public-key KEY`` checks it (:func:`verify_export`): the chain, every signature,
that every entry after the first signed one is signed, the head line, every anchor against
the chain (an anchor beyond the end shows a cut end, one whose hash differs shows an edit),
and that every removed body is a fix body covered by a later purge. Without the deployment's
public key, an export can only be checked against the key it names itself: that shows
consistency, not who signed it.

What it does not show: whoever holds the key can rewrite and re-sign the record; then only the
anchors published before the rewrite (as the CIC holds them) show it.

Fixes come in one staged block per batch (:meth:`EvidenceLog.append` with a
:class:`storage.fixpack.FixBlock`), cheap to write, and are folded into the chains later
(:meth:`EvidenceLog.fold`): one signed entry per case per fold rather than per batch, whose
body is kept packed on disk (:mod:`storage.fixpack`) and given back as its JSON object.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from proximity.clock import iso_utc
from proximity.errors import ProximityError
from storage.fixpack import (
    FixBlock,
    Staging,
    block_bodies,
    pack_block,
    pack_body,
    pack_columns,
    unpack_block,
)
from storage.fixpack import unpack_body as _unpack_body
from storage.signing import EvidenceKey, is_key_hex, verify_signature
from storage.store import open_durable, transaction

#: An entry of a case's chain, as given to :meth:`EvidenceLog.append`: ``(case_id, t, kind, body)``.
Entry = tuple[str, float, str, dict[str, Any]]

GENESIS = "0" * 64
KINDS = frozenset({"fix", "alarm", "purge", "change", "command", "command_ack", "notice"})
#: The ``type`` of an anchor message.
ANCHOR_TYPE = "evidence_anchor"
#: The fields of an export's lines: no other may be there (an addition no hash or signature
#: covers would pass for part of the record).
ENTRY_FIELDS = frozenset(
    {"case_id", "seq", "t", "kind", "body", "body_hash", "prev", "hash", "sig"}
)
HEAD_FIELDS = frozenset({"case_id", "count", "hash", "anchors", "exported", "key", "signature"})
ANCHOR_FIELDS = frozenset({"type", "case_id", "count", "hash", "time", "key", "signature"})
# What each signature signs starts with its own domain, so that none can stand for another.
_ENTRY_DOMAIN = "proximity-evidence-head-v1"
_EXPORT_DOMAIN = "proximity-evidence-export-v1"
_ANCHOR_DOMAIN = "proximity-evidence-anchor-v1"

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
    sig       TEXT,           -- hex Ed25519 signature of the entry (NULL: written before signing)
    PRIMARY KEY (case_id, seq)
);
CREATE INDEX IF NOT EXISTS evidence_by_time ON evidence(kind, t);
CREATE TRIGGER IF NOT EXISTS evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'the evidence record is append-only'); END;
-- Fixes taken, not yet folded into their cases' chains: one block per batch (storage.fixpack).
CREATE TABLE IF NOT EXISTS staged (id INTEGER PRIMARY KEY, t REAL NOT NULL, block BLOB NOT NULL);
-- A fold under way: the blocks it folds (id <= upto) and how many buckets of cases it has done.
CREATE TABLE IF NOT EXISTS fold_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL, done INTEGER NOT NULL
);
"""
#: A fold writes the chain entries of the staged fixes in this many slices, each the cases of
#: one bucket (crc32 of the case id): each slice a transaction of its own, small enough not
#: to hold the engine's loop for long, and a crash between two resumes where it stopped.
FOLD_BUCKETS = 256
#: Staged fixes are folded into the chains every this many seconds (of the engine's clock) ...
FOLD_INTERVAL_S = 60.0
#: ... or sooner once this many are staged (the memory they hold).
FOLD_MAX_FIXES = 1_000_000
#: The guard against rewrites, as SQLite keeps it in the file (without IF NOT EXISTS): a file
#: whose guard differs (one written before entries were signed) is given this one.
_NO_REWRITE = """CREATE TRIGGER evidence_no_rewrite BEFORE UPDATE ON evidence
WHEN NEW.case_id IS NOT OLD.case_id OR NEW.seq IS NOT OLD.seq OR NEW.t IS NOT OLD.t
  OR NEW.kind IS NOT OLD.kind OR NEW.body_hash IS NOT OLD.body_hash
  OR NEW.prev IS NOT OLD.prev OR NEW.hash IS NOT OLD.hash OR NEW.sig IS NOT OLD.sig
  OR NEW.body IS NOT NULL OR OLD.kind IS NOT 'fix'
BEGIN SELECT RAISE(ABORT, 'evidence entries are never rewritten, only purged'); END"""


def canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_hash(prev: str, case_id: str, seq: int, t: float, kind: str, body_hash: str) -> str:
    """The chain hash of one entry: SHA-256 over the previous hash and the entry's fields."""
    fields = orjson.dumps([prev, case_id, seq, repr(float(t)), kind, body_hash])
    return sha256(fields)


def head_message(case_id: str, seq: int, h: str) -> bytes:
    """What an entry's ``sig`` signs: the case, the entry's place and its chain hash (which
    covers every entry before it)."""
    return orjson.dumps([_ENTRY_DOMAIN, case_id, seq, h])


def export_message(case_id: str, count: int, h: str, exported: str, anchors: int) -> bytes:
    """What an export's head line signs: the case, its entry count and last hash, the time of
    the export and how many anchor lines the export holds."""
    return orjson.dumps([_EXPORT_DOMAIN, case_id, count, h, exported, anchors])


def anchor_message(case_id: str, count: int, h: str, at: str) -> bytes:
    """What an anchor signs: the case, its entry count and last hash at the time ``at``."""
    return orjson.dumps([_ANCHOR_DOMAIN, case_id, count, h, at])


def anchors_of(payloads: Iterable[bytes], case_id: str) -> list[dict[str, Any]]:
    """The anchors of ``case_id`` among journalled messages (others, and what does not parse,
    are left out), in their order."""
    found = []
    for payload in payloads:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(msg, dict)
            and msg.get("type") == ANCHOR_TYPE
            and msg.get("case_id") == case_id
        ):
            found.append(msg)
    return found


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an export: its line (from 1) and a sentence saying what;
    ``source``: the file the line is in when it is not the export (the CIC's anchors)."""

    line: int
    what: str
    source: str = ""


def _upgrade(db: sqlite3.Connection) -> None:
    """Give a record written before entries were signed its ``sig`` column and the current
    guard against rewrites (in one transaction: the file is never without a guard)."""

    def columns() -> set[str]:
        return {str(row[1]) for row in db.execute("PRAGMA table_info(evidence)")}

    def guard() -> str | None:
        row = db.execute(
            "SELECT sql FROM sqlite_master WHERE type='trigger' AND name='evidence_no_rewrite'"
        ).fetchone()
        return str(row[0]) if row else None

    if "sig" in columns() and guard() == _NO_REWRITE:
        return
    with transaction(db):
        if "sig" not in columns():
            db.execute("ALTER TABLE evidence ADD COLUMN sig TEXT")
        if guard() != _NO_REWRITE:
            db.execute("DROP TRIGGER IF EXISTS evidence_no_rewrite")
            db.execute(_NO_REWRITE)


class EvidenceLog:
    """The evidence record in a SQLite file (created if missing), signed with the key in
    ``key_path`` (default: the record's path with the suffix ``.key``, ``x.evidence.sqlite``
    -> ``x.evidence.key``), which is made at the first use unless ``create_key`` is false."""

    def __init__(
        self, path: str | Path, key_path: str | Path | None = None, *, create_key: bool = True
    ) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path) if key_path is not None else self.path.with_suffix(".key")
        # One disk flush per batch of fixes would bound the engine's intake by the disk's
        # flush latency; the chain stays consistent without it (an alarm's durability is
        # the journal's job, which flushes every commit).
        self._db = open_durable(self.path, "evidence record", _SCHEMA, synchronous="NORMAL")
        try:
            try:
                _upgrade(self._db)
            except sqlite3.DatabaseError as exc:
                raise ProximityError(
                    f"cannot use {self.path} as the evidence record: {exc}"
                ) from exc
            self._key = EvidenceKey.load(self.key_path, create=create_key)
        except BaseException:
            self._db.close()
            raise
        self._heads: dict[str, tuple[int, str]] = {}
        #: The cases written since the record was opened (kept when a refused write makes
        #: the heads be read again).
        self._written: set[str] = set()
        #: The staged fixes not folded yet, as on disk; and the fold under way.
        self._mem = Staging()
        for i, b in self._db.execute("SELECT id, block FROM staged ORDER BY id"):
            self._mem.add(int(i), unpack_block(bytes(b)))
        self._fold: _Fold | None = None
        # Blocks left by a run that stopped without folding them: folded at the first call.
        self._last_fold = -math.inf if self._mem.ids else math.nan
        self.fold_interval_s = FOLD_INTERVAL_S

    @property
    def public_key(self) -> str:
        """The public key of the record's signatures (64 hex digits): what exports are
        verified with."""
        return self._key.public_key

    def _head(self, case_id: str) -> tuple[int, str]:
        if case_id not in self._heads:
            row = self._db.execute(
                "SELECT seq, hash FROM evidence WHERE case_id=? ORDER BY seq DESC LIMIT 1",
                (case_id,),
            ).fetchone()
            self._heads[case_id] = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        return self._heads[case_id]

    def append(self, entries: Iterable[Entry | FixBlock]) -> int:
        """Append ``(case_id, t, kind, body)`` entries, each signed, and stage the blocks of
        fixes among them (:meth:`fold` puts those in their cases' chains later), in one
        transaction; return how many entries."""
        items = list(entries)
        blocks = [b for b in items if isinstance(b, FixBlock) and b.size]
        ids: list[int] = []

        def stage(db: sqlite3.Connection) -> None:
            for b in blocks:
                cur = db.execute("INSERT INTO staged(t, block) VALUES (?, ?)", (b.t, pack_block(b)))
                ids.append(int(cur.lastrowid or 0))

        written = self._write(
            (e for e in items if not isinstance(e, FixBlock)), stage if blocks else None
        )
        for i, b in zip(ids, blocks, strict=True):
            self._mem.add(i, b)
        return written

    @property
    def staged_fixes(self) -> int:
        """Fixes staged, not yet in their cases' chains."""
        return self._mem.n

    def fold(self, now: float, force: bool = False) -> int:
        """One slice of the fold of the staged fixes into their cases' chains (one entry per
        case, its fixes in the order taken), when a fold is due (every
        ``fold_interval_s``, or FOLD_MAX_FIXES staged) or ``force``; return how many entries
        it wrote. Each slice is one transaction: the entries of one bucket of cases, and
        where the fold stands (the last one removes the folded blocks)."""
        if self._fold is None:
            if not self._mem.ids:
                self._last_fold = now
                return 0
            if math.isnan(self._last_fold):
                self._last_fold = now
            due = now - self._last_fold >= self.fold_interval_s
            if not (force or due or self.staged_fixes >= FOLD_MAX_FIXES):
                return 0
            self._fold = self._start_fold()
        f = self._fold
        b = f.done
        rows = f.order[f.bounds[b] : f.bounds[b + 1]]
        entries: list[Entry] = []
        stored: list[bytes | None] = []
        if rows.size:
            m = f.merged
            case_of = m.case_of[rows]
            starts = np.flatnonzero(np.r_[True, case_of[1:] != case_of[:-1]])
            t_fix = m.columns["t_fix"]
            for c, r in zip(case_of[starts].tolist(), np.split(rows, starts[1:]), strict=True):
                entries.append((m.cases[c], float(t_fix[r].max()), "fix", block_bodies(m, r)))
                stored.append(
                    pack_columns(m.devices, m.dev_of[r], {k: v[r] for k, v in m.columns.items()})
                )
        done = next(
            (k for k in range(b + 1, FOLD_BUCKETS) if f.bounds[k] < f.bounds[k + 1]), FOLD_BUCKETS
        )
        last = done == FOLD_BUCKETS

        def progress(db: sqlite3.Connection) -> None:
            if last:
                db.execute("DELETE FROM staged WHERE id <= ?", (f.upto,))
                db.execute("DELETE FROM fold_state")
            else:
                db.execute(
                    "INSERT OR REPLACE INTO fold_state(id, upto, done) VALUES (1, ?, ?)",
                    (f.upto, done),
                )

        written = self._write(entries, progress, stored)
        f.done = done
        if last:
            self._mem.drop(f.upto)
            self._fold = None
            self._last_fold = now
        return written

    def fold_all(self, now: float) -> int:
        """Fold every staged fix into its case's chain now (the engine stopping); how many
        entries that wrote."""
        written = 0
        while self._mem.ids or self._fold is not None:
            written += self.fold(now, force=True)
        return written

    def _start_fold(self) -> _Fold:
        """The fold of the blocks staged so far, or the one a crash interrupted (its blocks
        and the buckets it had done, as the file keeps them)."""
        row = self._db.execute("SELECT upto, done FROM fold_state").fetchone()
        upto, done = (int(row[0]), int(row[1])) if row else (self._mem.ids[-1], 0)
        merged = self._mem.prefix(upto)
        bucket = np.array(
            [zlib.crc32(c.encode()) % FOLD_BUCKETS for c in merged.cases], dtype=np.int64
        )
        of_fix = bucket[merged.case_of]
        order = np.argsort(of_fix * max(1, len(merged.cases)) + merged.case_of, kind="stable")
        bounds = np.searchsorted(of_fix[order], np.arange(FOLD_BUCKETS + 1))
        while done < FOLD_BUCKETS - 1 and bounds[done] == bounds[done + 1]:
            done += 1  # nothing to do in an empty bucket (the last one runs all the same)
        return _Fold(upto, done, merged, order, bounds)

    def _write(
        self,
        entries: Iterable[Entry],
        before: Callable[[sqlite3.Connection], None] | None = None,
        stored: list[bytes | None] | None = None,
    ) -> int:
        """Chain, sign and insert ``entries`` in one transaction, after ``before`` (run in it);
        ``stored``, parallel to them, what to keep of each body where it is not its JSON (a
        fold's packed fixes). One signature per entry: a fold adds one per case, the engine's
        batches one per alarm message."""
        rows: list[tuple[str, int, float, str, bytes, str, str, str, str | None]] = []
        heads = dict(self._heads)
        for k, (case_id, t, kind, body) in enumerate(entries):
            if kind not in KINDS:
                raise ValueError(f"unknown evidence kind {kind!r}")
            seq, prev = heads.get(case_id) or self._head(case_id)
            seq += 1
            data = canonical(body)
            body_hash = sha256(data)
            h = entry_hash(prev, case_id, seq, t, kind, body_hash)
            # A fix body is kept packed (storage.fixpack), ``stored`` when given; its hash
            # is its JSON's.
            kept = stored[k] if stored is not None else None
            if kept is None and kind == "fix":
                kept = pack_body(body)
            rows.append((case_id, seq, t, kind, kept or data, body_hash, prev, h, None))
            heads[case_id] = (seq, h)
        # Every entry is signed: an entry whose signature was removed cannot pass for an old
        # one.
        rows = [(*r[:8], self._key.sign(head_message(r[0], r[1], r[7]))) for r in rows]
        if not rows and before is None:
            return 0
        try:
            with transaction(self._db) as db:
                if before is not None:
                    before(db)
                db.executemany(
                    "INSERT INTO evidence(case_id, seq, t, kind, body, body_hash, prev, hash, sig)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        except BaseException:
            self._heads = {}  # read again from the file
            raise
        self._heads = heads
        self._written.update(r[0] for r in rows)
        return len(rows)

    def known(self) -> list[str]:
        """The cases written, or looked up, since the record was opened (without reading the
        file: :meth:`cases` reads every entry's key)."""
        return sorted(self._written | set(self._heads))

    def head(self, case_id: str) -> tuple[int, str]:
        """The case's entry count and last hash (``0, GENESIS`` when it has none)."""
        return self._head(case_id)

    def anchor(self, case_id: str, t: float) -> dict[str, Any]:
        """The case's count and head hash as written now, signed, with the time ``t`` (UTC
        epoch seconds): a message to publish and keep outside the engine's host. An export
        that holds fewer entries, or other ones, than an anchor of its case shows it."""
        at = iso_utc(t)
        if at is None:
            raise ValueError(f"an anchor needs a finite time, not {t!r}")
        count, h = self._head(case_id)
        return {
            "type": ANCHOR_TYPE,
            "case_id": case_id,
            "count": count,
            "hash": h,
            "time": at,
            "key": self.public_key,
            "signature": self._key.sign(anchor_message(case_id, count, h, at)),
        }

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

    def export(
        self,
        case_id: str,
        anchors: Iterable[Mapping[str, Any]] = (),
        now: float | None = None,
    ) -> Iterator[bytes]:
        """The case's chain as JSON Lines (each entry with its ``sig``), then the anchors of
        the case among ``anchors`` as ``{"anchor": ...}`` lines, then a ``head`` line signed
        with the key, made at ``now`` (UTC epoch seconds; default: the wall clock). Read the
        anchors before the export: one made after it may name entries it does not hold."""
        count, last = 0, GENESIS
        for seq, t, kind, body, body_hash, prev, h, sig in self._db.execute(
            "SELECT seq, t, kind, body, body_hash, prev, hash, sig FROM evidence"
            " WHERE case_id=? ORDER BY seq",
            (case_id,),
        ):
            entry = {
                "case_id": case_id,
                "seq": seq,
                "t": t,
                "kind": kind,
                "body": unpack_body(kind, body) if body is not None else None,
                "body_hash": body_hash,
                "prev": prev,
                "hash": h,
                "sig": sig,
            }
            count, last = seq, h
            yield orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) + b"\n"
        kept = [dict(a) for a in anchors if a.get("case_id") == case_id]
        for a in kept:
            yield orjson.dumps({"anchor": a}, option=orjson.OPT_SORT_KEYS) + b"\n"
        exported = iso_utc(time.time() if now is None else now)
        if exported is None:
            raise ValueError(f"an export needs a finite time, not {now!r}")
        head = {
            "case_id": case_id,
            "count": count,
            "hash": last,
            "anchors": len(kept),
            "exported": exported,
            "key": self.public_key,
            "signature": self._key.sign(export_message(case_id, count, last, exported, len(kept))),
        }
        yield orjson.dumps({"head": head}) + b"\n"

    def last_fix_time(self) -> float:
        """The newest time of a fix entry in the record (NaN: none): where an earlier run of
        the engine stopped taking fixes."""
        (t,) = self._db.execute(
            "SELECT MAX(t) FROM (SELECT MAX(t) AS t FROM evidence WHERE kind = 'fix'"
            " UNION ALL SELECT MAX(t) FROM staged)"
        ).fetchone()
        return float(t) if t is not None else float("nan")

    def last_change(self) -> int:
        """The registry's change seq last recorded (0: none): a ``change`` entry holds one
        row of the registry's change record (:mod:`storage.registry`)."""
        row = self._db.execute(
            "SELECT body FROM evidence WHERE kind = 'change' AND body IS NOT NULL"
            " ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return 0
        seq = orjson.loads(row[0]).get("seq")
        return int(seq) if isinstance(seq, int) else 0

    def cases(self) -> list[str]:
        return [str(c) for (c,) in self._db.execute("SELECT DISTINCT case_id FROM evidence")]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, slots=True)
class Verification:
    """What :func:`verify_export` found in an export."""

    entries: int
    #: The chain's last hash (as its entries give it).
    head: str
    problems: list[Problem]
    #: The public key the signatures were checked with: the one the export names, else the
    #: one given (None: neither).
    key: str | None
    #: ``key`` is the one the caller gave: an export without problems was signed by its holder.
    #: Otherwise the export was only checked against the key it names itself.
    key_given: bool
    #: The export carries signatures at all (an export of an unsigned record does not).
    signed: bool
    #: The anchor lines checked.
    anchors: int
    #: The anchors kept outside the engine (the CIC's copies) of this case that were checked.
    outside: int = 0
    #: Every public key the export names (its head line's and its anchors').
    named_keys: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Fold:
    """A fold under way: the staged blocks it takes (``id <= upto``), merged; how many buckets
    of cases it has done (they are done in order); the fixes ordered by bucket, case and
    arrival, and where each bucket's run starts."""

    upto: int
    done: int
    merged: FixBlock
    order: npt.NDArray[np.int64]
    bounds: npt.NDArray[np.int64]


def unpack_body(kind: str, data: bytes) -> Any:
    """A stored body -> its JSON value (a fix body may be packed, :mod:`storage.fixpack`)."""
    return _unpack_body(bytes(data)) if kind == "fix" else orjson.loads(data)


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the checks after the first pass need of an entry line."""

    line: int
    case_id: Any
    seq: Any
    t: Any
    kind: Any
    removed: bool  # its body is null
    hash: Any
    sig: Any
    cutoff: float  # a purge's taken_before (NaN: not a purge, or none readable)


def verify_lines(
    lines: Iterable[bytes], public_key: str | None = None
) -> tuple[int, str, list[Problem]]:
    """:func:`verify_export`, as (entries, last hash, problems)."""
    found = verify_export(lines, public_key)
    return found.entries, found.head, found.problems


def verify_export(
    lines: Iterable[bytes],
    public_key: str | None = None,
    outside: Iterable[bytes] = (),
    outside_name: str = "the anchors",
) -> Verification:
    """Check an export: every line parses, the chain is unbroken from the genesis hash, each
    kept body matches its hash, sequence numbers run 1, 2, 3 ..., and the head line names the
    last entry; every signature is valid and every entry after the first signed one is
    signed; no line holds a field it should not, or one twice; the head line is
    signed; every anchor is signed and names an entry of the chain, as it is; every removed
    body is a fix body that a later purge covers. Given ``public_key`` (hex), an export that
    names another key is a problem; without it, the export is checked with the key it names,
    which shows consistency only. ``outside``: lines of anchors kept outside the engine's
    host (what the CIC received on the anchor topic, any case's; ``outside_name`` names their
    file): those of the export's case are checked as its own anchor lines are, which shows a
    record cut or changed with its journal. Problems are sentences for a reader who is no
    engineer, by line."""
    if public_key is not None and not is_key_hex(public_key):
        raise ValueError(f"not a public key (64 hex digits): {public_key!r}")
    problems: list[Problem] = []
    entries: list[_Entry] = []
    anchors: list[tuple[int, Any]] = []
    head: Any = None
    head_line = last_line = 0
    prev, expected_seq, case_id = GENESIS, 1, None
    for i, raw in enumerate(lines, start=1):
        last_line = i
        if not raw.strip():
            continue
        if head_line:
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
        problems += _unknown_fields(i, obj) + _repeated_fields(i, raw)
        if "head" in obj:
            head_line, head = i, obj["head"]
            continue
        if "anchor" in obj:
            anchors.append((i, obj["anchor"]))
            continue
        try:
            c, seq, t, kind = obj["case_id"], obj["seq"], obj["t"], obj["kind"]
            body, body_hash, p, h = obj["body"], obj["body_hash"], obj["prev"], obj["hash"]
        except KeyError as exc:
            problems.append(Problem(i, f"missing field {exc}"))
            continue
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
        cutoff = _cutoff(body) if kind == "purge" else math.nan
        entries.append(_Entry(i, c, seq, t, kind, body is None, h, obj.get("sig"), cutoff))
        prev = h
    n = len(entries)
    fields: dict[str, Any] = head if isinstance(head, dict) else {}
    named = _key_of(fields.get("key"))
    given = public_key.lower() if public_key is not None else None
    # An export that names another key than the one given fails on that alone; its signatures
    # are then checked with the key it names, for what else they show.
    key = named if given is None or (named is not None and named != given) else given
    signed = "signature" in fields or any(e.sig is not None for e in entries)
    if not head_line:
        problems.append(Problem(last_line + 1, "no head line: the export is truncated"))
    else:
        if fields.get("count") != n or fields.get("hash") != prev:
            problems.append(
                Problem(
                    head_line,
                    f"the head line does not match the chain ({n} entries, last {prev[:12]})",
                )
            )
        if case_id is not None and fields.get("case_id") != case_id:
            problems.append(
                Problem(
                    head_line,
                    f"the head line names case {fields.get('case_id')!r}, its"
                    f" entries are of case {case_id!r}",
                )
            )
    if not signed:
        problems.append(
            Problem(
                head_line or 1,
                "the export carries no signature (made before the evidence record was signed,"
                " or its signatures were removed): its chain is consistent, but that does not"
                " show that it was not rebuilt",
            )
        )
    else:
        if given is not None and named is not None and named != given:
            problems.append(
                Problem(head_line, f"signed by another key ({named}), not by the key given")
            )
        if key is None:
            problems.append(
                Problem(
                    head_line or 1,
                    "no key to check the signatures with: the head line names none; give the"
                    " public key of the deployment that wrote the record",
                )
            )
        else:
            problems += _signature_problems(entries, key)
            if head_line:
                problems += _head_problems(head_line, fields, key, len(anchors))
        problems += _unsigned_tail(entries)
        if entries and all(e.sig is None for e in entries):
            problems.append(
                Problem(
                    entries[0].line,
                    "no entry carries a signature (the record was written before it was"
                    " signed, or its signatures were removed): nothing shows that its"
                    " entries are unaltered",
                )
            )
    problems += _anchor_problems(anchors, entries, case_id, key)
    problems += _removed_body_problems(entries)
    problems.sort(key=lambda p: p.line)
    theirs = []
    for k, raw in enumerate(outside, start=1):
        text = raw.strip()
        if text[:1] != b"{" and b" {" in text:  # mosquitto_sub -v: the topic, then the message
            text = text.split(b" ", 1)[1]
        try:
            a = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            continue  # a log of the CIC's holds other messages too
        if isinstance(a, dict) and a.get("type") == ANCHOR_TYPE and a.get("case_id") == case_id:
            theirs.append((k, a))
    problems += [
        Problem(p.line, p.what, outside_name)
        for p in _anchor_problems(theirs, entries, case_id, key)
    ]
    named_keys = {
        k for k in (named, *(_key_of(a.get("key")) for _, a in anchors if isinstance(a, dict))) if k
    }
    return Verification(
        n,
        prev,
        problems,
        key,
        key is not None and key == given,
        signed,
        len(anchors),
        len(theirs),
        frozenset(named_keys),
    )


def _repeated_fields(line: int, raw: bytes) -> list[Problem]:
    """A line that names a field twice, at any depth: a reader may see the one the checks did
    not (a JSON reader keeps the last)."""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        repeated.extend(sorted({k for k in keys if keys.count(k) > 1}))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except ValueError:
        return []  # not JSON: said already
    if not repeated:
        return []
    return [
        Problem(
            line,
            f"names a field twice ({', '.join(dict.fromkeys(repeated))}): what a reader sees"
            " may not be what was checked",
        )
    ]


def _unknown_fields(line: int, obj: dict[str, Any]) -> list[Problem]:
    """A line with a field an export does not have: something was added that no signature
    covers."""
    if "head" in obj or "anchor" in obj:
        outer = set(obj) - {"head", "anchor"}
        inner = obj.get("head", obj.get("anchor"))
        known = HEAD_FIELDS if "head" in obj else ANCHOR_FIELDS
        extra = outer | (set(inner) - known if isinstance(inner, dict) else set())
    else:
        extra = set(obj) - ENTRY_FIELDS
    if not extra:
        return []
    return [
        Problem(
            line,
            f"holds a field an export does not have ({', '.join(sorted(map(str, extra)))}):"
            " something was added to it",
        )
    ]


def _key_of(value: object) -> str | None:
    """``value`` as a public key (lower-case hex); None if it is none."""
    return value.lower() if isinstance(value, str) and is_key_hex(value) else None


def _cutoff(body: object) -> float:
    """A purge body's ``taken_before`` (NaN: none readable)."""
    cutoff = body.get("taken_before") if isinstance(body, dict) else None
    if isinstance(cutoff, int | float) and not isinstance(cutoff, bool):
        return float(cutoff)
    return math.nan


def _signs(key: str, signature: object, message: Callable[..., bytes], *fields: Any) -> bool:
    """Whether ``signature`` signs ``message(*fields)`` (False when edited fields cannot even
    make one)."""
    try:
        data = message(*fields)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return verify_signature(key, data, signature)


def _runs(marks: Iterable[tuple[_Entry, bool | None]]) -> list[list[_Entry]]:
    """The runs of consecutive entries marked True (False ends a run; None is passed over)."""
    runs: list[list[_Entry]] = [[]]
    for e, bad in marks:
        if bad:
            runs[-1].append(e)
        elif bad is not None and runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _signature_problems(entries: list[_Entry], key: str) -> list[Problem]:
    """Entries whose signature does not match, one problem per run of them: an edit re-hashed
    to the end breaks every signature after it, and the first one tells where it lies."""
    marks = (
        (
            e,
            None
            if e.sig is None
            else not _signs(key, e.sig, head_message, e.case_id, e.seq, e.hash),
        )
        for e in entries
    )
    problems = []
    for run in _runs(marks):
        what = (
            "its signature does not match it: this entry, or one after the previous valid"
            " signature, was changed after it was signed"
        )
        if len(run) > 1:
            what += (
                f"; the signatures of the {len(run) - 1} signed entries after it (to line"
                f" {run[-1].line}) do not match either"
            )
        problems.append(Problem(run[0].line, what))
    return problems


def _unsigned_tail(entries: list[_Entry]) -> list[Problem]:
    """The entries without a signature after the first signed one, one problem per run of
    them: the engine signs every entry it writes, so an entry without one was rewritten (its
    signature removed) or added. Unsigned entries before the first signed one were written
    before the record was signed; the first signature vouches for them through the chain."""
    first = next((k for k, e in enumerate(entries) if e.sig is not None), len(entries))
    problems = []
    for run in _runs((e, e.sig is None) for e in entries[first:]):
        what = (
            "this entry carries no signature, where every entry after the first signed one"
            " does: it was rewritten or added after the record was signed"
        )
        if len(run) > 1:
            what += f"; so do the {len(run) - 1} after it (to line {run[-1].line})"
        problems.append(Problem(run[0].line, what))
    return problems


def _head_problems(line: int, head: dict[str, Any], key: str, anchors: int) -> list[Problem]:
    if "signature" not in head:
        return [
            Problem(
                line,
                "the head line is not signed: it may have been rewritten (to hide a cut end,"
                " or entries changed and re-hashed to the end)",
            )
        ]
    fields = (head.get(k) for k in ("case_id", "count", "hash", "exported", "anchors"))
    if not _signs(key, head["signature"], export_message, *fields):
        return [
            Problem(
                line,
                "the head line's signature does not match it: the head line was rewritten (to"
                " hide a cut end, or entries changed and re-hashed to the end)",
            )
        ]
    if head.get("anchors") != anchors:
        return [
            Problem(
                line,
                f"the head line counts {head.get('anchors')} anchor line(s), the export holds"
                f" {anchors}: anchor lines were removed or added",
            )
        ]
    return []


def _anchor_problems(
    anchors: list[tuple[int, Any]], entries: list[_Entry], case_id: Any, key: str | None
) -> list[Problem]:
    """Each anchor must be signed (by ``key``; with no key known, by the key it names) and
    name an entry of the chain as the chain holds it."""
    problems: list[Problem] = []
    by_seq = {e.seq: e for e in entries if isinstance(e.seq, int)}
    for line, a in anchors:
        if not isinstance(a, dict) or a.get("type") != ANCHOR_TYPE:
            problems.append(Problem(line, "an anchor line that holds no evidence anchor"))
            continue
        c, count, h, at, signer = (a.get(k) for k in ("case_id", "count", "hash", "time", "key"))
        if case_id is not None and c != case_id:
            problems.append(Problem(line, f"an anchor of case {c!r} in the export of {case_id!r}"))
            continue
        signer = _key_of(signer)
        if key is not None and signer != key:
            problems.append(
                Problem(
                    line,
                    f"the anchor is signed by another key ({signer}), not by the key the"
                    " export is checked with",
                )
            )
            continue
        if signer is None or not _signs(
            signer, a.get("signature"), anchor_message, c, count, h, at
        ):
            problems.append(
                Problem(
                    line,
                    "the anchor's signature does not match it: the anchor was forged or altered",
                )
            )
            continue
        if not isinstance(count, int) or count < 0:
            problems.append(Problem(line, f"the anchor names no entry count ({count!r})"))
        elif count > len(entries):
            problems.append(
                Problem(
                    line,
                    f"the anchor of {at} shows that the record then held {count} entries; the"
                    f" export holds {len(entries)}: entries were cut off its end",
                )
            )
        elif count == 0 and h != GENESIS:
            problems.append(Problem(line, "the anchor of an empty record names a hash"))
        elif count and (count not in by_seq or by_seq[count].hash != h):
            where = f" (line {by_seq[count].line})" if count in by_seq else ""
            problems.append(
                Problem(
                    line,
                    f"entry {count}{where} is not the one the anchor of {at} recorded: it, or an"
                    " entry before it, was changed after the anchor was made",
                )
            )
    return problems


def _removed_body_problems(entries: list[_Entry]) -> list[Problem]:
    """A body may be missing only if it is a fix's, taken before the cutoff of a purge entry
    recorded after it (which is what retention does)."""
    problems: list[Problem] = []
    cutoff = -math.inf  # the latest cutoff among the purges after the entry
    for e in reversed(entries):
        if e.removed:
            if e.kind != "fix":
                problems.append(
                    Problem(
                        e.line,
                        f"the body of this {e.kind} entry was removed; retention removes only"
                        " the bodies of fix entries, so it was removed by other means",
                    )
                )
            elif not (isinstance(e.t, int | float) and e.t < cutoff):
                problems.append(
                    Problem(
                        e.line,
                        "the body of this fix entry was removed, and no purge entry after it"
                        " covers it (retention records a purge of the fixes taken before a"
                        " cutoff): it was removed by other means",
                    )
                )
        if e.kind == "purge" and not math.isnan(e.cutoff):
            cutoff = max(cutoff, e.cutoff)
    return problems


def read_track(path: Path, case_id: str, since: float) -> list[dict[str, Any]]:
    """The fixes of case ``case_id`` recorded at or after ``since`` (epoch seconds), oldest
    first, as ``{device, t_fix, lat, lon, acc_m}``: through a read-only connection of its own
    (for the HTTP API's threads; the engine's writes go on)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return []
    try:
        rows = db.execute(
            "SELECT body FROM evidence WHERE case_id=? AND kind='fix' AND t>=?"
            " AND body IS NOT NULL ORDER BY seq",
            (case_id, since),
        ).fetchall()
        staged = db.execute("SELECT block FROM staged WHERE t>=? ORDER BY id", (since,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()
    bodies = [_unpack_body(bytes(body)) for (body,) in rows]
    for (data,) in staged:  # taken, not folded into the chain yet
        block = unpack_block(bytes(data))
        if case_id in block.cases:
            mine = np.flatnonzero(block.case_of == block.cases.index(case_id))
            bodies.append(block_bodies(block, mine))
    out: list[dict[str, Any]] = []
    for b in bodies:
        for dev, t, lat, lon, acc in zip(
            b["device"], b["t_fix"], b["lat"], b["lon"], b["acc_m"], strict=True
        ):
            if t >= since:
                out.append(
                    {
                        "device": dev,
                        "t_fix": t,
                        "lat": lat,
                        "lon": lon,
                        "acc_m": acc if acc >= 0 else None,
                    }
                )
    out.sort(key=lambda f: f["t_fix"])
    return out
