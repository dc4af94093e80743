"""``proximity demo``: the whole flow on embedded defaults, in about a minute.

A private Mosquitto on a free port, a temporary SQLite registry with generated cases, the
engine as its own process (``proximity run``, exactly as deployed), simulated devices
publishing fixes, and a CIC-side listener that prints alarms as they arrive and measures the
latency from a fix's publication to the alarm it caused.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from proximity.cases import parse_case_file
from proximity.clock import now as clock_now
from proximity.errors import ProximityError
from simulator.broker import LocalBroker
from simulator.fleet import Fleet
from simulator.process import EngineProcess
from simulator.scenario import generate
from storage.registry import Registry

PROGRESS_EVERY_S = 10.0


@dataclass
class DemoOptions:
    duration_s: float = 60.0
    pairs: int = 24
    interval_s: float = 1.0
    seed: int = 7
    quiet: bool = False


@dataclass
class _Listener:
    """The CIC side: collects alarms and the engine's status."""

    alarms: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with self.lock:
            if msg.topic == "proximity/status":
                self.status = body
            elif msg.topic == "cic/alarms":
                self.alarms.append((arrived, body))


#: The headings of the summary's lines, in the order printed ("zones" only with zones).
SUMMARY_HEADINGS = ("simulated", "fixes", "rejected", "alarms", "ground truth", "zones", "latency")


