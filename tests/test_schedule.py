"""Zone schedules: weekly windows in Europe/Brussels across the daylight-saving changes.

Each test is about particular calendar days (a night of a clock change, a weekday, a zone's
validity dates) and computes nothing from the wall clock, so its dates are written out: they
are the point (marked date-ok)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from geofence.schedule import Schedule, ScheduleError, parse_schedule


def utc(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def intervals(sched: Schedule, start: str, end: str) -> list[tuple[str, str]]:
    """The schedule's in-force intervals between two UTC times, found only through
    ``active`` and ``next_change`` (as the engine finds them)."""
    t, stop = utc(start), utc(end)
    out = []
    opened = t if sched.active(t) else None
    while t < stop:
        t = sched.next_change(t)
        if t >= stop:
            break
        now = sched.active(t)
        if now and opened is None:
            opened = t
        elif not now and opened is not None:
            out.append((opened, t))
            opened = None
    if opened is not None:
        out.append((opened, stop))

    def iso(x: float) -> str:
        return datetime.fromtimestamp(x, UTC).strftime("%m-%d %H:%M")

    return [(iso(a), iso(b)) for a, b in out]


CURFEW = {"weekly": [{"start": "22:00", "end": "06:00"}]}


def test_curfew_is_seven_hours_on_the_spring_night() -> None:
    # 2026-03-29 01:00 UTC: Brussels clocks go from 02:00 CET to 03:00 CEST.
    got = intervals(parse_schedule(CURFEW), "2026-03-28T12:00", "2026-03-30T12:00")  # date-ok
    assert got == [("03-28 21:00", "03-29 04:00"), ("03-29 20:00", "03-30 04:00")]


def test_curfew_is_nine_hours_on_the_autumn_night() -> None:
    # 2026-10-25 01:00 UTC: Brussels clocks go back from 03:00 CEST to 02:00 CET.
    got = intervals(parse_schedule(CURFEW), "2026-10-24T12:00", "2026-10-26T12:00")  # date-ok
    assert got == [("10-24 20:00", "10-25 05:00"), ("10-25 21:00", "10-26 05:00")]


def test_window_starting_in_the_spring_gap_starts_when_the_clock_jumps_past_it() -> None:
    sched = parse_schedule({"weekly": [{"days": ["sun"], "start": "02:30", "end": "04:00"}]})
    # 02:30 does not exist on 2026-03-29; the clock shows 03:00 CEST at 01:00 UTC.
    assert intervals(sched, "2026-03-28T12:00", "2026-03-29T12:00") == [  # date-ok
        ("03-29 01:00", "03-29 02:00")
    ]
    assert not sched.active(utc("2026-03-29T00:59:59"))  # date-ok
    assert sched.active(utc("2026-03-29T01:00:00"))  # date-ok


def test_window_in_the_repeated_autumn_hour_runs_once_without_a_break() -> None:
    sched = parse_schedule({"weekly": [{"days": ["sun"], "start": "02:30", "end": "04:00"}]})
    # The first 02:30 (CEST) is 00:30 UTC; 04:00 CET is 03:00 UTC. During the repeated hour
    # (01:00-02:00 UTC the clock shows 02:00-03:00 again) the window stays in force.
    assert intervals(sched, "2026-10-24T12:00", "2026-10-25T12:00") == [  # date-ok
        ("10-25 00:30", "10-25 03:00")
    ]
    assert sched.active(utc("2026-10-25T01:15"))  # date-ok; clock: 02:15 CET, the second time


def test_weekday_windows_and_validity_dates_in_local_time() -> None:
    sched = parse_schedule(
        {
            "weekly": [{"days": ["Monday", "fri"], "start": "08:00", "end": "24:00"}],
            "dates": [{"from": "2026-11-23", "until": "2026-11-27"}],  # date-ok
        }
    )
    # 2026-11-23 is a Monday; CET is UTC+1. Friday the 27th is the last valid day; the
    # following Monday the order has expired.
    assert intervals(sched, "2026-11-20T00:00", "2026-12-02T00:00") == [  # date-ok
        ("11-23 07:00", "11-23 23:00"),
        ("11-27 07:00", "11-27 23:00"),
    ]


def test_dates_alone_bound_an_always_active_zone() -> None:
    sched = parse_schedule({"dates": [{"from": "2026-07-01", "until": "2026-07-01"}]})  # date-ok
    # CEST (UTC+2): the local day 2026-07-01 is 06-30 22:00 to 07-01 22:00 UTC.
    assert intervals(sched, "2026-06-29T00:00", "2026-07-03T00:00") == [  # date-ok
        ("06-30 22:00", "07-01 22:00")
    ]
    assert sched.next_change(utc("2026-07-02T00:00")) == float("inf")  # date-ok


def test_other_time_zones_are_honoured() -> None:
    sched = parse_schedule(
        {"timezone": "America/New_York", "weekly": [{"start": "22:00", "end": "06:00"}]}
    )
    assert sched.active(utc("2026-11-24T03:00"))  # date-ok; 22:00 EST
    assert not sched.active(utc("2026-11-24T02:59:59"))  # date-ok


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"weekly": [{"start": "25:00", "end": "06:00"}]}, "'schedule.weekly[0].start'"),
        ({"weekly": [{"start": "22:00", "end": "6h"}]}, "'schedule.weekly[0].end'"),
        ({"weekly": [{"days": ["mon", "xyz"], "start": "1:00"}]}, "'xyz'"),
        ({"weekly": [{"start": "24:00", "end": "06:00"}]}, "24:00 is allowed as an end only"),
        ({"timezone": "Europe/Bruxelles", "weekly": []}, "IANA time zone"),
        ({"dates": [{"from": "2026-12-01", "until": "2026-11-01"}]}, "is before 'from'"),  # date-ok
        ({"dates": [{"from": "1 Dec", "until": "2026-11-01"}]}, "'YYYY-MM-DD'"),  # date-ok
        ({}, "needs 'weekly' windows or 'dates'"),
        ({"weekly": [], "start": "22:00"}, "unknown field(s) 'start'"),
    ],
)
def test_bad_schedules_are_rejected_with_the_field(raw: object, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(raw)
    assert message in str(info.value)
