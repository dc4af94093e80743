"""The rules on pairs: proximity (with boundary probing) and approach.

The proximity rule is a level machine per pair (:mod:`proximity.states`) on the core's
verdict: a pre-alert within the warning distance (pessimistically), the alarm at once on a
certain breach and after ``confirm_s`` on a likely one, escalation within the escalation
distance or after ``escalate_after_s``; a level is left only beyond its distance plus the
pair's margin (``max(margin_fraction * order, margin_min_m)``) held for ``dwell_s``, so GPS
jitter around the boundary does not produce an alarm storm and an alarm never ends on a fix
too uncertain to show that the danger is over. Boundary probing counts each episode's
entries into the warning band. The approach rule is a second machine per pair. Conditions
are array logic; Python work is done only for the rare pairs that change state, and the
events' words come from :mod:`proximity.reasons`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from numerics.uncertainty import Classification
from proximity import reasons
from proximity.alarms import APPROACH, PAIR, PROBING, AlarmBook
from proximity.clock import iso_utc
from proximity.core import PairEvaluation, ProximityCore
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Motion
from proximity.intake import FixIntake
from proximity.pairs import PairTable
from proximity.quality import R99_PER_R68
from proximity.rules import RuleConfig
from proximity.states import (
    ALARM,
    PRE,
    Conditions,
    EntryCounter,
    LevelMachine,
    Step,
    Timing,
    Transition,
    audible,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Namespace of alarm ids: uuid5(namespace, "case/offender/victim/opening fix time") gives the
#: same id when the same history is replayed, which makes re-published duplicates harmless.
ALARM_ID_NAMESPACE = uuid.UUID("6f1c2d38-52a4-4bde-9a51-3c1f0e8b7d20")
APPROACH_NAMESPACE = uuid.UUID("2b8e4f61-7d0c-4a35-b1e9-8c3f5a6d2e47")
PROBING_NAMESPACE = uuid.UUID("9d4a1c7e-3f28-4b6d-a05e-71c2e8f94b13")

_STATE = {Step.OPEN: AlarmState.OPEN, Step.END: AlarmState.ENDED}


class PairEvents:
    """Alarm events about pairs: both positions, the figures of an evaluation, the motion."""

    def __init__(self, pairs: PairTable, intake: FixIntake, rules: RuleConfig) -> None:
        self.pairs = pairs
        self.intake = intake
        self.rules = rules

    def name(self, p: int) -> str:
        """ "case/offender/victim" of pair ``p``: stable names for alarm ids."""
        pairs, ids = self.pairs, self.intake.devices.ids
        off, vic = ids[int(pairs.offender[p])], ids[int(pairs.victim[p])]
        return f"{pairs.case_ids[int(pairs.case[p])]}/{off}/{vic}"

    def where(self, ev: PairEvaluation, k: int) -> str:
        """Where pair ``ev.idx[k]`` stands, in words (:func:`proximity.reasons.where`)."""
        pairs, ids = self.pairs, self.intake.devices.ids
        p = int(ev.idx[k])
        return reasons.where(
            ids[int(pairs.offender[p])],
            float(ev.distance_m[k]),
            float(ev.uncertainty_m[k]),
            ids[int(pairs.victim[p])],
        )

    def old_fixes(self, ev: PairEvaluation, k: int, now: float) -> str:
        p = int(ev.idx[k])
        return reasons.old_fixes(
            self.intake.position(int(self.pairs.offender[p]), now),
            self.intake.position(int(self.pairs.victim[p]), now),
            now,
        )

    def motion(self, p: int) -> Motion:
        """Both parties' speeds and heading difference, and whether that is parallel travel."""
        r = self.rules
        core = self.intake.core
        a = core.velocity(int(self.pairs.offender[p]))
        b = core.velocity(int(self.pairs.victim[p]))
        sa, sb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cos = float(a @ b) / (sa * sb) if sa > 0 and sb > 0 else math.nan
        angle = (
            math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan
        )
        parallel = (
            min(sa, sb) >= r.parallel_min_speed_mps
            and angle <= r.parallel_max_angle_deg
            and max(sa, sb) <= 1.5 * min(sa, sb)
        )
        return Motion(sa, sb, angle, bool(parallel))

    def event(
        self,
        ev: PairEvaluation,
        k: int,
        what: tuple[AlarmType, AlarmState, str],
        m: Transition,
        reason: str,
        times: tuple[float, float, str],
    ) -> AlarmEvent:
        """An event of ``what`` (type, state, alarm id) about pair ``ev.idx[k]``, decided at
        ``times`` (the decision's time, when it was decided, its cause); its level is the
        transition's (the level it ended from, for an end), ``previous_level`` set when the
        level changed."""
        type_, state, alarm_id = what
        now, decided, cause = times
        pairs = self.pairs
        p = int(ev.idx[k])
        motion = self.motion(p)
        if motion.parallel and state in (AlarmState.OPEN, AlarmState.UPDATE):
            reason += reasons.parallel(motion)
        return AlarmEvent(
            motion=motion,
            alarm_id=alarm_id,
            type=type_,
            level=AlarmLevel(m.level or m.before),
            state=state,
            case_id=pairs.case_ids[int(pairs.case[p])],
            offender=self.intake.position(int(pairs.offender[p]), now),
            victim=self.intake.position(int(pairs.victim[p]), now),
            distance_m=float(ev.distance_m[k]),
            order_distance_m=float(pairs.order_m[p]),
            margin_m=float(pairs.margin_m[p]),
            reason=reason,
            t_decided=decided,
            classification=Classification(int(ev.classification[k])),
            probability=float(ev.probability[k]),
            uncertainty_m=float(ev.uncertainty_m[k]),
            closing_speed_mps=float(ev.closing_mps[k]),
            time_to_breach_s=float(ev.time_to_breach_s[k]),
            cause=cause,
            previous_level=(
                AlarmLevel(m.before) if m.level and m.before and m.before != m.level else None
            ),
        )


