"""Capture files written without scapy: classic pcap (one port) and pcapng (ports and directions).

Classic pcap (libpcap's savefile.c): a global header (magic, version 2.4, snaplen, linktype 1 =
Ethernet) and one record per frame (seconds, microseconds, captured length, original length). It has
no place for the port or the direction of a frame.

pcapng (draft-ietf-opsawg-pcapng), little-endian: a Section Header Block, one Interface Description
Block per port (its name in if_name, if_tsresol = 9: nanoseconds), then one Enhanced Packet Block per
frame, on the interface of its port, with the direction in the epb_flags option (bits 0-1: 01 inbound,
10 outbound). Every block and option is padded to 32 bits. scapy's PcapNgWriter (2.8) is not used: it
has no if_tsresol (microseconds only, from a float), always writes an unnamed interface 0 first and
writes only to a file it opens itself.

Frames are Ethernet: the virtio-net header is stripped by the caller. TSO super-frames are kept whole,
so the snaplen is 262144 like tcpdump's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
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


# --- pcapng ---------------------------------------------------------------------------------------------
BLOCK_SHB: Final = 0x0A0D0D0A
BLOCK_IDB: Final = 0x00000001
BLOCK_EPB: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
OPT_ENDOFOPT: Final = 0
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_TSRESOL: Final = 9
EPB_FLAGS: Final = 2
OPT_COMMENT: Final = 1  # UTF-8, any block (pcapng section 3.5)
INBOUND: Final = 1  # epb_flags bits 0-1
OUTBOUND: Final = 2
TSRESOL_NS: Final = 9  # 10^-9 s


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


def _options(*options: tuple[int, bytes]) -> bytes:
    """Options (code, length, value padded to 32 bits) and opt_endofopt; nothing for no options."""
    if not options:
        return b""
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value) for code, value in options)
    return body + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    """Type, total length, the body padded to 32 bits, the total length again."""
    body = _pad(body)
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapNgWriter:
    """Appends Ethernet frames of several interfaces to an open binary file, nanosecond timestamps.

    The section header and one interface description per name (ids 0, 1, ... in the given order) are
    written at once, so an interface that sees no frame is still in the file.
    """

    def __init__(
        self, out: BinaryIO, interfaces: Sequence[str], snaplen: int = SNAPLEN, application: str = "vswitch"
    ) -> None:
        if not interfaces:
            raise ValueError("a pcapng capture needs at least one interface")
        if len(set(interfaces)) != len(interfaces):
            raise ValueError(f"interface names repeat: {', '.join(interfaces)}")
        self.out = out
        self.snaplen = snaplen
        self.count = 0
        self.ids = {name: index for index, name in enumerate(interfaces)}
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # version 1.0, section length unknown
        out.write(_block(BLOCK_SHB, shb + _options((SHB_USERAPPL, application.encode()))))
        for name in interfaces:
            idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen)
            opts = _options((IF_NAME, name.encode()), (IF_TSRESOL, bytes([TSRESOL_NS])))
            out.write(_block(BLOCK_IDB, idb + opts))

    def write(
        self,
        interface: str,
        timestamp_ns: int,
        frame: bytes,
        direction: int | None = None,
        comment: str | None = None,
    ) -> None:
        """One frame seen on interface at timestamp_ns (ns since the epoch); direction INBOUND,
        OUTBOUND or None (not known: no epb_flags); a comment (Wireshark shows it) if given."""
        kept = frame[: self.snaplen]
        header = struct.pack(
            "<IIIII",
            self.ids[interface],
            timestamp_ns >> 32,
            timestamp_ns & 0xFFFFFFFF,
            len(kept),
            len(frame),
        )
        options = [] if direction is None else [(EPB_FLAGS, struct.pack("<I", direction & 3))]
        if comment is not None:
            options.append((OPT_COMMENT, comment.encode()))
        opts = _options(*options)
        self.out.write(_block(BLOCK_EPB, header + _pad(kept) + opts))
        self.count += 1

    def flush(self) -> None:
        self.out.flush()


def read_pcap(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) for each record of a pcap in either byte order, micro- or nanoseconds, or of
    a pcapng (what `capture -w FILE.pcapng` writes, or tshark and Wireshark)."""
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == BLOCK_SHB:
        yield from read_pcapng(data)
        return
    if len(data) < GLOBAL.size:
        raise PcapError("too short for a pcap global header")
    for order in ("<", ">"):
        magic = struct.unpack_from(order + "I", data)[0]
        if magic in (MAGIC_USEC, MAGIC_NSEC):
            break
    else:
        raise PcapError("neither a pcap nor a pcapng file")
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


BLOCK_SPB: Final = 0x00000003  # simple packet block: no interface id, no timestamp


def read_pcapng(data: bytes) -> Iterator[tuple[float, bytes]]:
    """(timestamp, frame) for each packet of a pcapng (RFC draft-ietf-opsawg-pcapng): enhanced and
    simple packet blocks of Ethernet interfaces, each interface's if_tsresol honoured; other blocks are
    passed over. Every length is checked against the data, so a cut or corrupt file is a PcapError."""
    offset = 0
    order = "<"
    resolutions: list[float] = []  # per interface of the current section: seconds per tick
    while offset < len(data):
        if offset + 12 > len(data):
            raise PcapError("a pcapng block is cut short")
        if struct.unpack_from("<I", data, offset)[0] == BLOCK_SHB:  # a section: its byte order
            magic = data[offset + 8 : offset + 12]
            order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(magic, "")
            if not order:
                raise PcapError("a pcapng section header with an unknown byte-order magic")
            resolutions = []
        block_type, length = struct.unpack_from(order + "II", data, offset)
        if length < 12 or length % 4 or offset + length > len(data):
            raise PcapError(f"a pcapng block of {length} bytes at offset {offset} does not fit the file")
        body = data[offset + 8 : offset + length - 4]
        offset += length
        if block_type == BLOCK_IDB:
            resolutions.append(_interface(body, order))
        elif block_type == BLOCK_EPB:
            yield _enhanced(body, order, resolutions)
        elif block_type == BLOCK_SPB:
            if len(body) < 4:
                raise PcapError("a simple packet block is too short")
            (original,) = struct.unpack_from(order + "I", body)
            yield 0.0, body[4 : 4 + original]


def _interface(body: bytes, order: str) -> float:
    """An interface description: Ethernet only; its timestamps' resolution (default microseconds)."""
    if len(body) < 8:
        raise PcapError("an interface description block is too short")
    linktype = struct.unpack_from(order + "H", body)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype} is not Ethernet (1)")
    resolution = 1e-6
    at = 8
    while at + 4 <= len(body):
        code, size = struct.unpack_from(order + "HH", body, at)
        if code == 0:  # opt_endofopt
            break
        value = body[at + 4 : at + 4 + size]
        if code == IF_TSRESOL and size == 1:
            exponent = value[0] & 0x7F
            resolution = 2.0**-exponent if value[0] & 0x80 else 10.0**-exponent
        at += 4 + size + (-size % 4)
    return resolution


def _enhanced(body: bytes, order: str, resolutions: list[float]) -> tuple[float, bytes]:
    if len(body) < 20:
        raise PcapError("an enhanced packet block is too short")
    interface, high, low, captured, _original = struct.unpack_from(order + "IIIII", body)
    if interface >= len(resolutions):
        raise PcapError(f"a packet names interface {interface}, which the file does not describe")
    if 20 + captured > len(body):
        raise PcapError("an enhanced packet block's frame is cut short")
    return ((high << 32) | low) * resolutions[interface], body[20 : 20 + captured]
