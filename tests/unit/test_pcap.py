"""The pcap writer: scapy reads what we write (global header, records, a >MTU TSO frame whole), and
our reader reads what scapy writes. The pcapng writer: scapy and tshark read back each frame's
interface (by name), direction and nanosecond timestamp; the blocks are laid out and padded as the
format says."""

from __future__ import annotations

import io
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader, rdpcap, wrpcap

from vswitch.tools.debug.pcap import (
    INBOUND,
    LINKTYPE_ETHERNET,
    OUTBOUND,
    SNAPLEN,
    PcapError,
    PcapNgWriter,
    PcapWriter,
    read_pcap,
)


def test_scapy_reads_our_pcap(tmp_path: Path) -> None:
    frames = [
        bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="10.0.0.2") / ICMP()),
        bytes(Ether() / IP() / TCP() / bytes(60000)),  # a TSO super-frame, far over the MTU
    ]
    path = tmp_path / "x.pcap"
    with open(path, "wb") as out:
        writer = PcapWriter(out)
        writer.write(1700000000.25, frames[0])
        writer.write(1700000001.5, frames[1])
    assert writer.count == 2
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == frames
    assert float(packets[0].time) == 1700000000.25
    assert packets[0][ICMP].type == 8
    magic, major, minor, _zone, _sig, snaplen, linktype = struct.unpack_from("<IHHiIII", path.read_bytes())
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, LINKTYPE_ETHERNET)
    assert snaplen == SNAPLEN > 65535


def test_we_read_scapys_pcap(tmp_path: Path) -> None:
    pkts = [Ether() / IP(dst=f"10.0.0.{i}") / ICMP() for i in range(1, 4)]
    path = tmp_path / "s.pcap"
    wrpcap(str(path), pkts)
    got = list(read_pcap(path.read_bytes()))
    assert [f for _t, f in got] == [bytes(p) for p in pkts]


def test_record_header_lengths() -> None:
    out = io.BytesIO()
    PcapWriter(out).write(2.000001, b"\x01" * 20)
    data = out.getvalue()
    assert struct.unpack_from("<IIII", data, 24) == (2, 1, 20, 20)
    assert data[40:] == b"\x01" * 20


# --- pcapng ------------------------------------------------------------------------------------------
T0 = 1_700_000_000_123_456_789  # ns: the last three digits are lost at microsecond resolution


def pcapng_frames() -> list[tuple[str, int, bytes, int]]:
    """(interface, ns, frame, direction): an echo request in on ns1 and out on ns2, the reply back."""
    request = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()
    )
    reply = bytes(
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        / IP(src="10.0.0.2", dst="10.0.0.1")
        / ICMP(type=0)
        / b"odd"  # a frame length that is not a multiple of 4: the EPB is padded
    )
    return [
        ("ns1", T0, request, INBOUND),
        ("ns2", T0 + 1_001, request, OUTBOUND),
        ("ns2", T0 + 50_000, reply, INBOUND),
        ("ns1", T0 + 50_999, reply, OUTBOUND),
    ]


def write_pcapng(path: Path, interfaces: list[str]) -> list[tuple[str, int, bytes, int]]:
    frames = pcapng_frames()
    with open(path, "wb") as out:
        writer = PcapNgWriter(out, interfaces)
        for name, ns, frame, direction in frames:
            writer.write(name, ns, frame, direction)
    assert writer.count == len(frames)
    return frames


def test_scapy_reads_our_pcapng_with_interfaces_directions_and_nanoseconds(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    frames = write_pcapng(path, ["ns1", "ns2", "idle"])
    data = path.read_bytes()
    assert len(data) % 4 == 0
    assert struct.unpack_from("<II", data) == (0x0A0D0D0A, struct.unpack_from("<I", data, 4)[0])
    assert struct.unpack_from("<I", data, 8)[0] == 0x1A2B3C4D  # little-endian section

    reader = PcapNgReader(str(path))
    packets = list(reader)
    reader.close()
    names = [options.get("name") for _linktype, _snaplen, options in reader.interfaces]
    assert names == [b"ns1", b"ns2", b"idle"]  # an interface with no frame is still described
    assert [options["tsresol"] for _l, _s, options in reader.interfaces] == [10**9] * 3
    assert [linktype for linktype, _s, _o in reader.interfaces] == [LINKTYPE_ETHERNET] * 3
    assert [bytes(p) for p in packets] == [f for _n, _t, f, _d in frames]
    assert [p.sniffed_on for p in packets] == [n for n, _t, _f, _d in frames]
    assert [p.direction for p in packets] == [d for _n, _t, _f, d in frames] == [1, 2, 1, 2]
    assert [int(p.time * 10**9) for p in packets] == [t for _n, t, _f, _d in frames]  # to the ns
    assert packets[0][ICMP].type == 8 and packets[3][ICMP].type == 0


def test_tshark_reads_our_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    frames = write_pcapng(path, ["ns1", "ns2"])
    fields = ["frame.interface_name", "frame.packet_flags_direction", "frame.time_epoch", "icmp.type"]
    shark = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in shark.stdout.splitlines()]
    assert [(r[0], int(r[1], 0), r[3]) for r in rows] == [  # tshark 4.0 prints 0x00000001
        ("ns1", INBOUND, "8"),
        ("ns2", OUTBOUND, "8"),
        ("ns2", INBOUND, "0"),
        ("ns1", OUTBOUND, "0"),
    ]
    for row, (_n, ns, _f, _d) in zip(rows, frames, strict=True):
        seconds, fraction = row[2].split(".")
        assert int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9]) == ns  # nanoseconds kept


