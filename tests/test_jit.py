"""The kernel cache is keyed on every kernel module's source, so no stale kernel runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from numerics.jit import fingerprint

ROOT = Path(__file__).resolve().parent.parent


def test_cache_key_changes_with_any_kernel_module(tmp_path: Path) -> None:
    for package in ("numerics", "proximity", "geofence"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    assert fingerprint(tmp_path) == fingerprint(ROOT)
    before = fingerprint(tmp_path)
    # An inlined helper in another file than the kernel that uses it: the polygon loop.
    kernels = tmp_path / "geofence" / "kernels.py"
    kernels.write_text(kernels.read_text() + "\n# edited\n")
    edited = fingerprint(tmp_path)
    assert edited != before
    # The shared geodesy, inlined into the core and the zone kernels.
    geodesy = tmp_path / "numerics" / "geodesy.py"
    geodesy.write_text(geodesy.read_text() + "\n# edited\n")
    assert fingerprint(tmp_path) != edited
    edited = fingerprint(tmp_path)
    (tmp_path / "geofence" / "notes.txt").write_text("not a module")
    assert fingerprint(tmp_path) == edited
