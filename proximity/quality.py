"""Fix quality: multipath jumps are set aside without freezing a device (see RuleConfig).

Per device the filter keeps the last set-aside fix and how many were set aside in a row. A
round of fixes (one per device) is screened with array operations: distances from the last
accepted fix by the geodesic kernel, and, for the few implausible fixes, from the set-aside
one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from numerics.geodesy import geodesic_distance_m
from numerics.uncertainty import K68, K99
from proximity.rules import RuleConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

R99_PER_R68 = K99 / K68


class FixFilter:
    """Screens fixes against each device's last accepted fix; one slot per device."""

    def __init__(self, n_devices: int, rules: RuleConfig, unknown_accuracy_m: float) -> None:
        self.rules = rules
        self.unknown_accuracy_m = unknown_accuracy_m
        self.pend_lat = np.full(n_devices, np.nan)
        self.pend_lon = np.full(n_devices, np.nan)
        self.pend_t = np.full(n_devices, np.nan)
        self.pend_acc = np.full(n_devices, np.nan)
        self.n_rejected = np.zeros(n_devices, dtype=np.int64)
        #: Time of each device's last fix accepted although it jumped (confirmed by the next
        #: fix, or taken after max_rejected): until it has settled, a breach it shows is
        #: not certain (a multipath burst looks exactly like this).
        self.jumped_t = np.full(n_devices, -np.inf)

    def _allowed(self, dt: FloatArray, acc1: FloatArray, acc2: FloatArray) -> FloatArray:
        r = self.rules
        a1 = np.where(np.isnan(acc1), self.unknown_accuracy_m, acc1)
        a2 = np.where(np.isnan(acc2), self.unknown_accuracy_m, acc2)
        return r.implausible_speed_mps * dt + R99_PER_R68 * (a1 + a2) + r.jump_slack_m

    def screen(
        self,
        slots: IntArray,
        lat: FloatArray,
        lon: FloatArray,
        t_fix: FloatArray,
        acc_m: FloatArray,
        last_lat: FloatArray,
        last_lon: FloatArray,
        last_t: FloatArray,
        last_acc: FloatArray,
    ) -> BoolArray:
        """Which of the fixes (one per device in ``slots``) to use. ``last_*`` are each
        device's last accepted fix (NaN: none yet); fixes are newer than it."""
        d = geodesic_distance_m(last_lat, last_lon, lat, lon)
        # No fix yet (NaN distance) compares False here and is accepted below.
        jump = d > self._allowed(t_fix - last_t, acc_m, last_acc)
        if not jump.any():
            self._clear(slots)
            return np.ones(slots.size, dtype=bool)
        accept = ~jump
        j = np.flatnonzero(jump)
        s = slots[j]
        dp = geodesic_distance_m(self.pend_lat[s], self.pend_lon[s], lat[j], lon[j])
        confirmed = dp <= self._allowed(t_fix[j] - self.pend_t[s], acc_m[j], self.pend_acc[s])
        give_up = self.n_rejected[s] >= self.rules.max_rejected
        accept[j] = confirmed | give_up
        taken = confirmed | give_up
        self.jumped_t[s[taken]] = t_fix[j[taken]]
        self._clear(slots[accept])
        keep = j[~accept[j]]
        ks = slots[keep]
        self.pend_lat[ks] = lat[keep]
        self.pend_lon[ks] = lon[keep]
        self.pend_t[ks] = t_fix[keep]
        self.pend_acc[ks] = acc_m[keep]
        self.n_rejected[ks] += 1
        return accept

    def settled(self, slots: IntArray, t_last: FloatArray) -> BoolArray:
        """Which devices have taken no jumped fix within ``confirm_s`` of fixes before their
        last one (``t_last``): a jump is settled by later fixes, not by waiting."""
        return ~(t_last - self.jumped_t[slots] < self.rules.confirm_s)

    def _clear(self, slots: IntArray) -> None:
        self.pend_t[slots] = np.nan
        self.pend_lat[slots] = np.nan
        self.pend_lon[slots] = np.nan
        self.pend_acc[slots] = np.nan
        self.n_rejected[slots] = 0
