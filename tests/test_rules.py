"""The alarm rules on hand-written fix sequences: GPS jitter at the boundary, a walk-in,
multipath jumps, late and duplicate fixes, long gaps, approach, boundary probing,
re-notification and the operator's lifecycle."""

from __future__ import annotations

import numpy as np

from ingest.batch import build_batch
from ingest.model import Fix
from numerics.uncertainty import DEFAULT_MOBILITY, K68, MOBILITY_MPS
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType
from proximity.rules import RuleConfig
from tests.naive import geod_distance_m, offset
from tests.test_engine import HOME, T0, Clock, case, fix

#: The engine's default top speed (an old fix's radius grows by its age times it).
DEFAULT_TOP_SPEED = MOBILITY_MPS[DEFAULT_MOBILITY]
#: Silence has its own tests: these sequences may leave a device quiet for a while.
#: No device-health alarms: no silence, and no pursuit (whose devices here obey no command).
QUIET = RuleConfig(reporting_interval_s=1e9, pursuit=False)


class Run:
    """An engine fed second by second, as the service does: the fixes of each second as one
    batch, then a sweep; every event is kept."""

    def __init__(
        self, rules: RuleConfig = QUIET, order: float = 500.0, top_speed_mps: float | None = None
    ) -> None:
        self.clock = Clock(T0)
        speed = DEFAULT_TOP_SPEED if top_speed_mps is None else top_speed_mps
        self.eng = Engine(
            [case("C", ("o",), ("v",), order)],
            rules=rules,
            clock=self.clock,
            default_top_speed_mps=speed,
        )
        self.events: list[AlarmEvent] = []

    def second(self, t: float, *fixes: Fix) -> list[AlarmEvent]:
        self.clock.t = T0 + t
        out: list[AlarmEvent] = []
        if fixes:
            batch, rejected = build_batch(list(fixes), self.eng.slot_of)
            assert rejected == []
            out += self.eng.process(batch)
        out += self.eng.sweep()
        self.events += out
        return out

    def of(self, type_: AlarmType) -> list[AlarmEvent]:
        return [e for e in self.events if e.type == type_]


def noisy(
    rng: np.random.Generator, dev: str, pos: tuple[float, float], t: float, acc: float
) -> Fix:
    """A fix around ``pos`` whose error matches its stated 68 % radius ``acc``."""
    dn, de = rng.normal(0.0, acc / K68, 2)
    lat, lon = offset(*offset(*pos, 0.0, dn), 90.0, de)
    return Fix(dev, T0 + t, T0 + t + 0.2, lat, lon, acc)


def rises_to_alarm(e: AlarmEvent) -> bool:
    """The event raises the alarm level: it opens at alarm or above, or rises to it."""
    if e.level < AlarmLevel.ALARM or e.state not in (AlarmState.OPEN, AlarmState.UPDATE):
        return False
    return e.state == AlarmState.OPEN or (
        e.previous_level is not None and e.previous_level < AlarmLevel.ALARM
    )


def jitter(rng: np.random.Generator) -> float:
    return float(rng.uniform(10.0, 20.0))


def test_an_hour_of_jitter_10_m_outside_the_order_distance_raises_no_alarm() -> None:
    # Both stand still for an hour, 510 m apart; both report at 1 Hz with 10 to 20 m noise.
    rng = np.random.default_rng(20261123)
    run = Run()
    spot = offset(*HOME, 60.0, 510.0)
    for t in range(3600):
        opened = run.second(
            t,
            noisy(rng, "v", HOME, t, jitter(rng)),
            noisy(rng, "o", spot, t, jitter(rng)),
        )
        for e in opened:  # the operator takes the pre-alert and calls the offender
            run.events += run.eng.acknowledge(e.alarm_id, "operator 7", "offender called")
    # Inside the warning distance: one pre-alert, acknowledged, and nothing else: no alarm,
    # no flapping, no approach, no reminder.
    pre, ack = run.events
    assert (pre.type, pre.state, pre.level) == (
        AlarmType.PROXIMITY,
        AlarmState.OPEN,
        AlarmLevel.PRE_ALERT,
    )
    assert (ack.alarm_id, ack.state, ack.operator) == (
        pre.alarm_id,
        AlarmState.ACKNOWLEDGED,
        "operator 7",
    )
    assert run.eng.stats.fixes_implausible == 0


