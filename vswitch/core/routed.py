"""What the router decides for one frame, shared by its IPv4 and IPv6 stages and the flow cache."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface
from typing import Final, NamedTuple

from .action import Rewrite
from .arp import Neighbour
from .conntrack import Flow
from .wire import GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, L3, UDP_LEN

Transmit = tuple[int, bytes]


@dataclass(frozen=True)
class Interface:
    index: int  # the segment the interface sits on
    name: str
    mac: bytes
    address: IPv4Interface
    mtu: int = 1500
    uplink: bool = False
    address6: IPv6Interface | None = None  # the segment's /64 and our ::1 in it (router6.py)
    advertise: bool = True  # router advertisements on this segment (not where the host port is)


class Forwarded(NamedTuple):
    """A packet the router forwarded to a fresh neighbour: the action, and what it depends on (what
    the flow cache must re-check before it reuses the action for the flow's next packet)."""

    rewrite: Rewrite
    out_iface: int
    neighbour: Neighbour
    flow: Flow | None  # the conntrack flow, if the packet is tracked
    direction: int


class Routed(NamedTuple):
    """What the router did with one frame: the frames it sends (as (interface, frame)), and the
    forwarded packet's action when a flow cache may reuse it."""

    frames: list[Transmit]
    forwarded: Forwarded | None = None


NOTHING: Final = Routed([])
_new: Final = tuple.__new__  # a NamedTuple from a tuple, without its generated __new__ (a Python call)


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
    tcp = gso_type in (GSO_TCPV4, GSO_TCPV6) and l4 + 13 <= end
    l4_len = (pkt[l4 + 12] >> 4) * 4 if tcp else UDP_LEN
    return l4 - L3 + l4_len + gso_size
