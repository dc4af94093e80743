"""The outbox journal: every message to the CIC is committed here before it is published.

An alarm that does not arrive is worse than none. So the channel writes each message (the
JSON alarm and its CAP form) to this SQLite file (WAL, ``synchronous=FULL``: a committed
message survives a crash of the process and of the machine) before handing it to MQTT with
QoS 1, and marks it delivered only when the broker has acknowledged it (PUBACK). While the
broker is away, the MQTT client keeps the messages and sends them, in order, when it is back
(it reconnects with backoff); after an engine restart, the channel first publishes everything
the journal holds undelivered, in journal order, then new messages. A message may so arrive
twice (QoS 1 allows it); the alarm id lets the CIC drop the repeat.

The same file keeps the engine's state (:mod:`proximity.memory`): what changed with a batch
is written in the transaction of the batch's messages (:meth:`Journal.append`), or on its own
(:meth:`Journal.save_state`), so the messages and the state that raised them cannot disagree
after a crash; :meth:`Journal.load_state` reads it back at start.

Used from the engine's thread only; the broker's acknowledgements are read there too.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proximity.memory import VERSION, Delta, Saved
from storage.store import open_durable, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id  TEXT NOT NULL,
    topic     TEXT NOT NULL,
    payload   BLOB NOT NULL,
    created   REAL NOT NULL,   -- UTC epoch seconds, when it was journalled
    delivered REAL             -- when the broker acknowledged it; NULL: not yet
);
CREATE INDEX IF NOT EXISTS outbox_undelivered ON outbox(seq) WHERE delivered IS NULL;
-- The engine's state (proximity.memory): its layout, its arrays in chunks, its records and
-- the alarm book.
CREATE TABLE IF NOT EXISTS state_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state_array (
    name TEXT PRIMARY KEY, axis TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state_chunk (
    name TEXT NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (name, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_record (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state_alarm (
    alarm_id TEXT PRIMARY KEY, ord INTEGER NOT NULL, body TEXT NOT NULL
);
"""
_STATE_TABLES = ("state_meta", "state_array", "state_chunk", "state_record", "state_alarm")


class StateError(Exception):
    """A saved state that cannot be read back (the engine then starts without it)."""


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    alarm_id: str
    topic: str
    payload: bytes
    created: float


class Journal:
    """An outbox in a SQLite file (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = open_durable(self.path, "journal", _SCHEMA)

    def append(
        self, items: list[tuple[str, str, bytes]], now: float, state: Delta | None = None
    ) -> list[int]:
        """Commit ``(alarm_id, topic, payload)`` items, and what changed in the engine's
        state with them, in one transaction; their seqs."""
        with transaction(self._db) as db:
            if state:
                _write_state(db, state)
            seqs = [
                int(
                    db.execute(
                        "INSERT INTO outbox(alarm_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                        (alarm_id, topic, payload, now),
                    ).lastrowid
                    or 0
                )
                for alarm_id, topic, payload in items
            ]
        return seqs

    def restore(self, items: list[tuple[str, str, bytes, float, float]]) -> list[int]:
        """Commit ``(alarm_id, topic, payload, created, delivered)`` items (``delivered``
        NaN: not yet) in one transaction, after the fact: messages published while the
        journal refused writes. Their seqs."""
        with transaction(self._db) as db:
            return [
                int(
                    db.execute(
                        "INSERT INTO outbox(alarm_id, topic, payload, created, delivered)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (a, topic, payload, created, None if math.isnan(d) else d),
                    ).lastrowid
                    or 0
                )
                for a, topic, payload, created, d in items
            ]

    def mark_delivered(self, marks: list[tuple[int, float]]) -> None:
        """Record deliveries: ``(seq, when the broker acknowledged it)``."""
        if marks:
            with transaction(self._db) as db:
                db.executemany(
                    "UPDATE outbox SET delivered=? WHERE seq=? AND delivered IS NULL",
                    [(t, s) for s, t in marks],
                )

    def undelivered(self) -> list[Entry]:
        """Everything not acknowledged yet, in journal order."""
        return [
            Entry(int(seq), alarm_id, topic, bytes(payload), float(created))
            for seq, alarm_id, topic, payload, created in self._db.execute(
                "SELECT seq, alarm_id, topic, payload, created FROM outbox"
                " WHERE delivered IS NULL ORDER BY seq"
            )
        ]

    def save_state(self, state: Delta) -> None:
        """Commit what changed in the engine's state (no message with it)."""
        if state:
            with transaction(self._db) as db:
                _write_state(db, state)

    def load_state(self) -> Saved | None:
        """The engine's state as last saved (None: never saved); :class:`StateError` when it
        cannot be read back."""
        try:
            return _read_state(self._db)
        except (sqlite3.Error, ValueError, TypeError, KeyError, IndexError) as exc:
            raise StateError(f"the saved engine state in {self.path} is unreadable: {exc}") from exc

    def first_messages(self, alarm_ids: list[str], topic: str) -> dict[str, bytes]:
        """The first message on ``topic`` of each of ``alarm_ids`` that has one (one pass
        over the journal, at start)."""
        wanted = set(alarm_ids)
        rows = self._db.execute(
            "SELECT alarm_id, payload FROM outbox WHERE seq IN"
            " (SELECT MIN(seq) FROM outbox WHERE topic=? GROUP BY alarm_id)",
            (topic,),
        )
        return {a: bytes(payload) for a, payload in rows if a in wanted}

    def payloads(self, topic: str) -> list[bytes]:
        """Every message journalled on ``topic``, in journal order (the evidence anchors, for
        an export)."""
        return [
            bytes(payload)
            for (payload,) in self._db.execute(
                "SELECT payload FROM outbox WHERE topic=? ORDER BY seq", (topic,)
            )
        ]

    def close(self) -> None:
        self._db.close()


