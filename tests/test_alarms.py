"""The alarm book: every rule names its alarms through it, so an alarm id leads straight to
its rule and subject; it keeps each alarm's last event and who waits for an operator."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proximity.alarms import PAIR, SILENCE, ZONE, AlarmBook
from proximity.events import AlarmState
from tests.conftest import T0
from tests.naive import offset
from tests.test_engine import HOME, Clock, case, engine, events_of, fix


def test_an_alarm_id_leads_to_its_rule_and_subject_while_its_episode_is_open() -> None:
    book = AlarmBook()
    pairs, silence = book.ids(PAIR), book.ids(SILENCE)
    pairs[3] = "a"
    silence[("C", 1)] = "b"
    assert book.subject("a") == (PAIR, 3) and book.subject("b") == (SILENCE, ("C", 1))
    pairs[3] = "c"  # a new episode of the same pair
    assert book.subject("a") is None and book.subject("c") == (PAIR, 3)
    assert pairs.pop(3) == "c" and book.subject("c") is None and 3 not in pairs
    assert book.ids(PAIR) is pairs  # one map per rule
    with pytest.raises(ValueError, match="unknown rule"):
        book.ids("nope")


def test_the_book_keeps_the_last_event_and_forgets_the_oldest() -> None:
    clock = Clock(T0)
    eng = engine([case("C", ("o",), ("v",))], clock=clock)
    [opened] = events_of(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 100), 0))
    assert opened.state == AlarmState.OPEN  # a pre-alert: a first fix is unchecked
    book = AlarmBook(remembered=2)
    book.write([opened])
    assert (book.awaiting, book.open_count, book.open_case_ids()) == (1, 1, {"C"})
    acked = replace(opened, state=AlarmState.ACKNOWLEDGED)
    book.write([acked])
    assert book.last(opened.alarm_id) == acked and book.awaiting == 0 and book.open_count == 1
    book.write([replace(opened, alarm_id="x"), replace(opened, alarm_id="y")])
    assert book.last(opened.alarm_id) is None and len(book) == 2  # forgotten, oldest first
    assert book.awaiting == 2 and not book.still_open(opened.alarm_id)


def test_an_acknowledgement_reaches_the_rule_through_the_book() -> None:
    clock = Clock(T0)
    eng = engine([case("C", ("o",), ("v",))], clock=clock)
    [opened] = events_of(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 100), 0))
    assert eng.book.subject(opened.alarm_id) == (PAIR, 0)
    [closed] = eng.close(opened.alarm_id, "desk 4", "intervention_sent")
    assert closed.state == AlarmState.CLOSED and eng.book.subject(opened.alarm_id) == (PAIR, 0)
    assert eng.close(opened.alarm_id, "desk 4", "again") == []  # closed already
    assert eng.book.ids(ZONE) == {}


def test_the_book_never_forgets_an_alarm_whose_episode_is_open() -> None:
    eng = engine([case("C", ("o",), ("v",))], clock=Clock(T0))
    [first] = events_of(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 100), 0))
    book = AlarmBook(remembered=1)
    book.ids(PAIR)[0] = first.alarm_id
    book.write([first])
    later = replace(first, alarm_id="other")
    book.write([later])
    # Over the limit, but the pair's open episode keeps its alarm (an operator can still
    # acknowledge it, and a restart saves it with its subject).
    assert book.last(first.alarm_id) == first and book.subject(first.alarm_id) == (PAIR, 0)
    del book.ids(PAIR)[0]  # the episode ended: now it may be forgotten
    book.write([replace(later, alarm_id="third")])
    assert book.last(first.alarm_id) is None and len(book) == 1


def test_a_data_gap_alarm_is_in_the_book_and_an_operator_closes_it() -> None:
    clock = Clock(T0)
    eng = engine([case("C", ("o",), ("v",))], clock=clock)
    eng.faults.previously_until = T0 - 600.0
    [gap] = eng.data_gap_events(float("nan"), T0)
    assert eng.book.last(gap.alarm_id) == gap and eng.open_alarms == 1
    assert eng.awaiting_operator == 1
    [closed] = eng.close(gap.alarm_id, "desk 4", "", "technical")
    assert (closed.state, closed.resolution) == (AlarmState.CLOSED, "technical")
    assert "closed by desk 4: technical" in closed.reason
    assert eng.open_alarms == 0
