"""ICMP messages the router originates: errors (RFC 792, RFC 1812 4.3.2) and echo replies.

Builders return a whole buffer, ``[zero virtio-net header][blank Ethernet header][IPv4][ICMP]``, with
complete checksums; the router's output path fills in the MACs once the next hop is resolved, so a
generated packet takes the same route/ARP path as a forwarded one.
"""

from __future__ import annotations

import struct
from typing import Final

from .checksum import fold, internet_checksum
from .wire import IPV4, ZERO_VNET_HDR

ECHO_REPLY: Final = 0
DEST_UNREACH: Final = 3
SOURCE_QUENCH: Final = 4
REDIRECT: Final = 5
ECHO_REQUEST: Final = 8
TIME_EXCEEDED: Final = 11
PARAM_PROBLEM: Final = 12
# RFC 1812 4.3.2.7: no error is sent about one of these
ERROR_TYPES: Final = frozenset({DEST_UNREACH, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAM_PROBLEM})

NET_UNREACH: Final = 0
HOST_UNREACH: Final = 1
PROTO_UNREACH: Final = 2
PORT_UNREACH: Final = 3
FRAG_NEEDED: Final = 4

ICMP_HDR: Final = struct.Struct("!BBHI")  # type code checksum rest-of-header
ICMP_HDR_LEN: Final = 8
# RFC 1812 4.3.2.3: quote as much as fits in 576 bytes (Linux does the same)
MAX_ERROR_LEN: Final = 576
ERROR_TTL: Final = 64
PRECEDENCE_INTERNETWORK_CONTROL: Final = 0xC0  # precedence 6 in the TOS byte (RFC 791)
BLANK_ETH: Final = bytes(14)
_HDR10: Final = struct.Struct("!10H")


def header_checksum(hdr: bytes | bytearray) -> int:
    """RFC 791 checksum of a 20-byte header whose checksum field is zero."""
    return ~fold(sum(_HDR10.unpack_from(hdr))) & 0xFFFF


def _ip_header(
    total: int, ident: int, src: bytes, dst: bytes, ttl: int = ERROR_TTL, tos: int = 0
) -> bytearray:
    hdr = bytearray(IPV4.pack(0x45, tos, total, ident & 0xFFFF, 0, ttl, 1, 0, src, dst))
    hdr[10:12] = header_checksum(hdr).to_bytes(2, "big")
    return hdr


def build_error(
    icmp_type: int,
    code: int,
    rest: int,
    src: bytes,
    dst: bytes,
    quoted: bytes | bytearray | memoryview,
    ident: int = 0,
) -> bytearray:
    """An ICMP error about the IP datagram ``quoted`` (header first), cut to 576 bytes in all.

    ``rest`` is the second word: 0, or the next-hop MTU for fragmentation needed (RFC 1191).
    """
    quoted = quoted[: MAX_ERROR_LEN - 20 - ICMP_HDR_LEN]
    icmp = bytearray(ICMP_HDR.pack(icmp_type, code, 0, rest))
    icmp += quoted
    icmp[2:4] = internet_checksum(icmp).to_bytes(2, "big")
    # RFC 1812 4.3.2.5: an error SHOULD carry precedence 6 (internetwork control), as Linux sends it.
    ip = _ip_header(20 + len(icmp), ident, src, dst, tos=PRECEDENCE_INTERNETWORK_CONTROL)
    return bytearray(ZERO_VNET_HDR + BLANK_ETH) + ip + icmp


def build_echo_reply(
    src: bytes, dst: bytes, request: bytes | bytearray | memoryview, ident: int = 0
) -> bytearray:
    """The reply to an echo request whose ICMP message (header first) is ``request``: identifier,
    sequence and data copied (RFC 792), type 0, a fresh checksum and our own header (TTL 64)."""
    icmp = bytearray(request)
    icmp[0] = ECHO_REPLY
    icmp[1] = 0
    icmp[2:4] = b"\x00\x00"
    icmp[2:4] = internet_checksum(icmp).to_bytes(2, "big")
    ip = _ip_header(20 + len(icmp), ident, src, dst)
    return bytearray(ZERO_VNET_HDR + BLANK_ETH) + ip + icmp


class TokenBucket:
    """Rate limit for generated errors (RFC 1812 4.3.2.8); time is passed in."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
