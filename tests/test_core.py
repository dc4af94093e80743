from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics.geodesy import surface_xyz
from numerics.uncertainty import K68, K99, Classification
from proximity.cases import Case
from proximity.core import (
    ESTIMATE_FLOOR,
    GROWTH_PER_TOP_SPEED,
    MAX_GAP_S,
    MAX_UNCERTAINTY_M,
    ProximityCore,
)
from proximity.pairs import PairTable
from tests.conftest import T0
from tests.naive import geod_distance_m, offset

HOME = (50.85, 4.35)


def random_core(
    rng: np.random.Generator, n_dev: int, n_pairs: int, speed: float = 3.0
) -> ProximityCore:
    """A core over random many-to-many pairs (an offender may face several victims)."""
    ids = [f"d{i}" for i in range(n_dev)]
    slot_of = {d: i for i, d in enumerate(ids)}
    cases = []
    for k in range(n_pairs):
        o, v = rng.choice(n_dev, 2, replace=False)
        order = float(rng.uniform(50, 3000))
        cases.append(Case(f"C{k}", (ids[o],), (ids[v],), order, order * rng.uniform(1, 3)))
    table = PairTable.build(cases, slot_of, 0.1, 25.0)
    return ProximityCore(n_dev, table, np.full(n_dev, speed))


def place(core: ProximityCore, rng: np.random.Generator, slots: np.ndarray, t: float) -> None:
    n = slots.size
    lat = 50.5 + rng.uniform(-0.8, 0.8, n)  # Belgium, give or take
    lon = 4.5 + rng.uniform(-1.8, 1.8, n)
    acc = rng.choice([np.nan, 0.0, 3.0, 15.0, 80.0], n)
    core.apply(slots, lat, lon, np.full(n, t), acc, t)


def test_distance_matches_geographiclib_near_and_far() -> None:
    rng = np.random.default_rng(5)
    core = random_core(rng, 400, 2000)
    place(core, rng, np.arange(400), T0)
    # A few devices far away (other continents), to exercise the long-distance branch.
    far = np.arange(0, 400, 37)
    core.apply(
        far,
        rng.uniform(-80, 80, far.size),
        rng.uniform(-180, 180, far.size),
        np.full(far.size, T0),
        np.full(far.size, 5.0),
        T0,
    )
    ev = core.evaluate_all(T0)
    p = core.pairs
    ref = geod_distance_m(
        core.lat[p.offender], core.lon[p.offender], core.lat[p.victim], core.lon[p.victim]
    )
    assert (ref > 1e6).sum() > 50
    np.testing.assert_allclose(ev.distance_m, ref, rtol=1e-9, atol=1e-3)


def test_incremental_evaluation_equals_the_full_sweep_on_touched_pairs() -> None:
    rng = np.random.default_rng(11)
    core = random_core(rng, 300, 1500)
    place(core, rng, np.arange(300), T0)
    moved = rng.choice(300, 40, replace=False).astype(np.int64)
    place(core, rng, moved, T0 + 5)
    idx = core.pairs_of(moved)
    p = core.pairs
    expected = np.flatnonzero(np.isin(p.offender, moved) | np.isin(p.victim, moved))
    assert sorted(idx.tolist()) == expected.tolist()
    part = core.evaluate(idx, T0 + 7)
    full = core.evaluate_all(T0 + 7)
    for name in ("distance_m", "uncertainty_m", "probability", "classification"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[idx])
    # A sweep without the approach figures agrees on everything else.
    sweep = core.evaluate_all(T0 + 7, approach=False)
    for name in ("distance_m", "uncertainty_m", "probability", "classification"):
        np.testing.assert_array_equal(getattr(sweep, name), getattr(full, name))
    assert np.isnan(sweep.closing_mps).all() and np.isnan(sweep.time_to_breach_s).all()


