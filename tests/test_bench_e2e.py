"""The end-to-end benchmark's parts: its raw-socket publisher speaks MQTT a real broker and a
real subscriber understand, and a short run through the engine gets alarms to the CIC and
says whether the engine kept up (``scripts/bench e2e``; the figures are the benchmark's, not
asserted here)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import orjson
import pytest

from benchmarks.e2e import RawPublisher, _probe_distance, _utf8, main
from ingest.transport import connect, disconnect, make_client, parse_broker_url
from simulator.broker import LocalBroker


def test_raw_publisher_messages_arrive_in_order_and_are_acknowledged() -> None:
    got: list[tuple[str, int]] = []
    done = threading.Event()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        got.append((msg.topic, orjson.loads(msg.payload)["n"]))
        if len(got) == 300:
            done.set()

    with LocalBroker() as broker:
        addr = parse_broker_url(broker.url)
        sub = make_client("")
        sub.on_message = on_message
        connect(sub, addr)
        sub.subscribe("devices/+/fix", qos=1)
        time.sleep(0.3)
        pub = RawPublisher(addr.host, addr.port, "test-raw")
        topic = _utf8("devices/tag-1/fix")
        # One send of many packets, a large payload among them (a two-byte length).
        packets = [
            pub.packet(topic, orjson.dumps({"n": n, "pad": "x" * (n % 3) * 100}))
            for n in range(300)
        ]
        pub.send(b"".join(packets))
        assert done.wait(10)
        for _ in range(100):
            pub.read()
            if pub.acked == 300:
                break
            time.sleep(0.02)
        pub.close()
        disconnect(sub)
    assert got == [("devices/tag-1/fix", n) for n in range(300)]
    assert pub.acked == 300


def test_probe_offender_drives_there_and_back_within_its_span() -> None:
    d = [_probe_distance(t * 0.5, 0.0) for t in range(400)]
    assert min(d) == pytest.approx(100.0, abs=16.0) and max(d) == pytest.approx(1200.0, abs=16.0)
    steps = [abs(b - a) for a, b in itertools.pairwise(d)]
    assert max(steps) <= 15.0 + 1e-9  # 30 m/s, never a jump


def test_short_run_gets_alarms_to_the_cic_and_keeps_up(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--pairs", "50", "--duration-s", "8", "--warmup-s", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "the engine kept up" in out
    fix_line = next(line for line in out.splitlines() if line.strip().startswith("fix -> CIC "))
    hop_line = next(line for line in out.splitlines() if "one hop (probe)" in line)
    assert int(fix_line.split()[3]) > 0  # alarms caused by fixes, timed
    assert int(hop_line.split()[3]) > 100  # probes every 20 ms over 8 s
