"""Proximity engine for stalking and restraining-order cases: the middle of the flow.

``proximity`` owns the devices' state as arrays, the pair table and its numba kernels, the
rules (proximity, approach, probing, zones, device health), the alarm book, the engine loop,
the engine's saved state (as plain values) and the operator-facing sentences. It knows no
payload format, file or network: fixes reach it as arrays from :mod:`ingest`, its alarm events
leave through :mod:`cic`, and :mod:`storage` and :mod:`service` keep and wire it.
"""

__version__ = "0.1.0"
