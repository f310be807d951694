"""Offloaded frames finished in software (gso.py) and pushed into a VXLAN tunnel (Tunnel.push).

Every input is built as the kernel's tap hands it over: NEEDS_CSUM with the L4 checksum field holding
the folded pseudo-header sum (not complemented) and csum_start at the L4 header; a TSO/USO
super-frame with gso_size. Every output is parsed and checked by scapy: the checksums verify, the
segments carry the original payload in order, and the headers say what the kernel's own segmentation
(tcp_gso_segment, __udp_gso_segment) would say.
"""

from __future__ import annotations

import random
import struct

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from vswitch.core.counters import Drop
from vswitch.core.gso import GsoError, complete, segment
from vswitch.core.vxlan import SPORT_BASE, Tunnel
from vswitch.core.wire import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    ZERO_VNET_HDR,
)

SRC_MAC, DST_MAC = "02:00:00:00:01:01", "02:00:00:00:01:02"
SRC4, DST4 = "10.1.0.2", "10.1.0.3"
SRC6, DST6 = "fd00:1::2", "fd00:1::3"
LOCAL, REMOTE = "198.18.5.1", "198.18.5.2"
MTU = 1450
REMOTE_PORT = 7
TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (11, 22))]  # a 32-byte TCP header
PROTO_TCP, PROTO_UDP = 6, 17


# --- building frames as a tap hands them over ---------------------------------------------------------
def stamped(size: int) -> bytes:
    """A payload no two stretches of which look alike: a piece out of place or missing shows."""
    return b"".join(struct.pack("!H", i & 0xFFFF) for i in range((size + 1) // 2))[:size]


def tcp4(
    payload: bytes, flags: str = "A", ip_id: int = 0x1234, seq: int = 1000, vlan: int | None = None
) -> Packet:
    ip = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", ttl=61, tos=0x10)
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, window=501, options=TS_OPTIONS)
    return with_ether(ip / tcp / Raw(payload), vlan)


def tcp6(payload: bytes, flags: str = "A", seq: int = 1000) -> Packet:
    ip = IPv6(src=SRC6, dst=DST6, hlim=61, tc=0x10, fl=0x12345)
    tcp = TCP(sport=40000, dport=5201, seq=seq, ack=777, flags=flags, window=501, options=TS_OPTIONS)
    return with_ether(ip / tcp / Raw(payload), None)


def udp4(payload: bytes, ip_id: int = 0x1234, vlan: int | None = None) -> Packet:
    ip = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF", ttl=61)
    return with_ether(ip / UDP(sport=40001, dport=5353) / Raw(payload), vlan)


def udp6(payload: bytes) -> Packet:
    return with_ether(IPv6(src=SRC6, dst=DST6, hlim=61) / UDP(sport=40001, dport=5353) / Raw(payload), None)


def with_ether(inner: Packet, vlan: int | None) -> Packet:
    head = Ether(src=SRC_MAC, dst=DST_MAC)
    pkt = head / Dot1Q(vlan=vlan) / inner if vlan is not None else head / inner
    return Ether(raw(pkt))  # dissected: every length and offset filled in


def sum16(data: bytes) -> int:
    """The folded one's-complement sum of data (RFC 1071), computed here, not borrowed from vswitch."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def network(pkt: Packet) -> Packet:
    layer: Packet = pkt[IP] if IP in pkt else pkt[IPv6]
    return layer


def transport(pkt: Packet) -> Packet:
    layer: Packet = pkt[TCP] if TCP in pkt else pkt[UDP]
    return layer


def offloaded(pkt: Packet, gso_type: int = GSO_NONE, gso_size: int = 0) -> bytes:
    """pkt as a tap hands it over with NEEDS_CSUM (and GSO when gso_type says so): the L4 checksum
    field holds the folded pseudo-header sum over the frame's L4 length, uncomplemented; csum_start is
    the L4 header's offset from the Ethernet header; hdr_len ends the L4 header."""
    data = bytearray(raw(pkt))
    l4 = transport(pkt)
    start = len(data) - len(raw(l4))
    l4_len = len(data) - start
    is_tcp = isinstance(l4, TCP)
    offset = 16 if is_tcp else 6
    ip = network(pkt)
    proto = PROTO_TCP if is_tcp else PROTO_UDP
    if isinstance(ip, IP):
        pseudo = sum16(raw(ip)[12:20] + struct.pack("!HH", proto, l4_len))
    else:
        pseudo = sum16(raw(ip)[8:40] + struct.pack("!IHH", l4_len, 0, proto))
    data[start + offset : start + offset + 2] = struct.pack("!H", pseudo)
    hdr_len = start + (l4.dataofs * 4 if is_tcp else 8)
    header = VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_type, hdr_len if gso_type else 0, gso_size, start, offset)
    return bytes(header) + bytes(data)