def _write_state(db: sqlite3.Connection, d: Delta) -> None:
    if d.full:
        for table in _STATE_TABLES:
            db.execute(f"DELETE FROM {table}")  # (names from the list above)
        db.executemany(
            "INSERT INTO state_meta(key, value) VALUES (?, ?)",
            [("version", str(VERSION)), ("axes", json.dumps(d.axes))],
        )
        db.executemany(
            "INSERT INTO state_array(name, axis, dtype, shape) VALUES (?, ?, ?, ?)",
            [(n, axis, dtype, json.dumps(shape)) for n, (axis, dtype, shape) in d.layout.items()],
        )
    db.executemany(
        "INSERT OR REPLACE INTO state_chunk(name, chunk, data) VALUES (?, ?, ?)",
        [(n, c, values.tobytes()) for n, c, values in d.chunks],
    )
    db.executemany(
        "INSERT OR REPLACE INTO state_record(name, body) VALUES (?, ?)",
        [(n, json.dumps(v)) for n, v in d.records.items()],
    )
    db.executemany(
        "INSERT OR REPLACE INTO state_alarm(alarm_id, ord, body) VALUES (?, ?, ?)",
        [(a, order, json.dumps(body)) for a, order, body in d.alarms],
    )
    db.executemany("DELETE FROM state_alarm WHERE alarm_id=?", [(a,) for a in d.forgotten])


def _read_state(db: sqlite3.Connection) -> Saved | None:
    meta = dict(db.execute("SELECT key, value FROM state_meta"))
    if not meta:
        return None
    if int(meta["version"]) != VERSION:
        raise ValueError(f"it was saved by another version (layout {meta['version']})")
    arrays: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    for name, axis, dtype, shape_text in db.execute(
        "SELECT name, axis, dtype, shape FROM state_array"
    ).fetchall():
        shape = tuple(int(x) for x in json.loads(shape_text))
        data = b"".join(
            bytes(b)
            for (b,) in db.execute(
                "SELECT data FROM state_chunk WHERE name=? ORDER BY chunk", (name,)
            )
        )
        kind = np.dtype(dtype)
        if len(data) != math.prod(shape) * kind.itemsize:
            raise ValueError(f"array {name} has {len(data)} bytes for shape {shape} of {kind}")
        values = np.frombuffer(data, dtype=kind)
        arrays[name] = (axis, values.reshape(shape).copy())
    records = {n: json.loads(b) for n, b in db.execute("SELECT name, body FROM state_record")}
    alarms = []
    for order, body in db.execute("SELECT ord, body FROM state_alarm ORDER BY ord"):
        alarms.append(json.loads(body) | {"order": int(order)})
    return Saved(json.loads(meta["axes"]), arrays, records, alarms)
