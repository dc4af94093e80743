from __future__ import annotations

import math
import re

import pytest

from cli.demo import SUMMARY_HEADINGS, alarm_line
from tests.conftest import run_cli
from tests.test_docs import _alarm_of, _demo_sample, _is_alarm_line, _shape, summary_headings


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.wallclock
def test_demo_runs_to_its_summary() -> None:
    # 30 s: an entry near the end must have time for its confirmation (15 s).
    result = run_cli("demo", "--duration", "30", "--pairs", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    lines = out.splitlines()
    # Every alarm line is in the format the README's sample is held to (tests/test_docs.py),
    # and every other line of the sample is one the demo prints.
    alarms = [line for line in lines if _is_alarm_line(line)]
    assert alarms, out
    for seq, line in enumerate(alarms):
        elapsed, msg, latency = _alarm_of(line, seq)
        assert alarm_line(elapsed, msg, math.nan if latency is None else latency) == line
    shapes = {_shape(line) for line in lines}
    for line in _demo_sample():
        if line.strip() not in ("", "...") and not _is_alarm_line(line):
            assert _shape(line) in shapes, f"the demo printed no line like\n{line}\n{out}"
    assert summary_headings(lines) == [h for h in SUMMARY_HEADINGS if h in summary_headings(lines)]
    counts = re.search(r"fixes\s+(\d+) published, (\d+) processed", out)
    assert counts is not None, out
    published, processed = map(int, counts.groups())
    assert published > 100 and processed == published
    assert re.search(r"rejected\s+3 \(", out)
    opened = int(re.search(r"alarms\s+(\d+) opened", out).group(1))  # type: ignore[union-attr]
    assert opened >= 1
    assert "alarms on pairs that never did: 0" in out
    zones = re.search(
        r"zones\s+(\d+) of \d+ zones were entered; alarmed (\d+) of them;"
        r" zone alarms on zones never entered: 0",
        out,
    )
    assert zones is not None, out
    assert int(zones.group(1)) >= 1 and zones.group(1) == zones.group(2)
    assert re.search(r"latency\s+fix published -> alarm received: p50 [\d.]+ ms", out)
