"""Batching invariance: the same messages give the same decisions however they are batched.

A busy engine takes what piled up while it worked (large batches, late), a quiet one each
message at once. Generated streams of fixes (out of order, duplicated, with multipath jumps
and gaps, from devices shared between cases, with exclusion and curfew zones whose schedule
changes during the stream), device events and operator actions are fed to the engine one
message at a time, in random batches with random horizons, and all at once, with the sweeps
of the grid in between (:class:`proximity.timeline.Timeline`, the service's own code path):
every alarm gets the same events in the same order, field by field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofence.model import circle, feature_collection
from ingest.model import DeviceEvent, Fix, OperatorAction
from proximity.cases import Case, Device
from proximity.engine import Engine
from proximity.events import AlarmEvent, AlarmState
from proximity.rules import RuleConfig
from proximity.timeline import Item, SweepGrid, Timeline
from tests.conftest import T0
from tests.naive import offset
from tests.test_engine import HOME, Clock

# T0 is 11:00 in Brussels: the curfew below starts 90 s into the stream.
SWEEP_S = 2.0
RULES = RuleConfig(
    confirm_s=5.0,
    dwell_s=8.0,
    escalate_after_s=40.0,
    renotify_s=25.0,
    reporting_interval_s=4.0,
    signal_grace_s=4.0,
    approach_hold_s=2.0,
    probe_min_gap_s=0.0,
    probe_window_s=300.0,
)
DEVICES = ("o1", "o2", "v1", "v2")
#: Where each device's walk centres.
CENTRES = {
    "o1": offset(*HOME, 0.0, 700.0),
    "o2": offset(*HOME, 240.0, 900.0),
    "v1": HOME,
    "v2": offset(*HOME, 90.0, 600.0),
}


def _cases() -> list[Case]:
    lat, lon = offset(*HOME, 30.0, 450.0)
    work = circle(lon, lat, 120, kind="exclusion", label="work")
    work["properties"]["warning_m"] = 80
    lat, lon = CENTRES["o1"]
    home = circle(lon, lat, 150, kind="inclusion", label="his home")
    home["properties"]["schedule"] = {
        "timezone": "Europe/Brussels",
        "weekly": [{"start": "11:01:30", "end": "11:04:00"}],
    }
    return [
        Case("A", ("o1",), ("v1",), 500.0, 900.0, zones=feature_collection([work, home])),
        Case("B", ("o2",), ("v1",), 400.0, 800.0),  # v1 protected from two offenders
        Case("C", ("o1",), ("v2",), 300.0, 600.0),  # o1 in two cases
    ]


class Recording(Engine):
    """The engine, resolving operator actions on "opened#k" to the k-th of the alarms it has
    opened so far, in the order of their ids (a stream is generated before any alarm id is
    known; within a batch the engine may report independent alarms in another order)."""

    def __init__(self, clock: Clock) -> None:
        devices = [Device(d, {"reporting_interval_s": 4}) for d in DEVICES]
        super().__init__(_cases(), devices, rules=RULES, clock=clock)
        self.opened: set[str] = set()

    def _resolve(self, alarm_id: str) -> str:
        if not alarm_id.startswith("opened#") or not self.opened:
            return alarm_id
        return sorted(self.opened)[int(alarm_id[7:]) % len(self.opened)]

    def acknowledge(self, alarm_id: str, operator: str, note: str = "") -> list[AlarmEvent]:
        return super().acknowledge(self._resolve(alarm_id), operator, note)

    def close(
        self, alarm_id: str, operator: str, reason: str, resolution: str = ""
    ) -> list[AlarmEvent]:
        return super().close(self._resolve(alarm_id), operator, reason, resolution)

    def _remember(self, events: Sequence[AlarmEvent]) -> None:
        super()._remember(events)
        self.opened |= {e.alarm_id for e in events if e.state == AlarmState.OPEN}


def make_stream(rng: np.random.Generator, n: int) -> list[Item]:
    """``n`` messages in arrival order, each stamped on arrival (``t_recv``)."""
    t = T0 + float(rng.uniform(0.0, 20.0))
    out: list[Item] = []
    reach = {d: float(rng.uniform(0.0, 1.0)) for d in DEVICES}  # how far each walk strays
    # Some streams: o2 walks straight at v1 (an approach), reporting most.
    approach = rng.uniform() < 0.4
    weights = [0.15, 0.45, 0.3, 0.1] if approach else [0.25] * 4
    gaps = [0.0, 0.05, 0.4, 1.0, 1.0, 2.0] if approach else [0.0, 0.0, 0.05, 0.4, 1, 2, 4, 13]
    for seq in range(n):
        # Simultaneous arrivals, bursts, seconds apart, and silences past the grace.
        t += float(rng.choice(gaps))
        dev = str(rng.choice(DEVICES, p=weights))
        kind = rng.uniform()
        if kind < 0.04:
            out.append(DeviceEvent(dev, str(rng.choice(["panic", "tamper"])), t - 0.1, t))
            continue
        if kind < 0.09:
            action = "close" if rng.uniform() < 0.3 else "acknowledge"
            target = f"opened#{rng.integers(0, 5)}" if rng.uniform() < 0.9 else "no-such-alarm"
            out.append(OperatorAction(target, "desk 4", action, "note", t - 0.2, t))
            continue
        # A fix taken a little before it arrived (sometimes much before: late, out of
        # order), a few metres to a kilometre from where the walk centres, now and then a
        # multipath jump, with unknown accuracy sometimes.
        delay = float(rng.choice([0.0, 0.2, 0.9, 1.5, 9.0]))
        if rng.uniform() < 0.05 and out:
            prev = out[int(rng.integers(0, len(out)))]
            if isinstance(prev, Fix):  # the same fix again (a duplicate)
                out.append(replace(prev, t_recv=t))
                continue
        bearing = float(rng.uniform(0.0, 360.0))
        dist = float(rng.uniform(0.0, 1200.0 * reach[dev]))
        if approach and dev == "o2":
            dist = float(rng.uniform(0.0, 6.0))  # noise around his walk at 5 m/s
        if rng.uniform() < 0.06:
            dist += 400.0  # a jump
        centre = CENTRES[dev]
        if approach and dev == "o2":
            centre = offset(*HOME, 240.0, max(150.0, 1000.0 - 5.0 * (t - delay - T0)))
        lat, lon = offset(*centre, bearing, dist)
        acc = float(rng.choice([4.0, 8.0, 15.0, 40.0, math.nan]))
        out.append(Fix(dev, t - delay, t, lat, lon, acc, seq=seq))
    return out


def _feed(items: list[Item], cuts: list[int], horizons: list[float]) -> list[AlarmEvent]:
    """Feed the stream in the batches ``items[cuts[k]:cuts[k+1]]``, each with its horizon,
    then a last horizon well after the stream; return every event."""
    clock = Clock(T0)
    eng = Recording(clock)
    timeline = Timeline(eng, SweepGrid(SWEEP_S, T0))
    events: list[AlarmEvent] = []
    for lo, hi, horizon in zip(cuts[:-1], cuts[1:], horizons, strict=True):
        clock.t = horizon  # the engine's clock only times the decisions, it makes none
        for seg in timeline.step(items[lo:hi], horizon):
            events += seg.alarms
    end = items[-1].t_recv + 60.0
    clock.t = end
    for seg in timeline.step([], end):
        events += seg.alarms
    return events


def _decisions(events: list[AlarmEvent]) -> dict[str, list[str]]:
    """Each alarm's events in order, every field but the moment the engine got to them."""
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.alarm_id, []).append(repr(replace(e, t_decided=0.0)))
    return out


