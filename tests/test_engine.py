from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cic.messages import alarm_message
from ingest.batch import FixBatch, build_batch
from ingest.model import Fix
from numerics.uncertainty import K68, K99, Classification
from proximity.cases import Case, Device
from proximity.core import GROWTH_PER_TOP_SPEED, MAX_GAP_S
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType
from proximity.pairs import gather_pairs
from proximity.rules import RuleConfig
from tests.conftest import T0
from tests.naive import geod_distance_m, offset, pairs_of_slots

HOME = (50.85, 4.35)
#: 99 % uncertainty radius of a pair of fresh fixes with 5 m accuracy each.
U5 = K99 * np.hypot(5.0, 5.0) / K68
#: Fixes of one device this far apart are taken as they are (the motion filter starts afresh).
GAP = MAX_GAP_S + 1


class Clock:
    """The engine's clock, set by the test (UTC epoch seconds)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def engine(cases: list[Case], clock: Clock | None = None, **kw: object) -> Engine:
    return Engine(cases, clock=clock or Clock(), **kw)  # type: ignore[arg-type]


def every_second(clock: Clock, rules: RuleConfig | None = None) -> Engine:
    """Case C (order 500 m) whose offender "o" and protected person "v" report every second."""
    devices = [Device("o", {"reporting_interval_s": 1}), Device("v", {"reporting_interval_s": 1})]
    return engine([case("C", ("o",), ("v",))], clock, devices=devices, rules=rules or RuleConfig())


def case(
    cid: str, offenders: tuple[str, ...], protected: tuple[str, ...], order: float = 500.0
) -> Case:
    return Case(cid, offenders, protected, order, 2 * order)


def fix(dev: str, pos: tuple[float, float], t: float, seq: int = -1, acc: float = 5.0) -> Fix:
    return Fix(dev, T0 + t, T0 + t + 0.1, pos[0], pos[1], acc, seq=seq)


def run(eng: Engine, *fixes: Fix) -> list[tuple[str, AlarmState, float]]:
    """Process the fixes with the engine's clock at the newest fix time (fresh fixes)."""
    return [(e.case_id, e.state, e.distance_m) for e in events_of(eng, *fixes)]


def events_of(eng: Engine, *fixes: Fix, now: float | None = None) -> list[AlarmEvent]:
    """Process the fixes as arriving at ``now`` (default: the newest fix time)."""
    clock = eng._clock
    assert isinstance(clock, Clock)
    clock.t = max(f.t_fix for f in fixes) if now is None else now
    arrived = [replace(f, t_recv=clock.t) for f in fixes]
    batch, rejected = build_batch(arrived, eng.slot_of)
    assert rejected == []
    return eng.process(batch)


def levels(events: list[AlarmEvent]) -> list[tuple[AlarmState, AlarmLevel]]:
    return [(e.state, e.level) for e in events]


def test_levels_are_entered_at_their_distance_and_left_beyond_the_margin_after_the_dwell() -> None:
    # Top speed 0: fix ages add nothing; fixes GAP apart are each taken as they are (the
    # motion filter starts afresh), so the thresholds are exactly distance +- U5. Order 500 m,
    # warning 1000 m, margin 50 m, escalation 250 m, confirmation 15 s, dwell 30 s (and no
    # reminders or escalation by time: the fixes are minutes apart).
    clock = Clock()
    rules = RuleConfig(renotify_s=1e9, reporting_interval_s=1e9, escalate_after_s=1e9)
    eng = engine([case("C", ("o",), ("v",))], clock, default_top_speed_mps=0.0, rules=rules)
    assert pytest.approx(14.22, abs=0.01) == U5
    t = 0.0

    def at(distance: float) -> list[AlarmEvent]:
        nonlocal t
        t += GAP
        return events_of(eng, fix("o", offset(*HOME, 45, distance), t))

    def later(s: float) -> list[AlarmEvent]:
        clock.t = T0 + t + s
        return eng.sweep()

    # Her phone's first fix, and one that confirms it (a first fix alone cannot make a breach
    # certain: nothing checks it).
    assert events_of(eng, fix("v", HOME, 0)) == [] and events_of(eng, fix("v", HOME, 20)) == []
    assert at(1000 + U5 + 1) == []
    [ev] = at(1000 + U5 - 1)  # possibly within the warning distance: pre-alert
    assert levels([ev]) == [(AlarmState.OPEN, AlarmLevel.PRE_ALERT)]
    assert ev.classification == Classification.WARNING and ev.reason.startswith("pre-alert")
    assert at(500 + U5 - 1) == []  # a possible breach, the best estimate outside: still pre
    assert at(499) == []  # likely (best estimate inside): confirmed after 15 s
    assert later(14) == []
    [ev] = later(15)
    assert levels([ev]) == [(AlarmState.UPDATE, AlarmLevel.ALARM)]
    assert ev.previous_level == AlarmLevel.PRE_ALERT and ev.reason.startswith("breach confirmed")
    assert at(500 - U5 - 1) == []  # certain, but only just: no more than the likely alarm
    [ev] = at(450 - U5 - 1)  # certain by the margin (50 m): announced once
    assert ev.reason.startswith("breach now certain") and ev.probability > 0.99
    [ev] = at(250 - U5 - 1)  # certainly within the escalation distance
    assert levels([ev]) == [(AlarmState.UPDATE, AlarmLevel.ESCALATION)]
    # Back out, but within the margin (50 m) plus the uncertainty: nothing, however long.
    assert at(550 + U5 - 1) == [] and later(120) == []
    assert at(550 + U5 + 1) == [] and later(29) == []  # beyond: the dwell starts
    [ev] = later(30)
    assert levels([ev]) == [(AlarmState.UPDATE, AlarmLevel.PRE_ALERT)]
    assert ev.previous_level == AlarmLevel.ESCALATION and ev.reason.endswith("pre-alert")
    assert at(1050 + U5 + 1) == [] and later(29) == []
    [ev] = later(30)
    assert levels([ev]) == [(AlarmState.ENDED, AlarmLevel.PRE_ALERT)]
    assert eng.open_alarms == 0
    # A certain breach from nowhere raises the alarm at once.
    [ev] = at(100)
    assert levels([ev]) == [(AlarmState.OPEN, AlarmLevel.ESCALATION)]


