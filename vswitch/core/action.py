"""Actions: what the slow path decided for a forwarded packet, and the one function that writes it.

The router and NAT decide (route, TTL, neighbour, translation); they never write a forwarded packet's
bytes. Their decision is a `Rewrite`: new MACs, the TTL decrement and NAT's new addresses, ports or
echo identifier, each with its checksum change precomputed (RFC 1624). `apply` writes it, on the slow
path and on a flow-cache hit alike (flowcache.py keeps the slow path's `Rewrite` per flow), so a change
to how a packet is rewritten is made here and nowhere else, as OVS's datapath runs the actions its
slow path translated. A new protocol adds a kind here (a VLAN tag, a tunnel header), not a second writer.

A rewrite reads the fields it needs with one precompiled unpack (`Rewrite.reader`; the caller unpacks,
so the flow cache checks the same fields before it applies) and writes the new head with one pack
(`Rewrite.writer`); the bytes past the last changed field are the received packet's, untouched, so
NEEDS_CSUM offsets and TSO super-frames stay valid. Each Rewrite carries its kind's code compiled with
its values (`Rewrite.write`, made by `_compile`), which `apply` runs and a flow-cache hit calls
directly: one call a hit, no dispatch on the kind (the bench's NAT figure asked for it).

Checksums (design.md): the IPv4 header checksum is complete and updated incrementally. The L4 field of
a NEEDS_CSUM frame whose csum_start is this packet's L4 header holds the uncomplemented pseudo-header
sum: only address changes reach it (ICMP has no pseudo-header: nothing does). A complete L4 checksum
takes addresses and ports; a UDP checksum of 0 means none and stays 0 (RFC 768), a computed 0 is 0xFFFF.
IPv6 has no header checksum and its hop limit is in no pseudo-header (RFC 8200 8.1): a routed IPv6
packet (HOP6) changes its MACs and hop limit only, whatever its offloads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .ipv4 import NatChange
from .wire import (
    L3,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CSUM_OFF,
    UDP_CSUM_OFF,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    Frame,
    Gather,
)

# Kinds of rewrite.
PLAIN: Final = 0  # TTL and MACs: routed as it is
ADDRESSES: Final = 1  # and NAT's addresses: a later fragment, which carries no L4 header
PORTS: Final = 2  # and NAT's addresses and TCP or UDP ports, with the L4 checksum
ECHO: Final = 3  # and NAT's addresses and ICMP echo identifier, with the ICMP checksum
HOP6: Final = 4  # IPv6: hop limit and MACs
PREFIX6: Final = 5  # and new addresses: NPTv6's (checksum-neutral), or NAT66's for a later fragment
PORTS6: Final = 6  # IPv6 with NAT66's addresses and TCP or UDP ports, with the L4 checksum
ECHO6: Final = 7  # IPv6 with NAT66's addresses and ICMPv6 echo identifier, with the ICMPv6 checksum

ONES: Final = 0xFFFF
TTL_ONE: Final = 0x0100  # TTL is the high byte of the TTL/protocol word
# RFC 1624: decrementing TTL adds ~m + m' = ~0x0100 = 0xFEFF to the checksum's complement.
TTL_DECREMENT_CHANGE: Final = 0xFEFF
NO_GATHER: Final = 1 << 30  # apply's gather threshold for a caller that needs plain bytes back

# The layouts. Read: the virtio-net header (kept as it is), the ethertype, the IPv4 header's words up to
# its checksum, then past the addresses the options (kept), and for NAT the L4 bytes that stay between
# the ports and the L4 checksum, and that checksum. Written: the same, with new MACs, TTL and checksums.
_FRONT: Final = "!10s"
_WORDS: Final = "H6H"  # ethertype; ver/ihl/tos, total length, id, flags/fragment, TTL/protocol, checksum
PLAIN_READER: Final = struct.Struct(_FRONT + "12x" + _WORDS)
PLAIN_WRITER: Final = struct.Struct(_FRONT + "12s" + _WORDS)
ADDRESSES_WRITER: Final = struct.Struct(_FRONT + "12s" + _WORDS + "8s")
# IPv6: the ethertype, version/class/flow, payload length, next header and hop limit (RFC 8200 3).
IPV6_READER: Final = struct.Struct(_FRONT + "12xHIHBB")
IPV6_WRITER: Final = struct.Struct(_FRONT + "12sHIHBB")
PREFIX6_WRITER: Final = struct.Struct(_FRONT + "12sHIHBB32s")
# Between the ports and the checksum: TCP's sequence, ack, offset/flags and window; UDP's length.
_L4_MIDDLE: Final = {PROTO_TCP: 12, PROTO_UDP: 2}
_L4_CSUM_END: Final = {PROTO_TCP: TCP_CSUM_OFF + 2, PROTO_UDP: UDP_CSUM_OFF + 2, PROTO_ICMP: 6}
_LAYOUTS: dict[tuple[int, int, int], tuple[struct.Struct, struct.Struct]] = {}
Write = Callable[[bytes, tuple[Any, ...], int], Frame]  # (pkt, the reader's fields, gather_from)
# The routed actions made so far, by protocol, header length and MACs: the slow path asks for the same
# one for every packet to a next hop. Emptied when full (a bound, not a cache that must stay warm: a
# miss only builds one again).
MADE: dict[tuple[int, int, bytes], Rewrite] = {}
MADE_MAX: Final = 4096
# A NamedTuple made from a tuple: its generated __new__ is a Python call; the slow path makes a few a packet.
_new: Final = tuple.__new__


class Rewrite(NamedTuple):
    """One forwarded packet's action; a tuple, so a flow-cache hit reads it in one step."""

    kind: int
    reader: struct.Struct
    writer: struct.Struct
    tail_at: int  # the received bytes from here on go out unchanged
    macs: bytes  # new Ethernet destination and source
    ip_change: int  # IP checksum change: the TTL decrement and NAT's address change, folded
    nat_addresses: bytes  # new source and destination (ADDRESSES, PORTS, ECHO)
    nat_l4: bytes  # new ports (PORTS) or echo identifier (ECHO)
    partial_start: int  # csum_start of a NEEDS_CSUM frame whose L4 field holds the pseudo-header sum
    partial_change: int  # L4 change for that partial sum: the addresses only
    complete_change: int  # L4 change for a complete checksum (an echo: the identifier only)
    proto: int
    # This rewrite compiled (_compile): apply(rw, pkt, fields) is rw.write(pkt, fields, NO_GATHER). The
    # flow cache calls it straight away: one call per hit, no dispatch on the kind.
    write: Write


