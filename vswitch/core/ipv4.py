"""An IPv4 packet on the router's slow path, validated once into a record the stages read.

`parse` makes the checks RFC 1812 asks of a router before anything else (5.2.2: length, version,
header length, total length, header checksum; 5.3.7: martian addresses; 5.3.5 and 5.3.4: broadcasts
and multicast), and answers with a `Packet` or the `Drop` that names what was wrong. After it, no stage
reads the header again to check it: they read the record (smoltcp's checked views). The record exists
on the slow path only; the flow cache's fast path reads the bytes with one unpack.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from .checksum import fold, ones_sum
from .counters import Drop
from .wire import (
    GSO_NONE,
    IP_DST,
    IP_FLAGS_FRAG,
    IP_PROTO,
    IP_SRC,
    IP_TOTAL_LEN,
    IPV4_MIN_LEN,
    L3,
)

if TYPE_CHECKING:
    from .conntrack import Flow

_HDR10: Final = struct.Struct("!10H")
_U32: Final = struct.Struct("!I")


class NatChange(NamedTuple):
    """NAT's translation of one packet, with its checksum deltas (RFC 1624)."""

    addresses: bytes  # new source and destination
    l4: bytes  # new ports, or an echo's new identifier; empty for a later fragment
    addr_delta: int
    l4_delta: int
    addresses_only: bool = False  # a later fragment: its first fragment carried the ports


@dataclass(slots=True)
class Packet:
    """One IPv4 packet being decided: its checked fields and what the stages have decided so far."""

    iface: int  # the router interface (segment) it arrived on
    pkt: bytes  # the frame as routed on: trimmed to the IP length; NAT's translated ICMP error
    arrived: bytes  # the frame as it arrived, which an ICMP error about it quotes
    ledger: Counter[str]  # the ingress port's drops
    ihl: int
    l4: int  # where the L4 header starts in pkt
    end: int  # where the IP packet ends in pkt
    proto: int
    frag: int  # flags and fragment offset
    src: bytes
    dst: bytes  # after NAT, the destination it is routed to
    dst_int: int
    nat: NatChange | None = None  # NAT's translation, for the forward action
    flow: Flow | None = None  # the conntrack flow the packet belongs to, if tracked
    direction: int = 0
    made_flow: Flow | None = None  # the flow this packet created: it goes if the packet dies here
    # Later fragments of its datagram that came first and waited for it (nat.py): routed right after
    # it, as if they had just arrived, each charged to its own ingress port.
    released: list[tuple[int, bytes, Counter[str]]] | None = None

    def route_to(self, dst: bytes) -> None:
        self.dst = dst
        self.dst_int = _U32.unpack(dst)[0]


def parse(
    iface: int,
    pkt: bytes,
    link_broadcast: bool,
    ledger: Counter[str],
    local: Container[bytes],
    broadcasts: Container[bytes],
) -> Packet | Drop:
    """Validate an IPv4 frame (virtio-net header + Ethernet) that reached a router interface."""
    size = len(pkt)
    # RFC 1812 5.2.2: the checks a router must make before anything else.
    if size < L3 + IPV4_MIN_LEN:
        return Drop.IP_TRUNCATED
    ver_ihl = pkt[L3]
    if ver_ihl >> 4 != 4:
        return Drop.IP_BAD_VERSION
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_MIN_LEN or L3 + ihl > size:
        return Drop.IP_BAD_IHL
    if pkt[1] == GSO_NONE:
        total = pkt[IP_TOTAL_LEN] << 8 | pkt[IP_TOTAL_LEN + 1]
        if total < ihl or L3 + total > size:
            return Drop.IP_BAD_LENGTH
        end = L3 + total
        if end < size:  # Ethernet padding, or junk: the packet ends where its length says
            pkt = pkt[:end]  # (Linux's pskb_trim_rcsum); what follows is never forwarded
    else:
        end = size  # a TSO super-frame: the length field may be 0 or stale; the buffer counts
    header_sum = (
        fold(sum(_HDR10.unpack_from(pkt, L3))) if ihl == IPV4_MIN_LEN else ones_sum(pkt[L3 : L3 + ihl])
    )
    if header_sum != 0xFFFF:
        return Drop.IP_BAD_CHECKSUM
    src = pkt[IP_SRC]
    dst = pkt[IP_DST]
    src_int = _U32.unpack(src)[0]
    dst_int = _U32.unpack(dst)[0]
    # RFC 1812 5.3.7: martian sources (0/8, 127/8, multicast, class E, broadcasts), including our
    # own addresses (a looped or spoofed packet).
    first = src_int >> 24
    if first == 0 or first == 127 or first >= 224 or src in broadcasts or src in local:
        return Drop.IP_MARTIAN_SOURCE
    # RFC 1812 5.3.5: limited and directed broadcasts are not forwarded; 5.3.4: nor is a packet that
    # arrived as a link-layer broadcast.
    if dst_int == 0xFFFFFFFF or dst in broadcasts or link_broadcast:
        return Drop.IP_BROADCAST
    first = dst_int >> 24
    if 224 <= first < 240:
        return Drop.IP_MULTICAST
    if first == 0 or first == 127 or first >= 240:
        return Drop.IP_MARTIAN_DESTINATION
    frag = pkt[IP_FLAGS_FRAG] << 8 | pkt[IP_FLAGS_FRAG + 1]
    # Positional, in the fields' order: this is the slow path's one allocation per packet.
    return Packet(iface, pkt, pkt, ledger, ihl, L3 + ihl, end, pkt[IP_PROTO], frag, src, dst, dst_int)
