"""Fix quality in the engine: multipath jumps set aside without ever freezing a device, late
and duplicate fixes changing nothing."""

from __future__ import annotations

import numpy as np
import pytest

from proximity.engine import Engine
from proximity.events import AlarmState
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, case, engine, events_of, fix, run


def position(eng: Engine, dev: str) -> tuple[float, float]:
    slot = eng.slot_of[dev]
    return float(eng.devices.lat[slot]), float(eng.devices.lon[slot])


def test_a_two_km_multipath_jump_for_one_fix_raises_nothing() -> None:
    eng = engine([case("C", ("o",), ("v",))])
    far = offset(*HOME, 30, 2050)
    assert run(eng, fix("v", HOME, 0), fix("o", far, 0)) == []
    # One fix, a second later, lands 50 m from the victim: 2 km in 1 s.
    assert run(eng, fix("o", offset(*HOME, 30, 50), 1)) == []
    assert eng.stats.fixes_implausible == 1
    assert position(eng, "o") == pytest.approx(far)
    # The next fix agrees with the old position: used, and the jump is forgotten.
    assert run(eng, fix("o", offset(*HOME, 30, 2045), 2)) == []
    assert position(eng, "o") == pytest.approx(offset(*HOME, 30, 2045))
    assert eng.stats.fixes_implausible == 1 and eng.stats.fixes_applied == 3


def test_a_real_move_is_confirmed_by_a_second_fix() -> None:
    # The device was off for 10 minutes and comes back 60 km away (100 m/s on average:
    # too fast for the rule alone); the second fix there confirms the move.
    eng = engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 90, 65_000), 0))
    near = offset(*HOME, 90, 5_000)
    assert run(eng, fix("o", near, 600)) == []
    assert eng.stats.fixes_implausible == 1
    run(eng, fix("o", offset(*HOME, 90, 4_990), 601))
    assert position(eng, "o") == pytest.approx(offset(*HOME, 90, 4_990))


def test_a_long_gap_then_a_far_fix_is_accepted_at_once() -> None:
    eng = engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 30_000), 0))
    # An hour later, 29.6 km closer and within the order distance: 8 m/s on average.
    [ev] = events_of(eng, fix("v", HOME, 3600), fix("o", offset(*HOME, 0, 400), 3600))
    assert ev.state == AlarmState.OPEN
    assert eng.stats.fixes_implausible == 0


def test_a_device_is_never_frozen_by_fixes_that_disagree_with_each_other() -> None:
    rules = RuleConfig(max_rejected=3)
    eng = engine([case("C", ("o",), ("v",))], rules=rules)
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 10_000), 0))
    # Each fix 3 km from the last accepted one and from the one before it, 1 s apart.
    for k in range(1, 4):
        run(eng, fix("o", offset(*HOME, 120 * k, 13_000), k))
        assert position(eng, "o") == pytest.approx(offset(*HOME, 0, 10_000))
    assert eng.stats.fixes_implausible == 3
    run(eng, fix("o", offset(*HOME, 200, 9_000), 4))  # the fourth is used whatever it says
    assert position(eng, "o") == pytest.approx(offset(*HOME, 200, 9_000))


def test_out_of_order_and_duplicate_fixes_change_nothing() -> None:
    eng = engine([case("C", ("o",), ("v",))])
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 45, 2000), 0))
    [ev] = events_of(eng, fix("o", offset(*HOME, 45, 300), 60), fix("v", HOME, 60))
    assert ev.state == AlarmState.OPEN
    before = (eng.core.rows.copy(), eng.levels.level.copy(), eng.devices.t_fix.copy())
    # The same fix again, an older fix far away, and the victim's earlier fix again.
    assert run(eng, fix("o", offset(*HOME, 45, 300), 60)) == []
    assert run(eng, fix("o", offset(*HOME, 45, 5000), 30)) == []
    assert run(eng, fix("v", HOME, 0)) == []
    rows, state, t_fix = before
    assert np.array_equal(eng.core.rows, rows, equal_nan=True)
    assert np.array_equal(eng.levels.level, state) and np.array_equal(eng.devices.t_fix, t_fix)
    assert (eng.stats.fixes_duplicate, eng.stats.fixes_late) == (1, 2)


def test_unknown_accuracy_is_not_perfect_for_the_jump_rule() -> None:
    # 0 or missing accuracy counts as the unknown-accuracy radius (50 m), widening the rule.
    eng = engine([case("C", ("o",), ("v",))], unknown_accuracy_m=400.0)
    run(eng, fix("v", HOME, 0), fix("o", offset(*HOME, 0, 5000), 0, acc=float("nan")))
    # 1.5 km in 1 s: beyond 70 m/s, but within the two fixes' 99 % radii of 400 m each.
    run(eng, fix("o", offset(*HOME, 0, 3500), 1, acc=float("nan")))
    assert eng.stats.fixes_implausible == 0


def test_every_rule_threshold_is_a_setting_with_the_same_default() -> None:
    from service.settings import Settings, rule_config

    assert rule_config(Settings.model_validate({})) == RuleConfig()
    changed = rule_config(
        Settings.model_validate({"signal_grace_s": 5, "implausible_speed_mps": 90})
    )
    assert (changed.signal_grace_s, changed.implausible_speed_mps) == (5, 90)
