"""Durable SQLite files of the engine (the outbox journal, the evidence record).

A write that the disk refuses (full, read-only, failing) raises :class:`sqlite3.Error`
(:data:`WRITE_ERRORS`) and leaves the file as it was before the transaction; the running
engine keeps what it could not write in memory and writes it when the disk takes it again
(:mod:`storage.backlog`)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proximity.errors import ProximityError

#: What a write to a SQLite file raises when the disk refuses it.
WRITE_ERRORS = (sqlite3.Error, OSError)


def make_private(path: Path) -> None:
    """Create ``path`` empty, readable and writable by its owner only, or make an existing file
    of ours so: the registry, the journal and the evidence record hold the protected persons'
    names, phones and positions. (SQLite gives its -wal and -shm files the database file's
    permissions.)"""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():  # made before, readable by all
            path.chmod(0o600)


def write_whole(path: Path, text: str | bytes, private: bool = False, group: int = -1) -> None:
    """Write ``path`` whole, through a temporary file (a reader, the broker say, never finds
    half of it); ``private``: readable by its owner only, or also by ``group`` if given (the
    broker's); a file it replaces takes the new mode."""
    tmp = path.with_name(path.name + ".tmp")
    data = text.encode() if isinstance(text, str) else text
    mode = (0o640 if group >= 0 else 0o600) if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    if group >= 0:
        os.chown(tmp, -1, group)
    os.replace(tmp, path)


def open_durable(
    path: Path, what: str, schema: str, synchronous: str = "FULL"
) -> sqlite3.Connection:
    """Open (or create) ``path`` in WAL mode and apply ``schema``; problems are
    :class:`ProximityError` naming ``what`` the file is for. ``synchronous=FULL``: a committed
    transaction survives a crash of the process and of the machine; ``NORMAL``: it survives a
    crash of the process, and the file stays consistent, but a power loss can take the last
    transactions (no disk flush per commit)."""
    if not path.parent.is_dir():
        raise ProximityError(f"cannot open the {what} {path}: folder {path.parent} does not exist")
    try:
        make_private(path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise ProximityError(f"cannot use {path} as the {what}: {exc}") from exc
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (a full disk): then there is nothing to
        # roll back, and trying would hide the error that matters.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
