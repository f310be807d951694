"""UDP datagrams the router's services send and receive (DHCP, DNS): one checked view, two builders.

Like the ICMP builders, a built datagram is a whole buffer, ``[zero virtio-net header][blank Ethernet
header][IP][UDP][payload]`` with complete checksums; the caller fills in the MACs (DHCP, which must
answer a client that has no address yet) or hands it to the router's output path (DNS), which routes
and resolves it like any packet the router makes.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .checksum import internet_checksum, ones_sum
from .icmp import header_checksum
from .icmp6 import pseudo_header
from .wire import (
    IPV4,
    PROTO_UDP,
    UDP_LEN,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    ZERO_VNET_HDR,
)

_UDP: Final = struct.Struct("!HHHH")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_BLANK_ETH_V4: Final = bytes(12) + b"\x08\x00"
_BLANK_ETH_V6: Final = bytes(12) + b"\x86\xdd"
SERVICE_TTL: Final = 64  # what Linux sends with (net.ipv4.ip_default_ttl)


class Datagram(NamedTuple):
    """A UDP datagram's ports and payload, its checksum verified (or vouched for by the vnet header)."""

    sport: int
    dport: int
    payload: bytes


def datagram(pkt: bytes, l4: int, end: int, addresses: bytes, v6: bool) -> Datagram | None:
    """The UDP datagram at pkt[l4:end], or None if it is short, its length is wrong or its checksum
    fails. addresses: the source and destination, for the pseudo-header. IPv4's checksum is optional
    (RFC 768: 0 means none); IPv6's is not (RFC 8200 8.1)."""
    if l4 + UDP_LEN > end:
        return None
    sport, dport, length, checksum = _UDP.unpack_from(pkt, l4)
    if length < UDP_LEN or l4 + length > end:
        return None
    if not pkt[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) and (checksum or v6):
        tail = _pseudo_tail6(length) if v6 else _pseudo_tail(length)
        if checksum == 0 or ones_sum(addresses + tail + pkt[l4 : l4 + length]) != 0xFFFF:
            return None
    return Datagram(sport, dport, bytes(pkt[l4 + UDP_LEN : l4 + length]))


def _pseudo_tail(length: int) -> bytes:
    return struct.pack("!BBH", 0, PROTO_UDP, length)


def _pseudo_tail6(length: int) -> bytes:
    return struct.pack("!IxxxB", length, PROTO_UDP)


def build_udp4(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int = 0) -> bytearray:
    """An IPv4 UDP datagram with both checksums complete (RFC 768: a computed 0 is sent as 0xFFFF)."""
    length = UDP_LEN + len(payload)
    udp = bytearray(_UDP.pack(sport, dport, length, 0)) + payload
    checksum = internet_checksum(src + dst + _pseudo_tail(length) + udp) or 0xFFFF
    udp[6:8] = checksum.to_bytes(2, "big")
    ip = bytearray(IPV4.pack(0x45, 0, 20 + length, ident & 0xFFFF, 0, SERVICE_TTL, PROTO_UDP, 0, src, dst))
    ip[10:12] = header_checksum(ip).to_bytes(2, "big")
    return bytearray(ZERO_VNET_HDR + _BLANK_ETH_V4) + ip + udp


def build_udp6(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytearray:
    """An IPv6 UDP datagram, checksummed (RFC 8200 8.1: never 0; a computed 0 is sent as 0xFFFF)."""
    length = UDP_LEN + len(payload)
    udp = bytearray(_UDP.pack(sport, dport, length, 0)) + payload
    checksum = internet_checksum(pseudo_header(src, dst, length, PROTO_UDP) + udp) or 0xFFFF
    udp[6:8] = checksum.to_bytes(2, "big")
    ip = _IPV6.pack(6 << 28, length, PROTO_UDP, SERVICE_TTL, src, dst)
    return bytearray(ZERO_VNET_HDR + _BLANK_ETH_V6 + ip) + udp
