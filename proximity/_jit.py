"""The one place where numba options are chosen.

Every kernel in the project is decorated with :data:`kernel` (array kernels) or
:data:`inline` (scalar helpers called from kernels), so the fastmath and cache policies are
decided here once.
"""

from __future__ import annotations

import os

from numba import njit

#: fastmath flags that are safe for GPS data. ``nnan`` and ``ninf`` are left out on purpose:
#: a missing fix is NaN, and those flags would let LLVM delete the NaN checks that keep a pair
#: without a position from ever raising an alarm. ``afn`` (approximate trigonometry) is left out
#: because the geodesic kernel must stay within a millimetre of GeographicLib.
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})

#: Compiled kernels are cached on disk next to the module (numba's ``cache=True``) unless
#: ``PROXIMITY_NUMBA_CACHE=0``; a cold start then costs seconds only once per installation.
CACHE = os.environ.get("PROXIMITY_NUMBA_CACHE", "1") not in {"0", "false", "no"}

kernel = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH))
inline = njit(cache=CACHE, nogil=True, fastmath=set(FASTMATH), inline="always")
