"""The whole pipeline in one place: ports, segments (each a MAC-learning switch) and the router.

`receive(port, pkt, now)` is the entry for a packet: it counts the frame as received and calls
`forward`. The IO shell counts a whole batch at once (`Counters.received`) and calls the port's
`forwarder`: `forward`, or on a segment without the router the switch's own decision, whose drops
come back as a `Drop` for `count_drop`. The verdict is shaped for the shell's hot path, so the common
cases allocate nothing:
- an ``int``: write pkt, unchanged, to that port;
- a ``tuple`` of ints: write pkt, unchanged, to each (a flood);
- a ``list`` of (port, frame): write each to its port (the router or the flow cache made or changed
  them); a frame is bytes, or a ``wire.Gather`` (head + untouched payload) that takes one writev;
- ``None``: nothing to send; a drop was counted with its reason.

A frame for the router asks the flow cache (flowcache.py) first; on a miss it takes the router and
``from_router``, and the cache keeps the router's action for the flow (Routed.forwarded).

A port may carry an egress action (`egress`): a VXLAN remote's push (vxlan.py), a trunk VLAN port's
tag, an access port's pop on a segment on a trunk (vlan.py). On a segment with such ports the
forwarder is `forward_egress`: the verdict, whoever made it (switch, router, flow cache, timer), then
each frame for such a port made into what that port carries, in one place (`encapsulate`). Frames
that come in by the underlay or a trunk enter by `receive_underlay` and `receive_trunk`, which name the
port they arrive on.

Every drop, wherever it happens, is counted in one ledger: ``counters.drops[ingress port]`` by `Drop`
reason (the router's rollup ``Router.drops`` is counted at the same point). With a tracer attached
(``trace``), every stage reports to it and a journal takes back every change the frame made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from .counters import Counters, Drop, Event
from .fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES, Fdb
from .flowcache import DEFAULT_MAX_ENTRIES as FLOW_CACHE_MAX_ENTRIES
from .flowcache import FlowCache
from .ipv6 import is_router_advert
from .journal import Journal
from .l2 import DEFAULT_LOOP_HOLD, Decision, Switch
from .protect import PortSecurity
from .routed import Forwarded, Transmit
from .router import Router
from .trace import Tracer
from .vlan import TPID, UNTAG, Trunk, Untag, pop, tagged, vid_of
from .vxlan import HEADER_LEN, Tunnel, Vtep, received_vnet_header
from .wire import VNET_HDR_LEN, Frame, mac_str

# A list verdict's frames are bytes, or a Gather (flowcache.py: a long payload, written with writev).
Verdict = int | tuple[int, ...] | Sequence[tuple[int, Frame]] | None
# What a port's forwarder (Datapath.forwarder) answers: a Verdict, or a Drop the caller counts with
# Datapath.count_drop (the switch's own decision, on a segment without the router).
PortVerdict = Verdict | Drop
Forwarder = Callable[[int, bytes, float], PortVerdict]
# What a port's frames are made into on the way out (vxlan.Tunnel, vlan.Trunk, vlan.Untag).
Egress = Tunnel | Trunk | Untag


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
        self.router: Router | None = None
        self.flows: FlowCache | None = None  # with a Router attached, unless flow_cache_max is 0
        self.tracer: Tracer | None = None  # set by `trace` only: None on the packet path
        self._journal: Journal | None = None
        self.tunnels: list[Tunnel] = []
        self.encaps: dict[int, Tunnel] = {}  # a remote VTEP's port -> its tunnel (push on the way out)
        self.tunnel_of: dict[int, Tunnel] = {}  # a tunnel's own port -> the tunnel
        self.new_remotes: list[tuple[Tunnel, str, int]] = []  # learned, waiting for the shell's socket
        self.trunks: list[Trunk] = []
        # Every port whose frames are changed on the way out (a tunnel's, a trunk's, an access port of
        # a segment on a trunk) -> its egress action; and the segments that have such ports.
        self.egress: dict[int, Egress] = {}
        self.egress_segments: set[int] = set()
        self.untagged_only: set[int] = set()  # ports of segments on a trunk: tagged in is a drop
        # Segments on a trunk: a frame there may be tagged, and is popped for the router and a tunnel.
        self.trunked_segments: set[int] = set()
        # Protections (l2.py, fdb.py, protect.py): set for every segment, now and later ones.
        self.storm_limit = 0
        self.loop_moves = 0
        self.loop_hold = DEFAULT_LOOP_HOLD
        self.security: dict[int, PortSecurity] = {}  # ports under --port-security
        self.notices: list[str] = []  # what the shell should log (loop guard's blocks and recoveries)
        self.mirrors: set[int] = set()  # mirror (SPAN) ports: on no segment, never given a frame

    # --- building ----------------------------------------------------------------------------------
    def add_segment(self, name: str) -> int:
        fdb = Fdb(self.ageing, self.fdb_max, events=self.counters.events)
        fdb.loop_moves = self.loop_moves
        switch = Switch(fdb)
        switch.storm_limit, switch.loop_hold = self.storm_limit, self.loop_hold
        self.segments.append(Segment(name, switch))
        if self.flows is not None:
            self.flows.add_segment(self.segments[-1].switch)
        return len(self.segments) - 1

    def add_port(self, name: str, segment: int, group: int | None = None, flood: bool = True) -> int:
        """group and flood: Switch.add_port's (a tunnel's remotes are one split-horizon group)."""
        seg = self.segments[segment]
        port = self.counters.add_port(name)
        seg.switch.add_port(port, group, flood)
        seg.ports.append(port)
        self.port_switch.append(seg.switch)
        self.port_segment.append(segment)
        return port

    def protect(self, storm_limit: int, loop_moves: int, loop_hold: float = DEFAULT_LOOP_HOLD) -> None:
        """Storm control (floods a second per port and kind) and the loop guard (moves of one MAC a
        second that mean a loop; how long its port stays blocked), for every segment; 0 turns off."""
        self.storm_limit, self.loop_moves, self.loop_hold = storm_limit, loop_moves, loop_hold
        for seg in self.segments:
            seg.switch.storm_limit, seg.switch.loop_hold = storm_limit, loop_hold
            seg.switch.fdb.loop_moves = loop_moves

    def set_port_mac_max(self, port: int, limit: int | None) -> None:
        """At most limit MACs learned on port (None: only the segment's --fdb-max bounds it)."""
        limits = self.port_switch[port].fdb.port_limits
        if limit is None:
            limits.pop(port, None)
        else:
            limits[port] = limit

    def secure(self, port: int, rules: PortSecurity | None) -> None:
        """Port security for port (None: off). Its forwarder checks every frame first."""
        if rules is None:
            self.security.pop(port, None)
        else:
            self.security[port] = rules

    def blocked_ports(self, now: float) -> dict[str, float]:
        """Ports the loop guard holds, by name -> seconds until they come back."""
        names = self.counters.names
        return {
            names[port]: max(0.0, until - now)
            for seg in self.segments
            for port, until in seg.switch.blocked.items()
        }

    def take_notices(self) -> list[str]:
        """Lines for the log since the last call: the loop guard's blocks (from any frame's decision)
        and recoveries (from on_timer). Asked by the shell at its deadline checks, not per frame."""
        names = self.counters.names
        for seg in self.segments:
            switch = seg.switch
            for port, mac in switch.new_blocks:
                self.notices.append(
                    f"loop guard: {mac_str(mac)} is flapping between ports of segment {seg.name}: a loop "
                    f"outside the switch? port {names[port]} is blocked for {switch.loop_hold:g}s"
                )
            switch.new_blocks.clear()
        notices, self.notices = self.notices, []
        return notices

    def add_mirror(self, name: str) -> int:
        """A mirror (SPAN) port: an id and counters of its own (the copies written to it; what it
        sends, dropped as mirror-port by the shell), on no segment: no switch knows it, so it is never
        flooded to and never learned. Its port_switch entry only keeps the ids aligned: the shell never
        hands its frames to the core."""
        port = self.counters.add_port(name)
        self.port_switch.append(self.segments[0].switch)
        self.port_segment.append(0)
        self.mirrors.add(port)
        return port

    def remove_port(self, port: int) -> set[bytes]:
        """A port leaves (`vswitch port del`): no frame goes to it again, and what was learned through
        it goes: its FDB entries, the router's neighbours with those MACs, the flow cache (flushed by
        the FDB change). Its counters stay, under its name. Returns the MACs it had."""
        switch = self.port_switch[port]
        macs = {mac for mac, entry in switch.fdb.entries.items() if entry.port == port and not entry.static}
        switch.remove_port(port)
        self.segments[self.port_segment[port]].ports.remove(port)
        if self.router is not None:
            self.router.forget_neighbours(macs)
            self.router.forget_port(port)
        if self.flows is not None:
            self.flows.flush()
        return macs

    def move_port(self, port: int, segment: int) -> set[bytes]:
        """`vswitch port move`: the port leaves its segment as remove_port has it, and joins another."""
        macs = self.remove_port(port)
        seg = self.segments[segment]
        seg.switch.add_port(port)
        seg.ports.append(port)
        self.port_switch[port] = seg.switch
        self.port_segment[port] = segment
        self.access(port)
        return macs

    def access(self, port: int) -> None:
        """A host's port that joined its segment after the trunks were made (`port add`, `port move`):
        an access port of a segment on a trunk, as add_trunk made the others (tagged in is a drop,
        tagged out is popped), and a plain port elsewhere."""
        if self.port_segment[port] in self.trunked_segments:
            self.egress.setdefault(port, UNTAG)
            self.untagged_only.add(port)
        else:
            if self.egress.get(port) is UNTAG:
                del self.egress[port]
            self.untagged_only.discard(port)

    def attach_router(self, router: Router, macs: dict[int, bytes]) -> None:
        """Give the router an interface (a port with no fd) on each segment in macs."""
        self.router = router
        router.foreign_ports = self.encaps  # a tunnel's remotes: another host's clients, never served
        for segment, mac in macs.items():
            seg = self.segments[segment]
            port = self.counters.add_port(f"router:{seg.name}")
            seg.switch.set_router_port(port, mac)
            self.port_switch.append(seg.switch)
            self.port_segment.append(segment)
        if router.v6 is not None:
            for segment in router.v6.advertising:  # RFC 6105: only the router advertises there
                self.segments[segment].switch.ra_guard = True
        if self.flow_cache_max > 0:
            switches = [seg.switch for seg in self.segments]
            self.flows = FlowCache(router, switches, self.counters, self.flow_cache_max)

    def add_tunnel(self, tunnel: Tunnel, remotes: list[tuple[str, bool]]) -> None:
        """Give tunnel a port of its own (its underlay drops) and one per (remote address, flooded):
        a remote named only by a static FDB entry is not flooded to."""
        seg = self.segments[tunnel.segment]
        tunnel.port = self.counters.add_port(f"vx{tunnel.vni}")
        self.tunnel_of[tunnel.port] = tunnel
        self.port_switch.append(seg.switch)
        self.port_segment.append(tunnel.segment)
        for address, flooded in remotes:
            port = self.add_port(f"vx{tunnel.vni}@{address}", tunnel.segment, tunnel.port, flooded)
            tunnel.add_remote(address, port)
            self.encaps[port] = tunnel
            self.egress[port] = tunnel
        self.tunnels.append(tunnel)
        self.egress_segments.add(tunnel.segment)

    def add_trunk(self, trunk: Trunk, vlans: list[tuple[int, int]], native: int | None) -> None:
        """Give trunk a port of its own (its drops) and one per (segment, VID), and one for the native
        segment's untagged frames; every other port of those segments becomes an access port of a
        VLAN-aware switch (vlan.py: tagged in is a drop, tagged out is popped)."""
        trunk.port = self.counters.add_port(trunk.name)
        first = vlans[0][0] if vlans else native
        assert first is not None
        self.port_switch.append(self.segments[first].switch)
        self.port_segment.append(first)
        members = [(segment, vid, f"{trunk.name}.{vid}") for segment, vid in vlans]
        if native is not None:
            members.append((native, 0, f"{trunk.name}.native"))
        for segment, vid, name in members:
            for port in self.segments[segment].ports:
                if isinstance(self.egress.get(port), Trunk):
                    continue  # another trunk's VLAN port: tagged is what it carries
                if port not in self.egress:
                    self.egress[port] = UNTAG
                self.untagged_only.add(port)
            port = self.add_port(name, segment)
            if vid:
                trunk.add_vlan(vid, port)
            else:
                trunk.native = port
            self.egress[port] = trunk
            self.egress_segments.add(segment)
        self.trunks.append(trunk)
        self.trunked_segments.update(segment for segment, _, _ in members)

    # --- the packet path ---------------------------------------------------------------------------
    def receive(self, in_port: int, pkt: bytes, now: float) -> Verdict:
        """Count the frame as received on in_port, then `forward` it."""
        counters = self.counters
        counters.rx_packets[in_port] += 1
        if len(pkt) > VNET_HDR_LEN:  # a runt shorter than the vnet header must not count negative bytes
            counters.rx_bytes[in_port] += len(pkt) - VNET_HDR_LEN
        if self.security and in_port in self.security and self._spoofed(in_port, pkt):
            return None
        if self.egress:
            return self.forward_egress(in_port, pkt, now)
        return self.forward(in_port, pkt, now)

    def _spoofed(self, in_port: int, pkt: bytes) -> bool:
        """Port security (protect.py): True, and the drop counted, when pkt claims what in_port may not;
        checked before anything learns from the frame."""
        refused = self.security[in_port].check(pkt)
        if refused is None:
            return False
        self._count_l2(in_port, refused)
        return True

    def receive_underlay(
        self, vtep: Vtep, payload: bytes, source: str, now: float
    ) -> tuple[int, bytes | None, Verdict]:
        """A datagram from a VTEP's underlay socket (the UDP payload, from source): checked
        (Vtep.receive), then as a frame (virtio-net header + the inner frame) received on its remote's
        port and forwarded. Returns (that port, the frame, the verdict), or (the port charged, None,
        None) for a drop, counted."""
        port, reason = vtep.receive(payload, source)
        if reason is Drop.VXLAN_UNKNOWN_REMOTE:
            tunnel = self.tunnel_of[port]
            if tunnel.may_learn(source):
                port, reason = self._learn_remote(tunnel, source), None
        if reason is not None:
            self._count_l2(port, reason)
            return port, None, None
        inner = memoryview(payload)[HEADER_LEN:]
        pkt = b"".join((received_vnet_header(payload, self.encaps[port].mtu, HEADER_LEN), inner))
        self.counters.rx_packets[port] += 1
        self.counters.rx_bytes[port] += len(inner)
        return port, pkt, self.forward_egress(port, pkt, now)

    def _learn_remote(self, tunnel: Tunnel, address: str) -> int:
        """A VTEP heard from on a tunnel with a group becomes a remote: a port of its own, reached by
        its MACs' FDB entries only (floods go to the group). The shell gives it a socket (new_remotes)."""
        port = self.add_port(f"vx{tunnel.vni}@{address}", tunnel.segment, tunnel.port, flood=False)
        tunnel.add_remote(address, port)
        tunnel.learned += 1
        self.encaps[port] = tunnel
        self.egress[port] = tunnel
        self.new_remotes.append((tunnel, address, port))
        self.counters.events[Event.VXLAN_REMOTE_LEARNED] += 1
        return port

    def receive_trunk(self, trunk: Trunk, pkt: bytes, now: float) -> tuple[int, Verdict]:
        """A frame read off a trunk's tap: classified by its tag (Trunk.classify), counted as received
        on its VLAN's port and forwarded, tag and all (vlan.py); or (the trunk's port, None), counted."""
        port, reason = trunk.classify(pkt)
        if reason is not None:
            self.counters.rx_packets[trunk.port] += 1
            self._count_l2(port, reason)
            return port, None
        self.counters.rx_packets[port] += 1
        self.counters.rx_bytes[port] += len(pkt) - VNET_HDR_LEN
        if self.tracer is not None:
            self.tracer.note("vlan", f"in on {trunk.name}: {self._vlan_words(trunk, port)}")
        return port, self.forward_egress(port, pkt, now)

    def forward(self, in_port: int, pkt: bytes, now: float) -> Verdict:
        """`receive` without the rx counters: for the IO shell, which adds a whole batch's up at once
        (`Counters.received`). The L2 unicast verdict comes first and alone: it is nearly all traffic."""
        switch = self.port_switch[in_port]
        tracer = self.tracer
        if tracer is None:
            decision = switch.decide(in_port, pkt, now)
            if decision.__class__ is int and decision != switch.router_port:
                return decision
        else:
            decision = self._traced_l2(switch, in_port, pkt, now, f"in on {self.counters.names[in_port]}")
        if decision.__class__ is int:
            if decision != switch.router_port:
                return decision
            if (
                self.trunked_segments
                and pkt[22:24] == TPID
                and self.port_segment[in_port] in self.trunked_segments
            ):
                pkt = pop(pkt)  # from a trunk: the router takes frames untagged (router on a stick)
            flows = self.flows
            if flows is None:
                return self._route(in_port, pkt, now)[1]
            segment = self.port_segment[in_port]
            if tracer is not None:  # asked only: a trace takes the router's steps, as OVS's does
                self._note_flow_cache(tracer, flows, segment, pkt, now)
                return self._route(in_port, pkt, now)[1]
            hit = flows.forward(segment, pkt, now)
            if hit is not None:
                return hit
            forwarded, sent = self._route(in_port, pkt, now)
            flows.install(segment, pkt, forwarded, sent)
            return sent
        if decision.__class__ is tuple:
            if switch.router_port is None:
                return decision
            flood: list[Transmit] = [(p, pkt) for p in decision]
            routed = pkt
            if (
                self.trunked_segments
                and pkt[22:24] == TPID
                and self.port_segment[in_port] in self.trunked_segments
            ):
                routed = pop(pkt)
            flood.extend(self._route(in_port, routed, now)[1])
            return flood
        self._count_l2(in_port, decision)  # type: ignore[arg-type]
        return None

    def forwarder(self, in_port: int) -> Forwarder:
        """What the IO shell calls for each frame from in_port, asked once per batch: `forward`, or,
        on a segment without the router while nothing traces, the switch's decision itself: its
        verdict is final there, and one Python call less per frame is ~20% of the decision's cost. Its
        drops come back as a Drop, for the caller to count (`count_drop`). A port under port security
        has that forwarder behind its check, chosen here once for the batch, not again per frame."""
        plain = self._plain_forwarder(in_port)
        if in_port not in self.security:
            return plain
        spoofed = self._spoofed

        def secured(port: int, pkt: bytes, now: float) -> PortVerdict:
            return None if spoofed(port, pkt) else plain(port, pkt, now)

        return secured

    def _plain_forwarder(self, in_port: int) -> Forwarder:
        switch = self.port_switch[in_port]
        if self.egress and (
            switch.router_port is not None or self.port_segment[in_port] in self.egress_segments
        ):
            return self.forward_egress
        if switch.router_port is None and self.tracer is None:
            return switch.decide
        return self.forward

    # --- egress actions: a tunnel's push, a trunk's tag, an access port's pop ----------------------
    def forward_egress(self, in_port: int, pkt: bytes, now: float) -> Verdict:
        """`forward`, then every frame bound for a port with an egress action made into what that port
        carries: wrapped for a remote VTEP (vxlan.py), tagged for a trunk, untagged for an access port
        of a segment on a trunk (vlan.py). A tagged frame into such an access port is refused first."""
        if in_port in self.untagged_only and pkt[22:24] == TPID and vid_of(pkt):  # VID 0: priority only
            self._count_l2(in_port, Drop.VLAN_ON_ACCESS)
            return None
        verdict = self.forward(in_port, pkt, now)
        egress = self.egress
        if isinstance(verdict, int):
            action = egress.get(verdict)
            if action is None:
                return verdict
            if egress.get(in_port) is action and action.__class__ is Tunnel:
                self._count_l2(in_port, Drop.SAME_PORT)  # split horizon: never from the underlay back into it
                return None
            return self._push(in_port, action, verdict, pkt)
        if verdict is None:
            return None
        if isinstance(verdict, tuple):
            if not any(p in egress for p in verdict):
                return verdict
            return self.encapsulate(in_port, [(p, pkt) for p in verdict])
        return self.encapsulate(in_port, verdict)

    def encapsulate(self, in_port: int, frames: Sequence[tuple[int, Frame]]) -> list[tuple[int, Frame]]:
        """frames with each one bound for a port with an egress action made into what it carries."""
        egress = self.egress
        if not any(port in egress for port, _ in frames):
            return list(frames)
        out: list[tuple[int, Frame]] = []
        charged: set[int] = set()  # a frame flooded to several remotes is one drop, not one per copy
        for port, frame in frames:
            action = egress.get(port)
            if action is None:
                out.append((port, frame))
            else:
                out.extend(self._push(in_port, action, port, bytes(frame), id(frame) not in charged))
                charged.add(id(frame))
        return out

    def _push(
        self, in_port: int, action: Egress, port: int, pkt: bytes, count: bool = True
    ) -> list[tuple[int, Frame]]:
        if action.__class__ is Tunnel and pkt[22:24] == TPID and action.segment in self.trunked_segments:
            pkt = pop(pkt)  # a segment on a trunk: the tunnel carries it as its access ports do
        packets = action.push(port, pkt)
        if packets.__class__ is list:
            if self.tracer is not None:
                self._note_egress(action, port, pkt, packets)
            if len(packets) == 1:
                return [(port, packets[0])]
            return [(port, packet) for packet in packets]
        if count:  # a Drop, charged to the ingress port; a timer's frame to the tunnel
            self._count_l2(in_port if in_port >= 0 else cast(Tunnel, action).port, packets)  # type: ignore[arg-type]
        return []

    def _note_egress(self, action: Egress, port: int, pkt: bytes, packets: list[bytes]) -> None:
        assert self.tracer is not None
        name = self.counters.names[port]
        if isinstance(action, Tunnel):
            self.tracer.note(
                f"vxlan {action.vni}",
                f"push: outer {action.local} -> {action.addresses[port]}:{action.dstport} "
                f"(udp, DF, ttl {action.ttl}), {len(packets)} packet(s)",
            )
            return
        before, after = tagged(pkt), bool(packets) and tagged(packets[0])
        if before and not after:
            self.tracer.note("vlan", f"out on {name}: pop the tag (VID {vid_of(pkt)})")
        elif after and not before:
            self.tracer.note("vlan", f"out on {name}: push a tag, VID {vid_of(packets[0])}, priority 0")
        elif before and vid_of(pkt) != vid_of(packets[0]):
            self.tracer.note(
                "vlan", f"out on {name}: VID {vid_of(pkt)} -> {vid_of(packets[0])}, priority kept"
            )

    def _vlan_words(self, trunk: Trunk, port: int) -> str:
        if port == trunk.native:
            return f"untagged: native VLAN, port {self.counters.names[port]}"
        return f"VID {trunk.vid_of[port]}: port {self.counters.names[port]}"

    def count_drop(self, port: int, reason: Drop) -> None:
        """Count a drop a forwarder returned for a frame from port."""
        self._count_l2(port, reason)

    def _route(self, in_port: int, pkt: bytes, now: float) -> tuple[Forwarded | None, list[Transmit]]:
        """The router's decision for a frame from in_port, switched into the egress segments; with
        the forwarded packet's action, for the flow cache."""
        router = self.router
        assert router is not None
        counters = self.counters
        router_port = self.port_switch[in_port].router_port
        if router_port is not None:
            counters.rx_packets[router_port] += 1
            counters.rx_bytes[router_port] += len(pkt) - VNET_HDR_LEN
        routed = router.decide(self.port_segment[in_port], pkt, now, counters.drops[in_port], in_port)
        return routed.forwarded, self.from_router(routed.frames, now)

    def from_router(self, frames: list[Transmit], now: float) -> list[Transmit]:
        """Switch the router's frames into their segments, as if they arrived on its ports."""
        sent: list[Transmit] = []
        tracer = self.tracer
        for segment, frame in frames:
            switch = self.segments[segment].switch
            port = switch.router_port
            assert port is not None
            self.counters.tx_packets[port] += 1
            self.counters.tx_bytes[port] += len(frame) - VNET_HDR_LEN
            if tracer is not None:
                decision = self._traced_l2(switch, port, frame, now, "from the router")
            else:
                decision = switch.decide(port, frame, now)
            if switch.no_ra and is_router_advert(frame):  # never onto the host port (router6.py)
                decision = _without(decision, switch.no_ra)
            if decision.__class__ is int:
                sent.append((decision, frame))
            elif decision.__class__ is tuple:
                sent.extend((p, frame) for p in decision)
            else:
                self._count_l2(port, decision)  # type: ignore[arg-type]
        return sent

    def _count_l2(self, port: int, reason: Drop) -> None:
        self.counters.drops[port][reason] += 1
        if self.tracer is not None:
            self.tracer.drop(self.counters.names[port], reason)

    # --- tracing -----------------------------------------------------------------------------------
    @contextmanager
    def tracing(self, tracer: Tracer) -> Iterator[None]:
        """Run frames through the real pipeline with tracer listening and nothing committed: every
        table hands a journal what it changes, and the journal takes it all back at the end."""
        if self._journal is not None:
            raise RuntimeError("already tracing")
        journal = self._journal = Journal()
        tables = self._journaled()
        journal.keep(self.counters)
        for table in tables:
            table.journal = journal  # type: ignore[attr-defined]
        self.tracer = tracer
        if self.router is not None:
            self.router.tracer = tracer
        try:
            yield
        finally:
            self.tracer = None
            if self.router is not None:
                self.router.tracer = None
            for table in tables:
                table.journal = None  # type: ignore[attr-defined]
            journal.rollback()
            self._journal = None

    def _journaled(self) -> list[object]:
        tables: list[object] = [seg.switch.fdb for seg in self.segments]
        if self.router is not None:
            tables += self.router.journaled()
        if self.flows is not None:
            tables.append(self.flows)
        return tables

    @staticmethod
    def _note_flow_cache(tracer: Tracer, flows: FlowCache, segment: int, pkt: bytes, now: float) -> None:
        if flows.forward(segment, pkt, now, dry_run=True) is not None:
            tracer.note("flow cache", "hit: the cached action forwards it (the router's steps below)")
        else:
            tracer.note("flow cache", "miss: the router decides, and the cache may keep the action")

    def _traced_l2(self, switch: Switch, in_port: int, pkt: bytes, now: float, where: str) -> Decision:
        """One L2 decision, reported. A source learned or moved goes through Fdb.learn, which hands the
        journal what it changes; one already known is refreshed in place by the decision itself: the
        journal keeps its entry first."""
        tracer, journal = self.tracer, self._journal
        assert tracer is not None and journal is not None
        src, dst = pkt[16:22], pkt[10:16]
        before = switch.fdb.entries.get(src)
        if before is not None:
            journal.keep(before)
        old_port = None if before is None else before.port
        decision = switch.decide(in_port, pkt, now)
        seg = self.segments[self.port_segment[in_port]].name
        names = self.counters.names
        if isinstance(decision, Drop):
            tracer.note(f"L2 {seg}", f"{where}: drop ({decision})")
            return decision
        after = switch.fdb.entries.get(src)
        learnt = f"learn {mac_str(src)} on {names[in_port]}; " if after and after.port != old_port else ""
        if isinstance(decision, int):
            target = "the router" if decision == switch.router_port else names[decision]
            tracer.note(f"L2 {seg}", f"{where}: {learnt}FDB: {mac_str(dst)} is on {target} -> {target}")
            return decision
        why = "group address" if dst[0] & 1 else f"no FDB entry for {mac_str(dst)}"
        targets = [names[p] for p in decision]
        if switch.router_port is not None and in_port != switch.router_port:
            targets.append("the router")
        tracer.note(f"L2 {seg}", f"{where}: {learnt}{why}: flood -> {', '.join(targets) or 'nobody'}")
        return decision

    # --- time --------------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The soonest timer of any table. Asked once per batch: plain loops, no temporary lists."""
        best = self.router.next_deadline() if self.router is not None else None
        for seg in self.segments:
            deadline = seg.switch.fdb.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
            if seg.switch.blocked:
                deadline = seg.switch.next_unblock()
                if deadline is not None and (best is None or deadline < best):
                    best = deadline
        return best

    def dns_upstream_reply(self, wire: bytes, now: float, over_tcp: bool = False) -> list[tuple[int, Frame]]:
        """An answer from the DNS upstream (the shell's socket): the frames taking it to its client."""
        if self.router is None:
            return []
        frames: list[tuple[int, Frame]] = list(
            self.from_router(self.router.dns_upstream_reply(wire, now, over_tcp), now)
        )
        return self.encapsulate(-1, frames) if self.egress else frames

    def on_timer(self, now: float) -> list[tuple[int, Frame]]:
        for seg in self.segments:
            seg.switch.fdb.age(now)
            if seg.switch.blocked:
                for port in seg.switch.unblock_due(now):
                    self.notices.append(f"loop guard: port {self.counters.names[port]} forwards again")
        if self.router is None:
            return []
        frames: list[tuple[int, Frame]] = list(self.from_router(self.router.on_timer(now), now))
        return self.encapsulate(-1, frames) if self.egress else frames

    # --- the ledger --------------------------------------------------------------------------------
    def drop_reasons(self) -> dict[str, int]:
        """Every drop, summed over the ports (the router's included)."""
        return dict(self.counters.total_drops())

    def router_drops(self) -> Counter[str]:
        """The drops the router counted (in the ports' ledgers), summed: stats' router block."""
        return Counter() if self.router is None else Counter(self.router.drops)


def _without(decision: Decision, ports: set[int]) -> Decision:
    """decision without the given ports (a flood loses them; a unicast to one becomes nothing)."""
    if isinstance(decision, int):
        return () if decision in ports else decision
    if isinstance(decision, tuple):
        return tuple(p for p in decision if p not in ports)
    return decision


__all__ = ["Datapath", "Drop", "Forwarder", "PortVerdict", "Segment", "Transmit", "Verdict"]
