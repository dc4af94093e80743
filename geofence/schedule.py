"""When a zone is in force: weekly windows in a named time zone, within date ranges.

A schedule is written in the case file as::

    {"timezone": "Europe/Brussels",
     "weekly": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00"}],
     "dates": [{"from": "2026-11-01", "until": "2027-04-30"}]}

* ``weekly``: windows of local wall time. A window whose ``end`` is not after its ``start``
  runs past midnight and ends on the next day (a curfew from 22:00 to 06:00 belongs to the
  day it starts on). ``days`` defaults to every day; times are ``HH:MM`` or ``HH:MM:SS``;
  ``end`` may be ``24:00``. No ``weekly`` list: in force all day.
* ``dates``: the order's validity, local calendar days, both ends included. No ``dates``:
  always valid.
* ``timezone``: an IANA name; Europe/Brussels by default.

Daylight saving: a window boundary is the first instant at which the local clock shows that
time. On the spring change (02:00 -> 03:00) a window starting at 02:30 therefore starts at
03:00 local, the moment the clock passes 02:30; on the autumn change (03:00 -> 02:00) it
starts at the first 02:30 and does not stop and restart when the clock repeats the hour. A
22:00-06:00 curfew lasts 7 hours of real time on the spring night and 9 on the autumn night,
as the court order means it.

The engine keeps, per zone, whether it is in force and the instant of the next change
(:meth:`Schedule.next_change`), so a sweep notices a curfew starting to the second without
evaluating every schedule on every sweep.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from geofence.errors import ScheduleError

DEFAULT_TIMEZONE = "Europe/Brussels"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)(?::([0-5]\d))?$")
#: How far ahead :meth:`Schedule.next_change` looks; a week covers every weekly window.
_HORIZON_DAYS = 8


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly window: on each of ``days`` (0 = Monday) from ``start_s`` to ``end_s`` seconds
    after local midnight; ``end_s <= start_s`` means it ends on the next day."""

    days: frozenset[int]
    start_s: int
    end_s: int

    @property
    def overnight(self) -> bool:
        return self.end_s <= self.start_s


