"""End-to-end ingest throughput, against a bare MQTT subscriber, and TCP_NODELAY's effect.

Run with ``scripts/bench ingest``. Everything goes through a private Mosquitto (the project's
configuration) on loopback:

1. **Throughput, as a drain rate.** Publisher processes (``--publishers``) send ``--fixes``
   fixes of ``--pairs`` simulated pairs (QoS 1) while the consumer is away; the broker
   queues them in the consumer's persistent session. Then the consumer comes and the rate is
   the count over the time from its subscription to the last fix done, so the publishers do
   not bound it and the consumer has the machine to itself:

   * *bare subscriber*: a process with one paho client that subscribes to ``devices/+/fix``
     at QoS 1 and only decodes each payload with orjson: the ceiling of the transport;
   * *engine*: ``proximity run`` (the real engine process, manual acknowledgement, evidence
     record, journal), from its ``online_since`` (subscribed) until its status reports every
     fix processed: received -> alarm evaluation done and acknowledged.

   The two alternate over ``--rounds`` rounds, so load from elsewhere on a shared machine
   hits both; the table shows each rate's median and the ratio engine / bare.

2. **TCP_NODELAY.** The median time from a QoS 1 publish to its PUBACK, one message at a
   time, with Nagle's algorithm left on (paho's default) and with TCP_NODELAY set (what
   every client of the project does), measured in the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ingest.transport import connect, disconnect, make_client, parse_broker_url
from proximity.cases import parse_case_file
from simulator.broker import LocalBroker
from simulator.process import EngineProcess
from storage.registry import Registry

HOME = (50.85, 4.35)
BARE_ID = "bench-bare-subscriber"


def _cases(pairs: int) -> dict[str, Any]:
    return {
        "cases": [
            {
                "id": f"BENCH-{k:05d}",
                "offenders": [f"tag-{k}"],
                "protected": [f"phone-{k}"],
                "order": {"distance_m": 500},
                "summary": {"victim_name": "bench"},
            }
            for k in range(pairs)
        ],
        # Long intervals: silence alarms stay out of the measurement.
        "devices": [
            {"id": f"{kind}-{k}", "reporting_interval_s": 86400}
            for k in range(pairs)
            for kind in ("tag", "phone")
        ],
    }


def _payloads(
    pairs: int, fixes: int, start: float, part: int, parts: int
) -> list[tuple[str, bytes]]:
    """This publisher's share: devices far apart (no alarms), one fix per device per second."""
    out = []
    devices = [f"{kind}-{k}" for k in range(pairs) for kind in ("tag", "phone")]
    for n in range(part, fixes, parts):
        dev = devices[n % len(devices)]
        k = n // len(devices)
        lat = HOME[0] + 0.001 * (hash(dev) % 1000)
        lon = HOME[1] + (0.0 if dev.startswith("tag") else 0.2)
        body = {"ts": start + k, "lat": lat, "lon": lon + 1e-6 * k, "acc": 8, "seq": k}
        out.append((f"devices/{dev}/fix", orjson.dumps(body)))
    return out


def _publisher(url: str, payloads: list[tuple[str, bytes]], go: Any) -> None:
    client = make_client("")
    client.max_inflight_messages_set(1000)
    connect(client, parse_broker_url(url))
    go.wait()
    infos = [client.publish(topic, body, qos=1) for topic, body in payloads]
    for info in infos:
        info.wait_for_publish(60.0)
    disconnect(client)


def _bare(url: str, expect: int, result: Any) -> None:
    state = {"n": 0, "t_last": 0.0}

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        orjson.loads(msg.payload)
        state["n"] += 1
        state["t_last"] = time.time()

    client = make_client(BARE_ID)
    client.on_message = on_message
    t0 = time.time()
    connect(client, parse_broker_url(url), clean_start=False, session_expiry_s=600)
    deadline = time.time() + 600
    while state["n"] < expect and time.time() < deadline:
        time.sleep(0.002)
    disconnect(client)
    result.put((state["n"], t0, state["t_last"]))


def _publish_all(url: str, batches: list[list[tuple[str, bytes]]]) -> None:
    """Publish everything (publisher processes in parallel) and wait until it is sent."""
    go = mp.Event()
    procs = [mp.Process(target=_publisher, args=(url, b, go)) for b in batches]
    for p in procs:
        p.start()
    time.sleep(1.0)  # connected
    go.set()
    for p in procs:
        p.join(600)


