"""Pursuit mode (proximity.pursuit) in the engine, on an injected clock: who is asked, when,
how often, what the alarm says, and that the decisions do not depend on batching."""

from __future__ import annotations

from dataclasses import replace

from ingest.batch import build_batch
from ingest.model import Fix
from proximity.cases import Device
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType
from proximity.pursuit import Command
from proximity.rules import RuleConfig
from tests.naive import offset
from tests.test_engine import HOME, T0, Clock, case

OWN_S = 60.0
RULES = RuleConfig(dwell_s=0.0, implausible_speed_mps=1e9)
NEAR = offset(*HOME, 90.0, 100.0)
FAR = offset(*HOME, 90.0, 5000.0)


class Loop:
    """The engine fed like the service: fixes at their arrival, a sweep every second."""

    def __init__(self, rules: RuleConfig = RULES, devices: list[Device] | None = None) -> None:
        self.clock = Clock(T0)
        if devices is None:
            devices = [Device(d, {"reporting_interval_s": OWN_S}) for d in ("o", "v")]
        self.eng = Engine([case("C", ("o",), ("v",))], devices, rules=rules, clock=self.clock)
        self.events: list[AlarmEvent] = []
        self.commands: list[Command] = []

    def at(self, t: float, *fixes: tuple[str, tuple[float, float]], sweep: bool = True) -> None:
        self.clock.t = T0 + t
        if fixes:
            batch, _ = build_batch(
                [Fix(d, T0 + t, T0 + t, p[0], p[1], 5.0) for d, p in fixes], self.eng.slot_of
            )
            self.events += self.eng.process(batch)
        if sweep:
            self.events += self.eng.sweep(T0 + t)
        self.commands += self.eng.pursuit.take()

    def asked(self, device: str) -> list[Command]:
        return [c for c in self.commands if c.device == device]


def _breach(loop: Loop, until: float, victim_obeys: bool = False) -> None:
    """Both report every second; from t=10 he is 100 m from her (his tag's fixes confirm his
    sudden arrival); once she is asked, her phone reports every 5 s if it obeys, and never
    again otherwise."""
    loop.at(0, ("v", HOME), ("o", FAR))
    for t in range(1, int(until)):
        fixes: list[tuple[str, tuple[float, float]]] = [("o", NEAR if t >= 10 else FAR)]
        if not loop.asked("v") or (victim_obeys and t % 5 == 0):
            fixes.append(("v", HOME))
        loop.at(t, *fixes)


def test_an_alarm_asks_both_devices_to_report_faster_and_escalation_asks_for_a_fix_now() -> None:
    loop = Loop()
    _breach(loop, 40)
    alarm = next(e for e in loop.events if e.level >= AlarmLevel.ALARM)
    for dev in ("o", "v"):
        first = loop.asked(dev)[0]
        assert (first.kind, first.interval_s, first.mode) == ("report_interval", 10.0, "mqtt")
        assert first.issued == alarm.t_decided
        assert first.until == first.issued + RULES.pursuit_lease_s
        assert first.case_ids == ("C",)
    assert alarm.pursuit is not None and alarm.pursuit.active and not alarm.pursuit.not_possible
    assert [d.device for d in alarm.pursuit.devices] == ["o", "v"]
    assert all(d.asked_interval_s == 10.0 for d in alarm.pursuit.devices)
    # 100 m of a 500 m order is certainly within the escalation distance: a fix now.
    if any(e.level == AlarmLevel.ESCALATION for e in loop.events):
        assert {c.kind for c in loop.commands} == {"report_interval", "report_now"}


def test_a_pre_alert_alone_starts_no_pursuit() -> None:
    loop = Loop()
    loop.at(0, ("v", HOME), ("o", offset(*HOME, 90.0, 800.0)))  # within the warning band
    for t in range(1, 30):
        loop.at(t)
    assert any(e.level == AlarmLevel.PRE_ALERT for e in loop.events)
    assert loop.commands == [] and all(e.pursuit is None for e in loop.events)


def test_unacknowledged_commands_are_sent_again_then_a_health_alarm_names_the_device() -> None:
    loop = Loop()
    _breach(loop, 100)
    sends = [c.send for c in loop.asked("v") if c.kind == "report_interval"]
    assert sends[:3] == [1, 2, 3]  # pursuit_sends, one per ack timeout
    ids = {c.command_id for c in loop.asked("v") if c.kind == "report_interval"}
    assert len(ids) == 1  # the same command again: a device takes it once
    ignored = [e for e in loop.events if e.type == AlarmType.PURSUIT_IGNORED]
    # Neither acknowledged; his tag reports every second all the same (the pace is what the
    # police need), her phone never again: it alone is named.
    assert {e.device for e in ignored} == {"v"}
    assert all(e.state == AlarmState.OPEN and e.level == AlarmLevel.PRE_ALERT for e in ignored)
    assert all("ignores pursuit" in e.reason for e in ignored)


