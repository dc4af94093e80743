"""``proximity evaluate``: scenarios through the real broker to the real engine, scored.

One run: a Mosquitto (private on a free port, or ``--broker``), a fresh SQLite registry with
the scenario cases, ``proximity run`` as its own process with a clock ``--speed`` times faster
than the wall's (:func:`service.run.scaled_clock`), and this process as both the
devices (publishing every fix on its device's schedule, QoS 1, as the engine's clock reaches
its time) and the CIC (collecting every alarm message, acknowledging each alarm as an
operator would after ``ack_after_s``). The alarms are then scored against the ground truth
(:mod:`simulator.metrics`) and written as a JSON summary and a report
(:mod:`simulator.report`).

A sweep repeats the run under several settings (any engine setting, and the devices'
reporting interval) on the same scenarios, and tabulates detection against false alarms.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from proximity.cases import parse_case_file
from proximity.clock import now as clock_now
from proximity.errors import ProximityError
from proximity.rules import RuleConfig
from service.settings import Settings
from simulator.broker import LocalBroker
from simulator.families import Suite, build_suite
from simulator.gnss import observe
from simulator.process import STATUS_TOPIC, EngineProcess
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
from simulator.scenario import to_latlon
from storage.registry import Registry

FIX_QOS = 1
ALARM_TOPIC = "cic/alarms"
ACK_TOPIC = "cic/acks"
#: The engine must be online this long before its clock starts (else the run restarts it
#: with a longer lead): the first start on a machine compiles the kernels.
FIRST_LEAD_S = 10.0
DRAIN_TIMEOUT_S = 60.0
#: Session expiry of the evaluation's own MQTT clients.
SESSION_S = 600


# --- the devices' reports -------------------------------------------------------------------


def pursuit_pace(settings: dict[str, str], interval_s: float) -> float | None:
    """The interval the engine's pursuit asks the devices for under ``settings`` (None: the
    devices already report as fast). The schedule has these faster reports whether pursuit
    is on or off (they are sent only when asked for), so that runs with it on and off see
    the same reports, with the same errors, at the devices' own interval."""
    pace = float(settings.get("pursuit_interval_s", RuleConfig().pursuit_interval_s))
    return pace if pace < interval_s else None


def build_schedule(suite: Suite, seed: int) -> Schedule:
    rng = np.random.default_rng([seed, 99])  # the devices' reporting phases
    case_index = {c.id: i for i, c in enumerate(suite.cases)}
    of_device = {}
    for c in suite.cases:
        of_device[c.offender] = case_index[c.id]
        of_device[c.victim] = case_index[c.id]
    cols: dict[str, list[Any]] = {k: [] for k in ("t", "dev", "seq", "lat", "lon", "acc", "fast")}
    devices = list(suite.devices)
    for i, d in enumerate(suite.devices.values()):
        if d.recorded is not None:  # a replayed recording: as recorded
            t, lat, lon, acc = d.recorded
            keep = np.ones(t.size, dtype=bool)
            fast = np.zeros(t.size, dtype=bool)
        else:
            case = suite.cases[of_device[d.id]]
            if d.reporting.own:  # its own pattern (bursts, power saving, its own interval)
                step, ratio = d.interval_s, 1
                t = d.reporting.times(case.start_s, case.end_s, np.random.default_rng([seed, i, 7]))
            else:
                step = d.alarm_interval_s or d.interval_s
                ratio = max(1, round(d.interval_s / step))
                phase = float(rng.uniform(0.0, d.interval_s))
                t = np.arange(case.start_s + phase, case.end_s, step)
            if not t.size:
                continue
            k = np.arange(t.size)
            obs = observe(d.error, t, np.random.default_rng([seed, i]))
            e = np.interp(t, d.track.t, d.track.east_m) + obs.de_m
            n = np.interp(t, d.track.t, d.track.north_m) + obs.dn_m
            lat, lon = to_latlon(suite.origin, e, n)
            acc, keep, fast = obs.acc_m, obs.sent, k % ratio != 0
        cols["t"].append(t[keep])
        cols["dev"].append(np.full(int(keep.sum()), i))
        # A device numbers the fixes it sends (a report it could not send takes no number):
        # the engine reads a gap in the numbers as fixes lost on the way.
        cols["seq"].append(np.arange(int(keep.sum())))
        cols["lat"].append(lat[keep])
        cols["lon"].append(lon[keep])
        cols["acc"].append(acc[keep])
        cols["fast"].append(fast[keep])
    t = np.concatenate(cols["t"])
    order = np.argsort(t, kind="stable")
    arr = {k: np.concatenate(v)[order] for k, v in cols.items()}
    lat, lon = arr["lat"], arr["lon"]
    index = []
    for i in range(len(devices)):
        mine = np.flatnonzero(arr["dev"] == i)
        ix = np.full(int(arr["seq"][mine].max()) + 1 if mine.size else 0, -1, dtype=np.int64)
        ix[arr["seq"][mine]] = mine
        index.append(ix)
    return Schedule(
        arr["t"],
        arr["dev"].astype(np.int64),
        arr["seq"].astype(np.int64),
        lat,
        lon,
        np.round(arr["acc"], 1),
        arr["fast"].astype(bool),
        devices,
        [of_device[d] for d in devices],
        index,
    )


