"""The pcap writer: scapy reads what we write (global header, records, a >MTU TSO frame whole), and
our reader reads what scapy writes."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from vswitch.tools.debug.pcap import LINKTYPE_ETHERNET, SNAPLEN, PcapWriter, read_pcap


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