def layout(kind: int, proto: int, ihl: int) -> tuple[struct.Struct, struct.Struct, int]:
    """The reader, the writer and where the untouched tail starts, for a kind of rewrite of an IPv4
    packet with this protocol and header length (compiled once per combination)."""
    if kind == PLAIN:
        return PLAIN_READER, PLAIN_WRITER, L3 + 12
    if kind == ADDRESSES:
        return PLAIN_READER, ADDRESSES_WRITER, L3 + 20
    key = (kind, proto, ihl)
    found = _LAYOUTS.get(key)
    if found is None:
        options = ihl - 20
        if kind == ECHO:  # type and code, the checksum, then the identifier that NAT rewrites
            reader = struct.Struct(f"{_FRONT}12x{_WORDS}8x{options}s2sH")
            writer = struct.Struct(f"{_FRONT}12s{_WORDS}8s{options}s2sH2s")
        else:
            middle = _L4_MIDDLE[proto]
            reader = struct.Struct(f"{_FRONT}12x{_WORDS}8x{options}s4x{middle}sH")
            writer = struct.Struct(f"{_FRONT}12s{_WORDS}8s{options}s4s{middle}sH")
        found = _LAYOUTS[key] = (reader, writer)
    return found[0], found[1], L3 + ihl + _L4_CSUM_END[proto]


def rewrite(proto: int, ihl: int, macs: bytes, nat: NatChange | None = None) -> Rewrite:
    """The action for a routed packet: TTL and MACs, and NAT's change if any (its addresses_only: a
    later fragment, whose ports its first fragment carried). An action is a value: a routed one (no
    NAT) depends on the next hop alone and is built once (MADE, bounded); one with NAT's change is
    one flow's, and is built for its packet (the flow cache keeps it for the flow's later ones)."""
    if nat is not None:
        return _make(proto, ihl, macs, nat)
    key = (proto, ihl, macs)
    made = MADE.get(key)
    if made is None:
        if len(MADE) >= MADE_MAX:
            MADE.clear()  # another set of neighbours: start again, no per-entry ageing
        made = MADE[key] = _make(proto, ihl, macs, None)
    return made