def test_a_walk_in_raises_exactly_one_alarm_within_a_reporting_interval_of_crossing() -> None:
    rng = np.random.default_rng(7)
    run = Run(RuleConfig(reporting_interval_s=1e9, renotify_s=1e9))
    start = offset(*HOME, 200.0, 900.0)
    crossed = None
    for t in range(900):  # 1.4 m/s straight at her, from 900 m to 360 m
        pos = offset(*start, 20.0, 1.4 * t)
        if crossed is None and geod_distance_m(*pos, *HOME) <= 500.0:
            crossed = t
        run.second(t, noisy(rng, "v", HOME, t, jitter(rng)), noisy(rng, "o", pos, t, jitter(rng)))
    assert crossed is not None
    prox = run.of(AlarmType.PROXIMITY)
    [alarm] = [e for e in prox if rises_to_alarm(e)]
    delay = alarm.t_decided - (T0 + crossed)
    assert 0.0 <= delay <= RuleConfig().reporting_interval_s, delay
    assert len({e.alarm_id for e in prox}) == 1  # one alarm, from pre-alert to escalation
    assert not any(e.state == AlarmState.ENDED for e in prox)
    # Before the breach, one approach alarm, which the breach alarm supersedes.
    opened, ended = run.of(AlarmType.APPROACH)
    assert (opened.state, ended.state) == (AlarmState.OPEN, AlarmState.ENDED)
    assert opened.t_decided < T0 + crossed - 60 and ended.t_decided == alarm.t_decided
    assert opened.closing_speed_mps > 0.5 and opened.time_to_breach_s <= 120.0
    assert ended.reason.startswith("superseded by the breach alarm")


def test_a_2_km_multipath_jump_for_one_fix_raises_nothing() -> None:
    rng = np.random.default_rng(3)
    run = Run()
    spot = offset(*HOME, 0.0, 1500.0)  # beyond the warning distance
    for t in range(120):
        pos = offset(*spot, 180.0, 2000.0) if t == 60 else spot  # 2 km: right past her
        run.second(t, noisy(rng, "v", HOME, t, 5.0), noisy(rng, "o", pos, t, 12.0))
    assert run.events == []
    assert run.eng.stats.fixes_implausible == 1


def test_a_long_gap_then_a_far_fix_is_accepted() -> None:
    run = Run()
    run.second(0, Fix("v", T0, T0, *HOME, 5.0), Fix("o", T0, T0, *offset(*HOME, 0, 9000), 5.0))
    # Two hours later he is 100 m from her: 9 km in 2 h is a walk, not a jump. Her fix is
    # still two hours old when his arrives: her position is unknown, which raises nothing;
    # with hers, an escalation.
    t = 7200.0
    [ev] = run.second(
        t,
        Fix("o", T0 + t, T0 + t, *offset(*HOME, 0, 100), 5.0),
        Fix("v", T0 + t, T0 + t, *HOME, 5.0),
    )
    assert (ev.state, ev.level) == (AlarmState.OPEN, AlarmLevel.ESCALATION)
    assert run.eng.stats.fixes_implausible == 0


def test_late_and_duplicate_fixes_change_nothing() -> None:
    rng = np.random.default_rng(11)
    walk = [
        (
            noisy(rng, "v", HOME, t, 8.0),
            noisy(rng, "o", offset(*HOME, 30.0, 800.0 - 1.5 * t), t, 8.0),
        )
        for t in range(400)
    ]
    clean, messy = Run(), Run()
    for t, (v, o) in enumerate(walk):
        clean.second(t, v, o)
        late = [walk[t - 5][1], walk[t - 1][0]] if t >= 5 else []
        messy.second(t, v, o, o, *late)  # o twice, and two old fixes again

    def key(events: list[AlarmEvent]) -> list[tuple[object, ...]]:
        return [(e.alarm_id, e.type, e.state, e.level, round(e.distance_m, 6)) for e in events]

    assert key(messy.events) == key(clean.events) and len(clean.events) >= 3
    # In arrival order: his fix again is a duplicate; his fix of 5 s ago and her previous
    # fix, after her new one, are late.
    assert (messy.eng.stats.fixes_late, messy.eng.stats.fixes_duplicate) == (2 * 395, 400)


