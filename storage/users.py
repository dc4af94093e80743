"""Who may use the operator service, and the audit log of what they read.

The users of the HTTP API (:mod:`service.api`) each have a role and a bearer token. The token
is shown once, when ``proximity users add`` issues it, and stored only as its SHA-256 (a token
is 32 random bytes: a hash that cannot be reversed is enough, no slow hash is needed). Roles:

- ``operator``: the alarms, their message trails and the live positions of cases in alarm;
  acknowledges and closes alarms;
- ``case_manager``: cases, zones and device descriptions;
- ``researcher``: pseudonymised alarm history and statistics only (no name, phone or device
  id; positions no finer than a grid cell);
- ``admin``: everything, and the audit log.

Every read of a protected person's position through the API is a row of the audit log: who,
when, which case, and why (the alarm id the position came with). The file is SQLite, beside
the registry (``REGISTRY.users.sqlite``), private to its owner.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from proximity.errors import RegistryError
from storage.store import make_private

ROLES = ("operator", "case_manager", "researcher", "admin")
#: A token starts with this, so that one pasted in the wrong place is recognisable.
TOKEN_PREFIX = "pxt_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,  -- ISO 8601 UTC
    user     TEXT NOT NULL,
    role     TEXT NOT NULL,
    case_id  TEXT NOT NULL,
    alarm_id TEXT,           -- why: the alarm the position came with
    what     TEXT NOT NULL   -- the request: 'GET /api/alarms', 'stream', ...
);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created_at: str = ""
    revoked_at: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    at: str
    user: str
    role: str
    case_id: str
    alarm_id: str | None
    what: str

    def to_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "at": self.at,
            "user": self.user,
            "role": self.role,
            "case_id": self.case_id,
            "alarm_id": self.alarm_id,
            "what": self.what,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a user's name (it is also an account at the broker and the
    operator named in the CIC's messages), or None."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return "a user's name must be 1 to 64 characters"
    if not all(c.isalnum() or c in "-_." for c in name):
        return f"{name!r}: a user's name may hold only letters, digits, '-', '_' and '.'"
    return None


class Users:
    """The users and the audit log, in a SQLite file (made if missing). Safe to share
    between threads (one connection, one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise RegistryError(
                f"cannot open the users file {self.path}: folder {self.path.parent} does not exist"
            )
        self._lock = threading.Lock()
        try:
            make_private(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise RegistryError(f"cannot use {self.path} as the users file: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Users:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, name: str, role: str, *, replace: bool = False) -> str:
        """Issue a token to ``name`` with ``role`` and return it (it is not stored: only its
        hash). ``replace``: a user of that name gets a new token and role (the old token stops
        working). RegistryError for a bad name or role, or a name taken."""
        problem = name_problem(name)
        if problem:
            raise RegistryError(problem)
        if role not in ROLES:
            raise RegistryError(f"role {role!r} is not one of {', '.join(ROLES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC).isoformat()
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone()
            if exists and not replace:
                raise RegistryError(
                    f"user {name!r} exists: 'proximity users add {name} --role {role} --replace'"
                    " issues a new token"
                )
            self._db.execute(
                "INSERT INTO users(name, role, token_hash, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET role=excluded.role,"
                " token_hash=excluded.token_hash, created_at=excluded.created_at,"
                " revoked_at=NULL",
                (name, role, token_hash(token), now),
            )
        return token

    def revoke(self, name: str) -> bool:
        """Stop ``name``'s token working; False if there is no such user."""
        now = datetime.now(UTC).isoformat()
        with self._lock:
            cur = self._db.execute(
                "UPDATE users SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (now, name)
            )
        return cur.rowcount > 0

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, role, created_at, revoked_at FROM users ORDER BY name"
            ).fetchall()
        return [User(*r) for r in rows]

    def check(self, token: str) -> User | None:
        """The user whose token ``token`` is (not revoked), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, role, created_at FROM users"
                " WHERE token_hash=? AND revoked_at IS NULL",
                (token_hash(token),),
            ).fetchone()
        return None if row is None else User(*row)

    def audit(self, user: User, what: str, reads: Iterable[tuple[str, str | None]]) -> int:
        """Record that ``user`` read the protected person's position of each ``(case id,
        alarm id)`` in ``reads`` (once each) through ``what``; how many rows."""
        rows = sorted(set(reads), key=lambda r: (r[0], r[1] or ""))
        if not rows:
            return 0
        now = datetime.now(UTC).isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO audit(at, user, role, case_id, alarm_id, what)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(now, user.name, user.role, c, a, what) for c, a in rows],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return len(rows)

    def audit_log(
        self, after: int = 0, case_id: str | None = None, user: str | None = None
    ) -> list[AuditRow]:
        """The audit log after seq ``after``, in order (of one case or user if given)."""
        sql = "SELECT seq, at, user, role, case_id, alarm_id, what FROM audit WHERE seq > ?"
        args: list[object] = [after]
        if case_id is not None:
            sql += " AND case_id = ?"
            args.append(case_id)
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [AuditRow(*r) for r in rows]


def users_path(db: Path) -> Path:
    """Where the users and the audit log of the registry ``db`` are."""
    return db.with_suffix(".users.sqlite")
