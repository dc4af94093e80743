"""The evidence record's fixes: staged per batch, folded into each case's chain (one signed
entry per case per fold), kept packed on disk, and given back exactly in exports."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from storage.evidence import FOLD_BUCKETS, EvidenceLog, canonical, read_track, verify_lines
from storage.fixpack import FixBlock, PackError, block_bodies, pack_body, pack_columns, unpack_body
from tests.conftest import T0

RNG = np.random.default_rng(7)


def block(t0: float, cases: list[str], n_per_case: int, k: int = 0) -> FixBlock:
    """One batch: in each case, its offender and its protected person, ``n_per_case`` fixes
    between them, at one per second from ``t0``; ``k`` numbers the batch (in the seq)."""
    case_of, dev_of, devices = [], [], []
    for ci, c in enumerate(cases):
        devices += [f"{c}-o", f"{c}-v"]
        for j in range(n_per_case):
            case_of.append(ci)
            dev_of.append(2 * ci + j % 2)
    n = len(case_of)
    t = t0 + np.arange(n) // max(1, 2 * len(cases)) + RNG.random(n) * 0.3
    return FixBlock(
        float(t.max()),
        cases,
        np.array(case_of, dtype=np.int64),
        devices,
        np.array(dev_of, dtype=np.int64),
        {
            "t_fix": t,
            "t_recv": t + 0.05 + RNG.random(n) * 0.01,
            "lat": 50.8 + RNG.random(n) * 1e-3,
            "lon": 4.3 + RNG.random(n) * 1e-3,
            "acc_m": np.where(RNG.random(n) < 0.1, -1.0, 3.0 + RNG.integers(0, 20, n)),
            "seq": 1000 * k + np.arange(n, dtype=np.int64),
        },
    )


def fixes_in(log: EvidenceLog, case: str) -> list[tuple[Any, ...]]:
    out = []
    for line in b"".join(log.export(case, (), now=T0 + 3600)).splitlines()[:-1]:
        e = orjson.loads(line)
        if e["kind"] == "fix":
            b = e["body"]
            out += list(zip(b["device"], b["t_fix"], b["lat"], b["lon"], b["seq"], strict=True))
    return out


def expected(blocks: list[FixBlock], case: str) -> list[tuple[Any, ...]]:
    out = []
    for b in blocks:
        if case in b.cases:
            for r in np.flatnonzero(b.case_of == b.cases.index(case)).tolist():
                c = b.columns
                out.append(
                    (
                        b.devices[int(b.dev_of[r])],
                        float(c["t_fix"][r]),
                        float(c["lat"][r]),
                        float(c["lon"][r]),
                        int(c["seq"][r]),
                    )
                )
    return out


def test_a_packed_body_comes_back_bit_for_bit_and_so_does_its_hash() -> None:
    b = block(T0, ["A"], 120)
    rows = np.arange(b.size)
    body = {
        "device": [b.devices[k] for k in b.dev_of.tolist()],
        **{c: b.columns[c][rows].tolist() for c in b.columns},
    }
    packed = pack_body(body)
    assert packed is not None
    assert unpack_body(packed) == body
    assert canonical(unpack_body(packed)) == canonical(body)
    # At rest: the 120 fixes of one case over a minute take well under 40 bytes each.
    assert len(packed) / 120 < 30


def test_a_body_that_would_not_come_back_exactly_stays_json() -> None:
    assert (
        pack_body(
            {
                "device": ["a"],
                "t_fix": [1],
                "t_recv": [1.0],
                "lat": [50.0],
                "lon": [4.0],
                "acc_m": [5.0],
                "seq": [1],
            }
        )
        is None
    )  # an integer time
    assert pack_body({"device": ["a"], "note": "x"}) is None
    with pytest.raises(PackError):
        unpack_body(b"PXF1\x05\x00\x00\x00junk")


def test_staged_fixes_fold_into_one_entry_per_case_in_order_and_verify(tmp_path: Path) -> None:
    log = EvidenceLog(tmp_path / "r.evidence.sqlite")
    cases = [f"C{k}" for k in range(40)]
    blocks = [block(T0 + 10 * k, cases[k % 3 :], 4, k) for k in range(6)]
    log.append(blocks[:3])
    log.append([("C1", T0 + 25, "alarm", {"alarm_id": "x"}), *blocks[3:]])
    assert log.staged_fixes == sum(b.size for b in blocks)
    assert fixes_in(log, "C5") == []  # not in the chain before the fold
    assert read_track(log.path, "C5", T0) != []  # the console sees them all the same
    assert log.fold(T0 + 1) == 0  # a fold is not due yet
    written = log.fold_all(T0 + 2)
    assert written == len(cases)  # one entry per case
    assert log.staged_fixes == 0
    for c in cases:
        assert fixes_in(log, c) == expected(blocks, c)
    lines = b"".join(log.export("C1", (), now=T0 + 3600)).splitlines()
    _, _, problems = verify_lines(lines, log.public_key)
    assert problems == []
    assert [orjson.loads(x)["kind"] for x in lines[:-1]] == ["alarm", "fix"]
    with sqlite3.connect(log.path) as db:
        assert db.execute("SELECT COUNT(*) FROM staged").fetchone() == (0,)
    log.close()


def test_a_fold_cut_short_resumes_where_it_stopped_each_fix_once(tmp_path: Path) -> None:
    path = tmp_path / "r.evidence.sqlite"
    log = EvidenceLog(path)
    cases = [f"case-{k}" for k in range(200)]  # every bucket has cases
    blocks = [block(T0 + 5 * k, cases, 2, k) for k in range(3)]
    log.append(blocks)
    for _ in range(FOLD_BUCKETS // 4):  # some of the slices, then the process ends
        log.fold(T0 + 1, force=True)
    log.close()
    more = block(T0 + 100, cases[:10], 2, 9)
    again = EvidenceLog(path)
    assert again.staged_fixes == sum(b.size for b in blocks)  # the blocks not yet removed
    again.append([more])
    again.fold_all(T0 + 200)
    for c in cases:
        assert fixes_in(again, c) == expected([*blocks, more], c)
        lines = b"".join(again.export(c, (), now=T0 + 3600)).splitlines()
        assert verify_lines(lines, again.public_key)[2] == []
    again.close()


def test_fixes_staged_by_a_run_that_did_not_fold_are_folded_at_the_next(tmp_path: Path) -> None:
    path = tmp_path / "r.evidence.sqlite"
    log = EvidenceLog(path)
    b = block(T0, ["A", "B"], 6)
    log.append([b])
    assert log.last_fix_time() == pytest.approx(b.t)
    log.close()  # no fold: a crash after the batch was acknowledged
    again = EvidenceLog(path)
    assert again.fold(T0 + 1) == 1  # due at once (a slice: one bucket of cases)
    while again.fold(T0 + 1):
        pass
    assert fixes_in(again, "A") == expected([b], "A")
    again.close()


def test_the_engine_packs_from_arrays_what_the_json_body_packs_to() -> None:
    b = block(T0, ["A", "B"], 30)
    rows = np.flatnonzero(b.case_of == 1)
    body = unpack_body(
        pack_columns(b.devices, b.dev_of[rows], {k: v[rows] for k, v in b.columns.items()})
    )
    assert canonical(body) == canonical(block_bodies(b, rows))