# --- checking what comes out --------------------------------------------------------------------------
def verifies(frame: bytes) -> bool:
    """The frame's IPv4 header checksum (if any) and its L4 checksum verify, as scapy computes them
    over the pseudo-header and the segment as sent (a correct checksum makes the sum come out 0)."""
    pkt = Ether(frame)
    ip, l4 = network(pkt), transport(pkt)
    proto = PROTO_TCP if isinstance(l4, TCP) else PROTO_UDP
    if isinstance(ip, IP):
        header = raw(ip)[: ip.ihl * 4]
        data = raw(l4)[: ip.len - ip.ihl * 4]
        return bool(checksum(header) == 0 and in4_chksum(proto, ip, data) == 0)
    data = raw(l4)[: ip.plen]
    return bool(in6_chksum(proto, ip, data) == 0)  # type: ignore[no-untyped-call]


def scapy_complete(pkt: Packet) -> bytes:
    """pkt with every checksum computed by scapy itself: what a NIC would have put on the wire."""
    copy = pkt.copy()
    del transport(copy).chksum
    if IP in copy:
        del copy[IP].chksum
    return bytes(raw(copy))


def tunnel(mtu: int = MTU) -> Tunnel:
    t = Tunnel(42, 0, 100, LOCAL, mtu=mtu)
    t.add_remote(REMOTE, REMOTE_PORT)
    return t


def pushed(pkt: bytes, mtu: int = MTU) -> list[bytes]:
    """The inner frames of what Tunnel.push sends for pkt, each outer header checked on the way."""
    packets = tunnel(mtu).push(REMOTE_PORT, pkt)
    assert isinstance(packets, list), packets
    inners = []
    for packet in packets:
        outer = IP(packet)
        assert (outer.src, outer.dst, outer.proto) == (LOCAL, REMOTE, PROTO_UDP)
        udp = outer[UDP]
        assert udp.len == len(packet) - 20
        vxlan = VXLAN(raw(udp.payload))
        assert (vxlan.flags, vxlan.vni) == (0x08, 42)
        inners.append(packet[36:])
    return inners


def segments_of(pkt: bytes) -> list[bytes]:
    """segment()'s frames, each checked to carry a zeroed virtio-net header (a complete frame)."""
    frames = segment(pkt)
    assert all(f[:10] == ZERO_VNET_HDR for f in frames)
    return [f[10:] for f in frames]


def payload_of(frame: bytes) -> bytes:
    pkt = Ether(frame)
    ip, l4 = network(pkt), transport(pkt)
    l4_bytes = raw(l4)[: ip.len - ip.ihl * 4] if isinstance(ip, IP) else raw(l4)[: ip.plen]
    header = l4.dataofs * 4 if isinstance(l4, TCP) else 8
    return bytes(l4_bytes[header:])


