"""NAT on offloaded frames (design.md): NEEDS_CSUM frames keep an uncomplemented pseudo-header sum
that only address changes touch; complete checksums get RFC 1624 for addresses and ports; TSO
super-frames go through whole. Each result is completed the way a NIC would and checked by scapy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from vswitch.core.checksum import fold, ones_sum, words
from vswitch.core.nat import NatConfig
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR

R0 = bytes.fromhex("02aa00000001")
R2 = bytes.fromhex("02aa00000003")
H1 = bytes.fromhex("020000000101")
H3 = bytes.fromhex("020000000103")
UP = bytes.fromhex("0200000000ff")
NAT_IP = "198.18.0.2"
REMOTE = "198.19.5.5"
ETH = 10
L3 = ETH + 14
CSUM_OFF = {6: 16, 17: 6}


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def make_router() -> Router:
    router = Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24")),
            Interface(2, "uplink", R2, IPv4Interface(f"{NAT_IP}/24"), mtu=1500, uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"))],
        NatConfig(2, IPv4Address(NAT_IP), [IPv4Network("10.0.0.0/16")]),
    )
    router.arp.learn(int(IPv4Address("10.0.1.2")), H1, 0, 0.0)
    router.arp.learn(int(IPv4Address("10.0.1.3")), H3, 0, 0.0)
    router.arp.learn(int(IPv4Address("198.18.0.1")), UP, 2, 0.0)
    return router


def partial(ip: Packet, gso_type: int = 0, gso_size: int = 0, src: bytes = H1, dst: bytes = R0) -> bytes:
    """The frame as a tap hands it over with NEEDS_CSUM: the L4 field holds the folded
    pseudo-header sum (src, dst, proto, L4 length), not complemented."""
    raw = bytearray(bytes(Ether(src=mac(src), dst=mac(dst)) / ip))
    ihl = (raw[14] & 0x0F) * 4
    proto = raw[14 + 9]
    l4 = 14 + ihl
    total = int.from_bytes(raw[16:18], "big")
    pseudo = fold(words(bytes(raw[26:34])) + proto + total - ihl)
    if proto in CSUM_OFF:
        off = CSUM_OFF[proto]
        raw[l4 + off : l4 + off + 2] = pseudo.to_bytes(2, "big")
    else:
        off = 2
        raw[l4 + 2 : l4 + 4] = b"\x00\x00"  # ICMP: no pseudo-header, the sum starts from zero
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_type, l4 + 20, gso_size, l4, off) + bytes(raw)


def nic_complete(buf: bytes) -> Packet:
    """Finish the checksum as a NIC would: sum from csum_start to the end, complement, store."""
    out = bytearray(buf)
    flags, _, _, _, start, off = VNET_HDR.unpack_from(out)
    assert flags & VNET_F_NEEDS_CSUM
    start += ETH
    total = int.from_bytes(out[L3 + 2 : L3 + 4], "big")
    end = L3 + total
    csum = ~ones_sum(out[start:end]) & 0xFFFF
    out[start + off : start + off + 2] = (csum or 0xFFFF).to_bytes(2, "big")
    packet: Packet = Ether(bytes(out[ETH:]))[IP]
    return packet


def checksums_valid(ip: Packet) -> None:
    copy = IP(bytes(ip))
    del copy.chksum
    del copy.payload.chksum
    rebuilt = IP(bytes(copy))
    assert rebuilt.chksum == ip.chksum
    assert rebuilt.payload.chksum == ip.payload.chksum


def out_of(router: Router, iface: int, buf: bytes) -> bytes:
    out = router.receive(iface, buf, 0.0)
    assert len(out) == 1, out
    return out[0][1]


def test_partial_udp_outbound_and_reply() -> None:
    router = make_router()
    # 10.0.1.3 takes port 5000 first, so 10.0.1.2 gets a new port: address and port both change
    router.receive(0, partial(IP(src="10.0.1.3", dst=REMOTE) / UDP(sport=5000, dport=53)), 0.0)
    buf = out_of(router, 0, partial(IP(src="10.0.1.2", dst=REMOTE) / UDP(sport=5000) / b"hi"))
    p = nic_complete(buf)
    assert p.src == NAT_IP and p[UDP].sport != 5000
    checksums_valid(p)
    ext = p[UDP].sport
    reply = IP(src=REMOTE, dst=NAT_IP) / UDP(sport=53, dport=ext) / b"yo"
    raw = partial(reply, src=UP, dst=R2)
    q = nic_complete(out_of(router, 2, raw))
    assert q.dst == "10.0.1.2" and q[UDP].dport == 5000
    checksums_valid(q)


def test_partial_tcp() -> None:
    router = make_router()
    syn = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=999, dport=443, flags="S") / b"data"
    buf = out_of(router, 0, partial(syn))
    assert buf[:ETH] == partial(syn)[:ETH]  # the offload request passes through unchanged
    p = nic_complete(buf)
    assert p[TCP].sport != 999  # 999 is outside the range: a new port
    checksums_valid(p)


def test_tso_super_frame_goes_through_whole() -> None:
    router = make_router()
    payload = bytes(range(256)) * 80  # 20480 bytes
    seg = IP(src="10.0.1.2", dst=REMOTE, flags="DF") / TCP(sport=999, dport=80, flags="S")
    router.receive(0, partial(seg), 0.0)
    big = IP(src="10.0.1.2", dst=REMOTE, flags="DF") / TCP(sport=999, dport=80, flags="A") / payload
    buf = out_of(router, 0, partial(big, GSO_TCPV4, 1448))
    assert len(buf) == len(partial(big, GSO_TCPV4, 1448))
    assert VNET_HDR.unpack_from(buf)[1:4] == (GSO_TCPV4, 54, 1448)
    p = nic_complete(buf)
    assert bytes(p[TCP].payload) == payload
    checksums_valid(p)


def test_complete_udp_checksum_that_becomes_zero_is_written_ffff() -> None:
    router = make_router()
    # choose a payload word so that the translated datagram's checksum computes to 0
    translated = IP(src=NAT_IP, dst=REMOTE) / UDP(sport=5000, dport=53) / b"\x00\x00"
    raw = bytearray(bytes(translated))
    raw[26:28] = b"\x00\x00"
    pseudo = words(bytes(raw[12:20])) + 17 + 10
    word = ~fold(pseudo + ones_sum(raw[20:])) & 0xFFFF
    pkt = IP(src="10.0.1.2", dst=REMOTE) / UDP(sport=5000, dport=53) / word.to_bytes(2, "big")
    frame = ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / pkt)
    p = Ether(out_of(router, 0, frame)[ETH:])[IP]
    assert p[UDP].chksum == 0xFFFF
    checksums_valid(p)


def test_complete_checksums_use_rfc1624() -> None:
    router = make_router()
    router.receive(
        0, ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / IP(src="10.0.1.3", dst=REMOTE) / UDP()), 0
    )
    pkt = IP(src="10.0.1.2", dst=REMOTE) / UDP(sport=53, dport=53) / (b"\x5a" * 101)
    buf = out_of(router, 0, ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / pkt))
    p = Ether(buf[ETH:])[IP]
    assert p[UDP].sport != 53
    checksums_valid(p)


def test_partial_icmp_echo_id_change_needs_nothing() -> None:
    router = make_router()
    router.receive(
        0,
        ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / IP(src="10.0.1.3", dst=REMOTE) / ICMP(id=5)),
        0.0,
    )
    ping = IP(src="10.0.1.2", dst=REMOTE) / ICMP(type=8, id=5, seq=3) / b"payload!"
    sent = partial(ping)
    buf = out_of(router, 0, sent)
    l4 = L3 + 20
    assert buf[l4 + 2 : l4 + 4] == b"\x00\x00"  # untouched: no pseudo-header to adjust
    p = nic_complete(buf)
    assert p[ICMP].id != 5
    checksums_valid(p)


def test_needs_csum_pointing_elsewhere_is_treated_as_complete() -> None:
    router = make_router()
    router.receive(
        0, ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / IP(src="10.0.1.3", dst=REMOTE) / UDP()), 0
    )
    pkt = IP(src="10.0.1.2", dst=REMOTE) / UDP(sport=53, dport=53) / b"abcdef"
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, 14, 2)  # start at the IP header: bogus
    buf = out_of(router, 0, vnet + bytes(Ether(src=mac(H1), dst=mac(R0)) / pkt))
    checksums_valid(Ether(buf[ETH:])[IP])