def rewrite6(macs: bytes, addresses: bytes | None = None) -> Rewrite:
    """The action for a routed IPv6 packet: new MACs, the hop limit one less, and NPTv6's new source
    and destination if given (one flow's: built for it). Without, it depends on the next hop alone:
    built once per neighbour (MADE, bounded)."""
    if addresses is not None:
        fields = (PREFIX6, IPV6_READER, PREFIX6_WRITER, L3 + 40, macs, 0, addresses, b"", 0, 0, 0, 0)
        return _new(Rewrite, (*fields, _compile(*fields)))
    key = (HOP6, 0, macs)
    made = MADE.get(key)
    if made is None:
        if len(MADE) >= MADE_MAX:
            MADE.clear()
        fields = (HOP6, IPV6_READER, IPV6_WRITER, L3 + 8, macs, 0, b"", b"", 0, 0, 0, 0)
        made = MADE[key] = _new(Rewrite, (*fields, _compile(*fields)))
    return made


def rewrite6_nat(proto: int, extensions: int, macs: bytes, nat: NatChange) -> Rewrite:
    """The action for a routed IPv6 packet NAT66 translates: one flow's, built for its packet.
    extensions: the bytes of extension headers between the IPv6 header and the L4 one. ICMPv6's
    checksum has a pseudo-header (RFC 4443 2.3): an echo's change is its addresses and identifier."""
    addresses, l4, addr_delta, l4_delta, addresses_only = nat
    if addresses_only:
        return rewrite6(macs, addresses)
    l4_at = L3 + 40 + extensions
    front = _FRONT + "12xHIHBB32x"
    if proto == PROTO_ICMPV6:
        kind, reader = ECHO6, struct.Struct(f"{front}{extensions}s2sH")
        writer = struct.Struct(f"{_FRONT}12sHIHBB32s{extensions}s2sH2s")
        tail_at, change = l4_at + 6, addr_delta + l4_delta
    else:
        middle = _L4_MIDDLE[proto]
        kind, reader = PORTS6, struct.Struct(f"{front}{extensions}s4x{middle}sH")
        writer = struct.Struct(f"{_FRONT}12sHIHBB32s{extensions}s4s{middle}sH")
        tail_at, change = l4_at + _L4_CSUM_END[proto], addr_delta + l4_delta
    fields = (kind, reader, writer, tail_at, macs, 0, addresses, l4, l4_at - VNET_HDR_LEN, addr_delta,
              (change & ONES) + (change >> 16), proto)  # fmt: skip
    return _new(Rewrite, (*fields, _compile(*fields)))


def _make(proto: int, ihl: int, macs: bytes, nat: NatChange | None) -> Rewrite:
    partial_start = L3 + ihl - VNET_HDR_LEN  # csum_start counts from the Ethernet header
    if nat is None:
        fields = (PLAIN, PLAIN_READER, PLAIN_WRITER, L3 + 12, macs, TTL_DECREMENT_CHANGE, b"", b"",
                  partial_start, 0, 0, proto)  # fmt: skip
        return _new(Rewrite, (*fields, _compile(*fields)))
    addresses, l4, addr_delta, l4_delta, addresses_only = nat
    kind = ADDRESSES if addresses_only else ECHO if proto == PROTO_ICMP else PORTS
    reader, writer, tail_at = layout(kind, proto, ihl)
    # ICMP has no pseudo-header: its sum sees the identifier only. Deltas are folded (16 bits): one
    # end-around carry folds each sum.
    change = l4_delta if kind == ECHO else addr_delta + l4_delta
    ip_change = TTL_DECREMENT_CHANGE + addr_delta
    fields = (kind, reader, writer, tail_at, macs, (ip_change & ONES) + (ip_change >> 16), addresses, l4,
              partial_start, addr_delta, (change & ONES) + (change >> 16), proto)  # fmt: skip
    return _new(Rewrite, (*fields, _compile(*fields)))


