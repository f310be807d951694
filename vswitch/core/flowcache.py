"""The flow cache: an exact-match fast path for the routed packets of established flows.

Why: a routed packet pays for the router's RFC 1812 checks, an LPM lookup, a conntrack lookup and
state step, NAT's rewrite, the next hop's ARP entry and a second L2 decision on the way out, about
9 us in Python, and nearly all of it comes out the same for every packet of a flow. Like OVS's exact
match cache or the kernel's flowtable offload, a flow's first packets take the slow path
(``Router.receive``, then ``Datapath.from_router``); once the flow is steady the decision is
remembered, keyed by the ingress segment and the bytes that made it (IPv4 source and destination,
L4 ports; the protocol is checked). What is remembered is the slow path's own action for the packet
(action.Rewrite, as OVS's caches keep the actions its slow path translated): a hit re-checks what may
differ between packets of the flow and runs the same `action.apply` that wrote the slow path's frame,
so the two cannot drift; what is left here is the cache's own part, its keys, checks and invalidation.

What is cached; everything else always takes the slow path, which installs an entry when it can:
- IPv4 with ihl 5, not a fragment, TTL > 1, TCP, UDP or an ICMP echo request or reply with its whole
  header in the packet, within the egress MTU (a GSO frame: the wire size of its segments);
- IPv6 with no extension header, hop limit > 1, TCP, UDP or an ICMPv6 echo, within the MTU likewise
  (`forward6`: tables of their own, keyed by addresses and ports or by an echo's identifier);
- TCP only as ACK-only segments (no SYN, FIN or RST), and for a tracked flow only in ESTABLISHED;
  UDP and ICMP echo of a tracked flow in any state that its packets leave as it is
  (``Conntrack.steady_timeout``);
- a next hop that is fresh in the ARP cache (a stale one takes the slow path, which sends the probe)
  and whose MAC the egress segment's FDB knows (a flood is never cached).

A hit re-checks what can differ between packets of one flow: ethertype, version and ihl, header
checksum, total length, fragment bits, TTL, protocol, TCP flags, MTU, the flow's expiry and the
neighbour's freshness. RFC 1812's martian and broadcast checks are not repeated: they depend on the
addresses alone, which the key matches exactly. An echo's key is its addresses, type, code and
identifier (where TCP and UDP have ports, ICMP has its type, code and checksum), in a table of its
own; ICMP errors are never cached (NAT translates the packet they quote).

Invalidation, by the tables themselves (each has an ``on_change`` hook):
- any change of routes, of ARP entries (new MAC or interface, eviction, ageing) or of FDB placement
  (move, ageing, port removal) empties the cache (``flush``). Each clear costs at most the installs
  since the last one, so even a flapping MAC cannot make it expensive;
- conntrack reports each flow that is inserted, changes state or goes, and the entries under its
  two keys are dropped at once (an insert also ends an untracked route for those keys);
- the flow's expiry and the neighbour's freshness are compared with ``now`` on every hit.

Bounded, and no timer: each segment's table holds at most ``max_entries``, and installing into a full
one evicts its oldest entry (insertion order, like conntrack's early drop); an entry lives until its
flow changes or goes, the cache is flushed, or it is evicted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .action import NO_GATHER, Rewrite, Write
from .arp import Neighbour
from .conntrack import KEY6, Flow
from .counters import Counters, Event
from .icmp import ECHO_REPLY, ECHO_REQUEST
from .journal import Journal
from .routed import Forwarded, wire_size
from .router import Router
from .wire import (
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    GSO_NONE,
    ICMP_MIN_LEN,
    IP6_NEXT_HEADER,
    IP6_PAYLOAD_LEN,
    IP6_SRC,
    IP_FLAGS_FRAG,
    IP_PROTO,
    IP_SRC,
    IP_TOTAL_LEN,
    IPV4_MIN_LEN,
    IPV6_HDR_LEN,
    L3,
    L4_6,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_FLAGS_OFF,
    TCP_MIN_LEN,
    TCP_RST,
    TCP_SYN,
    UDP_LEN,
    VNET_HDR_LEN,
    Frame,
)

if TYPE_CHECKING:
    from .l2 import Switch

Output = tuple[int, Frame]  # a hit's frame: bytes, or a Gather for a long payload

DEFAULT_MAX_ENTRIES: Final = 8192  # per segment
# Payloads longer than this leave as a Gather (written with writev, not copied): above about 1 KB the
# copy costs more than the memoryview and the object (measured: see bench/README.md).
GATHER_FROM: Final = 1024
INSERT_WHEN_FULL: Final = 32  # a full table takes one candidate in this many (bench/test_micro.py)

L4: Final = L3 + IPV4_MIN_LEN  # ihl 5 is all the cache takes
KEY_BYTES: Final = slice(IP_SRC.start, L4 + 4)  # source, destination, source port, destination port
VER_IHL_5: Final = 0x45
FRAGMENT_BITS: Final = 0x3FFF  # MF and the offset; DF only matters beyond the MTU, checked apart
TCP_DECIDING: Final = TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK  # the flags conntrack's events read
TCP_FLAGS_AT: Final = L4 + TCP_FLAGS_OFF
L4_MIN: Final = {PROTO_TCP: TCP_MIN_LEN, PROTO_UDP: UDP_LEN, PROTO_ICMP: ICMP_MIN_LEN}
ICMP_ID_AT: Final = L4 + 4  # an echo's identifier, after type, code and checksum
ICMP_KEY_END: Final = ICMP_ID_AT + 2
ECHO_TYPES: Final = (ECHO_REQUEST << 8, ECHO_REPLY << 8)  # type and code 0, as one big-endian word
TTL_ONE: Final = 0x0100  # TTL is the high byte of the TTL/protocol word
ONES: Final = 0xFFFF
ADDRESSES: Final = struct.Struct("!4H")
IPV6_TYPE: Final = ETHERTYPE_IPV6.to_bytes(2, "big")
KEY6_BYTES: Final = slice(IP6_SRC.start, L4_6 + 4)  # IPv6 source, destination, ports
KEY6_SIZE: Final = KEY6.size  # a NAT66 conntrack key: proto, 16 + 2, 16 + 2
L4_MIN6: Final = {PROTO_TCP: TCP_MIN_LEN, PROTO_UDP: UDP_LEN, PROTO_ICMPV6: ICMP_MIN_LEN}
ECHO6_TYPES: Final = (128, 129)  # ICMPv6 echo request and reply (RFC 4443 4)


class CachedFlow(NamedTuple):
    """One remembered decision: the slow path's action and what a hit must re-check; a tuple, so a
    hit unpacks it in one step."""

    rewrite: Rewrite
    reader: struct.Struct  # the rewrite's: it reads the fields both the checks and the writer need
    write: Write  # the rewrite's compiled writer (action.apply), called straight away on a hit
    proto: int
    addr_sum: int  # the header's address words, summed: the checksum check adds the rest
    min_total: int  # the smallest IPv4 total length that holds the L4 header
    mtu: int
    flow: Flow | None  # None: routed untracked (no NAT, or NAT leaves it alone)
    direction: int
    timeout: float  # the expiry a packet of the flow gives it (Conntrack.steady_timeout)
    neighbour: Neighbour
    out_port: int
    rx_port: int  # the router's port on the ingress segment
    tx_port: int  # the router's port on the egress segment


class FlowCache:
    """The cache itself: ``forward`` on every routed frame, ``install`` after the slow path."""

    def __init__(
        self,
        router: Router,
        switches: list[Switch],
        counters: Counters,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.router = router
        self.switches = switches  # by segment index, which is also the router's interface index
        self.counters = counters
        self.max_entries = max_entries
        self.tables: list[dict[bytes, CachedFlow]] = [{} for _ in switches]
        self.echo_tables: list[dict[bytes, CachedFlow]] = [{} for _ in switches]  # ICMP echo, by segment
        self.tables6: list[dict[bytes, CachedFlow]] = [{} for _ in switches]  # IPv6 TCP and UDP
        self.echo_tables6: list[dict[bytes, CachedFlow]] = [{} for _ in switches]  # ICMPv6 echo
        self._full_misses = 0  # installs asked of a full table; one in INSERT_WHEN_FULL is done
        self.journal: Journal | None = None  # while a frame is traced (journal.py)
        self.arp_timeout = router.arp.timeout
        self.conntrack = None if router.nat is None else router.nat.conntrack
        # Subscribe to every table a cached decision derives from.
        router.routes.on_change = self.flush
        router.arp.on_change = self.flush
        if router.v6 is not None:
            router.v6.routes.on_change = self.flush
            router.v6.nd.on_change = self.flush
        for switch in switches:
            switch.fdb.on_change = self.flush
        self._refresh: Callable[[Flow, int, float, float], None] = _no_conntrack
        if self.conntrack is not None:
            self.conntrack.on_change = self.forget_flow
            self._refresh = self.conntrack.refresh

    def journal_save(self) -> Any:
        """The tables, for a trace run to put back (journal.py): its changes only ever empty them."""
        return [dict(t) for t in self._every_table()], self._full_misses

    def journal_restore(self, saved: Any) -> None:
        tables, self._full_misses = saved
        for table, entries in zip(self._every_table(), tables, strict=True):
            table.clear()
            table.update(entries)

    def _every_table(self) -> tuple[dict[bytes, CachedFlow], ...]:
        return (*self.tables, *self.echo_tables, *self.tables6, *self.echo_tables6)

    def add_segment(self, switch: Switch) -> None:
        self.switches.append(switch)
        for tables in (self.tables, self.echo_tables, self.tables6, self.echo_tables6):
            tables.append({})
        switch.fdb.on_change = self.flush

    def __len__(self) -> int:
        return sum(len(table) for table in self._every_table())

    @property
    def table_count(self) -> int:
        """How many tables of at most max_entries each it keeps (per segment: by family, echo apart)."""
        return len(self._every_table())

    # --- invalidation ------------------------------------------------------------------------------
    def flush(self) -> None:
        """A route, neighbour or FDB entry changed: every entry may be void."""
        if self.journal is not None:
            self.journal.keep(self)
        for table in self._every_table():
            table.clear()
        self.counters.events[Event.FLOW_CACHE_FLUSHED] += 1

    def forget_flow(self, flow: Flow) -> None:
        """A tracked flow came, changed state or went: drop the entries under its keys."""
        if self.journal is not None:
            self.journal.keep(self)
        if len(flow.orig) == KEY6_SIZE:
            self._forget_flow6(flow)
            return
        if flow.proto not in L4_MIN:
            return
        for key in (flow.orig, flow.reply):
            # conntrack's KEY is proto, src, sport, dst, dport; ours is src, dst, sport, dport
            if flow.proto == PROTO_ICMP:
                # An echo request's identifier is its key's sport, a reply's its dport (nat.py).
                addresses = key[1:5] + key[7:11]
                for cache_key in (addresses + b"\x08\x00" + key[5:7], addresses + b"\x00\x00" + key[11:13]):
                    for table in self.echo_tables:
                        table.pop(cache_key, None)
                continue
            cache_key = key[1:5] + key[7:11] + key[5:7] + key[11:13]
            for table in self.tables:
                table.pop(cache_key, None)

    def _forget_flow6(self, flow: Flow) -> None:
        """forget_flow for a NAT66 flow: its KEY is proto, src (16), sport, dst (16), dport."""
        for key in (flow.orig, flow.reply):
            addresses = key[1:17] + key[19:35]
            if flow.proto == PROTO_ICMPV6:  # a request's identifier is its sport, a reply's its dport
                for cache_key in (addresses + b"\x80\x00" + key[17:19], addresses + b"\x81\x00" + key[35:37]):
                    for table in self.echo_tables6:
                        table.pop(cache_key, None)
                continue
            cache_key = addresses + key[17:19] + key[35:37]
            for table in self.tables6:
                table.pop(cache_key, None)

    # --- the fast path -----------------------------------------------------------------------------
    def forward(self, segment: int, pkt: bytes, now: float, dry_run: bool = False) -> list[Output] | None:
        """Route pkt (unicast to the router's MAC on segment) by its flow's action; None: a miss.

        Every check comes before the first side effect. dry_run answers hit or miss with no side
        effect at all (what `vswitch trace` asks).
        """
        counters = self.counters
        entry = self.tables[segment].get(pkt[KEY_BYTES])  # a short frame gives a short key: no match
        if entry is None:
            if pkt[ETH_TYPE_OFF:L3] == IPV6_TYPE:
                return self.forward6(segment, pkt, now, dry_run)
            if len(pkt) >= ICMP_KEY_END and pkt[IP_PROTO] == PROTO_ICMP:
                entry = self.echo_tables[segment].get(_echo_key(pkt))
            if entry is None:
                if not dry_run:
                    counters.flow_cache_misses += 1
                return None
        (_, reader, write, proto, addr_sum, min_total, mtu, flow, direction, timeout, neighbour, out_port,
         rx_port, tx_port) = entry  # fmt: skip
        try:
            fields = reader.unpack_from(pkt)
        except struct.error:  # shorter than its L4 header
            if not dry_run:
                counters.flow_cache_misses += 1
            return None
        if len(fields) == 8:  # no NAT: the IPv4 words only
            vnet, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto, csum = fields
        else:  # and the L4 bytes NAT changes
            vnet, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto, csum, _, _, _ = fields
        size = len(pkt)
        if (
            ethertype != ETHERTYPE_IPV4
            or ver_ihl_tos >> 8 != VER_IHL_5
            # RFC 1812 5.2.2: a valid header sums to 0xFFFF in one's complement: 0 modulo 0xFFFF
            or (ver_ihl_tos + total + ident + frag + ttl_proto + csum + addr_sum) % ONES
            or frag & FRAGMENT_BITS
            or ttl_proto & 0xFF != proto
            or ttl_proto < 2 * TTL_ONE  # TTL 0 or 1: time exceeded, in the slow path
            or (
                not min_total <= total <= mtu or L3 + total != size  # the slow path trims the rest
                if vnet[1] == GSO_NONE
                else not _gso_fits(pkt, size, min_total, mtu)
            )
            or (proto == PROTO_TCP and pkt[TCP_FLAGS_AT] & TCP_DECIDING != TCP_ACK)
            or (flow is not None and flow.expires <= now)
            or now - neighbour.updated >= self.arp_timeout  # stale: the slow path probes it
        ):
            if ethertype == ETHERTYPE_IPV6:  # an IPv6 packet whose bytes matched an IPv4 key
                return self.forward6(segment, pkt, now, dry_run)
            if not dry_run:
                counters.flow_cache_misses += 1
            return None
        if dry_run:
            return [(out_port, write(pkt, fields, NO_GATHER))]
        if flow is not None:
            self._refresh(flow, direction, timeout, now)
        # _hit's counting, inline: a call more per hit measured +2% on the routed hit (bench-micro)
        counters.flow_cache_hits += 1
        length = size - VNET_HDR_LEN
        counters.rx_packets[rx_port] += 1
        counters.rx_bytes[rx_port] += length
        counters.tx_packets[tx_port] += 1
        counters.tx_bytes[tx_port] += length
        return [(out_port, write(pkt, fields, GATHER_FROM))]

    def _hit(self, out_port: int, rx_port: int, tx_port: int, frame: Frame, size: int) -> list[Output]:
        """A hit's counters: the router's ports, as if the packet had taken the slow path."""
        counters = self.counters
        counters.flow_cache_hits += 1
        length = size - VNET_HDR_LEN
        counters.rx_packets[rx_port] += 1
        counters.rx_bytes[rx_port] += length
        counters.tx_packets[tx_port] += 1
        counters.tx_bytes[tx_port] += length
        return [(out_port, frame)]

    def forward6(self, segment: int, pkt: bytes, now: float, dry_run: bool = False) -> list[Output] | None:
        """`forward` for IPv6: a plain packet (no extension header) of a TCP, UDP or ICMPv6 echo flow
        whose action the slow path left (router6.py). A hit re-checks the version, next header, hop
        limit, payload length against the frame and the MTU (a GSO frame: its segments), TCP flags and
        the neighbour's freshness and a NAT66 flow's expiry; there is no header checksum."""
        if len(pkt) < L4_6 + 8:
            entry = None
        elif pkt[IP6_NEXT_HEADER] == PROTO_ICMPV6:
            entry = self.echo_tables6[segment].get(_echo6_key(pkt))
        else:
            entry = self.tables6[segment].get(pkt[KEY6_BYTES])
        if entry is None:
            if not dry_run:
                self.counters.flow_cache_misses += 1
            return None
        (_, reader, write, proto, _, min_length, mtu, flow, direction, timeout, neighbour, out_port, rx_port,
         tx_port) = entry  # fmt: skip
        try:
            fields = reader.unpack_from(pkt)
        except struct.error:  # shorter than the L4 bytes a NAT66 rewrite reads
            if not dry_run:
                self.counters.flow_cache_misses += 1
            return None
        vnet, ethertype, version_class_flow, length, next_header, hop_limit = fields[:6]
        size = len(pkt)
        if (
            ethertype != ETHERTYPE_IPV6
            or version_class_flow >> 28 != 6
            or next_header != proto
            or hop_limit < 2  # time exceeded, in the slow path
            or (
                not min_length <= length <= mtu - IPV6_HDR_LEN or L4_6 + length != size
                if vnet[1] == GSO_NONE
                # as ipv6.parse: the payload length within the frame (a super-frame's may end before)
                else not (
                    min_length <= length and L4_6 + length <= size and wire_size(pkt, L4_6, size) <= mtu
                )
            )
            or (proto == PROTO_TCP and pkt[L4_6 + TCP_FLAGS_OFF] & TCP_DECIDING != TCP_ACK)
            or (flow is not None and flow.expires <= now)
            or now - neighbour.updated >= self.arp_timeout
        ):
            if not dry_run:
                self.counters.flow_cache_misses += 1
            return None
        if dry_run:
            return [(out_port, write(pkt, fields, NO_GATHER))]
        if flow is not None:
            self._refresh(flow, direction, timeout, now)
        return self._hit(out_port, rx_port, tx_port, write(pkt, fields, GATHER_FROM), size)

    # --- learning from the slow path ---------------------------------------------------------------
    def install(self, segment: int, pkt: bytes, forwarded: Forwarded | None, sent: Sequence[Output]) -> None:
        """Keep the slow path's action for pkt's flow, if its later packets may reuse it as it is.

        forwarded: what the router decided (None: not a plain forward to a fresh neighbour); sent:
        where the egress segment switched the frame.
        """
        if forwarded is None or len(sent) != 1:
            return
        six = pkt[ETH_TYPE_OFF:L3] == IPV6_TYPE
        if len((self.tables6 if six else self.tables)[segment]) >= self.max_entries:
            # Full: more flows are active than the cache holds. Installing every miss would evict an
            # entry per packet and make each one pay for an insertion it never uses; like OVS's
            # emc-insert-inv-prob, only one miss in INSERT_WHEN_FULL gets in, so busy flows still do.
            self._full_misses += 1
            if self._full_misses % INSERT_WHEN_FULL:
                self.counters.events[Event.FLOW_CACHE_FULL_SKIP] += 1
                return
        rewrite, out_iface, neighbour, flow, direction = forwarded
        min_total = _cacheable6(pkt) if six else _cacheable(pkt)
        if min_total is None:
            return
        echo = pkt[IP6_NEXT_HEADER if six else IP_PROTO] == (PROTO_ICMPV6 if six else PROTO_ICMP)
        [(out_port, _)] = sent
        out_switch = self.switches[out_iface]
        known = out_switch.fdb.entries.get(neighbour.mac)
        if known is None or known.port != out_port or out_port == out_switch.router_port:
            return  # flooded, or gone from the FDB: the slow path decides again
        timeout = 0.0
        if flow is not None:
            steady = None if self.conntrack is None else self.conntrack.steady_timeout(flow, direction)
            if steady is None:
                return
            timeout = steady
        rx_port = self.switches[segment].router_port
        tx_port = out_switch.router_port
        assert rx_port is not None and tx_port is not None
        entry = CachedFlow(
            rewrite=rewrite,
            reader=rewrite.reader,
            write=rewrite.write,
            proto=pkt[IP6_NEXT_HEADER if six else IP_PROTO],
            addr_sum=0 if six else sum(ADDRESSES.unpack_from(pkt, IP_SRC.start)),
            min_total=min_total,
            mtu=self.router.interfaces[out_iface].mtu,
            flow=flow,
            direction=direction,
            timeout=timeout,
            neighbour=neighbour,
            out_port=out_port,
            rx_port=rx_port,
            tx_port=tx_port,
        )
        table, key = self._slot(segment, pkt, six, echo)
        table.pop(key, None)  # re-inserted at the end: insertion order stays install order
        table[key] = entry
        if len(table) > self.max_entries:
            del table[next(iter(table))]
            self.counters.events[Event.FLOW_CACHE_EVICTED] += 1

    def _slot(self, segment: int, pkt: bytes, six: bool, echo: bool) -> tuple[dict[bytes, CachedFlow], bytes]:
        """The table and key a packet's flow is kept under."""
        if six:
            if echo:
                return self.echo_tables6[segment], _echo6_key(pkt)
            return self.tables6[segment], pkt[KEY6_BYTES]
        if echo:
            return self.echo_tables[segment], _echo_key(pkt)
        return self.tables[segment], pkt[KEY_BYTES]


def _cacheable(pkt: bytes) -> int | None:
    """The smallest IPv4 total length a packet like pkt needs, if its flow may be cached: ihl 5, not
    a fragment, TCP (ACK only), UDP or an ICMP echo with its whole header; else None."""
    proto = pkt[IP_PROTO]
    need = L4_MIN.get(proto)
    if need is None or pkt[L3] != VER_IHL_5 or len(pkt) < L4 + need:
        return None
    if (pkt[IP_FLAGS_FRAG] << 8 | pkt[IP_FLAGS_FRAG + 1]) & FRAGMENT_BITS:
        return None
    min_total = IPV4_MIN_LEN + need
    if pkt[1] == GSO_NONE and (pkt[IP_TOTAL_LEN] << 8 | pkt[IP_TOTAL_LEN + 1]) < min_total:
        return None
    if proto == PROTO_TCP and pkt[TCP_FLAGS_AT] & TCP_DECIDING != TCP_ACK:
        return None
    if proto == PROTO_ICMP and pkt[L4] << 8 | pkt[L4 + 1] not in ECHO_TYPES:
        return None  # an ICMP error: NAT rewrites the packet it quotes, every time
    return min_total


def _cacheable6(pkt: bytes) -> int | None:
    """The smallest payload length a packet like pkt needs, if its flow may be cached: no extension
    header, TCP (ACK only), UDP or an ICMPv6 echo with its whole header; else None."""
    proto = pkt[IP6_NEXT_HEADER]
    need = L4_MIN6.get(proto)
    if need is None or len(pkt) < L4_6 + need:
        return None
    if pkt[1] == GSO_NONE and (pkt[IP6_PAYLOAD_LEN] << 8 | pkt[IP6_PAYLOAD_LEN + 1]) < need:
        return None
    if proto == PROTO_TCP and pkt[L4_6 + TCP_FLAGS_OFF] & TCP_DECIDING != TCP_ACK:
        return None
    if (
        (proto == PROTO_ICMPV6 and pkt[L4_6] not in ECHO6_TYPES) or pkt[L4_6 + 1]
        if proto == PROTO_ICMPV6
        else False
    ):
        return None  # an error or ND: the slow path reads every one
    return need


def _echo6_key(pkt: bytes) -> bytes:
    """An ICMPv6 echo's key: source, destination, type, code and identifier."""
    return pkt[IP6_SRC.start : L4_6 + 2] + pkt[L4_6 + 4 : L4_6 + 6]


def _echo_key(pkt: bytes) -> bytes:
    """An echo's key: source, destination, type, code and identifier (its checksum left out)."""
    return pkt[IP_SRC.start : L4 + 2] + pkt[ICMP_ID_AT:ICMP_KEY_END]


def _no_conntrack(flow: Flow, direction: int, timeout: float, now: float) -> None:
    raise AssertionError("a tracked flow in a cache without conntrack")


def _gso_fits(pkt: bytes, size: int, min_total: int, mtu: int) -> bool:
    """A GSO frame: its L4 header is in the buffer and each segment it becomes fits the MTU
    (``router.wire_size``, as the slow path measures it)."""
    return size >= L3 + min_total and wire_size(pkt, L4, size) <= mtu
