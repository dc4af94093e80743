"""The pair table: who must stay away from whom, as index arrays, and its kernels.

A pair is one (offender device, protected device) of one case. Many-to-many is natural: an
offender in several cases, or a victim protected from several offenders, simply has several
pairs. For incremental evaluation each device slot lists its pairs in CSR form
(``dev_ptr``/``dev_pairs``), so the pairs of the devices a batch touched are gathered by a
kernel without a Python loop per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from numerics.jit import kernel
from proximity.cases import Case

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@kernel
def gather_pairs(
    slots: IntArray, dev_ptr: IntArray, dev_pairs: IntArray, mark: BoolArray, out: IntArray
) -> int:
    """Write the distinct pairs of ``slots`` into ``out``; return how many.

    ``mark`` is a scratch array of False, one per pair; it is False again on return.
    """
    n = 0
    for s in slots:
        for k in range(dev_ptr[s], dev_ptr[s + 1]):
            p = dev_pairs[k]
            if not mark[p]:
                mark[p] = True
                out[n] = p
                n += 1
    for k in range(n):
        mark[out[k]] = False
    return n


@kernel
def dependency_rounds(
    slots: IntArray,
    dev_ptr: IntArray,
    dev_pairs: IntArray,
    offender: IntArray,
    victim: IntArray,
    last: IntArray,
    out: IntArray,
) -> int:
    """Give fix ``k`` (of device ``slots[k]``, in arrival order) the round ``out[k]``: one
    after the latest round of an earlier fix of the same device or of a device it shares a
    pair with. Return the number of rounds.

    Evaluated round by round, every pair then sees its fixes one at a time and in arrival
    order, with both devices as they were after exactly the fixes that arrived before: the
    same evaluations as one fix per batch. ``last`` is a scratch array of -1, one per
    device; it is -1 again on return.
    """
    rounds = 0
    for k in range(slots.size):
        d = slots[k]
        r = last[d]
        for q in range(dev_ptr[d], dev_ptr[d + 1]):
            p = dev_pairs[q]
            other = victim[p] if offender[p] == d else offender[p]
            if last[other] > r:
                r = last[other]
        r += 1
        out[k] = r
        last[d] = r
        if r + 1 > rounds:
            rounds = r + 1
    for k in range(slots.size):
        last[slots[k]] = -1
    return rounds


@dataclass(frozen=True, slots=True)
class PairTable:
    """Pairs as parallel arrays, plus the device -> pairs index.

    ``offender``/``victim`` are device slots; ``case`` indexes ``case_ids``; distances are
    metres. ``margin_m`` is the hysteresis margin: an alarm entered at ``order_m`` ends only
    beyond ``order_m + margin_m``. ``escalation_m``: certainly within it, an alarm escalates.
    """

    offender: IntArray
    victim: IntArray
    case: IntArray
    order_m: FloatArray
    warning_m: FloatArray
    margin_m: FloatArray
    escalation_m: FloatArray
    dev_ptr: IntArray
    dev_pairs: IntArray
    case_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.offender.size)

    @classmethod
    def build(
        cls,
        cases: Sequence[Case],
        slot_of: dict[str, int],
        margin_fraction: float,
        margin_min_m: float,
        escalation_fraction: float = 0.5,
    ) -> PairTable:
        off: list[int] = []
        vic: list[int] = []
        case_idx: list[int] = []
        order: list[float] = []
        warning: list[float] = []
        escalation: list[float] = []
        for ci, case in enumerate(cases):
            for o in case.offenders:
                for v in case.protected:
                    off.append(slot_of[o])
                    vic.append(slot_of[v])
                    case_idx.append(ci)
                    order.append(case.order_distance_m)
                    warning.append(case.warning_distance_m)
                    e = case.escalation_distance_m
                    escalation.append(
                        escalation_fraction * case.order_distance_m if e is None else e
                    )
        order_m = np.array(order, dtype=np.float64)
        return cls.from_arrays(
            offender=np.array(off, dtype=np.int64),
            victim=np.array(vic, dtype=np.int64),
            case=np.array(case_idx, dtype=np.int64),
            order_m=order_m,
            warning_m=np.array(warning, dtype=np.float64),
            margin_m=np.maximum(margin_fraction * order_m, margin_min_m),
            escalation_m=np.array(escalation, dtype=np.float64),
            n_slots=len(slot_of),
            case_ids=tuple(c.id for c in cases),
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        offender: IntArray,
        victim: IntArray,
        case: IntArray,
        order_m: FloatArray,
        warning_m: FloatArray,
        margin_m: FloatArray,
        n_slots: int,
        case_ids: tuple[str, ...],
        escalation_m: FloatArray | None = None,
    ) -> PairTable:
        """A table from parallel pair arrays; builds the device -> pairs (CSR) index.
        ``escalation_m`` defaults to half the order distance."""
        ends = np.concatenate([offender, victim])
        pair_of_end = np.concatenate([np.arange(offender.size), np.arange(victim.size)])
        order_by_slot = np.argsort(ends, kind="stable")
        dev_pairs = pair_of_end[order_by_slot].astype(np.int64)
        counts = np.bincount(ends, minlength=n_slots)
        dev_ptr = np.zeros(n_slots + 1, dtype=np.int64)
        np.cumsum(counts, out=dev_ptr[1:])
        return cls(
            offender=offender,
            victim=victim,
            case=case,
            order_m=order_m,
            warning_m=warning_m,
            margin_m=margin_m,
            escalation_m=0.5 * order_m if escalation_m is None else escalation_m,
            dev_ptr=dev_ptr,
            dev_pairs=dev_pairs,
            case_ids=case_ids,
        )
