"""The first hour of a new user: ``source scripts/bootstrap`` in a shell, and the settings as
``proximity config show`` and ``proximity run --help`` present them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser, main
from service.settings import Settings, flag_name

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap"


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,  # a first run (or a changed pyproject.toml) installs into .venv
        env=dict(os.environ, **(env or {})),
        check=False,
    )


@pytest.mark.parametrize("options", ["set +euo pipefail", "set -euo pipefail", "set -u"])
def test_sourcing_bootstrap_leaves_the_callers_shell_options_as_they_were(options: str) -> None:
    result = _bash(
        f"{options}; before=\"$(set -o)\"; source '{BOOTSTRAP}'; status=$?;"
        ' after="$(set -o)"; echo "status=$status";'
        ' if [ "$before" = "$after" ]; then echo same; else diff <(echo "$before")'
        ' <(echo "$after"); fi; command -v proximity'
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["status=0", "same"], result.stdout
    assert lines[2] == str(ROOT / ".venv" / "bin" / "proximity")


def test_a_failing_bootstrap_returns_non_zero_and_the_shell_goes_on(tmp_path: Path) -> None:
    # A "Python" that fails the version check: the error path, without touching apt-get.
    old = tmp_path / "python-too-old"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    sourced = _bash(
        f"set +euo pipefail; source '{BOOTSTRAP}'; echo \"status=$?\"; set -o | grep -E"
        " '^(errexit|nounset|pipefail) '",
        env={"PYTHON": str(old)},
    )
    assert sourced.returncode == 0
    assert sourced.stdout.split()[:7] == [
        "status=1",
        "errexit",
        "off",
        "nounset",
        "off",
        "pipefail",
        "off",
    ], sourced.stdout
    assert "Python 3.11 or newer is needed" in sourced.stderr
    # A script with errexit (scripts/test, scripts/demo) still stops at the failure, and
    # running it directly exits non-zero as before.
    in_script = _bash(
        f"set -euo pipefail; source '{BOOTSTRAP}'; echo not reached", {"PYTHON": str(old)}
    )
    assert in_script.returncode == 1 and "not reached" not in in_script.stdout
    executed = _bash(f"'{BOOTSTRAP}'; echo \"status=$?\"", {"PYTHON": str(old)})
    assert executed.stdout.strip() == "status=1"


# --- proximity config show and the run flags ------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No PROXIMITY_* settings from the caller's environment (a run may set some)."""
    for var in list(os.environ):
        if var.upper().startswith("PROXIMITY_") and var.upper() != "PROXIMITY_NUMBA_CACHE":
            monkeypatch.delenv(var)
    return monkeypatch


