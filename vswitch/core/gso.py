"""Finishing an offloaded frame in software, for a port that cannot take it as it is (a tunnel).

A tap hands us frames with the virtio-net header's promises unkept: NEEDS_CSUM (the L4 checksum field
holds only the pseudo-header sum) and GSO (a TCP or UDP super-frame of up to 64 KB, to be cut into
gso_size pieces). A tap on the other side keeps them for us; a VXLAN underlay does not (the outer
packet carries the inner frame as bytes, and the far VTEP's stack checks its checksum). Here both are
kept the way the kernel's skb_checksum_help and skb_segment keep them:
- NEEDS_CSUM: the one's-complement sum from csum_start to the end, complemented, stored at
  csum_start + csum_offset (a UDP result of 0 is sent as 0xFFFF, RFC 768);
- TCP segmentation (RFC 9293 and the kernel's tcp_gso_segment): each segment gets its sequence number,
  the IPv4 header its total length, id (the first's + n) and checksum, or IPv6 its payload length;
  FIN and PSH stay on the last segment only, CWR on the first only; every checksum completed;
- UDP segmentation (USO, UDP_L4): each piece is a datagram of its own, with its length and checksum.

Every frame out has a zeroed virtio-net header (a complete frame). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .checksum import fold, ones_sum
from .wire import (
    ETHERTYPE_IPV4,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
)

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
TCP_FIN: Final = 0x01
TCP_PSH: Final = 0x08
TCP_CWR: Final = 0x80
MAX_SEGMENTS: Final = 1024  # a 64 KB super-frame with gso_size 64 is 1024 pieces; more is a lie


class GsoError(ValueError):
    """The header promises something the frame cannot keep (offsets outside it, an unknown type)."""


def complete(pkt: bytes) -> bytes:
    """pkt (virtio-net header + frame) as a complete frame: checksum finished, header zeroed. A frame
    whose header promises nothing comes back as it is."""
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(pkt)
    if gso_type & ~GSO_ECN != GSO_NONE:
        raise GsoError("a GSO frame: use segment()")
    if not flags & VNET_F_NEEDS_CSUM:
        return pkt if not flags else ZERO_VNET_HDR + pkt[VNET_HDR_LEN:]
    frame = bytearray(pkt[VNET_HDR_LEN:])
    _finish(frame, csum_start, csum_offset)
    return ZERO_VNET_HDR + bytes(frame)


def _finish(frame: bytearray, start: int, offset: int) -> None:
    """skb_checksum_help: sum from start to the end (the field holds the pseudo-header sum), store it."""
    at = start + offset
    if at + 2 > len(frame) or start > len(frame):
        raise GsoError("checksum offsets outside the frame")
    csum = ~ones_sum(memoryview(frame)[start:]) & 0xFFFF
    # A transmitted UDP checksum of 0 would mean "none" (RFC 768); the kernel writes CSUM_MANGLED_0.
    frame[at : at + 2] = _U16.pack(csum or 0xFFFF) if offset == 6 else _U16.pack(csum)


@dataclass
class _Layout:
    """Where a super-frame's headers are, and what each segment starts from."""

    l3: int  # the network header, from the Ethernet header
    l4: int  # csum_start: the transport header
    l4_len: int
    ipv4: bool
    tcp: bool
    pseudo: int  # the pseudo-header's addresses and protocol, summed (RFC 9293 3.1, RFC 8200 8.1)


