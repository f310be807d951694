"""NAT: masquerade, port forwards and hairpin over connection tracking (RFC 4787, 5382, 5508).

Policy, in one place:
- Mapping is endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): one internal (proto, address,
  port) keeps one external port for as long as any flow uses it; the internal port is kept when it
  is free (port preservation), else the next free port after a cursor.
- Filtering is address-and-port dependent, like the kernel's conntrack: inbound packets reach the
  inside only as replies of a tracked flow or through a port forward (RFC 4787 REQ-8 allows it).
  Anything else to the NAT address is dropped silently ("nat-unsolicited"; RFC 5382 REQ-4 allows a
  silent drop of an unsolicited SYN).
- TCP flows start only with a SYN (no mid-stream pickup); ICMP flows only with an echo request.
- A flow from inside to a port forward is masqueraded too (hairpin, RFC 4787 REQ-9, RFC 5382 REQ-8),
  so the target's reply comes back through us even when client and target share a segment.
- Inbound routed (non-NAT) traffic from the uplink to the inside is tracked with an identity flow so
  its replies are not masqueraded.
- ICMP errors about a tracked flow are translated outer and inner (RFC 5508 4.1, 4.2).
- Fragments (RFC 4787 REQ-14): the first fragment carries the ports and is translated with its flow;
  the translation is remembered by (protocol, source, destination, IP id) for FRAGMENT_TIMEOUT, and
  the later fragments of that datagram get the same address rewrite. A later fragment that arrives
  before its first is held (bounded: HELD_DATAGRAMS_MAX datagrams, HELD_BYTES_MAX bytes, expiry as the
  kernel's ipfrag_time) and routed as if it had just arrived once its first fragment is translated:
  Linux's conntrack reassembles before NAT and has no order to care about; we keep the fragments as
  they are and only wait for the one that names the flow.

Checksums (design.md): the IPv4 header is always updated incrementally (RFC 1624). The L4 field of a
NEEDS_CSUM frame holds the uncomplemented pseudo-header sum: only address changes touch it. A
complete L4 checksum gets RFC 1624 for addresses and ports; UDP 0 stays 0, a computed 0 is 0xFFFF.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Final

from .checksum import delta, fold, update_complete
from .conntrack import KEY, ORIGINAL, REPLY, Conntrack, Flow, Timeouts
from .counters import Drop, Event
from .icmp import ECHO_REPLY, ECHO_REQUEST, ERROR_TYPES
from .ipv4 import NatChange, Packet
from .ipv6 import Packet6
from .journal import Journal
from .routes import NextHop
from .wire import (
    IP_CSUM,
    IP_FRAG_OFFSET_MASK,
    IP_MF,
    L3,
    PORTS,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_CSUM_OFF,
    TCP_FLAGS_OFF,
    TCP_MIN_LEN,
    TCP_RST,
    TCP_SYN,
    U16,
    UDP_CSUM_OFF,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
)

ICMP_ID_OFF: Final = 4
ICMP_CSUM: Final = 2
MAPPING: Final = struct.Struct("!B4sH")  # endpoint-independent mapping key: proto, address, port
_new: Final = tuple.__new__  # a NamedTuple from a tuple, without its generated __new__ (a Python call)
_L4_MIN: Final = {PROTO_TCP: TCP_MIN_LEN, PROTO_UDP: 8, PROTO_ICMP: 8}
_IP_ADDRS: Final = slice(L3 + 12, L3 + 20)
IP_ID_OFF: Final = L3 + 4
FRAGMENT_KEY: Final = struct.Struct("!B4s4sH")  # proto, source, destination, IP identification
FRAGMENT_TIMEOUT: Final = 30.0  # the kernel's ipfrag_time: how long the pieces of one datagram may take
FRAGMENT_MAX: Final = 1024  # datagrams whose later fragments we still expect; the oldest goes first
HELD_DATAGRAMS_MAX: Final = 64  # datagrams with fragments waiting for their first one
HELD_BYTES_MAX: Final = 1 << 20  # all the fragments waiting together (Linux: ipfrag_high_thresh, 4 MB)


class HeldFragments:
    """Later fragments that came before their first: held, not dropped (see the module docstring)."""

    __slots__ = ("expires", "frames", "in_iface", "ledger")

    def __init__(self, in_iface: int, expires: float, ledger: Counter[str]) -> None:
        self.in_iface = in_iface
        self.expires = expires
        self.ledger = ledger  # the ingress port's drops, for the fragments that expire waiting
        self.frames: list[bytes] = []


class Held:
    """The verdict for a fragment kept until its first fragment comes (nothing to send, no drop)."""


HELD: Final = Held()

Xlate = tuple[bytes, bytes, bytes, int, int]  # new src, new dst, new ports, addr delta, port delta
Route = Callable[[bytes], NextHop | None]  # the router's lookup, for "would this leave by the uplink?"


@dataclass(frozen=True)
class PortForward:
    proto: int
    port: int
    target: IPv4Address | IPv6Address  # of the NAT's family
    target_port: int


@dataclass
class NatConfig:
    uplink: int
    address: IPv4Address | IPv6Address  # IPv4's for Nat, IPv6's for nat6.Nat66
    inside: list[IPv4Network] | list[IPv6Network] = field(default_factory=list)
    forwards: list[PortForward] = field(default_factory=list)
    port_range: tuple[int, int] = (1024, 65535)
    max_flows: int = 65536
    timeouts: Timeouts = field(default_factory=Timeouts)


class PortAllocator:
    """External ports of one protocol: preservation first, then a cursor over the range.

    A new allocation scans from the cursor only past ports in use, so its cost grows with the load
    (1 / (1 - load)), not with the range; a full range is refused at once by a count.
    """

    def __init__(self, low: int, high: int, reserved: set[int]) -> None:
        if not 0 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        self.low = low
        self.high = high
        self.used: set[int] = {p for p in reserved if low <= p <= high}
        self.reserved = frozenset(reserved)
        self.cursor = low

    def allocate(self, preferred: int) -> int | None:
        used = self.used
        if preferred not in used and self.low <= preferred <= self.high:
            used.add(preferred)
            return preferred
        if len(used) > self.high - self.low:
            return None
        port = self.cursor
        while port in used:
            port = port + 1 if port < self.high else self.low
        used.add(port)
        self.cursor = port + 1 if port < self.high else self.low
        return port

    def free(self, port: int) -> None:
        if port not in self.reserved:
            self.used.discard(port)


def _xlate(old: bytes, new: bytes, key: struct.Struct = KEY) -> Xlate | None:
    """The rewrite from one KEY to another: new fields and their checksum deltas."""
    if old == new:
        return None
    _, osrc, osp, odst, odp = key.unpack(old)
    _, nsrc, nsp, ndst, ndp = key.unpack(new)
    old_ports, new_ports = PORTS.pack(osp, odp), PORTS.pack(nsp, ndp)
    return nsrc, ndst, new_ports, delta(osrc + odst, nsrc + ndst), delta(old_ports, new_ports)


def _invert(key: bytes, layout: struct.Struct = KEY) -> bytes:
    proto, src, sport, dst, dport = layout.unpack(key)
    return layout.pack(proto, dst, dport, src, sport)


def _partial(pkt: bytes | bytearray, l4: int) -> bool:
    """NEEDS_CSUM with csum_start at this L4 header: the field holds the pseudo-header sum."""
    return bool(pkt[0] & VNET_F_NEEDS_CSUM) and pkt[6] | pkt[7] << 8 == l4 - VNET_HDR_LEN


class Nat:
    """IPv4's NAT; nat6.Nat66 is IPv6's, with these five words its own and the policy shared."""

    KEY: struct.Struct = KEY
    MAPPING: struct.Struct = MAPPING
    ICMP: int = PROTO_ICMP
    ECHO_REQUEST: int = ECHO_REQUEST
    ECHO_REPLY: int = ECHO_REPLY

    def __init__(
        self, config: NatConfig, events: Counter[str] | None = None, conntrack: Conntrack | None = None
    ) -> None:
        """conntrack: one to share (IPv4's, for IPv6's NAT: one table, one bound, one flow cache)."""
        self.config = config
        self.uplink = config.uplink
        self.address = config.address.packed
        self.inside = [(int(n.network_address), int(n.netmask)) for n in config.inside]
        self.events: Counter[str] = events if events is not None else Counter()
        self.forwards: dict[tuple[int, int], tuple[bytes, int]] = {}
        reserved: dict[int, set[int]] = {PROTO_TCP: set(), PROTO_UDP: set(), self.ICMP: set()}
        for fwd in config.forwards:
            if fwd.proto not in (PROTO_TCP, PROTO_UDP):
                raise ValueError(f"port forward for protocol {fwd.proto}: only TCP and UDP")
            self.forwards[(fwd.proto, fwd.port)] = (fwd.target.packed, fwd.target_port)
            reserved[fwd.proto].add(fwd.port)
        low, high = config.port_range
        # ICMP identifiers are not ports: the whole 16-bit space, so ids are mostly preserved.
        self.ports = {
            PROTO_TCP: PortAllocator(low, high, reserved[PROTO_TCP]),
            PROTO_UDP: PortAllocator(low, high, reserved[PROTO_UDP]),
            self.ICMP: PortAllocator(0, 0xFFFF, set()),
        }
        self.mappings: dict[bytes, list[int]] = {}  # MAPPING key -> [external port, flows]
        # FRAGMENT_KEY before translation -> (the address rewrite of its first fragment, expiry)
        self.fragments: dict[bytes, tuple[Xlate, float]] = {}
        # FRAGMENT_KEY -> later fragments that came first (released into their first's record)
        self.held: dict[bytes, HeldFragments] = {}
        self.held_bytes = 0
        if conntrack is None:
            conntrack = Conntrack(
                config.max_flows, config.timeouts, on_remove=self._release, events=self.events
            )
        self.conntrack = conntrack
        self.journal: Journal | None = None  # while a frame is traced (journal.py)

    def journal_save(self) -> Any:
        """All NAT state (conntrack keeps its own): mappings, ports in use, fragment state."""
        return (
            {key: list(value) for key, value in self.mappings.items()},
            {proto: (set(a.used), a.cursor) for proto, a in self.ports.items()},
            dict(self.fragments),
            {key: (w, list(w.frames)) for key, w in self.held.items()},
            self.held_bytes,
        )

    def journal_restore(self, saved: Any) -> None:
        mappings, ports, fragments, held, held_bytes = saved
        self.mappings.clear()
        self.mappings.update(mappings)
        for proto, (used, cursor) in ports.items():  # in place, as journal.py restores
            self.ports[proto].used.clear()
            self.ports[proto].used.update(used)
            self.ports[proto].cursor = cursor
        self.fragments.clear()
        self.fragments.update(fragments)
        self.held.clear()
        for key, (waiting, frames) in held.items():
            waiting.frames[:] = frames
            self.held[key] = waiting
        self.held_bytes = held_bytes

    def is_inside(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        return any(value & mask == net for net, mask in self.inside)

    def _release(self, flow: Flow) -> None:
        key = flow.mapping
        mapping = None if key is None else self.mappings.get(key)
        if key is None or mapping is None:  # none, or the other family's NAT's (one shared conntrack)
            return
        if self.journal is not None:
            self.journal.keep(self)
        mapping[1] -= 1
        if mapping[1] == 0:
            del self.mappings[key]
            self.ports[flow.proto].free(mapping[0])
            self.events[Event.NAT_MAPPING_FREED] += 1

    # --- the packet path ---------------------------------------------------------------------------
    def process(self, p: Packet, route: Route, now: float) -> NatChange | bytearray | Drop | Held | None:
        """Translate a validated IPv4 packet before routing.

        None: not NAT's business (route it as it is). A Drop: count and drop it. A NatChange: the
        translation the forward action applies (p.dst is then the new destination). A bytearray: an
        ICMP error translated outer and inner, to be routed as it is. HELD: a fragment waiting for its
        first; it comes back in its first fragment's ``released`` (the router routes them right after
        it) or expires. The
        flow the packet belongs to is left in p.flow (and p.made_flow if it made it).
        """
        if self.journal is not None:
            self.journal.keep(self)
        proto, l4, end = p.proto, p.l4, p.end
        if p.frag & IP_FRAG_OFFSET_MASK:
            return self._later_fragment(p, route, now)
        need = _L4_MIN.get(proto)
        if need is None or l4 + need > end:
            if not self._needs_nat(p.iface, p.src, p.dst, route):
                return None
            return Drop.NAT_UNSUPPORTED if need is None else Drop.L4_TRUNCATED
        pkt = p.pkt
        flags = 0
        if proto == PROTO_ICMP:
            icmp_type = pkt[l4]
            if icmp_type == ECHO_REQUEST:
                sport, dport = U16.unpack_from(pkt, l4 + ICMP_ID_OFF)[0], 0
            elif icmp_type == ECHO_REPLY:
                sport, dport = 0, U16.unpack_from(pkt, l4 + ICMP_ID_OFF)[0]
            elif icmp_type in ERROR_TYPES:
                return self._icmp_error(p, route, now)
            else:
                return Drop.NAT_UNSUPPORTED if self._needs_nat(p.iface, p.src, p.dst, route) else None
        else:
            sport, dport = PORTS.unpack_from(pkt, l4)
            if proto == PROTO_TCP:
                flags = pkt[l4 + TCP_FLAGS_OFF]
        x = self._track(p, sport, dport, flags, route, now)
        if not isinstance(x, tuple):
            return x  # a Drop, or None: not NAT's
        if p.frag & IP_MF:
            self._remember_fragments(p, x, now)
        return self._change(p, x, pkt[l4] == ECHO_REQUEST)

    def _track(
        self, p: Packet | Packet6, sport: int, dport: int, flags: int, route: Route, now: float
    ) -> Xlate | Drop | None:
        """The flow of a packet with these ports, found and stepped or made (both families): its
        translation in the packet's direction. None: not NAT's, or nothing to change; a Drop: refused.
        The flow is left in p.flow (and p.made_flow if this packet made it)."""
        key = self.KEY.pack(p.proto, p.src, sport, p.dst, dport)
        found = self.conntrack.get(key, now)
        if found is not None:
            flow, direction = found
            self.conntrack.update(flow, direction, flags, now)
            p.flow, p.direction = flow, direction
        else:
            made = self._new_flow(p, flags, key, dport, route, now)
            if not isinstance(made, Flow):
                return made
            flow, direction = made, ORIGINAL
        return flow.xlate[direction]

    def _change(self, p: Packet | Packet6, x: Xlate, echo_request: bool) -> NatChange:
        """The forward action's share of a translation; p is routed to its new destination."""
        nsrc, ndst, ports, addr_delta, port_delta = x
        if p.proto == self.ICMP:  # the identifier stands where the key has the request's source port
            ports = ports[:2] if echo_request else ports[2:]
        p.route_to(ndst)
        return _new(NatChange, (nsrc + ndst, ports, addr_delta, port_delta, False))

    # --- fragments (RFC 4787 REQ-14) ----------------------------------------------------------------
    def _remember_fragments(self, p: Packet, x: Xlate, now: float) -> None:
        """A first fragment was translated: its datagram's later fragments get the same addresses."""
        key = FRAGMENT_KEY.pack(p.proto, p.src, p.dst, U16.unpack_from(p.pkt, IP_ID_OFF)[0])
        self._keep_fragment(key, x, now)
        waiting = self._unhold(key)
        if waiting is not None:
            p.released = [(waiting.in_iface, frame, waiting.ledger) for frame in waiting.frames]
            self.events[Event.NAT_FRAGMENT_RELEASED] += len(waiting.frames)

    def _keep_fragment(self, key: bytes, x: Xlate, now: float) -> None:
        """Remember a first fragment's rewrite for its datagram's later ones (both families), newest
        last, the oldest evicted past FRAGMENT_MAX."""
        fragments = self.fragments
        fragments.pop(key, None)
        while len(fragments) >= FRAGMENT_MAX:
            del fragments[next(iter(fragments))]
            self.events[Event.NAT_FRAGMENT_EVICTED] += 1
        fragments[key] = (x, now + FRAGMENT_TIMEOUT)

    def _later_fragment(self, p: Packet, route: Route, now: float) -> NatChange | Drop | Held | None:
        """A non-first fragment has no ports: it gets the address rewrite its first fragment got."""
        key = FRAGMENT_KEY.pack(p.proto, p.src, p.dst, U16.unpack_from(p.pkt, IP_ID_OFF)[0])
        entry = self.fragments.get(key)
        if entry is None or entry[1] <= now:
            if not self._needs_nat(p.iface, p.src, p.dst, route):
                return None
            return self._hold(key, p, now)
        nsrc, ndst, _, addr_delta, _ = entry[0]
        self.events[Event.NAT_FRAGMENT_TRANSLATED] += 1
        p.route_to(ndst)
        return NatChange(nsrc + ndst, b"", addr_delta, 0, addresses_only=True)

    def _hold(self, key: bytes, p: Packet, now: float) -> Held | Drop:
        """Keep a fragment that came before its first one, within the bounds; else it is dropped."""
        pkt = p.pkt
        waiting = self.held.get(key)
        if self.held_bytes + len(pkt) > HELD_BYTES_MAX or (
            waiting is None and len(self.held) >= HELD_DATAGRAMS_MAX
        ):
            return Drop.NAT_FRAGMENT
        if waiting is None:
            waiting = self.held[key] = HeldFragments(p.iface, now + FRAGMENT_TIMEOUT, p.ledger)
        waiting.frames.append(pkt)
        self.held_bytes += len(pkt)
        self.events[Event.NAT_FRAGMENT_HELD] += 1
        return HELD

    def _unhold(self, key: bytes) -> HeldFragments | None:
        """Take a datagram's held fragments out of the store (released or expired), bytes and all."""
        waiting = self.held.pop(key, None)
        if waiting is not None:
            self.held_bytes -= sum(len(frame) for frame in waiting.frames)
        return waiting

    def _needs_nat(self, in_iface: int, src: bytes, dst: bytes, route: Route) -> bool:
        if dst == self.address:
            return True
        if not self.is_inside(src):
            return False
        hop = route(dst)
        return hop is not None and hop[0] == self.uplink

    def _policy(
        self, p: Packet | Packet6, dport: int, route: Route
    ) -> tuple[tuple[bytes, int] | None, bool, bool] | Drop | None:
        """Whether a flow's first packet is NAT's to track, and how: (the port forward's target,
        masquerade the source, an identity flow); None: plain routing; a Drop: unsolicited."""
        proto, src, dst, in_iface = p.proto, p.src, p.dst, p.iface
        dnat: tuple[bytes, int] | None = None
        if dst == self.address:
            dnat = self.forwards.get((proto, dport))
            if dnat is None:
                if in_iface != self.uplink or proto == self.ICMP:
                    return None  # for the router itself (echo, or UDP it will refuse)
                return Drop.NAT_UNSOLICITED
        inside = self.is_inside(src)
        if dnat is not None:
            snat = inside  # hairpin: the target must answer through us
        elif inside:
            hop = route(dst)
            snat = hop is not None and hop[0] == self.uplink
        else:
            snat = False
        identity = not snat and dnat is None
        if identity and not (in_iface == self.uplink and self.is_inside(dst)):
            return None  # plain routing, not tracked
        return dnat, snat, identity

    def _mapped_port(self, mapping_key: bytes, proto: int, sport: int) -> int | None:
        """The external port of an endpoint-independent mapping (RFC 4787 REQ-1), made if new."""
        mapping = self.mappings.get(mapping_key)
        if mapping is None:
            port = self.ports[proto].allocate(sport)
            if port is None:
                return None
            mapping = self.mappings[mapping_key] = [port, 0]
            self.events[Event.NAT_MAPPING_NEW] += 1
        return mapping[0]

    def _new_flow(
        self, p: Packet | Packet6, flags: int, key: bytes, dport: int, route: Route, now: float
    ) -> Flow | Drop | None:
        """Track the first packet of a flow, if NAT must (a masquerade, a forward, or routed in from
        the uplink); the flow's translations are set for both directions."""
        policy = self._policy(p, dport, route)
        if not isinstance(policy, tuple):
            return policy
        dnat, snat, identity = policy
        proto = p.proto
        # New flows start only with a SYN, or an echo request (RFC 5382 REQ-2 policy note above).
        if proto == PROTO_TCP and flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN:
            return None if identity else Drop.NAT_NO_FLOW
        if proto == self.ICMP and p.pkt[p.l4] != self.ECHO_REQUEST:
            return None if identity else Drop.NAT_NO_FLOW
        conntrack = self.conntrack
        if not conntrack.make_room(now):
            return Drop.CONNTRACK_FULL
        _, _, sport, _, _ = self.KEY.unpack(key)
        new_src, new_sport = p.src, sport
        mapping_key: bytes | None = None
        if snat:
            mapping_key = self.MAPPING.pack(proto, p.src, sport)
            port = self._mapped_port(mapping_key, proto, sport)
            if port is None:
                return Drop.NAT_PORTS_EXHAUSTED
            new_src, new_sport = self.address, port
        new_dst, new_dport = dnat if dnat is not None else (p.dst, dport)
        reply = self.KEY.pack(proto, new_dst, new_dport, new_src, new_sport)
        # The reply tuple must be new, and not the packet's own (source = destination, same
        # ports): such a flow could not tell its replies from itself.
        if reply in conntrack.keys or reply == key:
            if mapping_key is not None and self.mappings[mapping_key][1] == 0:
                self.ports[proto].free(self.mappings.pop(mapping_key)[0])
            return Drop.NAT_CLASH
        flow = Flow(proto, key, reply, now)
        if mapping_key is not None:
            flow.mapping = mapping_key
            self.mappings[mapping_key][1] += 1
        flow.xlate[ORIGINAL] = _xlate(key, _invert(reply, self.KEY), self.KEY)
        flow.xlate[REPLY] = _xlate(reply, _invert(key, self.KEY), self.KEY)
        conntrack.insert(flow, now)
        conntrack.update(flow, ORIGINAL, flags, now)
        p.flow, p.direction, p.made_flow = flow, ORIGINAL, flow
        self.events[Event.NAT_NEW_FLOW if not identity else Event.CONNTRACK_ROUTED_FLOW] += 1
        return flow

    def _icmp_error(self, p: Packet, route: Route, now: float) -> bytearray | Drop | None:
        """RFC 5508 4.1/4.2: find the flow of the quoted packet, translate outer and inner.

        The one rewrite that is not a forward action (action.py): it changes the packet the error
        quotes as well, and it is never cached, so it writes its own copy here.
        """
        pkt, in_iface, l4, end, src, dst = p.pkt, p.iface, p.l4, p.end, p.src, p.dst
        found = self._quoted_flow(pkt, l4, end, now)
        if found is None:
            # About no flow we know: inbound it has nobody to go to; outbound it would carry an
            # inside address out of the uplink (RFC 5508 REQ-4 has the NAT translate or drop it).
            if (dst == self.address and in_iface == self.uplink) or self._needs_nat(
                in_iface, src, dst, route
            ):
                return Drop.NAT_ICMP_NO_FLOW
            return None
        flow, direction = found
        x = flow.xlate[direction]
        if x is None:
            return None
        buf = bytearray(pkt)
        self._translate_outer(buf, flow, direction, x)
        self._translate_quoted(buf, flow, direction, l4, end)
        self.events[Event.NAT_ICMP_ERROR_TRANSLATED] += 1
        p.route_to(bytes(buf[_IP_ADDRS][4:]))
        return buf

    @staticmethod
    def _translate_outer(buf: bytearray, flow: Flow, direction: int, x: Xlate) -> None:
        """The outer header moves like a packet of `direction` in the address the flow rewrites in
        that direction, whoever sent the error (Linux's nf_nat_icmp_reply_translation): out of a
        masquerade its source becomes ours, even from a router behind an inside host (RFC 5508
        REQ-4). The address the direction leaves alone stays: a router on the path keeps its own."""
        pre = flow.orig if direction == ORIGINAL else flow.reply
        _, pre_src, _, pre_dst, _ = KEY.unpack(pre)
        old_addrs = bytes(buf[_IP_ADDRS])
        new_src = x[0] if x[0] != pre_src else old_addrs[:4]
        new_dst = x[1] if x[1] != pre_dst else old_addrs[4:]
        new_addrs = new_src + new_dst
        if new_addrs != old_addrs:
            buf[_IP_ADDRS] = new_addrs
            buf[IP_CSUM : IP_CSUM + 2] = U16.pack(
                update_complete(U16.unpack_from(buf, IP_CSUM)[0], delta(old_addrs, new_addrs))
            )

    def _translate_quoted(self, buf: bytearray, flow: Flow, direction: int, l4: int, end: int) -> None:
        """The quoted packet went the other way, translated: restore what its sender sent (RFC 5508
        4.2), its checksums and, if complete, the ICMP checksum over it."""
        back = flow.orig if direction == REPLY else flow.reply
        inner = l4 + 8
        inner_l4 = inner + (buf[inner] & 0x0F) * 4
        span = min(inner_l4 + TCP_MIN_LEN, end)  # every byte the translation may touch
        before = bytes(buf[inner:span])
        inner_proto = buf[inner + 9]
        _, bsrc, bsp, bdst, bdp = KEY.unpack(back)
        old_inner = bytes(buf[inner + 12 : inner + 20])
        new_inner = bsrc + bdst
        buf[inner + 12 : inner + 20] = new_inner
        csum_at = inner + 10
        addr_delta = delta(old_inner, new_inner)
        buf[csum_at : csum_at + 2] = U16.pack(update_complete(U16.unpack_from(buf, csum_at)[0], addr_delta))
        if inner_proto == PROTO_ICMP:
            id_at = inner_l4 + ICMP_ID_OFF
            old_id = bytes(buf[id_at : id_at + 2])
            new_id = U16.pack(bsp if buf[inner_l4] == ECHO_REQUEST else bdp)
            buf[id_at : id_at + 2] = new_id
            self._fix_inner(buf, inner_l4 + ICMP_CSUM, end, delta(old_id, new_id), udp=False)
        else:
            old_ports = bytes(buf[inner_l4 : inner_l4 + 4])
            new_ports = PORTS.pack(bsp, bdp)
            buf[inner_l4 : inner_l4 + 4] = new_ports
            change = fold(addr_delta + delta(old_ports, new_ports))
            csum_off = TCP_CSUM_OFF if inner_proto == PROTO_TCP else UDP_CSUM_OFF
            self._fix_inner(buf, inner_l4 + csum_off, end, change, udp=inner_proto == PROTO_UDP)
        if not _partial(buf, l4):
            after = bytes(buf[inner:span])
            if len(before) % 2:
                before, after = before + b"\x00", after + b"\x00"
            off = l4 + ICMP_CSUM
            buf[off : off + 2] = U16.pack(update_complete(U16.unpack_from(buf, off)[0], delta(before, after)))

    @staticmethod
    def _fix_inner(buf: bytearray, at: int, end: int, change: int, *, udp: bool) -> None:
        """Update a quoted L4 checksum, if the quote reaches it (8 bytes of TCP do not)."""
        if at + 2 > end:
            return
        csum = U16.unpack_from(buf, at)[0]
        if udp and csum == 0:
            return
        csum = update_complete(csum, change)
        buf[at : at + 2] = U16.pack(0xFFFF if udp and csum == 0 else csum)

    def _quoted_flow(self, pkt: bytes, l4: int, end: int, now: float) -> tuple[Flow, int] | None:
        inner = l4 + 8
        if inner + 20 > end:
            return None
        ihl = (pkt[inner] & 0x0F) * 4
        inner_l4 = inner + ihl
        if pkt[inner] >> 4 != 4 or ihl < 20 or inner_l4 + 8 > end:
            return None
        proto = pkt[inner + 9]
        if proto == PROTO_ICMP:
            icmp_type = pkt[inner_l4]
            ident = U16.unpack_from(pkt, inner_l4 + ICMP_ID_OFF)[0]
            if icmp_type == ECHO_REQUEST:
                sport, dport = ident, 0
            elif icmp_type == ECHO_REPLY:
                sport, dport = 0, ident
            else:
                return None
        elif proto in (PROTO_TCP, PROTO_UDP):
            sport, dport = PORTS.unpack_from(pkt, inner_l4)
        else:
            return None
        src = pkt[inner + 12 : inner + 16]
        dst = pkt[inner + 16 : inner + 20]
        # The quoted packet was sent to the error's sender; its inverse is a packet that sender
        # would send, and that is the direction the error travels in.
        return self.conntrack.get(KEY.pack(proto, dst, dport, src, sport), now)

    # --- time and display --------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        deadline = self.conntrack.next_deadline()
        if self.fragments:
            oldest = next(iter(self.fragments.values()))[1]  # insertion order is expiry order
            if deadline is None or oldest < deadline:
                deadline = oldest
        if self.held:
            oldest = next(iter(self.held.values())).expires  # insertion order is expiry order
            if deadline is None or oldest < deadline:
                deadline = oldest
        return deadline

    def on_timer(self, now: float) -> list[HeldFragments]:
        """Expire flows and fragment state; return the held fragments that expired (dropped)."""
        if self.journal is not None:
            self.journal.keep(self)
        self.conntrack.expire(now)
        fragments = self.fragments
        while fragments:
            key = next(iter(fragments))
            if fragments[key][1] > now:
                break
            del fragments[key]
        expired: list[HeldFragments] = []
        held = self.held
        while held:
            key, waiting = next(iter(held.items()))
            if waiting.expires > now:
                break
            self._unhold(key)
            expired.append(waiting)
        return expired

    def table(self, now: float) -> list[dict[str, object]]:
        return self.conntrack.table(now)
