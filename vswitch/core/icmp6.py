"""ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): the messages the router reads and makes.

Builders return a whole buffer, ``[zero virtio-net header][Ethernet, MACs blank][IPv6][ICMPv6]``, with
the ICMPv6 checksum complete (its pseudo-header has the 128-bit addresses, RFC 8200 section 8.1); the
router's output path fills in the MACs, so a message it makes takes the same route and neighbour path
as a forwarded packet.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .checksum import internet_checksum, ones_sum
from .wire import (
    ETH_HDR,
    ETHERTYPE_IPV6,
    IPV6_HDR_LEN,
    IPV6_MIN_MTU,
    PROTO_ICMPV6,
    ZERO_MAC,
    ZERO_VNET_HDR,
    domain_wire,
)

# Types (RFC 4443 section 2.1, RFC 4861 section 4)
DEST_UNREACH: Final = 1
PACKET_TOO_BIG: Final = 2
TIME_EXCEEDED: Final = 3
PARAM_PROBLEM: Final = 4
ECHO_REQUEST: Final = 128
ECHO_REPLY: Final = 129
ROUTER_SOLICIT: Final = 133
ROUTER_ADVERT: Final = 134
NEIGHBOR_SOLICIT: Final = 135
NEIGHBOR_ADVERT: Final = 136
REDIRECT: Final = 137
ND_TYPES: Final = frozenset({ROUTER_SOLICIT, ROUTER_ADVERT, NEIGHBOR_SOLICIT, NEIGHBOR_ADVERT, REDIRECT})
# RFC 4443 2.4(e): types below 128 are errors; no error is sent about one.

# Destination unreachable codes (RFC 4443 3.1)
NO_ROUTE: Final = 0
BEYOND_SCOPE: Final = 2
ADDRESS_UNREACH: Final = 3
PORT_UNREACH: Final = 4
# Parameter problem codes (RFC 4443 3.4)
ERRONEOUS_HEADER: Final = 0
UNRECOGNIZED_NEXT_HEADER: Final = 1
UNRECOGNIZED_OPTION: Final = 2

# Neighbor Discovery (RFC 4861 section 4.6): option types, the hop limit every ND message carries
OPT_SOURCE_LL: Final = 1
OPT_TARGET_LL: Final = 2
OPT_PREFIX: Final = 3
OPT_MTU: Final = 5
OPT_RDNSS: Final = 25  # RFC 8106 5.1
OPT_DNSSL: Final = 31  # RFC 8106 5.2
ND_HOP_LIMIT: Final = 255
NA_ROUTER: Final = 0x80
NA_SOLICITED: Final = 0x40
NA_OVERRIDE: Final = 0x20
PREFIX_ON_LINK: Final = 0x80
PREFIX_AUTONOMOUS: Final = 0x40
# The smallest ND message of each type: its fixed part (RFC 4861 sections 4.1-4.5)
ND_MIN_LEN: Final = {
    ROUTER_SOLICIT: 8,
    ROUTER_ADVERT: 16,
    NEIGHBOR_SOLICIT: 24,
    NEIGHBOR_ADVERT: 24,
    REDIRECT: 40,
}

ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS: Final = bytes.fromhex("ff020000000000000000000000000002")
SOLICITED_NODE_PREFIX: Final = bytes.fromhex("ff0200000000000000000001ff")
UNSPECIFIED: Final = bytes(16)
LOOPBACK: Final = bytes(15) + b"\x01"
ERROR_HOP_LIMIT: Final = 64
# RFC 4443 2.4(c): an error quotes as much of the packet as fits in the minimum MTU.
MAX_QUOTED: Final = IPV6_MIN_MTU - IPV6_HDR_LEN - 8

_IPV6: Final = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hop limit
_ICMP_HDR: Final = struct.Struct("!BBHI")  # type, code, checksum, the second word
_PSEUDO_TAIL: Final = struct.Struct("!I3xB")  # upper-layer length, zeros, next header (RFC 8200 8.1)
_BLANK_ETH: Final = ETH_HDR.pack(ZERO_MAC, ZERO_MAC, ETHERTYPE_IPV6)
_MTU_OPTION: Final = struct.Struct("!BBHI")
_DNS_OPTION: Final = struct.Struct("!BBHI")  # type, length in 8-octet units, reserved, lifetime
_PREFIX_OPTION: Final = struct.Struct("!BBBBIII16s")
_RA_FIXED: Final = struct.Struct("!BBHBBHII")  # type code checksum, hop limit, flags, lifetime, timers


def is_link_local(address: bytes) -> bool:
    """fe80::/10 (RFC 4291 2.5.6)."""
    return address[0] == 0xFE and address[1] & 0xC0 == 0x80


def solicited_node(address: bytes) -> bytes:
    """ff02::1:ffXX:XXXX, where a node listens for solicitations of address (RFC 4291 2.7.1)."""
    return SOLICITED_NODE_PREFIX + address[13:]


def multicast_mac(group: bytes) -> bytes:
    """33:33 and the group's last 32 bits (RFC 2464 section 7)."""
    return b"\x33\x33" + group[12:]


def link_local_of(mac: bytes) -> bytes:
    """fe80:: with the modified EUI-64 interface identifier of mac (RFC 4291 appendix A)."""
    return b"\xfe\x80" + bytes(6) + bytes((mac[0] ^ 0x02, mac[1], mac[2], 0xFF, 0xFE, mac[3], mac[4], mac[5]))


def pseudo_header(src: bytes, dst: bytes, length: int, next_header: int = PROTO_ICMPV6) -> bytes:
    return src + dst + _PSEUDO_TAIL.pack(length, next_header)


