from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.batch import FixBatch, build_batch
from ingest.model import Fix
from proximity.cases import Case
from proximity.engine import Engine
from proximity.events import AlarmState
from proximity.pairs import gather_pairs
from tests.naive import geod_distance_m, offset, pairs_of_slots

HOME = (50.85, 4.35)
T0 = 1795428000.0


def case(
    cid: str, offenders: tuple[str, ...], protected: tuple[str, ...], order: float = 500.0
) -> Case:
    return Case(cid, offenders, protected, order, 2 * order)


def fix(dev: str, pos: tuple[float, float], t: float, seq: int = -1) -> Fix:
    return Fix(dev, T0 + t, T0 + t + 0.1, pos[0], pos[1], 5.0, seq=seq)


def run(engine: Engine, *fixes: Fix) -> list[tuple[str, AlarmState, float]]:
    batch, rejected = build_batch(list(fixes), engine.slot_of)
    assert rejected == []
    return [(e.case_id, e.state, e.distance_m) for e in engine.process(batch)]


def test_enter_at_order_distance_and_leave_only_beyond_margin() -> None:
    eng = Engine([case("C", ("o",), ("v",))], margin_fraction=0.1, margin_min_m=25.0)
    assert run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 45, 501), 1)) == []
    [(cid, state, d)] = run(eng, fix("o", offset(*HOME, 45, 499), 2))
    assert (cid, state) == ("C", AlarmState.OPEN) and d == pytest.approx(499, abs=1e-3)
    # jitter across the boundary and inside the margin (50 m): nothing
    for k, dist in enumerate([505, 495, 530, 549]):
        assert run(eng, fix("o", offset(*HOME, 135, dist), 3 + k)) == []
    [(_, state, d)] = run(eng, fix("o", offset(*HOME, 135, 551), 10))
    assert state == AlarmState.ENDED and d == pytest.approx(551, abs=1e-3)
    assert eng.open_alarms == 0


def test_pair_without_both_positions_is_never_alarmed() -> None:
    eng = Engine([case("C", ("o",), ("v",))])
    assert run(eng, fix("o", HOME, 0)) == []  # victim unknown: NaN distance
    assert run(eng, fix("v", HOME, 1)) == [("C", AlarmState.OPEN, 0.0)]


def test_late_fix_never_moves_state_backwards() -> None:
    eng = Engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 2000), 10))
    # An older fix arriving late says he was close; the newer one says he is far away.
    assert run(eng, fix("o", offset(*HOME, 0, 100), 5)) == []
    assert eng.stats.fixes_late == 1
    assert eng.devices.lat[eng.slot_of["o"]] == pytest.approx(offset(*HOME, 0, 2000)[0])


def test_every_fix_of_a_batch_is_evaluated_in_time_order() -> None:
    # Three fixes of one offender in one batch, out of order: in, out, in. Each counts.
    eng = Engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0))
    events = run(
        eng,
        fix("o", offset(*HOME, 0, 100), 3),
        fix("o", offset(*HOME, 0, 100), 1),
        fix("o", offset(*HOME, 0, 900), 2),
    )
    assert [s for _, s, _ in events] == [AlarmState.OPEN, AlarmState.ENDED, AlarmState.OPEN]


def test_many_to_many_pairs_are_independent() -> None:
    eng = Engine(
        [
            case("A", ("o1",), ("v",)),
            case("B", ("o2",), ("v",)),
            case("C", ("o1",), ("w",), order=200.0),
        ]
    )
    events = run(
        eng,
        fix("v", HOME, 0),
        fix("w", offset(*HOME, 90, 1000), 0),
        fix("o1", offset(*HOME, 90, 300), 1),
        fix("o2", offset(*HOME, 270, 300), 1),
    )
    # o1 is 300 m from v (order 500: alarm) and 700 m from w (order 200: none).
    assert sorted((c, s) for c, s, _ in events) == [("A", AlarmState.OPEN), ("B", AlarmState.OPEN)]
    assert len(set(eng.alarm_ids.values())) == 2


def test_alarm_ids_are_stable_for_the_same_history() -> None:
    a, b = (Engine([case("C", ("o",), ("v",))]) for _ in range(2))
    for eng in (a, b):
        run(eng, fix("v", HOME, 0), fix("o", HOME, 1))
    assert a.alarm_ids == b.alarm_ids


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_gather_pairs_matches_a_plain_loop_and_distances_match_geographiclib(
    n_off: int, n_vic: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    offs = [f"o{i}" for i in range(n_off)]
    vics = [f"v{i}" for i in range(n_vic)]
    cases = [
        case(
            f"C{k}",
            tuple(rng.choice(offs, rng.integers(1, min(3, n_off) + 1), replace=False)),
            tuple(rng.choice(vics, rng.integers(1, min(3, n_vic) + 1), replace=False)),
            float(rng.uniform(100, 3000)),
        )
        for k in range(int(rng.integers(1, 30)))
    ]
    eng = Engine(cases)
    p = eng.pairs
    slots = rng.choice(
        len(eng.devices.ids), int(rng.integers(1, len(eng.devices.ids) + 1)), replace=False
    )
    out = np.empty(len(p), dtype=np.int64)
    mark = np.zeros(len(p), dtype=np.bool_)
    n = gather_pairs(slots.astype(np.int64), p.dev_ptr, p.dev_pairs, mark, out)
    assert sorted(out[:n].tolist()) == pairs_of_slots(slots, p.offender, p.victim)
    assert not mark.any()

    # Put every device somewhere within 5 km and check the classification against pyproj.
    devs = list(eng.slot_of)
    lat = HOME[0] + rng.uniform(-0.03, 0.03, len(devs))
    lon = HOME[1] + rng.uniform(-0.05, 0.05, len(devs))
    fixes = [Fix(d, T0, T0, float(lat[i]), float(lon[i]), 5.0) for i, d in enumerate(devs)]
    batch, _ = build_batch(fixes, eng.slot_of)
    events = eng.process(batch)
    dist = geod_distance_m(
        eng.devices.lat[p.offender],
        eng.devices.lon[p.offender],
        eng.devices.lat[p.victim],
        eng.devices.lon[p.victim],
    )
    expected = {
        (p.case_ids[p.case[k]], eng.devices.ids[p.offender[k]], eng.devices.ids[p.victim[k]])
        for k in range(len(p))
        if dist[k] <= p.order_m[k]
    }
    got = {(e.case_id, e.offender.device, e.victim.device) for e in events}
    assert got == expected
    for e in events:
        assert e.distance_m <= e.order_distance_m


def test_empty_batch_and_no_cases() -> None:
    eng = Engine([])
    assert eng.process(FixBatch.empty()) == []
    eng.warm_up()
