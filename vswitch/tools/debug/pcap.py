"""The classic pcap file format (libpcap's savefile.c), written and read without scapy.

A global header (magic, version 2.4, snaplen, linktype 1 = Ethernet) and one record per frame
(seconds, microseconds, captured length, original length). Frames are Ethernet: the virtio-net header
is stripped by the caller. TSO super-frames are kept whole, so the snaplen is 262144 like tcpdump's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

MAGIC_USEC: Final = 0xA1B2C3D4
MAGIC_NSEC: Final = 0xA1B23C4D
LINKTYPE_ETHERNET: Final = 1
SNAPLEN: Final = 262144
GLOBAL: Final = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, network
RECORD: Final = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


class PcapError(Exception):
    """The file is not a pcap this reader understands."""


class PcapWriter:
    """Appends Ethernet frames to an open binary file; the global header is written at once."""

    def __init__(self, out: BinaryIO, snaplen: int = SNAPLEN) -> None:
        self.out = out
        self.snaplen = snaplen
        self.count = 0
        out.write(GLOBAL.pack(MAGIC_USEC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, timestamp: float, frame: bytes) -> None:
        seconds = int(timestamp)
        micros = min(round((timestamp - seconds) * 1_000_000), 999_999)
        kept = frame[: self.snaplen]
        self.out.write(RECORD.pack(seconds, micros, len(kept), len(frame)))
        self.out.write(kept)
        self.count += 1

    def flush(self) -> None:
        self.out.flush()


def read_pcap(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) for each record of a pcap in either byte order, micro- or nanoseconds."""
    if len(data) < GLOBAL.size:
        raise PcapError("too short for a pcap global header")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        raise PcapError("not a pcap file (pcapng is not supported: convert with `editcap -F pcap`)")
    divisor = 1e9 if magic == MAGIC_NSEC else 1e6
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype} is not Ethernet (1)")
    record = struct.Struct(order + "IIII")
    offset = GLOBAL.size
    while offset + record.size <= len(data):
        seconds, fraction, incl, _orig = record.unpack_from(data, offset)
        offset += record.size
        if offset + incl > len(data):
            raise PcapError("the last record is cut short")
        yield seconds + fraction / divisor, data[offset : offset + incl]
        offset += incl
