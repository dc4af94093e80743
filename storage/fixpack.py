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
from collections.abc import Sequence
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


def concat(blocks: Sequence[FixBlock]) -> FixBlock:
    """Blocks as one (case and device tables merged), in order."""
    cases: dict[str, int] = {}
    devices: dict[str, int] = {}
    case_parts, dev_parts = [], []
    for b in blocks:
        cmap = np.array([cases.setdefault(c, len(cases)) for c in b.cases], dtype=np.int64)
        dmap = np.array([devices.setdefault(d, len(devices)) for d in b.devices], dtype=np.int64)
        case_parts.append(cmap[b.case_of] if b.size else b.case_of)
        dev_parts.append(dmap[b.dev_of] if b.size else b.dev_of)
    empty = np.zeros(0, dtype=np.int64)
    return FixBlock(
        max((b.t for b in blocks), default=float("nan")),
        list(cases),
        np.concatenate(case_parts) if blocks else empty,
        list(devices),
        np.concatenate(dev_parts) if blocks else empty,
        {
            c: np.concatenate([b.columns[c] for b in blocks]) if blocks else np.zeros(0, _DTYPES[c])
            for c in COLUMNS
        },
    )
