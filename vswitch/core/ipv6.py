"""An IPv6 packet on the router's slow path, validated once into a record the stages read.

`parse` makes the checks a router owes a packet before it forwards it (RFC 8200 sections 3-4: length,
version, the extension header chain; RFC 4291: addresses that never appear on the wire) and answers
with a `Packet6`, or the `Drop` that names what was wrong, or a `Problem` when RFC 8200 asks for a
parameter problem message back. After it, no stage reads the header again to check it.

Extension headers (RFC 8200 4.1): hop-by-hop options only first, and its options read as a router must
(4.2: the two high bits of an unknown option's type say skip, discard, or discard and tell); a routing
header of type 0 is dropped (RFC 5095); a fragment header is carried through untouched (a router never
reassembles); the others are skipped by their length (the uniform format, RFC 6564). A chain longer
than `MAX_EXTENSIONS` or running past the packet is a named drop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from .counters import Drop
from .icmp6 import ERRONEOUS_HEADER, LOOPBACK, UNRECOGNIZED_NEXT_HEADER, UNRECOGNIZED_OPTION, UNSPECIFIED
from .ipv4 import NatChange
from .wire import ETHERTYPE_IPV6, ETHERTYPE_VLAN, GSO_NONE, IP6_DST, IP6_NEXT_HEADER, IP6_SRC, L3, L4_6

if TYPE_CHECKING:
    from .conntrack import Flow

HOP_BY_HOP: Final = 0
ROUTING: Final = 43
FRAGMENT: Final = 44
ESP: Final = 50
AUTH: Final = 51
NO_NEXT_HEADER: Final = 59
DEST_OPTIONS: Final = 60
# Extension headers with the uniform TLV length (RFC 6564, RFC 8200 4): Mobility, HIP, Shim6, the two
# for experiments (RFC 3692). ESP is not among them: what follows it is encrypted.
_EXTENSIONS: Final = frozenset({HOP_BY_HOP, ROUTING, FRAGMENT, AUTH, DEST_OPTIONS, 135, 139, 140, 253, 254})
MAX_EXTENSIONS: Final = 8  # Linux's default max_hbh/dst_opts_cnt is 8 options; no host sends more headers
PAD1: Final = 0
PADN: Final = 1
ROUTER_ALERT: Final = 5  # RFC 2711: a router looks at the packet; for MLD, which we do not route
JUMBO: Final = 0xC2  # RFC 2675: only with a payload length of 0, which we refuse
_IPV6_TYPE: Final = ETHERTYPE_IPV6.to_bytes(2, "big")
_VLAN_TYPE: Final = ETHERTYPE_VLAN.to_bytes(2, "big")


class Problem(NamedTuple):
    """A packet dropped with a parameter problem message (RFC 4443 3.4) due back to its source."""

    reason: Drop
    code: int
    pointer: int  # octet offset in the packet (from the IPv6 header) of the field in error
    multicast_ok: bool = False  # RFC 8200 4.2: an option type 10xxxxxx is reported even to multicast


@dataclass(slots=True)
class Packet6:
    """One IPv6 packet being decided: its checked fields."""

    iface: int  # the router interface (segment) it arrived on
    pkt: bytes  # the frame, trimmed to the IPv6 packet's length
    ledger: Counter[str]  # the ingress port's drops
    end: int  # where the packet ends in pkt
    src: bytes
    dst: bytes
    proto: int  # the upper-layer protocol: the last next header of the chain
    proto_at: int  # where that next header field is (a pointer for "unrecognized next header")
    l4: int  # where the upper-layer header starts in pkt; -1 in a later fragment (it has none)
    extensions: bool  # any extension header: the flow cache takes plain packets only
    fragment: int = -1  # where its fragment header is, if it has one
    # What NAT66 decided (nat6.py), as ipv4.Packet has it
    nat: NatChange | None = None
    flow: Flow | None = None
    direction: int = 0
    made_flow: Flow | None = None

    def route_to(self, dst: bytes) -> None:
        self.dst = dst


def parse(iface: int, pkt: bytes, ledger: Counter[str]) -> Packet6 | Drop | Problem:
    """Validate pkt (a frame with ethertype IPv6) and walk its extension headers."""
    if len(pkt) < L4_6:
        return Drop.IPV6_TRUNCATED
    if pkt[L3] >> 4 != 6:
        return Drop.IPV6_BAD_VERSION
    length = pkt[L3 + 4] << 8 | pkt[L3 + 5]
    end = L4_6 + length
    # A payload length of 0 is a jumbogram's (RFC 2675), which a link with our MTUs never carries.
    if (length == 0 and pkt[IP6_NEXT_HEADER] != NO_NEXT_HEADER) or end > len(pkt):
        return Drop.IPV6_BAD_LENGTH
    if end < len(pkt) and pkt[1] == GSO_NONE:
        pkt = pkt[:end]  # Ethernet padding
    src, dst = pkt[IP6_SRC], pkt[IP6_DST]
    # RFC 4291 2.7: never a multicast source; 2.5.3: loopback never leaves a node; 2.5.2: the
    # unspecified address only as the source of a node that has none yet (a solicitation, to multicast).
    if src[0] == 0xFF or src == LOOPBACK or (src == UNSPECIFIED and dst[0] != 0xFF):
        return Drop.IPV6_MARTIAN_SOURCE
    if dst in (UNSPECIFIED, LOOPBACK):
        return Drop.IPV6_MARTIAN_DESTINATION
    next_header, at, field = pkt[IP6_NEXT_HEADER], L4_6, IP6_NEXT_HEADER
    count, fragment = 0, -1
    while next_header in _EXTENSIONS:
        count += 1
        if count > MAX_EXTENSIONS:
            return Drop.IPV6_EXTENSION_CHAIN_TOO_LONG
        if next_header == HOP_BY_HOP and count > 1:
            # RFC 8200 4.1: hop-by-hop options only right after the IPv6 header.
            return Problem(Drop.IPV6_BAD_EXTENSION, UNRECOGNIZED_NEXT_HEADER, field - L3)
        if at + 8 > end:
            return Drop.IPV6_EXTENSION_TRUNCATED
        if next_header == FRAGMENT:
            size = 8
        elif next_header == AUTH:
            size = (pkt[at + 1] + 2) * 4  # RFC 4302 2.2: in 4-octet units, minus 2
        else:
            size = (pkt[at + 1] + 1) * 8
        if at + size > end:
            return Drop.IPV6_EXTENSION_TRUNCATED
        if next_header == HOP_BY_HOP:
            refused = _hop_by_hop(pkt, at, at + size)
            if refused is not None:
                return refused
        elif next_header == ROUTING and pkt[at + 2] == 0:
            # RFC 5095 3: type 0 is deprecated; with segments left, as an unrecognized routing type.
            if pkt[at + 3]:
                return Problem(Drop.IPV6_ROUTING_TYPE_0, ERRONEOUS_HEADER, at + 2 - L3)
            return Drop.IPV6_ROUTING_TYPE_0
        elif next_header == FRAGMENT:
            fragment = at
            if (pkt[at + 2] << 8 | pkt[at + 3]) & 0xFFF8:
                # A later fragment: what follows is payload, not headers (RFC 8200 4.5).
                return Packet6(iface, pkt, ledger, end, src, dst, pkt[at], at - L3, -1, True, at)
        next_header, field, at = pkt[at], at, at + size
    return Packet6(iface, pkt, ledger, end, src, dst, next_header, field - L3, at, count > 0, fragment)


def _hop_by_hop(pkt: bytes, at: int, end: int) -> Drop | Problem | None:
    """RFC 8200 4.2: each option in turn; an unknown one's two high bits say what to do."""
    i = at + 2
    while i < end:
        kind = pkt[i]
        if kind == PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + pkt[i + 1] > end:
            return Drop.IPV6_EXTENSION_TRUNCATED
        if kind not in (PADN, ROUTER_ALERT):
            action = kind >> 6
            if kind == JUMBO or action == 2:  # discard and tell, even a multicast destination
                return Problem(Drop.IPV6_UNKNOWN_OPTION, UNRECOGNIZED_OPTION, i - L3, True)
            if action == 3:  # discard and tell, unless the destination is multicast
                return Problem(Drop.IPV6_UNKNOWN_OPTION, UNRECOGNIZED_OPTION, i - L3)
            if action == 1:
                return Drop.IPV6_UNKNOWN_OPTION
        i += 2 + pkt[i + 1]
    return None


