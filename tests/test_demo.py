from __future__ import annotations

import re

import pytest

from tests.conftest import run_cli


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_to_its_summary() -> None:
    # 30 s: an entry near the end must have time for its confirmation (15 s).
    result = run_cli("demo", "--duration", "30", "--pairs", "10", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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