# --- NEEDS_CSUM: the checksum finished --------------------------------------------------------------
PARTIAL_CASES = {
    "tcp4": tcp4(stamped(333), flags="PA"),
    "udp4": udp4(stamped(333)),
    "tcp6": tcp6(stamped(333), flags="PA"),
    "udp6": udp6(stamped(333)),
    "tcp4-vlan": tcp4(stamped(100), vlan=7),
    "odd-length": udp4(stamped(1)),
}


@pytest.mark.parametrize("name", list(PARTIAL_CASES))
def test_complete_writes_the_checksum_scapy_computes_and_zeroes_the_header(name: str) -> None:
    pkt = PARTIAL_CASES[name]
    finished = complete(offloaded(pkt))
    assert finished[:10] == ZERO_VNET_HDR
    assert verifies(finished[10:])
    assert finished[10:] == scapy_complete(pkt)  # and nothing else in the frame changed


@pytest.mark.parametrize("name", list(PARTIAL_CASES))
def test_push_of_a_needs_csum_frame_sends_it_with_its_checksum_finished(name: str) -> None:
    pkt = PARTIAL_CASES[name]
    (inner,) = pushed(offloaded(pkt))
    assert verifies(inner)
    assert inner == scapy_complete(pkt)


def zero_sum_udp(vlan: int | None = None) -> Packet:
    """A UDP datagram whose complete checksum computes to 0: its first payload word is the checksum
    the datagram has with that word 0, which brings the sum to 0xFFFF (RFC 1071)."""
    pkt = udp4(bytes(2) + stamped(60), vlan=vlan)
    filler = Ether(scapy_complete(pkt))[UDP].chksum
    return udp4(struct.pack("!H", filler) + stamped(60), vlan=vlan)


def test_a_udp_checksum_that_computes_to_zero_is_sent_as_ffff() -> None:
    """RFC 768: a transmitted 0 means no checksum; the kernel writes CSUM_MANGLED_0 (0xFFFF)."""
    pkt = zero_sum_udp()
    (inner,) = pushed(offloaded(pkt))
    assert Ether(inner)[UDP].chksum == 0xFFFF
    assert verifies(inner)
    assert complete(offloaded(pkt))[10:] == inner


def test_a_uso_segment_whose_checksum_computes_to_zero_is_sent_as_ffff() -> None:
    """The first of two datagrams has a checksum of 0 as a datagram of its own: it goes as 0xFFFF."""
    first = zero_sum_udp()
    piece = payload_of(raw(first))
    pkt = udp4(piece + stamped(40))
    one, two = pushed(offloaded(pkt, GSO_UDP_L4, len(piece)))
    assert Ether(one)[UDP].chksum == 0xFFFF
    assert verifies(one) and verifies(two)
    assert payload_of(one) == piece


def test_complete_leaves_a_frame_without_promises_alone_and_zeroes_data_valid() -> None:
    frame = raw(udp4(stamped(50)))
    plain = ZERO_VNET_HDR + frame
    assert complete(plain) == plain
    valid = VNET_HDR.pack(VNET_F_DATA_VALID, 0, 0, 0, 0, 0) + frame
    assert complete(valid) == plain


def test_complete_refuses_a_gso_frame_and_offsets_outside_the_frame() -> None:
    pkt = offloaded(tcp4(stamped(3000)), GSO_TCPV4, 1000)
    with pytest.raises(GsoError):
        complete(pkt)
    frame = raw(udp4(stamped(50)))
    for start, offset in ((len(frame) + 1, 0), (len(frame) - 8, 7), (34, len(frame))):
        with pytest.raises(GsoError):
            complete(VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, start, offset) + frame)


