"""The IPv4 router: where every frame that reaches a router interface is decided (RFC 1812).

Order, like the kernel's ip_rcv / ip_forward, one short stage each: classify the frame (our MAC or
broadcast; ARP or IPv4), validate the IPv4 header once (ipv4.parse: 5.2.2, martians 5.3.7, broadcasts
5.3.5), let NAT translate (pre-routing), deliver locally or route (LPM), check TTL (5.3.1) and MTU
(5.2.6, RFC 1191), then resolve the next hop (ARP). A forwarded packet's decision is an action
(action.Rewrite: MACs, TTL, NAT's change) that action.apply writes; the datapath's flow cache keeps
the same action for the flow's later packets (`Routed.forwarded`).

Every drop is counted once, by `_count`, in the ingress port's ledger (the datapath hands it in) and
in the router's rollup ``drops``; notable non-drops are counted in ``events``. A tracer, when the
datapath has one, hears each stage's decision. Time comes in as ``now``; nothing here touches an fd.

Buffers are ``[virtio-net header][Ethernet]``. A forwarded frame keeps its virtio-net header: TTL,
addresses and ports change in the head only, so NEEDS_CSUM offsets and TSO super-frames stay valid.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Container, Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Final

from .action import apply, rewrite
from .arp import (
    ARP_HEADER,
    QUEUED_SEND_REQUEST,
    REJECTED,
    REJECTED_COUNTED,
    ArpCache,
    Waiting,
    build_arp,
    build_reply,
    build_request,
)
from .checksum import ones_sum
from .conntrack import KEY, KEY6, Flow, describe
from .counters import Drop, Event
from .fragment import complete_checksum, fragment
from .icmp import (
    DEST_UNREACH,
    ECHO_REQUEST,
    ERROR_TYPES,
    FRAG_NEEDED,
    HOST_UNREACH,
    NET_UNREACH,
    PORT_UNREACH,
    PROTO_UNREACH,
    TIME_EXCEEDED,
    TokenBucket,
    build_echo_reply,
    build_error,
)
from .ipv4 import NatChange, Packet, parse
from .journal import Journal
from .nat import Held, Nat, NatConfig
from .nat6 import Nat66
from .npt import Npt
from .routed import NOTHING, Forwarded, Routed, Transmit, _new, wire_size
from .routed import Interface as Interface  # re-exported: routers are built with it (tests, bench)
from .router6 import Ipv6Router, RaConfig
from .routes import NextHop, Route, RouteTable
from .services import Client, DhcpService, DnsService
from .udp import build_udp4, build_udp6, datagram
from .wire import (
    ARP,
    ARP_LEN,
    ARP_REQUEST,
    BROADCAST_MAC,
    ETH_DST,
    ETH_MIN,
    ETH_SRC,
    ETH_TYPE_OFF,
    ETHERTYPE,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    GSO_NONE,
    IP_DF,
    IP_DST,
    IP_FLAGS_FRAG,
    IP_FRAG_OFFSET_MASK,
    IP_MF,
    IP_PROTO,
    IP_SRC,
    IP_TOTAL_LEN,
    IP_TTL,
    IPV4_MAX_LEN,
    L3,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    U16,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    ZERO_MAC,
    mac_str,
)

if TYPE_CHECKING:
    from .trace import Tracer
_U32: Final = struct.Struct("!I")
_IPV4_TYPE: Final = ETHERTYPE.pack(ETHERTYPE_IPV4)
_NO_IFACE: Final = -1  # waiting frames the router made itself: no ICMP error about them
DHCP_SERVER_PORT: Final = 67
DHCP_CLIENT_PORT: Final = 68
DNS_PORT: Final = 53


class Router:
    def __init__(
        self,
        interfaces: list[Interface],
        routes: Iterable[Route] = (),
        nat: NatConfig | None = None,
        *,
        arp_timeout: float = 300.0,
        arp_retries: int = 3,
        arp_retry_interval: float = 1.0,
        arp_queue_max: int = 16,
        arp_cache_max: int = 4096,
        arp_pending_max: int = 256,
        arp_negative_timeout: float = 5.0,
        icmp_rate: float = 1000.0,
        icmp_burst: int = 50,
        ra: RaConfig | None = None,
        npt: tuple[Npt, int] | None = None,
        nat6: NatConfig | None = None,
        dhcp: DhcpService | None = None,
        dns: DnsService | None = None,
    ) -> None:
        """ra: how the IPv6 interfaces advertise (router6.RaConfig); an interface has IPv6 when it has
        an address6 (`v6` routes it); npt: NPTv6 (npt.py) on the uplink; dhcp, dns: the services on
        our addresses for the segments, never the uplink (services.py)."""
        self.drops: Counter[str] = Counter()  # the rollup of every drop the router counts
        self.events: Counter[str] = Counter()
        self.unported: Counter[str] = Counter()  # the ledger of frames handed to receive() directly
        self.tracer: Tracer | None = None  # set by the datapath while it traces a frame
        self.interfaces: dict[int, Interface] = {}
        self._mac: dict[int, bytes] = {}
        self._addr: dict[int, bytes] = {}
        self._mtu: dict[int, int] = {}
        self._subnet: dict[int, tuple[int, int]] = {}  # iface -> (network, mask)
        self._local: dict[bytes, int] = {}  # our addresses -> iface
        self._broadcasts: set[bytes] = set()  # directed broadcasts of connected subnets
        self.routes = RouteTable()
        for iface in interfaces:
            self._add_interface(iface)
        routes = list(routes)
        for route in routes:
            if route.prefix.version == 4:
                self.routes.add(route)
        self.arp = ArpCache(arp_timeout, arp_retries, arp_retry_interval, arp_queue_max, arp_cache_max,
                            arp_pending_max, arp_negative_timeout,
                            events=self.events, count_drop=self._count)  # fmt: skip
        self.nat = None if nat is None else Nat(nat, self.events)
        if nat is not None and nat.uplink not in self.interfaces:
            raise ValueError(f"NAT uplink {nat.uplink} is not a router interface")
        self.icmp_bucket = TokenBucket(icmp_rate, icmp_burst)
        self._ip_id = 0
        self.journal: Journal | None = None
        self.v6 = self._ipv6_half(interfaces, routes, ra, npt, nat6)
        self._adopt(dhcp, dns)

    def _adopt(self, dhcp: DhcpService | None, dns: DnsService | None) -> None:
        """The services on our addresses, counting with the router's events (stats, trace, journal)."""
        self.dhcp, self.dns = dhcp, dns
        for service in (dhcp, dns):
            if service is not None:
                service.events = self.events
        self.foreign_ports: Container[int] = ()  # a tunnel's remotes (the datapath's): never DHCP-served
        self._in_port = -1  # the switch port of the frame being decided

    def _ipv6_half(
        self,
        interfaces: list[Interface],
        routes: list[Route],
        ra: RaConfig | None,
        npt: tuple[Npt, int] | None,
        nat6: NatConfig | None,
    ) -> Ipv6Router | None:
        """The IPv6 half, if an interface has IPv6: NDP keeps ARP's bounds (queue, staleness, negative
        cache); NAT66 shares IPv4's conntrack (one table, one bound)."""
        six = [i for i in interfaces if i.address6 is not None]
        routes6 = [r for r in routes if r.prefix.version == 6]
        if (routes6 or npt or nat6) and not six:
            raise ValueError("IPv6 routes, NPTv6 or NAT66, but no interface has an IPv6 address")
        if not six:
            return None
        v6 = Ipv6Router(self, six, routes6, ra, like=self.arp)
        if npt is not None:
            if npt[1] not in v6.link_local:
                raise ValueError("NPTv6 on an interface without IPv6")
            v6.npt, v6.npt_uplink = npt
        if nat6 is not None:
            if self.nat is None or nat6.uplink not in v6.link_local:
                raise ValueError("NAT66 needs IPv4's NAT (its conntrack) and IPv6 on the uplink")
            v6.nat = Nat66(nat6, self.events, self.nat.conntrack)
            self.nat.conntrack.on_remove = self._release_mapping
        return v6

    def _release_mapping(self, flow: Flow) -> None:
        """A flow of the shared conntrack went: its NAT (IPv4's or IPv6's) frees its mapping."""
        assert self.nat is not None
        self.nat._release(flow)
        if self.v6 is not None and self.v6.nat is not None:
            self.v6.nat._release(flow)

    def _add_interface(self, iface: Interface) -> None:
        if iface.index in self.interfaces:
            raise ValueError(f"two router interfaces on segment {iface.index}")
        if len(iface.mac) != 6 or iface.mac[0] & 1:
            raise ValueError(f"interface {iface.name}: bad MAC")
        self.interfaces[iface.index] = iface
        self._mac[iface.index] = iface.mac
        self._addr[iface.index] = iface.address.ip.packed
        self._mtu[iface.index] = iface.mtu
        net = iface.address.network
        self._subnet[iface.index] = (int(net.network_address), int(net.netmask))
        self._local[iface.address.ip.packed] = iface.index
        if net.prefixlen <= 30:
            self._broadcasts.add(net.broadcast_address.packed)
        self.routes.add_connected(net, iface.index)

    def forget_neighbours(self, macs: set[bytes]) -> None:
        """A port left: the ARP and NDP entries that pointed at its MACs go."""
        self.arp.forget_macs(macs)
        if self.v6 is not None:
            self.v6.nd.forget_macs(macs)

    def forget_port(self, port: int) -> int:
        """A port left or moved: the DHCP leases made through it go (and their names). How many."""
        if self.dhcp is None:
            return 0
        gone = self.dhcp.forget_port(port)
        self.events[Event.DHCP_PORT_LEASES_FORGOTTEN] += gone
        return gone

    def forget_addresses(self, addresses: set[bytes]) -> int:
        """A port left or moved: the tracked flows from or to its addresses go (with their NAT
        mappings and flow-cache entries, by conntrack's hooks). How many."""
        if self.nat is None:
            return 0
        conntrack = self.nat.conntrack
        gone = [
            flow for flow in conntrack.flows if (_addresses(flow.orig) | _addresses(flow.reply)) & addresses
        ]
        for flow in gone:
            conntrack.remove(flow)
        return len(gone)

    def journal_save(self) -> tuple[Counter[str], Counter[str], Counter[str], int, int]:
        """What a frame changes in the router itself, for a trace run to put back (journal.py)."""
        return Counter(self.drops), Counter(self.events), Counter(self.unported), self._ip_id, self._in_port

    def journal_restore(self, saved: tuple[Counter[str], Counter[str], Counter[str], int, int]) -> None:
        drops, events, unported, self._ip_id, self._in_port = saved
        for counter, values in ((self.drops, drops), (self.events, events), (self.unported, unported)):
            counter.clear()  # in place: the ARP cache, NAT and conntrack count into the same events
            counter.update(values)

    def journaled(self) -> list[object]:
        """The router's tables, each of which hands a journal what it is about to change."""
        tables: list[object] = [self, self.arp]
        if self.v6 is not None:
            tables.append(self.v6.nd)
            if self.v6.nat is not None:
                tables.append(self.v6.nat)
        if self.nat is not None:
            tables += [self.nat, self.nat.conntrack]
        tables += [service for service in (self.dhcp, self.dns) if service is not None]
        return tables

    def _count(self, ledger: Counter[str], reason: Drop, n: int = 1) -> None:
        """The one place the router counts a drop: the ingress port's ledger, the rollup, the tracer."""
        ledger[reason] += n
        self.drops[reason] += n
        if self.tracer is not None:
            self.tracer.drop("router", reason)

    # --- entry points ------------------------------------------------------------------------------
    def receive(self, iface: int, pkt: bytes, now: float) -> list[Transmit]:
        """A frame seen on segment iface: the frames the router sends for it (a list of its own)."""
        return list(self.decide(iface, pkt, now, self.unported).frames)

    def decide(self, iface: int, pkt: bytes, now: float, ledger: Counter[str], port: int = -1) -> Routed:
        """A frame seen on segment iface (ours by MAC, or a broadcast/flood copy); its drops are
        counted in ledger, the drops of the port it came in on (port, which DHCP's leases record)."""
        if self.journal is not None:
            self.journal.keep(self)  # the rollup, the events, the IP identification
            self.journal.keep(self.icmp_bucket)
        if self.tracer is not None:
            i = self.interfaces[iface]
            self.tracer.note("router", f"in on {i.name} ({i.address}, {mac_str(i.mac)})")
        if len(pkt) < ETH_MIN:
            self._count(ledger, Drop.RUNT)
            return NOTHING
        dst_mac = pkt[ETH_DST]
        ethertype = pkt[ETH_TYPE_OFF] << 8 | pkt[ETH_TYPE_OFF + 1]
        if dst_mac != self._mac[iface] and dst_mac != BROADCAST_MAC:
            if dst_mac[0] == 0x33 and dst_mac[1] == 0x33 and ethertype == ETHERTYPE_IPV6:
                return self._ipv6(iface, pkt, True, ledger, now)  # an IPv6 group (RFC 2464 7): NDP
            self.events[Event.NOT_FOR_ROUTER] += 1  # a flooded copy for someone else
            return NOTHING
        if ethertype == ETHERTYPE_IPV6:
            return self._ipv6(iface, pkt, dst_mac == BROADCAST_MAC, ledger, now)
        if ethertype == ETHERTYPE_IPV4:
            self._in_port = port  # for DHCP's leases, which remember their port (off the fast path)
            return self._ipv4(iface, pkt, dst_mac == BROADCAST_MAC, ledger, now)
        if ethertype == ETHERTYPE_ARP:
            return Routed(self._arp(iface, pkt, ledger, now))
        if dst_mac == BROADCAST_MAC:
            self.events[Event.BROADCAST_IGNORED] += 1
        else:
            self._count(ledger, Drop.UNSUPPORTED_ETHERTYPE)
        return NOTHING

    def _ipv6(self, iface: int, pkt: bytes, link_multicast: bool, ledger: Counter[str], now: float) -> Routed:
        if self.v6 is None:
            if link_multicast:
                self.events[Event.IPV6_MULTICAST_IGNORED] += 1
                return NOTHING
            self._count(ledger, Drop.UNSUPPORTED_ETHERTYPE)
            return NOTHING
        return self.v6.receive(iface, pkt, link_multicast, ledger, now)

    def next_deadline(self) -> float | None:
        best = self.arp.next_deadline()
        for service in (self.dhcp, self.dns):
            if service is not None:
                deadline = service.next_deadline()
                if deadline is not None and (best is None or deadline < best):
                    best = deadline
        if self.v6 is not None:
            deadline = self.v6.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        if self.nat is not None:
            deadline = self.nat.next_deadline()
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def on_timer(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        requests, failed = self.arp.on_timer(now)
        for iface, ip in requests:
            out.append((iface, build_request(self._mac[iface], self._addr[iface], _U32.pack(ip))))
        for _frame, in_iface, original, ledger in failed:
            # RFC 1812 4.3.3.1 / RFC 1122 3.2.2.1: the next hop is unreachable; tell the source,
            # quoting the packet as it arrived (before NAT), so it reaches and means something to it.
            self._count(ledger, Drop.ARP_FAILED)
            if in_iface != _NO_IFACE:
                out.extend(self._icmp_error(in_iface, original, DEST_UNREACH, HOST_UNREACH, 0, now, ledger))
        if self.v6 is not None:
            out.extend(self.v6.on_timer(now))
        if self.nat is not None:
            for waiting in self.nat.on_timer(now):  # held for a first fragment that never came
                self._count(waiting.ledger, Drop.NAT_FRAGMENT, len(waiting.frames))
        if self.dhcp is not None:
            self.dhcp.on_timer(now)
        if self.dns is not None:
            out += self.dns_answers(self.dns.on_timer(now), now)
        return out

    # --- ARP (RFC 826) -----------------------------------------------------------------------------
    def _arp(self, iface: int, pkt: bytes, ledger: Counter[str], now: float) -> list[Transmit]:
        if len(pkt) < L3 + ARP_LEN:
            self._count(ledger, Drop.ARP_MALFORMED)
            return []
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP.unpack_from(pkt, L3)
        if (htype, ptype, hlen, plen) != ARP_HEADER or op not in (1, 2) or sha[0] & 1 or sha == ZERO_MAC:
            self._count(ledger, Drop.ARP_MALFORMED)
            return []
        own = self._addr[iface]
        if spa == own:
            self.events[Event.ARP_ADDRESS_CONFLICT] += 1
            return []
        sender = _U32.unpack(spa)[0]
        network, mask = self._subnet[iface]
        on_link = sender & mask == network and spa not in self._broadcasts
        arp = self.arp
        waiting: list[Waiting] = []
        merged = False
        # RFC 826 "Packet Reception": update the sender if it is already in the table ...
        if on_link and arp.known(sender):
            waiting = arp.learn(sender, sha, iface, now)
            merged = True
        out: list[Transmit] = []
        if tpa == own:
            # ... and add it if we are the target (an ARP probe, sender 0.0.0.0, is only answered).
            if on_link and not merged:
                waiting = arp.learn(sender, sha, iface, now)
            if op == ARP_REQUEST:
                out.append((iface, build_reply(self._mac[iface], own, sha, spa)))
                self.events[Event.ARP_REPLIED] += 1
                if self.tracer is not None:
                    name = self.interfaces[iface].name
                    self.tracer.note("ARP", f"answered who-has {IPv4Address(tpa)} on {name}")
        for frame, _, _, waiting_ledger in waiting:
            # The parked frame itself stays as it was (a trace's journal keeps the queue, not its
            # frames): it leaves as a copy with the answer's MAC.
            resolved = bytes(frame[: ETH_DST.start]) + sha + bytes(frame[ETH_DST.stop :])
            out += self._fit([(iface, resolved)], waiting_ledger)
        return out

    # --- IPv4: the stages --------------------------------------------------------------------------
    def _ipv4(self, iface: int, pkt: bytes, link_broadcast: bool, ledger: Counter[str], now: float) -> Routed:
        p = parse(iface, pkt, link_broadcast, ledger, self._local, self._broadcasts)
        if not isinstance(p, Packet):
            if (
                (p is Drop.IP_MARTIAN_SOURCE or p is Drop.IP_BROADCAST)
                and self.dhcp is not None
                and _is_dhcp(pkt)
            ):
                # A client with no address yet (0.0.0.0 to 255.255.255.255), or rebinding by broadcast.
                return Routed(self._dhcp(iface, pkt, ledger, now))
            self._count(ledger, p)
            return NOTHING
        # RFC 1812 5.3.1, checked before NAT so a packet that dies here (a traceroute probe) leaves no
        # conntrack entry or port mapping behind, as in the kernel, where NAT commits after forwarding.
        if p.pkt[IP_TTL] <= 1 and p.dst not in self._local and self.routes.lookup(p.dst_int) is not None:
            return Routed(self._refuse(p, Drop.TTL_EXCEEDED, TIME_EXCEEDED, 0, 0, now))
        if self.nat is not None:
            held = self._nat(p, now)
            if held is not None:
                return held
            if p.released is not None:
                return self._with_released(p, now)
        return self._local_or_forward(p, now)

    def _local_or_forward(self, p: Packet, now: float) -> Routed:
        if p.dst in self._local:
            if self.tracer is not None:
                self.tracer.note("route", f"{IPv4Address(p.dst)} is the router's own address: local delivery")
            return Routed(self._deliver(p, now))
        return self._forward(p, now)

    def _with_released(self, p: Packet, now: float) -> Routed:
        """A first fragment whose later fragments came before it and waited (nat.py): it goes on,
        then they follow, as if they had just arrived (they were checked before they were held).
        More than one packet went: nothing for a flow cache."""
        released, p.released = p.released or [], None
        sent = list(self._local_or_forward(p, now).frames)
        for iface, frame, ledger in released:
            sent += self._ipv4(iface, frame, False, ledger, now).frames
        return Routed(sent)

    def _nat(self, p: Packet, now: float) -> Routed | None:
        """Pre-routing NAT: None to go on (translated or not), or what became of a packet it took."""
        assert self.nat is not None
        verdict = self.nat.process(p, self._route_bytes, now)
        if isinstance(verdict, NatChange):
            p.nat = verdict
        elif isinstance(verdict, bytearray):
            p.pkt = bytes(verdict)  # an ICMP error, translated outer and inner: routed as it is
        elif isinstance(verdict, Held):
            if self.tracer is not None:
                self.tracer.note("conntrack", "a later fragment before its first: held until it comes")
            return NOTHING  # NAT routes it back to us
        elif verdict is not None:
            self._count(p.ledger, verdict)
            return NOTHING
        tracer = self.tracer
        if tracer is not None:
            if p.made_flow is not None:
                tracer.note("conntrack", f"new {describe(p.made_flow)}")
            elif p.flow is not None:
                tracer.note("conntrack", f"existing {describe(p.flow)}")
            else:
                tracer.note("conntrack", "no flow created or matched (not NAT-ed)")
        return None

    def _forward(self, p: Packet, now: float) -> Routed:
        """Route, check TTL and MTU, resolve the next hop; the packet leaves as its action writes it.
        From here a drop also drops the NAT flow this packet may have just made (_refuse)."""
        hop = self.routes.lookup(p.dst_int)
        if hop is None:
            if self.tracer is not None:
                self.tracer.note("route", f"{IPv4Address(p.dst)}: no route")
            return Routed(self._refuse(p, Drop.NO_ROUTE, DEST_UNREACH, NET_UNREACH, 0, now))
        out_iface, gateway = hop
        if self.tracer is not None:
            via = "directly connected" if gateway is None else f"via {IPv4Address(gateway)}"
            self.tracer.note("route", f"{IPv4Address(p.dst)} -> {self.interfaces[out_iface].name}, {via}")
        pkt = p.pkt
        # RFC 1812 5.3.1: a packet that would leave with TTL 0 is discarded, with time exceeded.
        if pkt[IP_TTL] <= 1:
            return Routed(self._refuse(p, Drop.TTL_EXCEEDED, TIME_EXCEEDED, 0, 0, now))
        mtu = self._mtu[out_iface]
        too_big = (p.end - L3 if pkt[1] == GSO_NONE else wire_size(pkt, p.l4, p.end)) > mtu
        if too_big:
            refused = self._too_big(p, mtu, now)
            if refused is not None:
                return Routed(refused)
        next_hop = p.dst_int if gateway is None else gateway
        arp = self.arp
        neighbour = arp.entries.get(next_hop)
        if neighbour is not None and now - neighbour.updated < arp.timeout and not too_big:
            # The common case: a fresh neighbour, no probe due; the action may be cached.
            if self.tracer is not None:
                name = self.interfaces[out_iface].name
                self.tracer.note("ARP", f"next hop on {name} is {mac_str(neighbour.mac)} (cached)")
            action = rewrite(p.proto, p.ihl, neighbour.mac + self._mac[out_iface], p.nat)
            frame = apply(action, pkt, action.reader.unpack_from(pkt))
            assert isinstance(frame, bytes)  # apply gathers nothing unless asked
            forwarded = _new(Forwarded, (action, out_iface, neighbour, p.flow, p.direction))
            return _new(Routed, ([(out_iface, frame)], forwarded))
        action = rewrite(p.proto, p.ihl, ZERO_MAC + self._mac[out_iface], p.nat)
        frame = apply(action, pkt, action.reader.unpack_from(pkt))
        assert isinstance(frame, bytes)
        buf = bytearray(frame)
        if too_big and buf[0] & VNET_F_NEEDS_CSUM and not complete_checksum(buf, p.l4, p.end, p.proto):
            return Routed(self._refuse(p, Drop.BAD_VNET_HEADER))
        # RFC 1812 5.2.6 / RFC 791 3.2: without DF, a packet too big leaves in fragments. It is resolved
        # (or parked for ARP) whole, so one ICMP error speaks for it and the queue holds it as one;
        # _fit splits it on the way out, here or when ARP answers.
        sent = self._resolve(buf, out_iface, next_hop, p, now, p.ledger)
        return Routed(self._fit(sent, p.ledger) if too_big else sent)

    def _too_big(self, p: Packet, mtu: int, now: float) -> list[Transmit] | None:
        """Too big for the next hop: None if it can leave in fragments, else what is sent instead."""
        if p.frag & IP_DF:  # RFC 1812 5.2.6 / RFC 1191: with DF, say how big the next hop takes.
            return self._refuse(p, Drop.FRAG_NEEDED, DEST_UNREACH, FRAG_NEEDED, mtu & 0xFFFF, now)
        if p.pkt[1] != GSO_NONE:  # a super-frame would need segmenting first; senders set DF on these
            return self._refuse(p, Drop.FRAG_UNSUPPORTED)
        if (p.frag & IP_FRAG_OFFSET_MASK) * 8 + p.end - p.l4 > IPV4_MAX_LEN:
            return self._refuse(p, Drop.IP_BAD_FRAGMENT)  # its pieces' offsets would run past 65,535
        return None

    def _refuse(
        self, p: Packet, reason: Drop, icmp_type: int = -1, code: int = 0, rest: int = 0, now: float = 0.0
    ) -> list[Transmit]:
        """Drop p, with the ICMP error about it if one is named. The NAT flow the packet has just made
        goes with it, as Linux never confirms a conntrack entry whose packet did not leave (no state
        from a traceroute probe to a forwarded port, or from a packet too big)."""
        self._count(p.ledger, reason)
        if p.made_flow is not None and self.nat is not None:
            self.nat.conntrack.remove(p.made_flow, Event.CONNTRACK_UNCONFIRMED)
            p.made_flow = None
        if icmp_type < 0:
            return []
        return self._icmp_error(p.iface, p.arrived, icmp_type, code, rest, now, p.ledger)

    def _fit(self, frames: list[Transmit], ledger: Counter[str]) -> list[Transmit]:
        """Split each IPv4 frame that its interface's MTU cannot take into fragments (only packets
        without DF get this far too big; GSO super-frames are measured by their segments before).
        ledger: the drops of the port the packet came in on (or the packet that made the router
        send it)."""
        fitted: list[Transmit] = []
        for iface, frame in frames:
            mtu = self._mtu[iface]
            if frame[ETH_TYPE_OFF:L3] != _IPV4_TYPE or frame[1] != GSO_NONE:  # ARP; a super-frame
                fitted.append((iface, frame))
                continue
            total = frame[IP_TOTAL_LEN] << 8 | frame[IP_TOTAL_LEN + 1]  # the packet, not its buffer
            if total <= mtu or frame[IP_FLAGS_FRAG] << 8 & IP_DF:
                fitted.append((iface, frame))
                continue
            pieces = fragment(frame, L3 + total, mtu)
            if pieces is None:  # an MTU below 28 (the API allows it; the command line stops at 68)
                self._count(ledger, Drop.FRAG_UNSUPPORTED)
                continue
            self.events[Event.IP_FRAGMENTED] += 1
            self.events[Event.IP_FRAGMENTS_MADE] += len(pieces)
            fitted.extend((iface, bytes(piece)) for piece in pieces)
        return fitted

    def _route_bytes(self, dst: bytes) -> NextHop | None:
        return self.routes.lookup(_U32.unpack(dst)[0])

    def _deliver(self, p: Packet, now: float) -> list[Transmit]:
        """Packets for the router itself: echo is answered (RFC 1812 4.3.3.6), the rest refused."""
        pkt, l4, end = p.pkt, p.l4, p.end
        if p.frag & (IP_FRAG_OFFSET_MASK | IP_MF):
            self._count(p.ledger, Drop.TO_ROUTER)  # no reassembly here
            return []
        if p.proto == PROTO_ICMP:
            if l4 + 8 > end:
                self._count(p.ledger, Drop.L4_TRUNCATED)
                return []
            if pkt[l4] != ECHO_REQUEST:
                self._count(p.ledger, Drop.TO_ROUTER)
                return []
            if not pkt[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) and (ones_sum(pkt[l4:end]) != 0xFFFF):
                self._count(p.ledger, Drop.L4_BAD_CHECKSUM)
                return []
            self.events[Event.ICMP_ECHO_REPLIED] += 1
            reply = build_echo_reply(p.dst, p.src, pkt[l4:end], self._next_id())
            return self._originate(reply, now, p.ledger)
        if p.proto == PROTO_UDP and self.dns is not None and not self.interfaces[p.iface].uplink:
            udp = datagram(pkt, l4, end, p.src + p.dst, False)
            if udp is None:
                self._count(p.ledger, Drop.L4_BAD_CHECKSUM)
                return []
            if udp.dport == DNS_PORT:
                return self.dns_query(p.iface, False, p.src, p.dst, udp.sport, udp.payload, now, p.ledger)
        if p.proto == PROTO_UDP and self.dhcp is not None and _is_dhcp(pkt):
            return self._dhcp(p.iface, pkt, ledger=p.ledger, now=now)  # a client renewing, unicast to us
        self._count(p.ledger, Drop.TO_ROUTER)
        if p.proto == PROTO_TCP:
            return []  # silently: we run no TCP service (no RST, by policy)
        code = PORT_UNREACH if p.proto == PROTO_UDP else PROTO_UNREACH
        return self._icmp_error(p.iface, pkt, DEST_UNREACH, code, 0, now, p.ledger)

    # --- the services: DHCP (dhcp.py) and DNS (dns.py) ------------------------------------------------
    def _dhcp(self, iface: int, pkt: bytes, ledger: Counter[str], now: float) -> list[Transmit]:
        """A client's DHCP message (broadcast from 0.0.0.0 while it has no address, or unicast to us
        when it renews). Its IPv4 header is checked here: ipv4.parse would call it a martian."""
        assert self.dhcp is not None
        ihl = (pkt[L3] & 0x0F) * 4
        total = pkt[IP_TOTAL_LEN] << 8 | pkt[IP_TOTAL_LEN + 1]
        if ihl < 20 or total < ihl or L3 + total > len(pkt) or pkt[L3] >> 4 != 4:
            self._count(ledger, Drop.IP_BAD_LENGTH)
            return []
        if ones_sum(pkt[L3 : L3 + ihl]) != 0xFFFF:
            self._count(ledger, Drop.IP_BAD_CHECKSUM)
            return []
        port = self._in_port
        if port in self.foreign_ports or self.interfaces[iface].uplink:
            self._count(ledger, Drop.DHCP_NOT_SERVED)  # another host's client (a tunnel), or the outside
            return []
        udp = datagram(pkt, L3 + ihl, L3 + total, bytes(pkt[IP_SRC]) + bytes(pkt[IP_DST]), False)
        if udp is None or pkt[IP_FLAGS_FRAG] & 0x3F or pkt[IP_FLAGS_FRAG + 1]:
            self._count(ledger, Drop.DHCP_MALFORMED)
            return []
        replies = self.dhcp.receive(iface, port, bytes(pkt[ETH_SRC]), udp.payload, now, ledger)
        if isinstance(replies, Drop):
            self._count(ledger, replies)
            return []
        out: list[Transmit] = []
        for reply in replies:
            buf = build_udp4(reply.src.packed, reply.dst.packed, DHCP_SERVER_PORT, DHCP_CLIENT_PORT,
                             reply.payload, self._next_id())  # fmt: skip
            buf[ETH_DST], buf[ETH_SRC] = reply.dst_mac, self._mac[reply.iface]
            out.append((reply.iface, bytes(buf)))
        if self.tracer is not None:
            answers = ", ".join(reply.what for reply in replies) or "no answer"
            self.tracer.note("DHCP", f"from {mac_str(pkt[ETH_SRC])}: {answers}")
        return out

    def dns_query(
        self,
        iface: int,
        v6: bool,
        src: bytes,
        dst: bytes,
        sport: int,
        payload: bytes,
        now: float,
        ledger: Counter[str],
    ) -> list[Transmit]:
        """A question to our DNS from (src, sport), asked of our address dst: answered, or gone
        upstream (the answer comes later, through dns_upstream_reply)."""
        assert self.dns is not None
        client = Client(iface, v6, src, sport, dst)
        answer = self.dns.query(payload, client, now)
        if isinstance(answer, Drop):
            self._count(ledger, answer)
            return []
        if answer is None:
            if self.tracer is not None:
                self.tracer.note("DNS", "not a local name: asked upstream")
            return []
        if self.tracer is not None:
            self.tracer.note("DNS", f"answered here ({len(answer)} bytes)")
        return self.dns_answers([(client, answer)], now, ledger)

    def dns_answers(
        self, answers: list[tuple[Client, bytes]], now: float, ledger: Counter[str] | None = None
    ) -> list[Transmit]:
        """DNS answers back to their clients, routed like any packet the router makes."""
        out: list[Transmit] = []
        for client, payload in answers:
            if client.v6:
                assert self.v6 is not None
                buf = build_udp6(client.server, client.address, DNS_PORT, client.port, payload)
                out += self.v6._originate(buf, client.iface, now, ledger or self.unported)
            else:
                buf = build_udp4(
                    client.server, client.address, DNS_PORT, client.port, payload, self._next_id()
                )
                out += self._originate(buf, now, ledger or self.unported)
        return out

    def dns_upstream_reply(self, wire: bytes, now: float, over_tcp: bool = False) -> list[Transmit]:
        """An answer from the upstream resolver (the shell's socket): to the client that asked."""
        if self.dns is None:
            return []
        return self.dns_answers(self.dns.upstream_reply(wire, now, over_tcp), now)

    # --- output ------------------------------------------------------------------------------------
    def _resolve(
        self,
        buf: bytearray,
        out_iface: int,
        next_hop: int,
        p: Packet | None,
        now: float,
        ledger: Counter[str],
    ) -> list[Transmit]:
        """Fill in the next hop's MAC, or park the frame until ARP answers.

        p is the packet being forwarded (None: one the router made), for an ICMP error quoting it as
        it arrived (before NAT and TTL) if ARP fails; ledger takes its drops.
        """
        arp = self.arp
        mac = arp.lookup(next_hop, now)
        if mac is not None:
            buf[ETH_DST] = mac
            sent = [(out_iface, bytes(buf))]
            probe = arp.probe_due(next_hop, now)
            if probe is not None:
                # A stale neighbour in use: confirm it with a unicast request (RFC 1122 2.3.2.1).
                request = build_arp(ARP_REQUEST, self._mac[out_iface], self._addr[out_iface], probe, ZERO_MAC,
                                    _U32.pack(next_hop))  # fmt: skip
                sent.append((out_iface, request))
            return sent
        if arp.is_failed(next_hop, now):
            self._count(ledger, Drop.ARP_FAILED)
            if p is None:
                return []
            return self._icmp_error(p.iface, p.arrived, DEST_UNREACH, HOST_UNREACH, 0, now, ledger)
        in_iface, original = (_NO_IFACE, b"") if p is None else (p.iface, p.arrived[: L3 + 576])
        outcome = arp.enqueue(next_hop, out_iface, buf, in_iface, original, ledger, now)
        if outcome == REJECTED:
            self._count(ledger, Drop.ARP_PENDING_FULL)
            return []
        if outcome == REJECTED_COUNTED:
            return []
        if self.tracer is not None:
            name, target = self.interfaces[out_iface].name, IPv4Address(next_hop)
            self.tracer.note(
                "ARP", f"{target} unresolved on {name}: who-has sent, packet queued for the reply"
            )
        if outcome == QUEUED_SEND_REQUEST:
            request = build_request(self._mac[out_iface], self._addr[out_iface], _U32.pack(next_hop))
            return [(out_iface, request)]
        return []

    def _originate(self, buf: bytearray, now: float, ledger: Counter[str]) -> list[Transmit]:
        """Route a packet the router made (its buffer has a blank Ethernet header). Its drops are
        counted where the packet that made the router send it came in (ledger)."""
        hop = self.routes.lookup(_U32.unpack_from(buf, IP_DST.start)[0])
        if hop is None:
            self.events[Event.ORIGINATED_NO_ROUTE] += 1
            return []
        out_iface, gateway = hop
        next_hop = _U32.unpack_from(buf, IP_DST.start)[0] if gateway is None else gateway
        buf[ETH_TYPE_OFF : ETH_TYPE_OFF + 2] = U16.pack(ETHERTYPE_IPV4)
        buf[ETH_SRC] = self._mac[out_iface]
        return self._fit(self._resolve(buf, out_iface, next_hop, None, now, ledger), ledger)

    def _next_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id

    def _icmp_error(
        self,
        in_iface: int,
        pkt: bytes | bytearray,
        icmp_type: int,
        code: int,
        rest: int,
        now: float,
        ledger: Counter[str],
    ) -> list[Transmit]:
        """Send an ICMP error about pkt (already validated) back to its source, if allowed; ledger is
        the drops of the port pkt came in on."""
        # RFC 1812 4.3.2.7: never about a link-layer broadcast, a non-first fragment, or an ICMP
        # error (broadcast/multicast destinations and martian sources were dropped before).
        frag = pkt[IP_FLAGS_FRAG] << 8 | pkt[IP_FLAGS_FRAG + 1]
        if pkt[ETH_DST] == BROADCAST_MAC or frag & IP_FRAG_OFFSET_MASK:
            return []
        ihl = (pkt[L3] & 0x0F) * 4
        if pkt[1] == GSO_NONE:
            end = min(L3 + (pkt[IP_TOTAL_LEN] << 8 | pkt[IP_TOTAL_LEN + 1]), len(pkt))
        else:
            end = len(pkt)
        if pkt[IP_PROTO] == PROTO_ICMP and (L3 + ihl >= end or pkt[L3 + ihl] in ERROR_TYPES):
            self.events[Event.ICMP_ERROR_ABOUT_ICMP_ERROR_SUPPRESSED] += 1
            return []
        if not self.icmp_bucket.take(now):
            self.events[Event.ICMP_RATE_LIMITED] += 1
            return []
        error = build_error(
            icmp_type,
            code,
            rest,
            self._addr[in_iface],
            bytes(pkt[IP_SRC]),
            pkt[L3:end],
            self._next_id(),
        )
        self.events[_ICMP_EVENTS.get((icmp_type, code), Event.ICMP_ERROR_SENT)] += 1
        return self._originate(error, now, ledger)

    # --- display -----------------------------------------------------------------------------------
    def routes_table(self) -> list[dict[str, object]]:
        return self.routes.table() + ([] if self.v6 is None else self.v6.routes.table())

    def arp_table(self, now: float) -> list[dict[str, object]]:
        """Both neighbour caches, ARP's then NDP's, as `ip neigh` shows them."""
        return self.arp.table(now) + ([] if self.v6 is None else self.v6.nd.table(now))

    def conntrack_table(self, now: float) -> list[dict[str, object]]:
        return [] if self.nat is None else self.nat.table(now)

    def interfaces_table(self) -> list[dict[str, object]]:
        return [
            {
                "index": i.index,
                "name": i.name,
                "mac": mac_str(i.mac),
                "address": str(i.address),
                "mtu": i.mtu,
                "uplink": i.uplink,
                "address6": None if i.address6 is None else str(i.address6),
                "link_local": None
                if self.v6 is None or i.index not in self.v6.link_local
                else str(IPv6Address(self.v6.link_local[i.index])),
            }
            for i in self.interfaces.values()
        ]


def _addresses(key: bytes) -> set[bytes]:
    """The two addresses of a conntrack key, IPv4's or IPv6's."""
    if len(key) == KEY6.size:
        _, src, _, dst, _ = KEY6.unpack(key)
    else:
        _, src, _, dst, _ = KEY.unpack(key)
    return {src, dst}


_ICMP_EVENTS: Final = {
    (DEST_UNREACH, NET_UNREACH): Event.ICMP_NET_UNREACHABLE_SENT,
    (DEST_UNREACH, HOST_UNREACH): Event.ICMP_HOST_UNREACHABLE_SENT,
    (DEST_UNREACH, PROTO_UNREACH): Event.ICMP_PROTOCOL_UNREACHABLE_SENT,
    (DEST_UNREACH, PORT_UNREACH): Event.ICMP_PORT_UNREACHABLE_SENT,
    (DEST_UNREACH, FRAG_NEEDED): Event.ICMP_FRAG_NEEDED_SENT,
    (TIME_EXCEEDED, 0): Event.ICMP_TIME_EXCEEDED_SENT,
}


def _is_dhcp(pkt: bytes) -> bool:
    """A UDP datagram to the DHCP server's port (its header is checked by Router._dhcp)."""
    if len(pkt) < L3 + 28 or pkt[IP_PROTO] != PROTO_UDP:
        return False
    l4 = L3 + (pkt[L3] & 0x0F) * 4
    return len(pkt) >= l4 + 4 and pkt[l4 + 2] == 0 and pkt[l4 + 3] == DHCP_SERVER_PORT
