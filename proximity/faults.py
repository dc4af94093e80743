"""Alarms about the engine itself, one per case: every case is affected.

A ``data_gap`` when the broker kept no session for the engine (what was sent to it meanwhile
may be gone), an ``engine_fault`` when the watchdog finds the decision loop stuck, and the
``engine_fault`` of a storage fault (the disk refuses the engine's writes: it goes on deciding
in memory), opened, updated while its reason changes, and ended when everything is written.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace

from proximity import reasons
from proximity.alarms import AlarmBook
from proximity.clock import iso_utc
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, AlarmType
from proximity.health import DeviceWatch

FAULT_NAMESPACE = uuid.UUID("c4f1a2d9-6b3e-4e87-9a05-2d7b8e1f6c34")
GAP_NAMESPACE = uuid.UUID("7e2b9c41-d853-4f6a-b1e0-93a4c5d8f217")


class EngineFaults:
    """The case-wide alarms of the engine (see the module's description)."""

    def __init__(self, health: DeviceWatch, book: AlarmBook) -> None:
        self.health = health
        self.book = book
        #: The open storage fault alarms (one per case); empty: none.
        self.storage: list[AlarmEvent] = []
        #: The newest fix time an earlier run of the engine recorded (NaN: none; set by the
        #: service from the evidence record): where a data gap begins at the first connection.
        self.previously_until = math.nan

    def data_gap(self, lost_at: float, at: float) -> list[AlarmEvent]:
        """One ``data_gap`` alarm per case: at ``at`` the broker had no session for the
        engine, so what was sent to it since ``lost_at`` (when the connection was lost; NaN
        at the first connection: since :attr:`previously_until`, the newest fix an earlier
        run recorded) may be gone. Nothing at the very first start of a deployment."""
        since = lost_at if math.isfinite(lost_at) else self.previously_until
        if not math.isfinite(since):
            return []
        return self.health.case_alarms(
            AlarmType.DATA_GAP,
            AlarmLevel.ALARM,
            reasons.session_lost(iso_utc(since), iso_utc(at)),
            at,
            GAP_NAMESPACE,
        )

    def stuck(self, reason: str, at: float) -> list[AlarmEvent]:
        """One ``engine_fault`` alarm per case: the engine has stopped deciding (``reason``),
        so no case is protected until it is back. Built from the last positions only, without
        evaluating anything: the watchdog calls it from its own thread while the decision
        loop may be stuck."""
        return self.health.case_alarms(
            AlarmType.ENGINE_FAULT,
            AlarmLevel.ESCALATION,
            reasons.engine_stuck(reason),
            at,
            FAULT_NAMESPACE,
        )

    def storage_fault(
        self, reason: str | None, at: float, journal: bool = True
    ) -> list[AlarmEvent]:
        """The ``engine_fault`` alarm of every case for a storage fault: opened with
        ``reason`` (the disk refuses the engine's writes, the journal's too when ``journal``;
        it goes on deciding in memory), updated when the reason changes while it is open,
        ended when ``reason`` is None (everything is written)."""
        if reason is None:
            events = [
                replace(
                    e,
                    state=AlarmState.ENDED,
                    t_decided=at,
                    reason=reasons.STORAGE_FAULT_OVER,
                    previous_level=None,
                )
                for e in self.storage
                if self.book.still_open(e.alarm_id)
            ]
            self.storage = []
            return events
        text = reasons.storage_fault(reason, journal)
        if self.storage:  # open already: the same alarms say what changed
            events = [
                replace(e, state=AlarmState.UPDATE, reason=text, t_decided=at)
                for e in self.storage
                if self.book.still_open(e.alarm_id)
            ]
        else:
            events = self.health.case_alarms(
                AlarmType.ENGINE_FAULT, AlarmLevel.ALARM, text, at, FAULT_NAMESPACE
            )
        self.storage = events
        return events
