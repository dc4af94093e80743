"""The alarm state machine shared by the pair, zone and approach rules, as array logic.

Each watched thing (a pair, an offender against a zone) has a level: none, ``pre_alert``,
``alarm`` or ``escalation`` (:class:`proximity.events.AlarmLevel`). A rule turns its geometry
into a few conditions per thing (:class:`Conditions`); :meth:`LevelMachine.step` applies them:

* ``alarm`` is entered at once on a **certain** breach, and on a **likely** one (the best
  estimate is in breach) once it has held for ``confirm_s`` on every evaluation: the bound on
  how late a possible breach is raised, and what keeps a second of jitter from raising it.
* ``escalation``: when the rule's escalation condition holds (the distance kept shrinking to
  the escalation distance), or when the alarm has lasted ``escalate_after_s``.
* ``pre_alert``: entered when the rule's pre-alert condition holds (the warning band).
* A level is left only when its leave condition (beyond its distance plus the margin, which
  is the hysteresis) has held for ``dwell_s`` on every evaluation on a fix (a sweep neither
  begins nor breaks a leave spell, since time alone only grows an old fix's uncertainty, and
  completes one only where the condition still holds); ``force_end`` (a zone out of force,
  an approach superseded by the breach alarm) ends at once.
* ``unknown``: the thing's verdict is "position unknown" (an old fix whose uncertainty has
  outgrown ``max_uncertainty_m``): its level, timers and reminders stand still (nothing rises,
  falls, escalates or is announced again on uncertainty alone) until a fix makes it known;
  only ``force_end`` still ends it. The device's health rule speaks for a silent device.
* Re-notification: an alarm that has not changed is announced again (``remind``) every
  ``renotify_s`` until an operator acknowledges it; a rise in level is always announced and
  clears the acknowledgement. A closed alarm stays silent until its episode ends, unless its
  level rises, which then opens a new alarm (its transitions still come back, marked
  ``silent``, so that the rule can forget the alarm when its episode ends).

Every transition comes back as a :class:`Transition` so the rule can say why it happened.
Conditions are evaluated per position of ``idx``; the Python work is per transition.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from proximity.events import AlarmLevel

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
Float = npt.NDArray[np.float64]

NONE = 0
PRE = int(AlarmLevel.PRE_ALERT)
ALARM = int(AlarmLevel.ALARM)
ESCALATION = int(AlarmLevel.ESCALATION)


class Step(IntEnum):
    """What happened to one thing's alarm."""

    OPEN = 1  # a new alarm (from no level)
    RAISE = 2  # its level rose
    LOWER = 3  # its level fell (dwell beyond the higher level's distance)
    CERTAIN = 4  # same level, the breach is now certain
    REMIND = 5  # nothing changed, re-notification interval passed, not acknowledged
    END = 6  # back to no level


@dataclass(frozen=True, slots=True)
class Timing:
    """The machine's timings, seconds (see the module docstring)."""

    confirm_s: float
    dwell_s: float
    escalate_after_s: float
    renotify_s: float


