"""The edge where bytes become validated fixes.

``ingest`` owns the MQTT subscription and topic layout, the payload codecs, validation and
rejection with a reason, and micro-batching of fixes into arrays for the engine. It knows
nothing of geometry or alarms: what leaves it is a :class:`~ingest.batch.FixBatch` of plain
arrays, or a :class:`~ingest.model.Rejection` that says why a message was not used.
"""

from ingest.model import Fix, IngestError, Rejection, RejectReason

__all__ = ["Fix", "IngestError", "RejectReason", "Rejection"]
