"""Micro-batching: a list of fixes becomes one struct of arrays for the engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ingest.model import Fix, Rejection, RejectReason


@dataclass(frozen=True, slots=True)
class FixBatch:
    """Fixes as parallel 1-D arrays, one row per fix, in arrival order.

    ``slot`` is the device's row in the engine's state arrays (int64); ``lat``/``lon`` are
    WGS84 degrees; ``acc_m`` the 68 % radius in metres (NaN: unknown); ``t_fix``/``t_recv``
    UTC epoch seconds; ``seq`` the device's sequence number (-1: absent).
    """

    slot: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    acc_m: npt.NDArray[np.float64]
    t_fix: npt.NDArray[np.float64]
    t_recv: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    #: The device's battery level, % (NaN: not sent); None: not given at all.
    battery_pct: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return int(self.slot.size)

    @classmethod
    def empty(cls) -> FixBatch:
        f = np.empty(0, dtype=np.float64)
        i = np.empty(0, dtype=np.int64)
        return cls(i, f, f, f, f, f, i)


def unknown_device(topic: str, device: str, t_recv: float) -> Rejection:
    """The rejection of a message from a device that is in no case."""
    return Rejection(
        topic,
        device,
        RejectReason.UNKNOWN_DEVICE,
        f"device '{device}' is in no case: import a case file that lists it",
        t_recv,
    )


def build_batch(
    fixes: Sequence[Fix], slot_of: Mapping[str, int]
) -> tuple[FixBatch, list[Rejection]]:
    """Turn fixes into a :class:`FixBatch`; fixes of devices without a slot are rejected.

    Parameters
    ----------
    fixes : sequence of Fix
    slot_of : mapping of device id to slot (the engine's device table)

    Returns
    -------
    batch : FixBatch
        The fixes of known devices, in the order given.
    rejected : list of Rejection
        One ``unknown_device`` rejection per fix of a device that is in no case.
    """
    known: list[Fix] = []
    slots: list[int] = []
    rejected: list[Rejection] = []
    for fix in fixes:
        slot = slot_of.get(fix.device)
        if slot is None:
            rejected.append(unknown_device(f"devices/{fix.device}/fix", fix.device, fix.t_recv))
            continue
        known.append(fix)
        slots.append(slot)
    if not known:
        return FixBatch.empty(), rejected
    n = len(known)
    return (
        FixBatch(
            slot=np.array(slots, dtype=np.int64),
            lat=np.fromiter((f.lat for f in known), np.float64, n),
            lon=np.fromiter((f.lon for f in known), np.float64, n),
            acc_m=np.fromiter((f.acc_m for f in known), np.float64, n),
            t_fix=np.fromiter((f.t_fix for f in known), np.float64, n),
            t_recv=np.fromiter((f.t_recv for f in known), np.float64, n),
            seq=np.fromiter((f.seq for f in known), np.int64, n),
            battery_pct=np.fromiter((f.battery_pct for f in known), np.float64, n),
        ),
        rejected,
    )