def _show(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["config", "show", "--json", *args]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_config_show_names_the_source_of_every_value(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('broker = "mqtt://file:1883"\nconfirm_s = 9\nmargin_min_m = 30\n')
    clean_env.setenv("PROXIMITY_CONFIRM_S", "10")
    clean_env.setenv("PROXIMITY_ALARM_TOPIC", "cic/test")
    args = ["--config", str(conf), "--margin-min-m", "40", "--http", "0.0.0.0:5055"]
    doc = _show(capsys, *args)
    s = doc["settings"]
    assert doc["config_file"] == str(conf)
    assert list(s) == list(Settings.model_fields)
    assert s["margin_min_m"] == {"value": 40.0, "source": "flag", "flag": "--margin-min-m"}
    assert s["http_listen"] == {"value": "0.0.0.0:5055", "source": "flag", "flag": "--http"}
    assert s["confirm_s"] == {
        "value": 10.0,
        "source": "environment",
        "variable": "PROXIMITY_CONFIRM_S",
    }
    assert s["alarm_topic"]["source"] == "environment"
    assert s["broker"] == {"value": "mqtt://file:1883", "source": "file", "file": str(conf)}
    assert s["db"] == {"value": "proximity.sqlite", "source": "default"}
    assert s["evidence"] == {"value": None, "source": "default"}

    assert main(["config", "show", *args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SETTING", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in table[1:-1]}
    assert rows["margin_min_m"] == ["40", "flag --margin-min-m"]
    assert rows["confirm_s"] == ["10", "environment PROXIMITY_CONFIRM_S"]
    assert rows["broker"] == ["mqtt://file:1883", f"file {conf}"]
    assert rows["renotify_s"] == ["300", "default"]
    assert len(rows) == len(Settings.model_fields)
    assert table[-1].startswith(f"config file: {conf}; precedence: flag > environment")


def test_config_show_reads_the_file_named_by_proximity_config(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("[proximity]\nrenotify_s = 120\n")
    clean_env.setenv("PROXIMITY_CONFIG", str(conf))
    s = _show(capsys)["settings"]
    assert s["renotify_s"] == {"value": 120.0, "source": "file", "file": str(conf)}


def test_config_show_errors_name_the_key_the_file_and_a_near_name(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text("margin_min = 30\n")
    assert main(["config", "show", "--config", str(conf)]) == 1
    assert capsys.readouterr().err == (
        f"error: config file {conf}: unknown setting 'margin_min'; did you mean margin_min_m?"
        " (every setting is listed by 'proximity config show')\n"
    )
    clean_env.setenv("PROXIMITY_MARGIN_FRACTION", "7")
    assert main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert "margin_fraction = '7' from environment PROXIMITY_MARGIN_FRACTION:" in err
    assert "less than or equal to 1" in err
    clean_env.delenv("PROXIMITY_MARGIN_FRACTION")
    assert main(["config", "show", "--broker", "127.0.0.1:1883"]) == 1
    err = capsys.readouterr().err
    assert "broker URL '127.0.0.1:1883' has no scheme; use mqtt://HOST:PORT" in err


def test_config_show_warns_of_a_misspelt_variable(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PROXIMITY_BROKR", "mqtt://x:1")
    assert main(["config", "show"]) == 0
    assert capsys.readouterr().err == (
        "warning: environment variable PROXIMITY_BROKR is not a setting;"
        " did you mean PROXIMITY_BROKER?\n"
    )


def _flag_value(name: str) -> str:
    """A valid command-line value for setting ``name``, other than its default."""
    special = {
        "broker": "mqtt://example:1884",
        "default_mobility": "walking",
        "log_level": "DEBUG",
        "http_listen": "127.0.0.1:5055",
        "margin_fraction": "0.2",
        "escalation_fraction": "0.4",
        "probe_entries": "4",
        "parallel_max_angle_deg": "20",
        "time_epoch": "1800000000",  # date-ok: a setting's value, parsed and shown only
        "research_grid_m": "250",
        "estimate_floor_fraction": "0.4",
    }
    if name in special:
        return special[name]
    annotation = Settings.model_fields[name].annotation
    if annotation in (int, float):
        return "7"
    if annotation is str:
        return f"x/{name}"
    return f"/tmp/{name}.sqlite"  # paths


def _flag_args(name: str) -> list[str]:
    """The flag of setting ``name`` with a value other than its default (a switch alone:
    ``--approach-alarm``, or ``--no-...`` for one that is on by default)."""
    field = Settings.model_fields[name]
    if field.annotation is bool:
        flag = flag_name(name)
        return [flag if not field.default else "--no-" + flag.removeprefix("--")]
    return [flag_name(name), _flag_value(name)]


def test_every_setting_has_a_flag_on_run_and_config_show(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a for n in Settings.model_fields for a in _flag_args(n)]
    s = _show(capsys, *args)["settings"]
    for name in Settings.model_fields:
        assert s[name]["source"] == "flag", name
        # (A switch given as --no-... is named so.)
        assert s[name]["flag"] == _flag_args(name)[0], name
    parsed = build_parser().parse_args(["run", *args])
    for name in Settings.model_fields:
        assert getattr(parsed, name) is not None, name


def test_run_help_lists_every_setting_with_its_description_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for name, field in Settings.model_fields.items():
        assert flag_name(name) in text, name
        assert " ".join(str(field.description).split()) in flat, name
    assert "--confirm-s S" in text and "(default: 15)" in flat
    assert "--default-mobility {walking,cycling,driving}" in text
    assert "--unknown-accuracy-m M 68 % radius assumed" in flat
    # The flags of earlier versions keep their names and metavars.
    for flag in (
        "--broker URL",
        "--db PATH",
        "--config FILE",
        "--client-id ID",
        "--http HOST:PORT",
        "--alarm-topic TOPIC",
        "--rejected-topic TOPIC",
        "--status-topic TOPIC",
        "--status-interval-s S",
        "--margin-fraction F",
        "--margin-min-m M",
        "--implausible-speed-mps V",
        "--confirm-s S",
        "--dwell-s S",
        "--renotify-s S",
        "--time-scale X",
        "--time-epoch T",
        "--log-level LEVEL",
    ):
        assert flag in text, flag


# --- the install ----------------------------------------------------------------------------


def test_every_data_directory_is_a_declared_package_with_its_files() -> None:
    """setuptools warns on install ("Package 'cic.schemas' is absent from the
    `packages` configuration") and will leave out a data directory that is importable (a
    namespace package) but not listed; every such directory is listed, and its package data
    patterns cover its files."""
    import fnmatch
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    data = config["package-data"]
    for top in [p for p in packages if "." not in p]:
        for directory in (ROOT / top).rglob("*"):
            if not directory.is_dir() or directory.name == "__pycache__":
                continue
            name = ".".join(directory.relative_to(ROOT).parts)
            assert name in packages, f"{name} is not in [tool.setuptools] packages"
            if (directory / "__init__.py").exists():
                continue
            for f in directory.iterdir():
                if f.is_file():
                    patterns = data.get(name, [])
                    assert any(fnmatch.fnmatch(f.name, p) for p in patterns), (name, f.name)