def test_repeated_short_entries_into_the_warning_band_are_boundary_probing() -> None:
    # Top speed 0: her fix of 10 s ago, when his arrives, is as certain as it was.
    run = Run(RuleConfig(reporting_interval_s=1e9, renotify_s=1e9), top_speed_mps=0.0)
    near, away = offset(*HOME, 0.0, 950.0), offset(*HOME, 0.0, 1200.0)
    v = [Fix("v", T0 + t, T0 + t, *HOME, 5.0) for t in range(0, 4000, 60)]
    run.second(0, v[0])
    t = 0.0

    def stay(pos: tuple[float, float], seconds: float) -> None:
        nonlocal t
        for _ in range(int(seconds // 10)):
            t += 10
            run.second(t, Fix("o", T0 + t, T0 + t, *pos, 5.0), Fix("v", T0 + t, T0 + t, *HOME, 5.0))

    for _ in range(3):  # three times in, a minute each, out for 10 minutes
        stay(near, 60)
        stay(away, 600)
    pre = [e for e in run.of(AlarmType.PROXIMITY) if e.state == AlarmState.OPEN]
    assert len(pre) == 3 and all(e.level == AlarmLevel.PRE_ALERT for e in pre)
    [probe] = run.of(AlarmType.PROBING)
    assert (probe.state, probe.level) == (AlarmState.OPEN, AlarmLevel.ALARM)
    assert probe.t_decided == pre[2].t_decided and "3 entries" in probe.reason
    stay(away, 3600)  # an hour without an entry: the pattern is over
    [_, end] = run.of(AlarmType.PROBING)
    assert end.state == AlarmState.ENDED and end.alarm_id == probe.alarm_id


def test_reminders_stop_on_acknowledgement_and_a_closed_alarm_stays_silent() -> None:
    rules = RuleConfig(
        reporting_interval_s=1e9, renotify_s=120.0, escalate_after_s=600.0, confirm_s=0.0
    )
    # No confirmation time: the first fixes' breach is an alarm at once. Top speed 0: her fix
    # of 10 s ago, when his arrives, is as certain as it was.
    run = Run(rules, top_speed_mps=0.0)
    at = offset(*HOME, 0.0, 300.0)

    def both(t: float) -> list[AlarmEvent]:
        o = Fix("o", T0 + t, T0 + t, *at, 5.0)
        return run.second(t, o, Fix("v", T0 + t, T0 + t, *HOME, 5.0))

    def quiet(start: int, end: int) -> bool:
        return all(both(t) == [] for t in range(start, end, 10))

    [ev] = both(0)
    assert (ev.state, ev.level) == (AlarmState.OPEN, AlarmLevel.ALARM)
    assert quiet(10, 120)
    [again] = both(120)  # two minutes unacknowledged: announced again
    assert again.state == AlarmState.UPDATE and again.reason.startswith("reminder")
    [ack] = run.eng.acknowledge(ev.alarm_id, "op-3")
    assert (ack.state, ack.operator, ack.alarm_id) == (AlarmState.ACKNOWLEDGED, "op-3", ev.alarm_id)
    assert ack.reason == "acknowledged by op-3"
    assert quiet(130, 600)  # acknowledged: no reminders
    [esc] = both(600)  # ten minutes: escalation, announced, and reminded again
    assert (esc.level, esc.previous_level) == (AlarmLevel.ESCALATION, AlarmLevel.ALARM)
    assert quiet(610, 720)
    [again] = both(720)
    assert again.reason.startswith("reminder")
    [closed] = run.eng.close(ev.alarm_id, "op-3", "team on site, offender arrested")
    assert closed.state == AlarmState.CLOSED and "offender arrested" in closed.reason
    assert run.eng.close(ev.alarm_id, "op-3", "twice") == []
    assert quiet(730, 2000)  # closed: silent
    assert run.eng.acknowledge("no-such-alarm", "op-3") == []


def test_operators_acknowledge_and_close_zone_and_device_alarms_too() -> None:
    from geofence.model import circle, feature_collection
    from proximity.cases import Case

    school = circle(HOME[1], HOME[0], 100, kind="exclusion", label="school")
    c = Case("Z", ("o",), ("v",), 500.0, 1000.0, zones=feature_collection([school]))
    rules = RuleConfig(reporting_interval_s=30.0, signal_grace_s=0.0, renotify_s=60.0)
    clock = Clock(T0)
    eng = Engine([c], rules=rules, clock=clock)

    def at(t: float, *fixes: Fix) -> list[AlarmEvent]:
        clock.t = T0 + t
        out = eng.process(build_batch(list(fixes), eng.slot_of)[0]) if fixes else []
        return out + eng.sweep()

    far = offset(*HOME, 90.0, 5000.0)
    inside = Fix("o", T0 + 1, T0 + 1, *HOME, 5.0)
    events = at(0, Fix("v", T0, T0, *far, 5.0)) + at(1, inside)
    [zone] = [e for e in events if e.type == AlarmType.ZONE]
    [ack] = eng.acknowledge(zone.alarm_id, "op-1")
    assert ack.state == AlarmState.ACKNOWLEDGED
    # The victim's phone falls silent: victim_silent; the zone alarm is not re-notified.
    later = [e for t in range(2, 200, 5) for e in at(t, Fix("o", T0 + t, T0 + t, *HOME, 5.0))]
    assert not [e for e in later if e.type == AlarmType.ZONE]
    [silent] = [e for e in later if e.type == AlarmType.VICTIM_SILENT]
    [closed] = eng.close(silent.alarm_id, "op-1", "phone left at home, victim called")
    assert closed.state == AlarmState.CLOSED
    [closed] = eng.close(zone.alarm_id, "op-1", "offender arrested")
    # Her phone reports again, he leaves (the other way): nothing more about either.
    away = offset(*HOME, 270.0, 5000.0)
    after = at(
        300, Fix("v", T0 + 300, T0 + 300, *far, 5.0), Fix("o", T0 + 300, T0 + 300, *away, 5.0)
    )
    after += at(
        340, Fix("o", T0 + 340, T0 + 340, *away, 5.0), Fix("v", T0 + 340, T0 + 340, *far, 5.0)
    )
    assert [e for e in after if e.alarm_id in (zone.alarm_id, silent.alarm_id)] == []
    assert eng.open_alarms == 0


def test_entries_closer_than_the_minimum_gap_are_one_visit() -> None:
    from proximity.states import EntryCounter

    c = EntryCounter(3, 3600.0, min_gap_s=300.0)
    # Flicker at the band's edge: entries a minute apart are one visit, however many.
    assert [c.enter(0, t) for t in (0.0, 60.0, 120.0, 180.0)] == [False] * 4
    # Separate visits (each 400 s after the last entry, flicker or not): the third probes.
    assert [c.enter(0, t) for t in (580.0, 980.0)] == [False, True]


def test_a_fix_from_the_future_makes_no_real_fix_late() -> None:
    # His tag's clock jumps 290 s ahead for one fix (the edge allows up to 300 s). That fix
    # counts as taken when it arrived; his real fixes after it are used, and his walk in to
    # 200 m of her is alarmed as if the bad one had never come. A repeat of it is a duplicate.
    def walk_in(future: bool) -> Run:
        run = Run(top_speed_mps=3.0)
        for t in range(90):
            o = offset(*HOME, 0.0, 800.0 if t < 30 else 200.0)
            fixes = [Fix("v", T0 + t, T0 + t, *HOME, 5.0), Fix("o", T0 + t, T0 + t, *o, 5.0)]
            if future and t in (10, 12):  # the same bad fix, sent twice
                fixes[1] = Fix("o", T0 + 10 + 290, T0 + t, *o, 5.0)
            run.second(t, *fixes)
        return run

    clean, poisoned = walk_in(False), walk_in(True)
    raised = [(e.t_decided, e.level) for e in poisoned.events if rises_to_alarm(e)]
    assert raised and raised == [(e.t_decided, e.level) for e in clean.events if rises_to_alarm(e)]
    assert raised[0][0] - T0 <= 30 + RuleConfig().confirm_s + 2  # a jump in: confirmed
    st = poisoned.eng.stats
    assert (st.fixes_clock_ahead, st.fixes_duplicate, st.fixes_late) == (2, 1, 0)


def test_an_alarm_of_devices_reporting_once_a_minute_ends_when_their_fixes_show_him_gone() -> None:
    # Both report once a minute (top speed 40 m/s): between two fixes the pessimistic
    # distance shrinks by kilometres, which must neither hold the alarm for ever nor end it
    # without a fix. He comes to 100 m, then is seen 900 m away (beyond the order distance
    # plus the margin by his fixes, not by a fix a few seconds old): the alarm falls to a
    # pre-alert on his second fix out there, not on a sweep in between.
    r = Run()

    def minute(t: float, dist: float) -> list[AlarmEvent]:
        out = r.second(t, fix("o", offset(*HOME, 90.0, dist), t), fix("v", HOME, t))
        for s in range(1, 60):  # the service's sweeps between the fixes
            out += r.second(t + s)
        return out

    events = minute(0.0, 3000.0) + minute(60.0, 100.0) + minute(120.0, 100.0)
    assert any(e.level >= AlarmLevel.ALARM for e in events)
    assert minute(180.0, 900.0) == []  # the first fix out there starts the dwell
    [ev] = r.second(240.0, fix("o", offset(*HOME, 90.0, 900.0), 240.0), fix("v", HOME, 240.0))
    assert (ev.state, ev.level, ev.previous_level) == (
        AlarmState.UPDATE,
        AlarmLevel.PRE_ALERT,
        AlarmLevel.ESCALATION,
    )
    assert ev.cause == "fix"
