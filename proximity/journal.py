"""The outbox journal: every message to the CIC is committed here before it is published.

An alarm that does not arrive is worse than none. So the channel writes each message (the
JSON alarm and its CAP form) to this SQLite file (WAL, ``synchronous=FULL``: a committed
message survives a crash of the process and of the machine) before handing it to MQTT with
QoS 1, and marks it delivered only when the broker has acknowledged it (PUBACK). While the
broker is away, the MQTT client keeps the messages and sends them, in order, when it is back
(it reconnects with backoff); after an engine restart, the channel first publishes everything
the journal holds undelivered, in journal order, then new messages. A message may so arrive
twice (QoS 1 allows it); the alarm id lets the CIC drop the repeat.

Used from the engine's thread only; the broker's acknowledgements are read there too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from proximity.store import open_durable, transaction

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
"""


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

    def append(self, items: list[tuple[str, str, bytes]], now: float) -> list[int]:
        """Commit ``(alarm_id, topic, payload)`` items in one transaction; their seqs."""
        with transaction(self._db) as db:
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

    def close(self) -> None:
        self._db.close()