def alarm_line(elapsed_s: float, a: dict[str, Any], latency_ms: float) -> str:
    """The line the demo prints for alarm message ``a``, received ``elapsed_s`` after the
    devices started, ``latency_ms`` after the fix that caused it was published (NaN: not
    known). The README's sample is held to this format by a test."""
    verdict = str(a.get("classification") or "").replace("_breach", "")
    cause = (
        f"latency {latency_ms:.1f} ms"
        if a["trigger"].get("cause") == "fix"
        else "(sweep: no new fix)"
    )
    p = a["probability"] if a["probability"] is not None else float("nan")
    if a.get("zone"):
        inside = a["zone_inside_m"]
        side = f"{inside:.0f} m inside" if inside >= 0 else f"{-inside:.0f} m outside"
        where = (
            f"{a['offender']['device']} {side} {a['zone_kind']} zone"
            f' "{a["zone"]}" +-{a["uncertainty_m"] or 0:.0f}'
        )
    else:
        where = (
            f"{a['offender']['device']} -> {a['victim']['device']}"
            f"  {a['distance_m']:6.0f} m +-{a['uncertainty_m'] or 0:.0f}"
            f" (order {a['order_distance_m']:.0f} m)"
        )
    return (
        f"  {elapsed_s:6.1f}s  {a['type'].upper():9s} {a['state'].upper():6s}"
        f" {a['level']:10s} {a['case_id']}  {where} {verdict:8s} p={p:.2f}  {cause}"
    )


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def run_demo(opts: DemoOptions) -> int:
    if opts.pairs < 1 or opts.duration_s <= 0 or opts.interval_s <= 0:
        print("error: --pairs, --duration and --interval must be positive", file=sys.stderr)
        return 2
    say = (lambda *a: None) if opts.quiet else print
    work = Path(tempfile.mkdtemp(prefix="proximity-demo-"))
    engine: EngineProcess | None = None
    broker = LocalBroker(work)
    monitor = make_client("")
    try:
        broker.start()
        say(
            f"broker     Mosquitto at {broker.url} (private, loopback, no TLS or accounts: a"
            " deployment secures it with 'proximity broker config', docs/security.md)"
        )

        scenario = generate(opts.pairs, opts.duration_s, seed=opts.seed)
        case_path = work / "cases.json"
        case_path.write_text(json.dumps(scenario.case_file(), indent=2))
        db = work / "registry.sqlite"
        with Registry(db) as registry:
            registry.import_file(parse_case_file(scenario.case_file(), str(case_path)))
        kinds = Counter(k.split("/")[0] for k in scenario.kinds.values())
        say(
            f"registry   {len(scenario.cases)} generated cases in {db}: "
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        )

        listener = _Listener()
        monitor.on_message = listener.on_message
        connect(monitor, parse_broker_url(broker.url))
        monitor.subscribe([("cic/alarms", 1), ("proximity/status", 1)])

        say("engine     starting 'proximity run' (the first start compiles the kernels) ...")
        engine = EngineProcess(broker.url, db, work / "engine.log", "--status-interval-s", "1")
        try:
            engine.start()
        except RuntimeError as exc:
            raise ProximityError(str(exc)) from exc
        say(
            f"engine     online: {engine.status.get('pairs')} pairs of"
            f" {engine.status.get('devices')} devices"
        )

        fleet = Fleet(scenario, parse_broker_url(broker.url), opts.interval_s, opts.seed)
        say(
            f"devices    {len(scenario.tracks)} simulated devices, one fix every"
            f" {opts.interval_s:g} s for {opts.duration_s:g} s\n"
        )
        printed = 0
        next_progress = PROGRESS_EVERY_S
        injected = False
        t0 = time.perf_counter()

        def on_tick(now: float) -> None:
            nonlocal printed, next_progress, injected
            with listener.lock:
                new = listener.alarms[printed:]
                printed = len(listener.alarms)
            for arrived, a in new:
                say(alarm_line(arrived - t0, a, _latency_ms(fleet, arrived, a)))
            if not injected and now > opts.duration_s / 3:
                injected = True
                # Bad input must be rejected with a reason and never stop the engine.
                fleet.publish_raw("devices/tag-001/fix", b"{not json")
                fleet.publish_raw("devices/tag-001/fix", b'{"ts": 1, "lat": 95.0, "lon": 4.3}')
                fleet.publish_raw(
                    "devices/unknown-99/fix",
                    orjson.dumps({"ts": clock_now(), "lat": 50.8, "lon": 4.3, "acc": 5}),
                )
                say(f"  {now:6.1f}s  (published 3 malformed messages: the engine must reject them)")
            if now >= next_progress:
                next_progress += PROGRESS_EVERY_S
                say(
                    f"  {now:6.1f}s  ... {fleet.published} fixes published,"
                    f" {len(listener.alarms)} alarm messages so far"
                )

        stop = threading.Event()
        fleet.run(stop, on_tick)
        # Let the last alarms and a fresh status message arrive.
        end = time.time()
        settle = time.monotonic() + 5.0
        while time.monotonic() < settle:
            with listener.lock:
                st = listener.status
            if st.get("messages_received", 0) >= fleet.published + 3 and _status_time(st) > end:
                break
            time.sleep(0.1)
        on_tick(opts.duration_s)
        _summary(opts, scenario, fleet, listener)
        return 0
    finally:
        disconnect(monitor)
        if engine is not None:
            engine.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def _status_time(st: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(st["time"]).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _latency_ms(fleet: Fleet, arrived: float, alarm: dict[str, Any]) -> float:
    trig = alarm.get("trigger") or {}
    if trig.get("cause", "fix") != "fix":
        return float("nan")  # decided by the sweep, not by a fix: no fix-to-alarm latency
    device, seq = trig.get("device"), trig.get("seq")
    if not isinstance(device, str) or not isinstance(seq, int):
        return float("nan")
    sent = fleet.sent.get((device, seq))
    return (arrived - sent) * 1000.0 if sent is not None else float("nan")


def _high(alarm: dict[str, Any]) -> bool:
    return alarm.get("level") in ("alarm", "escalation")


def _summary(opts: DemoOptions, scenario: Any, fleet: Fleet, listener: _Listener) -> None:
    with listener.lock:
        alarms = list(listener.alarms)
        st = dict(listener.status)
    states = Counter(a["state"] for _, a in alarms)
    lat = [x for x in (_latency_ms(fleet, t, a) for t, a in alarms) if x == x]
    truth = scenario.truth()
    breached = {p.case_id for p in truth if p.breached}
    pair_alarms = [a for _, a in alarms if a["type"] == "proximity"]
    # An alarm proper: a message at level alarm or escalation (a pre-alert is not one).
    raised = [a for a in pair_alarms if a["state"] in ("open", "update") and _high(a)]
    alarmed = {a["case_id"] for a in raised}
    pre_alerted = {a["case_id"] for a in pair_alarms if a["state"] == "open"}
    certain = {a["case_id"] for a in raised if a.get("classification") == "certain_breach"}
    types = Counter(a["type"] for _, a in alarms if a["state"] == "open")
    zone_truth = scenario.zone_truth()
    entered = {(z.case_id, z.label) for z in zone_truth if z.entered}
    zone_alarmed = {
        (a["case_id"], a["zone"])
        for _, a in alarms
        if a.get("zone") and a["state"] in ("open", "update") and _high(a)
    }
    rejected = st.get("rejected", {})
    print("\nSummary")
    print(
        f"  simulated      {len(scenario.cases)} cases, {len(scenario.tracks)} devices,"
        f" {opts.duration_s:g} s, one fix every {opts.interval_s:g} s per device"
    )
    print(
        f"  fixes          {fleet.published} published, {st.get('fixes_processed', '?')} processed"
        f" by the engine in {st.get('batches', '?')} batches (largest {st.get('max_batch', '?')})"
    )
    print(
        f"  rejected       {st.get('rejected_total', 0)}"
        + (
            " (" + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) + ")"
            if rejected
            else ""
        )
    )
    print(
        f"  alarms         {states.get('open', 0)} opened ("
        + ", ".join(f"{k} {v}" for k, v in sorted(types.items()))
        + f"), {states.get('update', 0)} updates, {states.get('ended', 0)} ended"
        f" ({len(alarms)} messages on cic/alarms)"
    )
    print(
        f"  ground truth   {len(breached)} pairs came within their order distance;"
        f" alarmed {len(breached & alarmed)} of them; alarms on pairs that never did:"
        f" {len(alarmed - breached)} ({len((alarmed - breached) & certain)} of them certain);"
        f" pre-alerts on those: {len(pre_alerted - breached)}"
    )
    if zone_truth:
        print(
            f"  zones          {len(entered)} of {len(zone_truth)} zones were entered;"
            f" alarmed {len(entered & zone_alarmed)} of them; zone alarms on zones never"
            f" entered: {len(zone_alarmed - entered)}"
        )
    if lat:
        print(
            f"  latency        fix published -> alarm received: p50 {_pct(lat, 50):.1f} ms,"
            f" p95 {_pct(lat, 95):.1f} ms, max {max(lat):.1f} ms (n={len(lat)})"
        )
    else:
        print("  latency        no alarms, nothing to measure")
