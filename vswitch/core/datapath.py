"""The whole pipeline in one place: ports, segments (each a MAC-learning switch) and the router.

`receive(port, pkt, now)` is the single entry for a packet. Its verdict is shaped for the IO shell's
hot path, so the common cases allocate nothing:
- an ``int``: write pkt, unchanged, to that port;
- a ``tuple`` of ints: write pkt, unchanged, to each (a flood);
- a ``list`` of (port, frame): write each to its port (the router or the flow cache made or changed
  them); a frame is bytes, or a ``wire.Gather`` (head + untouched payload) that takes one writev;
- ``None``: nothing to send; a drop was counted with its reason.

A frame for the router asks the flow cache (flowcache.py) first; on a miss it takes the router and
``from_router``, and the cache learns from what they did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .counters import Counters, Drop
from .fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, Fdb
from .flowcache import DEFAULT_MAX_ENTRIES as FLOW_CACHE_MAX_ENTRIES
from .flowcache import FlowCache
from .l2 import Switch
from .router import Router, Transmit
from .wire import VNET_HDR_LEN, Frame

# A list verdict's frames are bytes, or a Gather (flowcache.py: a long payload, written with writev).
Verdict = int | tuple[int, ...] | Sequence[tuple[int, Frame]] | None


class L3Engine(Protocol):
    """What the datapath needs of a router. Interfaces are numbered by segment index."""

    def receive(self, iface: int, pkt: bytes, now: float) -> list[Transmit]:
        """A frame that reached the router's MAC (or a broadcast) on segment iface; returns frames
        (virtio-net header included) to send out of router interfaces, as (segment index, buffer)."""
        ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> list[Transmit]: ...


@dataclass
class Segment:
    name: str
    switch: Switch
    ports: list[int] = field(default_factory=list)


class Datapath:
    def __init__(
        self,
        ageing: float = DEFAULT_AGEING,
        fdb_max: int = DEFAULT_MAX_ENTRIES,
        flow_cache_max: int = FLOW_CACHE_MAX_ENTRIES,
    ) -> None:
        """flow_cache_max: entries per segment in the flow cache; 0 turns the cache off."""
        self.ageing = ageing
        self.fdb_max = fdb_max
        self.flow_cache_max = flow_cache_max
        self.counters = Counters()
        self.segments: list[Segment] = []
        self.port_switch: list[Switch] = []
        self.port_segment: list[int] = []
        self.router: L3Engine | None = None
        self.flows: FlowCache | None = None  # with a Router attached, unless flow_cache_max is 0

    # --- building ----------------------------------------------------------------------------------
    def add_segment(self, name: str) -> int:
        fdb = Fdb(self.ageing, self.fdb_max, events=self.counters.events)
        self.segments.append(Segment(name, Switch(fdb)))
        if self.flows is not None:
            self.flows.add_segment(self.segments[-1].switch)
        return len(self.segments) - 1

    def add_port(self, name: str, segment: int) -> int:
        seg = self.segments[segment]
        port = self.counters.add_port(name)
        seg.switch.add_port(port)
        seg.ports.append(port)
        self.port_switch.append(seg.switch)
        self.port_segment.append(segment)
        return port

    def attach_router(self, router: L3Engine, macs: dict[int, bytes]) -> None:
        """Give the router an interface (a port with no fd) on each segment in macs."""
        self.router = router
        for segment, mac in macs.items():
            seg = self.segments[segment]
            port = self.counters.add_port(f"router:{seg.name}")
            seg.switch.set_router_port(port, mac)
            self.port_switch.append(seg.switch)
            self.port_segment.append(segment)
        if isinstance(router, Router) and self.flow_cache_max > 0:
            switches = [seg.switch for seg in self.segments]
            self.flows = FlowCache(router, switches, self.counters, self.flow_cache_max)

    # --- the packet path ---------------------------------------------------------------------------
    def receive(self, in_port: int, pkt: bytes, now: float) -> Verdict:
        counters = self.counters
        counters.rx_packets[in_port] += 1
        if len(pkt) > VNET_HDR_LEN:  # a runt shorter than the vnet header must not count negative bytes
            counters.rx_bytes[in_port] += len(pkt) - VNET_HDR_LEN
        switch = self.port_switch[in_port]
        decision = switch.decide(in_port, pkt, now)
        if decision.__class__ is int:
            if decision != switch.router_port:
                return decision
            flows = self.flows
            if flows is None:
                return self._route(in_port, pkt, now)
            segment = self.port_segment[in_port]
            hit = flows.forward(segment, pkt, now)
            if hit is not None:
                return hit
            routed = self._route(in_port, pkt, now)
            flows.install(segment, pkt, routed, now)
            return routed
        if decision.__class__ is tuple:
            if switch.router_port is None:
                return decision
            sent: list[Transmit] = [(p, pkt) for p in decision]
            sent.extend(self._route(in_port, pkt, now))
            return sent
        counters.drops[in_port][decision] += 1  # type: ignore[index]
        return None

    def _route(self, in_port: int, pkt: bytes, now: float) -> list[Transmit]:
        assert self.router is not None
        router_port = self.port_switch[in_port].router_port
        if router_port is not None:
            self.counters.rx_packets[router_port] += 1
            self.counters.rx_bytes[router_port] += len(pkt) - VNET_HDR_LEN
        return self.from_router(self.router.receive(self.port_segment[in_port], pkt, now), now)

    def from_router(self, frames: list[Transmit], now: float) -> list[Transmit]:
        """Switch the router's frames into their segments, as if they arrived on its ports."""
        sent: list[Transmit] = []
        for segment, frame in frames:
            switch = self.segments[segment].switch
            port = switch.router_port
            assert port is not None
            self.counters.tx_packets[port] += 1
            self.counters.tx_bytes[port] += len(frame) - VNET_HDR_LEN
            decision = switch.decide(port, frame, now)
            if decision.__class__ is int:
                sent.append((decision, frame))
            elif decision.__class__ is tuple:
                sent.extend((p, frame) for p in decision)
            else:
                self.counters.drops[port][decision] += 1  # type: ignore[index]
        return sent

    # --- time --------------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The soonest timer of any table. Asked once per batch: plain loops, no temporary lists."""
        best = self.router.next_deadline() if self.router is not None else None
        for seg in self.segments:
            deadline = seg.switch.fdb.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def on_timer(self, now: float) -> list[Transmit]:
        for seg in self.segments:
            seg.switch.fdb.age(now)
        if self.router is None:
            return []
        return self.from_router(self.router.on_timer(now), now)

    def router_drops(self) -> Counter[str]:
        return Counter(getattr(self.router, "drops", {}))

    def drop_reasons(self) -> dict[str, int]:
        return dict(self.counters.total_drops())


__all__ = ["Datapath", "Drop", "L3Engine", "Segment", "Transmit", "Verdict"]