def test_a_case_sets_its_own_escalation_distance() -> None:
    own = Case("OWN", ("o",), ("v",), 500.0, 1000.0, escalation_distance_m=100.0)
    default = Case("DEFAULT", ("o",), ("w",), 500.0, 1000.0)
    eng = engine([own, default], rules=RuleConfig(confirm_s=0.0))  # first fixes count at once
    at_200 = events_of(
        eng, fix("v", HOME, 0), fix("w", HOME, 0), fix("o", offset(*HOME, 0, 200), 0)
    )
    assert {e.case_id: e.level for e in at_200} == {
        "OWN": AlarmLevel.ALARM,  # 200 m: not within its own 100 m
        "DEFAULT": AlarmLevel.ESCALATION,  # within half the order distance
    }


def test_pair_without_both_positions_is_never_alarmed() -> None:
    eng = engine([case("C", ("o",), ("v",))])
    assert run(eng, fix("o", HOME, 0)) == []  # victim unknown: NaN distance
    assert run(eng, fix("v", HOME, 1)) == [("C", AlarmState.OPEN, 0.0)]


def test_late_fix_never_moves_state_backwards() -> None:
    eng = engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 2000), 10))
    # An older fix arriving late says he was close; the newer one says he is far away.
    assert run(eng, fix("o", offset(*HOME, 0, 100), 5)) == []
    assert eng.stats.fixes_late == 1
    assert eng.devices.lat[eng.slot_of["o"]] == pytest.approx(offset(*HOME, 0, 2000)[0])


def test_every_fix_of_a_batch_is_evaluated_in_arrival_order() -> None:
    # Three fixes of one offender in one batch: in, out, in. Each counts, as it would alone.
    # (20 s apart: 500 m in 20 s is fast driving, not a multipath jump; top speed 0 keeps
    # the victim's older fix as certain as it was.)
    # (No dwell, so that leaving the alarm level needs one fix; no confirmation, so that the
    # sudden move back in - a manoeuvre for the motion filter - alarms at once.)
    def batched(*fixes: Fix) -> list[list[tuple[AlarmState, AlarmLevel]]]:
        eng = engine(
            [case("C", ("o",), ("v",))],
            default_top_speed_mps=0.0,
            rules=RuleConfig(dwell_s=0.0, confirm_s=0.0),
        )
        run(eng, fix("v", HOME, 0))
        return [levels(events_of(eng, *fixes)), levels(events_of(eng, *late))]

    moves = (
        fix("o", offset(*HOME, 0, 400), 10),
        fix("o", offset(*HOME, 0, 900), 30),
        fix("o", offset(*HOME, 0, 400), 50),
    )
    late = (fix("o", offset(*HOME, 0, 900), 40),)  # arrives after the fix of t=50: late
    expected = [
        (AlarmState.OPEN, AlarmLevel.ALARM),
        (AlarmState.UPDATE, AlarmLevel.PRE_ALERT),
        (AlarmState.UPDATE, AlarmLevel.ALARM),
    ]
    assert batched(*moves) == [expected, []]


