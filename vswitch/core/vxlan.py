"""VXLAN (RFC 7348): a segment stretched to remote VTEPs over a UDP/IPv4 underlay. Pure.

A tunnel is one more kind of port on a segment, seen from the switch as one port per remote VTEP:
- the switch learns a remote MAC on the port of the VTEP it came from, so the FDB says which remote
  owns it (the kernel's vxlan FDB keeps the same: MAC -> dst), it ages and is bounded with the rest;
- a flood reaches every remote's port: head-end replication (RFC 7348 section 4.2);
- the remotes of one tunnel are one split-horizon group: what came from the underlay never goes back
  into it (the kernel bridge floods to its one vxlan device except the one it came in on, the same).

`Tunnel.push` is the egress action: it finishes an offloaded frame (gso.py: the underlay carries no
super-frames and no partial checksums), checks the tunnel's MTU, and prepends the outer IPv4, UDP and
VXLAN headers. The outer IPv4 header is a template per remote, sent through a raw socket with
IP_HDRINCL: DF and TTL are ours to set; the total length, id and header checksum are left 0 for the
kernel to fill in (raw(7)). `Vtep.receive` is the ingress: it validates what the underlay socket
received and names the port the inner frame arrives on, or the drop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Final

from .checksum import fold
from .counters import Drop
from .gso import GsoError, segment
from .wire import (
    ETHERTYPE_VLAN,
    GSO_TCPV4,
    GSO_TCPV6,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
)

DEFAULT_PORT: Final = 4789  # IANA's VXLAN port (RFC 7348 section 5)
DEFAULT_TTL: Final = 64
HEADER_LEN: Final = 8
# What the underlay adds to an inner frame: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8. The inner
# MTU is the underlay's minus this, as the kernel's vxlan device and Docker's overlay (1450) take it.
OVERHEAD: Final = 50
OUTER_LEN: Final = 20 + 8 + HEADER_LEN  # what push prepends to the inner frame (no outer Ethernet)
FLAG_I: Final = 0x08000000  # "I": the VNI is valid; RFC 7348 section 5: every other bit is reserved
VNI_MAX: Final = (1 << 24) - 1
# RFC 7348 section 5: the source port from a hash of the inner headers, in the dynamic range.
SPORT_BASE: Final = 49152
SPORT_MASK: Final = 0x3FFF
IP_DF: Final = 0x4000
PROTO_UDP: Final = 17
_OUTER_IP: Final = struct.Struct("!BBHHHBBH4s4s")
_UDP_VXLAN: Final = struct.Struct("!HHHHII")  # source, destination, length, checksum; flags, VNI << 8
_HEADER: Final = struct.Struct("!II")
_FRAME_MIN: Final = HEADER_LEN + 14  # a VXLAN header and an inner Ethernet header
_INNER_IPV4: Final = b"\x08\x00"
_INNER_IPV6: Final = b"\x86\xdd"
_PORTED: Final = frozenset({6, 17})
_U16: Final = struct.Struct("!H")
# IPv4: version/IHL, total length, flags/fragment offset, protocol, the two addresses.
_IPV4_FIELDS: Final = struct.Struct("!BxHxxHxBxx8s")
# IPv6: payload length, next header, the two addresses.
_IPV6_FIELDS: Final = struct.Struct("!4xHBx32s")
_VLAN: Final = ETHERTYPE_VLAN.to_bytes(2, "big")


def outer_ipv4_header(local: str, remote: str, ttl: int) -> bytes:
    """The outer IPv4 header (RFC 791) toward one remote: DF set (RFC 7348 section 4.3: VTEPs must not
    fragment), protocol UDP; length, id and checksum 0 for the kernel to fill in."""
    return _OUTER_IP.pack(
        0x45, 0, 0, 0, IP_DF, ttl, PROTO_UDP, 0, IPv4Address(local).packed, IPv4Address(remote).packed
    )


def source_port(pkt: bytes) -> int:
    """RFC 7348 section 5: a hash of the inner flow, so the underlay's ECMP spreads flows and keeps
    each one on one path. IPv4: addresses and ports for TCP and UDP (ihl 5, not a later fragment),
    else addresses and protocol; IPv6: addresses, next header and ports; anything else: the MACs."""
    ethertype = pkt[22:24]
    if ethertype == _INNER_IPV4:
        if pkt[24] == 0x45 and pkt[33] in _PORTED and not (pkt[30] & 0x1F or pkt[31]):
            return SPORT_BASE | (hash(pkt[36:48]) & SPORT_MASK)
        return SPORT_BASE | (hash(pkt[33:34] + pkt[36:44]) & SPORT_MASK)
    if ethertype == _INNER_IPV6:
        return SPORT_BASE | (hash(pkt[30:31] + pkt[32:68]) & SPORT_MASK)
    return SPORT_BASE | (hash(pkt[10:22]) & SPORT_MASK)


def parse_header(payload: bytes | memoryview) -> int | Drop:
    """The VNI of a received VXLAN packet (its UDP payload), or why it is dropped. As the kernel's
    vxlan_rcv: too short to carry an inner Ethernet header, or any flag but I, or the reserved byte
    after the VNI set (no extension is enabled here), is a malformed packet."""
    if len(payload) < _FRAME_MIN:
        return Drop.VXLAN_RUNT
    flags, word = _HEADER.unpack_from(payload)
    if flags != FLAG_I or word & 0xFF:
        return Drop.VXLAN_BAD_FLAGS
    vni: int = word >> 8
    return vni


_PARTIAL_AT: Final = {6: 16, 17: 6}  # TCP's and UDP's checksum field, from the L4 header


def received_vnet_header(frame: bytes | memoryview, mtu: int, base: int = 0) -> bytes:
    """The virtio-net header for an inner frame from the underlay (frame: from its Ethernet header).

    A Linux sender's inner TCP or UDP checksum is often left partial: over veth, an skb stays
    CHECKSUM_PARTIAL all the way into our UDP socket, and its checksum field holds only the
    pseudo-header sum (the kernel's own vxlan trusts such an skb as it is). Written to a tap as a
    complete frame, the receiving stack would drop it as corrupt. When the field holds exactly that sum,
    the frame goes on as the NEEDS_CSUM frame it is (csum_start, csum_offset), as a tap of the sender's
    would have handed it over; any other value is a complete checksum, which the receiver verifies.
    Over veth the sender's TCP super-frame (GSO) can arrive whole, too: one longer than the tunnel's
    MTU goes on as the TSO frame it is, cut at the MSS that MTU allows (gso_size), so the router and the
    taps see its true wire size. IPv4 (with options, not a fragment) and IPv6 (TCP or UDP as the next
    header), untagged or with one 802.1Q tag. base: where the Ethernet header starts in frame."""
    (ethertype,) = _U16.unpack_from(frame, base + 12) if len(frame) >= base + 14 else (0,)
    l3 = base + 14
    if ethertype == ETHERTYPE_VLAN and len(frame) >= base + 18:
        (ethertype,), l3 = _U16.unpack_from(frame, base + 16), base + 18
    if ethertype == 0x0800 and len(frame) >= l3 + 20:
        version_ihl, l3_total, fragment, proto, addresses = _IPV4_FIELDS.unpack_from(frame, l3)
        ihl = (version_ihl & 0x0F) * 4
        if version_ihl >> 4 != 4 or ihl < 20 or fragment & 0x3FFF:  # a fragment: no L4 header to finish
            return ZERO_VNET_HDR
        pseudo = _sum(addresses) + proto + l3_total - ihl
        gso_type = GSO_TCPV4
    elif ethertype == 0x86DD and len(frame) >= l3 + 40:
        payload_len, proto, addresses = _IPV6_FIELDS.unpack_from(frame, l3)
        ihl, l3_total = 40, 40 + payload_len
        pseudo = _sum(addresses) + proto + payload_len
        gso_type = GSO_TCPV6
    else:
        return ZERO_VNET_HDR
    offset = _PARTIAL_AT.get(proto)
    l4 = l3 + ihl
    if offset is None or l3_total - ihl < offset + 2 or l3 + l3_total > len(frame):
        return ZERO_VNET_HDR
    (field,) = _U16.unpack_from(frame, l4 + offset)
    if field != fold(pseudo):
        return ZERO_VNET_HDR
    csum_start = l4 - base  # the header's offsets count from the Ethernet header
    if l3_total > mtu and proto == 6:
        header_end = l4 + (frame[l4 + 12] >> 4) * 4
        gso_size = mtu - (header_end - l3)
        if gso_size > 0 and header_end - l3 < l3_total:  # else no room for data: a plain frame
            return VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_type, header_end - base, gso_size, csum_start, offset)
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, csum_start, offset)


def _sum(data: bytes) -> int:
    """The one's-complement sum of data's 16-bit words, unfolded past 16 bits is fine (the caller
    folds): the number modulo 0xFFFF, as checksum.ones_sum computes it."""
    return int.from_bytes(data, "big") % 0xFFFF


@dataclass
class Tunnel:
    """One segment's tunnel: its VNI, its local end, and a port per remote VTEP."""

    vni: int
    segment: int
    port: int  # the tunnel's own port: no fd; the underlay's drops are counted on it
    local: str
    dstport: int = DEFAULT_PORT
    ttl: int = DEFAULT_TTL
    mtu: int = 1450  # the inner MTU: the underlay's minus OVERHEAD
    remotes: dict[str, int] = field(default_factory=dict)  # remote address -> its port
    addresses: dict[int, str] = field(default_factory=dict)  # port -> remote address
    heads: dict[int, bytes] = field(default_factory=dict)  # port -> its outer IPv4 header
    # A multicast group (floods go there, TTL group_ttl), and then VTEPs heard from are learned as
    # remotes, up to max_learned (RFC 7348 section 4.2); without one, remotes are only the configured.
    group: str | None = None
    group_ttl: int = 1
    max_learned: int = 256
    learned: int = 0

    def add_remote(self, address: str, port: int) -> None:
        self.remotes[address] = port
        self.addresses[port] = address
        ttl = self.group_ttl if address == self.group else self.ttl
        self.heads[port] = outer_ipv4_header(self.local, address, ttl)

    def may_learn(self, source: str) -> bool:
        """Whether a VTEP we have not configured may become a remote: only with a group, within the
        bound, and never our own address (our group floods must not come back as a remote)."""
        return self.group is not None and self.learned < self.max_learned and source != self.local

    def push(self, port: int, pkt: bytes) -> list[bytes] | Drop:
        """The packets to send to the remote behind port for pkt (virtio-net header + frame), or why
        not. More than one when pkt is a GSO super-frame."""
        if pkt[0] or pkt[1]:  # NEEDS_CSUM, GSO: the underlay carries neither
            try:
                frames = segment(pkt)
            except GsoError:
                return Drop.BAD_VNET_HEADER
        else:
            frames = [pkt]
        limit = self.mtu + 14 + VNET_HDR_LEN
        head = self.heads[port]
        pack = _UDP_VXLAN.pack
        dstport, vni = self.dstport, self.vni << 8
        out: list[bytes] = []
        for frame in frames:
            size = len(frame)
            if size > limit and not (size <= limit + 4 and frame[22:24] == _VLAN):
                return Drop.VXLAN_TOO_BIG
            udp = pack(source_port(frame), dstport, size - VNET_HDR_LEN + 16, 0, FLAG_I, vni)
            out.append(b"".join((head, udp, memoryview(frame)[VNET_HDR_LEN:])))
        return out


@dataclass
class Vtep:
    """One underlay socket (local address and UDP port) and the tunnels it serves, by VNI."""

    local: str
    dstport: int
    tunnels: dict[int, Tunnel] = field(default_factory=dict)

    def add(self, tunnel: Tunnel) -> None:
        if tunnel.vni in self.tunnels:
            raise ValueError(f"VNI {tunnel.vni} twice on {self.local}:{self.dstport}")
        self.tunnels[tunnel.vni] = tunnel

    @property
    def ledger_port(self) -> int:
        """Where a drop that belongs to no tunnel (runt, bad flags, unknown VNI) is counted."""
        return next(iter(self.tunnels.values())).port

    def receive(self, payload: bytes | memoryview, source: str) -> tuple[int, Drop | None]:
        """(the remote's port, None) for a packet to let in, or (the port to charge, the reason).
        Remotes are static: a packet from another address never enters a segment (RFC 7348 section
        7: traffic is accepted only from the VTEPs configured for the VNI)."""
        vni = parse_header(payload)
        if isinstance(vni, Drop):
            return self.ledger_port, vni
        tunnel = self.tunnels.get(vni)
        if tunnel is None:
            return self.ledger_port, Drop.VXLAN_UNKNOWN_VNI
        port = tunnel.remotes.get(source)
        if port is None:
            return tunnel.port, Drop.VXLAN_UNKNOWN_REMOTE
        return port, None
