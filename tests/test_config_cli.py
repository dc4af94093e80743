"""The first hour of a new user: ``source scripts/bootstrap`` in a shell, and the settings as
``proximity config show`` and ``proximity run --help`` present them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

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
