"""The running engine: ingest -> engine -> CIC channel, wired on real MQTT connections.

One thread runs the loop: take everything the subscriber queued (natural batching), build
arrays, evaluate, publish the alarms, report rejections, and publish a retained status with
counters every ``status_interval_s`` (and ``offline`` through the MQTT will if the process
dies). The messages are taken in arrival order, each decided at its arrival stamp, with the
periodic sweeps placed between them by their due times (:mod:`proximity.timeline`): the
same messages give the same decisions whatever the batching and the load.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from cic.channel import MqttAlarmChannel
from cic.commands import command_publications, command_record
from cic.journal import Journal, StateError
from cic.messages import alarm_message, incident_message
from cic.notice import VictimNotices, notices_for
from ingest.batch import FixBatch
from ingest.codec import ACK_TOPIC
from ingest.http_server import HttpServer
from ingest.model import CommandAck, IngestError, Rejection, RejectReason, Wake
from ingest.osmand import make_app as make_osmand_app
from ingest.owntracks import aliases as owntracks_aliases
from ingest.owntracks import keys as owntracks_keys
from ingest.rejections import RejectionReporter
from ingest.subscriber import FixSubscriber
from ingest.transport import connect, disconnect, make_client, parse_broker_url
from numerics.uncertainty import MOBILITY_MPS
from proximity.cases import Case, Device
from proximity.clock import iso_utc
from proximity.engine import Engine
from proximity.errors import ProximityError
from proximity.events import AlarmEvent, AlarmLevel, AlarmState, wire_name
from proximity.memory import EngineMemory
from proximity.timeline import Item, SweepGrid, Timeline
from service.alarm_view import AlarmView
from service.api import ApiContext, make_api
from service.metrics import Metrics
from service.settings import OUT_SUFFIX, Settings, broker_access, rule_config
from service.watchdog import Watchdog
from storage.backlog import Retry
from storage.evidence import Entry, EvidenceLog, read_track
from storage.fixpack import FixBlock
from storage.registry import Change, Registry
from storage.signing import pseudonym_key
from storage.store import WRITE_ERRORS
from storage.users import Users, users_path

log = logging.getLogger(__name__)

#: How often the retention purge runs (and once at start).
PURGE_INTERVAL_S = 3600.0
#: When a purge the disk refused is tried again.
PURGE_RETRY_S = 60.0
#: A storage fault's alarm ends when no write has been refused for this long.
STORAGE_SETTLE_S = 10.0
#: The engine's state is saved at most this often when no alarm changed (with an alarm, at
#: once, in the alarm's transaction); the fixes it took are acknowledged once it is saved.
STATE_SAVE_S = 0.1

CONNECT_WAIT_S = 15.0
#: The exit status of an engine that stopped on a fault its watchdog found.
EXIT_FAULT = 3
#: How often the loop takes its counters for the HTTP API (status, /metrics).
SNAPSHOT_S = 0.2
#: The weight of the newest interval in a device's observed reporting cadence.
CADENCE_WEIGHT = 0.2
#: How long an HTTP request waits for the loop to apply the registry.
APPLY_WAIT_S = 15.0
#: How long the HTTP API's requests of the engine's state may wait for the loop.
ASK_WAIT_S = 5.0
#: How long the fault alarms may take to reach the broker before the process exits.
FAULT_PUBLISH_WAIT_S = 5.0


def scaled_clock(scale: float, epoch: float, offset_s: float = 0.0) -> Callable[[], float]:
    """The engine's clock: the wall clock moved by ``offset_s`` (the test suite runs a year
    ahead with it), standing at ``epoch`` until it reaches it, then running ``scale`` times
    faster: ``epoch + max(0, time.time() + offset_s - epoch) * scale`` (the moved wall clock
    itself when ``scale`` is 1). An evaluation run sets the epoch a little after the engine's
    start, so that no device has been silent when the first fixes come."""
    if scale == 1.0:
        if offset_s == 0.0:
            return time.time
        return lambda: time.time() + offset_s
    return lambda: epoch + max(0.0, time.time() + offset_s - epoch) * scale


def engine_for(
    settings: Settings, cases: list[Case], devices: list[Device], clock: Callable[[], float]
) -> Engine:
    """The engine that ``settings`` describe, over ``cases`` and ``devices``, on ``clock``."""
    return Engine(
        cases,
        devices,
        rules=rule_config(settings),
        default_top_speed_mps=MOBILITY_MPS[settings.default_mobility],
        unknown_accuracy_m=settings.unknown_accuracy_m,
        clock=clock,
    )


_T = TypeVar("_T")


@dataclass
class _Call:
    """Work for the decision loop's thread (:meth:`EngineService.call`), and its outcome."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Exception | None = None


def _finite(x: float, ndigits: int = 1) -> float | None:
    x = float(x)
    return round(x, ndigits) if math.isfinite(x) else None


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine (nothing on the way to read a password)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rises_to_alarm(event: AlarmEvent) -> bool:
    """An alarm that opens at level ``alarm`` or above, or rises to it: logged as a warning
    (a pre-alert, an update or an end is information)."""
    if event.level < AlarmLevel.ALARM:
        return False
    if event.state == AlarmState.OPEN:
        return True
    before = event.previous_level
    return event.state == AlarmState.UPDATE and before is not None and before < event.level