@dataclass(frozen=True, slots=True)
class Conditions:
    """One evaluation's conditions, parallel to ``idx`` (all boolean arrays).

    ``pre``: inside the pre-alert band; ``likely``: the best estimate is in breach;
    ``certain``: even the optimistic estimate is; ``escalate``: the rule's own escalation
    condition; ``leave_alarm`` and ``leave_pre``: beyond the alarm's and the pre-alert's
    distance plus margin (pessimistically); ``force_end``: end now, whatever the level;
    ``unknown``: no verdict (see the module docstring); None: every verdict is known.
    """

    pre: BoolArray
    likely: BoolArray
    certain: BoolArray
    escalate: BoolArray
    leave_alarm: BoolArray
    leave_pre: BoolArray
    force_end: BoolArray
    unknown: BoolArray | None = None

    def subset(self, sel: IntArray) -> Conditions:
        """The conditions of positions ``sel`` only."""
        return Conditions(
            self.pre[sel],
            self.likely[sel],
            self.certain[sel],
            self.escalate[sel],
            self.leave_alarm[sel],
            self.leave_pre[sel],
            self.force_end[sel],
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """Position ``k`` of ``idx`` went from ``before`` to ``level`` by ``step``; ``new_alarm``
    says a new alarm id is needed (an open, or a rise after the operator closed the last);
    ``silent``: the operator closed the alarm, so no message (but an end still ends it)."""

    k: int
    step: Step
    before: int
    level: int
    new_alarm: bool
    silent: bool = False


def _held(
    start: npt.NDArray[np.float64],
    idx: IntArray,
    holds: BoolArray,
    now: Float,
    clock: Float | None = None,
) -> Float:
    """Seconds a condition has held on every evaluation up to ``now`` (one time per thing;
    NaN where it does not hold now); ``start[idx]`` keeps when each spell began (stamped with
    ``now``). ``clock`` (one time per thing) measures the spell instead of ``now``."""
    s = start[idx]
    s = np.where(holds, np.where(np.isnan(s), now, s), np.nan)
    start[idx] = s
    return (now if clock is None else clock) - s


#: The arrays of a LevelMachine that hold its state (what a restart must keep).
LEVEL_FIELDS = (
    "level",
    "certain",
    "t_likely",
    "t_leave_alarm",
    "t_leave_pre",
    "t_alarm",
    "t_notified",
    "acked",
    "closed",
)


class LevelMachine:
    """Levels, timers and notification state of ``n`` watched things."""

    def __init__(
        self, n: int, timing: Timing, likely_is_pre: bool = True, top: int = ESCALATION
    ) -> None:
        self.timing = timing
        #: False: a likely spell that is not confirmed yet raises nothing (no pre-alert).
        self.likely_is_pre = likely_is_pre
        #: The highest level a thing can reach (a confirmed spell of a rule whose top is
        #: PRE is a pre-alert, with nothing before it).
        self.top = top
        self.level = np.zeros(n, dtype=np.int8)
        self.certain = np.zeros(n, dtype=bool)  # announced as certain at the current level
        self.t_likely = np.full(n, np.nan)  # since when "likely" has held
        self.t_leave_alarm = np.full(n, np.nan)
        self.t_leave_pre = np.full(n, np.nan)
        self.t_alarm = np.full(n, np.nan)  # since when at alarm level or above
        self.t_notified = np.full(n, np.nan)  # last message about the current alarm
        self.acked = np.zeros(n, dtype=bool)
        self.closed = np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return int(self.level.size)

    def restart_likely(self, idx: IntArray) -> None:
        """Things ``idx`` start their likely spell again (from their next evaluation on)."""
        self.t_likely[idx] = np.nan

    def step(
        self,
        idx: IntArray,
        c: Conditions,
        now: float | Float,
        evidence: Float | None = None,
        fresh: bool = True,
    ) -> list[Transition]:
        """Advance things ``idx`` to ``now`` under conditions ``c``; return what changed.

        ``now``: the decision time, one for all or one per thing (parallel to ``idx``: the
        arrival of the message that caused each evaluation).

        ``evidence``: per thing, the time up to which its inputs are current (see
        ``ProximityRule.step``). A likely spell starts when it is first seen (``now``) and is
        measured on the evidence, so it is confirmed by ``confirm_s`` of current fixes,
        not of waiting: a position frozen by a dropout (perhaps the tail of a multipath
        burst) does not confirm itself. None: the clock is the evidence.

        Things whose verdict is ``unknown`` (and not forced to end) are left as they are:
        not evaluated at all, so that no timer runs and no spell breaks on them.

        ``fresh``: False when time alone caused the evaluation (a sweep, no new fix). Time
        only grows an old fix's uncertainty, so a leave spell is then neither begun nor
        broken, and it completes only if its condition still holds: a level is left on fixes
        that show the danger over for ``dwell_s``, however far apart they come (a device
        reporting once a minute would otherwise never leave, its pessimistic distance
        shrinking back between its fixes), or on a sweep that still shows it over."""
        now = np.broadcast_to(np.asarray(now, dtype=np.float64), idx.shape)
        if c.unknown is not None and c.unknown.any():
            sel = np.flatnonzero(~c.unknown | c.force_end)
            if sel.size == 0:
                return []
            ev = None if evidence is None else evidence[sel]
            moves = self.step(idx[sel], c.subset(sel), now[sel], ev, fresh)
            return [replace(m, k=int(sel[m.k])) for m in moves]
        tm = self.timing
        before = self.level[idx].astype(np.int64)

        likely_for = _held(self.t_likely, idx, c.likely, now, evidence)
        if fresh:
            off_alarm = _held(self.t_leave_alarm, idx, c.leave_alarm, now)
            off_pre = _held(self.t_leave_pre, idx, c.leave_pre, now)
        else:
            # Time alone: a spell is neither begun nor broken (an old fix's uncertainty only
            # grows), and it completes only where its condition still holds, grown
            # uncertainty and all.
            off_alarm = np.where(c.leave_alarm, now - self.t_leave_alarm[idx], np.nan)
            off_pre = np.where(c.leave_pre, now - self.t_leave_pre[idx], np.nan)

        # NaN compares False: a condition that does not hold never satisfies a timer.
        confirmed = c.certain | (likely_for >= tm.confirm_s)
        lasted = (before >= ALARM) & (now - self.t_alarm[idx] >= tm.escalate_after_s)
        up = np.where(
            confirmed & (c.escalate | lasted),
            ESCALATION,
            np.where(
                confirmed, ALARM, np.where(c.pre | (c.likely & self.likely_is_pre), PRE, NONE)
            ),
        )
        up = np.minimum(up, self.top)
        down = np.where(
            off_pre >= tm.dwell_s,
            NONE,
            np.where((before >= ALARM) & (off_alarm >= tm.dwell_s), PRE, before),
        )
        after = np.where(up > before, up, np.minimum(before, down))
        after = np.where(c.force_end, NONE, after)

        newly_certain = (after >= ALARM) & (after == before) & c.certain & ~self.certain[idx]
        t_note = self.t_notified[idx]
        remind = (
            (after == before)
            & (after > NONE)
            & ~newly_certain
            & ~self.acked[idx]
            & ~self.closed[idx]
            & (now - t_note >= tm.renotify_s)
        )
        changed = np.flatnonzero((after != before) | newly_certain | remind)
        if changed.size == 0:
            return []

        return [
            self._move(
                int(k),
                int(idx[k]),
                float(now[k]),
                int(before[k]),
                int(after[k]),
                bool(newly_certain[k]),
                bool(c.certain[k]),
            )
            for k in changed
        ]

    def _move(
        self, k: int, i: int, at: float, b: int, a: int, newly_certain: bool, certain: bool
    ) -> Transition:
        """Thing ``i`` (the ``k``-th of a step) goes from level ``b`` to ``a`` at ``at``."""
        if a == NONE:
            step = Step.END
        elif b == NONE:
            step = Step.OPEN
        elif a > b:
            step = Step.RAISE
        elif a < b:
            step = Step.LOWER
        elif newly_certain:
            step = Step.CERTAIN
        else:
            step = Step.REMIND
        new_alarm = step == Step.OPEN or (step == Step.RAISE and bool(self.closed[i]))
        if a >= ALARM > b:
            self.t_alarm[i] = at
        elif a < ALARM:
            self.t_alarm[i] = math.nan
        if a != b:
            self.certain[i] = certain and a >= ALARM
        elif newly_certain:
            self.certain[i] = True
        silent = bool(self.closed[i]) and not new_alarm  # the operator closed it
        if step in (Step.OPEN, Step.RAISE, Step.END):
            self.acked[i] = False
        if new_alarm or step == Step.END:
            self.closed[i] = False
        self.level[i] = a
        if a == NONE:
            self.t_notified[i] = math.nan
        elif not silent:
            self.t_notified[i] = at
        return Transition(k, step, b, a, new_alarm, silent)

    def acknowledge(self, i: int) -> None:
        """The operator has the alarm of thing ``i``: no more reminders until it rises."""
        self.acked[i] = True

    def close(self, i: int) -> None:
        """The operator closed the alarm of thing ``i``: silent until it ends, or a new alarm
        if it rises."""
        self.acked[i] = True
        self.closed[i] = True


class EntryCounter:
    """Boundary probing: the entries (episode starts) of each watched thing within a window.

    ``enter`` records one and says whether it completes a pattern (``count`` entries within
    ``window_s``) while none is open; the caller then opens the probing alarm and files its
    id in ``alarm_ids``. An entry less than ``min_gap_s`` after the previous one (counted or
    not) is the same visit: uncertainty flickering at the band's edge while he passes or
    lingers there is not a probe. ``expired`` lists the things whose pattern has had no
    entry for a whole window: their probing alarm ends.
    """

    def __init__(
        self,
        count: int,
        window_s: float,
        min_gap_s: float = 0.0,
        alarm_ids: MutableMapping[int, str] | None = None,
    ) -> None:
        self.count = count
        self.window_s = window_s
        self.min_gap_s = min_gap_s
        self.entries: dict[int, list[float]] = {}
        self.last: dict[int, float] = {}
        #: Thing -> its open alarm's id (the alarm book's map, proximity.alarms).
        self.alarm_ids: MutableMapping[int, str] = {} if alarm_ids is None else alarm_ids

    def enter(self, i: int, now: float) -> bool:
        previous = self.last.get(i)
        self.last[i] = now
        if previous is not None and now - previous < self.min_gap_s:
            return False
        recent = [t for t in self.entries.get(i, []) if now - t <= self.window_s]
        recent.append(now)
        self.entries[i] = recent[-self.count :]
        return len(recent) >= self.count and i not in self.alarm_ids

    def expired(self, now: float) -> list[int]:
        return [i for i in self.alarm_ids if now - self.entries[i][-1] > self.window_s]


def audible(
    moves: list[Transition], idx: IntArray, alarm_ids: MutableMapping[int, str]
) -> list[Transition]:
    """The transitions that make a message; a silent one (its alarm closed by an operator)
    that ends its episode removes the alarm's id from ``alarm_ids`` (keyed by thing)."""
    out = []
    for m in moves:
        if not m.silent:
            out.append(m)
        elif m.step == Step.END:
            alarm_ids.pop(int(idx[m.k]), None)
    return out
