"""Each device's reporting cadence, learned from its own fixes.

The case file declares a reporting interval per device, but devices do not always keep it: a
GNSS logger or a phone that batches sends bursts of 1 s fixes with gaps of 5-15 s between
them, a phone in power saving reports every 30-120 s, and an interval may simply be declared
wrong. :class:`Cadence` learns what each device keeps; the rules read it through
:meth:`Cadence.expected_s`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Each device's cadence is learned from its last CADENCE_GAPS gaps between fixes: their
#: CADENCE_QUANTILE quantile (a device that logs in bursts has long gaps in every few; one
#: dropout among sixteen gaps moves it little). Gaps longer than MAX_LEARNED_GAP_S count as
#: that long (a silence is the health rule's, not a cadence).
CADENCE_GAPS = 16
CADENCE_QUANTILE = 0.9
MAX_LEARNED_GAP_S = 600.0
_Q_LO = int(CADENCE_QUANTILE * (CADENCE_GAPS - 1))
_Q_FRAC = CADENCE_QUANTILE * (CADENCE_GAPS - 1) - _Q_LO


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
        cadence it keeps if that is slower. What the rules use: the unchecked-fix rule, the
        current-evidence window and the health rule (never stricter than declared: a queue
        of buffered fixes delivered at once teaches a cadence of milliseconds)."""
        return np.maximum(self.declared_s[slots], self.learned_s[slots])
