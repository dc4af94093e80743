"""The engine: device state as arrays, incremental pair evaluation, and the proximity rule.

A batch of fixes is applied in rounds: round k holds the k-th fix (in fix-time order) of
every device in the batch, so a device that sent three fixes while the engine was busy is
still evaluated three times, in order, and a brief breach between two fixes is not lost to
batching. Within a round, only the pairs of the devices that moved are evaluated.

The proximity rule is a two-state machine per pair with hysteresis: a pair enters ``alarm``
when its distance is at most the order distance, and leaves it only beyond the order distance
plus the pair's margin (``max(margin_fraction * order, margin_min_m)``), so GPS jitter around
the boundary does not produce an alarm storm. Transitions are array logic; Python work is
done only for the rare pairs that change state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ingest.batch import FixBatch
from proximity.cases import Case
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType, Position
from proximity.pairs import PairTable, gather_pairs, pair_distances

#: Namespace of alarm ids: uuid5(namespace, "case/offender/victim/opening fix time") gives the
#: same id when the same history is replayed, which makes re-published duplicates harmless.
ALARM_ID_NAMESPACE = uuid.UUID("6f1c2d38-52a4-4bde-9a51-3c1f0e8b7d20")

CLEAR = np.int8(0)
IN_ALARM = np.int8(1)


@dataclass
class EngineStats:
    batches: int = 0
    fixes_in: int = 0
    fixes_applied: int = 0
    fixes_late: int = 0
    pairs_evaluated: int = 0
    max_batch: int = 0
    events: int = 0


class DeviceTable:
    """Last accepted fix of every device, one slot per device (struct of arrays)."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self.ids = tuple(device_ids)
        self.slot_of = {d: i for i, d in enumerate(self.ids)}
        n = len(self.ids)
        self.lat = np.full(n, np.nan)
        self.lon = np.full(n, np.nan)
        self.acc_m = np.full(n, np.nan)
        self.t_fix = np.full(n, np.nan)
        self.t_recv = np.full(n, np.nan)
        self.seq = np.full(n, -1, dtype=np.int64)

    def position(self, slot: int) -> Position:
        return Position(
            device=self.ids[slot],
            lat=float(self.lat[slot]),
            lon=float(self.lon[slot]),
            acc_m=float(self.acc_m[slot]),
            t_fix=float(self.t_fix[slot]),
            t_recv=float(self.t_recv[slot]),
            seq=int(self.seq[slot]),
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
    """Applies fix batches and returns the alarm events they cause."""

    def __init__(
        self,
        cases: Sequence[Case],
        *,
        margin_fraction: float = 0.1,
        margin_min_m: float = 25.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cases = {c.id: c for c in cases}
        devices = sorted({d for c in cases for d in (*c.offenders, *c.protected)})
        self.devices = DeviceTable(devices)
        self.pairs = PairTable.build(cases, self.devices.slot_of, margin_fraction, margin_min_m)
        self.state = np.zeros(len(self.pairs), dtype=np.int8)
        self.alarm_ids: dict[int, str] = {}
        self.stats = EngineStats()
        self._clock = clock
        self._mark = np.zeros(len(self.pairs), dtype=np.bool_)
        self._scratch = np.empty(len(self.pairs), dtype=np.int64)

    @property
    def slot_of(self) -> dict[str, int]:
        return self.devices.slot_of

    @property
    def open_alarms(self) -> int:
        return len(self.alarm_ids)

    def warm_up(self) -> float:
        """Compile (or load from cache) every kernel; return the seconds it took."""
        t0 = time.perf_counter()
        lat = np.array([50.0, 50.001])
        lon = np.array([4.0, 4.001])
        a = np.array([0], dtype=np.int64)
        b = np.array([1], dtype=np.int64)
        out = np.empty(1)
        pair_distances(lat, lon, a, b, np.array([0], dtype=np.int64), out)
        gather_pairs(
            np.array([0], dtype=np.int64),
            np.array([0, 1, 1], dtype=np.int64),
            np.array([0], dtype=np.int64),
            np.zeros(1, dtype=np.bool_),
            np.empty(1, dtype=np.int64),
        )
        return time.perf_counter() - t0

    def process(self, batch: FixBatch) -> list[AlarmEvent]:
        """Apply a batch of fixes; return the alarm state changes, in decision order."""
        st = self.stats
        st.batches += 1
        st.fixes_in += len(batch)
        st.max_batch = max(st.max_batch, len(batch))
        events: list[AlarmEvent] = []
        for rows in _rounds(batch):
            touched = self._apply(batch, rows)
            if touched.size:
                events.extend(self._evaluate(touched))
        st.events += len(events)
        return events

    def _apply(self, batch: FixBatch, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Write one round's fixes into the device table; late fixes never move state back."""
        dev = self.devices
        slots = batch.slot[rows]
        late = batch.t_fix[rows] < dev.t_fix[slots]  # NaN (no fix yet) compares False
        self.stats.fixes_late += int(late.sum())
        rows = rows[~late]
        slots = slots[~late]
        dev.lat[slots] = batch.lat[rows]
        dev.lon[slots] = batch.lon[rows]
        dev.acc_m[slots] = batch.acc_m[rows]
        dev.t_fix[slots] = batch.t_fix[rows]
        dev.t_recv[slots] = batch.t_recv[rows]
        dev.seq[slots] = batch.seq[rows]
        self.stats.fixes_applied += int(slots.size)
        return slots

    def _evaluate(self, slots: npt.NDArray[np.int64]) -> list[AlarmEvent]:
        pairs = self.pairs
        n = gather_pairs(slots, pairs.dev_ptr, pairs.dev_pairs, self._mark, self._scratch)
        if n == 0:
            return []
        idx = self._scratch[:n].copy()
        dist = np.empty(n, dtype=np.float64)
        pair_distances(self.devices.lat, self.devices.lon, pairs.offender, pairs.victim, idx, dist)
        self.stats.pairs_evaluated += n

        state = self.state[idx]
        order = pairs.order_m[idx]
        enter = (state == CLEAR) & (dist <= order)
        leave = (state == IN_ALARM) & (dist > order + pairs.margin_m[idx])
        changed = np.flatnonzero(enter | leave)
        if changed.size == 0:
            return []
        self.state[idx[enter]] = IN_ALARM
        self.state[idx[leave]] = CLEAR

        decided = self._clock()
        events = []
        for k in changed:
            events.append(self._event(int(idx[k]), float(dist[k]), bool(enter[k]), decided))
        return events

    def _event(self, p: int, distance: float, opened: bool, decided: float) -> AlarmEvent:
        pairs = self.pairs
        off = self.devices.position(int(pairs.offender[p]))
        vic = self.devices.position(int(pairs.victim[p]))
        case_id = pairs.case_ids[int(pairs.case[p])]
        order = float(pairs.order_m[p])
        margin = float(pairs.margin_m[p])
        if opened:
            t_open = max(off.t_fix, vic.t_fix)
            alarm_id = str(
                uuid.uuid5(ALARM_ID_NAMESPACE, f"{case_id}/{off.device}/{vic.device}/{t_open!r}")
            )
            self.alarm_ids[p] = alarm_id
            reason = (
                f"offender {off.device} is {distance:.0f} m from protected person {vic.device},"
                f" within the order distance of {order:.0f} m"
            )
            state = AlarmState.OPEN
        else:
            alarm_id = self.alarm_ids.pop(p)
            reason = (
                f"offender {off.device} is {distance:.0f} m from protected person {vic.device},"
                f" beyond the order distance plus margin ({order:.0f} + {margin:.0f} m)"
            )
            state = AlarmState.ENDED
        return AlarmEvent(
            alarm_id=alarm_id,
            type=AlarmType.PROXIMITY,
            level=AlarmLevel.ALARM,
            state=state,
            case_id=case_id,
            offender=off,
            victim=vic,
            distance_m=distance,
            order_distance_m=order,
            margin_m=margin,
            reason=reason,
            t_decided=decided,
        )