def test_uncertainty_grows_with_age_and_unknown_accuracy_uses_the_default() -> None:
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)
    core = ProximityCore(2, table, [40.0, 3.0], unknown_accuracy_m=50.0)
    o = offset(*HOME, 60, 1000)
    core.apply(
        np.array([0, 1]),
        np.array([o[0], HOME[0]]),
        np.array([o[1], HOME[1]]),
        np.array([T0, T0 - 10]),
        np.array([8.0, np.nan]),
        T0,
    )
    ev = core.evaluate(np.array([0]), T0 + 2)
    # The 68 % radius grows so that the 99 % radius grows at the top speed.
    g = GROWTH_PER_TOP_SPEED
    assert K99 / K68 * g == pytest.approx(1.0)
    r_off = 8.0 + 2 * 40.0 * g
    r_vic = 50.0 + 12 * 3.0 * g
    assert ev.sigma_m[0] == pytest.approx(np.hypot(r_off, r_vic) / K68)
    assert ev.uncertainty_m[0] == pytest.approx(K99 * ev.sigma_m[0])
    assert core.radius_m(0, T0 + 2) == pytest.approx(r_off)
    assert core.radius_m(1, T0 + 2) == pytest.approx(r_vic)
    # A fix stamped 100 s in the future (device clock ahead) counts as taken on arrival: it is
    # not younger than new, and its uncertainty grows from then on.
    core.apply(
        np.array([0]),
        np.array([o[0]]),
        np.array([o[1]]),
        np.array([T0 + 110]),
        np.array([8.0]),
        T0 + 10,
    )
    ev = core.evaluate(np.array([0]), T0 + 10)
    assert ev.uncertainty_m[0] == pytest.approx(K99 * np.hypot(8.0, 50.0 + 20 * 3.0 * g) / K68)
    ev = core.evaluate(np.array([0]), T0 + 11)
    u = K99 * np.hypot(8.0 + 40 * g, 50.0 + 21 * 3.0 * g) / K68
    assert ev.uncertainty_m[0] == pytest.approx(u)
    # Beyond max_uncertainty_m the verdict is "position unknown", not a distance.
    assert Classification(int(ev.classification[0])) != Classification.UNKNOWN
    late = T0 + 11 + MAX_UNCERTAINTY_M / 40.0
    ev = core.evaluate(np.array([0]), late)
    assert ev.uncertainty_m[0] > MAX_UNCERTAINTY_M
    assert Classification(int(ev.classification[0])) == Classification.UNKNOWN
    assert ev.distance_m[0] == pytest.approx(1000.0, abs=1.0)  # still there, for the record


def test_approach_parallel_travel_and_retreat() -> None:
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)

    def run(off_start: float, off_az: float, vic_az: float, speed: float) -> tuple[float, float]:
        core = ProximityCore(2, table, [40.0, 40.0])
        for k in range(6):  # 1 Hz, both moving; the victim walks/drives along vic_az
            t = T0 + k
            v = offset(*HOME, vic_az, 10.0 * k)
            o = offset(*offset(*HOME, 225, off_start), off_az, speed * k)
            core.apply(
                np.array([0, 1]),
                np.array([o[0], v[0]]),
                np.array([o[1], v[1]]),
                np.array([t, t]),
                np.array([5.0, 5.0]),
                t,
            )
        ev = core.evaluate(np.array([0]), T0 + 5)
        return float(ev.closing_mps[0]), float(ev.time_to_breach_s[0])

    # He drives at 25 m/s straight at where she is heading (diagonal courses): closing.
    closing, ttb = run(2000.0, 45.0, 45.0, 25.0)
    assert closing == pytest.approx(15.0, abs=0.05)  # 25 towards her, she moves away at 10
    d = 2000.0 - 15.0 * 5
    assert ttb == pytest.approx((d - 200.0) / 15.0, rel=1e-2)
    # Both at 10 m/s on parallel courses: no approach, no predicted breach.
    closing, ttb = run(2000.0, 45.0 + 90, 45.0 + 90, 10.0)
    assert closing == pytest.approx(0.0, abs=0.05) and ttb == np.inf
    # He drives away.
    closing, ttb = run(2000.0, 225.0, 45.0, 25.0)
    assert closing == pytest.approx(-35.0, abs=0.05) and ttb == np.inf


def test_a_course_that_passes_by_predicts_no_breach_however_fast_it_closes() -> None:
    # She stands at home; he drives at 20 m/s along a straight road. Its closest point to
    # her home is `miss` metres away; he is 1,500 m along it before that point.
    case = Case("C", ("o",), ("v",), 500.0, 1000.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)

    def run(miss: float) -> tuple[float, float, float]:
        core = ProximityCore(2, table, [40.0, 40.0])
        closest = offset(*HOME, 0.0, miss)  # the road runs east-west, `miss` m north of her
        for k in range(6):
            t = T0 + k
            o = offset(*closest, 270.0, 1500.0 - 20.0 * k)
            core.apply(
                np.array([0, 1]),
                np.array([o[0], HOME[0]]),
                np.array([o[1], HOME[1]]),
                np.array([t, t]),
                np.array([3.0, 3.0]),
                t,
            )
        ev = core.evaluate(np.array([0]), T0 + 5)
        return float(ev.distance_m[0]), float(ev.closing_mps[0]), float(ev.time_to_breach_s[0])

    _, closing, ttb = run(800.0)  # passes 800 m from her: closing fast, but never inside
    assert closing > 15.0 and ttb == np.inf
    # Passing 300 m from her, he enters the 500 m circle 1,400 - 400 = 1,000 m further on.
    _, closing, ttb = run(300.0)
    assert closing > 15.0 and ttb == pytest.approx(1000.0 / 20.0, rel=0.02)


