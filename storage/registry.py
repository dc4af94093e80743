"""The case registry: cases, their devices and orders, in SQLite (the embedded default)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from proximity.cases import Case, CaseFile, Device, case_document
from proximity.errors import RegistryError
from storage.store import make_private

SCHEMA_VERSION = 5
#: Keys of a device description whose values are secrets: never shown, never in the change
#: record (only that they changed).
SECRET_KEYS = frozenset({"key", "secret", "password", "token"})
REDACTED = "***"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id                 TEXT PRIMARY KEY,
    order_distance_m   REAL NOT NULL CHECK (order_distance_m > 0),
    warning_distance_m REAL NOT NULL CHECK (warning_distance_m >= order_distance_m),
    summary            TEXT NOT NULL,  -- JSON object of text fields
    zones              TEXT NOT NULL,  -- GeoJSON FeatureCollection
    updated_at         TEXT NOT NULL,
    mobility           TEXT NOT NULL DEFAULT '{}',  -- {"offenders": m/s, "protected": m/s}
    escalation_distance_m REAL,  -- NULL: the engine's escalation_fraction of the order distance
    share_offender_position INTEGER NOT NULL DEFAULT 0  -- the victim's notices may show him
);
CREATE TABLE IF NOT EXISTS case_devices (
    case_id   TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    role      TEXT NOT NULL CHECK (role IN ('offender', 'protected')),
    position  INTEGER NOT NULL,
    PRIMARY KEY (case_id, device_id)
);
CREATE INDEX IF NOT EXISTS case_devices_by_device ON case_devices(device_id);
CREATE TABLE IF NOT EXISTS devices (
    id   TEXT PRIMARY KEY,
    info TEXT NOT NULL  -- JSON object: aliases, reporting interval, ...
);
-- Every change, in order: who changed what (the engine records each in the evidence record
-- of the cases it touches, and applies the registry as it is after it).
CREATE TABLE IF NOT EXISTS changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,  -- ISO 8601 UTC
    actor   TEXT NOT NULL,  -- the user of the HTTP API, or the local account of the CLI
    action  TEXT NOT NULL,  -- case_created, case_changed, case_ended, device_described
    case_id TEXT,           -- NULL for a device's description: see detail.cases
    detail  TEXT NOT NULL   -- JSON object
);
"""


@dataclass(frozen=True, slots=True)
class ImportReport:
    created: tuple[str, ...]
    updated: tuple[str, ...]
    devices: int


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change record: who did what to which case, when."""

    seq: int
    at: str
    actor: str
    action: str
    case_id: str | None
    detail: dict[str, object]

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "case_id": self.case_id,
            "detail": self.detail,
        }


def redacted(value: object) -> object:
    """``value`` with every secret of a device description replaced by ``***``."""
    if isinstance(value, Mapping):
        return {k: REDACTED if k in SECRET_KEYS else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def differences(old: object, new: object, path: str = "") -> dict[str, list[object]]:
    """``{field path: [old value, new value]}`` of what differs between two case documents
    (objects compared field by field, except zones, compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict) and path != "zones":
        out: dict[str, list[object]] = {}
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            out |= differences(old.get(key), new.get(key), sub)
        return out
    return {} if old == new else {path: [old, new]}


@dataclass(frozen=True, slots=True)
class RemoveReport:
    case_id: str
    offenders: tuple[str, ...]
    protected: tuple[str, ...]
    #: Descriptions of the case's devices: removed with it (in no other case), kept because
    #: another case uses the device, or kept on request (``keep_devices``).
    devices_removed: tuple[str, ...]
    devices_shared: tuple[str, ...]
    devices_kept: tuple[str, ...]


def _owntracks_app(info: object) -> tuple[str, str] | None:
    ot = info.get("owntracks") if isinstance(info, dict) else None
    if (
        isinstance(ot, dict)
        and isinstance(ot.get("user"), str)
        and isinstance(ot.get("device"), str)
    ):
        return ot["user"], ot["device"]
    return None


def _one_device_per_app(db: sqlite3.Connection, case_file: CaseFile) -> None:
    """An OwnTracks app speaks for one device: one that another registered device already
    names (from an earlier import) would let the wrong account publish as it. RegistryError."""
    incoming = {d.id for d in case_file.devices}
    taken = {}
    for dev_id, info in db.execute("SELECT id, info FROM devices"):
        app = _owntracks_app(json.loads(info))
        if app is not None and dev_id not in incoming:  # the file's own are replaced
            taken[app] = dev_id
    clashes = [
        f"device {d.id!r}: OwnTracks {app[0]}/{app[1]} is already device {taken[app]!r}"
        for d in case_file.devices
        if (app := _owntracks_app(dict(d.info))) is not None and app in taken
    ]
    if clashes:
        raise RegistryError(
            "import refused, nothing written: " + "; ".join(clashes) + " (give each device its"
            " own app, or change the other device's entry in the same file)"
        )


