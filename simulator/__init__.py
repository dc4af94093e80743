"""Simulated devices, scenarios with ground truth, and a private local broker.

This package stands on its own beside the engine: it is a client of the engine's external
contract (fixes published on ``devices/{id}/fix``, alarms read from ``cic/alarms``) and
knows nothing of its internals, so the demo, the tests and later the evaluation suite drive
the real engine exactly as devices and the CIC would.
"""
