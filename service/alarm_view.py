"""The operators' view of the alarms, read from the outbox journal.

Every alarm message the engine sends is committed to the journal first (:mod:`cic.journal`),
with a seq that only grows. So the journal is the one source the HTTP API reads: the open
queue (each alarm's last message), the history, one alarm's message trail, and the live
stream (every message after a seq: a client that reconnects with the last seq it saw misses
nothing). The view reads the file through its own read-only connection, from the API's
threads; the engine's thread is never asked.

Which alarms wait for an operator follows the engine's own book (:mod:`proximity.alarms`):
an alarm waits from when it opens, or rises in level, until it is acknowledged, closed or
ended. Operators work incidents (the alarms of one situation, :mod:`proximity.incidents`):
the queue's order is the incident's priority, then the incident's age, so that its alarms
stand together; within one incident, each alarm's own priority, then age, oldest first. An
incident's priority and members are the engine's, from the incident messages it journals
next to the alarms (``incident_topic``); only an alarm whose incident has no message (a
journal from before incidents) has them derived here, as the engine would.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: The levels in rising order (the message's wire names).
LEVELS = ("pre_alert", "alarm", "escalation")
PRIORITIES = ("high", "medium", "low")
#: Alarm types an operator must see first whatever their level: a person pressed for help,
#: or the engine's protection of every case is interrupted.
HIGH_TYPES = frozenset({"panic", "engine_fault"})
#: States after which an alarm is no longer open.
DONE = frozenset({"ended", "closed"})


def priority(message: dict[str, Any]) -> str:
    """``high`` (an escalation, a panic, an engine fault), ``medium`` (an alarm) or ``low``
    (a pre-alert); an incident's is its open alarms' highest (as the engine's)."""
    if message.get("level") == "escalation" or message.get("type") in HIGH_TYPES:
        return "high"
    return "medium" if message.get("level") == "alarm" else "low"


def derived_priorities(alarms: list[AlarmSummary]) -> dict[str, str]:
    """Each incident's priority as the engine derives it: the highest of ``alarms``."""
    out: dict[str, str] = {}
    for s in alarms:
        p, was = priority(s.message), out.get(s.incident)
        if was is None or PRIORITIES.index(p) < PRIORITIES.index(was):
            out[s.incident] = p
    return out


def _rank(level: object) -> int:
    return LEVELS.index(level) if isinstance(level, str) and level in LEVELS else -1


@dataclass
class AlarmSummary:
    """One alarm as the queue shows it: its last message and how it got there."""

    alarm_id: str
    first_seq: int
    last_seq: int
    opened: str  # times.decided of its first message
    message: dict[str, Any]
    awaiting: bool
    messages: int

    @property
    def open(self) -> bool:
        return self.message.get("state") not in DONE

    @property
    def incident(self) -> str:
        """Its incident's id (its own id for a message from before incidents)."""
        got = self.message.get("incident_id")
        return got if isinstance(got, str) and got else self.alarm_id

    def to_dict(self, incident_priority: str | None = None) -> dict[str, Any]:
        m = self.message
        return {
            "alarm_id": self.alarm_id,
            "case_id": m.get("case_id"),
            "type": m.get("type"),
            "level": m.get("level"),
            "state": m.get("state"),
            "priority": priority(m),
            "incident_id": self.incident,
            "incident_priority": incident_priority or priority(m),
            "opened": self.opened,
            "updated": (m.get("times") or {}).get("decided"),
            "awaiting_operator": self.awaiting,
            "operator": m.get("operator"),
            "resolution": m.get("resolution"),
            "messages": self.messages,
            "seq": self.last_seq,
            "last": m,
        }


class AlarmView:
    """The alarms of the journal at ``path`` (messages on ``topic``), refreshed from it on
    each use. Thread-safe."""

    def __init__(self, path: Path, topic: str, incident_topic: str | None = None) -> None:
        self.path = path
        self.topic = topic
        self.incident_topic = incident_topic
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._seq = 0  # the newest alarm message read
        self._read = 0  # the newest row read (alarm or incident message)
        self.alarms: dict[str, AlarmSummary] = {}
        #: Each incident's last message from the engine (``incident_topic``).
        self.incidents: dict[str, dict[str, Any]] = {}

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0
            )
            db.execute("PRAGMA query_only=ON")
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def last_seq(self) -> int:
        """The newest alarm message's seq (0: none)."""
        with self._lock:
            self._refresh()
            return self._seq

    def _refresh(self) -> None:
        topics = (self.topic, self.incident_topic or self.topic)
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT seq, alarm_id, topic, payload FROM outbox"
                    " WHERE topic IN (?, ?) AND seq>? ORDER BY seq",
                    (*topics, self._read),
                )
                .fetchall()
            )
        except sqlite3.OperationalError:  # the engine has not made the journal yet
            return
        for seq, key, topic, payload in rows:
            self._read = int(seq)
            if topic == self.topic:
                self._take(int(seq), str(key), orjson.loads(payload))
                self._seq = int(seq)
            else:
                self.incidents[str(key)] = orjson.loads(payload)

    def _take(self, seq: int, alarm_id: str, m: dict[str, Any]) -> None:
        s = self.alarms.get(alarm_id)
        decided = (m.get("times") or {}).get("decided") or ""
        if s is None:
            s = self.alarms[alarm_id] = AlarmSummary(alarm_id, seq, seq, decided, m, False, 0)
        state = m.get("state")
        rose = _rank(m.get("previous_level")) >= 0 and _rank(m.get("previous_level")) < _rank(
            m.get("level")
        )
        if state == "open" or (state == "update" and rose):
            s.awaiting = True
        elif state in ("acknowledged", "closed", "ended", "suspended"):
            s.awaiting = False
        s.message, s.last_seq = m, seq
        s.messages += 1

    def queue(self, include_ended: bool = False) -> list[AlarmSummary]:
        """The open alarms in the queue's order (see the module docstring); with
        ``include_ended`` also those that ended without an operator closing them."""
        with self._lock:
            self._refresh()
            out = [
                s
                for s in self.alarms.values()
                if s.open or (include_ended and s.message.get("state") == "ended")
            ]
            return self._ordered(out)

    def incident(self, incident_id: str) -> list[AlarmSummary]:
        """The open alarms of one incident, in the queue's order."""
        with self._lock:
            self._refresh()
            out = [s for s in self.alarms.values() if s.open and s.incident == incident_id]
            return self._ordered(out)

    def incident_members(self, incident_id: str) -> list[dict[str, Any]]:
        """One incident's alarms as the engine lists them (alarm id, case id, type, level,
        state), or, without an incident message, its open alarms as the queue shows them."""
        with self._lock:
            self._refresh()
            got = self.incidents.get(incident_id, {}).get("alarms")
            if isinstance(got, list):
                return [a for a in got if isinstance(a, dict)]
            mates = [s for s in self.alarms.values() if s.open and s.incident == incident_id]
            return [
                {k: d[k] for k in ("alarm_id", "case_id", "type", "level", "state")}
                for d in (m.to_dict() for m in self._ordered(mates))
            ]

    def priorities(self, alarms: list[AlarmSummary]) -> dict[str, str]:
        """The priority of each incident of ``alarms``: the engine's (its last incident
        message), else derived from the open ones among ``alarms``."""
        with self._lock:
            return self._priorities(alarms)

    def _priorities(self, alarms: list[AlarmSummary]) -> dict[str, str]:
        out = derived_priorities([s for s in alarms if s.open] or alarms)
        for inc in out:
            got = self.incidents.get(inc, {}).get("priority")
            if got in PRIORITIES:
                out[inc] = got
        return out

    def _ordered(self, alarms: list[AlarmSummary]) -> list[AlarmSummary]:
        best = self._priorities(alarms)
        first: dict[str, int] = {}
        for s in alarms:
            first[s.incident] = min(first.get(s.incident, s.first_seq), s.first_seq)

        def key(s: AlarmSummary) -> tuple[int, int, int, int]:
            inc = PRIORITIES.index(best.get(s.incident, priority(s.message)))
            return (inc, first[s.incident], PRIORITIES.index(priority(s.message)), s.first_seq)

        return sorted(alarms, key=key)

    def get(self, alarm_id: str) -> AlarmSummary | None:
        with self._lock:
            self._refresh()
            return self.alarms.get(alarm_id)

    def counts(self) -> tuple[int, int]:
        """(open alarms, open alarms waiting for an operator)."""
        with self._lock:
            self._refresh()
            open_ = [s for s in self.alarms.values() if s.open]
        return len(open_), sum(s.awaiting for s in open_)

    def trail(self, alarm_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Every message of one alarm, in order, with its seq."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT seq, payload FROM outbox WHERE topic=? AND alarm_id=? ORDER BY seq",
                    (self.topic, alarm_id),
                )
                .fetchall()
            )
        return [(int(q), orjson.loads(p)) for q, p in rows]

    def after(self, seq: int, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """The alarm messages after ``seq``, in order (at most ``limit``)."""
        with self._lock:
            try:
                rows = (
                    self._conn()
                    .execute(
                        "SELECT seq, payload FROM outbox"
                        " WHERE topic=? AND seq>? ORDER BY seq LIMIT ?",
                        (self.topic, seq, limit),
                    )
                    .fetchall()
                )
            except sqlite3.OperationalError:
                return []
        return [(int(q), orjson.loads(p)) for q, p in rows]

    def history(
        self,
        *,
        case_id: str | None = None,
        type_: str | None = None,
        level: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[tuple[int, dict[str, Any]]]:
        """Alarm messages, newest first, that match every filter given (``since`` and
        ``until`` compare ISO 8601 UTC decision times)."""
        with self._lock:
            self._refresh()
            ids = None
            if case_id is not None:
                ids = {a for a, s in self.alarms.items() if s.message.get("case_id") == case_id}
            rows = self._conn().execute(
                "SELECT seq, alarm_id, payload FROM outbox WHERE topic=? AND seq<?"
                " ORDER BY seq DESC",
                (self.topic, before_seq if before_seq is not None else 1 << 62),
            )
            out: list[tuple[int, dict[str, Any]]] = []
            for seq, alarm_id, payload in rows:
                if ids is not None and alarm_id not in ids:
                    continue
                m = orjson.loads(payload)
                decided = (m.get("times") or {}).get("decided") or ""
                if (
                    (type_ is not None and m.get("type") != type_)
                    or (level is not None and m.get("level") != level)
                    or (state is not None and m.get("state") != state)
                    or (since is not None and decided < since)
                    or (until is not None and decided > until)
                ):
                    continue
                out.append((int(seq), m))
                if len(out) >= limit:
                    break
        return out
