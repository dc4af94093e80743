"""The engine's state saved with each batch and put back at start (proximity.memory and the
journal's state tables): a restored engine decides as the one that was never stopped, its
alarms keep their ids, operator actions on them work, and a changed case file keeps the state
of what is still in it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cic.journal import Journal, StateError
from ingest.model import Fix
from proximity.cases import Case, Device
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmLevel, AlarmState
from proximity.memory import EngineMemory, to_plain
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock, case, events_of, fix

DEVICES = [Device(d, {"reporting_interval_s": 1}) for d in ("o", "v", "o2", "v2")]
CASES = [case("C", ("o",), ("v",)), case("D", ("o2",), ("v2",))]


def _engine(clock: Clock, cases: list[Case] = CASES) -> Engine:
    return Engine(cases, DEVICES, clock=clock, rules=RuleConfig())


def _save(engine: Engine, memory: EngineMemory, journal: Journal) -> int:
    """Save what changed; return how many chunks were written."""
    d = memory.delta()
    journal.save_state(d)
    memory.saved(d)
    return len(d.chunks)


def _restored(path: Path, clock: Clock, cases: list[Case] = CASES) -> Engine:
    """A new engine (a new process) with the state saved in ``path``."""
    engine = _engine(clock, cases)
    journal = Journal(path)
    saved = journal.load_state()
    journal.close()
    assert saved is not None
    EngineMemory(engine).restore(saved)
    return engine


def _same(x: object, y: object) -> bool:
    """Equal events (NaN fields equal too)."""
    return json.dumps(to_plain(x)) == json.dumps(to_plain(y))


def _approach(t: float, d: float, dev: str = "o", victim: str = "v") -> list[Fix]:
    return [fix(victim, HOME, t), fix(dev, offset(*HOME, 0.0, d), t)]


def _ran(
    tmp_path: Path, *walks: tuple[float, str, str]
) -> tuple[Engine, list[AlarmEvent], EngineMemory]:
    """An engine that took 20 s of fixes, each second one per ``(distance, offender,
    victim)`` walk, and saved its state in ``tmp_path/j.sqlite``; what it raised."""
    a = _engine(Clock())
    memory = EngineMemory(a)
    journal = Journal(tmp_path / "j.sqlite")
    events: list[AlarmEvent] = []
    for t in range(0, 20):
        for d, off, vic in walks:
            events += events_of(a, *_approach(float(t), d, off, vic))
    _save(a, memory, journal)
    journal.close()
    return a, events, memory


def _now(engine: Engine) -> Clock:
    """A clock for a restored engine, at the time the saved one stopped."""
    clock = engine._clock
    assert isinstance(clock, Clock)
    return Clock(clock.t)


def test_a_restored_engine_goes_on_with_the_same_alarm(tmp_path: Path) -> None:
    a, opened, memory = _ran(tmp_path, (200.0, "o", "v"))
    assert [e.state for e in opened][:1] == [AlarmState.OPEN]
    alarm_id = opened[0].alarm_id
    assert not memory.delta()  # nothing changed since the save: nothing to write
    b = _restored(tmp_path / "j.sqlite", _now(a))
    assert _same(b.book.last(alarm_id), a.book.last(alarm_id))
    assert b.open_alarms == a.open_alarms == 1
    for name in ("level", "t_likely", "t_alarm", "t_notified", "acked"):
        np.testing.assert_array_equal(getattr(b.levels, name), getattr(a.levels, name))
    np.testing.assert_array_equal(b.core.rows, a.core.rows)
    np.testing.assert_array_equal(b.core.kf, a.core.kf)
    # Both decide the same on the same next fixes: no second open, and the episode ends
    # under its own id once he is gone.
    later_a, later_b = [], []
    for t in range(20, 80):
        fixes = _approach(float(t), 200.0 if t < 30 else 3000.0)
        later_a += events_of(a, *fixes)
        later_b += events_of(b, *fixes)
    assert [(e.alarm_id, e.state, e.level) for e in later_b] == [
        (e.alarm_id, e.state, e.level) for e in later_a
    ]
    assert all(e.state != AlarmState.OPEN for e in later_b)
    assert later_b[-1].alarm_id == alarm_id and later_b[-1].state == AlarmState.ENDED


def test_an_operator_acknowledges_an_alarm_raised_before_the_restart(tmp_path: Path) -> None:
    a, events, _ = _ran(tmp_path, (100.0, "o", "v"))
    alarm_id = events[0].alarm_id
    b = _restored(tmp_path / "j.sqlite", _now(a))
    assert b.awaiting_operator == 1
    acked = b.acknowledge(alarm_id, "desk-1", "seen")
    assert [(e.alarm_id, e.state) for e in acked] == [(alarm_id, AlarmState.ACKNOWLEDGED)]
    assert b.awaiting_operator == 0
    closed = b.close(alarm_id, "desk-1", "intervention sent")
    assert [e.state for e in closed] == [AlarmState.CLOSED]


def test_a_save_writes_what_the_batch_changed_not_everything(tmp_path: Path) -> None:
    # 3,000 pairs: a fix of one pair changes a few chunks of a few arrays.
    many = [case(f"K{k}", (f"o{k}",), (f"v{k}",)) for k in range(3000)]
    clock = Clock()
    e = Engine(many, clock=clock)
    memory = EngineMemory(e)
    journal = Journal(tmp_path / "j.sqlite")
    first = _save(e, memory, journal)
    events_of(e, *_approach(0.0, 5000.0, "o7", "v7"))
    again = _save(e, memory, journal)
    assert 0 < again < first / 10
    journal.close()
    b = _restored(tmp_path / "j.sqlite", Clock(clock.t), many)
    np.testing.assert_array_equal(b.core.rows, e.core.rows)
    np.testing.assert_array_equal(b.devices.t_fix, e.devices.t_fix)


def test_a_changed_case_file_keeps_the_state_of_what_is_still_there(tmp_path: Path) -> None:
    a, events, _ = _ran(tmp_path, (100.0, "o2", "v2"))
    alarm_id = events[0].alarm_id
    assert events[0].case_id == "D"
    # Case C is gone and a new case E of two pairs comes first: D's rows move.
    changed = [case("E", ("o3", "o4"), ("v3",)), CASES[1]]
    b = _restored(tmp_path / "j.sqlite", _now(a), changed)
    here, there = b.book.subject(alarm_id), a.book.subject(alarm_id)
    assert here is not None and there is not None and here[0] == "pair"
    assert here[1] != there[1]  # its row moved
    assert b.levels.level[int(here[1])] == a.levels.level[int(there[1])]  # type: ignore[call-overload]
    later = []
    for t in range(20, 80):
        later += events_of(b, *_approach(float(t), 3000.0, "o2", "v2"))
    assert [e.state for e in later if e.alarm_id == alarm_id][-1] == AlarmState.ENDED
    assert all(e.state != AlarmState.OPEN for e in later)
    # The restored engine saves everything afresh under the new layout.
    memory_b = EngineMemory(b)
    assert memory_b.delta().full


def test_an_unreadable_saved_state_is_an_error_with_a_reason(tmp_path: Path) -> None:
    _ran(tmp_path)
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        db.execute("UPDATE state_chunk SET data = x'00' WHERE name = 'core.rows'")
    with pytest.raises(StateError, match=r"core\.rows"):
        Journal(tmp_path / "j.sqlite").load_state()


def test_levels_survive_at_their_level(tmp_path: Path) -> None:
    a, events, _ = _ran(tmp_path, (200.0, "o", "v"))
    assert max(e.level for e in events) >= AlarmLevel.ALARM
    b = _restored(tmp_path / "j.sqlite", _now(a))
    assert b.levels.level.tolist() == a.levels.level.tolist()
    assert b._t_last >= T0


def test_the_alarms_of_a_removed_case_are_not_restored(tmp_path: Path) -> None:
    a, events, _ = _ran(tmp_path, (100.0, "o2", "v2"), (100.0, "o", "v"))
    assert {e.case_id for e in events} == {"C", "D"}
    b = _engine(_now(a), [CASES[0]])  # case D removed
    saved = Journal(tmp_path / "j.sqlite").load_state()
    assert saved is not None
    restored = EngineMemory(b)
    assert restored.restore(saved) == len({e.alarm_id for e in events if e.case_id == "C"})
    assert restored.dropped == len({e.alarm_id for e in events if e.case_id == "D"}) > 0
    assert [c for c, _ in restored.dropped_open] == ["D"]  # the log names it, to close
    assert b.open_case_ids() == {"C"}
    d_alarm = next(e.alarm_id for e in events if e.case_id == "D")
    assert b.acknowledge(d_alarm, "desk-1") == []  # unknown here: rejected, not raised
