"""The engine: device state as arrays, incremental pair evaluation, and the proximity rule.

A batch of fixes is applied in rounds: round k holds the k-th fix (in fix-time order) of
every device in the batch, so a device that sent three fixes while the engine was busy is
still evaluated three times, in order, and a brief breach between two fixes is not lost to
batching. Within a round, only the pairs of the devices that moved are evaluated by the core
(:mod:`proximity.core`); :meth:`Engine.sweep` re-evaluates every pair for what time alone
changes (an old fix's growing uncertainty).

The proximity rule is a state machine per pair with hysteresis, on the core's classification:
a pair enters ``alarm`` when a breach is certain or possible (distance minus the combined
uncertainty radius at most the order distance), is upgraded once when a possible breach
becomes certain, and leaves only when even the pessimistic distance is beyond the order
distance plus the pair's margin (``max(margin_fraction * order, margin_min_m)``), so GPS
jitter around the boundary does not produce an alarm storm and an alarm never ends on a fix
too uncertain to show that the danger is over. Transitions are array logic; Python work is
done only for the rare pairs that change state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from geofence.compiled import warm_up as warm_up_zones
from ingest.batch import FixBatch
from ingest.model import DeviceEvent
from proximity.cases import Case, Device, top_speeds
from proximity.core import PairEvaluation, ProximityCore
from proximity.core import warm_up as warm_up_core
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Position
from proximity.health import DeviceWatch
from proximity.pairs import PairTable
from proximity.quality import FixFilter
from proximity.rules import RuleConfig
from proximity.states import advance
from proximity.uncertainty import (
    DEFAULT_MOBILITY,
    MOBILITY_MPS,
    UNKNOWN_ACCURACY_M,
    Classification,
)
from proximity.zones import ZoneWatch

#: Namespace of alarm ids: uuid5(namespace, "case/offender/victim/opening fix time") gives the
#: same id when the same history is replayed, which makes re-published duplicates harmless.
ALARM_ID_NAMESPACE = uuid.UUID("6f1c2d38-52a4-4bde-9a51-3c1f0e8b7d20")

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


def _rounds(batch: FixBatch) -> list[npt.NDArray[np.int64]]:
    """Row indices of the batch grouped into rounds: round k = k-th fix of each device."""
    n = len(batch)
    if n == 0:
        return []
    order = np.lexsort((np.arange(n), batch.t_fix, batch.slot))
    s = batch.slot[order]
    first = np.ones(n, dtype=bool)
    first[1:] = s[1:] != s[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.arange(n) - group_start
    if rank.max() == 0:
        return [order]
    return [order[rank == r] for r in range(int(rank.max()) + 1)]


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
        self.pairs = PairTable.build(cases, self.slot_of, rules.margin_fraction, rules.margin_min_m)
        speeds = top_speeds(cases, devices, default_top_speed_mps)
        self.top_speed_mps = np.array([speeds[d] for d in ids], dtype=np.float64)
        self.core = ProximityCore(
            len(ids), self.pairs, self.top_speed_mps, unknown_accuracy_m, rules.motion_accel_psd
        )
        self.devices = DeviceTable(ids, self.core.lat, self.core.lon)
        self.state = np.zeros(len(self.pairs), dtype=np.int8)
        self._out = PairEvaluation.allocate(len(self.pairs))
        self.alarm_ids: dict[int, str] = {}
        self.stats = EngineStats()
        self._clock = clock
        self.zones = ZoneWatch(
            cases, self.slot_of, self.core, rules.margin_min_m, self._position, clock
        )
        self.quality = FixFilter(len(ids), rules, unknown_accuracy_m)
        self.health = DeviceWatch(cases, self.slot_of, devices, rules, self._position, clock)

    @property
    def open_alarms(self) -> int:
        return len(self.alarm_ids) + len(self.zones.alarm_ids) + len(self.health.alarm_ids)

    def warm_up(self) -> float:
        """Compile (or load from cache) every kernel; return the seconds it took."""
        return warm_up_core() + warm_up_zones()

    def process(self, batch: FixBatch) -> list[AlarmEvent]:
        """Apply a batch of fixes; return the alarm state changes, in decision order."""
        st = self.stats
        st.batches += 1
        st.fixes_in += len(batch)
        st.max_batch = max(st.max_batch, len(batch))
        events: list[AlarmEvent] = []
        now = self._clock()
        self.zones.update_schedules(now)
        for rows in _rounds(batch):
            touched = self._apply(batch, rows, now)
            if touched.size:
                idx = self.core.pairs_of(touched)
                if idx.size:
                    ev = self.core.evaluate(idx, now, self._out)
                    events.extend(self._decide(ev, now, "fix"))
                if len(self.zones):
                    entries = self.zones.entries_of(touched)
                    self.stats.zones_evaluated += entries.size
                    events.extend(self.zones.decide(entries, now, "fix"))
        if len(batch):
            # Any message, even a late or implausible fix, shows the device is alive.
            events.extend(self.health.seen(batch.slot, batch.t_recv))
        st.events += len(events)
        return events

    def handle_events(self, device_events: Sequence[DeviceEvent]) -> list[AlarmEvent]:
        """Alarms for device events (panic, tamper, ...) of devices in the cases."""
        known = [e for e in device_events if e.device in self.slot_of]
        if not known:
            return []
        slots = np.array([self.slot_of[e.device] for e in known], dtype=np.int64)
        events = self.health.seen(slots, np.array([e.t_recv for e in known]))
        events.extend(self.health.device_events(known))
        self.stats.events += len(events)
        return events

    def sweep(self) -> list[AlarmEvent]:
        """Re-evaluate every pair and zone entry at the current time: fix ages grow without
        new fixes, and zone schedules start and end."""
        now = self._clock()
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
        events.extend(self.health.sweep(now))
        self.stats.events += len(events)
        return events

    def evaluate(self, idx: npt.NDArray[np.int64] | None = None) -> PairEvaluation:
        """The core's current verdict on pairs ``idx`` (all pairs by default), for inspection."""
        now = self._clock()
        return self.core.evaluate_all(now) if idx is None else self.core.evaluate(idx, now)

    def _apply(
        self, batch: FixBatch, rows: npt.NDArray[np.int64], now: float
    ) -> npt.NDArray[np.int64]:
        """Write one round's fixes into the device table. Late and duplicate fixes (not newer
        than the device's last one) never move state back; implausible jumps are set aside
        (:mod:`proximity.quality`)."""
        dev = self.devices
        st = self.stats
        slots = batch.slot[rows]
        t_fix = batch.t_fix[rows]
        # NaN (no fix yet) compares False: a device's first fix is always new.
        duplicate = t_fix == dev.t_fix[slots]
        late = t_fix < dev.t_fix[slots]
        st.fixes_late += int(late.sum())
        st.fixes_duplicate += int(duplicate.sum())
        keep = ~(late | duplicate)
        rows = rows[keep]
        slots = slots[keep]
        if slots.size == 0:
            return slots
        use = self.quality.screen(
            slots,
            batch.lat[rows],
            batch.lon[rows],
            batch.t_fix[rows],
            batch.acc_m[rows],
            dev.lat[slots],
            dev.lon[slots],
            dev.t_fix[slots],
            dev.acc_m[slots],
        )
        st.fixes_implausible += int(slots.size - use.sum())
        rows = rows[use]
        slots = slots[use]
        dev.acc_m[slots] = batch.acc_m[rows]
        dev.t_fix[slots] = batch.t_fix[rows]
        dev.t_recv[slots] = batch.t_recv[rows]
        dev.seq[slots] = batch.seq[rows]
        self.core.apply(
            slots, batch.lat[rows], batch.lon[rows], batch.t_fix[rows], batch.acc_m[rows], now
        )
        st.fixes_applied += int(slots.size)
        return slots

    def _decide(self, ev: PairEvaluation, now: float, cause: str) -> list[AlarmEvent]:
        self.stats.pairs_evaluated += len(ev)
        idx = ev.idx
        pairs = self.pairs
        cls = ev.classification
        breach = cls >= Classification.POSSIBLE_BREACH
        certain = cls == Classification.CERTAIN_BREACH
        # NaN distances (a device without a fix) compare False: such a pair never changes.
        beyond = ev.distance_m - ev.uncertainty_m > pairs.order_m[idx] + pairs.margin_m[idx]
        changed, kinds = advance(self.state, idx, breach, certain, beyond)
        if changed.size == 0:
            return []

        # The events' figures: a sweep evaluated without the approach, so the few pairs that
        # changed are evaluated again with it (same time, same fixes: same other figures).
        detail = self.core.evaluate(idx[changed], now) if cause == "time" else None
        decided = self._clock()
        events = []
        for n, (k, kind) in enumerate(zip(changed, kinds, strict=True)):
            src, at = (ev, int(k)) if detail is None else (detail, n)
            events.append(self._event(src, at, kind, now, decided, cause))
        return events

    def _position(self, slot: int, now: float) -> Position:
        dev = self.devices
        acc = float(self.core.acc_m[slot])
        radius = self.core.radius_m(slot, now)
        age = now - float(dev.t_fix[slot])
        return dev.position(slot, radius, old=age >= OLD_FIX_S and radius - acc > acc)

    def _event(
        self, ev: PairEvaluation, k: int, kind: AlarmState, now: float, decided: float, cause: str
    ) -> AlarmEvent:
        pairs = self.pairs
        p = int(ev.idx[k])
        off = self._position(int(pairs.offender[p]), now)
        vic = self._position(int(pairs.victim[p]), now)
        case_id = pairs.case_ids[int(pairs.case[p])]
        order = float(pairs.order_m[p])
        margin = float(pairs.margin_m[p])
        distance = float(ev.distance_m[k])
        unc = float(ev.uncertainty_m[k])
        cls = Classification(int(ev.classification[k]))
        where = (
            f"offender {off.device} is {distance:.0f} m (+-{unc:.0f} m) from protected person"
            f" {vic.device}"
        )
        old = [
            f"the {role} fix is {now - p_.t_fix:.0f} s old (+-{p_.radius_m:.0f} m)"
            for role, p_ in (("offender's", off), ("protected person's", vic))
            if p_.old
        ]
        why_uncertain = f"; {' and '.join(old)}" if old else ""
        if kind == AlarmState.OPEN:
            t_open = max(off.t_fix, vic.t_fix)
            alarm_id = str(
                uuid.uuid5(ALARM_ID_NAMESPACE, f"{case_id}/{off.device}/{vic.device}/{t_open!r}")
            )
            self.alarm_ids[p] = alarm_id
            what = "certain" if cls == Classification.CERTAIN_BREACH else "possible"
            reason = f"{what} breach: {where}, order distance {order:.0f} m{why_uncertain}"
        elif kind == AlarmState.UPDATE:
            alarm_id = self.alarm_ids[p]
            reason = f"breach now certain: {where}, order distance {order:.0f} m"
        else:
            alarm_id = self.alarm_ids.pop(p)
            reason = (
                f"{where}, beyond the order distance plus margin ({order:.0f} + {margin:.0f} m)"
            )
        return AlarmEvent(
            alarm_id=alarm_id,
            type=AlarmType.PROXIMITY,
            level=AlarmLevel.ALARM,
            state=kind,
            case_id=case_id,
            offender=off,
            victim=vic,
            distance_m=distance,
            order_distance_m=order,
            margin_m=margin,
            reason=reason,
            t_decided=decided,
            classification=cls,
            probability=float(ev.probability[k]),
            uncertainty_m=unc,
            closing_speed_mps=float(ev.closing_mps[k]),
            time_to_breach_s=float(ev.time_to_breach_s[k]),
            cause=cause,
        )
