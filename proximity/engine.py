"""The engine: device state as arrays, incremental pair evaluation, and the proximity rule.

A batch of fixes is applied in rounds: round k holds the k-th fix (in fix-time order) of
every device in the batch, so a device that sent three fixes while the engine was busy is
still evaluated three times, in order, and a brief breach between two fixes is not lost to
batching. Within a round, only the pairs of the devices that moved are evaluated by the core
(:mod:`proximity.core`); :meth:`Engine.sweep` re-evaluates every pair for what time alone
changes (an old fix's growing uncertainty).

The proximity rule is a level machine per pair (:mod:`proximity.states`) on the core's
verdict: a pre-alert within the warning distance (pessimistically), the alarm at once on a
certain breach and after ``confirm_s`` on a likely one, escalation within the escalation
distance or after ``escalate_after_s``; a level is left only beyond its distance plus the
pair's margin (``max(margin_fraction * order, margin_min_m)``) held for ``dwell_s``, so GPS
jitter around the boundary does not produce an alarm storm and an alarm never ends on a fix
too uncertain to show that the danger is over. The approach rule (a second machine per pair)
and boundary probing (entries counted per pair) sit beside it. Conditions are array logic;
Python work is done only for the rare pairs that change state.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from geofence.compiled import warm_up as warm_up_zones
from ingest.batch import FixBatch
from ingest.model import DeviceEvent
from numerics.geodesy import geodesic_distance_m
from numerics.uncertainty import (
    DEFAULT_MOBILITY,
    MOBILITY_MPS,
    UNKNOWN_ACCURACY_M,
    Classification,
)
from proximity import reasons
from proximity.alarms import APPROACH, PAIR, PROBING, ZONE, AlarmBook
from proximity.cases import Case, Device, top_speeds
from proximity.core import PairEvaluation, ProximityCore
from proximity.core import warm_up as warm_up_core
from proximity.events import (
    AlarmEvent,
    AlarmLevel,
    AlarmState,
    AlarmType,
    Motion,
    Position,
)
from proximity.health import DeviceWatch, sequence_steps
from proximity.messages import iso_utc
from proximity.pairs import PairTable, dependency_rounds
from proximity.quality import FixFilter
from proximity.rules import RuleConfig
from proximity.states import (
    ALARM,
    Conditions,
    EntryCounter,
    LevelMachine,
    Step,
    Timing,
    Transition,
    audible,
)
from proximity.zones import ZoneWatch

#: Namespace of alarm ids: uuid5(namespace, "case/offender/victim/opening fix time") gives the
#: same id when the same history is replayed, which makes re-published duplicates harmless.
ALARM_ID_NAMESPACE = uuid.UUID("6f1c2d38-52a4-4bde-9a51-3c1f0e8b7d20")
APPROACH_NAMESPACE = uuid.UUID("2b8e4f61-7d0c-4a35-b1e9-8c3f5a6d2e47")
PROBING_NAMESPACE = uuid.UUID("9d4a1c7e-3f28-4b6d-a05e-71c2e8f94b13")
FAULT_NAMESPACE = uuid.UUID("c4f1a2d9-6b3e-4e87-9a05-2d7b8e1f6c34")
GAP_NAMESPACE = uuid.UUID("7e2b9c41-d853-4f6a-b1e0-93a4c5d8f217")

#: A fix stamped more than this after its arrival is counted as from a clock that runs ahead
#: (``fixes_clock_ahead``); any fix stamped after its arrival counts as taken at its arrival.
CLOCK_SKEW_S = 1.0
#: A fix stands as current evidence until its device's next report is due, plus this.
EVIDENCE_SLACK_S = 3.0
DEFAULT_RULES = RuleConfig()

#: A fix is called old in an alarm's reason when it is at least this old and its age, times
#: the device's top speed, outweighs its own accuracy.
OLD_FIX_S = 5.0


@dataclass
class EngineStats:
    batches: int = 0
    fixes_in: int = 0
    fixes_applied: int = 0
    fixes_late: int = 0
    fixes_duplicate: int = 0
    fixes_implausible: int = 0
    fixes_clock_ahead: int = 0
    pairs_evaluated: int = 0
    zones_evaluated: int = 0
    sweeps: int = 0
    max_batch: int = 0
    events: int = 0


class DeviceTable:
    """Last accepted fix of every device as reported (for messages), one slot per device.

    ``lat`` and ``lon`` are the proximity core's own arrays, shared rather than copied.
    """

    def __init__(
        self, device_ids: Sequence[str], lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64]
    ) -> None:
        self.ids = tuple(device_ids)
        n = len(self.ids)
        self.lat = lat
        self.lon = lon
        self.acc_m = np.full(n, np.nan)
        self.t_fix = np.full(n, np.nan)
        self.t_recv = np.full(n, np.nan)
        self.seq = np.full(n, -1, dtype=np.int64)

    def position(self, slot: int, radius_m: float = float("nan"), old: bool = False) -> Position:
        return Position(
            device=self.ids[slot],
            lat=float(self.lat[slot]),
            lon=float(self.lon[slot]),
            acc_m=float(self.acc_m[slot]),
            t_fix=float(self.t_fix[slot]),
            t_recv=float(self.t_recv[slot]),
            seq=int(self.seq[slot]),
            radius_m=radius_m,
            old=old,
        )


class Engine:
    """Applies fix batches and returns the alarm events they cause.

    Parameters
    ----------
    cases : sequence of Case
        The orders to watch.
    devices : sequence of Device
        The case file's device descriptions (``mobility`` sets a device's top speed).
    rules : RuleConfig
        Thresholds and timings of the rules (hysteresis margins, fix quality, ...).
    default_top_speed_mps : float
        Top speed of a device that neither its own entry nor its case describes.
    unknown_accuracy_m : float
        68 % radius assumed for a fix without a usable accuracy.
    clock : callable
        UTC epoch seconds now; ages of fixes are measured against it.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        devices: Sequence[Device] = (),
        *,
        rules: RuleConfig = DEFAULT_RULES,
        default_top_speed_mps: float = MOBILITY_MPS[DEFAULT_MOBILITY],
        unknown_accuracy_m: float = UNKNOWN_ACCURACY_M,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cases = {c.id: c for c in cases}
        ids = sorted({d for c in cases for d in (*c.offenders, *c.protected)})
        self.slot_of = {d: i for i, d in enumerate(ids)}
        self.rules = rules
        self.pairs = PairTable.build(
            cases,
            self.slot_of,
            rules.margin_fraction,
            rules.margin_min_m,
            rules.escalation_fraction,
        )
        speeds = top_speeds(cases, devices, default_top_speed_mps)
        self.top_speed_mps = np.array([speeds[d] for d in ids], dtype=np.float64)
        self.core = ProximityCore(
            len(ids), self.pairs, self.top_speed_mps, unknown_accuracy_m, rules.motion_accel_psd
        )
        self.devices = DeviceTable(ids, self.core.lat, self.core.lon)
        timing = Timing(rules.confirm_s, rules.dwell_s, rules.escalate_after_s, rules.renotify_s)
        self.levels = LevelMachine(len(self.pairs), timing)
        # An approach must hold for approach_hold_s before it is an alarm (nothing before:
        # one fix's velocity is not an approach), and ends only after a whole horizon
        # without a sustained approach: the velocity estimate of a walker swings, and one
        # approach is one alarm.
        self.approach = LevelMachine(
            len(self.pairs),
            replace(timing, confirm_s=rules.approach_hold_s, dwell_s=rules.approach_horizon_s),
            likely_is_pre=False,
        )
        self._anchor = np.full(len(self.pairs), np.nan)  # see _approach
        self._t_unchecked = np.full(len(ids), np.nan)  # see _apply
        self._t_stamped = np.full(len(ids), np.nan)  # each device's newest stamp (see _apply)
        self._restarted_t = np.full(len(self.pairs), -np.inf)  # see _decide
        self._probe_pending = np.zeros(len(self.pairs), dtype=bool)  # see _decide
        self._anchor_t = np.full(len(self.pairs), np.nan)
        #: Every alarm of every rule (proximity.alarms): the rules name theirs through it.
        self.book = AlarmBook()
        self.approach_ids = self.book.ids(APPROACH)
        self.probes = EntryCounter(
            rules.probe_entries,
            rules.probe_window_s,
            rules.probe_min_gap_s,
            alarm_ids=self.book.ids(PROBING),
        )
        self.probe_ids = self.probes.alarm_ids
        self._opened: dict[int, float] = {}
        self._storage_faults: list[AlarmEvent] = []  # the open storage fault alarms
        #: Rows of the current batch that were used (not late, duplicate or set aside), per
        #: round; reset by each process() call (the evidence record keeps them).
        self.used_rows: list[npt.NDArray[np.int64]] = []
        self._out = PairEvaluation.allocate(len(self.pairs))
        #: The latest decision time: decisions never go back in time.
        self._t_last = -math.inf
        #: The newest fix time an earlier run of the engine recorded (NaN: none; set by the
        #: service from the evidence record): where a data gap begins at the first connection.
        self.previously_until = math.nan
        self._round_scratch = np.full(len(ids), -1, dtype=np.int64)  # dependency_rounds
        self._t_slot = np.full(len(ids), np.nan)  # a round's decision time per device
        self.alarm_ids = self.book.ids(PAIR)
        self.stats = EngineStats()
        self._clock = clock
        self.zones = ZoneWatch(
            cases, self.slot_of, self.core, rules, self._position, clock, self.book
        )
        self.quality = FixFilter(len(ids), rules, unknown_accuracy_m)
        self.health = DeviceWatch(
            cases, self.slot_of, devices, rules, self._position, clock, self.book
        )

    @property
    def open_alarms(self) -> int:
        """Alarms that have neither ended nor been closed (those that only an operator ends,
        such as a panic, a data gap or an engine fault, included)."""
        return self.book.open_count

    def start(self, at: float) -> None:
        """Intake begins at ``at``: a device never heard counts as silent from then (not from
        the engine's construction, before its kernels were ready and it was subscribed)."""
        never = ~np.isfinite(self.devices.t_recv)
        self.health.last_seen[never] = np.maximum(self.health.last_seen[never], at)
        self._t_last = max(self._t_last, at)

    def warm_up(self) -> float:
        """Compile (or load from cache) every kernel; return the seconds it took."""
        t0 = time.perf_counter()
        geodesic_distance_m([50.0], [4.0], [50.1], [4.1])  # the fix filter's jump rule
        one = np.zeros(1, dtype=np.int64)  # the devices' fix numbers
        sequence_steps(one, one, np.zeros(1), np.full(1, -1), np.zeros(1), np.zeros(1, bool))
        return time.perf_counter() - t0 + warm_up_core() + warm_up_zones()

    def process(self, batch: FixBatch) -> list[AlarmEvent]:
        """Apply a batch of fixes (in arrival order); return the alarm state changes.

        Each fix is decided at its arrival (``t_recv``; never before an earlier decision), and
        the batch is evaluated in dependency rounds (:func:`proximity.pairs.dependency_rounds`)
        split at the instants when a zone's schedule changes: the decisions are those of the
        same fixes given one at a time, however they were batched and however late the engine
        got to them.
        """
        st = self.stats
        self.used_rows = []
        st.batches += 1
        n = len(batch)
        st.fixes_in += n
        st.max_batch = max(st.max_batch, n)
        events: list[AlarmEvent] = []
        if n == 0:
            return events
        t = np.maximum.accumulate(np.fmax(batch.t_recv, self._t_last))
        self._t_last = float(t[-1])
        pos = 0
        while pos < n:
            end = n
            if len(self.zones):
                # The fixes from a schedule's change on see the zone in (or out of) force.
                self.zones.update_schedules(float(t[pos]))
                change = float(self.zones.next_change.min())
                end = max(pos + 1, int(np.searchsorted(t, change, side="left")))
            events.extend(self._process_rows(batch, t, np.arange(pos, end, dtype=np.int64)))
            pos = end
        st.events += len(events)
        self._remember(events)
        return events

    def _process_rows(
        self, batch: FixBatch, t: npt.NDArray[np.float64], rows: npt.NDArray[np.int64]
    ) -> list[AlarmEvent]:
        """Rows ``rows`` of ``batch`` (decided at ``t[rows]``), round by round."""
        slots = batch.slot[rows]
        p = self.pairs
        rnd = np.empty(rows.size, dtype=np.int64)
        n_rounds = dependency_rounds(
            slots, p.dev_ptr, p.dev_pairs, p.offender, p.victim, self._round_scratch, rnd
        )
        groups = (
            [rows]
            if n_rounds == 1
            else np.split(rows[np.argsort(rnd, kind="stable")], np.cumsum(np.bincount(rnd))[:-1])
        )
        events: list[AlarmEvent] = []
        t_slot = self._t_slot
        for r in groups:
            # Gaps in the devices' fix numbers (fixes lost on the way; every arrived fix
            # counts, a device at most once per round).
            self.health.numbers(batch.slot[r], batch.seq[r], t[r])
            touched, t_used = self._apply(batch, r, t[r])
            if touched.size:
                t_slot[touched] = t_used
                idx = self.core.pairs_of(touched)
                if idx.size:
                    # Only one device of each pair is in a round: its fix's time.
                    at = np.fmax(t_slot[p.offender[idx]], t_slot[p.victim[idx]])
                    ev = self.core.evaluate(idx, at, self._out)
                    events.extend(self._decide(ev, at, "fix"))
                if len(self.zones):
                    entries = self.zones.entries_of(touched)
                    self.stats.zones_evaluated += entries.size
                    at_entry = t_slot[self.zones.slot[entries]]
                    events.extend(self.zones.decide(entries, at_entry, "fix"))
                t_slot[touched] = np.nan
            # Any message, even a late or implausible fix, shows the device is alive.
            events.extend(self.health.seen(batch.slot[r], t[r]))
        return events

    def handle_events(self, device_events: Sequence[DeviceEvent]) -> list[AlarmEvent]:
        """Alarms for device events (panic, tamper, ...) of devices in the cases."""
        known = [e for e in device_events if e.device in self.slot_of]
        if not known:
            return []
        slots = np.array([self.slot_of[e.device] for e in known], dtype=np.int64)
        t = np.maximum.accumulate(np.fmax([e.t_recv for e in known], self._t_last))
        self._t_last = float(t[-1])
        events = self.health.seen(slots, t)
        events.extend(self.health.device_events(known))
        self.stats.events += len(events)
        self._remember(events)
        return events

    def sweep(self, at: float | None = None) -> list[AlarmEvent]:
        """Re-evaluate every pair and zone entry at time ``at`` (default: the clock; never
        before an earlier decision): fix ages grow without new fixes, and zone schedules
        start and end. The service sweeps on a fixed grid of its clock, after every message
        that arrived before the sweep's time (:class:`proximity.timeline.SweepGrid`)."""
        now = max(self._clock() if at is None else at, self._t_last)
        self._t_last = now
        self.stats.sweeps += 1
        events: list[AlarmEvent] = []
        if len(self.pairs):
            # Only fix ages changed since the last evaluation: no need for the approach
            # figures, which _decide computes for the few pairs that change state.
            ev = self.core.evaluate_all(now, self._out, approach=False)
            events.extend(self._decide(ev, now, "time"))
        if len(self.zones):
            self.zones.update_schedules(now)
            entries = np.arange(len(self.zones), dtype=np.int64)
            self.stats.zones_evaluated += entries.size
            events.extend(self.zones.decide(entries, now, "time"))
            events.extend(self.zones.probe_expiry(now))
        events.extend(self.health.sweep(now))
        self.stats.events += len(events)
        self._remember(events)
        return events

    def acknowledge(self, alarm_id: str, operator: str, note: str = "") -> list[AlarmEvent]:
        """An operator acknowledges alarm ``alarm_id``: recorded as an ``acknowledged`` event,
        and the alarm is no longer re-notified (until its level rises). Unknown ids: []."""
        return self._operator(alarm_id, operator, note, AlarmState.ACKNOWLEDGED)

    def close(self, alarm_id: str, operator: str, reason: str) -> list[AlarmEvent]:
        """An operator closes alarm ``alarm_id`` (with why): a ``closed`` event; the alarm
        stays silent until its episode ends, and a rise in level opens a new alarm."""
        return self._operator(alarm_id, operator, reason, AlarmState.CLOSED)

    def _operator(
        self, alarm_id: str, operator: str, note: str, state: AlarmState
    ) -> list[AlarmEvent]:
        last = self.book.last(alarm_id)
        if last is None or last.state == AlarmState.CLOSED:
            return []
        # Alarms of a level machine: acknowledged or closed there (reminders stop; a closed
        # one stays silent until its episode ends). The others (probing, silence) are never
        # re-notified, and closing ends them; alarms without a subject (device events, data
        # gaps, engine faults) end with the close.
        machines = {PAIR: self.levels, APPROACH: self.approach, ZONE: self.zones.levels}
        subject = self.book.subject(alarm_id)
        if subject is not None:
            rule, key = subject
            if rule in machines:
                if state == AlarmState.CLOSED:
                    machines[rule].close(key)  # type: ignore[arg-type]
                else:
                    machines[rule].acknowledge(key)  # type: ignore[arg-type]
            elif state == AlarmState.CLOSED:
                del self.book.ids(rule)[key]
        what = "acknowledged" if state == AlarmState.ACKNOWLEDGED else "closed"
        event = replace(
            last,
            state=state,
            t_decided=self._clock(),
            reason=reasons.operator(what, operator, note),
            operator=operator,
            cause="operator",
            previous_level=None,
        )
        self._remember([event])
        return [event]

    def data_gap_events(self, lost_at: float, at: float) -> list[AlarmEvent]:
        """One ``data_gap`` alarm per case: at ``at`` the broker had no session for the
        engine, so what was sent to it since ``lost_at`` (when the connection was lost; NaN
        at the first connection: since :attr:`previously_until`, the newest fix an earlier
        run recorded) may be gone. Nothing at the very first start of a deployment."""
        since = lost_at if math.isfinite(lost_at) else self.previously_until
        if not math.isfinite(since):
            return []
        return self.health.case_alarms(
            AlarmType.DATA_GAP,
            AlarmLevel.ALARM,
            reasons.session_lost(iso_utc(since), iso_utc(at)),
            at,
            GAP_NAMESPACE,
        )

    def fault_events(self, reason: str, at: float) -> list[AlarmEvent]:
        """One ``engine_fault`` alarm per case: the engine has stopped deciding (``reason``),
        so no case is protected until it is back. Built from the last positions only, without
        evaluating anything: the watchdog calls it from its own thread while the decision
        loop may be stuck."""
        return self.health.case_alarms(
            AlarmType.ENGINE_FAULT,
            AlarmLevel.ESCALATION,
            reasons.engine_stuck(reason),
            at,
            FAULT_NAMESPACE,
        )

    def storage_fault_events(
        self, reason: str | None, at: float, journal: bool = True
    ) -> list[AlarmEvent]:
        """The ``engine_fault`` alarm of every case for a storage fault: opened with
        ``reason`` (the disk refuses the engine's writes, the journal's too when ``journal``;
        it goes on deciding in memory), updated when the reason changes while it is open,
        ended when ``reason`` is None (everything is written)."""
        if reason is not None:
            text = reasons.storage_fault(reason, journal)
            if self._storage_faults:  # open already: the same alarms say what changed
                events = [
                    replace(e, state=AlarmState.UPDATE, reason=text, t_decided=at)
                    for e in self._storage_faults
                    if self.book.still_open(e.alarm_id)
                ]
            else:
                events = self.health.case_alarms(
                    AlarmType.ENGINE_FAULT, AlarmLevel.ALARM, text, at, FAULT_NAMESPACE
                )
            self._storage_faults = events
        else:
            events = [
                replace(
                    e,
                    state=AlarmState.ENDED,
                    t_decided=at,
                    reason=reasons.STORAGE_FAULT_OVER,
                    previous_level=None,
                )
                for e in self._storage_faults
                if self.book.still_open(e.alarm_id)
            ]
            self._storage_faults = []
        self._remember(events)
        return events

    def open_case_ids(self) -> set[str]:
        """Cases with an alarm that has neither ended nor been closed."""
        return self.book.open_case_ids()

    @property
    def awaiting_operator(self) -> int:
        """Open alarms that no operator has acknowledged since they opened or last rose."""
        return self.book.awaiting

    def _remember(self, events: Sequence[AlarmEvent]) -> None:
        """Every alarm event the engine decides goes into the book, in order."""
        self.book.write(events)

    def evaluate(self, idx: npt.NDArray[np.int64] | None = None) -> PairEvaluation:
        """The core's current verdict on pairs ``idx`` (all pairs by default), for inspection."""
        now = self._clock()
        return self.core.evaluate_all(now) if idx is None else self.core.evaluate(idx, now)

    def _apply(
        self, batch: FixBatch, rows: npt.NDArray[np.int64], t: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Write one round's fixes (decided at ``t``, parallel to ``rows``) into the device
        table; return the slots that took a fix and those fixes' times. Late and duplicate
        fixes (not newer than the device's last one) never move state back; implausible
        jumps are set aside (:mod:`proximity.quality`).

        A fix stamped after it arrived (its device's clock is ahead) counts as taken when it
        arrived: a fix from the future would otherwise make every real fix after it "late"
        until the real clock caught up (up to the 300 s the edge allows), and hide a breach
        for that long. Its own stamp still tells a repeat of it: a fix stamped ahead of its
        arrival is new only if its stamp is newer than every stamp its device sent before
        (a repeat of an earlier one is a duplicate, or late)."""
        dev = self.devices
        st = self.stats
        slots = batch.slot[rows]
        stamped = batch.t_fix[rows]
        lead = stamped - batch.t_recv[rows]  # > 0: stamped after it arrived
        t_fix = np.where(lead > 0, batch.t_recv[rows], stamped)
        st.fixes_clock_ahead += int(np.count_nonzero(lead > CLOCK_SKEW_S))
        ahead = lead > 0
        # NaN (no fix yet) compares False: a device's first fix is always new.
        seen = self._t_stamped[slots]  # the newest stamp of the device so far
        duplicate = (t_fix == dev.t_fix[slots]) | (ahead & (stamped == seen))
        late = ~duplicate & ((t_fix < dev.t_fix[slots]) | (ahead & (stamped < seen)))
        st.fixes_late += int(late.sum())
        st.fixes_duplicate += int(duplicate.sum())
        keep = ~(late | duplicate)
        rows, slots = rows[keep], slots[keep]
        t, t_fix, stamped = t[keep], t_fix[keep], stamped[keep]
        if slots.size == 0:
            return slots, t
        use = self.quality.screen(
            slots,
            batch.lat[rows],
            batch.lon[rows],
            t_fix,
            batch.acc_m[rows],
            dev.lat[slots],
            dev.lon[slots],
            dev.t_fix[slots],
            dev.acc_m[slots],
        )
        st.fixes_implausible += int(slots.size - use.sum())
        rows, slots = rows[use], slots[use]
        t, t_fix, stamped = t[use], t_fix[use], stamped[use]
        # A fix that nothing checks: a device's first, or its first after a dropout (more
        # than twice its reporting interval): across the gap, the motion filter's prediction
        # and the jump rule allow almost anything, and a multipath burst passes for a walk.
        # Like a jump, it cannot make a breach certain until confirm_s of later fixes.
        gap = t_fix - dev.t_fix[slots]  # NaN: the first fix
        unchecked = ~(gap <= 2.0 * self.health.interval_s[slots] + EVIDENCE_SLACK_S)
        self._t_unchecked[slots[unchecked]] = t_fix[unchecked]
        dev.acc_m[slots] = batch.acc_m[rows]
        dev.t_fix[slots] = t_fix
        dev.t_recv[slots] = batch.t_recv[rows]
        dev.seq[slots] = batch.seq[rows]
        self._t_stamped[slots] = np.fmax(self._t_stamped[slots], stamped)
        self.core.apply(slots, batch.lat[rows], batch.lon[rows], t_fix, batch.acc_m[rows], t)
        st.fixes_applied += int(slots.size)
        self.used_rows.append(rows)
        return slots, t

    def _decide(
        self, ev: PairEvaluation, at: float | npt.NDArray[np.float64], cause: str
    ) -> list[AlarmEvent]:
        """The pair rules on evaluation ``ev``, decided at ``at`` (one time, or one per pair)."""
        self.stats.pairs_evaluated += len(ev)
        idx = ev.idx
        now = np.broadcast_to(np.asarray(at, dtype=np.float64), idx.shape)
        pairs = self.pairs
        cls = ev.classification
        d = ev.distance_m
        u = ev.uncertainty_m
        order = pairs.order_m[idx]
        margin = pairs.margin_m[idx]
        warning = pairs.warning_m[idx]
        # A device that has just jumped (a burst of multipath, or a real sudden move) makes
        # a breach at most likely: it must hold for confirm_s like any likely breach.
        settled = self._settled(idx)
        # NaN distances (a device without a fix) compare False: such a pair never changes.
        cond = Conditions(
            pre=d - u <= warning,
            likely=d <= order,
            # At once only when certain by the margin: a breach certain by a few metres is
            # what an undetected multipath drift looks like, and must hold like a likely one.
            certain=(cls == Classification.CERTAIN_BREACH) & settled & (d + u <= order - margin),
            escalate=d + u <= pairs.escalation_m[idx],
            leave_alarm=d - u > order + margin,
            leave_pre=d - u > warning + margin,
            force_end=np.zeros(idx.size, dtype=bool),
        )
        # A settled pair's likely breach is confirmed by time, as always; one just after a
        # jump only by current evidence (a jumped position frozen by a dropout - often the
        # tail of a multipath burst - never confirms itself).
        evidence = np.where(settled, now, self._evidence(idx, now))
        # A device that jumps again restarts the confirmation of its pair's likely breach:
        # a chain of multipath bursts (a phone standing by tall buildings) can hold a false
        # position longer than confirm_s, but each burst starts with a jump, and a person
        # who really comes closer does not jump every few seconds.
        jumped = self._jump_time(idx)
        again = ~settled & (jumped > self._restarted_t[idx])
        self._restarted_t[idx[again]] = jumped[again]
        self.levels.restart_likely(idx[again])
        moves = audible(self.levels.step(idx, cond, now, evidence), idx, self.alarm_ids)
        events: list[AlarmEvent] = []
        if moves:
            # The events' figures: a sweep evaluated without the approach, so the few pairs
            # that changed are evaluated again with it (same time, same fixes).
            ks = [m.k for m in moves]
            detail = self.core.evaluate(idx[ks], now[ks]) if cause == "time" else None
            decided = self._clock()
            for n, m in enumerate(moves):
                src, k = (ev, m.k) if detail is None else (detail, n)
                events.append(self._event(src, k, m, float(now[m.k]), decided, cause))
                if m.step == Step.OPEN:
                    self._probe_pending[idx[m.k]] = True
        # Boundary probing counts an episode once its best estimate is within the warning
        # distance, not when only the uncertainty reached it (an old fix's growing circle,
        # a phone indoors, is no visit).
        self._probe_pending[idx[self.levels.level[idx] == 0]] = False
        visit = np.flatnonzero(self._probe_pending[idx] & (d <= warning))
        if visit.size:
            decided = self._clock()
            for k in visit.tolist():
                self._probe_pending[idx[k]] = False
                events.extend(self._probe(int(idx[k]), ev, k, float(now[k]), decided, cause))
        if cause == "fix":
            events.extend(self._approach(ev, now))
        else:
            t = float(now[0]) if now.size else self._t_last
            events.extend(self._approach_superseded(t))
            events.extend(self._probe_expiry(t))
        return events

    def _settled(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Pairs neither of whose devices jumped or manoeuvred (a fix taken although it
        jumped, or one outside the motion filter's gate), or sent a fix nothing checks (its
        first, or its first after a dropout), within confirm_s of fixes before its last."""
        w = self.rules.confirm_s
        both = np.concatenate([self.pairs.offender[idx], self.pairs.victim[idx]])
        t = self.devices.t_fix[both]
        ok = (
            self.quality.settled(both, t)
            & ~self.core.manoeuvred(both, w)
            & ~(t - self._t_unchecked[both] < w)  # NaN (never unchecked): settled
        )
        return ok[: idx.size] & ok[idx.size :]

    def _jump_time(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Per pair, the time of the newer of its devices' last fixes if that fix jumped (set
        aside and then taken, or outside the motion filter's gate); -inf if neither did."""
        both = np.concatenate([self.pairs.offender[idx], self.pairs.victim[idx]])
        t = self.devices.t_fix[both]
        jumped = (self.quality.jumped_t[both] == t) | self.core.gated_last(both)
        jt = np.where(jumped, t, -np.inf)
        return np.maximum(jt[: idx.size], jt[idx.size :])

    def _evidence(
        self, idx: npt.NDArray[np.int64], now: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Per pair, the time up to which both devices' positions are current: each fix
        stands until the device's next report is due (its reporting interval plus
        EVIDENCE_SLACK_S), and not beyond ``now``. The clock that confirms a likely breach of
        a pair that has just jumped (LevelMachine.step): devices reporting on schedule
        confirm it in ``confirm_s`` as ever; a position frozen by a dropout stops
        confirming."""
        o, v = self.pairs.offender[idx], self.pairs.victim[idx]
        t, iv = self.devices.t_fix, self.health.interval_s
        return np.fmin(np.minimum(t[o] + iv[o], t[v] + iv[v]) + EVIDENCE_SLACK_S, now)

    def _approach(self, ev: PairEvaluation, now: npt.NDArray[np.float64]) -> list[AlarmEvent]:
        """The approach rule on a fix evaluation (which has the closing speed)."""
        r = self.rules
        idx = ev.idx
        d = ev.distance_m
        # How far he has come: the anchor is the distance's running maximum, decaying at half
        # the smallest approach speed, so jitter of the estimate never adds up to
        # approach_min_m while a walk does within a minute or so.
        decay = 0.5 * r.approach_min_speed_mps * (now - self._anchor_t[idx])
        # A distance seen while a device jumps (multipath) is not "where he was lately":
        # only settled estimates raise the anchor.
        settled = self._settled(idx)
        anchor = np.where(settled, np.fmax(d, self._anchor[idx] - decay), self._anchor[idx] - decay)
        self._anchor[idx] = anchor
        self._anchor_t[idx] = now
        # He must be the one approaching: the pair's closing speed and time to breach, and his
        # own speed towards her and his own course into the order circle around where she is
        # (her phone drifting indoors, or her walking towards him, is no approach of his).
        own_v, own_t = self.core.own_course(
            self.pairs.offender[idx], self.pairs.victim[idx], self.pairs.order_m[idx]
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
        approaching = sustained & settled
        stop = ~approaching
        cond = Conditions(
            pre=np.zeros(idx.size, dtype=bool),
            likely=approaching,
            certain=np.zeros(idx.size, dtype=bool),
            escalate=np.zeros(idx.size, dtype=bool),
            leave_alarm=stop,
            leave_pre=stop,
            force_end=self.levels.level[idx] >= ALARM,
        )
        moves = audible(self.approach.step(idx, cond, now), idx, self.approach_ids)
        if not moves:
            return []
        decided = self._clock()
        return [self._approach_event(ev, m, float(now[m.k]), decided, "fix") for m in moves]

    def _approach_superseded(self, now: float) -> list[AlarmEvent]:
        """On a sweep: approach alarms whose pair has since reached the alarm level end."""
        idx = np.flatnonzero((self.approach.level > 0) & (self.levels.level >= ALARM))
        if idx.size == 0:
            return []
        ev = self.core.evaluate(idx, now)
        no = np.zeros(idx.size, dtype=bool)
        cond = Conditions(no, no, no, no, no, no, np.ones(idx.size, dtype=bool))
        decided = self._clock()
        return [
            self._approach_event(ev, m, now, decided, "time")
            for m in audible(self.approach.step(idx, cond, now), idx, self.approach_ids)
        ]

    def _probe(
        self, p: int, ev: PairEvaluation, k: int, now: float, decided: float, cause: str
    ) -> list[AlarmEvent]:
        """An episode of pair ``p`` has entered the warning band (its best estimate): count
        it, and open a probing alarm when it completes the pattern."""
        if not self.probes.enter(p, now):
            return []
        n = len(self.probes.entries[p])
        return [self._probe_event(ev, k, AlarmState.OPEN, now, decided, cause, n)]

    def _probe_expiry(self, now: float) -> list[AlarmEvent]:
        """On a sweep: a probing alarm ends when a whole window passed without an entry."""
        done = self.probes.expired(now)
        if not done:
            return []
        idx = np.array(done, dtype=np.int64)
        ev = self.core.evaluate(idx, now)
        decided = self._clock()
        return [
            self._probe_event(ev, n, AlarmState.ENDED, now, decided, "time", 0)
            for n in range(idx.size)
        ]

    def _position(self, slot: int, now: float) -> Position:
        dev = self.devices
        acc = float(self.core.acc_m[slot])
        radius = self.core.radius_m(slot, now)
        age = now - float(dev.t_fix[slot])
        return dev.position(slot, radius, old=age >= OLD_FIX_S and radius - acc > acc)

    def _pair_event(
        self,
        ev: PairEvaluation,
        k: int,
        type_: AlarmType,
        m: Transition,
        state: AlarmState,
        alarm_id: str,
        reason: str,
        now: float,
        decided: float,
        cause: str,
    ) -> AlarmEvent:
        """An event about pair ``ev.idx[k]``; its level is the transition's (the level it
        ended from, for an end), ``previous_level`` set when the level changed."""
        pairs = self.pairs
        p = int(ev.idx[k])
        motion = self._motion(p)
        if motion.parallel and state in (AlarmState.OPEN, AlarmState.UPDATE):
            reason += reasons.parallel(motion)
        return AlarmEvent(
            motion=motion,
            alarm_id=alarm_id,
            type=type_,
            level=AlarmLevel(m.level or m.before),
            state=state,
            case_id=pairs.case_ids[int(pairs.case[p])],
            offender=self._position(int(pairs.offender[p]), now),
            victim=self._position(int(pairs.victim[p]), now),
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

    def _motion(self, p: int) -> Motion:
        """Both parties' speeds and heading difference, and whether that is parallel travel."""
        r = self.rules
        a = self.core.velocity(int(self.pairs.offender[p]))
        b = self.core.velocity(int(self.pairs.victim[p]))
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

    def _pair_name(self, p: int) -> str:
        """ "case/offender/victim" of pair ``p``: stable names for alarm ids."""
        pairs = self.pairs
        off = self.devices.ids[int(pairs.offender[p])]
        vic = self.devices.ids[int(pairs.victim[p])]
        return f"{pairs.case_ids[int(pairs.case[p])]}/{off}/{vic}"

    def _where(self, ev: PairEvaluation, k: int) -> str:
        """Where pair ``ev.idx[k]`` stands, in words (:func:`proximity.reasons.where`)."""
        pairs = self.pairs
        p = int(ev.idx[k])
        return reasons.where(
            self.devices.ids[int(pairs.offender[p])],
            float(ev.distance_m[k]),
            float(ev.uncertainty_m[k]),
            self.devices.ids[int(pairs.victim[p])],
        )

    def _old_fixes(self, ev: PairEvaluation, k: int, now: float) -> str:
        p = int(ev.idx[k])
        return reasons.old_fixes(
            self._position(int(self.pairs.offender[p]), now),
            self._position(int(self.pairs.victim[p]), now),
            now,
        )

    def _event(
        self, ev: PairEvaluation, k: int, m: Transition, now: float, decided: float, cause: str
    ) -> AlarmEvent:
        pairs = self.pairs
        p = int(ev.idx[k])
        r = self.rules
        order = float(pairs.order_m[p])
        warning = float(pairs.warning_m[p])
        margin = float(pairs.margin_m[p])
        where = self._where(ev, k)
        certain = int(ev.classification[k]) == Classification.CERTAIN_BREACH
        if m.new_alarm:
            t_fix = self.devices.t_fix
            t_open = max(float(t_fix[pairs.offender[p]]), float(t_fix[pairs.victim[p]]))
            again = "" if m.step == Step.OPEN else f"/reopened/{now!r}"
            name = f"{self._pair_name(p)}/{t_open!r}{again}"
            self.alarm_ids[p] = str(uuid.uuid5(ALARM_ID_NAMESPACE, name))
            self._opened[p] = now
        alarm_id = self.alarm_ids[p]
        if m.step == Step.END:
            del self.alarm_ids[p]
        esc = float(pairs.escalation_m[p])
        reason = reasons.proximity(
            m.step,
            m.level,
            where,
            certain=certain,
            order_m=order,
            warning_m=warning,
            margin_m=margin,
            escalation_m=esc,
            within_escalation=float(ev.distance_m[k]) + float(ev.uncertainty_m[k]) <= esc,
            opened=iso_utc(self._opened.get(p, now)),
            dwell_s=r.dwell_s,
            confirm_s=r.confirm_s,
            escalate_after_s=r.escalate_after_s,
        )
        if m.step != Step.END:
            reason += self._old_fixes(ev, k, now)
        state = {
            Step.OPEN: AlarmState.OPEN,
            Step.END: AlarmState.ENDED,
        }.get(m.step, AlarmState.UPDATE)
        if m.new_alarm:
            state = AlarmState.OPEN
        return self._pair_event(
            ev,
            k,
            AlarmType.PROXIMITY,
            m,
            state,
            alarm_id,
            reason,
            now,
            decided,
            cause,
        )

    def _approach_event(
        self, ev: PairEvaluation, m: Transition, now: float, decided: float, cause: str
    ) -> AlarmEvent:
        k = m.k
        p = int(ev.idx[k])
        where = self._where(ev, k)
        if m.new_alarm:
            name = f"{self._pair_name(p)}/{self.devices.t_fix[self.pairs.offender[p]]!r}"
            self.approach_ids[p] = str(uuid.uuid5(APPROACH_NAMESPACE, name))
        alarm_id = self.approach_ids[p]
        reason = reasons.approach(
            m.step,
            where,
            superseded=bool(self.levels.level[p] >= ALARM),
            quiet_s=self.rules.approach_horizon_s,
            closing_mps=float(ev.closing_mps[k]),
            closed_m=float(self._anchor[p]) - float(ev.distance_m[k]),
            order_m=float(self.pairs.order_m[p]),
            time_to_breach_s=float(ev.time_to_breach_s[k]),
        )
        if m.step == Step.END:
            del self.approach_ids[p]
            state = AlarmState.ENDED
        elif m.step == Step.REMIND:
            state = AlarmState.UPDATE
        else:
            state = AlarmState.OPEN if m.new_alarm else AlarmState.UPDATE
        return self._pair_event(
            ev,
            k,
            AlarmType.APPROACH,
            m,
            state,
            alarm_id,
            reason,
            now,
            decided,
            cause,
        )

    def _probe_event(
        self,
        ev: PairEvaluation,
        k: int,
        state: AlarmState,
        now: float,
        decided: float,
        cause: str,
        count: int,
    ) -> AlarmEvent:
        p = int(ev.idx[k])
        r = self.rules
        where = self._where(ev, k)
        warning = float(self.pairs.warning_m[p])
        opened = state == AlarmState.OPEN
        if opened:
            name = f"{self._pair_name(p)}/{self.probes.entries[p][0]!r}"
            self.probe_ids[p] = alarm_id = str(uuid.uuid5(PROBING_NAMESPACE, name))
        else:
            alarm_id = self.probe_ids.pop(p)
        reason = reasons.probing(
            opened, where, count=count, warning_m=warning, window_s=r.probe_window_s
        )
        m = Transition(k, Step.OPEN, ALARM, ALARM, False)
        return self._pair_event(
            ev, k, AlarmType.PROBING, m, state, alarm_id, reason, now, decided, cause
        )
