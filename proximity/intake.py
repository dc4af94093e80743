"""The devices' state, in one place: each device's last accepted fix, how it was taken, and
what the rules need to know about it (whether it jumped, whether anything checked it).

:meth:`FixIntake.apply` takes one round of fixes into that state: late and duplicate fixes
(not newer than the device's last one) never move it back, implausible jumps are set aside
(:mod:`proximity.quality`), a fix stamped ahead of its arrival counts as taken when it
arrived, and the rest goes to the proximity core's motion filter (:mod:`proximity.core`).
The rules read the state through :meth:`FixIntake.settled`, :meth:`FixIntake.jump_time`,
:meth:`FixIntake.current_until` and :meth:`FixIntake.position`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ingest.batch import FixBatch
from proximity.core import ProximityCore
from proximity.events import Position
from proximity.quality import FixFilter
from proximity.rules import RuleConfig

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: A fix stamped more than this after its arrival is counted as from a clock that runs ahead
#: (``fixes_clock_ahead``); any fix stamped after its arrival counts as taken at its arrival.
CLOCK_SKEW_S = 1.0
#: A fix stands as current evidence until its device's next report is due, plus this.
EVIDENCE_SLACK_S = 3.0
#: Each device's cadence is learned from its last CADENCE_GAPS gaps between fixes: their
#: CADENCE_QUANTILE quantile (a device that logs in bursts has long gaps in every few; one
#: dropout among sixteen gaps moves it little). Gaps longer than MAX_LEARNED_GAP_S count as
#: that long (a silence is the health rule's, not a cadence).
CADENCE_GAPS = 16
CADENCE_QUANTILE = 0.9
MAX_LEARNED_GAP_S = 600.0
_Q_LO = int(CADENCE_QUANTILE * (CADENCE_GAPS - 1))
_Q_FRAC = CADENCE_QUANTILE * (CADENCE_GAPS - 1) - _Q_LO
#: A fix is called old in an alarm's reason when it is at least this old and its age, times
#: the device's top speed, outweighs its own accuracy.
OLD_FIX_S = 5.0


class IntakeStats(Protocol):
    fixes_late: int
    fixes_duplicate: int
    fixes_implausible: int
    fixes_clock_ahead: int
    fixes_applied: int


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


class Cadence:
    """How often each device actually reports, learned from the gaps between its fixes, with
    the declared reporting interval as the prior (the first gaps are read against it).

    ``learned_s`` is the :data:`CADENCE_QUANTILE` quantile of the device's last
    :data:`CADENCE_GAPS` gaps: a phone in power saving declared at 1 s but reporting every
    30-120 s, or a logger that sends bursts of 1 s fixes with gaps of 5-11 s, is read at the
    cadence it keeps, not at the one it was declared with.
    """

    def __init__(self, declared_s: FloatArray) -> None:
        self.declared_s = declared_s
        self.gaps = np.repeat(np.asarray(declared_s, dtype=np.float64)[:, None], CADENCE_GAPS, 1)
        self.count = np.zeros(declared_s.size, dtype=np.int64)
        self.learned_s = np.array(declared_s, dtype=np.float64)

    def observe(self, slots: IntArray, gap: FloatArray) -> None:
        """Devices ``slots`` (distinct) sent a fix ``gap`` seconds after their previous one
        (NaN: their first)."""
        ok = np.isfinite(gap) & (gap > 0)
        if not ok.any():
            return
        s = slots[ok]
        self.gaps[s, self.count[s] % CADENCE_GAPS] = np.minimum(gap[ok], MAX_LEARNED_GAP_S)
        self.count[s] += 1
        # The quantile of a sorted row, by linear interpolation (as numpy.quantile's default;
        # a sort of 16 values per device is cheaper than numpy.quantile's general path).
        g = np.sort(self.gaps[s], axis=1)
        self.learned_s[s] = g[:, _Q_LO] + _Q_FRAC * (g[:, _Q_LO + 1] - g[:, _Q_LO])

    def expected_s(self, slots: IntArray | slice = slice(None)) -> FloatArray:
        """The longest gap that is normal for each device: its declared interval, or the
        cadence it keeps if that is slower (what the health rule waits for)."""
        return np.maximum(self.declared_s[slots], self.learned_s[slots])


class FixIntake:
    """Every device's state: its last fix (``devices``), the fix filter's (``quality``), the
    motion filter's (``core``), and when its newest stamp and its last unchecked fix were.

    ``interval_s`` is each device's declared reporting interval (the health watch's array,
    shared): the prior of its learned cadence (``cadence``), which the rules use.
    """

    def __init__(
        self,
        device_ids: Sequence[str],
        core: ProximityCore,
        rules: RuleConfig,
        unknown_accuracy_m: float,
        interval_s: FloatArray,
        stats: IntakeStats,
    ) -> None:
        n = len(device_ids)
        self.core = core
        self.rules = rules
        self.devices = DeviceTable(device_ids, core.lat, core.lon)
        self.quality = FixFilter(n, rules, unknown_accuracy_m)
        self.interval_s = interval_s
        self.cadence = Cadence(interval_s)
        self.stats = stats
        #: When each device last sent a fix that nothing checked (see apply); NaN: never.
        self.t_unchecked = np.full(n, np.nan)
        #: Each device's newest stamp (a clock ahead of its arrival included).
        self.t_stamped = np.full(n, np.nan)
        #: Rows of the current batch that were used, per round (the evidence record's).
        self.used_rows: list[IntArray] = []

    def apply(self, batch: FixBatch, rows: IntArray, t: FloatArray) -> tuple[IntArray, FloatArray]:
        """Write one round's fixes (decided at ``t``, parallel to ``rows``) into the device
        state; return the slots that took a fix and those fixes' times.

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
        seen = self.t_stamped[slots]  # the newest stamp of the device so far
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
        # than twice the cadence it keeps): across the gap, the motion filter's prediction
        # and the jump rule allow almost anything, and a multipath burst passes for a walk.
        # Like a jump, it cannot make a breach certain until confirm_s of later fixes. The
        # cadence is the device's own, learned (a logger's usual gaps between bursts are no
        # dropout: read against a declared 1 s, every burst would start unchecked again and
        # a breach would never become certain).
        gap = t_fix - dev.t_fix[slots]  # NaN: the first fix
        # (Never stricter than the declared interval: a queue of buffered fixes delivered at
        # once teaches a cadence of milliseconds that the device does not keep.)
        cadence = np.maximum(self.cadence.learned_s[slots], self.interval_s[slots])
        unchecked = ~(gap <= 2.0 * cadence + EVIDENCE_SLACK_S)
        self.t_unchecked[slots[unchecked]] = t_fix[unchecked]
        self.cadence.observe(slots, gap)
        dev.acc_m[slots] = batch.acc_m[rows]
        dev.t_fix[slots] = t_fix
        dev.t_recv[slots] = batch.t_recv[rows]
        dev.seq[slots] = batch.seq[rows]
        self.t_stamped[slots] = np.fmax(self.t_stamped[slots], stamped)
        self.core.apply(slots, batch.lat[rows], batch.lon[rows], t_fix, batch.acc_m[rows], t)
        st.fixes_applied += int(slots.size)
        self.used_rows.append(rows)
        return slots, t

    def settled(self, slots: IntArray) -> npt.NDArray[np.bool_]:
        """Devices that neither jumped nor manoeuvred (a fix taken although it jumped, or
        one outside the motion filter's gate), nor sent a fix nothing checks (the first, or
        the first after a dropout), within confirm_s of fixes before their last."""
        w = self.rules.confirm_s
        t = self.devices.t_fix[slots]
        return (
            self.quality.settled(slots, t)
            & ~self.core.manoeuvred(slots, w)
            & ~(t - self.t_unchecked[slots] < w)  # NaN (never unchecked): settled
        )

    def jump_time(self, slots: IntArray) -> FloatArray:
        """The time of each device's last fix if that fix jumped (set aside and then taken,
        or outside the motion filter's gate); -inf if it did not."""
        t = self.devices.t_fix[slots]
        jumped = (self.quality.jumped_t[slots] == t) | self.core.gated_last(slots)
        return np.where(jumped, t, -np.inf)

    def current_until(self, slots: IntArray) -> FloatArray:
        """Up to when each device's last fix stands as current: until its next report is
        due (the cadence it keeps, plus EVIDENCE_SLACK_S)."""
        cadence = np.maximum(self.cadence.learned_s[slots], self.interval_s[slots])
        return self.devices.t_fix[slots] + cadence + EVIDENCE_SLACK_S

    def position(self, slot: int, now: float) -> Position:
        """Device ``slot``'s last fix as of ``now``: its 68 % radius then, and whether its
        age rather than its accuracy makes it uncertain (``old``)."""
        acc = float(self.core.acc_m[slot])
        radius = self.core.radius_m(slot, now)
        age = now - float(self.devices.t_fix[slot])
        return self.devices.position(slot, radius, old=age >= OLD_FIX_S and radius - acc > acc)
