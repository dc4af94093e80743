"""The one place where numba options are chosen.

Every kernel in the project is decorated with :data:`kernel` (array kernels) or
:data:`inline` (small scalar helpers called from kernels) or :data:`scalar` (large, rarely
used helpers), so the fastmath and cache policies are
decided here once.
"""

from __future__ import annotations

import os
from typing import Final

from numba import njit

#: fastmath flags that are safe for GPS data. ``nnan`` and ``ninf`` are left out on purpose:
#: a missing fix is NaN, and those flags would let LLVM delete the NaN checks that keep a pair
#: without a position from ever raising an alarm. ``afn`` (approximate trigonometry) is left out
#: because the geodesic kernel must stay within a millimetre of GeographicLib, and ``reassoc``
#: because it rewrites ``(lon2 - lon1) + 180`` as ``lon2 + (180 - lon1)``, so two identical
#: positions no longer give an exact zero distance.
FASTMATH = frozenset({"nsz", "arcp", "contract"})

#: Compiled kernels are cached on disk next to the module (numba's ``cache=True``) unless
#: ``PROXIMITY_NUMBA_CACHE=0``; a cold start then costs seconds only once per installation.
#: numba invalidates a cached kernel when the kernel's own source file changes, not when the
#: options above do: after editing FASTMATH, delete ``__pycache__/*.nbi`` and ``*.nbc``.
CACHE = os.environ.get("PROXIMITY_NUMBA_CACHE", "1") not in {"0", "false", "no"}

#: Division follows IEEE 754 (x / 0 is inf or NaN) instead of raising ZeroDivisionError: no
#: check and branch per division in the hot loops, and NaN stays the "no value" marker.
ERROR_MODEL: Final = "numpy"

kernel = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL)
inline = njit(
    cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL, inline="always"
)
#: Scalar helpers that are large and rarely taken stay separate functions (a call), so they
#: do not bloat the hot loops that use them.
scalar = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH), error_model=ERROR_MODEL)