def test_his_own_course_leaves_her_velocity_out() -> None:
    # He drives at 20 m/s along an east-west road `miss` m north of her home; she walks north,
    # towards the road, at 3 m/s. The relative motion heads into the 500 m circle; his own
    # course (her as standing where she is) does only when the road itself passes inside it.
    case = Case("C", ("o",), ("v",), 500.0, 1000.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)

    def run(miss: float) -> tuple[float, float, float, float]:
        core = ProximityCore(2, table, [40.0, 40.0])
        closest = offset(*HOME, 0.0, miss)
        for k in range(6):
            t = T0 + k
            o = offset(*closest, 270.0, 1500.0 - 20.0 * k)
            v = offset(*HOME, 0.0, 3.0 * k)
            core.apply(
                np.array([0, 1]),
                np.array([o[0], v[0]]),
                np.array([o[1], v[1]]),
                np.array([t, t]),
                np.array([3.0, 3.0]),
                t,
            )
        ev = core.evaluate(np.array([0]), T0 + 5)
        own_v, own_t = core.own_course(np.array([0]), np.array([1]), np.array([500.0]))
        return float(ev.time_to_breach_s[0]), float(own_v[0]), float(own_t[0]), ev.distance_m[0]

    ttb, own_v, own_t, d = run(700.0)
    assert np.isfinite(ttb) and ttb < 120.0  # together they would meet...
    assert own_v == pytest.approx(20.0 * 1400.0 / d, rel=0.01)  # ...he does close in...
    assert own_t == np.inf  # ...but his road passes 685 m from her
    _, _, own_t, _ = run(300.0)  # his road passes 285 m from her: he enters at 411 m from
    assert own_t == pytest.approx((1400.0 - np.sqrt(500.0**2 - 285.0**2)) / 20.0, rel=0.02)


def test_no_velocity_and_no_fix() -> None:
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)
    core = ProximityCore(2, table, [3.0, 3.0])
    ev = core.evaluate_all(T0)
    assert ev.classification[0] == Classification.UNKNOWN and np.isnan(ev.distance_m[0])
    core.apply(
        np.array([0, 1]),
        np.array([50.0, 50.01]),
        np.array([4.0, 4.0]),
        np.array([T0, T0]),
        np.array([5.0, 5.0]),
        T0,
    )
    ev = core.evaluate_all(T0)
    assert np.isnan(ev.closing_mps[0]) and np.isnan(ev.time_to_breach_s[0])
    assert ev.classification[0] == Classification.CLEAR


def test_rejects_inconsistent_setup() -> None:
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    table = PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0)
    with pytest.raises(ValueError, match="one finite speed"):
        ProximityCore(2, table, [3.0])
    with pytest.raises(ValueError, match="unknown_accuracy_m"):
        ProximityCore(2, table, [3.0, 3.0], unknown_accuracy_m=0.0)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 3600.0))
def test_classification_invariants(seed: int, age_s: float) -> None:
    rng = np.random.default_rng(seed)
    core = random_core(rng, 30, 60, speed=float(rng.uniform(0, 40)))
    place(core, rng, np.arange(30), T0)
    # Pull some offenders close to their victims so that every class occurs.
    p = core.pairs
    for k in range(0, len(p), 3):
        o, v = int(p.offender[k]), int(p.victim[k])
        lat, lon = offset(
            core.lat[v], core.lon[v], rng.uniform(0, 360), p.order_m[k] * rng.uniform(0.0, 2.0)
        )
        core.apply(
            np.array([o]), np.array([lat]), np.array([lon]), np.array([T0]), np.array([10.0]), T0
        )
    ev = core.evaluate_all(T0 + age_s)
    d, u, order, warn = ev.distance_m, ev.uncertainty_m, p.order_m, p.warning_m
    cls = ev.classification
    # Beyond the cap (and only there) the verdict is unknown.
    assert np.array_equal(cls == Classification.UNKNOWN, u > MAX_UNCERTAINTY_M)
    known = u <= MAX_UNCERTAINTY_M
    d, u, order, warn, cls = d[known], u[known], order[known], warn[known], cls[known]
    prob = ev.probability[known]
    breach = cls >= Classification.POSSIBLE_BREACH
    assert np.all(d[breach] - u[breach] <= order[breach])  # within distance plus uncertainty
    certain = cls == Classification.CERTAIN_BREACH
    assert np.all(d[certain] + u[certain] <= order[certain])
    assert np.all((d[~breach] - u[~breach]) > order[~breach])
    warning = cls == Classification.WARNING
    assert np.all(d[warning] - u[warning] <= warn[warning])
    clear = cls == Classification.CLEAR
    assert np.all(d[clear] - u[clear] > warn[clear])
    # The probability agrees with the classification's direction.
    assert np.all(prob[certain] >= 0.99)
    assert np.all(prob[clear] <= 0.01)