def apply(rw: Rewrite, pkt: bytes, fields: tuple[Any, ...], gather_from: int = NO_GATHER) -> Frame:
    """The forwarded frame: pkt rewritten as rw says. fields is ``rw.reader.unpack_from(pkt)``.

    A tail longer than gather_from leaves as a Gather (head + memoryview of pkt, one writev, no copy).
    """
    return rw.write(pkt, fields, gather_from)


def _compile(
    kind: int,
    reader: struct.Struct,
    writer: struct.Struct,
    tail_at: int,
    macs: bytes,
    ip_change: int,
    addresses: bytes,
    l4: bytes,
    partial_start: int,
    partial_change: int,
    complete_change: int,
    proto: int,
) -> Write:
    """The writer of one rewrite: the code of its kind, with its values bound. Every forwarded frame
    is written by one of the functions made here. Sums stay below 2**17: one end-around carry folds."""
    if kind in (HOP6, PREFIX6):
        return _ipv6_writer(writer.pack, tail_at, macs, addresses if kind == PREFIX6 else None)
    if kind in (PORTS6, ECHO6):
        return _nat6_writer(
            writer.pack, tail_at, macs, addresses, l4, partial_start, partial_change, complete_change,
            proto == PROTO_UDP, kind == ECHO6,
        )  # fmt: skip
    if kind <= ADDRESSES:
        return _ip_writer(writer.pack, tail_at, macs, ip_change, addresses if kind == ADDRESSES else None)
    if kind == ECHO:
        return _echo_writer(
            writer.pack, tail_at, macs, ip_change, addresses, l4, partial_start, complete_change
        )
    return _ports_writer(
        writer.pack, tail_at, macs, ip_change, addresses, l4, partial_start, partial_change, complete_change,
        proto == PROTO_UDP,
    )  # fmt: skip


def _ip_writer(
    pack: Callable[..., bytes], tail_at: int, macs: bytes, ip_change: int, addresses: bytes | None
) -> Write:
    """PLAIN (addresses None) and ADDRESSES: the IPv4 header only."""

    def write_ip(pkt: bytes, fields: tuple[Any, ...], gather_from: int) -> Frame:
        vnet, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto, csum = fields
        change = (~csum & ONES) + ip_change  # RFC 1624 eqn. 3: TTL and addresses in one update
        csum = ~((change & ONES) + (change >> 16)) & ONES
        if addresses is None:
            head = pack(vnet, macs, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto - TTL_ONE, csum)
        else:
            head = pack(
                vnet, macs, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto - TTL_ONE, csum, addresses
            )  # fmt: skip
        if len(pkt) - tail_at > gather_from:
            return Gather(head, memoryview(pkt)[tail_at:])
        return head + pkt[tail_at:]

    return write_ip


def _ipv6_writer(pack: Callable[..., bytes], tail_at: int, macs: bytes, addresses: bytes | None) -> Write:
    """HOP6: MACs and the hop limit; nothing else changes (no checksum covers either). PREFIX6: and
    the addresses, which NPTv6 made sum as before."""

    def write_ipv6(pkt: bytes, fields: tuple[Any, ...], gather_from: int) -> Frame:
        vnet, ethertype, version_class_flow, length, next_header, hop_limit = fields
        if addresses is None:
            head = pack(vnet, macs, ethertype, version_class_flow, length, next_header, hop_limit - 1)
        else:
            head = pack(
                vnet, macs, ethertype, version_class_flow, length, next_header, hop_limit - 1, addresses
            )
        if len(pkt) - tail_at > gather_from:
            return Gather(head, memoryview(pkt)[tail_at:])
        return head + pkt[tail_at:]

    return write_ipv6