class ProximityRule:
    """The proximity level machine of every pair, and boundary probing."""

    def __init__(
        self,
        pairs: PairTable,
        intake: FixIntake,
        rules: RuleConfig,
        book: AlarmBook,
        clock: Callable[[], float],
    ) -> None:
        self.pairs = pairs
        self.intake = intake
        self.core: ProximityCore = intake.core
        self.rules = rules
        self.describe = PairEvents(pairs, intake, rules)
        self._clock = clock
        timing = Timing(rules.confirm_s, rules.dwell_s, rules.escalate_after_s, rules.renotify_s)
        self.levels = LevelMachine(len(pairs), timing)
        self.alarm_ids = book.ids(PAIR)
        self.probes = EntryCounter(
            rules.probe_entries,
            rules.probe_window_s,
            rules.probe_min_gap_s,
            alarm_ids=book.ids(PROBING),
        )
        self.restarted_t = np.full(len(pairs), -np.inf)  # see decide
        self.probe_pending = np.zeros(len(pairs), dtype=bool)  # see decide
        self.opened: dict[int, float] = {}  # pair -> when its open alarm opened

    def settled(self, idx: IntArray) -> npt.NDArray[np.bool_]:
        """Pairs neither of whose devices is unsettled (:meth:`FixIntake.settled`)."""
        ok = self.intake.settled(np.concatenate([self.pairs.offender[idx], self.pairs.victim[idx]]))
        return ok[: idx.size] & ok[idx.size :]

    def conditions(
        self, ev: PairEvaluation, settled: npt.NDArray[np.bool_], cause: str = "fix"
    ) -> Conditions:
        """The level machine's conditions on evaluation ``ev`` (``settled``: its pairs'),
        caused by a fix or by time (``cause``)."""
        pairs = self.pairs
        idx = ev.idx
        d, u = ev.distance_m, ev.uncertainty_m
        order, margin, warning = pairs.order_m[idx], pairs.margin_m[idx], pairs.warning_m[idx]
        # NaN distances (a device without a fix) compare False: such a pair never changes.
        # Time alone only grows an old fix's uncertainty: on a sweep the pre-alert can be
        # held, never entered (a level never rises on uncertainty alone).
        pre = (d - u <= warning) if cause != "time" else np.zeros(idx.size, dtype=bool)
        return Conditions(
            pre=pre,
            likely=d <= order,
            # At once only when certain by the margin: a breach certain by a few metres is
            # what an undetected multipath drift looks like, and must hold like a likely one.
            # A device that has just jumped (a burst of multipath, or a real sudden move)
            # makes a breach at most likely: it must hold for confirm_s like any likely one.
            certain=(ev.classification == Classification.CERTAIN_BREACH)
            & settled
            & (d + u <= order - margin),
            escalate=d + u <= pairs.escalation_m[idx],
            leave_alarm=d - u > order + margin,
            leave_pre=d - u > warning + margin,
            force_end=np.zeros(idx.size, dtype=bool),
            # "Position unknown" (an old fix's uncertainty beyond max_uncertainty_m): the
            # level machine leaves the pair as it is until a fix makes it known.
            unknown=ev.classification == Classification.UNKNOWN,
        )

    def step(self, ev: PairEvaluation, now: FloatArray, cause: str = "fix") -> list[Transition]:
        """Advance the level machines of ``ev``'s pairs to ``now`` (one time per pair)."""
        idx = ev.idx
        pairs = self.pairs
        settled = self.settled(idx)
        # A settled pair's likely breach is confirmed by time, as always; one just after a
        # jump only by current evidence (a jumped position frozen by a dropout - often the
        # tail of a multipath burst - never confirms itself): up to when both positions are
        # current.
        current = np.minimum(
            self.intake.current_until(pairs.offender[idx]),
            self.intake.current_until(pairs.victim[idx]),
        )
        evidence = np.where(settled, now, np.fmin(current, now))
        # A device that jumps again restarts the confirmation of its pair's likely breach:
        # a chain of multipath bursts (a phone standing by tall buildings) can hold a false
        # position longer than confirm_s, but each burst starts with a jump, and a person
        # who really comes closer does not jump every few seconds.
        jt = self.intake.jump_time(np.concatenate([pairs.offender[idx], pairs.victim[idx]]))
        jumped = np.maximum(jt[: idx.size], jt[idx.size :])
        again = ~settled & (jumped > self.restarted_t[idx])
        self.restarted_t[idx[again]] = jumped[again]
        self.levels.restart_likely(idx[again])
        cond = self.conditions(ev, settled, cause)
        moves = self.levels.step(idx, cond, now, evidence, fresh=cause != "time")
        return audible(moves, idx, self.alarm_ids)

    def decide(self, ev: PairEvaluation, now: FloatArray, cause: str) -> list[AlarmEvent]:
        """The proximity rule and boundary probing on evaluation ``ev`` at ``now``."""
        idx = ev.idx
        moves = self.step(ev, now, cause)
        events: list[AlarmEvent] = []
        if moves:
            # The events' figures: a sweep evaluated without the approach, so the few pairs
            # that changed are evaluated again with it (same time, same fixes).
            ks = [m.k for m in moves]
            detail = self.core.evaluate(idx[ks], now[ks]) if cause == "time" else None
            decided = self._clock()
            for n, m in enumerate(moves):
                src, k = (ev, m.k) if detail is None else (detail, n)
                events.append(self._event(src, k, m, (float(now[m.k]), decided, cause)))
                if m.step == Step.OPEN:
                    self.probe_pending[idx[m.k]] = True
        # Boundary probing counts an episode once its best estimate is within the warning
        # distance, not when only the uncertainty reached it (an old fix's growing circle,
        # a phone indoors, is no visit).
        self.probe_pending[idx[self.levels.level[idx] == 0]] = False
        visit = np.flatnonzero(
            self.probe_pending[idx] & (ev.distance_m <= self.pairs.warning_m[idx])
        )
        if visit.size:
            decided = self._clock()
            for k in visit.tolist():
                self.probe_pending[idx[k]] = False
                times = (float(now[k]), decided, cause)
                events.extend(self._probe(int(idx[k]), ev, k, times))
        return events

    def _event(
        self, ev: PairEvaluation, k: int, m: Transition, times: tuple[float, float, str]
    ) -> AlarmEvent:
        pairs = self.pairs
        p = int(ev.idx[k])
        r = self.rules
        now = times[0]
        if m.new_alarm:
            t_fix = self.intake.devices.t_fix
            t_open = max(float(t_fix[pairs.offender[p]]), float(t_fix[pairs.victim[p]]))
            again = "" if m.step == Step.OPEN else f"/reopened/{now!r}"
            name = f"{self.describe.name(p)}/{t_open!r}{again}"
            self.alarm_ids[p] = str(uuid.uuid5(ALARM_ID_NAMESPACE, name))
            self.opened[p] = now
        alarm_id = self.alarm_ids[p]
        if m.step == Step.END:
            del self.alarm_ids[p]
        esc = float(pairs.escalation_m[p])
        reason = reasons.proximity(
            m.step,
            m.level,
            self.describe.where(ev, k),
            certain=int(ev.classification[k]) == Classification.CERTAIN_BREACH,
            order_m=float(pairs.order_m[p]),
            warning_m=float(pairs.warning_m[p]),
            margin_m=float(pairs.margin_m[p]),
            escalation_m=esc,
            within_escalation=float(ev.distance_m[k]) + float(ev.uncertainty_m[k]) <= esc,
            opened=iso_utc(self.opened.get(p, now)),
            dwell_s=r.dwell_s,
            confirm_s=r.confirm_s,
            escalate_after_s=r.escalate_after_s,
        )
        if m.step != Step.END:
            reason += self.describe.old_fixes(ev, k, now)
        state = AlarmState.OPEN if m.new_alarm else _STATE.get(m.step, AlarmState.UPDATE)
        return self.describe.event(ev, k, (AlarmType.PROXIMITY, state, alarm_id), m, reason, times)

    def _probe(
        self, p: int, ev: PairEvaluation, k: int, times: tuple[float, float, str]
    ) -> list[AlarmEvent]:
        """An episode of pair ``p`` has entered the warning band (its best estimate): count
        it, and open a probing alarm when it completes the pattern."""
        if not self.probes.enter(p, times[0]):
            return []
        n = len(self.probes.entries[p])
        return [self._probe_event(ev, k, AlarmState.OPEN, times, n)]

    def probe_expiry(self, now: float) -> list[AlarmEvent]:
        """On a sweep: a probing alarm ends when a whole window passed without an entry."""
        done = self.probes.expired(now)
        if not done:
            return []
        idx = np.array(done, dtype=np.int64)
        ev = self.core.evaluate(idx, now)
        times = (now, self._clock(), "time")
        return [self._probe_event(ev, n, AlarmState.ENDED, times, 0) for n in range(idx.size)]

    def _probe_event(
        self,
        ev: PairEvaluation,
        k: int,
        state: AlarmState,
        times: tuple[float, float, str],
        count: int,
    ) -> AlarmEvent:
        p = int(ev.idx[k])
        opened = state == AlarmState.OPEN
        ids = self.probes.alarm_ids
        if opened:
            name = f"{self.describe.name(p)}/{self.probes.entries[p][0]!r}"
            ids[p] = alarm_id = str(uuid.uuid5(PROBING_NAMESPACE, name))
        else:
            alarm_id = ids.pop(p)
        reason = reasons.probing(
            opened,
            self.describe.where(ev, k),
            count=count,
            warning_m=float(self.pairs.warning_m[p]),
            window_s=self.rules.probe_window_s,
        )
        m = Transition(k, Step.OPEN, ALARM, ALARM, False)
        return self.describe.event(ev, k, (AlarmType.PROBING, state, alarm_id), m, reason, times)


