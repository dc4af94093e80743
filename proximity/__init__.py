"""Proximity engine for stalking and restraining-order cases.

``proximity`` owns device state as arrays, the pair table and its numba kernels, the alarm
rules, the engine loop, the CIC channel, the case registry and the CLI. It knows nothing of
payload formats: fixes reach it as arrays from :mod:`ingest`.
"""

__version__ = "0.1.0"