def _flag(name: str) -> str:
    return "PROXIMITY_" + name.upper()


def run_once(
    opts: EvalOptions,
    suite: Suite,
    schedule: Schedule,
    broker_url: str,
    work: Path,
    settings: dict[str, str],
    label: str,
    say: Callable[..., None],
) -> RunResult:
    """One engine run over the whole schedule."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "registry.sqlite"
    doc = suite.case_file()
    (work / "cases.json").write_text(json.dumps(doc))
    with Registry(db) as registry:
        registry.import_file(parse_case_file(doc, str(work / "cases.json")))
    cic = Cic([c.id for c in suite.cases])
    # Both sides keep a session at the broker: a reconnect (the machine overloaded) loses
    # no alarm and no fix; the reconnections are counted in the results.
    tag = f"{label}-{uuid.uuid4().hex[:8]}"
    monitor = make_client(f"proximity-eval-cic-{tag}")
    monitor.on_message = cic.on_message
    monitor.on_disconnect = cic.on_disconnect
    broker = parse_broker_url(broker_url)
    connect(monitor, broker, clean_start=False, session_expiry_s=SESSION_S)
    monitor.subscribe([(ALARM_TOPIC, 1), (STATUS_TOPIC, 1)])
    devices = make_client(f"proximity-eval-devices-{tag}")
    devices.on_disconnect = cic.on_disconnect
    # The devices hear the engine's commands (pursuit mode), obey and acknowledge them; the
    # epoch is set when the engine's clock starts (below).
    paces = DevicePaces(schedule.devices, math.nan, schedule.t.size)

    def on_command(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[1]
        try:
            command = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(command, dict) and paces.take(device, command):
            ack = {"command_id": command["command_id"], "status": "ok"}
            client.publish(f"devices/{device}/cmd/ack", orjson.dumps(ack), qos=1)

    devices.on_message = on_command
    connect(devices, broker, clean_start=False, session_expiry_s=SESSION_S)
    devices.subscribe("devices/+/cmd", qos=1)
    env = {_flag(k): str(v) for k, v in settings.items() if k not in DEVICE_SETTINGS}
    lead = FIRST_LEAD_S
    engine: EngineProcess | None = None
    try:
        for _attempt in range(3):
            epoch = clock_now() + lead  # on the engine's clock (PROXIMITY_CLOCK_OFFSET_S)
            engine = EngineProcess(
                broker_url,
                db,
                work / "engine.log",
                "--status-interval-s",
                "1",
                "--client-id",
                f"proximity-eval-{label}-{int(epoch)}",
                "--time-scale",
                str(opts.speed),
                "--time-epoch",
                repr(epoch),
                env=env,
            )
            started = time.time()
            engine.start()
            if clock_now() < epoch - 0.5:
                break
            engine.stop()
            lead = 2 * lead + (time.time() - started)
            say(f"  the engine took {time.time() - started:.0f} s to start; again with more lead")
        else:
            raise ProximityError("the engine did not start in time, three times")
        say(
            f"  engine online: {engine.status.get('pairs')} pairs, clock x{opts.speed:g}"
            f" from {time.strftime('%H:%M:%S', time.localtime(epoch))}"
        )
        paces.epoch = epoch
        result = _publish(opts, suite, schedule, devices, cic, epoch, settings, engine, paces)
        result.commands = paces.commands
        result.seq_of_row = paces.seq_of_row
        # Drain: the engine has taken every fix, and its alarms have come.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            st = cic.status
            if (
                st.get("messages_received", 0) >= result.published
                and st.get("alarms_unacknowledged", 1) == 0
            ):
                break
            time.sleep(0.2)
        time.sleep(1.0)
        result.engine_status = dict(cic.status)
        result.disconnects = cic.disconnects
    finally:
        if engine is not None:
            engine.stop()
            # The engine's log, kept with the results.
            opts.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "engine.log", opts.out / f"engine-run{label}.log")
        disconnect(devices)
        disconnect(monitor)
    with cic.lock:
        result.messages = list(cic.messages)
    return result


def _publish(
    opts: EvalOptions,
    suite: Suite,
    sc: Schedule,
    client: mqtt.Client,
    cic: Cic,
    epoch: float,
    settings: dict[str, str],
    engine: EngineProcess,
    paces: DevicePaces,
) -> RunResult:
    x = opts.speed
    topics = [f"devices/{d}/fix" for d in sc.devices]
    acc = np.where(np.isfinite(sc.acc), sc.acc, 0.0)  # 0: unknown, as devices say it
    pub = np.full(sc.t.size, np.nan)
    progress = Progress(opts.quiet)
    n = sc.t.size
    i = 0
    published = 0
    lag_max = 0.0
    acks: list[tuple[float, str]] = []
    wall0 = time.time()
    while clock_now() < epoch:
        time.sleep(min(0.05, max(0.0, epoch - clock_now())))
    while i < n:
        now_s = (clock_now() - epoch) * x
        j = int(np.searchsorted(sc.t, now_s, side="right"))
        if j > i:
            rows = paces.sent(sc, np.arange(i, j))
            for r, seq in zip(rows.tolist(), paces.number(sc, rows).tolist(), strict=True):
                payload = orjson.dumps(
                    {
                        "ts": round(epoch + float(sc.t[r]), 3),
                        "lat": round(float(sc.lat[r]), 7),
                        "lon": round(float(sc.lon[r]), 7),
                        "acc": float(acc[r]),
                        "seq": seq,
                    }
                )
                pub[r] = time.time()
                client.publish(topics[sc.dev[r]], payload, qos=FIX_QOS)
                published += 1
            lag_max = max(lag_max, (clock_now() - epoch) * x - float(sc.t[j - 1]))
            i = j
        # The operator acknowledges each new alarm ack_after_s (scenario time) after it opened.
        with cic.lock:
            acks.extend((t - epoch + opts.ack_after_s, a) for a, t in cic.new_alarms)
            cic.new_alarms.clear()
        due = [a for a in acks if a[0] <= now_s]
        if due:
            acks = [a for a in acks if a[0] > now_s]
            for t_s, aid in due:
                client.publish(
                    ACK_TOPIC,
                    orjson.dumps(
                        {
                            "alarm_id": aid,
                            "operator": "evaluation",
                            "ts": round(epoch + t_s, 3),
                            "action": "acknowledge",
                            "note": "simulated operator",
                        }
                    ),
                    qos=1,
                )
        progress.show(
            i / n,
            f"scenario {hms(now_s)} of {hms(suite.duration_s)}, {published:,} fixes,"
            f" {len(cic.messages):,} alarm messages",
        )
        if engine.proc is not None and engine.proc.poll() is not None:
            raise ProximityError(
                f"the engine stopped during the run (exit code {engine.proc.returncode}):\n"
                + engine.log.read_text(errors="replace")[-3000:]
            )
        if i < n:
            wait = epoch + float(sc.t[i]) / x - clock_now()
            if wait > 0:
                time.sleep(min(wait, 0.05))
    progress.show(1.0, f"{published:,} fixes published", force=True)
    progress.done()
    return RunResult(
        settings,
        suite,
        sc,
        [],
        pub,
        epoch,
        x,
        time.time() - wall0,
        published,
        {},
        lag_max / x,
    )


# --- the command ----------------------------------------------------------------------------


def _combinations(sweep: dict[str, list[str]]) -> list[dict[str, str]]:
    if not sweep:
        return [{}]
    names = list(sweep)
    return [dict(zip(names, vals, strict=True)) for vals in itertools.product(*sweep.values())]


def check_settings(names: Sequence[str]) -> None:
    """Every name must be an engine setting or a device setting."""
    known = set(Settings.model_fields) | set(DEVICE_SETTINGS)
    bad = [n for n in names if n not in known]
    if bad:
        raise ProximityError(
            f"unknown setting(s) {', '.join(bad)}; engine settings are the names of"
            " 'proximity run --help' with underscores (confirm_s, margin_fraction, ...),"
            f" and the devices' is {', '.join(DEVICE_SETTINGS)}"
        )


def run_evaluation(opts: EvalOptions) -> dict[str, Any]:
    """Run the scenarios (once, or once per sweep combination); write the JSON summary and
    the report under ``opts.out``; return the summary."""
    from simulator.report import write_report

    say = (lambda *a: None) if opts.quiet else print
    check_settings([*opts.settings, *opts.sweep])
    combos = _combinations(opts.sweep)
    work = Path(tempfile.mkdtemp(prefix="proximity-eval-"))
    broker: LocalBroker | None = None
    runs: list[RunResult] = []
    try:
        if opts.direct:
            broker_url = ""
        elif opts.broker:
            broker_url = opts.broker
        else:
            broker = LocalBroker(work)
            broker.start()
            broker_url = broker.url
        where = broker_url or "none: the engine runs in this process (--direct)"
        if broker is not None:
            where += " (private, loopback, no TLS or accounts: for evaluation only)"
        say(f"broker     {where}")
        suites: dict[tuple[float, float | None], tuple[Suite, Schedule]] = {}
        for k, combo in enumerate(combos, start=1):
            settings = {**opts.settings, **combo}
            if opts.alarm_interval_s is not None:  # the pace pursuit asks for
                settings.setdefault("pursuit_interval_s", f"{opts.alarm_interval_s:g}")
            interval = float(settings.get("interval_s", opts.interval_s))
            # The devices' faster reports: at the pace pursuit asks for, sent while asked.
            fast_s = pursuit_pace(settings, interval)
            if (interval, fast_s) not in suites:
                suite = build_suite(opts.scenarios, opts.pairs, opts.seed, interval, fast_s)
                if opts.replay:
                    from simulator.replay import add_replays

                    add_replays(suite, opts.replay)
                suites[interval, fast_s] = (suite, build_schedule(suite, opts.seed))
            suite, schedule = suites[interval, fast_s]
            what = ", ".join(f"{a}={b}" for a, b in settings.items()) or "default settings"
            pace = (
                "as fast as the engine goes"
                if opts.direct
                else f"at x{opts.speed:g} (about {suite.duration_s / opts.speed / 60:.1f} min)"
            )
            say(
                f"run {k}/{len(combos)}  {what}: {len(suite.cases)} cases"
                f" ({', '.join(suite.families())}), {schedule.t.size:,} fixes over"
                f" {hms(suite.duration_s)} of scenario time {pace}"
            )
            if opts.direct:
                from simulator.direct import run_direct

                runs.append(run_direct(opts, suite, schedule, work / f"run{k}", settings, say))
            else:
                runs.append(
                    run_once(
                        opts, suite, schedule, broker_url, work / f"run{k}", settings, str(k), say
                    )
                )
        summaries = [r.summary() for r in runs]
        doc = {
            "command": "proximity " + " ".join(sys.argv[1:]) if sys.argv else "",
            "scenarios": opts.scenarios,
            "pairs_per_type": opts.pairs,
            "speed": None if opts.direct else opts.speed,
            "direct": opts.direct,
            "interval_s": opts.interval_s,
            "seed": opts.seed,
            "runs": summaries,
        }
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "summary.json").write_text(json.dumps(doc, indent=2))
        # Every alarm message the CIC received, per run, as it arrived (JSON Lines).
        for k, r in enumerate(runs, start=1):
            with (opts.out / f"alarms-run{k}.jsonl").open("wb") as fh:
                for arrived, m in r.messages:
                    fh.write(orjson.dumps({"received": arrived, "message": m}) + b"\n")
        write_report(opts.out, doc, runs)
        return doc
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def print_summary(doc: dict[str, Any], out: Path) -> None:
    """The figures that matter, per run: detection, delay, false alarms, latency."""
    for k, s in enumerate(doc["runs"], start=1):
        settings = ", ".join(f"{a}={b}" for a, b in s["settings"].items()) or "default settings"
        t = s["total"]
        lat = s["latency_ms"]
        print(
            f"\nrun {k} ({settings}): {s['fixes_published']:,} fixes, {s['messages']:,} alarm"
            f" messages, {s['wall_s']:.0f} s"
        )
        print(
            f"  {'scenario type':<16} {'breaches':>8} {'detected':>8} {'(95% >=)':>8}"
            f" {'delay p50':>9} {'p90':>7} {'max':>7} {'alarms/pd':>9} {'false':>5}"
            f" {'false/pd':>8} {'(95% <=)':>8} {'inc/pd':>7} {'msgs/pd':>8} {'notices/pd':>10}"
            f" {'high/med/low':>12} {'max +-m':>7}"
        )
        for f in [*s["families"], t]:
            low = f["detection_lower95"]
            umax = f["max_alarm_uncertainty_m"]
            print(
                f"  {f['family']:<16} {f['breaches']:>8} {f['breaches_detected']:>8}"
                f" {'-' if low is None else f'{low:.2f}':>8}"
                f" {_seconds(f['delay_median_s']):>9} {_seconds(f['delay_p90_s']):>7}"
                f" {_seconds(f['delay_max_s']):>7}"
                f" {f['alarms_per_pair_day'] or 0:>9.1f} {f['false_alarms']:>5}"
                f" {f['false_alarms_per_pair_day'] or 0:>8.2f}"
                f" {f['false_alarms_per_pair_day_upper95'] or 0:>8.2f}"
                f" {f['incidents_per_pair_day'] or 0:>7.1f}"
                f" {f['alarm_messages_per_pair_day'] or 0:>8.1f}"
                f" {f['notices_per_pair_day'] or 0:>10.1f}"
                f" {f['priority_split'] or '-':>12} {'-' if umax is None else f'{umax:.0f}':>7}"
            )
        if s.get("sweeps_skipped"):
            print(
                f"  WARNING: the engine fell behind its x{doc['speed']:g} clock (it skipped"
                f" {s['sweeps_skipped']:,} sweeps): delays, detections and latency of this run"
                " say more about the machine than the engine; run again with a lower --speed"
            )
        track = s["pursuit"]["alarm_track"]
        print(
            f"  pursuit: {s['pursuit']['commands']:,} commands to the devices; offenders' track"
            f" during alarms: {track['fixes']:,} fixes, interval p50"
            f" {_seconds(track['interval_median_s'])} p90 {_seconds(track['interval_p90_s'])}"
        )
        if s.get("mode") == "direct":
            print("  latency: not measured (--direct: no broker between devices, engine and CIC)")
        else:
            print(
                f"  latency fix -> CIC ({lat['count']} messages): p50 {lat['p50']} ms,"
                f" p95 {lat['p95']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"
            )
    print(f"\nreport: {out / 'report.html'}   summary: {out / 'summary.json'}")
