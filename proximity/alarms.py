"""The alarm book: every alarm of every rule, in one place.

Each rule that keeps an episode open for a subject (a pair, a zone entry, a device in a case)
names its alarm through the book: :meth:`AlarmBook.ids` gives the rule its map from subject
to alarm id, and every change to that map is a change to the book, so the book knows, for
any alarm id, which rule and which subject it belongs to (:meth:`AlarmBook.subject`: an
operator's acknowledgement goes straight to the right rule). The rules keep their own
decision state (level machines, counters) and no alarm bookkeeping of their own.

:meth:`AlarmBook.write` takes every alarm event the engine decides: the book keeps each
alarm's last event (the newest :data:`REMEMBERED` alarms, and every alarm whose episode a
rule holds open), which alarms no operator has yet
acknowledged since they opened or last rose, and answers the queries (open alarms, cases with
an open alarm). Alarms without a subject (device events, data gaps, engine faults) are only
written, and end when an operator closes them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator, MutableMapping, Sequence
from itertools import islice
from typing import Any, Generic, TypeVar

from proximity.events import AlarmEvent, AlarmState

#: The rules whose alarms have a subject, and the subject's kind.
PAIR = "pair"  # pair index: proximity alarms
APPROACH = "approach"  # pair index
PROBING = "probing"  # pair index
ZONE = "zone"  # zone entry index: zone and curfew alarms
ZONE_PROBING = "zone_probing"  # zone entry index
SILENCE = "silence"  # (case id, device slot): signal lost, victim device silent
RULES = (PAIR, APPROACH, PROBING, ZONE, ZONE_PROBING, SILENCE)

#: How many alarms the book remembers (the oldest are forgotten first).
REMEMBERED = 10_000

K = TypeVar("K", bound=Hashable)


class RuleIds(MutableMapping[K, str], Generic[K]):
    """One rule's open alarms: subject -> alarm id, written through to the book."""

    def __init__(self, book: AlarmBook, rule: str) -> None:
        self._book = book
        self._rule = rule
        self._ids: dict[K, str] = {}

    def __getitem__(self, key: K) -> str:
        return self._ids[key]

    def __setitem__(self, key: K, alarm_id: str) -> None:
        old = self._ids.get(key)
        if old is not None:
            self._book._subjects.pop(old, None)
        self._ids[key] = alarm_id
        self._book._subjects[alarm_id] = (self._rule, key)
        self._book.dirty.add(alarm_id)
        if old is not None:
            self._book.dirty.add(old)

    def __delitem__(self, key: K) -> None:
        alarm_id = self._ids.pop(key)
        self._book._subjects.pop(alarm_id, None)
        self._book.dirty.add(alarm_id)

    def __iter__(self) -> Iterator[K]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


class AlarmBook:
    """Every alarm the engine has raised: its rule and subject while its episode is open, its
    last event, and whether it waits for an operator."""

    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._remembered = remembered
        self._last: OrderedDict[str, AlarmEvent] = OrderedDict()
        self._awaiting: set[str] = set()
        self._subjects: dict[str, tuple[str, Hashable]] = {}
        self._rules: dict[str, RuleIds[Any]] = {r: RuleIds(self, r) for r in RULES}
        #: Alarms changed (or forgotten) since the book was last saved (proximity.memory).
        self.dirty: set[str] = set()
        self._written = 0
        #: Each remembered alarm's place in the book (its last write): saved with it.
        self.order: dict[str, int] = {}

    def ids(self, rule: str) -> RuleIds[Any]:
        """The map of ``rule``'s open alarms, subject -> alarm id (one per rule)."""
        if rule not in self._rules:
            raise ValueError(f"unknown rule {rule!r}")
        return self._rules[rule]

    def subject(self, alarm_id: str) -> tuple[str, Hashable] | None:
        """The rule and subject of an alarm whose episode is open there (None: none)."""
        return self._subjects.get(alarm_id)

    def write(self, events: Sequence[AlarmEvent]) -> None:
        """Take alarm events, in order: each alarm's last event, and who waits."""
        for e in events:
            self._written += 1
            self._put(e, self._written)
            rose = e.previous_level is not None and e.previous_level < e.level
            if e.state == AlarmState.OPEN or (e.state == AlarmState.UPDATE and rose):
                self._awaiting.add(e.alarm_id)
            elif e.state in (AlarmState.ACKNOWLEDGED, AlarmState.CLOSED, AlarmState.ENDED):
                self._awaiting.discard(e.alarm_id)
        self._forget()

    def restate(self, events: Sequence[AlarmEvent]) -> None:
        """The same last events, as published (with their incident id): in place."""
        for e in events:
            if e.alarm_id in self._last:
                self._last[e.alarm_id] = e
                self.dirty.add(e.alarm_id)

    def _put(self, e: AlarmEvent, order: int) -> None:
        self._last[e.alarm_id] = e
        self._last.move_to_end(e.alarm_id)
        self.order[e.alarm_id] = order
        self.dirty.add(e.alarm_id)

    def _forget(self) -> None:
        """Beyond the alarms it remembers, the book forgets the oldest, but never one whose
        episode a rule still holds open (its rule would name an alarm the book has lost)."""
        over = len(self._last) - self._remembered
        if over <= 0:
            return
        old = list(islice((a for a in self._last if a not in self._subjects), over))
        for forgotten in old:
            del self._last[forgotten]
            self._awaiting.discard(forgotten)
            self.order.pop(forgotten, None)
            self.dirty.add(forgotten)

    def restore(
        self,
        event: AlarmEvent,
        order: int,
        awaiting: bool,
        subject: tuple[str, Hashable] | None,
    ) -> None:
        """Put back an alarm saved by an earlier run (in the book's order, ``order`` its
        place there): its last event, whether it waits for an operator, and its rule's
        subject while its episode is open."""
        self._put(event, order)
        self._written = max(self._written, order)
        if awaiting:
            self._awaiting.add(event.alarm_id)
        else:
            self._awaiting.discard(event.alarm_id)
        if subject is not None:
            self.ids(subject[0])[subject[1]] = event.alarm_id
        self._forget()

    def is_awaiting(self, alarm_id: str) -> bool:
        """Whether no operator has acknowledged the alarm since it opened or last rose."""
        return alarm_id in self._awaiting

    def clean(self, alarm_ids: Sequence[str]) -> None:
        """These alarms are saved as they are now."""
        self.dirty.difference_update(alarm_ids)

    def last(self, alarm_id: str) -> AlarmEvent | None:
        """The alarm's last event (None: never raised, or forgotten)."""
        return self._last.get(alarm_id)

    def still_open(self, alarm_id: str) -> bool:
        """Whether an alarm is remembered and no operator has closed it."""
        last = self._last.get(alarm_id)
        return last is not None and last.state != AlarmState.CLOSED

    @property
    def open_count(self) -> int:
        """Alarms that have neither ended nor been closed."""
        return sum(e.state not in _OVER for e in self._last.values())

    @property
    def awaiting(self) -> int:
        """Open alarms that no operator has acknowledged since they opened or last rose."""
        return len(self._awaiting)

    def open_case_ids(self) -> set[str]:
        """Cases with an alarm that has neither ended nor been closed."""
        return {e.case_id for e in self._last.values() if e.state not in _OVER}

    def __len__(self) -> int:
        return len(self._last)


_OVER = (AlarmState.ENDED, AlarmState.CLOSED)