class EngineService:
    engine: Engine
    memory: EngineMemory
    grid: SweepGrid
    timeline: Timeline
    subscriber: FixSubscriber
    channel: MqttAlarmChannel
    _watch: Registry
    _data_version: int

    def __init__(self, settings: Settings, exit_process: Callable[[int], None] = os._exit) -> None:
        self.settings = settings
        #: How the watchdog ends the process on a fault (os._exit: the decision loop may be
        #: stuck, and a stuck thread must not keep a broken engine alive).
        self._exit_process = exit_process
        self._beat = time.monotonic()  # the decision loop's last round
        offset = settings.clock_offset_s
        epoch = settings.time_epoch if settings.time_epoch is not None else time.time() + offset
        #: The engine's time: the wall clock, or a faster one for evaluation runs.
        self.clock = scaled_clock(settings.time_scale, epoch, offset)
        try:
            self.broker = parse_broker_url(settings.broker)
        except IngestError as exc:
            raise ProximityError(str(exc)) from exc
        #: The engine's account and TLS files (the password is read here, never logged).
        self.access = broker_access(settings)
        with Registry(settings.db) as registry:
            self.cases = registry.cases()
            devices = registry.devices()
        self.devices = devices
        # The evidence record: the fixes used and the alarm messages sent, per case.
        self.evidence = EvidenceLog(
            settings.evidence or settings.db.with_suffix(".evidence.sqlite"),
            settings.evidence_key,
        )
        #: The entry count of each case at its last anchor (cases anchored since the start).
        self._anchored: dict[str, int] = {}
        self._fresh_engine()
        self._next_save = 0.0  # time.monotonic() of the next save when nothing is urgent
        self.started = time.time()
        self.online_since = float("nan")  # subscribed: fixes flow from here on
        self.messages_received = 0
        self._map_slots()
        #: Work other threads (the HTTP API) hand the decision loop, done between two steps.
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        #: The registry's change record: the seq the engine runs on (the engine thread's).
        self.case_file_version = 0
        self.changes_applied = 0  # how many times the registry was applied while running
        self._osmand: Any = None  # the HTTP input's app, told of changed devices
        #: What the HTTP API reads of the loop: its counters (taken every SNAPSHOT_S) and
        #: the alarm messages published, by (type, level, state); the loop's histograms.
        self._snapshot: dict[str, Any] = {}
        self._next_snapshot = 0.0
        self._by_type: dict[tuple[str, str, str], int] = {}
        self.metrics = Metrics(self.status_snapshot)
        n = len(self.engine.devices.ids)
        self._battery = np.full(n, np.nan)  # each device's last battery level, %
        self._cadence = np.full(n, np.nan)  # each device's reporting interval, seen, s
        self._last_fix = np.full(n, np.nan)  # each device's newest fix time, for the cadence
        self.notices_published = 0
        self.victim_notices = VictimNotices()  # what each protected person was told so far
        # Evidence entries the disk refused, in order (storage.backlog), and the fault.
        self._evidence_held: list[Entry | FixBlock] = []
        self._evidence_retry = Retry("the evidence record")
        self._storage_fault = ""  # what the open storage fault alarm said; "": none
        self._storage_busy = False  # sending the fault's own alarms
        self._storage_failing: tuple[Path, ...] = ()  # the files the open fault alarm names
        self._storage_clear_since = math.nan  # when the open fault stopped refusing writes

    def _map_slots(self) -> None:
        """Which cases each device slot takes part in, as CSR arrays (for the evidence
        record), from the engine's cases now."""
        slot_cases = [set[int]() for _ in self.engine.devices.ids]
        case_ids = [c.id for c in self.cases]
        for ci, c in enumerate(self.cases):
            for d in (*c.offenders, *c.protected):
                slot_cases[self.engine.slot_of[d]].add(ci)
        self._case_ids = case_ids
        self._slot_case_ptr = np.cumsum([0, *(len(x) for x in slot_cases)], dtype=np.int64)
        self._slot_cases = np.array([ci for x in slot_cases for ci in sorted(x)], dtype=np.int64)
        self._device_ids: npt.NDArray[Any] = np.array(self.engine.devices.ids, dtype=object)
        #: Device id -> its OwnTracks app (user, device): where its commands go.
        self._owntracks_of = {
            dev: app for app, dev in owntracks_aliases((d.id, d.info) for d in self.devices).items()
        }

    def call(self, fn: Callable[[], _T], timeout: float = 10.0) -> _T:
        """Run ``fn`` on the decision loop's thread, between two steps, and return what it
        returns (or raise what it raised); TimeoutError when the loop does not take it in
        ``timeout`` s. For other threads (the HTTP API): the engine's state is the loop's."""
        c = _Call(fn)
        self._calls.put(c)
        self.subscriber.put_local(Wake(self.clock()))  # the loop may be waiting for input
        if not c.done.wait(timeout):
            raise TimeoutError("the engine's loop did not answer in time")
        if c.error is not None:
            raise c.error
        return c.result

    def _run_calls(self) -> None:
        while True:
            try:
                c = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                c.result = c.fn()
            except Exception as exc:  # handed to the caller's thread
                c.error = exc
            c.done.set()

    def _follow_registry(self, force: bool = False) -> None:
        """Apply the registry when another connection (the HTTP API, ``proximity cases
        import`` or ``remove``) committed to it: the engine is rebuilt on the registry's
        cases and devices at this batch boundary, keeping the state of everything still
        there (by name, as across a restart), and every change of the change record goes
        into the evidence record of the cases it touches, with who made it."""
        version = self._watch.data_version()
        if version == self._data_version and not force:
            return
        self._data_version = version
        try:
            changes = self._watch.changes(after=self.case_file_version)
            if not changes:
                return  # another table of the file (the users, the audit log)
            cases, devices = self._watch.cases(), self._watch.devices()
        except (ProximityError, sqlite3.Error) as exc:
            log.error(
                "cannot read the changed registry %s: %s; trying again", self.settings.db, exc
            )
            self._data_version = -1
            return
        self._record_changes(changes)
        self._rebuild(cases, devices, changes)
        self.case_file_version = changes[-1].seq
        self.changes_applied += 1

    def _record_changes(self, changes: Sequence[Change]) -> None:
        """Each change in the evidence record of every case it touches (a device's
        description: every case that uses the device)."""
        now = self.clock()
        entries = []
        for ch in changes:
            touched = [ch.case_id] if ch.case_id else list(ch.detail.get("cases", []))  # type: ignore[call-overload]
            entries += [(str(c), now, "change", ch.to_dict()) for c in touched]
        self._record(entries)

    def _rebuild(self, cases: list[Case], devices: list[Device], changes: Sequence[Change]) -> None:
        """The engine on ``cases`` and ``devices``, with the state of the old one."""
        old, snapshot = self.engine, self.memory.snapshot()
        kept = {c.id for c in cases}
        # The open alarms of an ended case end now, said so to the CIC (nothing of the case
        # can be decided after this).
        who = {ch.case_id: ch.actor for ch in changes if ch.action == "case_ended"}
        ending = old.incidents.tag(
            [
                e.restated(
                    AlarmState.ENDED,
                    self.clock(),
                    f"the case was ended in the registry by {who.get(e.case_id, 'unknown')}"
                    ": the engine no longer watches it",
                    "registry",
                )
                for a in old.book.order
                if (e := old.book.last(a)) is not None
                and e.case_id not in kept
                and e.state not in (AlarmState.ENDED, AlarmState.CLOSED)
            ]
        )
        if ending:
            self._publish(ending)
        self.cases, self.devices = cases, devices
        self.engine = engine_for(self.settings, cases, devices, self.clock)
        self.memory = EngineMemory(self.engine)
        self.memory.restore(snapshot)
        for f in dataclasses.fields(old.stats):
            setattr(self.engine.stats, f.name, getattr(old.stats, f.name))
        self.engine.faults.previously_until = old.faults.previously_until
        self.engine.pursuit.adopt(old.pursuit)
        self.engine.start(old._t_last if math.isfinite(old._t_last) else self.clock())
        self.timeline = Timeline(self.engine, self.grid)
        old_slot = old.slot_of
        moved = [(old_slot[d], i) for i, d in enumerate(self.engine.devices.ids) if d in old_slot]
        src = np.array([a for a, _ in moved], dtype=np.int64)
        dst = np.array([b for _, b in moved], dtype=np.int64)
        for name in ("_battery", "_cadence", "_last_fix"):
            before = getattr(self, name)
            after = np.full(len(self.engine.devices.ids), np.nan)
            after[dst] = before[src]
            setattr(self, name, after)
        self._map_slots()
        self.subscriber.set_devices(
            owntracks_aliases((d.id, d.info) for d in devices),
            owntracks_keys((d.id, d.info) for d in devices),
        )
        if self._osmand is not None:
            self._osmand.state.set_devices((d.id, d.info) for d in devices)
        # The new layout is saved whole with the next save, at once.
        self._next_save = 0.0
        log.info(
            "applied %d registry change(s) (%s): %d case(s), %d device(s), %d pair(s)",
            len(changes),
            ", ".join(
                f"{c.action} {c.case_id or c.detail.get('device')} by {c.actor}"
                for c in changes[:5]
            )
            + (", ..." if len(changes) > 5 else ""),
            len(cases),
            len(self.engine.devices.ids),
            len(self.engine.pairs),
        )

    def _status(self, state: str) -> bytes:
        return orjson.dumps(self._status_dict(state))

    def status_snapshot(self) -> dict[str, Any]:
        """The counters as the loop last took them (for the HTTP API, from its threads)."""
        return dict(self._snapshot)

    def _take_snapshot(self, now: bool = False) -> None:
        if not now and time.monotonic() < self._next_snapshot:
            return
        self._next_snapshot = time.monotonic() + SNAPSHOT_S
        snap = self._status_dict("online")
        snap["_by_type"] = dict(self._by_type)
        self._snapshot = snap

    def _status_dict(self, state: str) -> dict[str, Any]:
        st = self.engine.stats
        heard = self.engine.devices.t_recv
        last = float(np.nanmax(heard)) if np.isfinite(heard).any() else math.nan
        payload: dict[str, Any] = {
            "state": state,
            "time": iso_utc(time.time()),
            "started": iso_utc(self.started),
            "online_since": iso_utc(self.online_since),
            "cases": len(self.cases),
            "devices": len(self.engine.devices.ids),
            "pairs": len(self.engine.pairs),
        }
        if state != "offline":
            payload |= {
                "messages_received": self.messages_received,
                "fixes_processed": st.fixes_applied,
                "fixes_late": st.fixes_late,
                "fixes_duplicate": st.fixes_duplicate,
                "fixes_implausible": st.fixes_implausible,
                "fixes_clock_ahead": st.fixes_clock_ahead,
                "fixes_missing": self.engine.health.fixes_missing,
                "batches": st.batches,
                "max_batch": st.max_batch,
                "pairs_evaluated": st.pairs_evaluated,
                "sweeps": st.sweeps,
                "rejected": dict(self.reporter.counts),
                "rejected_total": self.reporter.total,
                "sweeps_skipped": self.grid.skipped,
                "alarms_published": self.channel.published,
                "messages_undelivered": self.channel.unacknowledged,
                "alarms_awaiting_operator": self.engine.awaiting_operator,
                # Deprecated alias of messages_undelivered (the README's migration notes).
                "alarms_unacknowledged": self.channel.unacknowledged,
                "delivery_max_lag_ms": round(self.channel.max_lag_s * 1000.0, 1),
                "notices_published": self.notices_published,
                "commands_published": self.engine.pursuit.commands_sent,
                "command_acks": self.engine.pursuit.acks,
                "devices_in_pursuit": len(self.engine.pursuit.in_pursuit()),
                "open_alarms": self.engine.open_alarms,
                "storage": "fault" if self._storage_error() else "ok",
                "storage_error": self._storage_error() or None,
                "storage_held": len(self._evidence_held) + self.channel.held,
                "intake_unacknowledged": self.subscriber.unacknowledged,
                "queue_blocked": self.subscriber.blocked_puts,
                "queue_depth": self.subscriber.items.qsize(),
                "last_fix_processed": iso_utc(last),
                "last_fix_age_s": round(self.clock() - last, 1) if math.isfinite(last) else None,
                "registry_changes_applied": self.changes_applied,
                "registry_version": self.case_file_version,
            }
        return payload

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        log.info(
            "engine: %d case(s), %d device(s), %d pair(s) from %s",
            len(self.cases),
            len(self.engine.devices.ids),
            len(self.engine.pairs),
            s.db,
        )
        if not self.cases:
            log.warning(
                "the registry %s has no cases: import some with 'proximity cases import'", s.db
            )
        log.info("kernels ready in %.2f s", self.engine.warm_up())
        log.info(
            "evidence record %s, signed with %s (public key %s)",
            self.evidence.path,
            self.evidence.key_path,
            self.evidence.public_key,
        )

        # The registry is followed while the engine runs (_follow_registry): changes made
        # since the evidence record last recorded one are recorded now.
        self._watch = Registry(s.db)
        self._data_version = self._watch.data_version()
        self.case_file_version = self._watch.last_change()
        self._pending_changes = self._watch.changes(after=self.evidence.last_change())

        out = make_client(f"{s.client_id}{OUT_SUFFIX}")
        journal_path = s.journal or s.db.with_suffix(".journal.sqlite")
        # The one door out: alarms, status, notices and rejections alike.
        self.channel = MqttAlarmChannel(
            out, s.alarm_topic, Journal(journal_path), s.cap_topic or None, clock=self.clock
        )
        self.channel.will(s.status_topic, self._offline())
        self._restore()

        def publish_rejection(r: Rejection) -> None:
            self.channel.rejection(s.rejected_topic, orjson.dumps(r.to_dict()))

        self.reporter = RejectionReporter(publish_rejection)
        self.subscriber = FixSubscriber(
            self.broker,
            s.client_id,
            session_expiry_s=s.session_expiry_s,
            owntracks=owntracks_aliases((d.id, d.info) for d in self.devices),
            owntracks_keys=owntracks_keys((d.id, d.info) for d in self.devices),
            clock=self.clock,
            access=self.access,
        )
        # The publishing client has an account of its own (the broker's ACL gives it the
        # topics the engine writes; one account per client id, so neither can be taken over).
        out_access = self.access.as_user(f"{self.access.username}{OUT_SUFFIX}")
        log.info("broker %s (%s)", self.broker, self.access)
        if self.access.password and not self.broker.tls and not _loopback(self.broker.host):
            log.warning(
                "the broker password goes to %s in clear text: use mqtts:// (TLS)", self.broker
            )
        try:
            connect(out, self.broker, access=out_access if self.access.username else self.access)
            # What an earlier run journalled and never saw delivered goes out first, in order.
            self.channel.replay()
            self.subscriber.start()
        except IngestError as exc:
            raise ProximityError(str(exc)) from exc
        http: HttpServer | None = None
        watchdog: Watchdog | None = None
        try:
            http = self._start_http()
            if not self.subscriber.connected.wait(CONNECT_WAIT_S):
                raise ProximityError(
                    f"the broker at {self.broker} did not accept the subscription within"
                    f" {CONNECT_WAIT_S:.0f} s"
                )
            self.online_since = time.time()
            # Sweeps and silence count from here: before, nothing could arrive. The sweeps'
            # due times are a fixed grid of the engine's clock (proximity.timeline).
            start = self.clock()
            self.engine.start(start)
            self.grid = SweepGrid(s.sweep_interval_s, start)
            self.timeline = Timeline(self.engine, self.grid)
            self._record_changes(self._pending_changes)
            self._take_snapshot(now=True)
            self.channel.status(s.status_topic, self._status("online"))
            log.info("running: fixes from devices/+/fix, alarms to %s", s.alarm_topic)
            if s.watchdog_s > 0:
                self._beat = time.monotonic()
                watchdog = Watchdog([self._loop_check, self._client_check], self._fault)
                watchdog.start()
            self._loop(stop)
        finally:
            if watchdog is not None:
                watchdog.stop()
            if http is not None:
                http.stop()
            self.channel.status(s.status_topic, self._offline())
            # One last try of what a storage fault holds; what is then on disk is
            # acknowledged (and the fault's end sent) before the channel closes.
            self._flush_evidence(now=True, final=True)
            self.channel.flush(force=True)
            self._anchor()  # where each record stands as the engine stops
            self._check_storage(final=True)
            if self._save_state(now=True) and not self._storage_error():
                self.subscriber.acknowledge()
            self.channel.close()
            if self._storage_error():
                log.error(
                    "stopping during a storage fault: %d evidence entries and %d messages"
                    " not written; the %d fixes they hold stay unacknowledged at the broker"
                    " and come again at the next start",
                    len(self._evidence_held),
                    self.channel.held,
                    self.subscriber.unacknowledged,
                )
            self.subscriber.stop()
            disconnect(out)
            self.channel.journal.close()
            for case_id in self.evidence.cases():  # for comparing exports with, later
                count, head = self.evidence.head(case_id)
                log.info("evidence of case %s: %d entries, head %s", case_id, count, head)
            self.evidence.close()
            self._watch.close()
            log.info("stopped")

    def _fresh_engine(self) -> None:
        """The engine of the case file, as if it had never run, and what it must not forget
        (saved with each batch, restored at start)."""
        self.engine = engine_for(self.settings, self.cases, self.devices, self.clock)
        self.memory = EngineMemory(self.engine)
        # Where a data gap begins if the broker has lost the session when the engine connects.
        self.engine.faults.previously_until = self.evidence.last_fix_time()

    def _restore(self) -> None:
        """What an earlier run saved (the alarm book, the rules' and the devices' state) is
        put back before any fix is taken in: its episodes go on under their ids."""
        try:
            saved = self.channel.journal.load_state()
        except StateError as exc:
            log.error("%s; starting without it", exc)
            return
        if saved is None:
            return
        try:
            alarms = self.memory.restore(saved)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            log.error(
                "the saved engine state in %s does not fit this engine (%s: %s); starting"
                " without it",
                self.channel.journal.path,
                type(exc).__name__,
                exc,
            )
            self._fresh_engine()  # a half-restored engine is no engine
            return
        book = self.engine.book
        still = [a for a in book.order if book.still_open(a)]
        self.channel.recall(still)
        # Pursuit is not saved: the open alarms at level alarm put their devices back in
        # pursuit now (the commands go again; a device takes a repeat once).
        resumed = self.engine.pursuit.resume(
            [e for a in still if (e := book.last(a)) is not None], self.clock()
        )
        if resumed:
            log.info("pursuit resumed for %d device(s) of open alarms", resumed)
        log.info(
            "restored the engine's state: %d alarm(s) remembered, %d still open, %d pair(s)"
            " at a level",
            alarms,
            len(still),
            int(np.count_nonzero(self.engine.levels.level)),
        )
        if self.memory.dropped:
            log.warning(
                "forgot %d alarm(s) of cases no longer in the registry %s, %d of them open"
                " (the engine sends nothing more about them: close them at the CIC)%s",
                self.memory.dropped,
                self.settings.db,
                len(self.memory.dropped_open),
                "".join(f"\n  case {c}: alarm {a}" for c, a in self.memory.dropped_open),
            )

    def _save_state(self, now: bool = False) -> bool:
        """Save what changed in the engine's state, when a save is due (or ``now``); return
        whether everything decided so far is saved (the fixes may then be acknowledged)."""
        if not now and time.monotonic() < self._next_save:
            return False
        self._next_save = time.monotonic() + STATE_SAVE_S
        delta = self.memory.delta()
        if not delta:
            return True
        if not self.channel.save_state(delta):
            return False
        self.memory.saved(delta)
        return True

    def _loop_check(self) -> str | None:
        """The watchdog's check of the decision loop: it must go round."""
        age = time.monotonic() - self._beat
        if age <= self.settings.watchdog_s:
            return None
        return (
            f"the decision loop has not gone round for {age:.0f} s"
            f" ({self.subscriber.items.qsize()} messages waiting)"
        )

    def _client_check(self) -> str | None:
        """The watchdog's check of the intake: the MQTT client's network thread must live."""
        if self.subscriber.network_alive():
            return None
        return "the MQTT client's network thread has stopped: no message is received"

    def _fault(self, reason: str) -> None:
        """The watchdog found the engine stalled: tell the CIC, for every case, then end the
        process (non-zero, for the supervisor; the broker then publishes the offline will).
        The alarms go straight to the broker: the journal belongs to the stuck loop."""
        sent = [
            self.channel.send_straight(alarm_message(event, self.engine.cases[event.case_id]))
            for event in self.engine.fault_events(reason, self.clock())
        ]
        deadline = time.monotonic() + FAULT_PUBLISH_WAIT_S
        for info in sent:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        log.critical("exiting with status %d for a restart: %s", EXIT_FAULT, reason)
        logging.shutdown()
        self._exit_process(EXIT_FAULT)

    def _start_http(self) -> HttpServer | None:
        """The HTTP port, when ``http_listen`` is set: the operator service
        (:mod:`service.api`) and the OsmAnd / Traccar Client input, whose fixes and
        rejections join the MQTT input's queue."""
        listen = self.settings.http_listen
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ProximityError(f"http_listen must be HOST:PORT, got {listen!r}")
        app = make_osmand_app(
            ((d.id, d.info) for d in self.devices), self.subscriber.put_local, self.clock
        )
        self._osmand = app
        self._users = Users(users_path(self.settings.db))
        api = make_api(self._api_context(self._users), extra=app)
        server = HttpServer(api, host, int(port))
        try:
            server.start()
        except RuntimeError as exc:
            raise ProximityError(f"cannot serve the HTTP input on {listen}: {exc}") from exc
        log.info(
            "operator service on http://%s/ (API /docs, console /), OsmAnd / Traccar Client"
            " input on http://%s/osmand/SECRET",
            listen,
            listen,
        )
        return server

    def _offline(self) -> bytes:
        return orjson.dumps({"state": "offline"})

    def _loop(self, stop: threading.Event) -> None:
        s = self.settings
        # Sweeps follow the engine's clock (faster in evaluation runs); status, the wall's.
        next_status = time.monotonic() + s.status_interval_s
        next_purge = time.monotonic()
        next_anchor = time.monotonic() + s.anchor_interval_s
        while not stop.is_set():
            self._beat = time.monotonic()
            due_in = (self.grid.next - self.clock()) / s.time_scale
            wait = max(0.0, min(0.5, next_status - time.monotonic(), due_in))
            items, horizon = self.subscriber.drain(timeout=wait)
            self._step(items, horizon)
            self._run_calls()
            self._follow_registry()
            self._take_snapshot()
            self.channel.poll()  # the broker's acknowledgements: delivered, in the journal
            self._flush_evidence()
            self._check_storage()
            if self._save_state() and self.subscriber.unacknowledged and not self._storage_error():
                # Decided, and their effect on disk: now the broker may forget them. (While
                # the disk refuses writes they stay the broker's: a restart gets them again.)
                self.subscriber.acknowledge()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + (
                    PURGE_INTERVAL_S if self._purge() else PURGE_RETRY_S
                )
            if time.monotonic() >= next_anchor:
                self._anchor()
                next_anchor = time.monotonic() + s.anchor_interval_s
            if time.monotonic() >= next_status:
                self.channel.status(s.status_topic, self._status("online"))
                next_status = time.monotonic() + s.status_interval_s

    def _step(self, items: Sequence[Item | Wake | CommandAck], horizon: float) -> None:
        """Take ``items`` (in arrival order) and the sweeps due up to ``horizon``: each sweep
        after the items stamped at or before its instant (:class:`Timeline`); record and
        publish what each step decided before the next."""
        # A Wake is no message: another thread had work for the loop (done after the step).
        messages: list[Item] = [i for i in items if not isinstance(i, Wake | CommandAck)]
        acks = [i for i in items if isinstance(i, CommandAck)]
        self.messages_received += len(messages) + len(acks)
        if acks:  # the devices' acknowledgements of commands: the pursuit's, not a decision
            self._command_acks(acks)
        rejected = [i for i in messages if isinstance(i, Rejection)]
        if rejected:
            self.reporter.report(rejected)
        skipped = self.grid.skipped
        for seg in self.timeline.step(messages, horizon):
            if seg.kind == "gap":  # the subscriber's own session-loss marker: no message
                self.messages_received -= 1
            if seg.rejected:
                self.reporter.report(seg.rejected)
            if seg.batch is not None:
                self._watch_devices(seg.batch)
            if seg.action is not None and not seg.alarms and not seg.rejected:
                a = seg.action
                self.reporter.report(
                    [
                        Rejection(
                            ACK_TOPIC,
                            None,
                            RejectReason.UNKNOWN_ALARM,
                            f"no open or remembered alarm {a.alarm_id!r} to {a.action}"
                            " (already closed, or never raised by this engine)",
                            a.t_recv,
                        )
                    ]
                )
            self._publish(seg.alarms)
            if seg.batch is not None:  # the alarms first: the fixes' record after them
                self._record_fixes(seg.batch)
        if self.grid.skipped > skipped:
            log.warning(
                "the engine fell more than %d sweeps behind its clock: skipped the oldest %d",
                self.grid.max_catch_up,
                self.grid.skipped - skipped,
            )

    def _record(self, entries: Sequence[Entry | FixBlock]) -> None:
        """Entries for the evidence record: written now, or, while the disk refuses writes,
        kept in order behind the refused ones (:meth:`_flush_evidence`)."""
        if not entries:
            return
        self._evidence_held.extend(entries)
        self._flush_evidence(now=not self._evidence_retry.failing)

    def _flush_evidence(self, now: bool = False, final: bool = False) -> None:
        """Write the held evidence entries (when a try is due, or ``now``), and a slice of the
        fold of the staged fixes when one is due (all of it if ``final``)."""
        if not (now or self._evidence_retry.due()):
            return
        try:
            if self._evidence_held:
                self.evidence.append(self._evidence_held)
                self._evidence_held = []
            if final:
                self.evidence.fold_all(self.clock())
            else:
                self.evidence.fold(self.clock())
        except WRITE_ERRORS as exc:
            if self._evidence_retry.failed(exc):
                log.error("the evidence record %s refuses writes: %s", self.evidence.path, exc)
        else:
            if self._evidence_retry.succeeded():
                log.warning("the evidence record %s takes writes again", self.evidence.path)
        self._check_storage()

    def _storage_files(self) -> list[tuple[Retry, Path]]:
        """The files the engine writes, each with its retry schedule: the journal (once the
        channel is made, in run()) and the evidence record."""
        channel = getattr(self, "channel", None)
        journal = [] if channel is None else [(channel.retry, channel.journal.path)]
        return [*journal, (self._evidence_retry, self.evidence.path)]

    def _storage_error(self) -> str:
        """What the disk refuses, in words ("" when it refuses nothing)."""
        return "; ".join(
            f"{r.what} {path} refuses writes ({r.error})"
            for r, path in self._storage_files()
            if r.failing
        )

    def _failing_files(self) -> tuple[Path, ...]:
        """The files that refuse writes now."""
        return tuple(path for r, path in self._storage_files() if r.failing)

    def _check_storage(self, final: bool = False) -> None:
        """Open the storage fault alarm of every case when a write is first refused; end it
        when everything held is written and no write has been refused for
        :data:`STORAGE_SETTLE_S` (at once when ``final``), so that a disk on the edge of full
        does not open and end it at every try."""
        if self._storage_busy:  # the fault's own alarms are being sent
            return
        error = self._storage_error()
        if error:
            self._storage_clear_since = math.nan
            failing = self._failing_files()
            if self._storage_fault and failing == self._storage_failing:
                return  # the fault goes on as its alarm says
            # It begins, or another file refuses too, or one is back: the alarm says so.
            first = not self._storage_fault
            self._storage_busy = True
            try:
                self._storage_fault, self._storage_failing = error, failing
                log.critical("storage fault: %s%s", error, "; deciding on in memory" * first)
                self._publish(
                    self.engine.storage_fault_events(
                        error, self.clock(), self.channel.retry.failing
                    )
                )
            finally:
                self._storage_busy = False
            return
        if not self._storage_fault:
            return
        if math.isnan(self._storage_clear_since):
            self._storage_clear_since = time.monotonic()
        if not final and time.monotonic() - self._storage_clear_since < STORAGE_SETTLE_S:
            return
        self._storage_busy = True
        try:
            log.warning("storage fault over: everything held is written")
            self._publish(self.engine.storage_fault_events(None, self.clock()))
            self._storage_fault, self._storage_failing = "", ()
        finally:
            self._storage_busy = False
        self._check_storage()  # the end refused again as it was sent: a new fault

    def _anchor(self) -> None:
        """Anchor, outside the evidence record, the head of every case's record that grew
        since its last anchor: signed, journalled and published on the anchor topic (the CIC
        keeps them), so that a record edited or cut later shows against them. A journal that
        refuses the write leaves them for the next round."""
        anchors = []
        now = self.clock()
        # Every case once (a crash may have left a record's last entries unanchored), then
        # those written since (the others have not grown).
        first = not self._anchored
        for case_id in self.evidence.cases() if first else self.evidence.known():
            count, _ = self.evidence.head(case_id)
            if count and self._anchored.get(case_id) != count:
                anchors.append(self.evidence.anchor(case_id, now))
        if anchors and self.channel.send_records(self.settings.anchor_topic, anchors):
            self._anchored.update((a["case_id"], a["count"]) for a in anchors)
            log.debug("anchored the evidence of %d case(s)", len(anchors))

    def _purge(self) -> bool:
        """Retention: location history older than retention_days leaves the record (its
        hashes stay), except for cases with an open alarm; the purge is recorded. False when
        the disk refused it (it is tried again later)."""
        now = self.clock()
        cutoff = now - self.settings.retention_days * 86_400.0
        try:
            removed = self.evidence.purge(cutoff, self.engine.open_case_ids(), now)
        except WRITE_ERRORS as exc:
            log.error("retention: the evidence record refused the purge (%s); trying later", exc)
            return False
        if removed:
            log.info(
                "retention: removed %d fix entries older than %s from %d case(s)",
                sum(removed.values()),
                iso_utc(cutoff),
                len(removed),
            )
        return True

    def _watch_devices(self, batch: FixBatch) -> None:
        """Per batch, for the device status: each device's last battery level and its
        reporting cadence as seen (a running mean of the intervals between its fixes)."""
        self.metrics.batch_size.observe(len(batch))
        if len(batch) == 0:
            return
        if batch.battery_pct is not None:
            has = np.isfinite(batch.battery_pct)
            self._battery[batch.slot[has]] = batch.battery_pct[has]  # the last one wins
        # Per device of the batch (not per device of the engine): its newest and oldest fix.
        slots, inv, count = np.unique(batch.slot, return_inverse=True, return_counts=True)
        newest = np.full(slots.size, -np.inf)
        np.maximum.at(newest, inv, batch.t_fix)
        oldest = np.full(slots.size, np.inf)
        np.minimum.at(oldest, inv, batch.t_fix)
        prev = self._last_fix[slots]
        span = newest - np.where(np.isfinite(prev), prev, oldest)
        steps = count - (~np.isfinite(prev)).astype(np.int64)
        seen = (steps > 0) & (span > 0)
        interval = np.where(seen, span / np.maximum(steps, 1), np.nan)
        old = self._cadence[slots]
        mixed = np.where(np.isfinite(old), old + CADENCE_WEIGHT * (interval - old), interval)
        self._cadence[slots[seen]] = mixed[seen]
        self._last_fix[slots] = np.maximum(np.nan_to_num(prev, nan=-np.inf), newest)

    def _device_status(self) -> list[dict[str, Any]]:
        """Each device's status (the HTTP API's /api/devices/status; the loop's thread)."""
        e, now = self.engine, self.clock()
        book = e.book
        health_types = {
            "signal_lost",
            "victim_silent",
            "battery_low",
            "power_off",
            "tamper",
            "pursuit_ignored",
        }
        chased = e.pursuit.in_pursuit()
        health: dict[str, list[str]] = {}
        for a in list(book.order):
            last = book.last(a)
            if last is None or last.state in (AlarmState.ENDED, AlarmState.CLOSED):
                continue
            kind = wire_name(last.type)
            if kind in health_types | {"separated"} and last.trigger.device:
                health.setdefault(last.trigger.device, []).append(f"{kind} {a}")
        out = []
        for slot, dev in enumerate(e.devices.ids):
            t_fix = float(e.devices.t_fix[slot])
            of = e.health.cases_of[slot]
            cases = [c.id for c, _ in of]
            role = "offender" if any(offender for _, offender in of) else "protected"
            out.append(
                {
                    "device": dev,
                    "role": role,
                    "cases": cases,
                    "last_fix": iso_utc(t_fix),
                    "last_fix_age_s": round(now - t_fix, 1) if math.isfinite(t_fix) else None,
                    "battery_pct": _finite(self._battery[slot]),
                    "reporting_interval_s": _finite(e.health.interval_s[slot]),
                    "reporting_interval_seen_s": _finite(self._cadence[slot]),
                    "silent": bool(e.health.silent[slot]),
                    "health_alarms": sorted(set(health.get(dev, []))),
                    # How it is commanded (pursuit mode): mqtt, owntracks, or none (HTTP only).
                    "commands": e.pursuit.mode(dev),
                    "in_pursuit": dev in chased,
                }
            )
        return out

    def _case_positions(self, case_id: str) -> dict[str, Any]:
        """The case's parties' last positions now (the loop's thread)."""
        e, now = self.engine, self.clock()
        case = e.cases.get(case_id)
        if case is None:
            return {"case_id": case_id, "offenders": [], "protected": []}

        def where(dev: str) -> dict[str, Any]:
            p = e._position(e.slot_of[dev], now)
            return {
                "device": dev,
                "lat": _finite(p.lat, 7),
                "lon": _finite(p.lon, 7),
                "acc_m": _finite(p.acc_m),
                "radius_m": _finite(p.radius_m),
                "fix_time": iso_utc(p.t_fix),
                "age_s": _finite(now - p.t_fix),
            }

        return {
            "case_id": case_id,
            "summary": dict(case.summary),
            "order_distance_m": case.order_distance_m,
            "zones": case.zones,
            "offenders": [where(d) for d in case.offenders],
            "protected": [where(d) for d in case.protected],
        }

    def _ready(self) -> dict[str, bool]:
        """The readiness checks of /ready (read from other threads: flags only)."""
        sub = getattr(self, "subscriber", None)
        channel = getattr(self, "channel", None)
        return {
            "intake": bool(sub is not None and sub.connected.is_set() and sub.network_alive()),
            "journal_writable": bool(channel is not None and not channel.retry.failing),
            "broker_connected": bool(channel is not None and channel.connected()),
            "deciding": time.monotonic() - self._beat <= max(5.0, self.settings.watchdog_s),
        }

    def _api_context(self, users: Users) -> ApiContext:
        s = self.settings
        journal = s.journal or s.db.with_suffix(".journal.sqlite")
        evidence_path = self.evidence.path
        return ApiContext(
            db=s.db,
            users=users,
            view=AlarmView(journal, s.alarm_topic, s.incident_topic),
            clock=self.clock,
            act=self.subscriber.put_local,
            apply_registry=lambda: self.call(
                lambda: self._follow_registry(force=True), APPLY_WAIT_S
            ),
            status=lambda: {k: v for k, v in self.status_snapshot().items() if k[0] != "_"},
            devices=lambda: self.call(self._device_status, ASK_WAIT_S),
            positions=lambda case_id: self.call(lambda: self._case_positions(case_id), ASK_WAIT_S),
            track=lambda case_id, since: read_track(evidence_path, case_id, since),
            ready=self._ready,
            metrics=self.metrics.text,
            pseudonym_key=pseudonym_key(s.db.with_suffix(".pseudonym.key")),
            research_grid_m=s.research_grid_m,
        )

    def _record_fixes(self, batch: FixBatch) -> None:
        """The fixes the engine used (not late, duplicate or set aside) go on record, each
        once per case of its device: array work per batch, and one staged block."""
        if not self.engine.intake.used_rows:
            return
        rows = np.concatenate(self.engine.intake.used_rows)
        if rows.size == 0:  # every fix of the batch late, duplicate or set aside
            return
        # Each used fix once per case of its device, grouped by case: array work per batch.
        lo = self._slot_case_ptr[batch.slot[rows]]
        n = self._slot_case_ptr[batch.slot[rows] + 1] - lo
        fix_of = np.repeat(rows, n)
        first = np.repeat(lo - (np.cumsum(n) - n), n)
        case_of = self._slot_cases[first + np.arange(fix_of.size)]
        order = np.argsort(case_of, kind="stable")
        case_of, fix_of = case_of[order], fix_of[order]
        # One block for the batch, staged; the evidence record folds each case's fixes into
        # its chain later (storage.evidence: one signed entry per case per fold, not per
        # batch).
        cases, case_at = np.unique(case_of, return_inverse=True)
        slots, dev_at = np.unique(batch.slot[fix_of], return_inverse=True)
        acc = batch.acc_m[fix_of]
        block = FixBlock(
            float(batch.t_fix[rows].max()),
            [self._case_ids[c] for c in cases.tolist()],
            case_at.astype(np.int64),
            self._device_ids[slots].tolist(),
            dev_at.astype(np.int64),
            {
                "t_fix": batch.t_fix[fix_of],
                "t_recv": batch.t_recv[fix_of],
                "lat": batch.lat[fix_of],
                "lon": batch.lon[fix_of],
                "acc_m": np.where(np.isnan(acc), -1.0, acc),  # -1: unknown
                "seq": batch.seq[fix_of],  # -1: none
            },
        )
        self._record([block])

    def _publish(self, events: list[AlarmEvent]) -> None:
        if not events and not self.engine.pursuit.pending:
            return
        sent: list[tuple[str, float, str, dict[str, Any]]] = []
        messages = [alarm_message(e, self.engine.cases[e.case_id]) for e in events]
        # The incidents they changed, on their own topic (proximity.incidents).
        incidents = [
            (c.incident_id, self.settings.incident_topic, incident_message(c))
            for c in self.engine.incidents.take()
        ]
        # What goes to the devices: the pursuit's commands and the notices.
        raw, records = self._device_messages(events)
        # The messages and the state that raised them, in one transaction.
        state = self.memory.delta()
        if self.channel.send_all(messages, state, incidents, raw):
            self.memory.saved(state)
        published = self.clock()
        for event, message in zip(events, messages, strict=True):
            sent.append((event.case_id, event.t_decided, "alarm", message))
            key = (message["type"], message["level"], message["state"])
            self._by_type[key] = self._by_type.get(key, 0) + 1
            received = event.trigger.t_recv
            if event.cause in ("fix", "event") and math.isfinite(received):
                self.metrics.decision_latency.observe(max(0.0, event.t_decided - received))
                if event.cause == "fix":
                    self.metrics.publication_latency.observe(max(0.0, published - received))
            log.log(
                logging.WARNING if _rises_to_alarm(event) else logging.INFO,
                "alarm %s %s %s case %s: %s",
                event.alarm_id[:8],
                wire_name(event.state),
                wire_name(event.level),
                event.case_id,
                event.reason,
            )
        self._record(sent + records)
        self._check_storage()  # a journal that has just refused this alarm: tell the CIC

    def _device_messages(
        self, events: list[AlarmEvent]
    ) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, float, str, dict[str, Any]]]]:
        """The messages to devices that ``events`` and the pursuit's timers decided
        (``(key, topic, payload)``, journalled with the alarms), and their evidence entries:
        the pursuit's commands, the offender's "move away" notices (built without any of
        the victim's data) and the protected person's notices."""
        raw: list[tuple[str, str, bytes]] = []
        records: list[tuple[str, float, str, dict[str, Any]]] = []
        for cmd in self.engine.pursuit.take():
            pubs = command_publications(cmd, self._owntracks_of)
            raw += [(cmd.command_id, topic, payload) for topic, payload in pubs]
            body = command_record(cmd) | {"topics": [topic for topic, _ in pubs]}
            records += [(case_id, cmd.issued, "command", body) for case_id in cmd.case_ids]
            log.info("command %s to %s: %s", cmd.command_id[:8], cmd.device, cmd.reason)
        for notice in notices_for(events):
            raw.append((notice.notice_id, notice.topic, notice.payload))
            raw += self._owntracks_notice(notice.notice_id, notice.device, notice.text)
            body = orjson.loads(notice.payload) | {"device": notice.device, "to": "offender"}
            records.append((notice.case_id, notice.issued, "notice", body))
            self.notices_published += 1
        for vn in self.victim_notices.take(events, self.engine.cases):
            raw.append((vn.notice_id, vn.topic, vn.payload))
            raw += self._owntracks_notice(vn.notice_id, vn.device, str(vn.body["text"]))
            body = dict(vn.body) | {"device": vn.device, "to": "protected"}
            records.append((vn.case_id, self.clock(), "notice", body))
            self.notices_published += 1
        return raw, records

    def _owntracks_notice(self, key: str, device: str, text: str) -> list[tuple[str, str, bytes]]:
        """A notice's text to an OwnTracks app too, as the app shows one (its ``action``
        command with a ``notification``: the iOS app shows it; others ignore it)."""
        app = self._owntracks_of.get(device)
        if app is None:
            return []
        body = {"_type": "cmd", "action": "action", "notification": text}
        return [(key, f"owntracks/{app[0]}/{app[1]}/cmd", orjson.dumps(body))]

    def _command_acks(self, acks: list[CommandAck]) -> None:
        """Devices' acknowledgements of commands: taken into the pursuit and recorded in the
        evidence record of its cases; one of a command the engine does not wait for is a
        rejection (``unknown_command``)."""
        pursuit = self.engine.pursuit
        rejected: list[Rejection] = []
        records: list[tuple[str, float, str, dict[str, Any]]] = []
        for a in acks:
            chase = pursuit.chases.get(a.device)
            ok = a.status == "ok"
            if chase is None or not pursuit.acknowledged(a.device, a.command_id, a.t_recv, ok):
                rejected.append(
                    Rejection(
                        f"devices/{a.device}/cmd/ack",
                        a.device,
                        RejectReason.UNKNOWN_COMMAND,
                        f"no command {a.command_id!r} of device {a.device!r} is waiting for"
                        " an acknowledgement (an older one, or the pursuit is over)",
                        a.t_recv,
                    )
                )
                continue
            if not ok:
                log.warning("device %s refused command %s: %s", a.device, a.command_id, a.detail)
            body = {
                "device": a.device,
                "command_id": a.command_id,
                "status": a.status,
                "detail": a.detail,
                "received": iso_utc(a.t_recv),
            }
            records += [(case_id, a.t_recv, "command_ack", body) for case_id in sorted(chase.cases)]
        if rejected:
            self.reporter.report(rejected)
        self._record(records)
