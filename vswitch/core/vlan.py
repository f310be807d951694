"""802.1Q trunks: one tap carrying several segments, each tagged with its VLAN ID. Pure.

A trunk is one more kind of port, seen from the switch as one port per VLAN it carries (`T.10`,
`T.20`; the native VLAN's untagged frames, `T.native`), each on its segment: the FDB is per segment,
so one MAC may live in two VLANs, as on any VLAN-aware switch (IEEE 802.1Q 8.8, independent learning).

Where the tag lives (IEEE 802.1Q 6.9): a frame keeps the tag it arrived with while it crosses its
segment, so its priority bits (PCP) reach another trunk unchanged; the egress action of each port
then makes what that port carries:
- a trunk's VLAN port: the tag rewritten to its VID (PCP and DEI kept), or pushed (PCP 0) on a frame
  that came untagged (from an access port, or made by the router);
- a trunk's native port and an access port of a segment on a trunk: the tag popped (its PCP is lost,
  as on any switch);
and the router takes the frame untagged (popped first by the datapath: router on a stick, no code of
its own for tags). In a segment on a trunk a tagged frame therefore always came from a trunk: an
access port's tagged frames are dropped at ingress (`vlan-on-access`; a priority tag, VID 0, names no
VLAN: IEEE 802.1Q 6.9.1 takes such a frame as untagged). A double-tagged frame: the
outer tag is ours, the inner is payload. A virtio-net header's csum_start and hdr_len count from the
Ethernet header, so a push moves them on by 4 and a pop back (TSO frames keep working).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from .counters import Drop
from .wire import ETH_MIN, GSO_ECN, VNET_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN

TPID: Final = b"\x81\x00"  # IEEE 802.1Q's tag protocol identifier (customer VLAN tag)
TAG_LEN: Final = 4
VID_MIN: Final = 1  # 0 means "priority tag only" and 4095 is reserved (IEEE 802.1Q table 9-2)
VID_MAX: Final = 4094
_TCI: Final = struct.Struct("!H")
_TAGGED_MIN: Final = ETH_MIN + TAG_LEN


def tagged(pkt: bytes) -> bool:
    """Whether the frame (virtio-net header + Ethernet) carries an 802.1Q tag after its MACs."""
    return pkt[22:24] == TPID


def vid_of(pkt: bytes) -> int:
    """The VLAN ID of a tagged frame's outer tag."""
    return int(_TCI.unpack_from(pkt, 24)[0]) & 0x0FFF


def _moved(pkt: bytes, by: int) -> bytes:
    """The virtio-net header with its frame offsets (csum_start, hdr_len) moved by `by` bytes."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(pkt)
    if not flags & VNET_F_NEEDS_CSUM and not gso_type & ~GSO_ECN:
        return pkt[:VNET_HDR_LEN]
    return VNET_HDR.pack(
        flags, gso_type, hdr_len + by if hdr_len else 0, gso_size, csum_start + by, csum_offset
    )


def pop(pkt: bytes) -> bytes:
    """pkt without its outer tag."""
    if pkt[0] or pkt[1]:  # offsets to move (NEEDS_CSUM, GSO); else the header stays as it is
        return b"".join((_moved(pkt, -TAG_LEN), pkt[VNET_HDR_LEN:22], pkt[26:]))
    return pkt[:22] + pkt[26:]


def push(pkt: bytes, vid: int, tag: bytes | None = None) -> bytes:
    """pkt with a tag for vid in front of its ethertype, priority 0 (tag: those 4 bytes, made already)."""
    if tag is None:
        tag = TPID + _TCI.pack(vid)
    if pkt[0] or pkt[1]:
        return b"".join((_moved(pkt, TAG_LEN), pkt[VNET_HDR_LEN:22], tag, pkt[22:]))
    return b"".join((pkt[:22], tag, pkt[22:]))


def retag(pkt: bytes, vid: int) -> bytes:
    """pkt with its outer tag's VID set to vid, its priority (PCP) and DEI kept."""
    (tci,) = _TCI.unpack_from(pkt, 24)
    if tci & 0x0FFF == vid:
        return pkt
    return b"".join((pkt[:24], _TCI.pack((tci & 0xF000) | vid), pkt[26:]))


@dataclass
class Trunk:
    """One trunk port: its own port (where its drops are counted) and a port per VLAN it carries."""

    name: str
    port: int = -1
    by_vid: dict[int, int] = field(default_factory=dict)  # VID -> its port
    vid_of: dict[int, int] = field(default_factory=dict)  # port -> VID
    native: int | None = None  # the native segment's port: untagged frames
    tag_of: dict[int, bytes] = field(default_factory=dict)  # port -> its tag, priority 0

    def add_vlan(self, vid: int, port: int) -> None:
        self.by_vid[vid] = port
        self.vid_of[port] = vid
        self.tag_of[port] = TPID + _TCI.pack(vid)

    @property
    def ports(self) -> list[int]:
        return [*self.vid_of, *([] if self.native is None else [self.native])]

    def classify(self, pkt: bytes) -> tuple[int, Drop | None]:
        """(the port a frame read off the trunk enters by, None), or (the trunk's port, why not)."""
        if len(pkt) < ETH_MIN:
            return self.port, Drop.RUNT
        if pkt[22:24] == TPID:
            if len(pkt) < _TAGGED_MIN:
                return self.port, Drop.RUNT
            vid = _TCI.unpack_from(pkt, 24)[0] & 0x0FFF
            if vid:
                port = self.by_vid.get(vid)
                if port is None:
                    return self.port, Drop.VLAN_UNKNOWN
                return port, None
            # VID 0: a priority tag, the frame untagged as far as VLANs go (IEEE 802.1Q 6.9.1)
        if self.native is None:
            return self.port, Drop.VLAN_UNTAGGED
        return self.native, None

    def push(self, port: int, pkt: bytes) -> list[bytes]:
        """The egress action of one of the trunk's ports: pkt as the trunk carries it."""
        tag = self.tag_of.get(port)
        if tag is None:  # the native VLAN: untagged
            return [pop(pkt) if pkt[22:24] == TPID else pkt]
        vid = self.vid_of[port]
        return [retag(pkt, vid) if pkt[22:24] == TPID else push(pkt, vid, tag)]


class Untag:
    """The egress action of an access port of a segment on a trunk: what came tagged leaves untagged."""

    def push(self, port: int, pkt: bytes) -> list[bytes]:
        return [pop(pkt) if pkt[22:24] == TPID else pkt]


UNTAG: Final = Untag()
