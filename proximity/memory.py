"""What the engine must not forget across a restart, and what changed since it was saved.

The engine's state is arrays with one row per device, per pair or per zone entry (positions,
the motion filter, the fix filter, the level machines, the health watch) and a few small
records (episode start times, probing entries, open sequence gaps, the alarm book).
:class:`EngineMemory` names all of it. :meth:`EngineMemory.delta` says what changed since
the last save (the arrays in chunks of :data:`CHUNK` values compared with a copy of what was
saved, the records compared whole, the book's alarms that were written since), so that a
save with each batch costs what the batch changed, not the engine's size;
:meth:`EngineMemory.saved` takes a delta as written. :meth:`EngineMemory.restore` puts a
saved state back, row by row by name (device id, ``case/offender/victim``,
``case/zone/offender``), so a case file changed between two runs keeps the state of
everything that is still there.

The storage (:mod:`cic.journal`) writes a delta in the same transaction as the alarm
messages it goes with; the engine's loop acknowledges fixes to the broker only once their
effect is saved. This module holds plain values only (arrays, numbers, strings, lists and
dicts): no file, no JSON.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from numerics.uncertainty import Classification
from proximity.alarms import APPROACH, PAIR, PROBING, SILENCE, ZONE, ZONE_PROBING
from proximity.events import (
    AlarmEvent,
    AlarmLevel,
    AlarmState,
    AlarmType,
    Motion,
    Position,
    ZoneRef,
)
from proximity.health import Gap
from proximity.states import LEVEL_FIELDS, EntryCounter, LevelMachine
from proximity.suspensions import Suspension

if TYPE_CHECKING:
    from proximity.engine import Engine

#: Values per saved chunk of an array (8 KB of float64).
CHUNK = 1024
#: Version of the saved layout: a state saved by another version is not restored.
VERSION = 1

DEVICE, PAIR_AXIS, ENTRY = "device", "pair", "entry"
#: The axis of each rule's subjects (SILENCE: a (case id, device) pair).
_SUBJECT_AXIS = {PAIR: PAIR_AXIS, APPROACH: PAIR_AXIS, PROBING: PAIR_AXIS, ZONE: ENTRY}
_SUBJECT_AXIS[ZONE_PROBING] = ENTRY


@dataclass
class Delta:
    """What to write: ``axes`` and ``layout`` when everything is written afresh (``full``),
    the changed chunks ``(array, chunk, values)``, the changed records, and the alarms
    written since (``(alarm id, order, body)``) and forgotten."""

    full: bool = False
    axes: dict[str, list[str]] = field(default_factory=dict)
    layout: dict[str, tuple[str, str, tuple[int, ...]]] = field(default_factory=dict)
    chunks: list[tuple[str, int, npt.NDArray[Any]]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    alarms: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.full or self.chunks or self.records or self.alarms or self.forgotten)


@dataclass
class Saved:
    """A state as read back: the axes' names, each array with its axis, the records, and
    the book's alarms in their order."""

    axes: dict[str, list[str]]
    arrays: dict[str, tuple[str, npt.NDArray[Any]]]
    records: dict[str, Any]
    alarms: list[dict[str, Any]]  # bodies (EngineMemory._alarm_body) with their "order"
    version: int = VERSION


def _levels(prefix: str, axis: str, m: LevelMachine) -> dict[str, tuple[str, npt.NDArray[Any]]]:
    return {f"{prefix}.{n}": (axis, getattr(m, n)) for n in LEVEL_FIELDS}