def segment(pkt: bytes) -> list[bytes]:
    """A GSO super-frame cut into complete frames of gso_size payload each (or one, if it fits)."""
    _flags, gso_type, _hdr_len, gso_size, csum_start, _offset = VNET_HDR.unpack_from(pkt)
    if gso_type & ~GSO_ECN == GSO_NONE:
        return [complete(pkt)]
    frame = memoryview(pkt)[VNET_HDR_LEN:]
    layout = _layout(frame, gso_type & ~GSO_ECN, csum_start)
    payload = frame[layout.l4 + layout.l4_len :]
    count = -(-len(payload) // gso_size) if gso_size else 0
    if not 0 < count <= MAX_SEGMENTS:
        raise GsoError("no payload, no gso_size, or more segments than a super-frame can hold")
    head = bytearray(frame[: layout.l4 + layout.l4_len])
    first_id = _U16.unpack_from(head, layout.l3 + 4)[0] if layout.ipv4 else 0
    first_seq = _U32.unpack_from(head, layout.l4 + 4)[0] if layout.tcp else 0
    tcp_flags = head[layout.l4 + 13] if layout.tcp else 0
    out: list[bytes] = []
    for index in range(count):
        piece = payload[index * gso_size : (index + 1) * gso_size]
        flags = tcp_flags
        if index < count - 1:
            flags &= ~(TCP_FIN | TCP_PSH)  # FIN and PSH end the data: the last segment keeps them
        if index:
            flags &= ~TCP_CWR  # CWR once, on the first (RFC 3168 6.1.2)
        ids = ((first_id + index) & 0xFFFF, (first_seq + index * gso_size) & 0xFFFFFFFF, flags)
        _write_head(head, layout, piece, ids)
        out.append(ZERO_VNET_HDR + bytes(head) + bytes(piece))
    return out


def _layout(frame: memoryview, kind: int, csum_start: int) -> _Layout:
    l3 = csum_start - _l3_len(frame, csum_start)
    ipv4 = _U16.unpack_from(frame, l3 - 2)[0] == ETHERTYPE_IPV4
    tcp = kind in (GSO_TCPV4, GSO_TCPV6)
    if not tcp and kind != GSO_UDP_L4:
        raise GsoError(f"GSO type {kind} is not TCP or UDP_L4")
    if tcp and ipv4 != (kind == GSO_TCPV4):
        raise GsoError("GSO type and network header disagree")
    if l3 < 0 or l3 + (20 if ipv4 else 40) > min(csum_start, len(frame)):
        raise GsoError("GSO network header outside the frame")
    # The transport the network header names must be the one the GSO type cuts (inet_gso_segment
    # picks its handler by protocol, and the handler refuses another type's frame).
    named = frame[l3 + 9] if ipv4 else frame[l3 + 6]
    if named != (6 if tcp else 17):
        raise GsoError(f"GSO type {kind} on a packet of protocol {named}")
    if csum_start + (20 if tcp else 8) > len(frame):
        raise GsoError("GSO headers outside the frame")
    l4_len = (frame[csum_start + 12] >> 4) * 4 if tcp else 8
    if (tcp and l4_len < 20) or csum_start + l4_len > len(frame):
        raise GsoError("GSO headers outside the frame")
    addresses = frame[l3 + 12 : l3 + 20] if ipv4 else frame[l3 + 8 : l3 + 40]
    proto = 6 if tcp else 17
    return _Layout(l3, csum_start, l4_len, ipv4, tcp, ones_sum(addresses) + proto)


def _write_head(head: bytearray, layout: _Layout, piece: memoryview, ids: tuple[int, int, int]) -> None:
    """One segment's headers in head: lengths, IPv4 id and checksum, TCP sequence and flags, and the
    L4 checksum over them and piece."""
    l3, l4 = layout.l3, layout.l4
    l4_total = layout.l4_len + len(piece)
    ip_id, seq, tcp_flags = ids
    if layout.ipv4:
        _U16.pack_into(head, l3 + 2, l4 - l3 + l4_total)
        _U16.pack_into(head, l3 + 4, ip_id)
        head[l3 + 10 : l3 + 12] = b"\0\0"
        _U16.pack_into(head, l3 + 10, ~ones_sum(head[l3:l4]) & 0xFFFF)
    else:
        _U16.pack_into(head, l3 + 4, l4 - l3 - 40 + l4_total)
    if layout.tcp:
        _U32.pack_into(head, l4 + 4, seq)
        head[l4 + 13] = tcp_flags
        at = l4 + 16
    else:
        _U16.pack_into(head, l4 + 4, l4_total)
        at = l4 + 6
    head[at : at + 2] = b"\0\0"
    csum = ~fold(layout.pseudo + l4_total + ones_sum(head[l4:]) + ones_sum(piece)) & 0xFFFF
    # A UDP checksum of 0 means none (RFC 768): a computed 0 goes as 0xFFFF. TCP's 0 is a value.
    _U16.pack_into(head, at, csum if csum or layout.tcp else 0xFFFF)


def _l3_len(frame: memoryview, csum_start: int) -> int:
    """The network header's length before csum_start: IPv4's IHL, or IPv6's fixed 40 (extension
    headers are not offloaded by the kernel's tun for GSO)."""
    for l3 in (14, 18):  # untagged, or one 802.1Q tag
        if l3 >= csum_start or l3 >= len(frame):
            break
        version = frame[l3] >> 4
        if version == 4 and l3 + (frame[l3] & 0x0F) * 4 == csum_start:
            return csum_start - l3
        if version == 6 and l3 + 40 == csum_start:
            return 40
    raise GsoError("no IPv4 or IPv6 header ends at csum_start")