def test_an_acknowledged_obeyed_pursuit_is_left_alone_and_restored_after_the_tail() -> None:
    loop = Loop()
    loop.at(0, ("v", HOME), ("o", FAR))
    taken = 0
    for t in range(1, 400):
        here = NEAR if 10 <= t < 100 else FAR
        # Every second until asked (his arrival is confirmed), then every 5 s, as asked.
        pace = 5 if loop.commands else 1
        loop.at(t, *((("o", here), ("v", HOME)) if t % pace == 0 else ()))
        for cmd in loop.commands[taken:]:  # each acknowledged as it comes
            assert loop.eng.pursuit.acknowledged(cmd.device, cmd.command_id, T0 + t + 0.2)
        taken = len(loop.commands)
    asks = [c for c in loop.commands if c.kind == "report_interval" and c.until is not None]
    assert [(c.device, c.send) for c in asks] == [("o", 1), ("v", 1)]
    assert not [e for e in loop.events if e.type == AlarmType.PURSUIT_IGNORED]
    # He left: once the alarm has ended, pursuit_tail_s later both get their own interval.
    end = next(
        e for e in loop.events if e.state == AlarmState.ENDED and e.type == AlarmType.PROXIMITY
    )
    assert end.pursuit is not None  # the end says pursuit is (still) on, for the tail
    shown = {d.device: d for d in end.pursuit.devices}
    assert shown["o"].acknowledged and shown["o"].cadence_s == 5.0
    back = [c for c in loop.commands if c.kind == "report_interval" and c.until is None]
    assert [(c.device, c.interval_s, c.send) for c in back] == [("o", OWN_S, 1), ("v", OWN_S, 1)]
    tail = RULES.pursuit_tail_s
    assert all(end.t_decided + tail <= c.issued <= end.t_decided + tail + 1 for c in back)
    assert loop.eng.pursuit.in_pursuit() == set() and loop.eng.pursuit.chases == {}


def test_a_device_that_already_reports_fast_is_not_slowed_nor_asked() -> None:
    devices = [
        Device("o", {"reporting_interval_s": 1.0}),
        Device("v", {"reporting_interval_s": 1.0}),
    ]
    loop = Loop(devices=devices)
    _breach(loop, 40)
    alarm = next(e for e in loop.events if e.level >= AlarmLevel.ALARM)
    assert loop.commands == []
    assert alarm.pursuit is not None and alarm.pursuit.active
    assert all(d.asked_interval_s is None for d in alarm.pursuit.devices)


def test_an_http_only_device_cannot_be_commanded_and_the_alarm_says_so() -> None:
    devices = [
        Device("o", {"reporting_interval_s": OWN_S, "osmand": {"secret": "x" * 12}}),
        Device("v", {"reporting_interval_s": OWN_S, "owntracks": {"user": "u", "device": "d"}}),
    ]
    loop = Loop(devices=devices)
    _breach(loop, 40)
    alarm = next(e for e in loop.events if e.level >= AlarmLevel.ALARM)
    assert alarm.pursuit is not None and alarm.pursuit.not_possible == ("o",)
    assert {c.device for c in loop.commands} == {"v"}
    assert {c.mode for c in loop.commands} == {"owntracks"}
    # The OwnTracks app cannot acknowledge: only its silence can show it ignores pursuit,
    # and no native ack is waited for.
    assert next(c.send for c in loop.asked("v") if c.kind == "report_interval") == 1


def test_pursuit_can_be_switched_off() -> None:
    loop = Loop(rules=replace(RULES, pursuit=False))
    _breach(loop, 40)
    assert any(e.level >= AlarmLevel.ALARM for e in loop.events)
    assert loop.commands == [] and all(e.pursuit is None for e in loop.events)


def _run(batched: bool) -> list[tuple[str, str, float, int, float | None]]:
    """The same fixes each second, both devices' in one batch or each in its own: the
    commands decided."""
    loop = Loop()
    loop.at(0, ("v", HOME), ("o", FAR))
    for t in range(1, 120):
        fixes: list[tuple[str, tuple[float, float]]] = [("o", NEAR if 10 <= t < 60 else FAR)]
        if t % 3 == 0:
            fixes.append(("v", HOME))
        if batched:
            loop.at(t, *fixes)
        else:
            for f in fixes:
                loop.at(t, f, sweep=False)
            loop.at(t)
    return [(c.device, c.kind, c.issued, c.send, c.interval_s) for c in loop.commands]


def test_the_commands_do_not_depend_on_how_the_fixes_were_batched() -> None:
    one = _run(True)
    assert one == _run(False)
    assert {k for _, k, *_ in one} >= {"report_interval"}  # there were commands to compare


def test_a_restart_puts_the_devices_of_open_alarms_back_in_pursuit() -> None:
    # Pursuit is not saved: the restarted engine's open alarms (restored from the journal)
    # ask their devices again, at the restart.
    loop = Loop()
    _breach(loop, 40)
    book = loop.eng.book
    still = [e for a in book.order if book.still_open(a) and (e := book.last(a)) is not None]
    fresh = Loop()
    assert fresh.eng.pursuit.resume(still, T0 + 50) == 2
    asked = {(c.device, c.kind, c.issued) for c in fresh.eng.pursuit.take()}
    assert asked == {("o", "report_interval", T0 + 50), ("v", "report_interval", T0 + 50)}
