"""The forwarding database: MAC -> port, learned from sources, aged, bounded.

Like the kernel bridge (net/bridge/br_fdb.c): learning refreshes a timestamp, ageing is one pass that
reschedules itself rather than a timer per entry, a full table refuses new learned entries (as the
kernel's fdb_max_learned does) so a MAC flood cannot evict the hosts already known, and static entries
(the switch's own MACs) never age or move.

``on_change`` is called whenever an existing entry moves or goes (a flow cache that remembered where a
MAC was must forget it); learning a new MAC changes no decision already made, so it is not reported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .counters import Event
from .journal import Journal, keep

DEFAULT_AGEING = 300.0
DEFAULT_MAX_ENTRIES = 8192
# An ageing pass runs at most this often, so staggered entries cost one pass a second, not one each.
MIN_AGEING_INTERVAL = 1.0


@dataclass(slots=True)
class FdbEntry:
    port: int
    seen: float
    static: bool = False
    owned: bool = True  # a static entry for the switch's own MAC (a frame from it elsewhere is refused)


class Fdb:
    def __init__(
        self,
        ageing: float = DEFAULT_AGEING,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        events: Counter[str] | None = None,
    ) -> None:
        if not (math.isfinite(ageing) and ageing > 0):  # a nan deadline never passes: nothing would age
            raise ValueError(f"ageing must be a positive, finite number of seconds, not {ageing!r}")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ageing = ageing
        self.max_entries = max_entries
        self.entries: dict[bytes, FdbEntry] = {}
        self.events: Counter[str] = events if events is not None else Counter()
        self._learned = 0  # entries that count against max_entries (static ones do not)
        self._next_pass: float | None = None
        self.on_change: Callable[[], None] | None = None
        self.journal: Journal | None = None  # while a frame is traced (journal.py)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def statics(self) -> int:
        """Entries that do not count against max_entries (the switch's own MACs, configured ones)."""
        return len(self.entries) - self._learned

    def lookup(self, mac: bytes) -> int | None:
        entry = self.entries.get(mac)
        return None if entry is None else entry.port

    def add_static(self, mac: bytes, port: int, owned: bool = True) -> None:
        """An address the switch owns (a router interface), or with owned False one configured to live
        behind a port (a remote VTEP's MAC): never aged, never moved by learning."""
        old = self.entries.get(mac)
        keep(self.journal, self)
        if old is not None and not old.static:
            self._learned -= 1
        self.entries[mac] = FdbEntry(port, 0.0, static=True, owned=owned)
        if old is not None:
            self._changed()

    def learn(self, mac: bytes, port: int, now: float) -> bool:
        """Record that mac was seen on port. False when the source belongs to the switch itself."""
        entry = self.entries.get(mac)
        if self.journal is not None:
            keep(self.journal, self, entry)
        if entry is not None:
            if entry.static:
                return entry.port == port or not entry.owned
            if entry.port != port:
                entry.port = port
                self.events[Event.FDB_MOVES] += 1
                self._changed()
            entry.seen = now
            return True
        if self._learned >= self.max_entries:
            self.events[Event.FDB_FULL] += 1
            return True
        self.entries[mac] = FdbEntry(port, now)
        self._learned += 1
        self.events[Event.FDB_LEARNED] += 1
        if self._next_pass is None:
            self._next_pass = now + self.ageing
        return True

    def forget_port(self, port: int) -> None:
        """Flush what was learned on a port that went away (as the kernel does on port removal)."""
        gone = [m for m, e in self.entries.items() if e.port == port and not e.static]
        keep(self.journal, self)
        for mac in gone:
            del self.entries[mac]
            self._learned -= 1
        if gone:
            self._changed()

    def next_deadline(self) -> float | None:
        return self._next_pass

    def age(self, now: float) -> int:
        """Remove entries not seen for `ageing` seconds; return how many went."""
        if self._next_pass is None or now < self._next_pass:
            return 0
        # seen + ageing <= now, the very sum that set the deadline: (now - ageing) can round below seen.
        keep(self.journal, self)
        ageing = self.ageing
        stale = [m for m, e in self.entries.items() if not e.static and e.seen + ageing <= now]
        for mac in stale:
            del self.entries[mac]
        self._learned -= len(stale)
        self.events[Event.FDB_AGED] += len(stale)
        if stale:
            self._changed()
        oldest = min((e.seen for e in self.entries.values() if not e.static), default=None)
        self._next_pass = None if oldest is None else max(oldest + self.ageing, now + MIN_AGEING_INTERVAL)
        return len(stale)

    def table(self, now: float) -> list[tuple[bytes, int, float, bool]]:
        """(mac, port, age in seconds, static) for every entry, for display."""
        return [(mac, e.port, 0.0 if e.static else now - e.seen, e.static) for mac, e in self.entries.items()]
