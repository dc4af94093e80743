"""The alarm state machine shared by the pair and zone rules, as array logic.

Each watched thing (a pair, an offender against a zone) is ``CLEAR``, ``OPEN_POSSIBLE`` or
``OPEN_CERTAIN``. It opens on a breach (possible or certain), is upgraded once when a possible
breach becomes certain, and leaves on its rule's own condition (beyond the order distance or
the zone plus a margin, a schedule ending, ...): hysteresis lives in the rules' conditions.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from proximity.events import AlarmState

CLEAR = np.int8(0)
OPEN_POSSIBLE = np.int8(1)
OPEN_CERTAIN = np.int8(2)

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def advance(
    state: npt.NDArray[np.int8],
    idx: IntArray,
    breach: BoolArray,
    certain: BoolArray,
    leave_if: BoolArray,
) -> tuple[IntArray, list[AlarmState]]:
    """Move the machines ``state[idx]`` one step (conditions are per position in ``idx``);
    return the positions that changed and, for each, its event (open, update or ended)."""
    before = state[idx]
    enter = (before == CLEAR) & breach
    upgrade = (before == OPEN_POSSIBLE) & certain
    leave = (before != CLEAR) & leave_if
    changed = np.flatnonzero(enter | upgrade | leave)
    if changed.size == 0:
        return changed, []
    state[idx[enter]] = np.where(certain[enter], OPEN_CERTAIN, OPEN_POSSIBLE)
    state[idx[upgrade]] = OPEN_CERTAIN
    state[idx[leave]] = CLEAR
    kinds = [
        AlarmState.OPEN if enter[k] else AlarmState.UPDATE if upgrade[k] else AlarmState.ENDED
        for k in changed
    ]
    return changed, kinds