# --- TSO and USO: super-frames cut into segments ----------------------------------------------------
def check_tcp_segments(frames: list[bytes], original: Packet, gso_size: int) -> None:
    """What tcp_gso_segment makes of original: pieces of gso_size in order, sequence numbers advancing
    by the payload, the IPv4 id counting up from the first (wrapping at 16 bits), every length and
    checksum right, FIN and PSH on the last segment only, CWR on the first only, all else kept."""
    data = payload_of(raw(original))
    expected = -(-len(data) // gso_size)
    assert len(frames) == expected
    head = Ether(raw(original))
    ip0, tcp0 = network(head), head[TCP]
    sent = b""
    for index, frame in enumerate(frames):
        pkt = Ether(frame)
        ip, tcp = network(pkt), pkt[TCP]
        piece = payload_of(frame)
        assert 0 < len(piece) <= gso_size
        if index < expected - 1:
            assert len(piece) == gso_size
        assert (pkt.src, pkt.dst) == (head.src, head.dst)
        assert (tcp.sport, tcp.dport, tcp.ack, tcp.window) == (tcp0.sport, tcp0.dport, tcp0.ack, tcp0.window)
        assert tcp.options == tcp0.options
        assert tcp.seq == (tcp0.seq + len(sent)) & 0xFFFFFFFF
        l3 = 18 if Dot1Q in pkt else 14
        if isinstance(ip, IP):
            assert ip.id == (ip0.id + index) & 0xFFFF
            assert ip.len == 20 + tcp.dataofs * 4 + len(piece) == len(frame) - l3
            assert (ip.ttl, ip.tos, ip.flags, ip.frag) == (ip0.ttl, ip0.tos, ip0.flags, 0)
        else:
            assert ip.plen == tcp.dataofs * 4 + len(piece) == len(frame) - l3 - 40
            assert (ip.hlim, ip.tc, ip.fl) == (ip0.hlim, ip0.tc, ip0.fl)
        last, first = index == expected - 1, index == 0
        assert bool(tcp.flags.F) == (last and bool(tcp0.flags.F))
        assert bool(tcp.flags.P) == (last and bool(tcp0.flags.P))
        assert bool(tcp.flags.C) == (first and bool(tcp0.flags.C))
        assert bool(tcp.flags.A) == bool(tcp0.flags.A)
        assert bool(tcp.flags.E) == bool(tcp0.flags.E)
        assert verifies(frame)
        sent += piece
    assert sent == data


TSO_CASES = {
    # name: (packet, gso type, gso_size)
    "v4-three": (tcp4(stamped(4000), flags="CEFPA"), GSO_TCPV4, 1398),
    "v4-exact-multiple": (tcp4(stamped(3000), flags="FPA"), GSO_TCPV4, 1000),
    "v4-ecn-type": (tcp4(stamped(2500), flags="CPA"), GSO_TCPV4 | GSO_ECN, 1200),
    "v4-odd-tail": (tcp4(stamped(2001), flags="PA"), GSO_TCPV4, 1000),
    "v4-one-segment": (tcp4(stamped(900), flags="CFPA"), GSO_TCPV4, 1000),
    "v4-id-and-seq-wrap": (tcp4(stamped(5000), ip_id=0xFFFE, seq=0xFFFFF000), GSO_TCPV4, 1000),
    "v4-vlan": (tcp4(stamped(3000), flags="FPA", vlan=5), GSO_TCPV4, 1398),
    "v6-three": (tcp6(stamped(4000), flags="CEFPA"), GSO_TCPV6, 1378),
    "v6-odd-tail": (tcp6(stamped(2001), flags="PA", seq=0xFFFFFFFF), GSO_TCPV6, 1000),
}


@pytest.mark.parametrize("name", list(TSO_CASES))
def test_segment_cuts_a_tso_frame_as_the_kernel_does(name: str) -> None:
    pkt, kind, size = TSO_CASES[name]
    check_tcp_segments(segments_of(offloaded(pkt, kind, size)), pkt, size)


@pytest.mark.parametrize("name", list(TSO_CASES))
def test_push_of_a_tso_frame_sends_each_segment_in_its_own_packet_from_one_source_port(name: str) -> None:
    pkt, kind, size = TSO_CASES[name]
    check_tcp_segments(pushed(offloaded(pkt, kind, size)), pkt, size)
    packets = tunnel().push(REMOTE_PORT, offloaded(pkt, kind, size))
    assert isinstance(packets, list)
    ports = {IP(p)[UDP].sport for p in packets}
    assert len(ports) == 1 and SPORT_BASE <= ports.pop() <= 0xFFFF  # one flow, one underlay path


def test_the_checksum_field_of_a_tso_frame_does_not_matter() -> None:
    """The super-frame's field holds a sum over its whole length; each segment's is made afresh."""
    pkt = tcp4(stamped(3000))
    good = offloaded(pkt, GSO_TCPV4, 1000)
    scrambled = bytearray(good)
    at = 10 + 34 + 16
    scrambled[at : at + 2] = b"\x12\x34"
    assert segment(bytes(scrambled)) == segment(good)


def check_udp_segments(frames: list[bytes], original: Packet, gso_size: int) -> None:
    """What __udp_gso_segment makes: datagrams of gso_size each, with their own length and checksum,
    the IPv4 id counting up from the first."""
    data = payload_of(raw(original))
    assert len(frames) == -(-len(data) // gso_size)
    head = Ether(raw(original))
    ip0, udp0 = network(head), head[UDP]
    sent = b""
    for index, frame in enumerate(frames):
        pkt = Ether(frame)
        ip, udp = network(pkt), pkt[UDP]
        piece = payload_of(frame)
        assert 0 < len(piece) <= gso_size
        assert (udp.sport, udp.dport, udp.len) == (udp0.sport, udp0.dport, 8 + len(piece))
        if isinstance(ip, IP):
            assert (ip.id, ip.len) == ((ip0.id + index) & 0xFFFF, 20 + 8 + len(piece))
        else:
            assert ip.plen == 8 + len(piece)
        assert udp.chksum != 0
        assert verifies(frame)
        sent += piece
    assert sent == data


USO_CASES = {
    "v4": (udp4(stamped(3500)), 1000),
    "v4-vlan": (udp4(stamped(2000), vlan=9), 1000),
    "v4-id-wrap": (udp4(stamped(3000), ip_id=0xFFFF), 1200),
    "v6": (udp6(stamped(3500)), 1000),
    "v6-odd": (udp6(stamped(2999)), 1000),
}


@pytest.mark.parametrize("name", list(USO_CASES))
def test_segment_cuts_a_uso_frame_into_datagrams(name: str) -> None:
    pkt, size = USO_CASES[name]
    check_udp_segments(segments_of(offloaded(pkt, GSO_UDP_L4, size)), pkt, size)


@pytest.mark.parametrize("name", list(USO_CASES))
def test_push_of_a_uso_frame_sends_each_datagram_in_its_own_packet(name: str) -> None:
    pkt, size = USO_CASES[name]
    check_udp_segments(pushed(offloaded(pkt, GSO_UDP_L4, size)), pkt, size)


def test_a_uso_frame_with_a_short_payload_is_still_cut() -> None:
    """UDP_SEGMENT allows any gso_size: 10 bytes of payload cut at 4 are 3 datagrams (the kernel's
    __udp_gso_segment only asks for more payload than one gso_size). The UDP header is 8 bytes; no
    20-byte L4 header is needed behind csum_start."""
    pkt = udp4(stamped(10))
    check_udp_segments(segments_of(offloaded(pkt, GSO_UDP_L4, 4)), pkt, 4)


# --- the tunnel's MTU, checked per segment ----------------------------------------------------------
def test_a_segment_of_exactly_the_tunnel_mtu_passes_and_one_byte_more_is_too_big() -> None:
    # IPv4 20 + TCP 32 + gso_size: the segments' IP length
    fits = offloaded(tcp4(stamped(4000)), GSO_TCPV4, MTU - 52)
    frames = pushed(fits)
    assert max(Ether(f)[IP].len for f in frames) == MTU
    over = offloaded(tcp4(stamped(4000)), GSO_TCPV4, MTU - 51)
    assert tunnel().push(REMOTE_PORT, over) == Drop.VXLAN_TOO_BIG


def test_a_tso_frame_whose_last_segment_alone_fits_is_still_too_big() -> None:
    """One segment over the MTU is enough: nothing of the super-frame goes (no partial stream)."""
    pkt = offloaded(tcp4(stamped(MTU)), GSO_TCPV4, MTU - 51)
    assert tunnel().push(REMOTE_PORT, pkt) == Drop.VXLAN_TOO_BIG


@pytest.mark.parametrize("vlan", [None, 3])
def test_a_plain_frame_of_exactly_the_mtu_passes_and_one_byte_more_is_dropped(vlan: int | None) -> None:
    """The MTU counts the IP packet; a VLAN tag is 4 bytes more on the wire, as on any 802.1Q link."""
    at_mtu = udp4(stamped(MTU - 28), vlan=vlan)
    (inner,) = pushed(ZERO_VNET_HDR + raw(at_mtu))
    assert inner == raw(at_mtu)
    assert len(inner) == MTU + 14 + (4 if vlan is not None else 0)
    over = udp4(stamped(MTU - 27), vlan=vlan)
    assert tunnel().push(REMOTE_PORT, ZERO_VNET_HDR + raw(over)) == Drop.VXLAN_TOO_BIG


def test_an_untagged_frame_does_not_get_the_vlan_allowance() -> None:
    """4 bytes over the MTU without a tag: too big (an Ethernet type of 0x8100 is what earns them)."""
    over = udp4(stamped(MTU - 28 + 4))
    assert tunnel().push(REMOTE_PORT, ZERO_VNET_HDR + raw(over)) == Drop.VXLAN_TOO_BIG


def test_a_tagged_tso_segment_gets_the_vlan_allowance() -> None:
    pkt = tcp4(stamped(3000), vlan=4)
    frames = pushed(offloaded(pkt, GSO_TCPV4, MTU - 52))
    assert max(Ether(f)[IP].len for f in frames) == MTU
    assert all(Ether(f)[Dot1Q].vlan == 4 for f in frames)
    over = offloaded(pkt, GSO_TCPV4, MTU - 51)
    assert tunnel().push(REMOTE_PORT, over) == Drop.VXLAN_TOO_BIG


# --- bad virtio-net headers: a named drop, never an exception ---------------------------------------
def with_header(
    pkt: Packet | bytes, flags: int, gso_type: int, gso_size: int, start: int, offset: int
) -> bytes:
    frame = pkt if isinstance(pkt, bytes) else raw(pkt)
    return bytes(VNET_HDR.pack(flags, gso_type, 0, gso_size, start, offset)) + frame


NC = VNET_F_NEEDS_CSUM
T4, T6, U4 = tcp4(stamped(3000)), tcp6(stamped(3000)), udp4(stamped(3000))
BAD_HEADERS = {
    "csum-start-past-the-end": with_header(U4, NC, GSO_NONE, 0, len(raw(U4)) + 1, 6),
    "csum-field-past-the-end": with_header(U4, NC, GSO_NONE, 0, len(raw(U4)) - 1, 0),
    "csum-offset-huge": with_header(U4, NC, GSO_NONE, 0, 34, 0xFFFF),
    "gso-size-zero": with_header(T4, NC, GSO_TCPV4, 0, 34, 16),
    "gso-no-payload": with_header(tcp4(b""), NC, GSO_TCPV4, 1000, 34, 16),
    "gso-too-many-segments": with_header(T4, NC, GSO_TCPV4, 1, 34, 16),
    "tcpv4-on-ipv6": with_header(T6, NC, GSO_TCPV4, 1000, 54, 16),
    "tcpv6-on-ipv4": with_header(T4, NC, GSO_TCPV6, 1000, 34, 16),
    "csum-start-not-at-l4": with_header(T4, NC, GSO_TCPV4, 1000, 30, 16),
    "csum-start-zero": with_header(T4, NC, GSO_TCPV4, 1000, 0, 16),
    "csum-start-past-the-end-gso": with_header(T4, NC, GSO_TCPV4, 1000, 60000, 16),
    "ufo-type": with_header(U4, NC, GSO_UDP, 1000, 34, 6),
    "unknown-type": with_header(T4, NC, 9, 1000, 34, 16),
    "tcp-data-offset-below-5": with_header(
        raw(T4)[:46] + b"\x40" + raw(T4)[47:], NC, GSO_TCPV4, 1000, 34, 16
    ),
    # The GSO type names the transport protocol too: the kernel's inet_gso_segment picks the
    # segmentation by the IP header's protocol, and tcp4_gso_segment / __udp_gso_segment refuse a
    # gso_type that is not theirs. Cut as the other protocol, the datagram would be rewritten
    # (sequence numbers written over UDP's length and checksum, or a UDP length over TCP's ack).
    # (0x50 bytes: where TCP's data offset would be, a UDP payload that reads as a 20-byte header)
    "tcpv4-on-udp": with_header(udp4(b"\x50" * 3000), NC, GSO_TCPV4, 1000, 34, 16),
    "udp-l4-on-tcp": with_header(T4, NC, GSO_UDP_L4, 1000, 34, 6),
    "tcpv6-on-udp6": with_header(udp6(b"\x50" * 3000), NC, GSO_TCPV6, 1000, 54, 16),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_push_of_a_frame_whose_header_lies_is_a_bad_vnet_header_drop(name: str) -> None:
    assert tunnel().push(REMOTE_PORT, BAD_HEADERS[name]) == Drop.BAD_VNET_HEADER


def test_push_never_raises_whatever_the_header_says() -> None:
    """Random headers over real frames: every answer is packets or a Drop (bad input from a port is
    never an exception out of the core)."""
    rng = random.Random(7348)
    frames = [raw(p) for p in (T4, T6, U4, udp6(stamped(100)), tcp4(stamped(5), vlan=2))]
    t = tunnel(mtu=9000)
    starts = (0, 13, 14, 18, 34, 38, 54, 58, 60, 65535)
    for _ in range(3000):
        frame = rng.choice(frames)
        header = VNET_HDR.pack(
            rng.choice((0, 1, 2, 3, 0xFF)),
            rng.choice((0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 0x7F)),
            rng.randrange(0x10000),
            rng.choice((0, 1, 7, 100, 1000, 1448, 0xFFFF)),
            rng.choice((*starts, rng.randrange(0x10000))),
            rng.choice((0, 6, 16, 0xFFFF, rng.randrange(0x10000))),
        )
        result = t.push(REMOTE_PORT, bytes(header) + frame)
        assert isinstance(result, Drop | list)
        if isinstance(result, list):
            assert all(len(p) > 36 + 14 for p in result)


@pytest.mark.parametrize(
    ("vnet", "ethertype", "body"),
    [((0, 4, 0, 1000, 54, 16), 0x86DD, b"\x60"), ((0, 1, 0, 1000, 34, 16), 0x0800, b"\x45")],
    ids=["tcpv6", "tcpv4"],
)
def test_a_super_frame_cut_short_before_its_network_header_ends_is_refused(
    vnet: tuple[int, ...], ethertype: int, body: bytes
) -> None:
    """A GSO header that promises more than the frame holds: a GsoError (a named drop upstream), not
    an IndexError (found by the IPv6 fuzz)."""
    frame = struct.pack("<BBHHHH", *vnet) + bytes(Ether(dst="ff:ff:ff:ff:ff:ff", type=ethertype)) + body
    with pytest.raises(GsoError):
        segment(frame)
