"""The outbox journal keeps messages, in order, until they are marked delivered, across
reopening the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from proximity.errors import ProximityError
from proximity.journal import Journal


def test_undelivered_messages_survive_reopening_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    a = j.append([("A", "cic/alarms", b"1"), ("A", "cic/alarms/cap", b"<1/>")], 10.0)
    b = j.append([("B", "cic/alarms", b"2")], 11.0)
    assert a[0] < a[1] < b[0]
    j.mark_delivered([a[0]], 12.0)
    j.close()
    j = Journal(path)  # a new process
    assert [(e.seq, e.alarm_id, e.topic, e.payload) for e in j.undelivered()] == [
        (a[1], "A", "cic/alarms/cap", b"<1/>"),
        (b[0], "B", "cic/alarms", b"2"),
    ]
    j.mark_delivered([a[1], b[0]], 13.0)
    j.mark_delivered([b[0]], 14.0)  # a repeated acknowledgement changes nothing
    assert j.undelivered() == []
    j.close()


def test_a_journal_in_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProximityError, match="does not exist"):
        Journal(tmp_path / "nope" / "j.sqlite")
