"""The one place where numba options are chosen.

Every kernel in the project is decorated with :data:`kernel` (array kernels) or
:data:`inline` (small scalar helpers called from kernels) or :data:`scalar` (large, rarely
used helpers), so the fastmath and cache policies are
decided here once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

import numba
from numba import njit
from numba.core import config as numba_config

#: fastmath flags that are safe for GPS data. ``nnan`` and ``ninf`` are left out on purpose:
#: a missing fix is NaN, and those flags would let LLVM delete the NaN checks that keep a pair
#: without a position from ever raising an alarm. ``afn`` (approximate trigonometry) is left out
#: because the geodesic kernel must stay within a millimetre of GeographicLib, and ``reassoc``
#: because it rewrites ``(lon2 - lon1) + 180`` as ``lon2 + (180 - lon1)``, so two identical
#: positions no longer give an exact zero distance.
FASTMATH = frozenset({"nsz", "arcp", "contract"})

#: Compiled kernels are cached on disk (numba's ``cache=True``) unless
#: ``PROXIMITY_NUMBA_CACHE=0``; a cold start then costs seconds only once per installation.
CACHE = os.environ.get("PROXIMITY_NUMBA_CACHE", "1") not in {"0", "false", "no"}

#: Division follows IEEE 754 (x / 0 is inf or NaN) instead of raising ZeroDivisionError: no
#: check and branch per division in the hot loops, and NaN stays the "no value" marker.
ERROR_MODEL: Final = "numpy"


#: The folder holding the ``numerics``, ``proximity`` and ``geofence`` packages.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def fingerprint(root: Path = SOURCE_ROOT) -> str:
    """A hash of every kernel module's source and of the options above.

    numba invalidates a cached kernel when the kernel's own file changes, not when a helper
    it inlined from another file (geodesy into the core, the polygon loop into the zone
    index) or the options here do; a stale kernel would then run old code. Keying the cache
    directory on all of them makes any such change a fresh compile instead.
    """
    h = hashlib.sha256(repr((sorted(FASTMATH), ERROR_MODEL, numba.__version__)).encode())
    for package in ("numerics", "proximity", "geofence"):
        for path in sorted((root / package).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


if CACHE:
    # Under NUMBA_CACHE_DIR when set, else the user's cache directory. A directory that
    # cannot be written makes numba fall back to __pycache__ beside the module.
    _base = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "proximity-numba"
    )
    # numba.core.config defines its settings at run time, invisible to type checkers.
    setattr(numba_config, "CACHE_DIR", os.path.join(_base, fingerprint()))  # noqa: B010

kernel = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL)
inline = njit(
    cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL, inline="always"
)
#: Scalar helpers that are large and rarely taken stay separate functions (a call), so they
#: do not bloat the hot loops that use them.
scalar = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL)
