"""NAT through the router: masquerade, endpoint-independent mapping, port allocation, forwards,
hairpin, unsolicited inbound, table full, expiry, and RFC 5508 ICMP error translation, every
result parsed and its checksums recomputed with scapy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from conftest import checksums_valid
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from vswitch.core.conntrack import Timeouts
from vswitch.core.nat import NatConfig, PortAllocator, PortForward
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import ZERO_VNET_HDR

R0 = bytes.fromhex("02aa00000001")
R1 = bytes.fromhex("02aa00000002")
R2 = bytes.fromhex("02aa00000003")
H1 = bytes.fromhex("020000000101")  # 10.0.1.2
H3 = bytes.fromhex("020000000103")  # 10.0.1.3
H2 = bytes.fromhex("020000000201")  # 10.0.2.5
UP = bytes.fromhex("0200000000ff")  # 198.18.0.1, the upstream router
NAT_IP = "198.18.0.2"
REMOTE = "198.19.5.5"


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def make_router(**nat_kw: Any) -> Router:
    cfg: dict[str, Any] = {
        "forwards": [
            PortForward(6, 8080, IPv4Address("10.0.2.5"), 80),
            PortForward(17, 5353, IPv4Address("10.0.1.3"), 53),
        ],
        **nat_kw,
    }
    router = Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24")),
            Interface(1, "seg1", R1, IPv4Interface("10.0.2.1/24")),
            Interface(2, "uplink", R2, IPv4Interface(f"{NAT_IP}/24"), uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"))],
        NatConfig(2, IPv4Address(NAT_IP), [IPv4Network("10.0.0.0/16")], **cfg),
    )
    for ip, m, i in (("10.0.1.2", H1, 0), ("10.0.1.3", H3, 0), ("10.0.2.5", H2, 1)):
        router.arp.learn(int(IPv4Address(ip)), m, i, 0.0)
    router.arp.learn(int(IPv4Address("198.18.0.1")), UP, 2, 0.0)
    return router


def send(router: Router, iface: int, l3: Packet, now: float = 0.0) -> list[tuple[int, bytes]]:
    src = {0: H1, 1: H2, 2: UP}[iface]
    dst = {0: R0, 1: R1, 2: R2}[iface]
    return router.receive(iface, ZERO_VNET_HDR + bytes(Ether(src=mac(src), dst=mac(dst)) / l3), now)


def one(out: list[tuple[int, bytes]], iface: int) -> Packet:
    assert len(out) == 1, out
    assert out[0][0] == iface
    packet: Packet = Ether(out[0][1][10:])[IP]
    return packet


def udp_out(sport: int = 5000, src: str = "10.0.1.2", dst: str = REMOTE) -> Packet:
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=53) / b"query"


def test_masquerade_udp_and_reply() -> None:
    router = make_router()
    p = one(send(router, 0, udp_out()), 2)
    assert p.src == NAT_IP and p[UDP].sport == 5000  # port preserved
    assert p.dst == REMOTE and p.ttl == 63
    checksums_valid(p)
    reply = IP(src=REMOTE, dst=NAT_IP) / UDP(sport=53, dport=5000) / b"answer"
    q = one(send(router, 2, reply), 0)
    assert q.dst == "10.0.1.2" and q[UDP].dport == 5000 and q.src == REMOTE
    checksums_valid(q)
    assert router.events["nat-new-flow"] == 1


def test_udp_without_checksum_stays_zero() -> None:
    router = make_router()
    pkt = IP(src="10.0.1.2", dst=REMOTE) / UDP(sport=1000, dport=53, chksum=0) / b"q"
    p = one(send(router, 0, pkt), 2)
    assert p[UDP].chksum == 0


def test_endpoint_independent_mapping_and_allocation() -> None:
    router = make_router()
    a = one(send(router, 0, udp_out(4000)), 2)[UDP].sport
    b = one(send(router, 0, udp_out(4000, dst="198.19.9.9")), 2)[UDP].sport
    assert a == b == 4000  # REQ-1: same internal endpoint, same external port
    c = one(send(router, 0, udp_out(4000, src="10.0.1.3")), 2)[UDP].sport
    assert c != 4000 and 1024 <= c <= 65535
    d = one(send(router, 0, udp_out(4000, src="10.0.1.3", dst="198.19.9.9")), 2)[UDP].sport
    assert d == c


def test_ports_exhausted_then_reused_after_expiry() -> None:
    router = make_router(port_range=(2000, 2001), timeouts=Timeouts(udp=5.0))
    got = [one(send(router, 0, udp_out(p)), 2)[UDP].sport for p in (2000, 3000)]
    assert got == [2000, 2001]
    assert send(router, 0, udp_out(3001)) == []
    assert router.drops["nat-ports-exhausted"] == 1
    assert router.next_deadline() == 5.0
    router.on_timer(5.0)
    assert router.conntrack_table(5.0) == []
    assert one(send(router, 0, udp_out(3001), 6.0), 2)[UDP].sport in (2000, 2001)


def test_port_allocator_skips_reserved_and_wraps() -> None:
    alloc = PortAllocator(10, 13, {11})
    assert alloc.allocate(12) == 12
    assert [alloc.allocate(11), alloc.allocate(11)] == [10, 13]
    assert alloc.allocate(5) is None
    alloc.free(10)
    alloc.free(11)  # reserved: stays used
    assert alloc.allocate(99) == 10


def test_forwarded_ports_are_never_allocated() -> None:
    router = make_router()
    pkt = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=8080, dport=80, flags="S")
    assert one(send(router, 0, pkt), 2)[TCP].sport != 8080


def test_tcp_needs_syn_to_start() -> None:
    router = make_router()
    ack = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=5000, dport=80, flags="A")
    assert send(router, 0, ack) == []
    assert router.drops["nat-no-flow"] == 1
    syn = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=5000, dport=80, flags="S", seq=1)
    checksums_valid(one(send(router, 0, syn), 2))
    synack = IP(src=REMOTE, dst=NAT_IP) / TCP(sport=80, dport=5000, flags="SA", ack=2)
    q = one(send(router, 2, synack), 0)
    assert q[TCP].dport == 5000 and q.dst == "10.0.1.2"
    checksums_valid(q)
    one(send(router, 0, ack), 2)
    (row,) = router.conntrack_table(0.0)
    assert row["state"] == "ESTABLISHED" and row["assured"]


def test_unsolicited_inbound_dropped_but_ping_answered() -> None:
    router = make_router()
    assert send(router, 2, IP(src=REMOTE, dst=NAT_IP) / UDP(sport=1, dport=9999)) == []
    syn = IP(src=REMOTE, dst=NAT_IP) / TCP(sport=1, dport=22, flags="S")
    assert send(router, 2, syn) == []
    assert router.drops["nat-unsolicited"] == 2
    p = one(send(router, 2, IP(src=REMOTE, dst=NAT_IP) / ICMP(type=8, id=7)), 2)
    assert p[ICMP].type == 0 and p.src == NAT_IP


def test_icmp_echo_identifier_translation() -> None:
    router = make_router()
    ping = IP(src="10.0.1.2", dst=REMOTE) / ICMP(type=8, id=77, seq=1) / b"abc"
    a = one(send(router, 0, ping), 2)
    assert a[ICMP].id == 77
    ping3 = IP(src="10.0.1.3", dst=REMOTE) / ICMP(type=8, id=77, seq=1) / b"abc"
    b = one(send(router, 0, ping3), 2)
    assert b[ICMP].id != 77 and b.src == NAT_IP
    checksums_valid(b)
    pong = IP(src=REMOTE, dst=NAT_IP) / ICMP(type=0, id=b[ICMP].id, seq=1) / b"abc"
    q = one(send(router, 2, pong), 0)
    assert q.dst == "10.0.1.3" and q[ICMP].id == 77
    checksums_valid(q)
    # an echo reply that starts nothing is not masqueraded
    stray = IP(src="10.0.1.2", dst=REMOTE) / ICMP(type=0, id=5)
    assert send(router, 0, stray) == []
    assert router.drops["nat-no-flow"] == 1


def test_port_forward_inbound_and_reply() -> None:
    router = make_router()
    syn = IP(src=REMOTE, dst=NAT_IP) / TCP(sport=40000, dport=8080, flags="S")
    p = one(send(router, 2, syn), 1)
    assert p.dst == "10.0.2.5" and p[TCP].dport == 80 and p.src == REMOTE
    checksums_valid(p)
    synack = IP(src="10.0.2.5", dst=REMOTE) / TCP(sport=80, dport=40000, flags="SA")
    q = one(send(router, 1, synack), 2)
    assert q.src == NAT_IP and q[TCP].sport == 8080
    checksums_valid(q)


def test_hairpin_to_other_segment() -> None:
    router = make_router()
    syn = IP(src="10.0.1.2", dst=NAT_IP) / TCP(sport=5555, dport=8080, flags="S")
    p = one(send(router, 0, syn), 1)
    assert p.dst == "10.0.2.5" and p[TCP].dport == 80
    assert p.src == NAT_IP  # masqueraded so the reply comes back through us
    checksums_valid(p)
    synack = IP(src="10.0.2.5", dst=NAT_IP) / TCP(sport=80, dport=p[TCP].sport, flags="SA")
    q = one(send(router, 1, synack), 0)
    assert q.src == NAT_IP and q[TCP].sport == 8080
    assert q.dst == "10.0.1.2" and q[TCP].dport == 5555
    checksums_valid(q)


def test_hairpin_same_segment() -> None:
    router = make_router()
    out = send(router, 0, IP(src="10.0.1.2", dst=NAT_IP) / UDP(sport=6000, dport=5353) / b"x")
    assert out[0][0] == 0
    frame = Ether(out[0][1][10:])
    assert frame.dst == mac(H3) and frame.src == mac(R0)
    assert frame[IP].dst == "10.0.1.3" and frame[UDP].dport == 53 and frame[IP].src == NAT_IP
    checksums_valid(frame[IP])


def test_non_forwarded_hairpin_reaches_router() -> None:
    router = make_router()
    p = one(send(router, 0, IP(src="10.0.1.2", dst=NAT_IP) / UDP(sport=1, dport=7)), 0)
    assert p[ICMP].type == 3 and p[ICMP].code == 3


def test_conntrack_full() -> None:
    router = make_router(max_flows=1)
    syn = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=5001, dport=80, flags="S")
    one(send(router, 0, syn), 2)
    synack = IP(src=REMOTE, dst=NAT_IP) / TCP(sport=80, dport=5001, flags="SA")
    one(send(router, 2, synack), 0)
    ack = IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=5001, dport=80, flags="A")
    one(send(router, 0, ack), 2)
    assert send(router, 0, udp_out()) == []
    assert router.drops["conntrack-full"] == 1


def test_unassured_flow_is_evicted_for_a_new_one() -> None:
    router = make_router(max_flows=1)
    one(send(router, 0, udp_out(1)), 2)
    one(send(router, 0, udp_out(2)), 2)
    assert router.events["conntrack-early-drop"] == 1


def test_routed_inbound_flow_is_not_masqueraded() -> None:
    router = make_router()
    syn = IP(src=REMOTE, dst="10.0.2.5") / TCP(sport=7, dport=22, flags="S")
    assert one(send(router, 2, syn), 1).dst == "10.0.2.5"
    synack = IP(src="10.0.2.5", dst=REMOTE) / TCP(sport=22, dport=7, flags="SA")
    assert one(send(router, 1, synack), 2).src == "10.0.2.5"


def test_non_first_fragment_needing_nat_is_held_then_dropped_if_its_first_never_comes() -> None:
    router = make_router()
    frag = IP(src="10.0.1.2", dst=REMOTE, frag=10, proto=17) / (b"x" * 8)
    assert send(router, 0, frag) == []
    assert router.drops["nat-fragment"] == 0 and router.events["nat-fragment-held"] == 1
    assert router.on_timer(29.0) == [] and router.drops["nat-fragment"] == 0
    router.on_timer(31.0)
    assert router.drops["nat-fragment"] == 1


# --- RFC 5508: ICMP errors about tracked flows -------------------------------------------------


def _inner_valid(p: Packet) -> Packet:
    """The quoted datagram, reparsed as a packet: its own checksums must verify too."""
    inner = IP(bytes(p[IPerror]))
    checksums_valid(inner)
    return inner


def test_icmp_error_from_outside_translated_inward() -> None:
    router = make_router()
    send(router, 0, udp_out(4000, src="10.0.1.3"))  # takes external port 4000
    out = one(send(router, 0, udp_out(4000)), 2)  # 10.0.1.2:4000 gets another port
    ext = out[UDP].sport
    assert ext != 4000
    # the upstream router reports the packet it got (TTL expired on the way)
    err = IP(src="198.18.0.1", dst=NAT_IP) / ICMP(type=11, code=0) / bytes(out)
    p = one(send(router, 2, err), 0)
    assert p.dst == "10.0.1.2" and p.src == "198.18.0.1"  # the reporter's address is kept
    checksums_valid(p)
    inner = _inner_valid(p)
    assert inner.src == "10.0.1.2" and inner[UDP].sport == 4000
    assert inner.dst == REMOTE and inner[UDP].dport == 53
    assert router.events["nat-icmp-error-translated"] == 1


def test_icmp_error_quoting_8_bytes_of_tcp() -> None:
    router = make_router()
    send(router, 0, IP(src="10.0.1.3", dst=REMOTE) / TCP(sport=4000, dport=80, flags="S"))
    out = one(send(router, 0, IP(src="10.0.1.2", dst=REMOTE) / TCP(sport=4000, flags="S")), 2)
    quoted = bytes(out)[:28]
    err = IP(src=REMOTE, dst=NAT_IP) / ICMP(type=3, code=3) / quoted
    p = one(send(router, 2, err), 0)
    checksums_valid(p)
    assert p[IPerror].src == "10.0.1.2" and p[TCPerror].sport == 4000
    hdr = bytes(p[IPerror])[:20]
    rebuilt = IP(hdr)
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == p[IPerror].chksum


def test_icmp_error_about_echo() -> None:
    router = make_router()
    send(router, 0, IP(src="10.0.1.3", dst=REMOTE) / ICMP(type=8, id=9))
    out = one(send(router, 0, IP(src="10.0.1.2", dst=REMOTE) / ICMP(type=8, id=9) / b"pp"), 2)
    err = IP(src="198.18.0.1", dst=NAT_IP) / ICMP(type=3, code=1) / bytes(out)
    p = one(send(router, 2, err), 0)
    checksums_valid(p)
    inner = _inner_valid(p)
    assert inner.src == "10.0.1.2" and inner[ICMP].id == 9
    assert isinstance(p[ICMPerror], ICMPerror)


def test_icmp_error_from_inside_about_forwarded_flow() -> None:
    router = make_router()
    inbound = one(send(router, 2, IP(src=REMOTE, dst=NAT_IP) / UDP(sport=777, dport=5353) / b"q"), 0)
    err = IP(src="10.0.1.3", dst=REMOTE) / ICMP(type=3, code=3) / bytes(inbound)
    # 10.0.1.3 sits on segment 0: send it from there
    frame = ZERO_VNET_HDR + bytes(Ether(src=mac(H3), dst=mac(R0)) / err)
    p = one(router.receive(0, frame, 0.0), 2)
    assert p.src == NAT_IP and p.dst == REMOTE
    checksums_valid(p)
    inner = _inner_valid(p)
    assert inner.src == REMOTE and inner[UDP].sport == 777
    assert inner.dst == NAT_IP and inner[UDP].dport == 5353


def test_icmp_error_to_nat_address_without_flow() -> None:
    router = make_router()
    quoted = bytes(IP(src=NAT_IP, dst=REMOTE) / UDP(sport=1, dport=2))
    err = IP(src=REMOTE, dst=NAT_IP) / ICMP(type=3, code=3) / quoted
    assert send(router, 2, err) == []
    assert router.drops["nat-icmp-no-flow"] == 1


def test_a_packet_that_is_its_own_reply_is_refused_and_leaves_no_state() -> None:
    """From the uplink, to an inside host, from that same address and port: the flow's reply tuple
    would be its own, and conntrack could not remove it cleanly (it used to raise, later)."""
    router = make_router(max_flows=8)
    spoof = IP(src="10.0.1.2", dst="10.0.1.2") / UDP(sport=1234, dport=1234) / b"x"
    assert send(router, 2, spoof) == []
    assert router.drops["nat-clash"] == 1
    assert router.nat is not None and len(router.nat.conntrack) == 0
    router.on_timer(1000.0)
    for port in range(20):  # the table's bound still holds afterwards
        send(router, 0, udp_out(sport=6000 + port), 1000.0)
    assert len(router.nat.conntrack) == 8


def test_an_error_from_a_router_inside_about_a_masqueraded_reply_leaves_from_our_address() -> None:
    """RFC 5508 REQ-4, as Linux does it: the error goes out like a packet of the flow, so its source
    becomes the NAT address even when a router behind the inside host sent it (10.0.2.5 here)."""
    router = make_router()
    one(send(router, 0, udp_out()), 2)
    error = (
        IP(src="10.0.2.5", dst=REMOTE)
        / ICMP(type=3, code=1)
        / IPerror(src=REMOTE, dst="10.0.1.2")
        / UDPerror(sport=53, dport=5000)
    )
    p = one(send(router, 1, error), 2)
    assert p[IP].src == NAT_IP and p[IPerror].dst == NAT_IP
    checksums_valid(p)


def test_an_error_from_inside_about_no_flow_is_not_let_out() -> None:
    router = make_router()
    error = (
        IP(src="10.0.1.2", dst=REMOTE)
        / ICMP(type=3, code=3)
        / IPerror(src=REMOTE, dst="10.0.1.2")
        / UDPerror(sport=9, dport=9)
    )
    assert send(router, 0, error) == []
    assert router.drops["nat-icmp-no-flow"] == 1


def test_a_packet_that_dies_after_nat_leaves_no_flow_behind() -> None:
    """A TTL-1 SYN to a forwarded port is translated, then dies of its TTL: like Linux, which never
    confirms a conntrack entry whose packet did not leave, no flow or mapping stays."""
    router = make_router()
    assert router.nat is not None
    probe = IP(src=REMOTE, dst=NAT_IP, ttl=1) / TCP(sport=40000, dport=8080, flags="S")
    p = one(send(router, 2, probe), 2)
    assert p[ICMP].type == 11
    assert len(router.nat.conntrack) == 0 and router.nat.mappings == {}
    assert router.events["conntrack-unconfirmed"] == 1
    hairpin = IP(src="10.0.1.2", dst=NAT_IP, ttl=1) / TCP(sport=40001, dport=8080, flags="S")
    send(router, 0, hairpin)
    assert len(router.nat.conntrack) == 0 and router.nat.mappings == {}
    alive = IP(src=REMOTE, dst=NAT_IP) / TCP(sport=40002, dport=8080, flags="S")
    one(send(router, 2, alive), 1)
    assert len(router.nat.conntrack) == 1  # one that leaves stays
