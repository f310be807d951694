"""The IPv4 router: where every frame that reaches a router interface is decided (RFC 1812).

Order, like the kernel's ip_rcv / ip_forward: classify the frame (our MAC or broadcast; ARP or IPv4),
validate the IPv4 header (5.2.2), refuse martians and broadcasts (5.3.7, 5.3.5), let NAT translate
(pre-routing), deliver locally or route (LPM), check TTL (5.3.1) and MTU (5.2.6, RFC 1191), then
resolve the next hop (ARP) and rewrite the MACs. Every drop carries a reason in ``drops``; notable
non-drops are counted in ``events``. Time comes in as ``now``; nothing here touches an fd.

Buffers are ``[virtio-net header][Ethernet]``. A forwarded frame keeps its virtio-net header: TTL,
addresses and ports change in place, so NEEDS_CSUM offsets and TSO super-frames stay valid.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Final

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
from .checksum import fold, ones_sum, update_complete
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
from .nat import Held, Nat, NatConfig
from .routes import NextHop, Route, RouteTable
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
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    IP_CSUM,
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
    IPV4_MIN_LEN,
    L3,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    U16,
    UDP_LEN,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    ZERO_MAC,
    mac_str,
)

Transmit = tuple[int, bytes]
_HDR10: Final = struct.Struct("!10H")
_U32: Final = struct.Struct("!I")
# RFC 1624: decrementing TTL (high byte of the TTL/protocol word) adds ~m + m' = ~0x0100 = 0xFEFF.
_TTL_DECREMENT_CHANGE: Final = 0xFEFF
_IPV4_TYPE: Final = ETHERTYPE.pack(ETHERTYPE_IPV4)
_NO_IFACE: Final = -1  # waiting frames the router made itself: no ICMP error about them


@dataclass(frozen=True)
class Interface:
    index: int  # the segment the interface sits on
    name: str
    mac: bytes
    address: IPv4Interface
    mtu: int = 1500
    uplink: bool = False


def _martian_source(src: int) -> bool:
    """RFC 1812 5.3.7: 0/8, 127/8, multicast, class E and limited broadcast never source."""
    first = src >> 24
    return first == 0 or first == 127 or first >= 224


def wire_size(pkt: bytes, l4: int, end: int) -> int:
    """The IP size of the largest packet this frame becomes on the wire.

    For a GSO frame that is one segment: gso_size plus the IP and L4 headers. The headers are
    measured here rather than taken from hdr_len, which the kernel fills with skb_headlen(), a
    hint that may include payload (virtio_net_hdr_from_skb).
    """
    gso_type = pkt[1] & ~GSO_ECN
    if gso_type == GSO_NONE:
        return end - L3
    gso_size = pkt[4] | pkt[5] << 8
    if gso_size == 0:
        return end - L3
    tcp = gso_type == GSO_TCPV4 and l4 + 13 <= end
    l4_len = (pkt[l4 + 12] >> 4) * 4 if tcp else UDP_LEN
    return l4 - L3 + l4_len + gso_size


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
    ) -> None:
        self.drops: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.interfaces: dict[int, Interface] = {}
        self._mac: dict[int, bytes] = {}
        self._addr: dict[int, bytes] = {}
        self._mtu: dict[int, int] = {}
        self._subnet: dict[int, tuple[int, int]] = {}  # iface -> (network, mask)
        self._local: dict[bytes, int] = {}  # our addresses -> iface
        self._broadcasts: set[bytes] = set()  # directed broadcasts of connected subnets
        self.routes = RouteTable()
        for iface in interfaces:
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
        for route in routes:
            self.routes.add(route)
        self.arp = ArpCache(
            arp_timeout,
            arp_retries,
            arp_retry_interval,
            arp_queue_max,
            arp_cache_max,
            arp_pending_max,
            arp_negative_timeout,
            drops=self.drops,
            events=self.events,
        )
        self.nat = None if nat is None else Nat(nat, self.drops, self.events)
        if nat is not None and nat.uplink not in self.interfaces:
            raise ValueError(f"NAT uplink {nat.uplink} is not a router interface")
        self.icmp_bucket = TokenBucket(icmp_rate, icmp_burst)
        self._ip_id = 0
        # (egress iface, next hop) of the IPv4 packet the last receive() routed out, else None: the
        # decision a flow cache needs to remember it (see flowcache.py).
        self.forwarded: tuple[int, int] | None = None

    # --- entry points ------------------------------------------------------------------------------
    def receive(self, iface: int, pkt: bytes, now: float) -> list[Transmit]:
        """A frame seen on segment iface: ours by MAC, or a broadcast/flood copy."""
        self.forwarded = None
        if len(pkt) < ETH_MIN:
            self.drops[Drop.RUNT] += 1
            return []
        dst_mac = pkt[ETH_DST]
        if dst_mac != self._mac[iface] and dst_mac != BROADCAST_MAC:
            self.events[Event.NOT_FOR_ROUTER] += 1  # a flooded copy for someone else
            return []
        ethertype = pkt[ETH_TYPE_OFF] << 8 | pkt[ETH_TYPE_OFF + 1]
        if ethertype == ETHERTYPE_IPV4:
            sent = self._ipv4(iface, pkt, dst_mac == BROADCAST_MAC, now)
            if self.nat is not None and self.nat.released:
                # Fragments that came before their first one, which this packet was: route them
                # now, as if they had just arrived (they were checked before they were held).
                for held_iface, held in self.nat.take_released():
                    sent = sent + self._ipv4(held_iface, held, False, now)
                self.forwarded = None  # more than one packet went: nothing for the flow cache
            return sent
        if ethertype == ETHERTYPE_ARP:
            return self._arp(iface, pkt, now)
        if dst_mac == BROADCAST_MAC:
            self.events[Event.BROADCAST_IGNORED] += 1
        else:
            self.drops[Drop.UNSUPPORTED_ETHERTYPE] += 1
        return []

    def next_deadline(self) -> float | None:
        best = self.arp.next_deadline()
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
        for _frame, in_iface, original in failed:
            # RFC 1812 4.3.3.1 / RFC 1122 3.2.2.1: the next hop is unreachable; tell the source,
            # quoting the packet as it arrived (before NAT), so it reaches and means something to it.
            self.drops[Drop.ARP_FAILED] += 1
            if in_iface != _NO_IFACE:
                out.extend(self._icmp_error(in_iface, original, DEST_UNREACH, HOST_UNREACH, 0, now))
        if self.nat is not None:
            expired = self.nat.on_timer(now)
            if expired:
                self.drops[Drop.NAT_FRAGMENT] += expired  # held for a first fragment that never came
        return out

    # --- ARP (RFC 826) -----------------------------------------------------------------------------
    def _arp(self, iface: int, pkt: bytes, now: float) -> list[Transmit]:
        if len(pkt) < L3 + ARP_LEN:
            self.drops[Drop.ARP_MALFORMED] += 1
            return []
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP.unpack_from(pkt, L3)
        if (htype, ptype, hlen, plen) != ARP_HEADER or op not in (1, 2):
            self.drops[Drop.ARP_MALFORMED] += 1
            return []
        if sha[0] & 1 or sha == ZERO_MAC:
            self.drops[Drop.ARP_MALFORMED] += 1
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
        for frame, _, _ in waiting:
            frame[ETH_DST] = sha
            out.append((iface, bytes(frame)))
        return self._fit(out) if waiting else out

    # --- IPv4 --------------------------------------------------------------------------------------
    def _ipv4(self, iface: int, pkt: bytes, link_broadcast: bool, now: float) -> list[Transmit]:
        drops = self.drops
        size = len(pkt)
        # RFC 1812 5.2.2: the checks a router must make before anything else.
        if size < L3 + IPV4_MIN_LEN:
            drops[Drop.IP_TRUNCATED] += 1
            return []
        ver_ihl = pkt[L3]
        if ver_ihl >> 4 != 4:
            drops[Drop.IP_BAD_VERSION] += 1
            return []
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < IPV4_MIN_LEN or L3 + ihl > size:
            drops[Drop.IP_BAD_IHL] += 1
            return []
        if pkt[1] == GSO_NONE:
            total = pkt[IP_TOTAL_LEN] << 8 | pkt[IP_TOTAL_LEN + 1]
            if total < ihl or L3 + total > size:
                drops[Drop.IP_BAD_LENGTH] += 1
                return []
            end = L3 + total
            if end < size:  # Ethernet padding, or junk: the packet ends where its length says
                pkt = pkt[:end]  # (Linux's pskb_trim_rcsum); what follows is never forwarded
                size = end
        else:
            end = size  # a TSO super-frame: the length field may be 0 or stale; the buffer counts
        if ihl == IPV4_MIN_LEN:
            header_sum = fold(sum(_HDR10.unpack_from(pkt, L3)))
        else:
            header_sum = ones_sum(pkt[L3 : L3 + ihl])
        if header_sum != 0xFFFF:
            drops[Drop.IP_BAD_CHECKSUM] += 1
            return []
        src = pkt[IP_SRC]
        dst = pkt[IP_DST]
        src_int = _U32.unpack(src)[0]
        dst_int = _U32.unpack(dst)[0]
        # RFC 1812 5.3.7: martian sources, including our own addresses (a looped or spoofed packet).
        first = src_int >> 24  # _martian_source, inlined on the per-packet path
        if first == 0 or first == 127 or first >= 224 or src in self._broadcasts or src in self._local:
            drops[Drop.IP_MARTIAN_SOURCE] += 1
            return []
        # RFC 1812 5.3.5: limited and directed broadcasts are not forwarded; 5.3.4: nor is a
        # packet that arrived as a link-layer broadcast.
        if dst_int == 0xFFFFFFFF or dst in self._broadcasts or link_broadcast:
            drops[Drop.IP_BROADCAST] += 1
            return []
        first = dst_int >> 24
        if 224 <= first < 240:
            drops[Drop.IP_MULTICAST] += 1
            return []
        if first == 0 or first == 127 or first >= 240:
            drops[Drop.IP_MARTIAN_DESTINATION] += 1
            return []
        proto = pkt[IP_PROTO]
        frag = pkt[IP_FLAGS_FRAG] << 8 | pkt[IP_FLAGS_FRAG + 1]
        l4 = L3 + ihl
        buf: bytearray | None = None
        # RFC 1812 5.3.1, checked before NAT so a packet that dies here (a traceroute probe) leaves no
        # conntrack entry or port mapping behind, as in the kernel, where NAT commits after forwarding.
        if pkt[IP_TTL] <= 1 and dst not in self._local and self.routes.lookup(dst_int) is not None:
            drops[Drop.TTL_EXCEEDED] += 1
            return self._icmp_error(iface, pkt, TIME_EXCEEDED, 0, 0, now)
        if self.nat is not None:
            verdict = self.nat.process(pkt, iface, l4, end, proto, frag, src, dst, self._route_bytes, now)
            if isinstance(verdict, bytearray):
                buf = verdict
                dst = bytes(buf[IP_DST])
                dst_int = _U32.unpack(dst)[0]
            elif isinstance(verdict, Held):
                return []  # a fragment waiting for its first one: NAT routes it back to us
            elif verdict is not None:
                drops[verdict] += 1
                return []
        if dst in self._local:
            return self._deliver(iface, pkt, l4, end, proto, frag, src, dst, now)
        # From here a drop also drops the NAT flow this packet may have just made (_unconfirm).
        hop = self.routes.lookup(dst_int)
        if hop is None:
            drops[Drop.NO_ROUTE] += 1
            self._unconfirm()
            return self._icmp_error(iface, pkt, DEST_UNREACH, NET_UNREACH, 0, now)
        out_iface, gateway = hop
        # RFC 1812 5.3.1: a packet that would leave with TTL 0 is discarded, with time exceeded.
        ttl = pkt[IP_TTL]
        if ttl <= 1:
            drops[Drop.TTL_EXCEEDED] += 1
            self._unconfirm()
            return self._icmp_error(iface, pkt, TIME_EXCEEDED, 0, 0, now)
        mtu = self._mtu[out_iface]
        too_big = (end - L3 if pkt[1] == GSO_NONE else wire_size(pkt, l4, end)) > mtu
        if too_big:
            # RFC 1812 5.2.6 / RFC 1191: with DF, say how big the next hop takes.
            if frag & IP_DF:
                drops[Drop.FRAG_NEEDED] += 1
                self._unconfirm()
                return self._icmp_error(iface, pkt, DEST_UNREACH, FRAG_NEEDED, mtu & 0xFFFF, now)
            if pkt[1] != GSO_NONE:  # a super-frame would need segmenting first; senders set DF on these
                drops[Drop.FRAG_UNSUPPORTED] += 1
                self._unconfirm()
                return []
        if buf is None:
            buf = bytearray(pkt)
        buf[IP_TTL] = ttl - 1
        buf[IP_CSUM : IP_CSUM + 2] = U16.pack(
            update_complete(U16.unpack_from(buf, IP_CSUM)[0], _TTL_DECREMENT_CHANGE)
        )
        next_hop = dst_int if gateway is None else gateway
        self.forwarded = (out_iface, next_hop)
        if too_big:
            # RFC 1812 5.2.6 / RFC 791 3.2: without DF, the packet leaves in fragments. It is resolved
            # (or parked for ARP) whole, so one ICMP error speaks for it and the queue holds it as
            # one; _fit splits it on the way out, here or when ARP answers.
            if (frag & IP_FRAG_OFFSET_MASK) * 8 + end - l4 > IPV4_MAX_LEN:
                drops[Drop.IP_BAD_FRAGMENT] += 1  # its pieces' offsets would run past 65,535
                self._unconfirm()
                return []
            if buf[0] & VNET_F_NEEDS_CSUM and not complete_checksum(buf, l4, end, proto):
                drops[Drop.BAD_VNET_HEADER] += 1
                self._unconfirm()
                return []
            return self._fit(self._output(buf, out_iface, next_hop, iface, now, pkt))
        return self._output(buf, out_iface, next_hop, iface, now, pkt)

    def _unconfirm(self) -> None:
        """The packet that just made a NAT flow dies here: the flow goes with it, as Linux never
        confirms a conntrack entry whose packet did not leave (no state from a traceroute probe to
        a forwarded port, or from a packet too big)."""
        nat = self.nat
        if nat is not None and nat.unconfirmed is not None:
            nat.conntrack.remove(nat.unconfirmed, Event.CONNTRACK_UNCONFIRMED)
            nat.unconfirmed = None

    def _fit(self, frames: list[Transmit]) -> list[Transmit]:
        """Split each IPv4 frame that its interface's MTU cannot take into fragments (only packets
        without DF get this far too big; GSO super-frames are measured by their segments before)."""
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
                self.drops[Drop.FRAG_UNSUPPORTED] += 1
                continue
            self.events[Event.IP_FRAGMENTED] += 1
            self.events[Event.IP_FRAGMENTS_MADE] += len(pieces)
            fitted.extend((iface, bytes(piece)) for piece in pieces)
        return fitted

    def _route_bytes(self, dst: bytes) -> NextHop | None:
        return self.routes.lookup(_U32.unpack(dst)[0])

    def _deliver(
        self,
        iface: int,
        pkt: bytes,
        l4: int,
        end: int,
        proto: int,
        frag: int,
        src: bytes,
        dst: bytes,
        now: float,
    ) -> list[Transmit]:
        """Packets for the router itself: echo is answered (RFC 1812 4.3.3.6), the rest refused."""
        drops = self.drops
        if frag & (IP_FRAG_OFFSET_MASK | IP_MF):
            drops[Drop.TO_ROUTER] += 1  # no reassembly here
            return []
        if proto == PROTO_ICMP:
            if l4 + 8 > end:
                drops[Drop.L4_TRUNCATED] += 1
                return []
            if pkt[l4] != ECHO_REQUEST:
                drops[Drop.TO_ROUTER] += 1
                return []
            if not pkt[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) and (ones_sum(pkt[l4:end]) != 0xFFFF):
                drops[Drop.L4_BAD_CHECKSUM] += 1
                return []
            self.events[Event.ICMP_ECHO_REPLIED] += 1
            return self._originate(build_echo_reply(dst, src, pkt[l4:end], self._next_id()), now)
        drops[Drop.TO_ROUTER] += 1
        if proto == PROTO_TCP:
            return []  # silently: we run no TCP service (no RST, by policy)
        code = PORT_UNREACH if proto == PROTO_UDP else PROTO_UNREACH
        return self._icmp_error(iface, pkt, DEST_UNREACH, code, 0, now)

    # --- output ------------------------------------------------------------------------------------
    def _output(
        self,
        buf: bytearray,
        out_iface: int,
        next_hop: int,
        in_iface: int,
        now: float,
        original: bytes = b"",
    ) -> list[Transmit]:
        """Resolve the next hop's MAC, or park the frame until ARP answers.

        original is the packet as it arrived (before NAT and TTL), for an ICMP error if ARP fails.
        """
        arp = self.arp
        buf[ETH_SRC] = self._mac[out_iface]
        neighbour = arp.entries.get(next_hop)
        if neighbour is not None and now - neighbour.updated < arp.timeout:
            buf[ETH_DST] = neighbour.mac  # the common case: a fresh neighbour, no probe due
            return [(out_iface, bytes(buf))]
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
            self.drops[Drop.ARP_FAILED] += 1
            if in_iface == _NO_IFACE:
                return []
            return self._icmp_error(in_iface, original or buf, DEST_UNREACH, HOST_UNREACH, 0, now)
        outcome = arp.enqueue(next_hop, out_iface, buf, in_iface, original[: L3 + 576], now)
        if outcome == REJECTED:
            self.drops[Drop.ARP_PENDING_FULL] += 1
            return []
        if outcome == REJECTED_COUNTED:
            return []
        if outcome == QUEUED_SEND_REQUEST:
            request = build_request(self._mac[out_iface], self._addr[out_iface], _U32.pack(next_hop))
            return [(out_iface, request)]
        return []

    def _originate(self, buf: bytearray, now: float) -> list[Transmit]:
        """Route a packet the router made (its buffer has a blank Ethernet header)."""
        hop = self.routes.lookup(_U32.unpack_from(buf, IP_DST.start)[0])
        if hop is None:
            self.events[Event.ORIGINATED_NO_ROUTE] += 1
            return []
        out_iface, gateway = hop
        next_hop = _U32.unpack_from(buf, IP_DST.start)[0] if gateway is None else gateway
        buf[ETH_TYPE_OFF : ETH_TYPE_OFF + 2] = U16.pack(ETHERTYPE_IPV4)
        return self._fit(self._output(buf, out_iface, next_hop, _NO_IFACE, now))

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
    ) -> list[Transmit]:
        """Send an ICMP error about pkt (already validated) back to its source, if allowed."""
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
        return self._originate(error, now)

    # --- display -----------------------------------------------------------------------------------
    def routes_table(self) -> list[dict[str, object]]:
        return self.routes.table()

    def arp_table(self, now: float) -> list[dict[str, object]]:
        return self.arp.table(now)

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
            }
            for i in self.interfaces.values()
        ]


_ICMP_EVENTS: Final = {
    (DEST_UNREACH, NET_UNREACH): Event.ICMP_NET_UNREACHABLE_SENT,
    (DEST_UNREACH, HOST_UNREACH): Event.ICMP_HOST_UNREACHABLE_SENT,
    (DEST_UNREACH, PROTO_UNREACH): Event.ICMP_PROTOCOL_UNREACHABLE_SENT,
    (DEST_UNREACH, PORT_UNREACH): Event.ICMP_PORT_UNREACHABLE_SENT,
    (DEST_UNREACH, FRAG_NEEDED): Event.ICMP_FRAG_NEEDED_SENT,
    (TIME_EXCEEDED, 0): Event.ICMP_TIME_EXCEEDED_SENT,
}