def _horizon(items: list[Item], hi: int, rng: np.random.Generator) -> float:
    """Somewhere from the last handed-out stamp up to the next message's stamp."""
    last = items[hi - 1].t_recv
    nxt = items[hi].t_recv if hi < len(items) else last + 5.0
    return float(rng.uniform(last, nxt)) if nxt > last else last


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(10, 70), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_the_same_messages_give_the_same_decisions_however_they_are_batched(
    n: int, stream: int, seed: int
) -> None:
    items = make_stream(np.random.default_rng(stream), n)
    rng = np.random.default_rng(seed)
    one_by_one = _feed(items, list(range(n + 1)), [i.t_recv for i in items])
    cuts = sorted({0, n, *rng.integers(1, n, size=int(rng.integers(1, max(2, n // 3)))).tolist()})
    random = _feed(items, cuts, [_horizon(items, hi, rng) for hi in cuts[1:]])
    at_once = _feed(items, [0, n], [items[-1].t_recv])
    assert _decisions(random) == _decisions(one_by_one)
    assert _decisions(at_once) == _decisions(one_by_one)


def test_the_streams_raise_every_kind_of_decision() -> None:
    """The property above is not vacuous: such streams open, raise, lower and end alarms of
    pairs, zones, curfews and silence, panics, and operator acknowledgements and closings,
    with batches holding several fixes of devices that share pairs."""
    seen: set[tuple[str, str]] = set()
    rng = np.random.default_rng(5)
    for _ in range(40):
        items = make_stream(rng, 70)
        for e in _feed(items, [0, len(items)], [items[-1].t_recv]):
            seen.add((e.type.name, e.state.name))
    kinds = {k for k, _ in seen}
    assert {"PROXIMITY", "APPROACH", "ZONE", "CURFEW", "SIGNAL_LOST", "PANIC"} <= kinds, kinds
    states = {s for _, s in seen}
    assert {"OPEN", "UPDATE", "ENDED", "ACKNOWLEDGED", "CLOSED"} <= states, states