def _attrs(prefix: str, axis: str, obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {f"{prefix}.{n}": (axis, getattr(obj, n)) for n in names}


class EngineMemory:
    """The state of ``engine`` to save and restore (see the module's description)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = e = engine
        self.axes: dict[str, list[str]] = {
            DEVICE: list(e.devices.ids),
            PAIR_AXIS: [e.proximity.describe.name(p) for p in range(len(e.pairs))],
            ENTRY: e.zones.entry_names(),
        }
        self._index = {a: {k: i for i, k in enumerate(keys)} for a, keys in self.axes.items()}
        self.arrays: dict[str, tuple[str, npt.NDArray[Any]]] = {
            **_attrs("devices", DEVICE, e.devices, ("acc_m", "t_fix", "t_recv", "seq")),
            **_attrs("core", DEVICE, e.core, ("rows", "lat", "lon", "t_eff", "acc_m", "kf")),
            **_attrs(
                "quality",
                DEVICE,
                e.quality,
                ("pend_lat", "pend_lon", "pend_t", "pend_acc", "n_rejected", "jumped_t"),
            ),
            **_attrs("health", DEVICE, e.health, ("last_seen", "silent", "last_seq", "last_seq_t")),
            **_attrs("intake", DEVICE, e.intake, ("t_unchecked", "t_stamped")),
            **_attrs("cadence", DEVICE, e.intake.cadence, ("gaps", "count", "learned_s")),
            **_attrs("approach", PAIR_AXIS, e.approach_rule, ("anchor", "anchor_t")),
            **_attrs("proximity", PAIR_AXIS, e.proximity, ("restarted_t", "probe_pending")),
            **_levels("levels", PAIR_AXIS, e.levels),
            **_levels("approach", PAIR_AXIS, e.approach),
            **_levels("zones", ENTRY, e.zones.levels),
        }
        self._shadow: dict[str, npt.NDArray[Any]] | None = None  # as last saved; None: nothing
        self._records: dict[str, Any] = {}
        #: Saved alarms of cases no longer in the registry, not restored (restore()), and
        #: (case id, alarm id) of those among them that were still open.
        self.dropped = 0
        self.dropped_open: list[tuple[str, str]] = []

    # -- saving -------------------------------------------------------------------------

    def delta(self) -> Delta:
        """What changed since the last save (everything, the first time)."""
        d = Delta(full=self._shadow is None)
        if d.full:
            d.axes = {a: list(k) for a, k in self.axes.items()}
            d.layout = {n: (a, arr.dtype.str, arr.shape) for n, (a, arr) in self.arrays.items()}
        for name, (_, arr) in self.arrays.items():
            flat = arr.reshape(-1)
            if self._shadow is None:
                changed = list(range((flat.size + CHUNK - 1) // CHUNK))
            else:
                changed = _changed_chunks(flat, self._shadow[name])
            d.chunks.extend(
                (name, int(c), flat[c * CHUNK : (c + 1) * CHUNK].copy()) for c in changed
            )
        for name, value in self._current_records().items():
            if d.full or self._records.get(name) != value:
                d.records[name] = value
        book = self.engine.book
        order = book.order
        d.alarms = [
            (alarm_id, order[alarm_id], self._alarm_body(alarm_id))
            for alarm_id in (list(order) if d.full else book.dirty)
            if alarm_id in order
        ]
        d.forgotten = [a for a in book.dirty if a not in order]
        return d

    def saved(self, d: Delta) -> None:
        """``d`` is written: it is what the next delta is measured against."""
        if self._shadow is None:
            self._shadow = {n: arr.reshape(-1).copy() for n, (_, arr) in self.arrays.items()}
        else:
            for name, c, values in d.chunks:
                self._shadow[name][c * CHUNK : c * CHUNK + values.size] = values
        self._records.update(d.records)
        self.engine.book.clean([a for a, _, _ in d.alarms] + d.forgotten)

    def _current_records(self) -> dict[str, Any]:
        e = self.engine
        pair, entry = self.axes[PAIR_AXIS], self.axes[ENTRY]
        return {
            "engine": {
                "t_last": e._t_last,
                "opened": {pair[p]: t for p, t in sorted(e.proximity.opened.items())},
                "storage_faults": [x.alarm_id for x in e.faults.storage],
            },
            "probes": _counter(e.probes, pair),
            "zones": {
                "opened": {entry[i]: t for i, t in sorted(e.zones.opened.items())},
                "probes": _counter(e.zones.probes, entry),
            },
            "incidents": e.incidents.to_plain(),
            "suspensions": [
                {
                    "source": list(k),
                    "alarm_id": s.alarm_id,
                    "operator": s.operator,
                    "note": s.note,
                    "until": s.until,
                    "held": [to_plain(x) for x in s.held.values()],
                    "unopened": dict(sorted(s.unopened.items())),
                }
                for k, s in e.suspensions.by_source.items()
            ],
            "health": {
                "fixes_missing": e.health.fixes_missing,
                "gaps": {
                    self.axes[DEVICE][s]: [
                        [g.lo, g.hi, g.since, g.until, sorted(g.filled)] for g in gs
                    ]
                    for s, gs in sorted(e.health.gaps.items())
                },
            },
        }

    def _alarm_body(self, alarm_id: str) -> dict[str, Any]:
        book = self.engine.book
        subject = book.subject(alarm_id)
        return {
            "event": to_plain(book.last(alarm_id)),
            "awaiting": book.is_awaiting(alarm_id),
            "subject": None if subject is None else [subject[0], self._subject_name(*subject)],
        }

    def _subject_name(self, rule: str, key: Any) -> Any:
        if rule == SILENCE:
            return [key[0], self.axes[DEVICE][key[1]]]  # (case id, device slot)
        return self.axes[_SUBJECT_AXIS[rule]][key]

    def _subject_key(self, rule: str, name: Any) -> Hashable | None:
        if rule == SILENCE:
            slot = self._index[DEVICE].get(name[1])
            return None if slot is None else (name[0], slot)
        return self._index[_SUBJECT_AXIS[rule]].get(name)

    def snapshot(self) -> Saved:
        """The whole state as it is now, as :meth:`restore` takes it: for an engine built on a
        changed case file while the service runs (the state of what is still there goes
        over, by name, as across a restart)."""
        book = self.engine.book
        return Saved(
            axes={a: list(k) for a, k in self.axes.items()},
            arrays={n: (a, arr.copy()) for n, (a, arr) in self.arrays.items()},
            records=self._current_records(),
            alarms=[
                self._alarm_body(alarm_id) | {"order": order}
                for alarm_id, order in book.order.items()
            ],
        )

    # -- restoring ----------------------------------------------------------------------

    def restore(self, s: Saved) -> int:
        """Put a saved state back (what is still in the case file); return the alarms
        restored (those of cases no longer in the registry are not: :attr:`dropped`). The
        next save writes only what changes from here, unless the layout changed (then
        everything)."""
        e = self.engine
        same = s.axes == self.axes
        maps = {a: _rows(s.axes.get(a, []), self._index[a]) for a in self.axes}
        for name, (axis, old) in s.arrays.items():
            here = self.arrays.get(name)
            if here is None or here[0] != axis or old.shape[1:] != here[1].shape[1:]:
                continue
            src, dst = maps[axis]
            here[1][dst] = old[src].astype(here[1].dtype, copy=False)
        e.core.keep_speeds()  # rows saved with other top speeds keep their radii
        r = s.records
        pair_ix, entry_ix, dev_ix = self._index[PAIR_AXIS], self._index[ENTRY], self._index[DEVICE]
        eng = r.get("engine", {})
        e._t_last = max(e._t_last, float(eng.get("t_last", -math.inf)))
        e.proximity.opened = _keyed(eng.get("opened", {}), pair_ix)
        _restore_counter(e.probes, r.get("probes", {}), pair_ix)
        z = r.get("zones", {})
        e.zones.opened = _keyed(z.get("opened", {}), entry_ix)
        _restore_counter(e.zones.probes, z.get("probes", {}), entry_ix)
        e.incidents.restore(r.get("incidents", []), set(e.cases))
        for rec in r.get("suspensions", []):
            source = tuple(rec["source"])
            if not source or source[0] not in e.cases:
                continue  # a case no longer in the registry
            held = [from_plain(AlarmEvent, body) for body in rec.get("held", [])]
            susp = Suspension(rec["alarm_id"], rec["operator"], rec["note"], float(rec["until"]))
            susp.held = {x.alarm_id: x for x in held}
            opened = rec.get("unopened", {})
            susp.unopened = {k: str(v) for k, v in opened.items() if k in susp.held}
            e.suspensions.by_source[source] = susp
        h = r.get("health", {})
        e.health.fixes_missing = int(h.get("fixes_missing", 0))
        e.health.gaps = {
            dev_ix[d]: [Gap(int(lo), int(hi), float(a), float(b), set(f)) for lo, hi, a, b, f in gs]
            for d, gs in h.get("gaps", {}).items()
            if d in dev_ix
        }
        book = e.book
        restored = 0
        for body in s.alarms:
            event = from_plain(AlarmEvent, body["event"])
            if event.case_id not in e.cases:
                # The case is no longer in the registry: nothing of it can be decided,
                # acknowledged or published again (its summary is gone). Forgotten.
                self.dropped += 1
                if event.state not in (AlarmState.ENDED, AlarmState.CLOSED):
                    self.dropped_open.append((event.case_id, event.alarm_id))
                continue
            restored += 1
            subject = body.get("subject")
            rule_key = None
            if subject is not None:
                key = self._subject_key(subject[0], subject[1])
                rule_key = None if key is None else (str(subject[0]), key)
            book.restore(event, int(body["order"]), bool(body.get("awaiting")), rule_key)
        faults = eng.get("storage_faults", [])
        e.faults.storage = [x for a in faults if (x := book.last(a)) is not None]
        if same:
            self._shadow = {n: arr.reshape(-1).copy() for n, (_, arr) in self.arrays.items()}
            self._records = self._current_records()
            book.clean(list(book.dirty))
        return restored


def _changed_chunks(flat: npt.NDArray[Any], shadow: npt.NDArray[Any]) -> list[int]:
    """The chunks of ``flat`` that differ from ``shadow`` (NaN equals NaN)."""
    if flat.dtype.kind == "f":
        diff = (flat != shadow) & ~(np.isnan(flat) & np.isnan(shadow))
    else:
        diff = flat != shadow
    hit = np.flatnonzero(diff)
    if hit.size == 0:
        return []
    return np.unique(hit // CHUNK).tolist()


def _rows(
    old: list[str], index: dict[str, int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows of the saved axis ``old`` that are still here, and where they are now."""
    src = [i for i, k in enumerate(old) if k in index]
    return np.array(src, dtype=np.int64), np.array([index[old[i]] for i in src], dtype=np.int64)


def _keyed(values: dict[str, Any], index: dict[str, int]) -> dict[int, Any]:
    return {index[k]: v for k, v in values.items() if k in index}


def _counter(c: EntryCounter, names: list[str]) -> dict[str, Any]:
    return {
        "entries": {names[i]: list(v) for i, v in sorted(c.entries.items())},
        "last": {names[i]: t for i, t in sorted(c.last.items())},
    }


def _restore_counter(c: EntryCounter, saved: dict[str, Any], index: dict[str, int]) -> None:
    c.entries = _keyed(saved.get("entries", {}), index)
    c.last = _keyed(saved.get("last", {}), index)


# -- alarm events as plain values ----------------------------------------------------------

_NESTED = {"offender": Position, "victim": Position, "zone": ZoneRef, "motion": Motion}
_ENUMS = {
    "type": AlarmType,
    "level": AlarmLevel,
    "state": AlarmState,
    "classification": Classification,
    "previous_level": AlarmLevel,
}


def to_plain(value: Any) -> Any:
    """A dataclass (an alarm event and what it holds) as a dict of plain values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # enums as their numbers
    return value


def from_plain(cls: type[Any], d: dict[str, Any]) -> Any:
    """The inverse of :func:`to_plain` for :class:`AlarmEvent`."""
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if v is not None and f.name in _NESTED and cls is AlarmEvent:
            v = from_plain(_NESTED[f.name], v)
        elif v is not None and f.name in _ENUMS and cls is AlarmEvent:
            v = _ENUMS[f.name](v)
        kw[f.name] = v
    return cls(**kw)