def test_many_to_many_pairs_are_independent() -> None:
    eng = engine(
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
    a, b = (engine([case("C", ("o",), ("v",))]) for _ in range(2))
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
    # No confirmation time: first fixes count at once, so each level follows the distance.
    eng = engine(cases, Clock(T0), rules=RuleConfig(confirm_s=0.0))
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
    # Within the warning distance: a pre-alert, or an alarm when the best estimate is within
    # the order distance (no confirmation time); escalation when certainly within half.
    expected = {
        (
            p.case_ids[p.case[k]],
            eng.devices.ids[p.offender[k]],
            eng.devices.ids[p.victim[k]],
            AlarmLevel.ESCALATION
            if dist[k] + U5 <= p.order_m[k] / 2
            else AlarmLevel.ALARM
            if dist[k] <= p.order_m[k]
            else AlarmLevel.PRE_ALERT,
        )
        for k in range(len(p))
        if dist[k] - U5 <= p.warning_m[k]
    }
    got = {(e.case_id, e.offender.device, e.victim.device, e.level) for e in events}
    assert got == expected
    for e in events:
        assert e.state == AlarmState.OPEN and e.uncertainty_m == pytest.approx(U5)


def test_empty_batch_and_no_cases() -> None:
    eng = engine([])
    assert eng.process(FixBatch.empty()) == []
    eng.warm_up()


def test_old_victim_fix_makes_an_approach_a_possible_breach_and_the_alarm_says_so() -> None:
    walking = [Device("v", {"mobility": "walking"}), Device("o", {"mobility": "walking"})]
    order = case("C", ("o",), ("v",), order=200.0)
    approach = [fix("o", offset(*HOME, 30, 1350 - 50 * k), 540 + 10 * k) for k in range(7)]

    # He walks in at 5 m/s from 1350 m to 1050 m (t = 540 ... 600 s). Then the victim's
    # position arrives: taken at t = 600 (fresh) or buffered by her phone since t = 300 (old).
    # Fresh: 1050 m apart is clear (beyond even the warning band of 400 m).
    fresh = engine([order], devices=walking)
    assert events_of(fresh, *approach) == []
    assert events_of(fresh, fix("v", HOME, 600), now=T0 + 600) == []
    [verdict] = [fresh.evaluate()]
    assert Classification(int(verdict.classification[0])) == Classification.CLEAR

    # Old: the same fixes, with her last fix 5 minutes old: she may have walked 900 m.
    stale = engine([order], devices=walking)
    assert events_of(stale, *approach) == []
    [ev] = events_of(stale, fix("v", HOME, 300), now=T0 + 600)
    assert ev.state == AlarmState.OPEN
    assert ev.classification == Classification.POSSIBLE_BREACH
    assert ev.distance_m == pytest.approx(1050, abs=1e-3)
    assert ev.victim.old and not ev.offender.old
    assert ev.victim.radius_m == pytest.approx(5 + 300 * 3.0 * GROWTH_PER_TOP_SPEED)
    assert ev.uncertainty_m == pytest.approx(300 * 3.0, rel=0.02)  # her 99 %: 300 s at 3 m/s
    assert "protected person's fix is 300 s old" in ev.reason
    # He walks in at 5 m/s; the core says so.
    assert ev.closing_speed_mps == pytest.approx(5.0, rel=1e-3)
    assert ev.time_to_breach_s == pytest.approx((1050 - 200) / 5.0, rel=1e-3)
    message = alarm_message(ev, order)
    assert message["victim"]["old_fix"] is True and message["offender"]["old_fix"] is False
    assert message["classification"] == "possible_breach"
    assert 0.0 < message["probability"] < 0.1

    # Ten minutes old, her 99 % radius (1.8 km) is beyond max_uncertainty_m: her position is
    # unknown, which is no possible breach and raises nothing.
    unknown = engine([order], devices=walking)
    assert events_of(unknown, *approach) == []
    assert events_of(unknown, fix("v", HOME, 0), now=T0 + 600) == []
    verdict = unknown.evaluate()
    assert Classification(int(verdict.classification[0])) == Classification.UNKNOWN


def test_a_sweep_never_raises_a_level_on_age_alone_a_fresh_fix_does() -> None:
    clock = Clock()
    devices = [Device("o", {"mobility": "driving"}), Device("v", {"mobility": "walking"})]
    # No warning band: the pre-alert is the possible breach itself.
    eng = engine([Case("C", ("o",), ("v",), 500.0, 500.0)], clock, devices=devices)
    # He drives in at 20 m/s, then his device falls silent.
    assert events_of(eng, fix("o", offset(*HOME, 200, 900), -5), now=T0 - 5) == []
    assert events_of(eng, fix("o", offset(*HOME, 200, 800), 0), fix("v", HOME, 0)) == []
    for age in range(1, 120):
        clock.t = T0 + age  # at 10 s he may have driven 400 m: possible, but not seen
        assert eng.sweep() == []
        if age == 10:
            verdict = eng.evaluate()
            assert Classification(int(verdict.classification[0])) == (
                Classification.POSSIBLE_BREACH
            )
    # Two minutes on, his position is unknown (his 99 % radius is 4.8 km), not "possible".
    verdict = eng.evaluate()
    assert Classification(int(verdict.classification[0])) == Classification.UNKNOWN
    assert eng.stats.sweeps == 119
    # A fresh fix decides: he is 450 m from her.
    [ev] = events_of(eng, fix("o", offset(*HOME, 200, 450), 120.0), fix("v", HOME, 120.0))
    assert (ev.state, ev.cause, ev.level) == (AlarmState.OPEN, "fix", AlarmLevel.PRE_ALERT)


def test_an_open_alarm_stands_still_while_its_position_is_unknown() -> None:
    # A confirmed breach, then his tag goes silent: no reminder, escalation or end goes out
    # on a position that has become unknown (only the health rule speaks); his next fix
    # brings the pair back.
    clock = Clock()
    devices = [Device("o", {"mobility": "driving"}), Device("v", {"mobility": "walking"})]
    # (Without pursuit: a tag asked to report faster that goes silent is its own test.)
    rules = RuleConfig(pursuit=False)
    eng = engine([case("C", ("o",), ("v",))], clock, devices=devices, rules=rules)
    near = offset(*HOME, 200, 350)
    out: list[AlarmEvent] = []
    for t in range(20):
        out += events_of(eng, fix("o", near, t), fix("v", HOME, t))
    assert levels(out) == [
        (AlarmState.OPEN, AlarmLevel.PRE_ALERT),  # a first fix is unchecked
        (AlarmState.UPDATE, AlarmLevel.ALARM),
        (AlarmState.UPDATE, AlarmLevel.ALARM),  # and now certain
    ]
    later: list[AlarmEvent] = []
    for t in range(20, 1200):  # 20 minutes: beyond escalate_after_s and renotify_s
        clock.t = T0 + t
        later += [e for e in eng.sweep() + events_of(eng, fix("v", HOME, t))]
    # His position is unknown 25 s after his last fix (his 99 % radius passes 1 km at
    # 40 m/s), before any reminder or escalation was due: nothing but the health rule.
    assert [(e.type, e.state) for e in later] == [(AlarmType.SIGNAL_LOST, AlarmState.OPEN)]
    assert eng.levels.level[0] == AlarmLevel.ALARM
    back = events_of(eng, fix("o", near, 1200), fix("v", HOME, 1200))
    assert [(e.type, e.state, e.level) for e in back] == [
        (AlarmType.PROXIMITY, AlarmState.UPDATE, AlarmLevel.ESCALATION),  # it lasted
        (AlarmType.SIGNAL_LOST, AlarmState.ENDED, AlarmLevel.ALARM),
    ]
    assert back[0].uncertainty_m < 20.0


def test_unknown_accuracy_is_not_perfect() -> None:
    eng = engine([case("C", ("o",), ("v",), order=500.0)], unknown_accuracy_m=50.0)
    events = events_of(eng, fix("v", HOME, 0, acc=float("nan")), fix("o", offset(*HOME, 0, 560), 0))
    # 560 m with 5 m fixes would be clear; an unknown accuracy counts as 50 m.
    [ev] = events
    assert ev.classification == Classification.POSSIBLE_BREACH
    assert ev.uncertainty_m == pytest.approx(K99 * np.hypot(50.0, 5.0) / K68)


def test_mobility_comes_from_device_then_case_then_default() -> None:
    cases = [
        Case("A", ("o",), ("v",), 500.0, 1000.0, offender_top_speed_mps=12.0),
        Case("B", ("o",), ("w",), 500.0, 1000.0, protected_top_speed_mps=3.0),
    ]
    eng = engine(cases, devices=[Device("w", {"mobility": 7.5})], default_top_speed_mps=40.0)
    speeds = dict(zip(eng.devices.ids, eng.top_speed_mps.tolist(), strict=True))
    assert speeds == {"o": 12.0, "v": 40.0, "w": 7.5}


def _stand_and_burst(burst_s: int, shift_m: float = 70.0) -> list[AlarmEvent]:
    """Both stand 520 m apart, reporting every second (8 m accuracy) for 180 s; from t=60 the
    victim's fixes lie ``shift_m`` towards him for ``burst_s`` seconds, stating the same
    accuracy (a multipath burst, or - when long - a real move), then return."""
    clock = Clock()
    eng = engine(
        [case("C", ("o",), ("v",))],
        clock,
        devices=[
            Device("o", {"reporting_interval_s": 1}),
            Device("v", {"reporting_interval_s": 1}),
        ],
    )
    off = offset(*HOME, 90.0, 520.0)
    events: list[AlarmEvent] = []
    for t in range(180):
        v = offset(*HOME, 90.0, shift_m) if 60 <= t < 60 + burst_s else HOME
        events += events_of(eng, fix("o", off, t, acc=8.0), fix("v", v, t, acc=8.0))
        clock.t = T0 + t + 0.5
        events += eng.sweep()
    return events


def test_a_multipath_burst_raises_no_alarm_but_a_real_move_does() -> None:
    # 450 m for 8 s, with 8 m accuracy stated: a certain breach on those fixes alone. Just
    # after a jump the breach is at most likely, and it does not last the confirmation.
    burst = [e for e in _stand_and_burst(8) if e.level >= AlarmLevel.ALARM]
    assert burst == []
    # The same 70 m held for a minute is a move: confirmed after 15 s of fixes.
    moved = [e for e in _stand_and_burst(60) if e.level >= AlarmLevel.ALARM]
    assert moved and moved[0].state == AlarmState.UPDATE
    assert 60 + 15 <= moved[0].t_decided - T0 <= 60 + 20


def test_parallel_travel_is_labelled_and_a_pursuit_is_not() -> None:
    def drive(victim_speed: float) -> AlarmEvent:
        eng = engine([case("C", ("o",), ("v",))], rules=RuleConfig(confirm_s=0.0))
        out: list[AlarmEvent] = []
        for t in range(90):  # both drive east; he starts 620 m behind her, at 14 m/s
            o = offset(*HOME, 90.0, 14.0 * t)
            v = offset(*HOME, 90.0, 620.0 + victim_speed * t)
            out += events_of(eng, fix("o", o, t), fix("v", v, t))
        [alarm] = [e for e in out if e.level >= AlarmLevel.ALARM][:1]
        return alarm

    same_road = drive(12.0)
    assert same_road.motion is not None and same_road.motion.parallel
    assert same_road.motion.offender_speed_mps == pytest.approx(14.0, abs=1.0)
    assert "parallel travel" in same_road.reason
    assert alarm_message(same_road, case("C", ("o",), ("v",)))["motion"]["parallel"] is True
    standing = drive(0.0)  # he drives at her while she stands: a pursuit, not parallel travel
    assert standing.motion is not None and not standing.motion.parallel
    assert "parallel" not in standing.reason


def test_a_burst_during_the_other_device_s_dropout_is_not_confirmed_when_it_returns() -> None:
    # The offender is silent for 29 s; 5 s before he reports again the victim's fixes jump
    # 70 m towards him (a burst of 8). His first fix after the gap must not find a likely
    # breach "held" since the start of his silence.
    clock = Clock()
    eng = every_second(clock)
    off = offset(*HOME, 90.0, 520.0)
    events: list[AlarmEvent] = []
    for t in range(120):
        v = offset(*HOME, 90.0, 70.0) if 55 <= t < 63 else HOME
        fixes = [fix("v", v, t, acc=8.0)]
        if not 31 <= t < 60:
            fixes.append(fix("o", off, t + 0.3, acc=8.0))
        events += events_of(eng, *fixes)
        clock.t = T0 + t + 0.5
        events += eng.sweep()
    assert [e for e in events if e.level >= AlarmLevel.ALARM] == []


def test_probing_counts_visits_of_the_best_estimate_not_of_the_uncertainty() -> None:
    def probes(near_m: float, acc_m: float) -> list[AlarmEvent]:
        # Three times: near the victim's home (fix accuracy acc_m), then far away.
        rules = RuleConfig(dwell_s=0.0, probe_min_gap_s=0.0)
        eng = engine([case("C", ("o",), ("v",))], default_top_speed_mps=0.0, rules=rules)
        out: list[AlarmEvent] = []
        for k in range(3):
            t = 2 * k * GAP
            out += events_of(
                eng, fix("v", HOME, t), fix("o", offset(*HOME, 0, near_m), t, acc=acc_m)
            )
            out += events_of(eng, fix("o", offset(*HOME, 0, 5000.0), t + GAP))
        return [e for e in out if e.type.name == "PROBING"]

    # 1,100 m with 150 m fixes: possibly within the 1,000 m warning distance (pre-alerts),
    # but the best estimate never was: no visit, no probing alarm.
    assert probes(1100.0, 150.0) == []
    # 900 m: inside on the best estimate, three times: probing.
    [probe] = probes(900.0, 5.0)
    assert probe.state == AlarmState.OPEN


def test_she_walking_towards_him_is_no_approach_of_his() -> None:
    def walk(mover: str) -> list[AlarmEvent]:
        # One stands at HOME; the other walks towards it at 1.4 m/s from 1,100 m east.
        clock = Clock()
        eng = every_second(clock)
        out: list[AlarmEvent] = []
        for t in range(500):
            walker = offset(*HOME, 90.0, 1100.0 - 1.4 * t)
            o, v = (walker, HOME) if mover == "o" else (HOME, walker)
            out += events_of(eng, fix("o", o, t), fix("v", v, t))
        return out

    hers = walk("v")
    assert [e for e in hers if e.type == AlarmType.APPROACH] == []
    assert any(e.level >= AlarmLevel.ALARM for e in hers)  # the breach itself is alarmed
    his = walk("o")
    assert [e.state for e in his if e.type == AlarmType.APPROACH][:1] == [AlarmState.OPEN]


def _drive_past(
    miss_m: float,
    her: Callable[[int], tuple[float, float]],
    burst: range = range(0),
    rules: RuleConfig | None = None,
) -> list[AlarmEvent]:
    """He drives east at 14 m/s along a road ``miss_m`` north of her home, from 2,000 m west
    of its closest point; her true position at second t is ``her(t)``. During ``burst`` his
    fixes are 150 m south of him (multipath towards her, the stated accuracy unchanged)."""
    clock = Clock()
    eng = every_second(clock, rules)
    closest = offset(*HOME, 0.0, miss_m)
    out: list[AlarmEvent] = []
    for t in range(200):
        o = offset(*closest, 90.0, -2000.0 + 14.0 * t)
        if t in burst:
            o = offset(*o, 180.0, 150.0)
        out += events_of(eng, fix("o", o, t, acc=8.0), fix("v", her(t), t, acc=8.0))
    return out


def test_her_walking_towards_his_road_as_he_drives_past_is_no_approach() -> None:
    # His road passes 700 m north of her home; between 20 s and 60 s she walks 120 m north,
    # towards it. Together their motion heads into the 500 m circle; his own course passes
    # by: no approach of his (and no breach: he passes 580 m from her).
    def her(t: int) -> tuple[float, float]:
        return offset(*HOME, 0.0, 3.0 * min(max(t - 20.0, 0.0), 40.0))

    out = _drive_past(700.0, her)
    assert [e for e in out if e.type == AlarmType.APPROACH or e.level >= AlarmLevel.ALARM] == []
    assert any(e.level == AlarmLevel.PRE_ALERT for e in out)  # within the warning distance
    # The same drive on a road that passes 300 m from her home is an approach.
    out = _drive_past(300.0, lambda t: HOME)
    assert [e.state for e in out if e.type == AlarmType.APPROACH][:1] == [AlarmState.OPEN]


def test_a_multipath_burst_of_a_car_driving_past_is_no_approach() -> None:
    # His road passes 800 m north of her home. When he is 1,000 m west of its closest point
    # his fixes jump 150 m towards her for 3 s: the velocity estimate swings towards her,
    # and no approach may be predicted from it.
    out = _drive_past(800.0, lambda t: HOME, burst=range(71, 74))
    assert [e for e in out if e.type == AlarmType.APPROACH] == []
    # Without the burst the same drive is no approach either (the test is of the burst).
    assert [e for e in _drive_past(800.0, lambda t: HOME) if e.type == AlarmType.APPROACH] == []


def test_a_first_fix_alone_cannot_make_a_breach_certain() -> None:
    # His tag's first fix after switching on (a cold start) is 140 m off, 380 m from her;
    # every later one is where he is, 520 m from her: nothing checks a first fix, so it
    # cannot raise a certain breach at once, and the later fixes end the matter.
    def run(first_m: float, then_m: float) -> list[AlarmEvent]:
        clock = Clock()
        eng = every_second(clock)
        out = events_of(eng, fix("v", HOME, 0))
        for t in range(1, 60):
            o = offset(*HOME, 90.0, first_m if t == 1 else then_m)
            out += events_of(eng, fix("o", o, t), fix("v", HOME, t))
        return [e for e in out if e.level >= AlarmLevel.ALARM]

    assert run(380.0, 520.0) == []
    # Really 300 m from her from the first fix on: the alarm, after the confirmation time.
    [alarm] = run(300.0, 300.0)[:1]
    assert alarm.t_decided - T0 == pytest.approx(1 + RuleConfig().confirm_s, abs=1.0)


def test_an_approach_must_hold_not_flash_on_one_fix() -> None:
    # His road passes 560 m north of her home. One fix, 1 km before the closest point, is
    # 20 m off towards her (ordinary noise: within the motion filter's gate), and the
    # velocity swings towards her for a fix. Predicted on that one fix, it would be an
    # approach; it must hold for approach_hold_s, and then it has gone.
    def drive(hold_s: float) -> list[AlarmEvent]:
        clock = Clock()
        rules = RuleConfig(approach_hold_s=hold_s)
        eng = every_second(clock, rules)
        closest = offset(*HOME, 0.0, 560.0)
        out: list[AlarmEvent] = []
        for t in range(200):
            o = offset(*closest, 90.0, -2000.0 + 14.0 * t)
            o = offset(*o, 180.0, 20.0) if t == 80 else o
            out += events_of(eng, fix("v", HOME, t, acc=8.0), fix("o", o, t, acc=8.0))
        return [e for e in out if e.type == AlarmType.APPROACH]

    assert RuleConfig().approach_hold_s == 3.0
    assert drive(3.0) == []
    [flash] = drive(0.0)[:1]  # the rule without the hold: an alarm on that one fix
    assert flash.t_decided == T0 + 80
    # A real approach (a road 300 m from her) holds. A prediction is a pre-alert: the
    # police alarm is the breach it predicts, which supersedes it.
    out = _drive_past(300.0, lambda t: HOME)
    approach = [e for e in out if e.type == AlarmType.APPROACH]
    breach = next(e for e in out if e.type == AlarmType.PROXIMITY and e.level >= AlarmLevel.ALARM)
    assert approach[0].state == AlarmState.OPEN and approach[0].t_decided < breach.t_decided
    assert {e.level for e in approach} == {AlarmLevel.PRE_ALERT}
    assert approach[-1].state == AlarmState.ENDED and "superseded" in approach[-1].reason
    # A programme that sends the police on a prediction: the same approach is an alarm, with
    # no approach pre-alert before it.
    out = _drive_past(300.0, lambda t: HOME, rules=RuleConfig(approach_alarm=True))
    approach = [e for e in out if e.type == AlarmType.APPROACH]
    assert approach[0].state == AlarmState.OPEN and approach[0].level == AlarmLevel.ALARM
    assert all(e.level != AlarmLevel.PRE_ALERT for e in approach)


def test_a_chain_of_multipath_bursts_longer_than_the_confirmation_is_no_breach() -> None:
    # They stand 520 m apart. Her phone, by tall buildings, suffers two bursts back to back:
    # 140 m towards him for 10 s, then 80 m for 10 s (each starts with a jump, the stated
    # accuracy unchanged): 20 s of a false position inside the order distance, longer than
    # confirm_s. Each jump starts the confirmation again: no alarm.
    def run(second_m: float) -> list[AlarmEvent]:
        clock = Clock()
        eng = every_second(clock)
        off = offset(*HOME, 90.0, 520.0)
        out: list[AlarmEvent] = []
        for t in range(200):
            v = HOME
            if 100 <= t < 110:
                v = offset(*HOME, 90.0, 140.0)
            elif 110 <= t < 120:
                v = offset(*HOME, 90.0, second_m)
            out += events_of(eng, fix("o", off, t, acc=8.0), fix("v", v, t, acc=8.0))
        return [e for e in out if e.level >= AlarmLevel.ALARM]

    assert run(80.0) == []
    # Had the second burst been the same offset as the first (one 20 s burst, no new jump),
    # 20 s is beyond confirm_s: what the engine cannot tell from a real move, it alarms.
    assert run(140.0) != []


def test_the_first_fix_after_a_dropout_cannot_make_a_breach_certain() -> None:
    # They stand 520 m apart. His tag is silent for 43 s; its first fixes after that are a
    # burst of multipath 150 m towards her (5 s). Across the gap the motion filter and the
    # jump rule allow such a move, so nothing checks it: no certain breach at once, and the
    # burst is over before confirm_s.
    clock = Clock()
    eng = every_second(clock)
    out: list[AlarmEvent] = []
    for t in range(200):
        fixes = [fix("v", HOME, t, acc=8.0)]
        if not 100 <= t < 143:
            o = offset(*HOME, 90.0, 370.0 if 143 <= t < 148 else 520.0)
            fixes.append(fix("o", o, t, acc=8.0))
        out += events_of(eng, *fixes)
    assert [e for e in out if e.level >= AlarmLevel.ALARM and e.type == AlarmType.PROXIMITY] == []


def bursts(until: float, run: int = 3, gap: float = 8.0) -> list[float]:
    """Fix times of a logger that sends ``run`` fixes a second apart, then nothing for
    ``gap`` seconds, again and again."""
    times: list[float] = []
    t = 0.0
    while t < until:
        times += [t + k for k in range(run)]
        t += run - 1 + gap
    return times


def test_a_device_s_cadence_is_learned_from_its_fixes_with_the_declared_interval_as_prior() -> None:
    clock = Clock()
    devices = [Device(d, {"reporting_interval_s": 1}) for d in ("o", "v", "w")]
    eng = engine([case("C", ("o",), ("v", "w"))], clock, devices=devices)
    slot = eng.slot_of
    cad = eng.intake.cadence
    assert cad.learned_s.tolist() == [1.0, 1.0, 1.0]  # the prior, before any gap
    for t in range(200):
        fixes = [fix("v", HOME, t)]  # every second, with one dropout of 40 s
        if t not in range(100, 140):
            fixes.append(fix("w", HOME, t))
        if t in bursts(200):  # a logger: 3 fixes, 8 s of nothing, ...
            fixes.append(fix("o", offset(*HOME, 0, 2000), t))
        if t % 60 == 0:
            fixes.append(fix("v", HOME, t))
        events_of(eng, *fixes)
    assert cad.learned_s[slot["v"]] == pytest.approx(1.0)
    assert cad.learned_s[slot["w"]] == pytest.approx(1.0)  # one dropout is no cadence
    assert cad.learned_s[slot["o"]] == pytest.approx(8.0)  # its gaps between bursts


def test_a_logger_that_sends_in_bursts_makes_a_breach_certain_not_only_likely() -> None:
    # His logger sends 3 fixes a second apart, then nothing for 8 s; it was declared as
    # reporting every second. He drives in from 1500 m at 12 m/s. Read against the declared
    # 1 s, every burst would start with an unchecked fix (its gap is more than twice the
    # interval) and no breach could ever be certain; read at the 8 s it keeps, his fixes
    # check each other, and the breach is certain as soon as the fixes show it.
    clock = Clock()
    devices = [Device("o", {"reporting_interval_s": 1}), Device("v", {"reporting_interval_s": 1})]
    eng = engine([case("C", ("o",), ("v",))], clock, devices=devices)
    dist = lambda t: max(1500.0 - 12.0 * max(t - 120.0, 0.0), 100.0)  # noqa: E731
    mine = set(bursts(600))
    out: list[AlarmEvent] = []
    for t in range(600):
        fixes = [fix("v", HOME, t)]
        if t in mine:
            fixes.append(fix("o", offset(*HOME, 30, dist(t)), t))
        out += events_of(eng, *fixes)
        out += eng.sweep()
    alarms = [e for e in out if e.type == AlarmType.PROXIMITY and e.level >= AlarmLevel.ALARM]
    first = alarms[0]
    assert first.reason.startswith("certain breach")
    # Certain once d + u <= order - margin (450 m), at the first fix that shows it: within
    # one gap of the crossing of 450 m, before a likely breach's confirmation (15 s).
    crossing = 120.0 + (1500.0 - 450.0) / 12.0
    assert first.t_decided - T0 <= crossing + 8.0 + 1.0
    assert eng.intake.cadence.learned_s[eng.slot_of["o"]] == pytest.approx(8.0)


def test_a_phone_indoors_whose_fixes_share_a_bias_is_not_placed_more_precisely_than_it_is() -> None:
    # She is at home, indoors: her phone states 100 m and every fix is 150 m north of her
    # (towards his road: a bias the fixes share, which averaging does not remove). He drives
    # past on a road 540 m north of her home (no breach): 390 m from where her fixes put
    # her. Averaged as independent fixes, her estimate is given a 30 m radius and his course
    # enters the order circle around it, shrunk by that: an approach alarm on a bias. Her
    # radius keeps to half her stated accuracy, and his course must enter the circle shrunk
    # by her 99 % radius: none.
    def drive(rules: RuleConfig) -> tuple[float, list[AlarmEvent]]:
        clock = Clock()
        eng = every_second(clock, rules)
        biased = offset(*HOME, 0.0, 150.0)
        closest = offset(*HOME, 0.0, 540.0)
        out: list[AlarmEvent] = []
        for t in range(200):
            o = offset(*closest, 90.0, -2000.0 + 14.0 * t)
            out += events_of(eng, fix("o", o, t, acc=8.0), fix("v", biased, t, acc=100.0))
        radius = eng.core.radius_m(eng.slot_of["v"], T0 + 199)
        return radius, [e for e in out if e.type == AlarmType.APPROACH]

    radius, approach = drive(RuleConfig())
    assert radius == pytest.approx(50.0) and approach == []
    radius, approach = drive(RuleConfig(estimate_floor_fraction=0.0))
    assert radius < 35.0 and approach[0].state == AlarmState.OPEN  # without the floor