def test_pcapng_block_layout() -> None:
    out = io.BytesIO()
    writer = PcapNgWriter(out, ["abcde"])  # a 5-byte name: its option is padded to 8
    header = out.getvalue()
    shb_len = struct.unpack_from("<I", header, 4)[0]
    assert struct.unpack_from("<I", header, shb_len - 4)[0] == shb_len
    idb = header[shb_len:]
    kind, total, linktype, _reserved, snaplen = struct.unpack_from("<IIHHI", idb)
    assert (kind, total, linktype, snaplen) == (1, len(idb), LINKTYPE_ETHERNET, SNAPLEN)
    options = idb[16:-4]
    assert options == (
        struct.pack("<HH", 2, 5) + b"abcde\0\0\0"  # if_name
        + struct.pack("<HH", 9, 1) + b"\x09\0\0\0"  # if_tsresol = 9: nanoseconds
        + struct.pack("<HH", 0, 0)
    )  # fmt: skip
    writer.write("abcde", (5 << 32) + 7, b"\x01" * 13, OUTBOUND)
    epb = out.getvalue()[len(header) :]
    kind, total, ifid, high, low, caplen, origlen = struct.unpack_from("<IIIIIII", epb)
    assert (kind, total, ifid, high, low, caplen, origlen) == (6, len(epb), 0, 5, 7, 13, 13)
    assert epb[28:44] == b"\x01" * 13 + b"\0\0\0"
    assert epb[44:-4] == struct.pack("<HHI", 2, 4, OUTBOUND) + struct.pack("<HH", 0, 0)  # epb_flags
    writer.write("abcde", 1, b"\x02" * 4)  # direction unknown: no options at all
    assert len(out.getvalue()) - len(header) - len(epb) == 32 + 4


def test_pcapng_refuses_no_or_repeated_interfaces() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PcapNgWriter(io.BytesIO(), [])
    with pytest.raises(ValueError, match="repeat"):
        PcapNgWriter(io.BytesIO(), ["a", "a"])


# --- reading pcapng (trace --pcap) -------------------------------------------------------------------
def test_we_read_our_pcapng_frames_and_times(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    frames = write_pcapng(path, ["ns1", "ns2", "idle"])
    got = list(read_pcap(path.read_bytes()))
    assert [frame for _t, frame in got] == [frame for _i, _ns, frame, _d in frames]
    for (stamp, _frame), (_i, ns, _f, _d) in zip(got, frames, strict=True):
        assert stamp == pytest.approx(ns / 1e9, abs=1e-6)  # a float of epoch seconds: ~0.2 us apart


def test_we_read_scapys_pcapng_in_microseconds(tmp_path: Path) -> None:
    from scapy.utils import PcapNgWriter as ScapyPcapNgWriter

    packets = [Ether() / IP(dst="10.0.0.2") / ICMP(), Ether() / IP(dst="10.0.0.3") / TCP()]
    for packet, stamp in zip(packets, (1700000000.5, 1700000002.25), strict=True):
        packet.time = stamp
    path = tmp_path / "scapy.pcapng"
    with ScapyPcapNgWriter(str(path)) as writer:
        for packet in packets:
            writer.write(packet)
    got = list(read_pcap(path.read_bytes()))
    assert [frame for _t, frame in got] == [bytes(p) for p in packets]
    assert [t for t, _f in got] == pytest.approx([1700000000.5, 1700000002.25], abs=1e-6)


@pytest.mark.parametrize(
    "damage",
    [
        "cut in a block",
        "a block longer than the file",
        "a packet of an undescribed interface",
        "not Ethernet",
    ],
)
def test_a_damaged_pcapng_is_one_pcap_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x.pcapng"
    write_pcapng(path, ["ns1", "ns2"])
    data = bytearray(path.read_bytes())
    shb_length = struct.unpack_from("<I", data, 4)[0]
    first_idb = shb_length
    if damage == "cut in a block":
        data = data[: len(data) - 7]
    elif damage == "a block longer than the file":
        struct.pack_into("<I", data, first_idb + 4, len(data) * 2)
    elif damage == "a packet of an undescribed interface":
        idb_length = struct.unpack_from("<I", data, first_idb + 4)[0]
        epb = first_idb + 2 * idb_length  # after the two interface descriptions
        assert struct.unpack_from("<I", data, epb)[0] == 6
        struct.pack_into("<I", data, epb + 8, 7)
    else:
        struct.pack_into("<H", data, first_idb + 8, 101)  # LINKTYPE_RAW
    with pytest.raises(PcapError):
        list(read_pcap(bytes(data)))