# The motion filter (constant-velocity Kalman per device).


def _track(
    rng: np.random.Generator, truth: list[tuple[float, float]], acc: float, t0: float = T0
) -> tuple[ProximityCore, np.ndarray, np.ndarray]:
    """Feed 1-Hz fixes around ``truth`` (noise consistent with a 68 % radius ``acc``) to a
    one-device core; return it with the estimate's error (m) and 68 % radius after each fix."""
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    core = ProximityCore(2, PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0), [40.0, 40.0])
    sigma = acc / K68  # per axis
    errors, radii = [], []
    for k, (lat, lon) in enumerate(truth):
        dn, de = rng.normal(0.0, sigma, 2)
        noisy = offset(*offset(lat, lon, 0.0, dn), 90.0, de)
        t = t0 + k
        core.apply(
            np.array([0]), np.array([noisy[0]]), np.array([noisy[1]]), np.array([t]),
            np.array([acc]), t,
        )  # fmt: skip
        est = core.rows[0, :3]
        errors.append(float(np.linalg.norm(est - np.array(surface_xyz(lat, lon)))))
        radii.append(core.radius_m(0, t))
    return core, np.array(errors), np.array(radii)


def test_filter_averages_the_jitter_of_a_standing_device_and_knows_its_radius() -> None:
    core, err, rad = _track(np.random.default_rng(1), [HOME] * 900, acc=15.0)
    raw_rms = 15.0 / K68 * np.sqrt(2)
    settled = slice(60, None)
    rms = float(np.sqrt(np.mean(err[settled] ** 2)))
    assert rms < raw_rms / 2  # about 6 m instead of 14
    # The radius is the estimate's 68 % radius, but never below half the stated accuracy
    # (real fixes share a bias that averaging does not remove): with these independent
    # errors it covers more than 68 % of them.
    inside = float(np.mean(err[settled] <= rad[settled]))
    assert inside > 0.68, inside
    assert float(rad[-1]) == pytest.approx(15.0 * ESTIMATE_FLOOR)
    speed = float(np.linalg.norm(core.rows[0, 5:8]))
    assert speed < 1.0  # known, and small


def test_filter_follows_a_walk_without_lag_and_a_turn_within_a_few_fixes() -> None:
    # 1.4 m/s due north for 5 min, then due east: the estimate has no along-track lag.
    north = [offset(*HOME, 0.0, 1.4 * k) for k in range(300)]
    east = [offset(*north[-1], 90.0, 1.4 * k) for k in range(1, 120)]
    core, err, _ = _track(np.random.default_rng(2), north + east, acc=10.0)
    assert float(np.sqrt(np.mean(err[60:300] ** 2))) < 10.0 / K68  # better than one fix
    assert float(np.abs(np.linalg.norm(core.rows[0, 5:8]) - 1.4)) < 0.5
    assert float(np.max(err[310:])) < 15.0  # the turn costs at most a few metres


def test_filter_follows_a_real_jump_and_starts_afresh_after_a_long_gap() -> None:
    case = Case("C", ("o",), ("v",), 200.0, 400.0)
    core = ProximityCore(2, PairTable.build([case], {"o": 0, "v": 1}, 0.1, 25.0), [40.0, 40.0])

    def at(pos: tuple[float, float], t: float) -> np.ndarray:
        core.apply(
            np.array([0]), np.array([pos[0]]), np.array([pos[1]]), np.array([t]),
            np.array([5.0]), t,
        )  # fmt: skip
        return core.rows[0, :3] - np.array(surface_xyz(*pos))

    for k in range(30):
        at(HOME, T0 + k)
    # 400 m in 2 s (he got into a car the fix filter would accept): followed at once.
    far = offset(*HOME, 90.0, 400.0)
    assert float(np.linalg.norm(at(far, T0 + 32))) < 1.0
    # After a gap beyond MAX_GAP_S the fix is taken as it is, velocity unknown again.
    gone = offset(*HOME, 180.0, 3000.0)
    assert float(np.linalg.norm(at(gone, T0 + 32 + MAX_GAP_S + 1))) < 1e-6
    assert np.isnan(core.rows[0, 5:8]).all()
    assert core.radius_m(0, T0 + 32 + MAX_GAP_S + 1) == pytest.approx(5.0)