def _nat6_writer(
    pack: Callable[..., bytes],
    tail_at: int,
    macs: bytes,
    addresses: bytes,
    l4: bytes,
    partial_start: int,
    partial_change: int,
    complete_change: int,
    udp: bool,
    echo: bool,
) -> Write:
    """PORTS6 and ECHO6: addresses, ports or identifier, and the L4 checksum in its form (a partial
    one holds the pseudo-header sum: the addresses only)."""

    def write_nat6(pkt: bytes, fields: tuple[Any, ...], gather_from: int) -> Frame:
        vnet, ethertype, version_class_flow, length, next_header, hop_limit, extensions, middle, l4_csum = (
            fields
        )
        if vnet[0] & VNET_F_NEEDS_CSUM and vnet[6] | vnet[7] << 8 == partial_start:
            change = l4_csum + partial_change
            l4_csum = (change & ONES) + (change >> 16)
        elif l4_csum or not udp:
            change = (~l4_csum & ONES) + complete_change
            l4_csum = ~((change & ONES) + (change >> 16)) & ONES
            if not l4_csum and udp:
                l4_csum = ONES
        if echo:  # middle is the type and code; the identifier follows the checksum
            head = pack(vnet, macs, ethertype, version_class_flow, length, next_header, hop_limit - 1,
                        addresses, extensions, middle, l4_csum, l4)  # fmt: skip
        else:
            head = pack(vnet, macs, ethertype, version_class_flow, length, next_header, hop_limit - 1,
                        addresses, extensions, l4, middle, l4_csum)  # fmt: skip
        if len(pkt) - tail_at > gather_from:
            return Gather(head, memoryview(pkt)[tail_at:])
        return head + pkt[tail_at:]

    return write_nat6


def _echo_writer(
    pack: Callable[..., bytes],
    tail_at: int,
    macs: bytes,
    ip_change: int,
    addresses: bytes,
    ident_bytes: bytes,
    partial_start: int,
    complete_change: int,
) -> Write:
    """ECHO: the addresses and the echo identifier, and the ICMP checksum unless partial."""

    def write_echo(pkt: bytes, fields: tuple[Any, ...], gather_from: int) -> Frame:
        (vnet, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto, csum, options, type_code,
         l4_csum) = fields  # fmt: skip
        change = (~csum & ONES) + ip_change
        csum = ~((change & ONES) + (change >> 16)) & ONES
        # No pseudo-header: a partial sum (the device adds up the whole message) needs nothing.
        if not (vnet[0] & VNET_F_NEEDS_CSUM and vnet[6] | vnet[7] << 8 == partial_start):
            change = (~l4_csum & ONES) + complete_change
            l4_csum = ~((change & ONES) + (change >> 16)) & ONES
        head = pack(
            vnet, macs, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto - TTL_ONE, csum,
            addresses, options, type_code, l4_csum, ident_bytes,
        )  # fmt: skip
        if len(pkt) - tail_at > gather_from:
            return Gather(head, memoryview(pkt)[tail_at:])
        return head + pkt[tail_at:]

    return write_echo


def _ports_writer(
    pack: Callable[..., bytes],
    tail_at: int,
    macs: bytes,
    ip_change: int,
    addresses: bytes,
    ports: bytes,
    partial_start: int,
    partial_change: int,
    complete_change: int,
    udp: bool,
) -> Write:
    """PORTS: the addresses and TCP or UDP ports, and the L4 checksum in its form."""

    def write_ports(pkt: bytes, fields: tuple[Any, ...], gather_from: int) -> Frame:
        vnet, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto, csum, options, middle, l4_csum = fields
        change = (~csum & ONES) + ip_change
        csum = ~((change & ONES) + (change >> 16)) & ONES
        if vnet[0] & VNET_F_NEEDS_CSUM and vnet[6] | vnet[7] << 8 == partial_start:
            # The field holds the uncomplemented pseudo-header sum: the addresses only.
            change = l4_csum + partial_change
            l4_csum = (change & ONES) + (change >> 16)
        elif l4_csum or not udp:  # RFC 768: a UDP checksum of 0 is none, and none is added
            change = (~l4_csum & ONES) + complete_change
            l4_csum = ~((change & ONES) + (change >> 16)) & ONES
            if not l4_csum and udp:
                l4_csum = ONES
        head = pack(
            vnet, macs, ethertype, ver_ihl_tos, total, ident, frag, ttl_proto - TTL_ONE, csum,
            addresses, options, ports, middle, l4_csum,
        )  # fmt: skip
        if len(pkt) - tail_at > gather_from:
            return Gather(head, memoryview(pkt)[tail_at:])
        return head + pkt[tail_at:]

    return write_ports