def upper_layer(pkt: bytes, end: int) -> tuple[int, int]:
    """The upper-layer protocol of a packet up to end, and where its header starts (-1: not reached:
    a later fragment, the end, too many headers), the chain skipped by length alone, as the kernel's
    ipv6_skip_exthdr does. For RFC 4443 2.4(e.1), which asks whether a packet is an ICMPv6 error
    before an error is sent about it: of one parse refused part way along the chain, or of the first
    1280 bytes kept of one that waited for a neighbour."""
    next_header, at = pkt[IP6_NEXT_HEADER], L4_6
    for _ in range(MAX_EXTENSIONS + 1):
        if next_header not in _EXTENSIONS:
            return next_header, at
        if at + 8 > end or (next_header == FRAGMENT and (pkt[at + 2] << 8 | pkt[at + 3]) & 0xFFF8):
            return next_header, -1
        if next_header == FRAGMENT:
            size = 8
        elif next_header == AUTH:
            size = (pkt[at + 1] + 2) * 4
        else:
            size = (pkt[at + 1] + 1) * 8
        next_header, at = pkt[at], at + size
    return next_header, -1


def is_router_advert(pkt: bytes | memoryview) -> bool:
    """Whether a frame is, or may be, a router advertisement, for RA guard (RFC 6105, and RFC 7113:
    the header chain is followed, and a packet that hides its upper layer past a fragment or the end
    of the chain counts as one). One 802.1Q tag is looked through (a frame from a trunk keeps its tag
    across the switch). Only a link-local source can send one (RFC 4861 6.1.2)."""
    base = L3 + 4 if pkt[L3 - 2 : L3] == _VLAN_TYPE else L3
    if len(pkt) < base + 40 or pkt[base - 2 : base] != _IPV6_TYPE:
        return False
    if pkt[base + 8] != 0xFE or pkt[base + 9] & 0xC0 != 0x80:
        return False
    next_header, at, end = pkt[base + 6], base + 40, len(pkt)
    for _ in range(MAX_EXTENSIONS + 1):
        if next_header == 58:
            return at >= end or pkt[at] == 134
        if next_header not in _EXTENSIONS:
            return False
        if at + 8 > end:
            return True
        if next_header == FRAGMENT:
            if (pkt[at + 2] << 8 | pkt[at + 3]) & 0xFFF8:
                return False  # a later fragment: the first one is judged
            size = 8
        elif next_header == AUTH:
            size = (pkt[at + 1] + 2) * 4
        else:
            size = (pkt[at + 1] + 1) * 8
        next_header, at = pkt[at], at + size
    return True
