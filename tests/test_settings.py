"""Settings: where each value comes from, and errors that name the key, its source and the
remedy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proximity.errors import ConfigError
from service.settings import (
    Origin,
    Settings,
    env_name,
    flag_name,
    load_settings,
    resolve_settings,
)


@pytest.fixture(autouse=True)
def _no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests say which variables are set (a run may set some, e.g. a clock offset)."""
    for var in list(os.environ):
        if var.upper().startswith("PROXIMITY_") and var.upper() != "PROXIMITY_NUMBA_CACHE":
            monkeypatch.delenv(var)


def test_every_source_is_named_and_flag_beats_environment_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('broker = "mqtt://file:1"\nconfirm_s = 9\nmargin_min_m = 30\ndwell_s = 7\n')
    monkeypatch.setenv("PROXIMITY_CONFIRM_S", "10")
    monkeypatch.setenv("PROXIMITY_MARGIN_MIN_M", "35")
    r = resolve_settings(conf, {"margin_min_m": 40.0, "broker": None})
    s = r.settings
    assert (s.broker, s.confirm_s, s.margin_min_m, s.dwell_s) == ("mqtt://file:1", 10, 40, 7)
    assert r.origins["margin_min_m"] == Origin("flag", "--margin-min-m")
    assert r.origins["confirm_s"] == Origin("environment", "PROXIMITY_CONFIRM_S")
    assert r.origins["broker"] == Origin("file", str(conf))
    assert r.origins["dwell_s"] == Origin("file", str(conf))
    assert r.origins["renotify_s"] == Origin("default")
    assert str(r.origins["confirm_s"]) == "environment PROXIMITY_CONFIRM_S"
    assert r.config == conf
    assert set(r.origins) == set(Settings.model_fields)


def test_the_config_file_may_come_from_the_environment_and_use_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("[proximity]\nrenotify_s = 120\n")
    monkeypatch.setenv("PROXIMITY_CONFIG", str(conf))
    r = resolve_settings()
    assert r.settings.renotify_s == 120 and r.origins["renotify_s"] == Origin("file", str(conf))


def test_unknown_keys_in_the_config_file_are_errors_with_a_did_you_mean(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("margin_min = 30\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    assert str(info.value) == (
        f"config file {conf}: unknown setting 'margin_min'; did you mean margin_min_m?"
        " (every setting is listed by 'proximity config show')"
    )
    conf.write_text('confirm = 5\ncolour = "red"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    text = str(info.value)
    assert f"config file {conf}: 2 problems:" in text
    assert "unknown setting 'confirm'; did you mean confirm_s?" in text
    assert "unknown setting 'colour'\n" in text  # nothing close: no suggestion


def test_settings_outside_the_proximity_table_are_errors(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('broker = "mqtt://a:1"\n[proximity]\nconfirm_s = 3\n')
    with pytest.raises(ConfigError, match=r"broker outside the \[proximity\] table"):
        load_settings(conf)


def test_bad_values_name_the_setting_the_value_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("margin_fraction = 7\n")
    with pytest.raises(ConfigError) as info:
        load_settings(conf)
    assert str(info.value).startswith(
        f"invalid settings: margin_fraction = 7 from file {conf}:"
        " Input should be less than or equal to 1"
    )
    monkeypatch.setenv("PROXIMITY_CONFIRM_S", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings(None, probe_entries=1)
    text = str(info.value)
    assert "invalid settings: 2 problems:" in text
    assert (
        "confirm_s = 'soon' from environment PROXIMITY_CONFIRM_S: Input should be a valid" in text
    )
    assert (
        "probe_entries = 1 from flag --probe-entries: Input should be greater than or equal" in text
    )


def test_missing_and_broken_config_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("broker = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(bad)


def test_a_broker_without_scheme_is_refused_whatever_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, broker="127.0.0.1:1883")
    assert "broker = '127.0.0.1:1883' from flag --broker: broker URL '127.0.0.1:1883' has no" in (
        str(info.value)
    )
    assert "mqtt://HOST:PORT or mqtt://HOST (port 1883), e.g. mqtt://127.0.0.1:1883" in str(
        info.value
    )
    monkeypatch.setenv("PROXIMITY_BROKER", "localhost")
    with pytest.raises(ConfigError, match="from environment PROXIMITY_BROKER: broker URL"):
        load_settings()


def test_log_level_is_checked_and_any_case_is_accepted() -> None:
    assert load_settings(None, log_level="debug").log_level == "DEBUG"
    with pytest.raises(ConfigError, match="must be one of DEBUG, INFO, WARNING, ERROR"):
        load_settings(None, log_level="loud")


def test_clock_offset_is_a_setting_defaulting_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().clock_offset_s == 0.0
    monkeypatch.setenv("PROXIMITY_CLOCK_OFFSET_S", str(365 * 86400))
    assert load_settings().clock_offset_s == 365 * 86400.0
    assert "wall clock" in str(Settings.model_fields["clock_offset_s"].description)


def test_a_misspelt_environment_variable_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXIMITY_CONFIRMS", "3")
    monkeypatch.setenv("PROXIMITY_NUMBA_CACHE", "0")  # not a setting, and no near miss
    r = resolve_settings()
    assert r.warnings == (
        "environment variable PROXIMITY_CONFIRMS is not a setting;"
        " did you mean PROXIMITY_CONFIRM_S?",
    )


def test_flag_and_variable_names() -> None:
    assert flag_name("http_listen") == "--http"
    assert flag_name("status_interval_s") == "--status-interval-s"
    assert env_name("alarm_topic") == "PROXIMITY_ALARM_TOPIC"
