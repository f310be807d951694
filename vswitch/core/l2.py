"""The L2 decision for one segment: classify the frame, learn its source, pick the egress.

Pure: no fd, no clock. Order follows the kernel bridge (br_handle_frame, br_handle_frame_finish):
validate and classify first, learn only a valid source, then decide. The result is a value: one
egress port id, the segment's flood tuple (every other port), or a Drop reason.

Two protections decide here too. Storm control (as Cisco's storm-control and OVS's meters): per port and
per kind (broadcast, multicast, unicast to an unknown MAC), at most ``storm_limit`` floods a second; the
rest are named drops. Loop guard: when the FDB sees a MAC flapping (fdb.py), the port it flapped onto is
blocked for ``loop_hold`` seconds: nothing is read from it or flooded to it, what it taught the FDB is
forgotten, and it comes back by itself (blocked again at once if the loop is still there). vswitch runs
no STP: BPDUs are reserved-group frames, never forwarded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from .counters import Drop, Event
from .fdb import Fdb
from .ipv6 import is_router_advert
from .wire import ETH_MIN, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, ZERO_MAC

# IEEE 802.1Q table 8-1: 01:80:c2:00:00:00 to 0f are link-local; a bridge consumes and never forwards them.
RESERVED_GROUP_PREFIX: Final = b"\x01\x80\xc2\x00\x00"

Decision = int | tuple[int, ...] | Drop
# The first byte of the ethertypes RA guard looks into: IPv6 (0x86dd), and an 802.1Q tag (0x8100).
_GUARDED: Final = (0x86, 0x81)
# csum_start and csum_offset of the virtio-net header (bytes 6-9), read inline on every NEEDS_CSUM frame.
_CSUM_FIELDS: Final = struct.Struct("<HH").unpack_from
# The checksum field (2 bytes) at csum_start + csum_offset must lie inside the frame (tun.c refuses
# the write otherwise): the two fields' sum plus this may not pass the buffer's length.
_CSUM_END: Final = VNET_HDR_LEN + 2
# A normal LAN's floods are a few a second per host (ARP, ND, mDNS); a storm is thousands.
DEFAULT_STORM_LIMIT = 10_000
DEFAULT_LOOP_HOLD = 30.0  # seconds a port blocked by the loop guard stays blocked
BROADCAST: Final = b"\xff\xff\xff\xff\xff\xff"


class Switch:
    """A MAC-learning switch over a set of port ids."""

    def __init__(self, fdb: Fdb, ports: Iterable[int] = ()) -> None:
        self.fdb = fdb
        self.ports: list[int] = []
        # The router's interface on this segment: a port with no fd, reached through the datapath.
        self.router_port: int | None = None
        self.flood_sets: dict[int, tuple[int, ...]] = {}
        # Split horizon: ports of one group (a tunnel's remotes) never flood to each other.
        self.groups: dict[int, int] = {}
        self.unflooded: set[int] = set()  # reached by their FDB entries only (a remote named only there)
        # RA guard (RFC 6105): on a segment the router advertises on, a router advertisement from a
        # port is a rogue router's, and dropped before any host sees it.
        self.ra_guard = False
        self.no_ra: set[int] = set()  # ports the router's own advertisements never reach (the host's)
        # Storm control: floods a second per port and kind, 0 = off; the counts of the current second.
        self.storm_limit = 0
        self._storm_since = 0.0
        self._storm_counts: dict[int, list[int]] = {}  # port -> [broadcast, multicast, unknown unicast]
        # Loop guard: blocked ports -> when they unblock; blocks made but not yet told (Datapath logs).
        self.loop_hold = DEFAULT_LOOP_HOLD
        self.blocked: dict[int, float] = {}
        self.new_blocks: list[tuple[int, bytes]] = []  # (port, the MAC that flapped onto it)
        for port in ports:
            self.add_port(port)

    def add_port(self, port: int, group: int | None = None, flood: bool = True) -> None:
        """group: the port's split-horizon group (frames from it never flood to another of the same);
        flood False: floods never reach it (only a static FDB entry does)."""
        if port in self.ports or port == self.router_port:
            raise ValueError(f"port {port} is already on this switch")
        self.ports.append(port)
        if group is not None:
            self.groups[port] = group
        if not flood:
            self.unflooded.add(port)
        self._rebuild_flood_sets()

    def set_router_port(self, port: int, mac: bytes) -> None:
        """Attach the router: its MAC is a static entry, and it floods to every real port."""
        if port in self.ports:
            raise ValueError(f"port {port} is already on this switch")
        self.router_port = port
        self.fdb.add_static(mac, port)
        self._rebuild_flood_sets()

    def remove_port(self, port: int) -> None:
        self.ports.remove(port)
        self.groups.pop(port, None)
        self.unflooded.discard(port)
        self.blocked.pop(port, None)
        self._storm_counts.pop(port, None)
        self.fdb.forget_port(port)
        self._rebuild_flood_sets()

    def _rebuild_flood_sets(self) -> None:
        """Flood sets hold real ports only; the datapath hands the router its copy itself."""
        groups, unflooded, blocked = self.groups, self.unflooded, self.blocked
        flooded = [q for q in self.ports if q not in unflooded and q not in blocked]
        self.flood_sets = {
            p: tuple(q for q in flooded if q != p and (p not in groups or groups.get(q) != groups[p]))
            for p in self.ports
        }
        if self.router_port is not None:
            self.flood_sets[self.router_port] = tuple(flooded)

    def decide(self, in_port: int, pkt: bytes, now: float) -> Decision:
        """Where a frame that arrived on in_port goes. pkt starts with the virtio-net header.

        The unicast path is written for speed (one dict lookup per MAC, no call when the source is
        already known on this port); group destinations take `_group`, which is rarer.
        """
        if len(pkt) < ETH_MIN:
            return Drop.RUNT
        if pkt[0] & VNET_F_NEEDS_CSUM:
            csum_start, csum_offset = _CSUM_FIELDS(pkt, 6)
            if csum_start + csum_offset + _CSUM_END > len(pkt):
                return Drop.BAD_VNET_HEADER
        if pkt[10] & 1:
            return self._group(in_port, pkt, now)
        entries = self.fdb.entries
        src = pkt[16:22]
        known = entries.get(src)
        if known is not None and known.port == in_port:
            known.seen = now  # a source already validated and learned here: just refresh it
        else:
            refused = self._learn(in_port, src, now)
            if refused is not None:
                return refused
        if self.ra_guard and pkt[22] in _GUARDED and in_port != self.router_port and is_router_advert(pkt):
            return Drop.RA_GUARD
        entry = entries.get(pkt[10:16])
        if entry is None:
            if self.storm_limit and in_port != self.router_port and self._storming(in_port, 2, now):
                return Drop.STORM_UNKNOWN_UNICAST
            return self._flood(in_port)
        if entry.port == in_port:
            return Drop.SAME_PORT
        return entry.port

    def _learn(self, in_port: int, src: bytes, now: float) -> Drop | None:
        """Validate a source address, then learn it (IEEE 802.1Q 8.7: only valid unicast sources)."""
        if src[0] & 1:
            return Drop.SRC_MULTICAST
        if src == ZERO_MAC:
            return Drop.SRC_ZERO
        if self.blocked and in_port in self.blocked:
            return Drop.LOOP_BLOCKED
        refused = self.fdb.learn(src, in_port, now)
        culprit = self.fdb.loop_port
        if culprit is not None:  # a MAC flapped: block the loop's port (perhaps not this one)
            self.fdb.loop_port = None
            self.block(culprit, now, src)
        return refused

    def block(self, port: int, now: float, mac: bytes = ZERO_MAC) -> None:
        """Loop guard: take port out of the segment until now + loop_hold. The segment's learned
        entries all go (a topology change, as STP flushes): while the loop ran, any host's MAC may have
        been carried onto the loop's other port, and would stay there, a black hole, until that host
        spoke again. Until each is learned anew its frames flood, to every port but the blocked one."""
        if port == self.router_port:
            return
        self.blocked[port] = now + self.loop_hold
        self.new_blocks.append((port, mac))
        self.fdb.events[Event.LOOP_DETECTED] += 1
        self.fdb.flush_learned()
        self._rebuild_flood_sets()

    def unblock_due(self, now: float) -> list[int]:
        """Ports whose hold has run out, back in the segment; returned for the log."""
        due = [port for port, until in self.blocked.items() if until <= now]
        for port in due:
            del self.blocked[port]
            self.fdb.events[Event.LOOP_RECOVERED] += 1
        if due:
            self._rebuild_flood_sets()
        return due

    def next_unblock(self) -> float | None:
        return min(self.blocked.values(), default=None)

    def _storming(self, port: int, kind: int, now: float) -> bool:
        """Count one flood of kind (0 broadcast, 1 multicast, 2 unknown unicast) from port; True when
        it is over storm_limit for this second (one-second windows, as Cisco's storm-control)."""
        if now - self._storm_since >= 1.0 or now < self._storm_since:
            self._storm_counts.clear()
            self._storm_since = now
        counts = self._storm_counts.get(port)
        if counts is None:
            counts = self._storm_counts[port] = [0, 0, 0]
        counts[kind] += 1
        return counts[kind] > self.storm_limit

    def _group(self, in_port: int, pkt: bytes, now: float) -> Decision:
        """Broadcast and multicast: never link-local groups; otherwise learn and flood."""
        dst = pkt[10:16]
        if dst[:5] == RESERVED_GROUP_PREFIX and dst[5] <= 0x0F:
            src = pkt[16:22]
            if src[0] & 1:
                return Drop.SRC_MULTICAST
            if src == ZERO_MAC:
                return Drop.SRC_ZERO
            return Drop.RESERVED_GROUP
        refused = self._learn(in_port, pkt[16:22], now)
        if refused is not None:
            return refused
        if self.ra_guard and in_port != self.router_port and is_router_advert(pkt):
            return Drop.RA_GUARD
        if self.storm_limit and in_port != self.router_port:
            if dst == BROADCAST:
                if self._storming(in_port, 0, now):
                    return Drop.STORM_BROADCAST
            elif self._storming(in_port, 1, now):
                return Drop.STORM_MULTICAST
        return self._flood(in_port)

    def _flood(self, in_port: int) -> tuple[int, ...] | Drop:
        targets = self.flood_sets[in_port]
        # An empty flood from a real port still reaches the router (the datapath hands it its copy);
        # from the router's own port it reaches nothing and must be counted, not silently lost.
        if targets or (self.router_port is not None and in_port != self.router_port):
            return targets
        return Drop.NO_DESTINATION
