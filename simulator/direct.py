"""Evaluation without the transport: the engine in this process, fed the fixes directly.

A false alarm rate of 0.05 per pair-day is shown only by dozens of pair-days without one
(none in 60 pair-days bounds it below 0.05 at 95 %). Through the broker that is hours of
publishing; here the same scenarios, the same :class:`proximity.engine.Engine` with the same
settings, the same simulated operator and the same scoring run as fast as the engine goes.

What differs from a run through the broker, and why it does not change the verdicts: every
fix arrives :data:`RECEIVE_DELAY_S` after it was taken (through the broker, whatever the
transport took); the fixes are handed to the engine in chunks of :data:`BATCH_S` of scenario
time, split, as the service splits what it drains, at the sweeps of the grid and at the
simulated operator's acknowledgements (:mod:`proximity.timeline`), so the decisions are those
of the fixes one at a time. Nothing measures the transport: end-to-end latency is not
reported (a run through the broker measures it), and stalls of the machine cannot become
scenario minutes without fixes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cic.commands import command_message
from cic.messages import alarm_message
from ingest.batch import FixBatch
from proximity.cases import parse_case_file
from proximity.clock import iso_utc
from proximity.clock import now as clock_now
from proximity.events import AlarmEvent
from proximity.timeline import SweepGrid
from service.run import engine_for
from service.settings import Settings
from simulator.families import Suite
from simulator.runs import (
    DEVICE_SETTINGS,
    Cic,
    DevicePaces,
    EvalOptions,
    Progress,
    RunResult,
    Schedule,
    hms,
)
from storage.registry import Registry

#: Scenario seconds of fixes per batch.
BATCH_S = 0.5
#: A fix reaches the engine this long after it was taken (seconds).
RECEIVE_DELAY_S = 0.05


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_direct(
    opts: EvalOptions,
    suite: Suite,
    schedule: Schedule,
    work: Path,
    settings: dict[str, str],
    say: Callable[..., None],
) -> RunResult:
    """One run of the whole schedule through an in-process engine (see the module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    engine_settings = {k: v for k, v in settings.items() if k not in DEVICE_SETTINGS}
    conf = Settings(db=work / "registry.sqlite", **engine_settings)  # type: ignore[arg-type]
    doc = suite.case_file()
    with Registry(conf.db) as registry:
        registry.import_file(parse_case_file(doc, str(work / "cases.json")))
        cases = registry.cases()
        devices = registry.devices()
    # The scenario's clock starts on a whole second of today (on the engine's clock: see
    # proximity.clock), like a run through the broker.
    epoch = float(int(clock_now()))
    clock = _Clock(epoch)
    engine = engine_for(conf, cases, devices, clock)
    by_id = {c.id: c for c in cases}
    cic = Cic([c.id for c in suite.cases])
    sc = schedule
    slot = np.array([engine.slot_of[d] for d in sc.devices], dtype=np.int64)
    acks: list[tuple[float, str]] = []  # (scenario seconds, alarm id)
    progress = Progress(opts.quiet)
    wall0 = time.time()

    paces = DevicePaces(sc.devices, epoch, sc.t.size)
    sent_rows = np.zeros(sc.t.size, dtype=bool)

    def take(events: list[AlarmEvent]) -> None:
        engine.incidents.take()  # the incidents' own messages: not scored (their ids are)
        # The pursuit's commands reach the devices, which obey and acknowledge them as
        # they arrive (RECEIVE_DELAY_S later).
        for cmd in engine.pursuit.take():
            if paces.take(cmd.device, command_message(cmd)):
                engine.pursuit.acknowledged(
                    cmd.device, cmd.command_id, cmd.issued + RECEIVE_DELAY_S
                )
        for e in events:
            m = alarm_message(e, by_id[e.case_id])
            m["times"]["published"] = iso_utc(clock.t)
            cic.take(m, time.time())
        acks.extend((t - epoch + opts.ack_after_s, a) for a, t in cic.new_alarms)
        cic.new_alarms.clear()

    n = sc.t.size
    sent = 0
    i = 0
    t_end = suite.duration_s + BATCH_S
    # The service's timeline: fixes decided at their arrival, sweeps on the grid of the
    # clock (the first at the scenario's start) after every fix that arrived before them.
    grid = SweepGrid(conf.sweep_interval_s, epoch - conf.sweep_interval_s)
    k = 0

    def fixes(rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        t_fix = epoch + sc.t[rows]
        clock.t = float(t_fix[-1]) + RECEIVE_DELAY_S
        batch = FixBatch(
            slot[sc.dev[rows]],
            sc.lat[rows],
            sc.lon[rows],
            sc.acc[rows],
            t_fix,
            t_fix + RECEIVE_DELAY_S,
            paces.number(sc, rows),
        )
        take(engine.process(batch))

    while i < n or k * BATCH_S < t_end:
        hi = (k + 1) * BATCH_S
        k += 1
        j = int(np.searchsorted(sc.t, hi, side="right"))
        rows = np.arange(i, j)
        # Faster reports only while the device is asked for them (pursuit mode).
        rows = paces.sent(sc, rows)
        sent_rows[rows] = True
        sent += int(rows.size)
        i = j
        # Every fix of this chunk has arrived by the horizon, and none of the next.
        horizon = epoch + hi + RECEIVE_DELAY_S
        due: list[tuple[float, str]] = [(at, "") for at in grid.take(horizon)]
        due += [(epoch + t_s, aid) for t_s, aid in acks if epoch + t_s <= horizon]
        acks = [a for a in acks if epoch + a[0] > horizon]
        arrived = epoch + sc.t[rows] + RECEIVE_DELAY_S
        pos = 0
        for at, aid in sorted(due):
            end = int(np.searchsorted(arrived, at, side="right"))
            fixes(rows[pos:end])
            pos = end
            clock.t = max(clock.t, at)
            if aid:
                take(engine.acknowledge(aid, "evaluation", "simulated operator"))
            else:
                take(engine.sweep(at))
        fixes(rows[pos:])
        if k % 200 == 0:
            progress.show(
                i / max(n, 1),
                f"scenario {hms(hi)} of {hms(suite.duration_s)}, {sent:,} fixes,"
                f" {len(cic.messages):,} alarm messages",
            )
    progress.show(1.0, f"{sent:,} fixes taken", force=True)
    progress.done()
    st = engine.stats
    say(f"  {sent:,} fixes in {time.time() - wall0:.0f} s ({st.batches:,} batches)")
    return RunResult(
        settings,
        suite,
        sc,
        list(cic.messages),
        np.full(n, np.nan),  # no transport: no latency
        epoch,
        0.0,  # as fast as it goes
        time.time() - wall0,
        sent,
        {
            "fixes_processed": st.fixes_applied,
            "fixes_implausible": st.fixes_implausible,
            "fixes_late": st.fixes_late,
            "fixes_duplicate": st.fixes_duplicate,
        },
        0.0,
        mode="direct",
        sent=sent_rows,
        commands=paces.commands,
        seq_of_row=paces.seq_of_row,
    )