class ApproachRule:
    """A sustained approach of the offender, predicted to breach soon: a second level
    machine per pair, which must hold for approach_hold_s before it is announced (nothing
    before: one fix's velocity is not an approach), at the pre-alert level (or the alarm
    level, ``approach_alarm``: a prediction may be wrong), and ends only after a whole horizon
    without a sustained approach (the velocity estimate of a walker swings, and one approach
    is one alarm), or when the pair's proximity alarm takes over."""

    def __init__(self, proximity: ProximityRule, book: AlarmBook) -> None:
        self.proximity = proximity
        self.pairs = proximity.pairs
        self.rules = r = proximity.rules
        self.describe = proximity.describe
        self._clock = proximity._clock
        timing = replace(
            proximity.levels.timing, confirm_s=r.approach_hold_s, dwell_s=r.approach_horizon_s
        )
        top = ALARM if r.approach_alarm else PRE
        self.levels = LevelMachine(len(self.pairs), timing, likely_is_pre=False, top=top)
        self.alarm_ids = book.ids(APPROACH)
        self.anchor = np.full(len(self.pairs), np.nan)  # see conditions
        self.anchor_t = np.full(len(self.pairs), np.nan)

    def _sustained(self, ev: PairEvaluation, now: FloatArray) -> npt.NDArray[np.bool_]:
        """Pairs whose offender is coming closer, on settled estimates."""
        r = self.rules
        idx = ev.idx
        d = ev.distance_m
        # How far he has come: the anchor is the distance's running maximum, decaying at half
        # the smallest approach speed, so jitter of the estimate never adds up to
        # approach_min_m while a walk does within a minute or so.
        decay = 0.5 * r.approach_min_speed_mps * (now - self.anchor_t[idx])
        # A distance seen while a device jumps (multipath) is not "where he was lately":
        # only settled estimates raise the anchor.
        settled = self.proximity.settled(idx)
        anchor = np.where(settled, np.fmax(d, self.anchor[idx] - decay), self.anchor[idx] - decay)
        self.anchor[idx] = anchor
        self.anchor_t[idx] = now
        # He must be the one approaching: the pair's closing speed and time to breach, and his
        # own speed towards her and his own course into the order circle around where she is
        # (her phone drifting indoors, or her walking towards him, is no approach of his).
        # His course must enter the order circle whatever the uncertainty of where she is:
        # the circle shrunk by her position's 99 % radius (a biased estimate of a phone
        # indoors that puts her 170 m nearer his road is no course of his towards her).
        r68 = self.proximity.core.radii_m(self.pairs.victim[idx], now)
        inner = np.maximum(self.pairs.order_m[idx] - R99_PER_R68 * r68, 0.0)
        own_v, own_t = self.proximity.core.own_course(
            self.pairs.offender[idx], self.pairs.victim[idx], inner
        )
        sustained = (
            (anchor - d >= r.approach_min_m)
            & (ev.closing_mps >= r.approach_min_speed_mps)
            & (own_v >= r.approach_min_speed_mps)
            & (ev.time_to_breach_s <= r.approach_horizon_s)
            & (own_t <= r.approach_horizon_s)
            & (d > self.pairs.order_m[idx])
        )
        # After a jump or a manoeuvre the velocity is the jump's (a multipath burst makes a
        # car at 11 m/s look like one at 22 m/s heading for her): only settled estimates
        # predict, and the prediction must hold for approach_hold_s (the first fix after a
        # dropout, or one noisy fix of a walker, swings the velocity towards her).
        return sustained & settled

    def decide(self, ev: PairEvaluation, now: FloatArray) -> list[AlarmEvent]:
        """The approach rule on a fix evaluation (which has the closing speed)."""
        idx = ev.idx
        approaching = self._sustained(ev, now)
        no = np.zeros(idx.size, dtype=bool)
        cond = Conditions(
            pre=no,
            likely=approaching,
            certain=no,
            escalate=no,
            leave_alarm=~approaching,
            leave_pre=~approaching,
            force_end=self.proximity.levels.level[idx] >= ALARM,
            unknown=ev.classification == Classification.UNKNOWN,
        )
        moves = audible(self.levels.step(idx, cond, now), idx, self.alarm_ids)
        if not moves:
            return []
        decided = self._clock()
        return [self._event(ev, m, (float(now[m.k]), decided, "fix")) for m in moves]

    def superseded(self, now: float) -> list[AlarmEvent]:
        """On a sweep: approach alarms whose pair has since reached the alarm level end."""
        idx = np.flatnonzero((self.levels.level > 0) & (self.proximity.levels.level >= ALARM))
        if idx.size == 0:
            return []
        ev = self.proximity.core.evaluate(idx, now)
        no = np.zeros(idx.size, dtype=bool)
        cond = Conditions(no, no, no, no, no, no, np.ones(idx.size, dtype=bool))
        times = (now, self._clock(), "time")
        return [
            self._event(ev, m, times)
            for m in audible(self.levels.step(idx, cond, now), idx, self.alarm_ids)
        ]

    def _event(
        self, ev: PairEvaluation, m: Transition, times: tuple[float, float, str]
    ) -> AlarmEvent:
        k = m.k
        p = int(ev.idx[k])
        if m.new_alarm:
            t_fix = self.proximity.intake.devices.t_fix[self.pairs.offender[p]]
            name = f"{self.describe.name(p)}/{t_fix!r}"
            self.alarm_ids[p] = str(uuid.uuid5(APPROACH_NAMESPACE, name))
        alarm_id = self.alarm_ids[p]
        reason = reasons.approach(
            m.step,
            self.describe.where(ev, k),
            superseded=bool(self.proximity.levels.level[p] >= ALARM),
            quiet_s=self.rules.approach_horizon_s,
            closing_mps=float(ev.closing_mps[k]),
            closed_m=float(self.anchor[p]) - float(ev.distance_m[k]),
            order_m=float(self.pairs.order_m[p]),
            time_to_breach_s=float(ev.time_to_breach_s[k]),
        )
        if m.step == Step.END:
            del self.alarm_ids[p]
            state = AlarmState.ENDED
        elif m.step == Step.REMIND:
            state = AlarmState.UPDATE
        else:
            state = AlarmState.OPEN if m.new_alarm else AlarmState.UPDATE
        return self.describe.event(ev, k, (AlarmType.APPROACH, state, alarm_id), m, reason, times)