def run_bare(url: str, batches: list[list[tuple[str, bytes]]], total: int) -> float:
    # The session first (the broker queues for it from here on), then the fixes, then the
    # consumer.
    session = make_client(BARE_ID)
    subscribed = mp.Event()
    session.on_subscribe = lambda *a: subscribed.set()
    connect(session, parse_broker_url(url), clean_start=False, session_expiry_s=600)
    session.subscribe("devices/+/fix", qos=1)
    subscribed.wait(10)
    disconnect(session)
    _publish_all(url, batches)
    result: mp.Queue[tuple[int, float, float]] = mp.Queue()
    sub = mp.Process(target=_bare, args=(url, total, result))
    sub.start()
    received, t0, t_last = result.get(timeout=600)
    sub.join(60)
    if received < total:
        raise RuntimeError(f"the bare subscriber received {received} of {total}")
    return total / (t_last - t0)


def run_engine(
    db: Path, log: Path, url: str, batches: list[list[tuple[str, bytes]]], total: int
) -> tuple[float, dict[str, Any]]:
    _publish_all(url, batches)  # the engine is stopped: its session queues them
    client = make_client("")
    latest: dict[str, Any] = {}

    def on_status(c: Any, u: Any, msg: Any) -> None:
        st = orjson.loads(msg.payload)
        if st.get("state") == "online":
            latest.update(st)
            latest["_t"] = time.time()

    client.on_message = on_status
    connect(client, parse_broker_url(url))
    client.subscribe("proximity/status", qos=1)
    engine = EngineProcess(url, db, log, "--status-interval-s", "0.02").start()
    try:
        deadline = time.time() + 600
        while time.time() < deadline and int(latest.get("fixes_processed", 0)) < total:
            time.sleep(0.005)
        t_done = float(latest["_t"])
        since = datetime.fromisoformat(latest["online_since"]).timestamp()
        stats = dict(latest)
    finally:
        engine.stop()
        disconnect(client)
    return total / (t_done - since), stats


def nodelay_latency(url: str, nodelay: bool, n: int) -> float:
    """Median QoS 1 publish -> PUBACK time (ms), one message at a time."""
    client = make_client("")
    if not nodelay:

        def nagle(c: Any, u: Any, sock: Any) -> None:  # undo what make_client sets
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

        client.on_socket_open = nagle
    connect(client, parse_broker_url(url))
    times = []
    payload = orjson.dumps({"ts": time.time(), "lat": 50.0, "lon": 4.0, "acc": 5})
    for _ in range(n):
        t = time.perf_counter()
        client.publish("bench/latency", payload, qos=1).wait_for_publish(5.0)
        times.append(time.perf_counter() - t)
    disconnect(client)
    return statistics.median(times) * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=500, help="simulated pairs (default 500)")
    ap.add_argument("--fixes", type=int, default=40_000, help="fixes per round (default 40000)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--latency-n", type=int, default=300, help="messages per latency series")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="proximity-bench-ingest-"))
    db = work / "registry.sqlite"
    with Registry(db) as registry:
        registry.import_file(parse_case_file(_cases(args.pairs)))

    # Two brokers alike, so that the engine (subscribed at its own broker) neither competes
    # with the bare subscriber's round nor receives its fixes.
    with LocalBroker() as broker, LocalBroker() as bare_broker:
        url = broker.url
        print(
            f"broker {url}; {args.pairs} pairs, {args.fixes} fixes per round,"
            f" {args.publishers} publisher processes, QoS 1"
        )
        # A first start creates the engine's persistent session (and compiles the kernels).
        assert EngineProcess(url, db, work / "engine.log").start().stop() == 0
        bare_rates: list[float] = []
        engine_rates: list[float] = []
        start = time.time() - 10 * 3600  # fixes in the past, one per device per second
        for r in range(args.rounds):
            batches = [
                _payloads(args.pairs, args.fixes, start + r * 1e4, i, args.publishers)
                for i in range(args.publishers)
            ]
            bare_rates.append(run_bare(bare_broker.url, batches, args.fixes))
            rate, st = run_engine(db, work / f"engine{r}.log", url, batches, args.fixes)
            engine_rates.append(rate)
            b = bare_rates[-1]
            print(
                f"  round {r + 1}: bare {b:9.0f} fixes/s, engine {rate:9.0f} fixes/s"
                f" ({rate / b:.2f}); engine batches {st['batches']} (largest {st['max_batch']})"
            )
        bare, eng = statistics.median(bare_rates), statistics.median(engine_rates)
        print(
            f"\nthroughput (median of {args.rounds}): bare subscriber {bare:.0f} fixes/s,"
            f" engine {eng:.0f} fixes/s: the engine sustains {eng / bare:.0%} of the bare rate"
        )

        on = [nodelay_latency(url, True, args.latency_n) for _ in range(2)]
        off = [nodelay_latency(url, False, args.latency_n) for _ in range(2)]
        print(
            f"QoS 1 publish -> PUBACK, median of {args.latency_n}: with TCP_NODELAY"
            f" {min(on):.2f} ms, without {min(off):.2f} ms ({min(off) / min(on):.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
