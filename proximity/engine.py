"""The engine loop: batches of fixes in, alarm events out.

A batch of fixes is applied in rounds: round k holds the k-th fix (in fix-time order) of
every device in the batch, so a device that sent three fixes while the engine was busy is
still evaluated three times, in order, and a brief breach between two fixes is not lost to
batching. Within a round, only the pairs of the devices that moved are evaluated by the core
(:mod:`proximity.core`); :meth:`Engine.sweep` re-evaluates every pair for what time alone
changes (an old fix's growing uncertainty).

The parts: the devices' state (:mod:`proximity.intake`), the rules on pairs
(:mod:`proximity.pair_rules`: proximity, probing, approach), on zones
(:mod:`proximity.zones`) and on the devices' health (:mod:`proximity.health`), the engine's
own faults (:mod:`proximity.faults`), and the alarm book (:mod:`proximity.alarms`) that every
rule names its alarms through and that operators' actions and queries read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from geofence.compiled import warm_up as warm_up_zones
from ingest.batch import FixBatch
from ingest.model import DeviceEvent
from numerics.geodesy import geodesic_distance_m
from numerics.uncertainty import DEFAULT_MOBILITY, MOBILITY_MPS, UNKNOWN_ACCURACY_M
from proximity import reasons
from proximity.alarms import APPROACH, PAIR, ZONE, AlarmBook
from proximity.cases import Case, Device, top_speeds
from proximity.core import PairEvaluation, ProximityCore
from proximity.core import warm_up as warm_up_core
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Position
from proximity.faults import EngineFaults
from proximity.health import DeviceWatch, sequence_steps
from proximity.incidents import Incidents
from proximity.intake import FixIntake
from proximity.pair_rules import ApproachRule, ProximityRule
from proximity.pairs import PairTable, dependency_rounds
from proximity.pursuit import Pursuit
from proximity.rules import RuleConfig
from proximity.suspensions import Suspensions
from proximity.zones import ZoneWatch

DEFAULT_RULES = RuleConfig()


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
        self.rules = r = rules
        self.pairs = PairTable.build(
            cases, self.slot_of, r.margin_fraction, r.margin_min_m, r.escalation_fraction
        )
        speeds = top_speeds(cases, devices, default_top_speed_mps)
        self.top_speed_mps = np.array([speeds[d] for d in ids], dtype=np.float64)
        self.core = ProximityCore(
            len(ids),
            self.pairs,
            self.top_speed_mps,
            unknown_accuracy_m,
            r.motion_accel_psd,
            r.max_uncertainty_m,
            r.estimate_floor_fraction,
        )
        self.stats = EngineStats()
        self._clock = clock
        #: Every alarm of every rule (proximity.alarms): the rules name theirs through it.
        self.book = AlarmBook()
        self.health = DeviceWatch(cases, self.slot_of, devices, r, self._position, clock, self.book)
        self.intake = FixIntake(
            ids, self.core, r, unknown_accuracy_m, self.health.cadence, self.stats
        )
        self.devices = self.intake.devices
        self.quality = self.intake.quality
        self.proximity = ProximityRule(self.pairs, self.intake, r, self.book, clock)
        self.levels = self.proximity.levels
        self.alarm_ids = self.proximity.alarm_ids
        self.probes = self.proximity.probes
        self.approach_rule = ApproachRule(self.proximity, self.book)
        self.approach = self.approach_rule.levels
        self.zones = ZoneWatch(cases, self.slot_of, self.core, r, self._position, clock, self.book)
        self.faults = EngineFaults(self.health, self.book)
        #: Alarm sources an operator suspended (proximity.suspensions).
        self.suspensions = Suspensions()
        #: The incidents the published alarms belong to (proximity.incidents).
        self.incidents = Incidents()
        #: The devices asked to report faster during an alarm (proximity.pursuit).
        self.pursuit = Pursuit(
            cases,
            devices,
            r,
            lambda d: float(self.health.interval_s[self.slot_of[d]]),
            lambda d: float(self.devices.t_fix[self.slot_of[d]]),
            self._gaps,
            lambda d: bool(self.health.silent[self.slot_of[d]]),
            self._pursuit_alarm,
        )
        self._out = PairEvaluation.allocate(len(self.pairs))
        #: The latest decision time: decisions never go back in time.
        self._t_last = -math.inf
        self._round_scratch = np.full(len(ids), -1, dtype=np.int64)  # dependency_rounds
        self._t_slot = np.full(len(ids), np.nan)  # a round's decision time per device

    @property
    def open_alarms(self) -> int:
        """Alarms that have neither ended nor been closed (those that only an operator ends,
        such as a panic, a data gap or an engine fault, included)."""
        return self.book.open_count

    @property
    def awaiting_operator(self) -> int:
        """Open alarms that no operator has acknowledged since they opened or last rose."""
        return self.book.awaiting

    def open_case_ids(self) -> set[str]:
        """Cases with an alarm that has neither ended nor been closed."""
        return self.book.open_case_ids()

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
        self.intake.used_rows = []
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
        return self._decided(events)

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
            touched, t_used = self.intake.apply(batch, r, t[r])
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
        return self._decided(events)

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
            # figures, which the rules compute for the few pairs that change state.
            ev = self.core.evaluate_all(now, self._out, approach=False)
            events.extend(self._decide(ev, now, "time"))
        if len(self.zones):
            self.zones.update_schedules(now)
            entries = np.arange(len(self.zones), dtype=np.int64)
            self.stats.zones_evaluated += entries.size
            events.extend(self.zones.decide(entries, now, "time"))
            events.extend(self.zones.probe_expiry(now))
        events.extend(self.health.sweep(now))
        events.extend(self.pursuit.tick(now))
        out = self._decided(events)
        if len(self.suspensions):
            over = self.suspensions.expired(now, self.book.last)
            self._remember(over)
            out.extend(self._incidents(over))
        return out

    def _decide(
        self, ev: PairEvaluation, at: float | npt.NDArray[np.float64], cause: str
    ) -> list[AlarmEvent]:
        """The pair rules on evaluation ``ev``, decided at ``at`` (one time, or one per pair)."""
        self.stats.pairs_evaluated += len(ev)
        now = np.broadcast_to(np.asarray(at, dtype=np.float64), ev.idx.shape)
        events = self.proximity.decide(ev, now, cause)
        if cause == "fix":
            events.extend(self.approach_rule.decide(ev, now))
        else:
            t = float(now[0]) if now.size else self._t_last
            events.extend(self.approach_rule.superseded(t))
            events.extend(self.proximity.probe_expiry(t))
        return events

    def acknowledge(self, alarm_id: str, operator: str, note: str = "") -> list[AlarmEvent]:
        """An operator acknowledges alarm ``alarm_id``: recorded as an ``acknowledged`` event,
        and the alarm is no longer re-notified (until its level rises). Unknown ids: []."""
        return self._operator(alarm_id, operator, note, AlarmState.ACKNOWLEDGED)

    def close(
        self, alarm_id: str, operator: str, reason: str, resolution: str = ""
    ) -> list[AlarmEvent]:
        """An operator closes alarm ``alarm_id`` (with why: a resolution code, a note, or
        both): a ``closed`` event; the alarm stays silent until its episode ends, and a rise
        in level opens a new alarm."""
        return self._operator(alarm_id, operator, reason, AlarmState.CLOSED, resolution)

    def suspend(
        self, alarm_id: str, operator: str, note: str, until: float
    ) -> list[AlarmEvent] | str:
        """An operator suspends the source of alarm ``alarm_id`` until ``until`` (saying why:
        ``note``): a ``suspended`` event, and that source's messages are held back until
        then (:mod:`proximity.suspensions`). A panic or an escalation is never suspended:
        the reason why, as text. Unknown or closed ids: []."""
        last = self.book.last(alarm_id)
        if last is None or last.state in (AlarmState.CLOSED, AlarmState.ENDED):
            return []
        refusal = self.suspensions.refusal(last)
        if refusal is not None:
            return refusal
        event = self.suspensions.suspend(last, operator, note, until, self._clock())
        self._remember([event])
        return self._incidents([event])

    def _operator(
        self, alarm_id: str, operator: str, note: str, state: AlarmState, resolution: str = ""
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
        event = last.restated(
            state,
            self._clock(),
            reasons.operator(what, operator, note, resolution),
            "operator",
            operator=operator,
            resolution=resolution or None,
        )
        self._remember([event])
        return self._incidents([event])

    def data_gap_events(self, lost_at: float, at: float) -> list[AlarmEvent]:
        """One ``data_gap`` alarm per case (:meth:`EngineFaults.data_gap`), remembered: only
        an operator ends it, by closing it."""
        return self._decided(self.faults.data_gap(lost_at, at))

    def fault_events(self, reason: str, at: float) -> list[AlarmEvent]:
        """One ``engine_fault`` alarm per case, the loop being stuck (:meth:`EngineFaults.stuck`;
        the watchdog's thread calls it: nothing is evaluated or remembered)."""
        return self.faults.stuck(reason, at)

    def storage_fault_events(
        self, reason: str | None, at: float, journal: bool = True
    ) -> list[AlarmEvent]:
        """The storage fault alarm of every case (:meth:`EngineFaults.storage_fault`)."""
        events = self.faults.storage_fault(reason, at, journal)
        self._remember(events)
        return self._incidents(events)

    def _remember(self, events: Sequence[AlarmEvent]) -> None:
        """Every alarm event the engine decides goes into the book, in order."""
        self.book.write(events)

    def _decided(self, events: list[AlarmEvent]) -> list[AlarmEvent]:
        """What a batch, a sweep or a device event decided: counted and remembered."""
        self.stats.events += len(events)
        self._remember(events)
        return self._incidents(self.suspensions.filter(events))

    def _incidents(self, events: list[AlarmEvent]) -> list[AlarmEvent]:
        """The published events with their incident (proximity.incidents), in the book too."""
        tagged = self.incidents.tag(events)
        self.book.restate(tagged)
        # The pursuit's figures go with the published events only (the book, which is
        # saved, keeps what the rules decided).
        return self.pursuit.decide(tagged)

    def _gaps(self, device: str) -> tuple[int, list[float]]:
        """How many gaps between ``device``'s fixes have been counted, and the latest (at
        most proximity.cadence.CADENCE_GAPS), oldest first."""
        cad, slot = self.health.cadence, self.slot_of[device]
        n = int(cad.count[slot])
        ring = cad.gaps[slot].tolist()
        k, size = min(n, len(ring)), len(ring)
        return n, [ring[(n - k + i) % size] for i in range(k)]

    def _pursuit_alarm(
        self, alarm_id: str, state: AlarmState, case_id: str, device: str, reason: str, at: float
    ) -> AlarmEvent:
        """A ``pursuit_ignored`` health alarm (proximity.pursuit) of ``device`` in a case."""
        case = self.cases[case_id]
        slot = self.slot_of[device]
        e = self.health.alarm_event(
            alarm_id,
            AlarmType.PURSUIT_IGNORED,
            AlarmLevel.PRE_ALERT,
            state,
            case,
            slot,
            device in case.offenders,
            reason,
            at,
        )
        return replace(e, t_decided=at, cause="time")

    def evaluate(self, idx: npt.NDArray[np.int64] | None = None) -> PairEvaluation:
        """The core's current verdict on pairs ``idx`` (all pairs by default), for inspection."""
        now = self._clock()
        return self.core.evaluate_all(now) if idx is None else self.core.evaluate(idx, now)

    def _position(self, slot: int, now: float) -> Position:
        return self.intake.position(slot, now)