@dataclass(frozen=True, slots=True)
class Schedule:
    """Weekly windows and validity dates of a zone, in the time zone ``timezone``."""

    timezone: str = DEFAULT_TIMEZONE
    windows: tuple[Window, ...] = ()
    dates: tuple[tuple[date, date], ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _intervals(self, t: float, before_days: int, after_days: int) -> list[tuple[float, float]]:
        """UTC intervals ``[start, end)`` in which the weekly part is in force, for the local
        days around ``t`` (one interval per window occurrence)."""
        tz = self.tz
        today = datetime.fromtimestamp(t, tz).date()
        out = []
        for k in range(-before_days, after_days + 1):
            d = today + timedelta(days=k)
            for w in self.windows:
                if d.weekday() not in w.days:
                    continue
                end_day = d + timedelta(days=1) if w.overnight else d
                out.append((local_instant(d, w.start_s, tz), local_instant(end_day, w.end_s, tz)))
        return out

    def _valid_ranges(self) -> list[tuple[float, float]]:
        tz = self.tz
        return [
            (local_instant(a, 0, tz), local_instant(b + timedelta(days=1), 0, tz))
            for a, b in self.dates
        ]

    def active(self, t: float) -> bool:
        """Whether the zone is in force at UTC epoch seconds ``t``."""
        if self.dates and not any(a <= t < b for a, b in self._valid_ranges()):
            return False
        if not self.windows:
            return True
        return any(a <= t < b for a, b in self._intervals(t, 1, 0))

    def next_change(self, t: float) -> float:
        """The first instant after ``t`` at which :meth:`active` may change; ``inf`` if never.

        Every boundary of every window and date range is a candidate; the engine
        re-evaluates :meth:`active` there, so a candidate at which nothing changes (two
        windows that touch) costs one evaluation and nothing else.
        """
        candidates = [b for a_b in self._valid_ranges() for b in a_b if b > t]
        for a, b in self._intervals(t, 1, _HORIZON_DAYS):
            candidates.extend(x for x in (a, b) if x > t)
        return min(candidates, default=math.inf)


def local_instant(day: date, seconds: int, tz: ZoneInfo) -> float:
    """The first UTC instant (epoch seconds) at which the local clock in ``tz`` shows
    ``seconds`` after midnight of ``day``.

    An ambiguous time (autumn change) is its first occurrence; a time that does not exist
    (spring change) is the instant the clock jumps past it.

    >>> from datetime import UTC, date
    >>> tz = ZoneInfo("Europe/Brussels")
    >>> datetime.fromtimestamp(local_instant(date(2026, 3, 29), 9000, tz), UTC).isoformat()
    '2026-03-29T01:00:00+00:00'
    """
    wall = datetime.combine(day, time()) + timedelta(seconds=seconds)
    first = wall.replace(tzinfo=tz, fold=0)
    t = first.timestamp()
    if datetime.fromtimestamp(t, tz).replace(tzinfo=None) == wall:
        return t
    # In a gap: fold=0 maps with the offset from before the jump, fold=1 with the one after,
    # and the jump lies between the two. Bisect for the first second that shows >= wall.
    lo = wall.replace(tzinfo=tz, fold=1).timestamp()
    hi = t
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > 1.0:
        mid = math.floor((lo + hi) / 2.0)
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi


def _seconds(value: object, field: str, allow_24: bool) -> int:
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise ScheduleError(f"'{field}' must be a local time 'HH:MM' or 'HH:MM:SS', got {value!r}")
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h == 24 and (mi or s or not allow_24):
        raise ScheduleError(f"'{field}' must be before 24:00 (24:00 is allowed as an end only)")
    return h * 3600 + mi * 60 + s


def _date(value: object, field: str) -> date:
    problem = f"'{field}' must be a date 'YYYY-MM-DD', got {value!r}"
    if not isinstance(value, str):
        raise ScheduleError(problem)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ScheduleError(problem) from exc


def parse_schedule(raw: object) -> Schedule:
    """The case file's ``schedule`` object as a :class:`Schedule`; :class:`ScheduleError`
    names the first field that is wrong."""
    if not isinstance(raw, dict):
        raise ScheduleError("'schedule' must be an object with 'weekly' and/or 'dates'")
    unknown = sorted(set(raw) - {"timezone", "weekly", "dates"})
    if unknown:
        raise ScheduleError(
            f"'schedule' has unknown field(s) {', '.join(map(repr, unknown))}"
            " (expected 'timezone', 'weekly', 'dates')"
        )
    tz_name = raw.get("timezone", DEFAULT_TIMEZONE)
    tz_problem = (
        f"'schedule.timezone' must be an IANA time zone such as 'Europe/Brussels', got {tz_name!r}"
    )
    if not isinstance(tz_name, str) or not tz_name:
        raise ScheduleError(tz_problem)
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(tz_problem) from exc
    weekly = raw.get("weekly", [])
    if not isinstance(weekly, list):
        raise ScheduleError("'schedule.weekly' must be a list of windows")
    windows = []
    for i, w in enumerate(weekly):
        where = f"schedule.weekly[{i}]"
        if not isinstance(w, dict):
            raise ScheduleError(f"'{where}' must be an object with 'start' and 'end'")
        days_raw = w.get("days", list(DAYS))
        if not isinstance(days_raw, list) or not days_raw:
            raise ScheduleError(f"'{where}.days' must be a non-empty list such as ['mon', 'tue']")
        days = set()
        for d in days_raw:
            key = d.lower()[:3] if isinstance(d, str) else None
            if key not in DAYS:
                raise ScheduleError(f"'{where}.days' has {d!r}; use {', '.join(DAYS)}")
            days.add(DAYS.index(key))
        start = _seconds(w.get("start"), f"{where}.start", allow_24=False)
        end = _seconds(w.get("end"), f"{where}.end", allow_24=True)
        windows.append(Window(frozenset(days), start, end))
    dates_raw = raw.get("dates", [])
    if not isinstance(dates_raw, list):
        raise ScheduleError("'schedule.dates' must be a list of {'from', 'until'} ranges")
    dates = []
    for i, r in enumerate(dates_raw):
        where = f"schedule.dates[{i}]"
        if not isinstance(r, dict):
            raise ScheduleError(f"'{where}' must be an object with 'from' and 'until'")
        a = _date(r.get("from"), f"{where}.from")
        b = _date(r.get("until"), f"{where}.until")
        if b < a:
            raise ScheduleError(f"'{where}': 'until' ({b}) is before 'from' ({a})")
        dates.append((a, b))
    if not windows and not dates:
        raise ScheduleError("'schedule' needs 'weekly' windows or 'dates' ranges (or leave it out)")
    return Schedule(str(tz_name), tuple(windows), tuple(dates))