def verify(src: bytes, dst: bytes, message: bytes | memoryview) -> bool:
    """An ICMPv6 message's checksum, pseudo-header included, verifies (RFC 4443 2.3)."""
    return ones_sum(pseudo_header(src, dst, len(message)) + bytes(message)) == 0xFFFF


def packet(src: bytes, dst: bytes, icmp: bytearray, hop_limit: int = ERROR_HOP_LIMIT) -> bytearray:
    """The ICMPv6 message icmp (its checksum field zero) in an IPv6 packet, checksummed."""
    icmp[2:4] = internet_checksum(pseudo_header(src, dst, len(icmp)) + icmp).to_bytes(2, "big")
    ip = _IPV6.pack(6 << 28, len(icmp), PROTO_ICMPV6, hop_limit, src, dst)
    return bytearray(ZERO_VNET_HDR + _BLANK_ETH + ip) + icmp


def build_error(
    icmp_type: int, code: int, rest: int, src: bytes, dst: bytes, quoted: bytes | bytearray | memoryview
) -> bytearray:
    """An ICMPv6 error about the packet ``quoted`` (its IPv6 header first), cut to fit 1280 bytes.
    rest is the second word: the MTU (packet too big), the pointer (parameter problem), or 0."""
    icmp = bytearray(_ICMP_HDR.pack(icmp_type, code, 0, rest)) + bytes(quoted[:MAX_QUOTED])
    return packet(src, dst, icmp)


def build_echo_reply(src: bytes, dst: bytes, request: bytes | bytearray | memoryview) -> bytearray:
    """The reply to the echo request ``request`` (ICMPv6 header first): identifier, sequence and data
    copied (RFC 4443 4.2)."""
    icmp = bytearray(request)
    icmp[0], icmp[1], icmp[2:4] = ECHO_REPLY, 0, b"\x00\x00"
    return packet(src, dst, icmp)


def build_solicit(src: bytes, dst: bytes, target: bytes, mac: bytes) -> bytearray:
    """A neighbour solicitation for target with our link-layer address (RFC 4861 4.3, 7.2.2)."""
    icmp = bytearray(_ICMP_HDR.pack(NEIGHBOR_SOLICIT, 0, 0, 0)) + target + bytes((OPT_SOURCE_LL, 1)) + mac
    return packet(src, dst, icmp, ND_HOP_LIMIT)


def build_advert(src: bytes, dst: bytes, target: bytes, mac: bytes, flags: int) -> bytearray:
    """A neighbour advertisement for target, with our link-layer address (RFC 4861 4.4, 7.2.4)."""
    icmp = bytearray(_ICMP_HDR.pack(NEIGHBOR_ADVERT, 0, 0, flags << 24)) + target + bytes((OPT_TARGET_LL, 1))
    return packet(src, dst, icmp + mac, ND_HOP_LIMIT)


class Prefix(NamedTuple):
    """A prefix information option (RFC 4861 4.6.2): on-link and for SLAAC (RFC 4862 5.5.3)."""

    network: bytes  # 16 bytes
    length: int
    valid: int  # seconds
    preferred: int


def build_advertisement(
    src: bytes,
    dst: bytes,
    mac: bytes,
    lifetime: int,
    mtu: int,
    prefixes: list[Prefix],
    hop_limit: int = 64,
    dns: tuple[bytes, str, int] | None = None,
) -> bytearray:
    """A router advertisement (RFC 4861 4.2): our link-layer address, the link's MTU and prefixes.
    Reachable time and retransmission timer 0: unspecified, the hosts keep their own. dns: a resolver's
    address, the search domain and their lifetime, as RDNSS and DNSSL options (RFC 8106 5.1, 5.2)."""
    icmp = bytearray(_RA_FIXED.pack(ROUTER_ADVERT, 0, 0, hop_limit, 0, lifetime, 0, 0))
    icmp += bytes((OPT_SOURCE_LL, 1)) + mac
    icmp += _MTU_OPTION.pack(OPT_MTU, 1, 0, mtu)
    for prefix in prefixes:
        flags = PREFIX_ON_LINK | PREFIX_AUTONOMOUS
        icmp += _PREFIX_OPTION.pack(OPT_PREFIX, 4, prefix.length, flags, prefix.valid, prefix.preferred, 0,
                                    prefix.network)  # fmt: skip
    if dns is not None:
        server, domain, dns_lifetime = dns
        icmp += _DNS_OPTION.pack(OPT_RDNSS, 3, 0, dns_lifetime) + server
        names = domain_wire(domain)
        names = names.ljust(-(-(8 + len(names)) // 8) * 8 - 8, b"\x00")  # padded to 8-octet units
        icmp += _DNS_OPTION.pack(OPT_DNSSL, (8 + len(names)) // 8, 0, dns_lifetime) + names
    return packet(src, dst, icmp, ND_HOP_LIMIT)


def options(message: bytes | memoryview, start: int) -> dict[int, bytes] | None:
    """The options of an ND message from start, the first of each type; None if one has length 0 or
    runs past the message (RFC 4861 4.6: such a packet is discarded)."""
    found: dict[int, bytes] = {}
    at = start
    end = len(message)
    while at < end:
        if at + 2 > end:
            return None
        kind, length = message[at], message[at + 1] * 8
        if length == 0 or at + length > end:
            return None
        found.setdefault(kind, bytes(message[at + 2 : at + length]))
        at += length
    return found


def link_layer(option: bytes | None) -> bytes | None:
    """The MAC in a source or target link-layer address option (6 bytes on Ethernet, RFC 2464 8)."""
    if option is None or len(option) < 6:
        return None
    return option[:6]
