"""The L2 decision for one segment: classify the frame, learn its source, pick the egress.

Pure: no fd, no clock. Order follows the kernel bridge (br_handle_frame, br_handle_frame_finish):
validate and classify first, learn only a valid source, then decide. The result is a value: one
egress port id, the segment's flood tuple (every other port), or a Drop reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .counters import Drop
from .fdb import Fdb
from .wire import ETH_MIN, VNET_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN, ZERO_MAC

# IEEE 802.1Q table 8-1: 01:80:c2:00:00:00 to 0f are link-local; a bridge consumes and never forwards them.
RESERVED_GROUP_PREFIX: Final = b"\x01\x80\xc2\x00\x00"

Decision = int | tuple[int, ...] | Drop


class Switch:
    """A MAC-learning switch over a set of port ids."""

    def __init__(self, fdb: Fdb, ports: Iterable[int] = ()) -> None:
        self.fdb = fdb
        self.ports: list[int] = []
        # The router's interface on this segment: a port with no fd, reached through the datapath.
        self.router_port: int | None = None
        self.flood_sets: dict[int, tuple[int, ...]] = {}
        for port in ports:
            self.add_port(port)

    def add_port(self, port: int) -> None:
        if port in self.ports or port == self.router_port:
            raise ValueError(f"port {port} is already on this switch")
        self.ports.append(port)
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
        self.fdb.forget_port(port)
        self._rebuild_flood_sets()

    def _rebuild_flood_sets(self) -> None:
        """Flood sets hold real ports only; the datapath hands the router its copy itself."""
        self.flood_sets = {p: tuple(q for q in self.ports if q != p) for p in self.ports}
        if self.router_port is not None:
            self.flood_sets[self.router_port] = tuple(self.ports)

    def decide(self, in_port: int, pkt: bytes, now: float) -> Decision:
        """Where a frame that arrived on in_port goes. pkt starts with the virtio-net header."""
        if len(pkt) < ETH_MIN:
            return Drop.RUNT
        if pkt[0] & VNET_F_NEEDS_CSUM:
            _, _, _, _, csum_start, csum_offset = VNET_HDR.unpack_from(pkt)
            if VNET_HDR_LEN + csum_start + csum_offset + 2 > len(pkt):
                return Drop.BAD_VNET_HEADER
        src = pkt[16:22]
        if src[0] & 1:
            return Drop.SRC_MULTICAST
        if src == ZERO_MAC:
            return Drop.SRC_ZERO
        dst = pkt[10:16]
        if dst[0] & 1:
            if dst[:5] == RESERVED_GROUP_PREFIX and dst[5] <= 0x0F:
                return Drop.RESERVED_GROUP
            if not self.fdb.learn(src, in_port, now):
                return Drop.SRC_IS_SWITCH
            return self._flood(in_port)
        if not self.fdb.learn(src, in_port, now):
            return Drop.SRC_IS_SWITCH
        entry = self.fdb.entries.get(dst)
        if entry is None:
            return self._flood(in_port)
        if entry.port == in_port:
            return Drop.SAME_PORT
        return entry.port

    def _flood(self, in_port: int) -> tuple[int, ...] | Drop:
        targets = self.flood_sets[in_port]
        # An empty flood from a real port still reaches the router (the datapath hands it its copy);
        # from the router's own port it reaches nothing and must be counted, not silently lost.
        if targets or (self.router_port is not None and in_port != self.router_port):
            return targets
        return Drop.NO_DESTINATION
