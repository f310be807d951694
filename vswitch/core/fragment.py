"""IPv4 fragmentation, for a router whose next hop has a smaller MTU than the packet (RFC 791 3.2).

Pure: bytes in, buffers out. The router calls it for a packet without DF that is too big for the
egress interface (RFC 1812 5.2.6: a router must fragment such a packet, or drop it with DF set and
say so in an ICMP "fragmentation needed"). The pieces leave as plain frames: the receiver reassembles.
"""

from __future__ import annotations

from typing import Final

from .checksum import internet_checksum, ones_sum
from .wire import (
    ICMP_CSUM_OFF,
    IP_CSUM,
    IP_FLAGS_FRAG,
    IP_FRAG_OFFSET_MASK,
    IP_MF,
    IP_TOTAL_LEN,
    IPV4_MAX_LEN,
    IPV4_MIN_LEN,
    L3,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CSUM_OFF,
    U16,
    UDP_CSUM_OFF,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
)

OPTION_END: Final = 0  # RFC 791 3.1: end of option list (one byte, and what pads a header)
OPTION_NOP: Final = 1  # one byte
OPTION_COPIED: Final = 0x80  # the copied flag: the option goes into every fragment, not just the first
FRAGMENT_UNIT: Final = 8  # the fragment offset counts 8-byte blocks
CHECKSUM_AT: Final = {PROTO_TCP: TCP_CSUM_OFF, PROTO_UDP: UDP_CSUM_OFF, PROTO_ICMP: ICMP_CSUM_OFF}


def complete_checksum(buf: bytearray, l4: int, end: int, proto: int) -> bool:
    """Fill in the L4 checksum of a NEEDS_CSUM frame in software, as the kernel's skb_checksum_help
    does, and clear the flag. A fragment cannot carry a partial checksum: its L4 header is in the
    first piece and the data it covers in all of them. False: the header's offsets are not those of
    this packet's L4 checksum (they could point into the IP header, checked and routed already)."""
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack_from(buf)
    start += VNET_HDR_LEN
    at = start + offset
    if start != l4 or offset != CHECKSUM_AT.get(proto) or at + 2 > end:
        return False
    # The field holds the pseudo-header sum: summing from csum_start over it gives the whole sum.
    checksum = ~ones_sum(buf[start:end]) & 0xFFFF
    buf[at : at + 2] = U16.pack(checksum or 0xFFFF)  # 0 and 0xFFFF are the same sum; UDP needs the latter
    VNET_HDR.pack_into(buf, 0, flags & ~VNET_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, 0, 0)
    return True


def copied_options(options: bytes) -> bytes:
    """The options that every fragment repeats (copied flag set), padded to 32 bits (RFC 791 3.2).
    An option with a bad length ends the scan: what was read so far is kept."""
    kept = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == OPTION_END:
            break
        if kind == OPTION_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            break
        length = options[i + 1]
        if kind & OPTION_COPIED:
            kept += options[i : i + length]
        i += length
    kept += bytes(-len(kept) % 4)
    return bytes(kept)


def fragment(buf: bytes | bytearray, end: int, mtu: int) -> list[bytearray] | None:
    """Split the IPv4 packet in buf (virtio-net header, Ethernet, IPv4 up to offset end) into frames
    whose IP packets fit mtu. None: mtu cannot hold a header and 8 bytes of data.

    Each piece: a blank virtio-net header, the same Ethernet header, the IP header with its total
    length, MF (set on all but the last, which keeps the original's) and offset (the original's
    plus the piece's), and a new header checksum; the first piece keeps every option, the others
    only the copied ones. Flags are MF alone, as Linux writes them (DF is clear, or we would not be
    here; the reserved bit must be zero, RFC 791 3.1). buf's checksum must be complete (see
    complete_checksum). None too when the pieces would reach past offset 65,535.
    """
    ihl = (buf[L3] & 0x0F) * 4
    data_start = L3 + ihl
    first_header = bytes(buf[VNET_HDR_LEN:data_start])  # Ethernet + the whole IP header
    options = copied_options(bytes(buf[L3 + IPV4_MIN_LEN : data_start])) if ihl > IPV4_MIN_LEN else b""
    later_header = bytes(buf[VNET_HDR_LEN : L3 + IPV4_MIN_LEN]) + options
    later_ihl = IPV4_MIN_LEN + len(options)
    first_room = (mtu - ihl) // FRAGMENT_UNIT * FRAGMENT_UNIT
    later_room = (mtu - later_ihl) // FRAGMENT_UNIT * FRAGMENT_UNIT
    if first_room < FRAGMENT_UNIT or later_room < FRAGMENT_UNIT:
        return None
    flags_frag = buf[IP_FLAGS_FRAG] << 8 | buf[IP_FLAGS_FRAG + 1]
    base = (flags_frag & IP_FRAG_OFFSET_MASK) * FRAGMENT_UNIT  # fragmenting a fragment: offsets add
    if base + end - data_start > IPV4_MAX_LEN:
        return None
    last_mf = flags_frag & IP_MF
    pieces: list[bytearray] = []
    at = data_start
    while at < end:
        header, header_len, room = (
            (first_header, ihl, first_room) if not pieces else (later_header, later_ihl, later_room)
        )
        stop = min(at + room, end)
        piece = bytearray(ZERO_VNET_HDR + header + buf[at:stop])
        if header_len != ihl:
            piece[L3] = 0x40 | header_len // 4
        more = IP_MF if stop < end else last_mf
        offset = (base + at - data_start) // FRAGMENT_UNIT
        piece[IP_TOTAL_LEN : IP_TOTAL_LEN + 2] = U16.pack(header_len + stop - at)
        piece[IP_FLAGS_FRAG : IP_FLAGS_FRAG + 2] = U16.pack(more | offset)
        piece[IP_CSUM : IP_CSUM + 2] = b"\x00\x00"
        piece[IP_CSUM : IP_CSUM + 2] = U16.pack(internet_checksum(piece[L3 : L3 + header_len]))
        pieces.append(piece)
        at = stop
    return pieces
