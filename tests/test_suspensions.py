"""An operator suspends a known-false or handled alarm source for a while
(proximity.suspensions): held back, never a panic or an escalation, logged, and back when
the suspension is over."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from cic.journal import Journal
from ingest.codec import decode_ack
from ingest.model import DeviceEvent, OperatorAction, Rejection, RejectReason
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType
from proximity.memory import EngineMemory
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock, case, events_of, fix

#: Reminders every minute, so that a held-back one shows within a short script.
RULES = RuleConfig(renotify_s=60.0, reporting_interval_s=3600.0)


def _engine(clock: Clock) -> Engine:
    return Engine([case("C", ("o",), ("v",))], clock=clock, rules=RULES)


def _second(eng: Engine, clock: Clock, t: float, d: float) -> list[AlarmEvent]:
    """One second of the script: both devices report, he is ``d`` m from her."""
    out = events_of(eng, fix("v", HOME, t), fix("o", offset(*HOME, 0.0, d), t))
    clock.t = T0 + t
    return out + eng.sweep()


def _pre_alert(eng: Engine, clock: Clock) -> AlarmEvent:
    [pre] = _second(eng, clock, 0.0, 800.0)  # within the warning distance (1000 m)
    assert (pre.state, pre.level) == (AlarmState.OPEN, AlarmLevel.PRE_ALERT)
    return pre


def test_a_suspended_source_is_held_back_and_announced_again_when_it_is_over() -> None:
    clock = Clock()
    eng = _engine(clock)
    pre = _pre_alert(eng, clock)
    got = eng.suspend(pre.alarm_id, "desk-1", "he lives there; checked", T0 + 900.0)
    assert not isinstance(got, str)
    [suspended] = got
    assert suspended.state == AlarmState.SUSPENDED and suspended.suspended_until == T0 + 900.0
    assert suspended.reason.startswith("suspended by desk-1 until ")
    assert suspended.reason.endswith(": he lives there; checked")
    out: list[AlarmEvent] = []
    for t in range(1, 300):  # reminders are due every minute: all held back
        out += _second(eng, clock, float(t), 800.0)
    for t in range(300, 400):  # he leaves: the episode's end is published
        out += _second(eng, clock, float(t), 3000.0)
    for t in range(400, 500):  # and comes back: a new episode of the same source, held back
        out += _second(eng, clock, float(t), 800.0)
    assert [(e.state, e.alarm_id == pre.alarm_id) for e in out] == [(AlarmState.ENDED, True)]
    assert eng.book.open_count == 1  # the engine still decided it
    later: list[AlarmEvent] = []
    for t in range(500, 1000):
        later += _second(eng, clock, float(t), 800.0)
    # Over at T0 + 900: the new episode, never announced, opens then.
    [back] = [e for e in later if e.state == AlarmState.OPEN]
    assert back.alarm_id != pre.alarm_id and back.t_decided == pytest.approx(T0 + 900.0, abs=1)
    assert back.reason.startswith("suspension by desk-1 is over; pre-alert: offender o is 800 m")
    assert back.suspended_until is None


def test_an_escalation_is_never_held_back_and_lifts_the_suspension() -> None:
    clock = Clock()
    eng = _engine(clock)
    pre = _pre_alert(eng, clock)
    assert not isinstance(eng.suspend(pre.alarm_id, "desk-1", "known", T0 + 3600.0), str)
    out: list[AlarmEvent] = []
    for t in range(1, 60):  # he drives straight at her: alarm (held back), escalation
        out += _second(eng, clock, float(t), max(800.0 - 20.0 * t, 50.0))
    levels = [(e.state, e.level) for e in out if e.type == AlarmType.PROXIMITY]
    assert levels[0] == (AlarmState.UPDATE, AlarmLevel.ESCALATION)
    assert len(eng.suspensions) == 0
    # An escalation, and a panic, cannot be suspended.
    assert eng.suspend(pre.alarm_id, "desk-1", "no", T0 + 3600.0) == (
        "an alarm at escalation level is never suspended"
    )
    [panic] = eng.handle_events([DeviceEvent("v", "panic", clock.t, clock.t)])
    assert eng.suspend(panic.alarm_id, "desk-1", "no", T0 + 3600.0) == (
        "a panic alarm is never suspended"
    )
    assert eng.suspend("no-such-alarm", "desk-1", "no", T0 + 3600.0) == []


def test_a_suspension_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    eng = _engine(clock)
    pre = _pre_alert(eng, clock)
    assert not isinstance(eng.suspend(pre.alarm_id, "desk-1", "known", T0 + 900.0), str)
    assert _second(eng, clock, 61.0, 800.0) == []  # the reminder, held back
    memory = EngineMemory(eng)
    journal = Journal(tmp_path / "j.sqlite")
    d = memory.delta()
    journal.save_state(d)
    memory.saved(d)
    saved = journal.load_state()
    journal.close()
    assert saved is not None
    again = _engine(Clock(clock.t))
    EngineMemory(again).restore(saved)
    assert len(again.suspensions) == 1
    assert _second(again, again._clock, 125.0, 800.0) == []  # type: ignore[arg-type]
    later: list[AlarmEvent] = []
    for t in range(126, 960):
        later += _second(again, again._clock, float(t), 800.0)  # type: ignore[arg-type]
    back = [e for e in later if e.reason.startswith("suspension by desk-1 is over")]
    assert [(e.state, e.alarm_id) for e in back] == [(AlarmState.UPDATE, pre.alarm_id)]


def test_a_suspension_on_cic_acks_needs_a_bounded_until_and_a_note() -> None:
    t = T0

    def ack(**body: object) -> OperatorAction | Rejection:
        payload = {"alarm_id": "a", "ts": t, "action": "suspend", **body}
        return decode_ack("cic/acks/desk-1", orjson.dumps(payload), t)

    ok = ack(until=t + 1800, note="her phone indoors")
    assert isinstance(ok, OperatorAction) and ok.until == t + 1800 and ok.operator == "desk-1"
    iso = ack(until="2026-11-23T11:00:00+00:00", note="n")  # date-ok: T0 + 1 h
    assert isinstance(iso, OperatorAction) and iso.until == t + 3600
    # "15 minutes from now" by the desk's clock, stamped by the engine a moment later.
    assert isinstance(ack(until=t + 900 - 0.4, note="n"), OperatorAction)
    assert isinstance(ack(until=t + 7200 + 0.4, note="n"), OperatorAction)
    short = ack(until=t + 840, note="n")
    assert isinstance(short, Rejection) and "would end 14.0 min after it" in short.detail
    bad: list[tuple[dict[str, object], RejectReason]] = [
        ({"until": t + 60, "note": "n"}, RejectReason.OUT_OF_RANGE),  # under 15 min
        ({"until": t + 3 * 3600, "note": "n"}, RejectReason.OUT_OF_RANGE),  # over 2 h
        ({"until": t + 1800}, RejectReason.MISSING_FIELD),  # no note
        ({"until": t + 1800, "note": "  "}, RejectReason.MISSING_FIELD),
        ({"note": "n"}, RejectReason.MISSING_FIELD),  # no until
        ({"until": "tomorrow", "note": "n"}, RejectReason.BAD_TIMESTAMP),
        ({"until": [1], "note": "n"}, RejectReason.BAD_TIMESTAMP),
        ({"until": True, "note": "n"}, RejectReason.BAD_TIMESTAMP),
    ]
    for body, reason in bad:
        got = ack(**body)
        assert isinstance(got, Rejection) and got.reason == reason, body
    wrong = decode_ack(
        "cic/acks", orjson.dumps({"alarm_id": "a", "operator": "x", "ts": t, "until": t + 1800}), t
    )
    assert isinstance(wrong, Rejection) and "only with action 'suspend'" in wrong.detail
