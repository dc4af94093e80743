"""End to end: N pairs reporting at a steady rate, through Mosquitto, to the engine and on to
the CIC, with the broker's own one hop measured in the same run.

Run with ``scripts/bench e2e``. Everything runs on loopback, on a private Mosquitto (the
project's configuration):

* **Devices.** ``--pairs`` cases, one offender and one protected person each, every device
  sending ``--rate`` fixes per second (QoS 1), their phases spread over the period. The
  publishers are minimal MQTT clients over a raw socket (``--publishers`` processes), cheap
  enough to leave the CPU to the engine: a fix costs them a JSON encoding and a share of one
  ``send()`` per tick. Most pairs are far apart (no alarm); ``--probes`` pairs have an
  offender that drives (30 m/s) from 1,200 m to 100 m of the protected person and back, over
  and over, so that alarms are raised, updated and ended all along the run.
* **The CIC.** A subscriber to the alarm topic (a paho client in its own process) stamps each
  alarm message on arrival. An alarm caused by a fix names it (``trigger``: device and
  sequence number); the publisher stamped that fix when it sent it: fix -> CIC is the time
  between the two, publisher to broker to engine (decode, batch, evaluation, journal) to
  broker to CIC.
* **The one hop.** Every ``--probe-interval-ms`` the first publisher also sends a probe
  message (QoS 1) that the CIC's subscriber takes straight from the broker: publisher to
  broker to subscriber, the floor that no engine in between can beat.
* **Keeping up.** The engine's status (every 0.5 s) gives the fixes it has processed; the
  publishers count what they sent. After ``--warmup-s``, over ``--duration-s``: the offered
  and processed rates, the backlog (sent, not yet processed), the engine's CPU time per fix
  (from /proc), and the latency percentiles of both paths.

It exits with status 1 when the engine falls behind: the backlog at the end of the
measurement is more than ``--max-backlog-s`` seconds of the offered load, or the processed
rate is under 98 % of the offered one; and when the publishers could not offer 95 % of the
nominal rate (the machine could not carry the load, so the run says nothing of the engine).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import select
import socket
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from proximity.cases import parse_case_file
from proximity.clock import now as wall
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from storage.evidence import unpack_body
from storage.registry import Registry

ORDER_M = 500.0
PROBE_TOPIC = "bench/probe"
ALARM_TOPIC = "cic/alarms"
STATUS_TOPIC = "proximity/status"
#: The probe offenders' speed and the span they drive over, towards the protected person
#: and back (m/s, m).
PROBE_SPEED_MPS = 30.0
PROBE_FAR_M, PROBE_NEAR_M = 1200.0, 100.0
M_PER_DEG_LAT = 111_200.0
BASE = (50.5, 3.5)


# -- a minimal MQTT 3.1.1 publisher over a raw socket ---------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class RawPublisher:
    """MQTT 3.1.1 over a socket, QoS 1 publishes only: what a fleet of devices sends, at a
    fraction of a full client's cost. PUBACKs are read and counted, not matched."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 60) + _utf8(client_id)
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"the broker refused the publisher: {connack!r}")
        self.sock.setblocking(False)
        self.mid = 0
        self.acked = 0
        self._rest = b""
        self._last_ping = time.monotonic()

    def packet(self, topic: bytes, payload: bytes) -> bytes:
        """One QoS 1 PUBLISH; ``topic`` already length-prefixed."""
        self.mid = self.mid % 65535 + 1
        n = len(topic) + 2 + len(payload)
        return b"\x32" + _varint(n) + topic + struct.pack("!H", self.mid) + payload

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                select.select([self.sock], [self.sock], [], 1.0)
                self.read()
                continue
            view = view[sent:]
        if time.monotonic() - self._last_ping > 20:
            self._last_ping = time.monotonic()
            self.send(b"\xc0\x00")

    def read(self) -> None:
        """Count the PUBACKs that have come (and skip PINGRESPs)."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        buf = self._rest + data
        i = 0
        while i + 2 <= len(buf):
            size = buf[i + 1]  # every packet the broker sends back here is short
            if i + 2 + size > len(buf):
                break
            if buf[i] & 0xF0 == 0x40:
                self.acked += 1
            i += 2 + size
        self._rest = buf[i:]

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.sock.close()


# -- the devices ----------------------------------------------------------------------------


def _home(k: int) -> tuple[float, float]:
    """Pair k's protected person: a grid over Belgium-sized ground, 5 km apart."""
    return BASE[0] + 0.045 * (k % 40), BASE[1] + 0.07 * (k // 40 % 40) + 0.003 * (k // 1600)


def _probe_distance(t: float, phase: float) -> float:
    """A probe offender's distance to the protected person at ``t``: there and back."""
    span = PROBE_FAR_M - PROBE_NEAR_M
    cycle = 2 * span / PROBE_SPEED_MPS
    x = (t + phase * cycle) % cycle
    return (
        PROBE_FAR_M - PROBE_SPEED_MPS * x
        if x < cycle / 2
        else PROBE_NEAR_M + PROBE_SPEED_MPS * (x - cycle / 2)
    )


def _publisher(*args: Any) -> None:
    """:func:`_publish` in a process of its own; a connection the broker closes is reported
    on its queue (the last argument), not left to hang the run."""
    try:
        _publish(*args)
    except OSError as exc:
        args[-1].put({"error": f"publisher {args[2]}: {exc!r}"})


def _publish(
    host: str,
    port: int,
    part: int,
    parts: int,
    pairs: int,
    probes: int,
    rate: float,
    t_start: float,
    t_end: float,
    probe_interval_s: float,
    sent: Any,
    out: Any,
) -> None:
    """Publish this part's devices' fixes from ``t_start`` to ``t_end`` at ``rate`` each;
    put on ``out`` the send times of the probe pairs' fixes (for fix -> CIC)."""
    pub = RawPublisher(host, port, f"bench-publisher-{part}")
    period = 1.0 / rate
    devices = []  # (phase in the period, device index)
    for k in range(part, pairs, parts):
        for j in (0, 1):
            devices.append((((2 * k + j) * 0.6180339887) % 1.0 * period, 2 * k + j))
    devices.sort()
    phases = np.array([p for p, _ in devices])
    topics = [_utf8(f"devices/{'tag' if d % 2 == 0 else 'phone'}-{d // 2}/fix") for _, d in devices]
    ids = [d for _, d in devices]
    stamps: dict[Any, Any] = {}
    probe_topic = _utf8(PROBE_TOPIC)
    next_probe = t_start if part == 0 else math.inf
    cycle, i = 0, 0  # the period counted from t_start, and the next device in it
    while True:
        now = wall()
        if now >= t_end:
            break
        chunks = []
        probe_fixes = []
        fixes = 0
        while True:
            due = t_start + cycle * period + (phases[i] if i < len(phases) else period)
            if i >= len(phases):
                cycle, i = cycle + 1, 0
                continue
            if due > now:
                break
            d = ids[i]
            k = d // 2
            lat, lon = _home(k)
            if d % 2 == 0:  # the offender
                if k < probes:
                    dist = _probe_distance(now - t_start, k / max(1, probes))
                else:
                    dist = 20_000.0 + (cycle % 10)  # far away, moving a little
                lat += dist / M_PER_DEG_LAT
            body = orjson.dumps({"ts": now, "lat": lat, "lon": lon, "acc": 8.0, "seq": cycle})
            fixes += 1
            chunks.append(pub.packet(topics[i], body))
            if k < probes:
                probe_fixes.append((f"{'tag' if d % 2 == 0 else 'phone'}-{k}", cycle))
            i += 1
        if now >= next_probe:
            chunks.append(pub.packet(probe_topic, orjson.dumps({"sent": wall()})))
            next_probe += probe_interval_s
        if chunks:
            pub.send(b"".join(chunks))
            t_sent = wall()
            for key in probe_fixes:
                stamps[key] = t_sent
            with sent.get_lock():
                sent.value += fixes
        pub.read()
        nxt = t_start + cycle * period + (phases[i] if i < len(phases) else period)
        time.sleep(min(0.005, max(0.0005, nxt - wall())))
    deadline = time.monotonic() + 10
    while pub.acked < pub.mid and time.monotonic() < deadline:
        select.select([pub.sock], [], [], 0.1)
        pub.read()
    pub.close()
    out.put(stamps)


def _cic(url: str, ready: Any, stop: Any, out: Any) -> None:
    """The CIC's subscriber: every alarm message's arrival and trigger, and the probes'
    one-hop times."""
    alarms: list[tuple[float, str, int, str]] = []
    hops: list[tuple[float, float]] = []

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        t = wall()
        if msg.topic == PROBE_TOPIC:
            hops.append((orjson.loads(msg.payload)["sent"], t))
            return
        m = orjson.loads(msg.payload)
        trigger = m.get("trigger") or {}
        seq = trigger.get("seq")
        alarms.append(
            (t, str(trigger.get("device")), -1 if seq is None else seq, str(trigger.get("cause")))
        )

    client = make_client("bench-cic")
    client.on_message = on_message
    connect(client, parse_broker_url(url))
    client.subscribe([(ALARM_TOPIC, 1), (PROBE_TOPIC, 1)])
    time.sleep(0.5)
    ready.set()
    stop.wait(3600)
    disconnect(client)
    out.put((alarms, hops))


def _cases(pairs: int, rate: float) -> dict[str, Any]:
    return {
        "cases": [
            {
                "id": f"E2E-{k:07d}",
                "offenders": [f"tag-{k}"],
                "protected": [f"phone-{k}"],
                "order": {"distance_m": ORDER_M},
            }
            for k in range(pairs)
        ],
        "devices": [
            {"id": f"{kind}-{k}", "reporting_interval_s": max(1.0, 1.0 / rate)}
            for k in range(pairs)
            for kind in ("tag", "phone")
        ],
    }


def _cpu_s(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pairs", type=int, default=1000, help="pairs (default 1000)")
    ap.add_argument("--rate", type=float, default=1.0, help="fixes per second per device (1)")
    ap.add_argument("--duration-s", type=float, default=60.0, help="measured seconds (60)")
    ap.add_argument("--warmup-s", type=float, default=10.0, help="seconds before (10)")
    ap.add_argument(
        "--probes", type=int, default=None, help="pairs with alarms (default 2 %%, at least 100)"
    )
    ap.add_argument(
        "--publishers",
        type=int,
        default=None,
        help="publisher processes (default one per 25,000 fixes/s offered, at least 1)",
    )
    ap.add_argument(
        "--probe-interval-ms", type=float, default=20.0, help="one-hop probes' interval (20)"
    )
    ap.add_argument(
        "--max-backlog-s",
        type=float,
        default=2.0,
        help="behind: a final backlog above this many seconds of offered fixes (2)",
    )
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.rate <= 0 or args.duration_s <= 0:
        ap.error("--pairs, --rate and --duration-s must be positive")
    offered = 2 * args.pairs * args.rate
    probes = min(args.pairs, args.probes if args.probes is not None else max(100, args.pairs // 50))
    publishers = args.publishers or max(1, math.ceil(offered / 25_000))

    work = Path(tempfile.mkdtemp(prefix="proximity-bench-e2e-"))
    db = work / "registry.sqlite"
    t0 = time.monotonic()
    with Registry(db) as registry:
        registry.import_file(parse_case_file(_cases(args.pairs, args.rate)))
    print(
        f"{args.pairs} pairs ({probes} with alarms), {args.rate:g} fix/s per device:"
        f" {offered:.0f} fixes/s offered by {publishers} publisher process(es), QoS 1;"
        f" registry in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    (work / "broker").mkdir()
    with LocalBroker(work / "broker") as broker:
        addr = parse_broker_url(broker.url)
        engine = EngineProcess(broker.url, db, work / "engine.log", "--status-interval-s", "0.5")
        t0 = time.monotonic()
        engine.start(timeout=600)
        assert engine.proc is not None
        print(f"engine online in {time.monotonic() - t0:.1f} s", flush=True)
        status: dict[str, Any] = {}
        samples: list[tuple[float, int, float, int]] = []  # t, processed, cpu, sent
        sent = mp.Value("q", 0)

        def on_status(c: Any, u: Any, msg: Any) -> None:
            st = orjson.loads(msg.payload)
            if st.get("state") == "online":
                status.update(st)

        watcher = make_client("")
        watcher.on_message = on_status
        connect(watcher, addr)
        watcher.subscribe(STATUS_TOPIC, qos=1)
        ctx = mp.get_context("fork")
        ready, stop, cic_out = ctx.Event(), ctx.Event(), ctx.Queue()
        cic = ctx.Process(target=_cic, args=(broker.url, ready, stop, cic_out))
        cic.start()
        ready.wait(30)
        t_start = wall() + 1.0
        t_meas = t_start + args.warmup_s
        t_end = t_meas + args.duration_s
        stamps_out = ctx.Queue()
        pubs = [
            ctx.Process(
                target=_publisher,
                args=(
                    addr.host,
                    addr.port,
                    p,
                    publishers,
                    args.pairs,
                    probes,
                    args.rate,
                    t_start,
                    t_end,
                    args.probe_interval_ms / 1000.0,
                    sent,
                    stamps_out,
                ),
            )
            for p in range(publishers)
        ]
        for p in pubs:
            p.start()
        pid = engine.proc.pid
        try:
            next_report = t_meas
            while wall() < t_end + 0.25:
                time.sleep(0.25)
                processed = int(status.get("fixes_processed", 0))
                samples.append((wall(), processed, _cpu_s(pid), int(sent.value)))
                if wall() >= next_report:
                    next_report += 10.0
                    t, proc_n, _, sent_n = samples[-1]
                    print(
                        f"  {t - t_start:5.0f} s: sent {sent_n}, processed {proc_n},"
                        f" backlog {sent_n - proc_n}",
                        flush=True,
                    )
            stamps: dict[tuple[str, int], float] = {}
            errors = []
            for _ in pubs:
                got = stamps_out.get(timeout=60)
                if "error" in got:
                    errors.append(got["error"])
                else:
                    stamps.update(got)
            for p in pubs:
                p.join(30)
            # Let the backlog drain (for the alarms still on their way), briefly.
            deadline = wall() + 5
            while wall() < deadline and int(status.get("fixes_processed", 0)) < sent.value:
                time.sleep(0.1)
            time.sleep(0.5)
            stop.set()
            alarms, hops = cic_out.get(timeout=60)
            cic.join(30)
        finally:
            stop.set()
            for p in [cic, *pubs]:
                if p.is_alive():
                    p.terminate()
            disconnect(watcher)
            code = engine.stop()
        if errors:
            print(f"a publisher lost its connection: {'; '.join(errors)}", file=sys.stderr)
            return 1
        if code not in (0, None):
            print(f"the engine exited with {code}; its log: {work / 'engine.log'}")
    at_rest = _evidence_size(db.with_suffix(".evidence.sqlite"))
    return _report(args, offered, samples, t_meas, t_end, stamps, alarms, hops, at_rest)


def _evidence_size(path: Path) -> tuple[int, int, int]:
    """The evidence record's fix entries once the engine has stopped (and folded them): how
    many fixes they hold, the bytes they take (every column of their rows), and the file's
    size."""
    fixes = stored = 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for row in db.execute(
            "SELECT body, length(case_id) + length(body_hash) + length(prev) + length(hash)"
            " + coalesce(length(sig), 0) + 24 FROM evidence WHERE kind = 'fix'"
        ):
            fixes += len(unpack_body("fix", row[0])["device"])
            stored += len(row[0]) + int(row[1])
    finally:
        db.close()
    return fixes, stored, path.stat().st_size


def _at(samples: list[tuple[float, int, float, int]], t: float) -> tuple[float, int, float, int]:
    """The first sample at or after ``t``."""
    for s in samples:
        if s[0] >= t:
            return s
    return samples[-1]


def _report(
    args: argparse.Namespace,
    offered: float,
    samples: list[tuple[float, int, float, int]],
    t_meas: float,
    t_end: float,
    stamps: dict[tuple[str, int], float],
    alarms: list[tuple[float, str, int, str]],
    hops: list[tuple[float, float]],
    at_rest: tuple[int, int, int],
) -> int:
    a, b = _at(samples, t_meas), _at(samples, t_end)
    span = b[0] - a[0]
    sent_rate = (b[3] - a[3]) / span
    done_rate = (b[1] - a[1]) / span
    cpu_us = 1e6 * (b[2] - a[2]) / max(1, b[1] - a[1])
    in_window = [s for s in samples if t_meas <= s[0] <= t_end]
    backlog = [s[3] - s[1] for s in in_window]
    fix_ms = [
        1000.0 * (t - stamps[(dev, seq)])
        for t, dev, seq, cause in alarms
        if cause == "fix" and (dev, seq) in stamps and t_meas <= stamps[(dev, seq)] <= t_end
    ]
    hop_ms = [1000.0 * (r - s) for s, r in hops if t_meas <= s <= t_end]
    causes: dict[str, int] = {}
    for _, _, _, cause in alarms:
        causes[cause] = causes.get(cause, 0) + 1
    print(
        f"\nover {span:.0f} s after {args.warmup_s:g} s of warm-up:\n"
        f"  offered {sent_rate:9.0f} fixes/s (nominal {offered:.0f}),"
        f" processed {done_rate:9.0f} fixes/s ({done_rate / sent_rate:.1%})\n"
        f"  backlog: at the end {backlog[-1] if backlog else 0},"
        f" largest {max(backlog, default=0)} fixes\n"
        f"  engine CPU {cpu_us:.0f} us per fix ({(b[2] - a[2]) / span:.0%} of a core)\n"
        f"  alarm messages at the CIC: {len(alarms)} in all, by cause"
        f" {', '.join(f'{k} {v}' for k, v in sorted(causes.items()))}\n"
        f"  evidence record at rest: {at_rest[0]} fixes in the chains,"
        f" {at_rest[1] / max(1, at_rest[0]):.1f} bytes per fix (their entries, every column),"
        f" file {at_rest[2] / 1e6:.1f} MB"
    )
    row = "  {:<24} {:>8} {:>9} {:>9} {:>9} {:>9}"
    print(row.format("", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"))
    for name, v in (("fix -> CIC", fix_ms), ("one hop (probe)", hop_ms)):
        print(
            row.format(
                name,
                len(v),
                *(f"{_pct(v, q):.2f}" for q in (50, 90, 99)),
                f"{max(v, default=math.nan):.2f}",
            )
        )
    if fix_ms and hop_ms:
        print(
            f"  fix -> CIC minus one hop: p50 {_pct(fix_ms, 50) - _pct(hop_ms, 50):+.2f} ms,"
            f" p99 {_pct(fix_ms, 99) - _pct(hop_ms, 99):+.2f} ms;"
            f" ratio p50 {_pct(fix_ms, 50) / _pct(hop_ms, 50):.1f}x,"
            f" p99 {_pct(fix_ms, 99) / _pct(hop_ms, 99):.1f}x"
        )
    if sent_rate < 0.95 * offered:
        print(
            f"the publishers offered {sent_rate:.0f} fixes/s, not {offered:.0f}: the machine"
            " could not carry the load (publishers, broker and engine share its cores), so"
            " the engine was not given it",
            file=sys.stderr,
        )
        return 1
    behind = (backlog[-1] if backlog else 0) > args.max_backlog_s * offered or (
        done_rate < 0.98 * sent_rate
    )
    if behind:
        print("the engine fell behind", file=sys.stderr)
        return 1
    if not fix_ms:
        print("no alarm caused by a fix reached the CIC", file=sys.stderr)
        return 1
    print("the engine kept up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
