"""The moved clock: the engine's clock_offset_s setting and the tools' PROXIMITY_CLOCK_OFFSET_S."""

from __future__ import annotations

import time

import pytest

from proximity.clock import OFFSET_VARIABLE, now, offset_s
from proximity.errors import ConfigError
from service.run import scaled_clock
from service.settings import load_settings

YEAR = 366 * 86400.0


def test_the_tools_clock_follows_the_engine_setting_s_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(OFFSET_VARIABLE, raising=False)
    assert offset_s() == 0.0
    monkeypatch.setenv(OFFSET_VARIABLE, str(YEAR))
    assert offset_s() == YEAR
    assert now() - time.time() == pytest.approx(YEAR, abs=1.0)
    # The engine reads the same variable as its setting.
    assert load_settings().clock_offset_s == YEAR
    monkeypatch.setenv(OFFSET_VARIABLE, "a year")
    with pytest.raises(ConfigError, match="PROXIMITY_CLOCK_OFFSET_S='a year'"):
        offset_s()


def test_the_engine_clock_is_moved_and_scaled_from_its_epoch() -> None:
    moved = scaled_clock(1.0, 0.0, YEAR)
    assert moved() - time.time() == pytest.approx(YEAR, abs=1.0)
    assert scaled_clock(1.0, 0.0) is time.time
    # An evaluation run: the clock stands at the epoch (on the moved clock) until it is
    # reached, then runs 60 times faster.
    epoch = time.time() + YEAR + 3600.0
    assert scaled_clock(60.0, epoch, YEAR)() == epoch
    started = time.time() + YEAR - 10.0
    assert scaled_clock(60.0, started, YEAR)() == pytest.approx(started + 600.0, abs=60.0)
