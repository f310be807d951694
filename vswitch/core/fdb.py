"""The forwarding database: MAC -> port, learned from sources, aged, bounded.

Like the kernel bridge (net/bridge/br_fdb.c): learning refreshes a timestamp, ageing is one pass that
reschedules itself rather than a timer per entry, a full table refuses new learned entries (as the
kernel's fdb_max_learned does) so a MAC flood cannot evict the hosts already known, and static entries
(the switch's own MACs) never age or move.

Two protections live here, where learning happens. A port may learn at most its limit of MACs
(``port_limits``: Cisco's port-security maximum, the kernel's per-port ``max_learned``), so one port
cannot fill the segment's table and stop everyone else's learning. And a MAC that moves between ports
more than ``loop_moves`` times in a second is flapping, which is what a forwarding loop outside the
switch looks like (two ports of one segment joined: every broadcast comes back on the other port). The
port it moved onto most often in that second is the loop's (its own host's port sees it only when the
host speaks): ``loop_port`` names it for the caller (l2.Switch), which blocks it.

``on_change`` is called whenever an existing entry moves or goes (a flow cache that remembered where a
MAC was must forget it); learning a new MAC changes no decision already made, so it is not reported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from .counters import Drop, Event
from .journal import Journal, keep

DEFAULT_AGEING = 300.0
DEFAULT_MAX_ENTRIES = 8192
# An ageing pass runs at most this often, so staggered entries cost one pass a second, not one each.
MIN_AGEING_INTERVAL = 1.0
# A MAC moving more often than this in one second is a loop, not a host changing ports (a container
# moved, a VM migrated, `vswitch port move`: one move each, seconds apart).
DEFAULT_LOOP_MOVES = 10
# MACs of one port of a single namespace (a host, its containers): learning beyond is a flood.
DEFAULT_PORT_MAC_MAX = 1024


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
        self.port_limits: dict[int, int] = {}  # port -> most MACs it may learn (absent: no limit)
        self.port_counts: Counter[int] = Counter()  # port -> learned entries on it now
        self.loop_moves = DEFAULT_LOOP_MOVES  # moves of one MAC within a second that mean a loop; 0: off
        self._moves: dict[bytes, dict[int, int]] = {}  # MAC -> port -> moves onto it, this second
        self.loop_port: int | None = None  # a loop's port, found by learn(), for the caller to block
        self._moves_since = 0.0
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
            self.port_counts[old.port] -= 1
        self.entries[mac] = FdbEntry(port, 0.0, static=True, owned=owned)
        if old is not None:
            self._changed()

    def learn(self, mac: bytes, port: int, now: float) -> Drop | None:
        """Record that mac was seen on port. A Drop when the frame must not pass: the source belongs to
        the switch itself, the port is at its MAC limit, or the MAC is flapping (LOOP_BLOCKED: the
        caller blocks the port). A full table is not a drop: the frame is forwarded, unlearned."""
        entry = self.entries.get(mac)
        if self.journal is not None:
            keep(self.journal, self, entry)
        if entry is not None:
            if entry.static:
                return None if entry.port == port or not entry.owned else Drop.SRC_IS_SWITCH
            if entry.port != port:
                limit = self.port_limits.get(port)
                if limit is not None and self.port_counts[port] >= limit:
                    return Drop.PORT_MAC_LIMIT
                if self.loop_moves:
                    culprit = self._flapping(mac, port, now)
                    if culprit is not None:
                        self.loop_port = culprit
                        if culprit == port:
                            return Drop.LOOP_BLOCKED
                self.port_counts[entry.port] -= 1
                self.port_counts[port] += 1
                entry.port = port
                self.events[Event.FDB_MOVES] += 1
                self._changed()
            entry.seen = now
            return None
        limit = self.port_limits.get(port)
        if limit is not None and self.port_counts[port] >= limit:
            return Drop.PORT_MAC_LIMIT
        if self._learned >= self.max_entries:
            self.events[Event.FDB_FULL] += 1
            return None
        self.entries[mac] = FdbEntry(port, now)
        self._learned += 1
        self.port_counts[port] += 1
        self.events[Event.FDB_LEARNED] += 1
        if self._next_pass is None:
            self._next_pass = now + self.ageing
        return None

    def _flapping(self, mac: bytes, port: int, now: float) -> int | None:
        """Count one move of mac onto port; once it has moved more than loop_moves times this second,
        the port it moved onto most (the loop's; the later one on a tie). Counted per one-second window:
        bounded by the MACs that moved in it, each with the few ports it moved onto."""
        if now - self._moves_since >= 1.0 or now < self._moves_since:
            self._moves.clear()
            self._moves_since = now
        onto = self._moves.get(mac)
        if onto is None:
            onto = self._moves[mac] = {}
        onto[port] = onto.get(port, 0) + 1
        if sum(onto.values()) <= self.loop_moves:
            return None
        del self._moves[mac]  # counted afresh: a loop still there is found again at once
        most = max(onto.values())
        return [p for p, n in onto.items() if n == most][-1]

    def forget_port(self, port: int) -> None:
        """Flush what was learned on a port that went away (as the kernel does on port removal)."""
        gone = [m for m, e in self.entries.items() if e.port == port and not e.static]
        keep(self.journal, self)
        for mac in gone:
            del self.entries[mac]
            self._learned -= 1
        self.port_counts.pop(port, None)
        if gone:
            self._changed()

    def flush_learned(self) -> None:
        """Forget every learned entry (a topology change: as STP's, so hosts are learned again where
        they are now, not where a loop last carried their frames). Static entries stay."""
        keep(self.journal, self)
        learned = [m for m, e in self.entries.items() if not e.static]
        for mac in learned:
            del self.entries[mac]
        self._learned = 0
        self.port_counts.clear()
        if learned:
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
        counts = self.port_counts
        for mac in stale:
            counts[self.entries.pop(mac).port] -= 1
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