class Registry:
    """A SQLite registry file. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise RegistryError(
                f"cannot open the registry {self.path}: folder {self.path.parent} does not exist"
            )
        try:
            make_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path} was written by a newer version (schema {row[0]}); upgrade"
                )
            elif int(row[0]) < SCHEMA_VERSION:
                self._migrate(int(row[0]))
        except (sqlite3.DatabaseError, OSError) as exc:
            raise RegistryError(f"cannot use {self.path} as a registry: {exc}") from exc

    def _migrate(self, version: int) -> None:
        """Bring an older registry file up to :data:`SCHEMA_VERSION`, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        if version < 2:  # schema 2: per-case mobility (top speeds of offenders and protected)
            db.execute("ALTER TABLE cases ADD COLUMN mobility TEXT NOT NULL DEFAULT '{}'")
        if version < 3:  # schema 3: per-case escalation distance
            db.execute("ALTER TABLE cases ADD COLUMN escalation_distance_m REAL")
        # schema 4: the change record (its table is made by _SCHEMA; nothing to convert)
        if version < 5:  # schema 5: whether the victim's notices may show the offender
            db.execute(
                "ALTER TABLE cases ADD COLUMN share_offender_position INTEGER NOT NULL DEFAULT 0"
            )
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, failed: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back on any error; a
        database error becomes a RegistryError that starts with ``failed``."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise RegistryError(f"{failed}: {exc}") from exc
            raise
        db.execute("COMMIT")

    def import_file(self, case_file: CaseFile, actor: str = "") -> ImportReport:
        """Write every case and device of the file in one transaction (all or nothing), and
        what changed in the change record, as done by ``actor``.

        A case whose id is already registered is replaced by the file's version.
        """
        now = datetime.now(UTC).isoformat()
        created: list[str] = []
        updated: list[str] = []
        with self._transaction(f"import into {self.path} failed, nothing written") as db:
            before = {c.id: case_document(c) for c in self._cases(db)}
            for case in case_file.cases:
                exists = case.id in before
                (updated if exists else created).append(case.id)
                doc = case_document(case)
                if not exists:
                    self._change(db, now, actor, "case_created", case.id, {"case": doc})
                elif changed := differences(before[case.id], doc):
                    self._change(db, now, actor, "case_changed", case.id, {"changed": changed})
                db.execute(
                    "INSERT INTO cases(id, order_distance_m, warning_distance_m, summary, zones,"
                    " updated_at, mobility, escalation_distance_m, share_offender_position)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET"
                    " order_distance_m=excluded.order_distance_m,"
                    " warning_distance_m=excluded.warning_distance_m,"
                    " summary=excluded.summary, zones=excluded.zones,"
                    " updated_at=excluded.updated_at, mobility=excluded.mobility,"
                    " escalation_distance_m=excluded.escalation_distance_m,"
                    " share_offender_position=excluded.share_offender_position",
                    (
                        case.id,
                        case.order_distance_m,
                        case.warning_distance_m,
                        json.dumps(dict(case.summary), ensure_ascii=False),
                        json.dumps(case.zones, ensure_ascii=False),
                        now,
                        json.dumps(
                            {
                                "offenders": case.offender_top_speed_mps,
                                "protected": case.protected_top_speed_mps,
                            }
                        ),
                        case.escalation_distance_m,
                        int(case.share_offender_position),
                    ),
                )
                db.execute("DELETE FROM case_devices WHERE case_id=?", (case.id,))
                rows = [(case.id, d, "offender", i) for i, d in enumerate(case.offenders)]
                rows += [(case.id, d, "protected", i) for i, d in enumerate(case.protected)]
                db.executemany(
                    "INSERT INTO case_devices(case_id, device_id, role, position)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
            _one_device_per_app(db, case_file)
            for dev in case_file.devices:
                row = db.execute("SELECT info FROM devices WHERE id=?", (dev.id,)).fetchone()
                info = dict(dev.info)
                if row is None or json.loads(row[0]) != info:
                    users = db.execute(
                        "SELECT case_id FROM case_devices WHERE device_id=? ORDER BY case_id",
                        (dev.id,),
                    ).fetchall()
                    detail = {
                        "device": dev.id,
                        "info": redacted(info),
                        "cases": [c for (c,) in users],
                    }
                    self._change(db, now, actor, "device_described", None, detail)
                db.execute(
                    "INSERT INTO devices(id, info) VALUES (?, ?)"
                    " ON CONFLICT(id) DO UPDATE SET info=excluded.info",
                    (dev.id, json.dumps(dict(dev.info), ensure_ascii=False)),
                )
        return ImportReport(tuple(created), tuple(updated), len(case_file.devices))

    def remove_case(
        self, case_id: str, *, keep_devices: bool = False, actor: str = ""
    ) -> RemoveReport | None:
        """Remove a case and its device memberships, in one transaction, recorded as done by
        ``actor``; None if there is no such case. The descriptions of its devices that no
        other case uses go with it, unless ``keep_devices``. The evidence record is another
        file and is not touched."""
        failed = f"removing case {case_id} from {self.path} failed, nothing changed"
        with self._transaction(failed) as db:
            if db.execute("SELECT 1 FROM cases WHERE id=?", (case_id,)).fetchone() is None:
                return None
            now = datetime.now(UTC).isoformat()
            self._change(db, now, actor, "case_ended", case_id, {})
            members = db.execute(
                "SELECT device_id, role FROM case_devices WHERE case_id=? ORDER BY role, position",
                (case_id,),
            ).fetchall()
            db.execute("DELETE FROM case_devices WHERE case_id=?", (case_id,))
            db.execute("DELETE FROM cases WHERE id=?", (case_id,))
            removed: list[str] = []
            shared: list[str] = []
            kept: list[str] = []
            for device_id, _ in members:
                described = db.execute("SELECT 1 FROM devices WHERE id=?", (device_id,)).fetchone()
                if described is None:
                    continue
                elsewhere = db.execute(
                    "SELECT 1 FROM case_devices WHERE device_id=? LIMIT 1", (device_id,)
                ).fetchone()
                if elsewhere is not None:
                    shared.append(device_id)
                elif keep_devices:
                    kept.append(device_id)
                else:
                    db.execute("DELETE FROM devices WHERE id=?", (device_id,))
                    removed.append(device_id)
        return RemoveReport(
            case_id,
            tuple(d for d, role in members if role == "offender"),
            tuple(d for d, role in members if role == "protected"),
            tuple(removed),
            tuple(shared),
            tuple(kept),
        )

    @staticmethod
    def _change(
        db: sqlite3.Connection,
        at: str,
        actor: str,
        action: str,
        case_id: str | None,
        detail: dict[str, object],
    ) -> None:
        db.execute(
            "INSERT INTO changes(at, actor, action, case_id, detail) VALUES (?, ?, ?, ?, ?)",
            (at, actor or "unknown", action, case_id, json.dumps(detail, ensure_ascii=False)),
        )

    def changes(self, after: int = 0, case_id: str | None = None) -> list[Change]:
        """The change record after seq ``after``, in order (of one case, if given: a
        device's description counts for the cases that use it)."""
        rows = self._db.execute(
            "SELECT seq, at, actor, action, case_id, detail FROM changes WHERE seq > ?"
            " ORDER BY seq",
            (after,),
        )
        out = [Change(int(q), a, who, what, c, json.loads(d)) for q, a, who, what, c, d in rows]
        if case_id is None:
            return out
        return [
            ch
            for ch in out
            if ch.case_id == case_id or case_id in ch.detail.get("cases", [])  # type: ignore[operator]
        ]

    def last_change(self) -> int:
        """The seq of the latest change (0: none)."""
        (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        return int(seq)

    def data_version(self) -> int:
        """A number that changes when another connection commits to the file (SQLite's
        ``PRAGMA data_version``): the engine's cheap test for a change to apply."""
        (v,) = self._db.execute("PRAGMA data_version").fetchone()
        return int(v)

    def case(self, case_id: str) -> Case | None:
        """The registered case ``case_id``, or None."""
        return next((c for c in self._cases(self._db, case_id) if c.id == case_id), None)

    def cases(self) -> list[Case]:
        """Every registered case, ordered by id."""
        return self._cases(self._db)

    @staticmethod
    def _cases(db: sqlite3.Connection, only: str | None = None) -> list[Case]:
        where, args = ("WHERE case_id=?", (only,)) if only is not None else ("", ())
        members: dict[str, dict[str, list[str]]] = {}
        for case_id, device_id, role in db.execute(
            f"SELECT case_id, device_id, role FROM case_devices {where}"
            " ORDER BY case_id, role, position",
            args,
        ):
            members.setdefault(case_id, {"offender": [], "protected": []})[role].append(device_id)
        out = []
        for case_id, order_m, warning_m, summary, zones, mobility, esc_m, share in db.execute(
            "SELECT id, order_distance_m, warning_distance_m, summary, zones, mobility,"
            " escalation_distance_m, share_offender_position"
            f" FROM cases {where.replace('case_id', 'id')} ORDER BY id",
            args,
        ):
            m = members.get(case_id, {"offender": [], "protected": []})
            speeds = json.loads(mobility)
            out.append(
                Case(
                    id=case_id,
                    offenders=tuple(m["offender"]),
                    protected=tuple(m["protected"]),
                    order_distance_m=order_m,
                    warning_distance_m=warning_m,
                    summary=json.loads(summary),
                    zones=json.loads(zones),
                    offender_top_speed_mps=speeds.get("offenders"),
                    protected_top_speed_mps=speeds.get("protected"),
                    escalation_distance_m=esc_m,
                    share_offender_position=bool(share),
                )
            )
        return out

    def devices(self) -> list[Device]:
        return [
            Device(dev_id, json.loads(info))
            for dev_id, info in self._db.execute("SELECT id, info FROM devices ORDER BY id")
        ]
