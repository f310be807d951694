"""Forwarding: TTL, ICMP generation (RFC 1812 4.3.2), MTU with GSO, IPv4 validation drops,
local delivery, and a fuzz proving bad input never raises."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vswitch.core.icmp import header_checksum
from vswitch.core.nat import NatConfig, PortForward
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR

R0 = bytes.fromhex("02aa00000001")
R1 = bytes.fromhex("02aa00000002")
R2 = bytes.fromhex("02aa00000003")
H1 = bytes.fromhex("020000000101")
H2 = bytes.fromhex("020000000201")
UP = bytes.fromhex("0200000000ff")


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def make_router(default: bool = True, **kw: Any) -> Router:
    routes = [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"))] if default else []
    router = Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24")),
            Interface(1, "seg1", R1, IPv4Interface("10.0.2.1/24"), mtu=1400),
            Interface(2, "uplink", R2, IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        routes,
        **kw,
    )
    router.arp.learn(int(IPv4Address("10.0.1.2")), H1, 0, 0.0)
    router.arp.learn(int(IPv4Address("10.0.2.5")), H2, 1, 0.0)
    router.arp.learn(int(IPv4Address("198.18.0.1")), UP, 2, 0.0)
    return router


def frame(pkt: Packet, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    return vnet + bytes(pkt)


def from_h1(l3: Packet, dst_mac: bytes = R0) -> bytes:
    return frame(Ether(src=mac(H1), dst=mac(dst_mac)) / l3)


def checksums_valid(pkt: Packet) -> None:
    """Rebuild the IP packet with scapy, letting it recompute every checksum, and compare."""
    ip = pkt[IP]
    copy = IP(bytes(ip))
    del copy.chksum
    layer = copy.payload
    if hasattr(layer, "chksum") and not (isinstance(layer, UDP) and ip[UDP].chksum == 0):
        del layer.chksum
    rebuilt = IP(bytes(copy))
    assert rebuilt.chksum == ip.chksum
    if hasattr(ip.payload, "chksum"):
        assert rebuilt.payload.chksum == ip.payload.chksum


def one(out: list[tuple[int, bytes]], iface: int) -> Packet:
    assert len(out) == 1, out
    assert out[0][0] == iface
    return Ether(out[0][1][10:])


def test_forward_decrements_ttl_and_rewrites_macs() -> None:
    router = make_router()
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 16)
    pkt = Ether(src=mac(H1), dst=mac(R0)) / IP(src="10.0.1.2", dst="10.0.2.5", ttl=9) / UDP(sport=5, dport=6)
    out = router.receive(0, frame(pkt, vnet), 0.0)
    assert out[0][1][:10] == vnet  # the virtio-net header passes through
    p = one(out, 1)
    assert p.src == mac(R1) and p.dst == mac(H2) and p[IP].ttl == 8
    checksums_valid(p)


def test_forward_via_gateway() -> None:
    router = make_router()
    p = one(router.receive(0, from_h1(IP(src="10.0.1.2", dst="8.8.8.8") / UDP()), 0.0), 2)
    assert p.dst == mac(UP)


def test_ttl_exceeded_from_ingress_address() -> None:
    router = make_router()
    sent = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / UDP(sport=7, dport=9) / (b"p" * 40)
    p = one(router.receive(0, from_h1(sent), 0.0), 0)
    assert router.drops["ttl-exceeded"] == 1
    assert p.dst == mac(H1) and p.src == mac(R0)
    assert p[IP].src == "10.0.1.1" and p[IP].dst == "10.0.1.2" and p[IP].ttl == 64
    assert p[ICMP].type == 11 and p[ICMP].code == 0
    assert p[IPerror].dst == "8.8.8.8" and p[UDPerror].dport == 9
    assert bytes(p[IPerror]) == bytes(sent)  # the whole (short) datagram is quoted
    checksums_valid(p)
    assert router.events["icmp-time-exceeded-sent"] == 1


def test_quote_is_cut_at_576_bytes() -> None:
    router = make_router()
    sent = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / UDP() / (b"p" * 1200)
    p = one(router.receive(0, from_h1(sent), 0.0), 0)
    assert len(p[IP]) == 576
    checksums_valid(p)


def test_no_route_net_unreachable() -> None:
    router = make_router(default=False)
    p = one(router.receive(0, from_h1(IP(src="10.0.1.2", dst="8.8.8.8") / UDP()), 0.0), 0)
    assert router.drops["no-route"] == 1
    assert p[ICMP].type == 3 and p[ICMP].code == 0
    checksums_valid(p)


def test_frag_needed_carries_next_hop_mtu() -> None:
    router = make_router()
    big = IP(src="10.0.1.2", dst="10.0.2.5", flags="DF") / UDP() / (b"z" * 1400)
    p = one(router.receive(0, from_h1(big), 0.0), 0)
    assert router.drops["fragmentation-needed"] == 1
    assert p[ICMP].type == 3 and p[ICMP].code == 4 and p[ICMP].nexthopmtu == 1400
    checksums_valid(p)
    fits = IP(src="10.0.1.2", dst="10.0.2.5", flags="DF") / UDP() / (b"z" * 1372)
    assert len(fits) == 1400
    one(router.receive(0, from_h1(fits), 0.0), 1)


def tso(gso_size: int, payload: int) -> bytes:
    pkt = (
        Ether(src=mac(H1), dst=mac(R0))
        / IP(src="10.0.1.2", dst="10.0.2.5", flags="DF")
        / TCP(sport=1, dport=2, flags="A")
        / (b"d" * payload)
    )
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, GSO_TCPV4, 66, gso_size, 34, 16) + bytes(pkt)


def test_gso_frame_mtu_counts_segment_size() -> None:
    router = make_router()
    out = router.receive(0, tso(1360, 30000), 0.0)  # 20 + 20 + 1360 = 1400: fits
    assert len(out) == 1 and len(out[0][1]) > 30000
    p = one(router.receive(0, tso(1361, 30000), 0.0), 0)
    assert p[ICMP].code == 4 and p[ICMP].nexthopmtu == 1400
    assert len(p[IP]) == 576


def test_gso_frame_with_zero_total_length_is_accepted() -> None:
    router = make_router()
    buf = bytearray(tso(1000, 5000))
    ip = 10 + 14
    buf[ip + 2 : ip + 4] = b"\x00\x00"
    buf[ip + 10 : ip + 12] = b"\x00\x00"
    buf[ip + 10 : ip + 12] = header_checksum(bytes(buf[ip : ip + 20])).to_bytes(2, "big")
    assert len(router.receive(0, bytes(buf), 0.0)) == 1


def test_echo_reply() -> None:
    router = make_router()
    req = IP(src="10.0.1.2", dst="10.0.2.1") / ICMP(type=8, id=0x1234, seq=7) / b"hello-ping"
    p = one(router.receive(0, from_h1(req), 0.0), 0)
    assert p[IP].src == "10.0.2.1" and p[IP].dst == "10.0.1.2"
    assert p[ICMP].type == 0 and p[ICMP].id == 0x1234 and p[ICMP].seq == 7
    assert bytes(p[ICMP].payload) == b"hello-ping"
    checksums_valid(p)


def test_echo_with_bad_checksum_dropped() -> None:
    router = make_router()
    req = IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(type=8, chksum=1)
    assert router.receive(0, from_h1(req), 0.0) == []
    assert router.drops["l4-bad-checksum"] == 1


def test_udp_to_router_port_unreachable_tcp_silent() -> None:
    router = make_router()
    p = one(router.receive(0, from_h1(IP(src="10.0.1.2", dst="10.0.1.1") / UDP(dport=9)), 0.0), 0)
    assert p[ICMP].type == 3 and p[ICMP].code == 3
    assert router.receive(0, from_h1(IP(src="10.0.1.2", dst="10.0.1.1") / TCP()), 0.0) == []
    assert router.drops["to-router"] == 2
    p = one(router.receive(0, from_h1(IP(src="10.0.1.2", dst="10.0.1.1", proto=99)), 0.0), 0)
    assert p[ICMP].code == 2


def test_never_icmp_about_icmp_error() -> None:
    router = make_router()
    err = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / ICMP(type=3, code=1) / IP() / UDP()
    assert router.receive(0, from_h1(err), 0.0) == []
    assert router.drops["ttl-exceeded"] == 1
    echo = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / ICMP(type=8)
    assert len(router.receive(0, from_h1(echo), 0.0)) == 1


def test_never_icmp_about_non_first_fragment() -> None:
    router = make_router()
    frag = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1, frag=100) / Raw(b"x" * 16)
    assert router.receive(0, from_h1(frag), 0.0) == []
    assert router.drops["ttl-exceeded"] == 1


def test_icmp_errors_rate_limited() -> None:
    router = make_router(icmp_rate=1.0, icmp_burst=2)
    pkt = from_h1(IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / UDP())
    sent = [len(router.receive(0, pkt, 0.0)) for _ in range(3)]
    assert sent == [1, 1, 0]
    assert router.events["icmp-rate-limited"] == 1
    assert len(router.receive(0, pkt, 1.0)) == 1


def test_frames_for_others_ignored_and_unknown_ethertype() -> None:
    router = make_router()
    assert router.receive(0, from_h1(IP(src="10.0.1.2", dst="10.0.2.5") / UDP(), H2), 0.0) == []
    assert router.events["not-for-router"] == 1
    v6 = frame(Ether(src=mac(H1), dst=mac(R0), type=0x86DD) / Raw(b"\x60" + bytes(39)))
    assert router.receive(0, v6, 0.0) == []
    assert router.drops["unsupported-ethertype"] == 1


def raw_ip(**fields: Any) -> bytes:
    fields = {"src": "10.0.1.2", "dst": "10.0.2.5", **fields}
    return bytes(IP(**fields) / UDP() / b"data")


def edit(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


VALIDATION = [
    ("ip-truncated", raw_ip()[:19]),
    ("ip-bad-version", edit(raw_ip(), 0, b"\x65")),
    ("ip-bad-ihl", edit(raw_ip(), 0, b"\x44")),
    ("ip-bad-ihl", edit(raw_ip(), 0, b"\x4f")),
    ("ip-bad-length", edit(raw_ip(), 2, b"\x00\x10")),
    ("ip-bad-length", edit(raw_ip(), 2, b"\x05\xdc")),
    ("ip-bad-checksum", edit(raw_ip(), 10, b"\x12\x34")),
    ("ip-martian-source", raw_ip(src="127.0.0.1")),
    ("ip-martian-source", raw_ip(src="0.1.2.3")),
    ("ip-martian-source", raw_ip(src="224.0.0.5")),
    ("ip-martian-source", raw_ip(src="255.255.255.255")),
    ("ip-martian-source", raw_ip(src="10.0.2.255")),
    ("ip-broadcast", raw_ip(dst="255.255.255.255")),
    ("ip-broadcast", raw_ip(dst="10.0.2.255")),
    ("ip-multicast", raw_ip(dst="239.1.2.3")),
    ("ip-martian-destination", raw_ip(dst="127.0.0.1")),
    ("ip-martian-destination", raw_ip(dst="240.0.0.1")),
]


@pytest.mark.parametrize(("reason", "l3"), VALIDATION, ids=[r for r, _ in VALIDATION])
def test_ipv4_validation(reason: str, l3: bytes) -> None:
    router = make_router()
    buf = ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0), type=0x0800)) + l3
    assert router.receive(0, buf, 0.0) == []
    assert router.drops == {reason: 1}


def test_link_broadcast_not_forwarded() -> None:
    router = make_router()
    buf = from_h1(IP(src="10.0.1.2", dst="10.0.2.5") / UDP(), b"\xff" * 6)
    assert router.receive(0, buf, 0.0) == []
    assert router.drops == {"ip-broadcast": 1}


def test_ethernet_padding_is_tolerated() -> None:
    router = make_router()
    buf = from_h1(IP(src="10.0.1.2", dst="10.0.2.5") / UDP()) + bytes(18)
    p = one(router.receive(0, buf, 0.0), 1)
    checksums_valid(p)


def test_ip_options_header() -> None:
    router = make_router()
    pkt = IP(src="10.0.1.2", dst="10.0.2.5", options=[b"\x01\x01\x01\x00"]) / UDP()
    p = one(router.receive(0, from_h1(pkt), 0.0), 1)
    assert p[IP].ihl == 6
    checksums_valid(p)


def test_tables() -> None:
    router = make_router()
    assert {r["prefix"] for r in router.routes_table()} >= {"0.0.0.0/0", "10.0.1.0/24"}
    assert router.conntrack_table(0.0) == []
    assert len(router.interfaces_table()) == 3


@settings(max_examples=400, deadline=None)
@given(
    st.binary(min_size=0, max_size=120),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([b"\x08\x00", b"\x08\x06", b"\x86\xdd"]),
    st.binary(min_size=10, max_size=10),
)
def test_fuzz_receive_never_raises(body: bytes, iface: int, etype: bytes, vnet: bytes) -> None:
    router = make_router(
        nat=NatConfig(
            2,
            IPv4Address("198.18.0.2"),
            [IPv4Network("10.0.0.0/8")],
            [PortForward(6, 80, IPv4Address("10.0.2.5"), 8080)],
        )
    )
    dst = [R0, R1, R2][iface]
    head = vnet + dst + H1 + etype
    # raw bytes, and the same bytes behind a valid-looking IPv4 header start
    router.receive(iface, head + body, 0.0)
    ip = bytes(IP(src="10.0.1.2", dst="198.18.0.2", proto=body[0] if body else 6))[:20]
    router.receive(iface, ZERO_VNET_HDR + dst + H1 + b"\x08\x00" + ip + body, 0.0)
    router.receive(iface, (head + body)[: len(body) // 2], 0.0)
    router.on_timer(100.0)


def test_bytes_after_the_total_length_are_not_forwarded() -> None:
    """Linux trims a packet to its IP length (pskb_trim_rcsum): padding or junk stays behind."""
    router = make_router()
    packet = IP(src="10.0.1.2", dst="10.0.2.5") / UDP(sport=1, dport=2) / (b"d" * 100)
    out = router.receive(0, from_h1(packet) + b"\xee" * 300, 0.0)
    assert len(out) == 1 and len(out[0][1]) == 10 + 14 + len(packet)
    checksums_valid(one(out, 1))


def test_icmp_errors_carry_precedence_6() -> None:
    """RFC 1812 4.3.2.5: internetwork control, as Linux marks its errors."""
    router = make_router()
    sent = IP(src="10.0.1.2", dst="8.8.8.8", ttl=1) / UDP(sport=7, dport=9)
    p = one(router.receive(0, from_h1(sent), 0.0), 0)
    assert p[ICMP].type == 11 and p[IP].tos == 0xC0
