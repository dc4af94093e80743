"""Fixes as binary columns: how the evidence record keeps them on disk.

A fix entry's body is, for its hash and in every export, the JSON object of
:mod:`storage.evidence` (columns ``device``, ``t_fix``, ``t_recv``, ``lat``, ``lon``,
``acc_m``, ``seq``). In the file it is kept packed (:func:`pack_body`): the device names once,
each fix's device as an index, the numeric columns as little-endian 64-bit values, each
column's bytes regrouped by position (the high bytes of nearby positions and times are alike)
and the lot compressed with zlib. :func:`unpack_body` gives the JSON object back exactly (the
same floats, bit for bit), so its canonical JSON, and its hash, are the entry's.

A staged block (:func:`pack_block`) holds the fixes of one batch for many cases, before they
are folded into each case's chain: the case ids once, each fix's case as an index, and the
columns as above, unshuffled and uncompressed (it is written once per batch, read back only
after a crash).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

#: The first bytes of a packed fix body (a body kept as JSON starts with ``{``).
MAGIC = b"PXF1"
#: The numeric columns, in the order they are packed.
COLUMNS = ("t_fix", "t_recv", "lat", "lon", "acc_m", "seq")
_DTYPES = {
    "t_fix": "<f8",
    "t_recv": "<f8",
    "lat": "<f8",
    "lon": "<f8",
    "acc_m": "<f8",
    "seq": "<i8",
}
_HEAD = struct.Struct("<I")


class PackError(ValueError):
    """Bytes that are not a packed body or block of this format."""


@dataclass(slots=True)
class FixBlock:
    """One batch's fixes for the evidence record: each fix with its case (``case_of`` indexes
    ``cases``) and device (``dev_of`` indexes ``devices``), grouped by case, in the order the
    engine took them; ``t`` the newest fix time."""

    t: float
    cases: list[str]
    case_of: npt.NDArray[np.int64]
    devices: list[str]
    dev_of: npt.NDArray[np.int64]
    columns: dict[str, npt.NDArray[Any]]

    @property
    def size(self) -> int:
        return int(self.case_of.size)


def _shuffle(a: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1, 8).T.tobytes()


def _unshuffle(raw: bytes, n: int, dtype: str) -> npt.NDArray[Any]:
    return np.frombuffer(raw, np.uint8).reshape(8, n).T.copy().view(dtype).reshape(n)


def _packable(body: dict[str, Any]) -> bool:
    """Whether ``body`` comes back from its packed form as it is (the engine's bodies do):
    the columns and nothing else, equally long, text devices, float columns of floats, a
    ``seq`` of 64-bit integers."""
    if set(body) != {"device", *COLUMNS}:
        return False
    cols = [body[c] for c in ("device", *COLUMNS)]
    if not all(isinstance(c, list) and len(c) == len(cols[0]) for c in cols):
        return False
    return (
        all(type(d) is str for d in body["device"])
        and all(type(v) is float for c in COLUMNS[:-1] for v in body[c])
        and all(type(v) is int and -(2**63) <= v < 2**63 for v in body["seq"])
    )


def pack_body(body: dict[str, Any]) -> bytes | None:
    """A fix entry's JSON body -> its packed form; None for a body that would not come back
    exactly (kept as JSON)."""
    if not _packable(body):
        return None
    names = list(dict.fromkeys(body["device"]))
    index = {d: k for k, d in enumerate(names)}
    dev = np.array([index[d] for d in body["device"]], dtype=np.int64)
    return pack_columns(names, dev, {c: np.asarray(body[c], dtype=_DTYPES[c]) for c in COLUMNS})


def pack_columns(
    devices: list[str], dev_of: npt.NDArray[np.int64], columns: dict[str, npt.NDArray[Any]]
) -> bytes:
    """The packed body of fixes given as arrays (``dev_of`` indexes ``devices``): what
    :func:`pack_body` makes of the same fixes' JSON body."""
    n = int(dev_of.size)
    used, dev = np.unique(dev_of, return_inverse=True)
    names = [devices[k] for k in used.tolist()]
    parts = [dev.astype("<u4").view(np.uint8).reshape(-1, 4).T.tobytes()]
    for name in COLUMNS:
        parts.append(_shuffle(np.asarray(columns[name], dtype=_DTYPES[name])))
    head = orjson.dumps({"n": n, "devices": names})
    return MAGIC + _HEAD.pack(len(head)) + head + zlib.compress(b"".join(parts), 1)


def unpack_body(data: bytes) -> dict[str, Any]:
    """A stored fix body (packed, or JSON as older records keep it) -> the JSON object."""
    if not data.startswith(MAGIC):
        loaded = orjson.loads(data)
        if not isinstance(loaded, dict):
            raise PackError("a fix body is a JSON object")
        return loaded
    try:
        (size,) = _HEAD.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _HEAD.size
        head = orjson.loads(data[start : start + size])
        n, names = int(head["n"]), list(head["devices"])
        raw = zlib.decompress(data[start + size :])
        if len(raw) != n * (4 + 8 * len(COLUMNS)):
            raise PackError("the packed columns do not have the length their header says")
        dev = np.frombuffer(raw[: 4 * n], np.uint8).reshape(4, n).T.copy().view("<u4")
        body: dict[str, Any] = {"device": [names[k] for k in dev.reshape(n).tolist()]}
        at = 4 * n
        for name in COLUMNS:
            body[name] = _unshuffle(raw[at : at + 8 * n], n, _DTYPES[name]).tolist()
            at += 8 * n
        return body
    except (KeyError, TypeError, ValueError, IndexError, struct.error, zlib.error) as exc:
        raise PackError(f"not a packed fix body: {exc}") from exc


def block_bodies(block: FixBlock, rows: npt.NDArray[np.int64]) -> dict[str, Any]:
    """The JSON body of the fixes ``rows`` of ``block`` (one case's, in order)."""
    body: dict[str, Any] = {"device": [block.devices[k] for k in block.dev_of[rows].tolist()]}
    for name in COLUMNS:
        body[name] = block.columns[name][rows].tolist()
    return body


def pack_block(block: FixBlock) -> bytes:
    head = orjson.dumps(
        {"t": block.t, "n": block.size, "cases": block.cases, "devices": block.devices}
    )
    parts = [
        block.case_of.astype("<i8").tobytes(),
        block.dev_of.astype("<i8").tobytes(),
        *(np.ascontiguousarray(block.columns[c], dtype=_DTYPES[c]).tobytes() for c in COLUMNS),
    ]
    return _HEAD.pack(len(head)) + head + b"".join(parts)


def unpack_block(data: bytes) -> FixBlock:
    try:
        (size,) = _HEAD.unpack_from(data, 0)
        head = orjson.loads(data[_HEAD.size : _HEAD.size + size])
        n = int(head["n"])
        at = _HEAD.size + size
        if len(data) - at != 8 * n * (2 + len(COLUMNS)):
            raise PackError("the block's columns do not have the length its header says")

        def take(dtype: str) -> npt.NDArray[Any]:
            nonlocal at
            a = np.frombuffer(data, dtype, n, at).copy()
            at += 8 * n
            return a

        case_of, dev_of = take("<i8"), take("<i8")
        columns = {c: take(_DTYPES[c]) for c in COLUMNS}
        return FixBlock(
            float(head["t"]), list(head["cases"]), case_of, list(head["devices"]), dev_of, columns
        )
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise PackError(f"not a staged block of fixes: {exc}") from exc


class Staging:
    """The staged fixes in memory, as one set of growing columns (case and device tables
    merged as blocks come): adding a block is a few slice writes, and a fold reads a prefix
    of the columns without gathering anything. ``ids`` and ``ends`` give each block's id and
    where its rows end."""

    def __init__(self) -> None:
        self._case_index: dict[str, int] = {}
        self._dev_index: dict[str, int] = {}
        self.cases: list[str] = []
        self.devices: list[str] = []
        self.n = 0
        self._cap = 1024
        self._case_of = np.zeros(self._cap, dtype=np.int64)
        self._dev_of = np.zeros(self._cap, dtype=np.int64)
        self._cols = {c: np.zeros(self._cap, dtype=_DTYPES[c]) for c in COLUMNS}
        self.ids: list[int] = []
        self.ends: list[int] = []
        self.t_max: list[float] = []

    def add(self, block_id: int, block: FixBlock) -> None:
        n = block.size
        if self.n + n > self._cap:
            self._grow(self.n + n)
        lo, hi = self.n, self.n + n
        cmap = [_index(self._case_index, self.cases, c) for c in block.cases]
        dmap = [_index(self._dev_index, self.devices, d) for d in block.devices]
        self._case_of[lo:hi] = np.asarray(cmap, dtype=np.int64)[block.case_of]
        self._dev_of[lo:hi] = np.asarray(dmap, dtype=np.int64)[block.dev_of]
        for c in COLUMNS:
            self._cols[c][lo:hi] = block.columns[c]
        self.n = hi
        self.ids.append(block_id)
        self.ends.append(hi)
        self.t_max.append(block.t)

    def _grow(self, need: int) -> None:
        cap = max(need, 2 * self._cap)
        self._case_of = np.resize(self._case_of, cap)
        self._dev_of = np.resize(self._dev_of, cap)
        self._cols = {c: np.resize(a, cap) for c, a in self._cols.items()}
        self._cap = cap

    def prefix(self, upto: int) -> FixBlock:
        """The fixes of the blocks with ids up to ``upto``, as one block (views)."""
        k = sum(1 for i in self.ids if i <= upto)
        end = self.ends[k - 1] if k else 0
        return FixBlock(
            max(self.t_max[:k], default=float("nan")),
            self.cases,
            self._case_of[:end],
            self.devices,
            self._dev_of[:end],
            {c: a[:end] for c, a in self._cols.items()},
        )

    def drop(self, upto: int) -> None:
        """Forget the blocks with ids up to ``upto`` (folded); the rest move to the front."""
        k = sum(1 for i in self.ids if i <= upto)
        end = self.ends[k - 1] if k else 0
        rest = self.n - end
        self._case_of[:rest] = self._case_of[end : self.n].copy()
        self._dev_of[:rest] = self._dev_of[end : self.n].copy()
        for a in self._cols.values():
            a[:rest] = a[end : self.n].copy()
        self.n = rest
        self.ids = self.ids[k:]
        self.ends = [e - end for e in self.ends[k:]]
        self.t_max = self.t_max[k:]
        if not self.ids:  # the tables start afresh (cases and devices come and go)
            self._case_index.clear()
            self._dev_index.clear()
            self.cases, self.devices = [], []


def _index(index: dict[str, int], names: list[str], name: str) -> int:
    """``name``'s place in ``names`` (added at the end when new)."""
    k = index.get(name)
    if k is None:
        k = index[name] = len(names)
        names.append(name)
    return k
