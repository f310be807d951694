"""NAT66 (nat6.py) through a datapath: masquerade, forwards and hairpin, ICMPv6 errors, fragments, the
flow cache and the conntrack table it shares with IPv4's NAT.

Every frame is built with scapy and every frame that comes out is read back with scapy: its addresses
and ports, and its checksums recomputed afresh (TCP, UDP and ICMPv6 all have a pseudo-header with the
addresses, RFC 8200 8.1 and RFC 4443 2.3, so every rewrite moves them). A NEEDS_CSUM frame's field must
hold the new pseudo-header sum, computed here by hand. The flow cache is checked against a datapath
without one, fed the same frames: a hit must write the slow path's bytes.

The world: lan (a, b) fd00:80::/64 and dmz (c) fd00:80:0:1::/64, inside fd00:80::/52; the uplink wan
(up: 2001:2::1, the default gateway; the router 2001:2::2, the NAT66 address). A server beyond the
upstream router is 2001:2:0:5::80. Forwards: tcp 8080 to c:80, udp 5353 to b:53 (b shares a's segment).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import NamedTuple

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    in6_chksum,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.nat import FRAGMENT_TIMEOUT, NatConfig, PortForward
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV6, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR
from vswitch.tools.debug.trace import trace

L3 = 24  # the IPv6 header in a buffer: virtio-net header (10) + Ethernet (14)
HLIM = L3 + 7
NOW = 1.0
NAT = "2001:2::2"
UPSTREAM, SERVER = "2001:2::1", "2001:2:0:5::80"
R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
TIMEOUT = 300.0


class Host(NamedTuple):
    port: str
    mac: str
    ip: str
    gateway_mac: str
    gateway: str


A = Host("a", "02:00:00:00:01:0a", "fd00:80::a", R_LAN, "fd00:80::1")
B = Host("b", "02:00:00:00:01:0b", "fd00:80::b", R_LAN, "fd00:80::1")
C = Host("c", "02:00:00:00:02:0c", "fd00:80:0:1::c", R_DMZ, "fd00:80:0:1::1")
UP = Host("up", "02:00:00:00:00:ff", UPSTREAM, R_WAN, NAT)


def a6(text: str) -> bytes:
    return IPv6Address(text).packed


def mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def ones_sum(data: bytes) -> int:
    """RFC 1071's folded sum of 16-bit words: written here, not imported from the code under test."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class Out(NamedTuple):
    port: str
    buf: bytes

    @property
    def pkt(self) -> Packet:
        return Ether(self.buf[10:])

    @property
    def ip(self) -> Packet:
        ip: Packet = self.pkt[IPv6]
        return ip


@dataclass
class World:
    dp: Datapath
    router: Router
    ports: dict[str, int]
    names: dict[int, str] = field(default_factory=dict)

    def send(self, h: Host, buf: bytes, now: float = NOW) -> list[Out]:
        return self.outs(self.dp.receive(self.ports[h.port], buf, now))

    def outs(self, verdict: Verdict) -> list[Out]:
        assert verdict is None or isinstance(verdict, list), verdict  # routed frames only, here
        return [] if verdict is None else [Out(self.names[p], bytes(f)) for p, f in verdict]

    def drops(self) -> dict[str, int]:
        return {k: v for k, v in self.router.drops.items() if v}

    def table(self, now: float = NOW) -> list[dict[str, object]]:
        return self.router.conntrack_table(now)

    @property
    def hits(self) -> int:
        return self.dp.counters.flow_cache_hits


def world(cache: bool = False, wan_mtu: int = 1500) -> World:
    """lan, dmz and wan above, with IPv4's NAT (whose conntrack NAT66 shares) and NAT66 on wan; the
    hosts and the upstream router known to the router's neighbour cache and the FDBs."""
    dp = Datapath(flow_cache_max=8192 if cache else 0)
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    where = {"a": lan, "b": lan, "c": dmz, "up": wan}
    ports = {name: dp.add_port(name, segment) for name, segment in where.items()}
    router = Router(
        [
            Interface(
                lan,
                "lan",
                mac(R_LAN),
                IPv4Interface("10.1.0.1/24"),
                address6=IPv6Interface(f"{A.gateway}/64"),
            ),
            Interface(
                dmz,
                "dmz",
                mac(R_DMZ),
                IPv4Interface("10.2.0.1/24"),
                address6=IPv6Interface(f"{C.gateway}/64"),
            ),
            Interface(
                wan,
                "wan",
                mac(R_WAN),
                IPv4Interface("198.18.0.2/24"),
                mtu=wan_mtu,
                uplink=True,
                address6=IPv6Interface(f"{NAT}/64"),
                advertise=False,
            ),
        ],
        [
            Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), wan),
            Route(IPv6Network("::/0"), IPv6Address(UPSTREAM), wan),
        ],
        nat=NatConfig(wan, IPv4Address("198.18.0.2"), [IPv4Network("10.0.0.0/8")]),
        nat6=NatConfig(
            wan,
            IPv6Address(NAT),
            [IPv6Network("fd00:80::/52")],
            forwards=[
                PortForward(6, 8080, IPv6Address(C.ip), 80),
                PortForward(17, 5353, IPv6Address(B.ip), 53),
            ],
        ),
        arp_timeout=TIMEOUT,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    router.arp.learn(int(IPv4Address("198.18.0.1")), mac(UP.mac), wan, 0.0)
    w = World(dp, router, ports, {v: k for k, v in ports.items()})
    for h in (A, B, C, UP):
        w.send(h, solicit(h), 0.0)
    return w


def solicit(h: Host) -> bytes:
    """h's solicitation for its gateway, with its link-layer address: the router learns it, the FDB
    its port."""
    group = str(IPv6Address("ff02::1:ff00:0") + (int(IPv6Address(h.gateway)) & 0xFFFFFF))
    l3 = IPv6(src=h.ip, dst=group, hlim=255) / ICMPv6ND_NS(tgt=h.gateway) / ICMPv6NDOptSrcLLAddr(lladdr=h.mac)
    group_mac = "33:33:" + ":".join(f"{x:02x}" for x in IPv6Address(group).packed[12:])
    return ZERO_VNET_HDR + bytes(Ether(src=h.mac, dst=group_mac) / l3)


def frame(h: Host, l3: Packet, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    """l3 sent by h to its gateway's MAC."""
    return vnet + bytes(Ether(src=h.mac, dst=h.gateway_mac) / l3)


def tcp(h: Host, src: str, dst: str, sport: int, dport: int, flags: str, data: bytes = b"") -> bytes:
    return frame(h, IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / data)


def udp(h: Host, src: str, dst: str, sport: int, dport: int, data: bytes = b"query") -> bytes:
    return frame(h, IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / data)


def echo(h: Host, ident: int, data: bytes = b"hi") -> bytes:
    return frame(h, IPv6(src=h.ip, dst=SERVER) / ICMPv6EchoRequest(id=ident, seq=1, data=data))


def upper_sum(nh: int, ip: Packet, data: bytes) -> int:
    """scapy's checksum over data with ip's pseudo-header: 0 when data's own checksum verifies."""
    return int(in6_chksum(nh, ip, data))  # type: ignore[no-untyped-call]


def checksum_ok(o: Out) -> bool:
    """The upper-layer checksum of the frame's IPv6 packet (no extension header) verifies afresh."""
    ip = o.ip
    payload = o.buf[L3 + 40 : L3 + 40 + ip.plen]
    return bool(upper_sum(ip.nh, ip, payload) == 0)


def one(outs: list[Out], port: str) -> Out:
    assert [o.port for o in outs] == [port], outs
    return outs[0]


def partial_sum(src: str, dst: str, length: int, nh: int) -> int:
    """The folded pseudo-header sum (RFC 8200 8.1), uncomplemented: what a NEEDS_CSUM field holds."""
    return ones_sum(a6(src) + a6(dst) + struct.pack("!I3xB", length, nh))


def needs_csum(h: Host, dst: str, sport: int, payload: int, gso_size: int = 0) -> bytes:
    """A TCP ACK from h as a tap hands it over with the checksum left to finish: NEEDS_CSUM, the
    partial pseudo-header sum in the field (GSO_TCPV6 too when gso_size is given)."""
    data = bytes(range(256)) * (payload // 256)
    ip = IPv6(src=h.ip, dst=dst) / TCP(sport=sport, dport=80, flags="A") / data
    raw = bytearray(bytes(Ether(src=h.mac, dst=h.gateway_mac) / ip))
    raw[14 + 40 + 16 : 14 + 40 + 18] = partial_sum(h.ip, dst, len(ip[TCP]), 6).to_bytes(2, "big")
    gso = (GSO_TCPV6, 14 + 40 + 20, gso_size) if gso_size else (0, 0, 0)
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, *gso, 14 + 40, 16) + bytes(raw)


def finish_checksum(buf: bytes) -> bytes:
    """What the kernel does with NEEDS_CSUM: the sum from csum_start, complemented, at csum_offset."""
    _, _, _, _, start, offset = VNET_HDR.unpack_from(buf)
    data = bytearray(buf[10:])
    data[start + offset : start + offset + 2] = (0xFFFF - ones_sum(bytes(data[start:]))).to_bytes(2, "big")
    return ZERO_VNET_HDR + bytes(data)


def handshake(w: World, h: Host, sport: int) -> int:
    """A TCP flow from h to SERVER:80 brought to ESTABLISHED; its external port."""
    syn = one(w.send(h, tcp(h, h.ip, SERVER, sport, 80, "S")), "up")
    ext = int(syn.pkt[TCP].sport)
    one(w.send(UP, tcp(UP, SERVER, NAT, 80, ext, "SA")), h.port)
    one(w.send(h, tcp(h, h.ip, SERVER, sport, 80, "A")), "up")
    return ext


# --- masquerade ------------------------------------------------------------------------------------
def test_an_outbound_syn_leaves_from_the_nat_address_with_its_port_and_a_valid_checksum() -> None:
    w = world()
    sent = tcp(A, A.ip, SERVER, 40000, 80, "S")
    o = one(w.send(A, sent), "up")
    assert (o.pkt.src, o.pkt.dst) == (R_WAN, UP.mac)
    assert (o.ip.src, o.ip.dst, o.ip.hlim) == (NAT, SERVER, 63)
    assert (o.pkt[TCP].sport, o.pkt[TCP].dport) == (40000, 80), "the port is preserved (RFC 4787 REQ-1)"
    assert checksum_ok(o)
    assert o.buf[L3 + 40 + 4 : L3 + 40 + 16] == sent[L3 + 40 + 4 : L3 + 40 + 16], "TCP's other fields stay"
    assert w.router.events[Event.NAT_NEW_FLOW] == 1


def test_the_reply_comes_back_to_the_inside_host_translated() -> None:
    w = world()
    one(w.send(A, tcp(A, A.ip, SERVER, 40000, 80, "S")), "up")
    o = one(w.send(UP, tcp(UP, SERVER, NAT, 80, 40000, "SA")), "a")
    assert (o.pkt.src, o.pkt.dst) == (R_LAN, A.mac)
    assert (o.ip.src, o.ip.dst, o.pkt[TCP].dport) == (SERVER, A.ip, 40000)
    assert checksum_ok(o)
    one(w.send(A, tcp(A, A.ip, SERVER, 40000, 80, "A")), "up")
    (row,) = w.table()
    assert row["state"] == "ESTABLISHED" and row["assured"]


def test_a_port_taken_by_another_host_is_remapped_and_the_reply_finds_its_way_back() -> None:
    """b took 40000 first: a's flow gets another external port (endpoint-independent mapping), the
    checksums follow the port too, and each reply reaches its own host."""
    w = world()
    assert one(w.send(B, udp(B, B.ip, SERVER, 40000, 53)), "up").pkt[UDP].sport == 40000
    o = one(w.send(A, udp(A, A.ip, SERVER, 40000, 53)), "up")
    ext = int(o.pkt[UDP].sport)
    assert ext != 40000 and o.ip.src == NAT and checksum_ok(o)
    again = one(w.send(A, udp(A, A.ip, "2001:2:0:6::1", 40000, 53)), "up")
    assert again.pkt[UDP].sport == ext, "the same inside endpoint keeps its mapping to any destination"
    for h, port in ((A, ext), (B, 40000)):
        back = one(w.send(UP, udp(UP, SERVER, NAT, 53, port, b"answer")), h.port)
        assert (back.ip.dst, back.pkt[UDP].dport) == (h.ip, 40000) and checksum_ok(back)


@pytest.mark.parametrize(("payload", "gso_size"), [(512, 0), (4096, 1440)], ids=["needs-csum", "tso6"])
def test_a_partial_checksum_gets_the_new_pseudo_header_sum(payload: int, gso_size: int) -> None:
    """The field of a NEEDS_CSUM frame holds the uncomplemented pseudo-header sum: it must become the
    sum for the NAT address; the port (remapped here, b holds 40000) is in the data the device sums,
    so it must not be added twice. Finished as the kernel would, the checksum verifies."""
    w = world()
    handshake(w, B, 40000)
    ext = handshake(w, A, 40000)
    assert ext != 40000
    sent = needs_csum(A, SERVER, 40000, payload, gso_size)
    o = one(w.send(A, sent), "up")
    assert o.buf[:10] == sent[:10], "the virtio-net header passes through"
    assert (o.ip.src, o.pkt[TCP].sport) == (NAT, ext)
    at = L3 + 40 + 16
    assert o.buf[at : at + 2] == partial_sum(NAT, SERVER, payload + 20, 6).to_bytes(2, "big")
    assert checksum_ok(Out(o.port, finish_checksum(o.buf)))


def test_a_complete_udp_checksum_that_would_be_0_is_sent_as_ffff() -> None:
    """RFC 8200 8.1: a computed UDP checksum of 0 goes out as 0xFFFF (0 would mean none). The payload's
    last word is chosen so the translated datagram's sum comes to exactly that."""
    w = world()
    probe = one(w.send(A, udp(A, A.ip, SERVER, 40001, 53, b"xx\x00\x00")), "up")
    base = probe.buf[L3 + 40 : L3 + 40 + probe.ip.plen]
    # The translated datagram with its checksum field 0: choose the last word so the sum is 0xFFFF.
    word = 0xFFFF - ones_sum(
        a6(NAT) + a6(SERVER) + struct.pack("!I3xB", len(base), 17) + base[:6] + base[8:-2]
    )
    data = b"xx" + word.to_bytes(2, "big")
    o = one(w.send(A, udp(A, A.ip, SERVER, 40001, 53, data)), "up")
    assert o.pkt[UDP].chksum == 0xFFFF and checksum_ok(o)


def test_icmpv6_echo_out_and_back_with_its_checksum_over_the_pseudo_header() -> None:
    """The identifier is kept when free and remapped when not (b uses 7 after a); ICMPv6's checksum
    covers the addresses (RFC 4443 2.3), so it must verify after each rewrite, both ways."""
    w = world()
    for h in (A, B):
        o = one(w.send(h, echo(h, 7)), "up")
        assert o.ip.src == NAT and checksum_ok(o)
        ident = int(o.pkt[ICMPv6EchoRequest].id)
        assert (ident == 7) is (h is A)
        reply = frame(UP, IPv6(src=SERVER, dst=NAT) / ICMPv6EchoReply(id=ident, seq=1, data=b"hi"))
        back = one(w.send(UP, reply), h.port)
        assert (back.ip.dst, back.pkt[ICMPv6EchoReply].id) == (h.ip, 7) and checksum_ok(back)
    rows = {row["orig"]: row for row in w.table()}
    assert set(rows) == {f"[{h.ip}]:7 -> [{SERVER}]:0" for h in (A, B)}
    assert {row["proto"] for row in rows.values()} == {"icmpv6"}


def test_the_nat_address_answers_ping_from_outside() -> None:
    w = world()
    o = one(w.send(UP, frame(UP, IPv6(src=SERVER, dst=NAT) / ICMPv6EchoRequest(id=3, data=b"x"))), "up")
    assert o.ip.src == NAT and ICMPv6EchoReply in o.pkt and checksum_ok(o)
    assert w.table() == []


# --- what is refused -------------------------------------------------------------------------------
def test_unsolicited_inbound_to_the_nat_address_is_dropped() -> None:
    w = world()
    assert w.send(UP, udp(UP, SERVER, NAT, 53, 9999)) == []
    assert w.send(UP, tcp(UP, SERVER, NAT, 40000, 22, "S")) == []
    assert w.drops() == {Drop.NAT_UNSOLICITED: 2}
    assert w.table() == []


def test_tcp_that_does_not_start_with_a_syn_is_dropped_and_so_is_a_stray_echo_reply() -> None:
    w = world()
    assert w.send(A, tcp(A, A.ip, SERVER, 40000, 80, "A")) == []
    assert w.send(A, frame(A, IPv6(src=A.ip, dst=SERVER) / ICMPv6EchoReply(id=5))) == []
    assert w.drops() == {Drop.NAT_NO_FLOW: 2}
    assert w.table() == []


def test_between_inside_segments_nothing_is_translated_or_tracked() -> None:
    w = world()
    sent = tcp(A, A.ip, C.ip, 40000, 80, "A")
    o = one(w.send(A, sent), "c")
    assert o.buf[L3 + 8 :] == sent[L3 + 8 :] and o.buf[HLIM] == sent[HLIM] - 1
    assert w.table() == []


def test_routed_in_from_the_uplink_is_tracked_as_it_is_and_its_reply_is_not_masqueraded() -> None:
    """An identity flow: the outside reaches c's own address, and c's answer keeps it."""
    w = world()
    o = one(w.send(UP, tcp(UP, SERVER, C.ip, 40000, 22, "S")), "c")
    assert o.ip.dst == C.ip and checksum_ok(o)
    back = one(w.send(C, tcp(C, C.ip, SERVER, 22, 40000, "SA")), "up")
    assert back.ip.src == C.ip and back.pkt[TCP].sport == 22 and checksum_ok(back)
    (row,) = w.table()
    assert row["orig"] == f"[{SERVER}]:40000 -> [{C.ip}]:22"
    assert row["reply"] == f"[{C.ip}]:22 -> [{SERVER}]:40000"
    assert w.router.events[Event.CONNTRACK_ROUTED_FLOW] == 1


# --- forwards and hairpin ----------------------------------------------------------------------------
def test_a_syn_to_the_forwarded_port_reaches_c_and_its_answer_leaves_from_the_forward() -> None:
    w = world()
    o = one(w.send(UP, tcp(UP, SERVER, NAT, 41000, 8080, "S")), "c")
    assert (o.ip.src, o.ip.dst, o.pkt[TCP].sport, o.pkt[TCP].dport) == (SERVER, C.ip, 41000, 80)
    assert checksum_ok(o)
    back = one(w.send(C, tcp(C, C.ip, SERVER, 80, 41000, "SA")), "up")
    assert (back.ip.src, back.pkt[TCP].sport, back.ip.dst, back.pkt[TCP].dport) == (NAT, 8080, SERVER, 41000)
    assert checksum_ok(back)
    (row,) = w.table()
    assert (row["orig"], row["reply"]) == (
        f"[{SERVER}]:41000 -> [{NAT}]:8080",
        f"[{C.ip}]:80 -> [{SERVER}]:41000",
    )


def test_hairpin_from_a_to_the_forwarded_port_is_masqueraded_too() -> None:
    """RFC 5382 REQ-8: c must answer through us, so it sees the NAT address, not a's."""
    w = world()
    o = one(w.send(A, tcp(A, A.ip, NAT, 42000, 8080, "S")), "c")
    assert (o.ip.src, o.ip.dst, o.pkt[TCP].dport) == (NAT, C.ip, 80)
    ext = int(o.pkt[TCP].sport)
    assert checksum_ok(o)
    back = one(w.send(C, tcp(C, C.ip, NAT, 80, ext, "SA")), "a")
    assert (back.ip.src, back.pkt[TCP].sport, back.ip.dst, back.pkt[TCP].dport) == (NAT, 8080, A.ip, 42000)
    assert checksum_ok(back)


def test_hairpin_within_one_segment_goes_back_out_of_it_masqueraded() -> None:
    w = world()
    o = one(w.send(A, udp(A, A.ip, NAT, 6000, 5353)), "b")
    assert (o.pkt.src, o.pkt.dst) == (R_LAN, B.mac)
    assert (o.ip.src, o.ip.dst, o.pkt[UDP].dport) == (NAT, B.ip, 53) and checksum_ok(o)


def test_a_forwarded_port_is_never_given_to_a_masqueraded_flow() -> None:
    w = world()
    o = one(w.send(A, tcp(A, A.ip, SERVER, 8080, 80, "S")), "up")
    assert o.pkt[TCP].sport != 8080 and checksum_ok(o)


# --- ICMPv6 errors -----------------------------------------------------------------------------------
def test_port_unreachable_from_outside_reaches_a_with_its_own_packet_quoted() -> None:
    """The upstream router's error quotes the datagram as it saw it (NAT address, remapped port): a gets
    it at its own address from the reporter's, quoting its own address and port, every checksum valid
    (the outer ICMPv6 one over the new pseudo-header and quote; the quoted UDP one too)."""
    w = world()
    one(w.send(B, udp(B, B.ip, SERVER, 5000, 9)), "up")  # b holds 5000: a's flow is remapped
    sent = udp(A, A.ip, SERVER, 5000, 9, b"anyone?")
    out = one(w.send(A, sent), "up")
    assert out.pkt[UDP].sport != 5000
    error = IPv6(src=UPSTREAM, dst=NAT) / ICMPv6DestUnreach(code=4) / Raw(out.buf[L3:])
    o = one(w.send(UP, frame(UP, error)), "a")
    assert (o.ip.src, o.ip.dst, o.pkt[ICMPv6DestUnreach].code) == (UPSTREAM, A.ip, 4)
    assert checksum_ok(o)
    quoted = o.buf[L3 + 48 :]
    quoted_ip = IPv6(quoted)
    assert (quoted_ip.src, quoted_ip.dst) == (A.ip, SERVER)
    assert (quoted_ip[UDP].sport, quoted_ip[UDP].dport) == (5000, 9)
    assert quoted[:7] + quoted[8:] == sent[L3 : L3 + 7] + sent[L3 + 8 :] and quoted[7] == sent[HLIM] - 1
    assert upper_sum(17, quoted_ip, quoted[40:]) == 0, "the quoted UDP checksum is a's own again"
    assert w.router.events[Event.NAT_ICMP_ERROR_TRANSLATED] == 1


def test_an_error_quoting_only_the_start_of_tcp_and_one_about_an_echo_are_translated() -> None:
    """A quote that ends before TCP's checksum (8 bytes of it) leaves nothing to fix there; an error
    about an echo request puts its identifier back."""
    w = world()
    one(w.send(B, tcp(B, B.ip, SERVER, 4000, 80, "S")), "up")
    out = one(w.send(A, tcp(A, A.ip, SERVER, 4000, 80, "S")), "up")
    error = IPv6(src=SERVER, dst=NAT) / ICMPv6DestUnreach(code=1) / Raw(out.buf[L3 : L3 + 48])
    o = one(w.send(UP, frame(UP, error)), "a")
    assert checksum_ok(o) and o.buf[L3 + 48 + 8 : L3 + 48 + 24] == a6(A.ip)
    assert struct.unpack_from("!H", o.buf, L3 + 48 + 40)[0] == 4000

    one(w.send(B, frame(B, IPv6(src=B.ip, dst=SERVER) / ICMPv6EchoRequest(id=9))), "up")
    out = one(w.send(A, frame(A, IPv6(src=A.ip, dst=SERVER) / ICMPv6EchoRequest(id=9, data=b"pp"))), "up")
    assert out.pkt[ICMPv6EchoRequest].id != 9
    error = IPv6(src=UPSTREAM, dst=NAT) / ICMPv6TimeExceeded() / Raw(out.buf[L3:])
    o = one(w.send(UP, frame(UP, error)), "a")
    assert checksum_ok(o)
    quoted = IPv6(o.buf[L3 + 48 :])
    assert quoted.src == A.ip and quoted[ICMPv6EchoRequest].id == 9
    assert upper_sum(58, quoted, o.buf[L3 + 48 + 40 :]) == 0


def test_an_error_from_c_about_a_forwarded_datagram_leaves_from_the_nat_address() -> None:
    """The other way: b refuses a datagram forwarded to it; its error leaves like a packet of the flow,
    from the NAT address, quoting the datagram as the server sent it (to the NAT address and port)."""
    w = world()
    inbound = one(w.send(UP, udp(UP, SERVER, NAT, 777, 5353)), "b")
    error = IPv6(src=B.ip, dst=SERVER) / ICMPv6DestUnreach(code=4) / Raw(inbound.buf[L3:])
    o = one(w.send(B, frame(B, error)), "up")
    assert (o.ip.src, o.ip.dst) == (NAT, SERVER) and checksum_ok(o)
    quoted = IPv6(o.buf[L3 + 48 :])
    assert (quoted.src, quoted[UDP].sport, quoted.dst, quoted[UDP].dport) == (SERVER, 777, NAT, 5353)
    assert upper_sum(17, quoted, o.buf[L3 + 48 + 40 :]) == 0


def test_an_error_with_a_partial_checksum_gets_the_new_pseudo_header_sum() -> None:
    """ICMPv6's checksum has a pseudo-header (RFC 4443 2.3): a NEEDS_CSUM error's field holds its sum,
    which the new outer source moves (the quote is in the data the device sums). Finished as the
    kernel would, the checksum verifies."""
    w = world()
    inbound = one(w.send(UP, udp(UP, SERVER, NAT, 777, 5353)), "b")
    error = IPv6(src=B.ip, dst=SERVER) / ICMPv6DestUnreach(code=4) / Raw(inbound.buf[L3:])
    raw = bytearray(bytes(Ether(src=B.mac, dst=R_LAN) / error))
    length = len(raw) - 14 - 40
    raw[14 + 40 + 2 : 14 + 40 + 4] = partial_sum(B.ip, SERVER, length, 58).to_bytes(2, "big")
    o = one(w.send(B, VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, 14 + 40, 2) + bytes(raw)), "up")
    assert (o.ip.src, o.ip.dst) == (NAT, SERVER)
    assert o.buf[L3 + 42 : L3 + 44] == partial_sum(NAT, SERVER, length, 58).to_bytes(2, "big")
    assert checksum_ok(Out(o.port, finish_checksum(o.buf)))


def test_an_error_about_no_flow_is_dropped_both_ways() -> None:
    w = world()
    quoted = IPv6(src=NAT, dst=SERVER) / UDP(sport=1, dport=2)
    error = IPv6(src=SERVER, dst=NAT) / ICMPv6DestUnreach(code=4) / Raw(bytes(quoted))
    assert w.send(UP, frame(UP, error)) == []
    about_inbound = IPv6(src=SERVER, dst=A.ip) / UDP(sport=9, dport=9)
    error = IPv6(src=A.ip, dst=SERVER) / ICMPv6DestUnreach(code=4) / Raw(bytes(about_inbound))
    assert w.send(A, frame(A, error)) == [], "it would carry a's address out"
    assert w.drops() == {Drop.NAT_ICMP_NO_FLOW: 2}


# --- fragments ---------------------------------------------------------------------------------------
def fragments(h: Host, sport: int, ident: int, data: bytes = bytes(range(64)) * 4) -> tuple[bytes, bytes]:
    """A UDP datagram from h to SERVER in two fragments: the first (offset 0, M) with the UDP header
    and the first 96 data bytes, the later one with the rest. The UDP checksum covers the datagram."""
    datagram = bytes(IPv6(src=h.ip, dst=SERVER) / UDP(sport=sport, dport=7007) / data)[40:]
    ip = IPv6(src=h.ip, dst=SERVER)
    first = ip / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=ident) / Raw(datagram[:104])
    later = ip / IPv6ExtHdrFragment(nh=17, offset=13, m=0, id=ident) / Raw(datagram[104:])
    return frame(h, first), frame(h, later)


def reassembled_checksum_ok(first: Out, later: Out) -> bool:
    """The two fragments' payloads put together: does the datagram's UDP checksum verify for the
    addresses they left with?"""
    datagram = first.buf[L3 + 48 :] + later.buf[L3 + 48 :]
    return bool(upper_sum(17, first.ip, datagram) == 0)


def test_a_first_fragment_is_translated_with_its_flow_and_its_later_one_gets_its_addresses() -> None:
    w = world()
    one(w.send(B, udp(B, B.ip, SERVER, 7000, 7007)), "up")  # b holds 7000: the first fragment is remapped
    first, later = fragments(A, 7000, 0x1234)
    f = one(w.send(A, first), "up")
    assert (f.ip.src, f.ip.dst) == (NAT, SERVER)
    ext = struct.unpack_from("!H", f.buf, L3 + 48)[0]
    assert ext != 7000
    g = one(w.send(A, later), "up")
    assert (g.ip.src, g.ip.dst, g.ip.hlim) == (NAT, SERVER, 63)
    assert g.buf[L3 + 40 :] == later[L3 + 40 :], "the fragment header and data go as they came"
    assert reassembled_checksum_ok(f, g)
    assert w.router.events[Event.NAT_FRAGMENT_TRANSLATED] == 1


def test_a_later_fragment_alone_is_dropped() -> None:
    """No first fragment named its flow (a host sends them in order: nothing is held)."""
    w = world()
    _, later = fragments(A, 7000, 0x99)
    assert w.send(A, later) == []
    inbound = IPv6(src=SERVER, dst=NAT) / IPv6ExtHdrFragment(nh=17, offset=13, id=5) / Raw(b"x" * 16)
    assert w.send(UP, frame(UP, inbound)) == []
    assert w.drops() == {Drop.NAT_FRAGMENT: 2}


def test_a_later_fragment_after_its_firsts_record_expired_is_dropped() -> None:
    """The first fragment's rewrite is kept FRAGMENT_TIMEOUT (the kernel's ipfrag_time), no longer:
    a later fragment past it is not translated with a stale record."""
    w = world()
    first, later = fragments(A, 7000, 0x77)
    one(w.send(A, first), "up")
    assert w.send(A, later, NOW + FRAGMENT_TIMEOUT + 1) == []
    assert w.drops() == {Drop.NAT_FRAGMENT: 1}


# --- hop limit ---------------------------------------------------------------------------------------
def test_an_outbound_packet_with_hop_limit_1_makes_no_flow_and_gets_time_exceeded() -> None:
    w = world()
    sent = frame(A, IPv6(src=A.ip, dst=SERVER, hlim=1) / UDP(sport=33434, dport=33435))
    o = one(w.send(A, sent), "a")
    assert (o.ip.src, o.ip.dst) == (A.gateway, A.ip) and ICMPv6TimeExceeded in o.pkt
    assert o.buf[L3 + 48 :] == sent[L3:], "the probe is quoted as a sent it"
    assert checksum_ok(o)
    assert w.table() == [] and w.drops() == {Drop.HOP_LIMIT_EXCEEDED: 1}
    nat6 = w.router.v6.nat if w.router.v6 is not None else None
    assert nat6 is not None and nat6.mappings == {}


def test_an_inbound_syn_to_the_forward_that_dies_of_its_hop_limit_leaves_no_flow() -> None:
    """Translated, then refused: like Linux, which never confirms an entry whose packet did not leave."""
    w = world()
    probe = IPv6(src=SERVER, dst=NAT, hlim=1) / TCP(sport=41000, dport=8080, flags="S")
    o = one(w.send(UP, frame(UP, probe)), "up")
    assert ICMPv6TimeExceeded in o.pkt and o.ip.dst == SERVER and checksum_ok(o)
    assert w.table() == [] and w.router.events[Event.CONNTRACK_UNCONFIRMED] == 1
    one(w.send(UP, tcp(UP, SERVER, NAT, 41000, 8080, "S")), "c")
    assert len(w.table()) == 1


def test_an_outbound_packet_too_big_for_the_uplink_makes_no_flow_and_gets_packet_too_big() -> None:
    """Translated, then refused (RFC 8200 5: a router never fragments): the error quotes a's packet as
    a sent it, and the flow it made goes with it."""
    w = world(wan_mtu=1280)
    sent = udp(A, A.ip, SERVER, 5000, 53, bytes(1300))
    o = one(w.send(A, sent), "a")
    assert (o.ip.src, o.ip.dst, o.pkt[ICMPv6PacketTooBig].mtu) == (A.gateway, A.ip, 1280)
    assert o.buf[L3 + 48 : L3 + 88] == sent[L3 : L3 + 40] and checksum_ok(o)
    assert w.table() == [] and w.router.events[Event.CONNTRACK_UNCONFIRMED] == 1
    nat6 = w.router.v6.nat if w.router.v6 is not None else None
    assert nat6 is not None and nat6.mappings == {}


# --- conntrack, shared with IPv4 --------------------------------------------------------------------
def test_the_conntrack_table_shows_ipv6_tuples_next_to_ipv4_ones() -> None:
    """One table for both families; each family keeps its own port mappings (a v4 and a v6 flow from
    port 40000 both keep it)."""
    w = world()
    ext = handshake(w, A, 40000)
    v4 = Ether(src=A.mac, dst=R_LAN) / IP(src="10.1.0.2", dst="198.19.5.5") / UDP(sport=40000, dport=53)
    o4 = one(w.send(A, ZERO_VNET_HDR + bytes(v4)), "up").pkt[IP]
    assert (o4.src, o4[UDP].sport) == ("198.18.0.2", 40000), "IPv4's own mapping keeps the port too"
    rows = {f"{row['proto']} {row['orig']}": row for row in w.table()}
    tcp6 = rows[f"tcp [{A.ip}]:40000 -> [{SERVER}]:80"]
    assert ext == 40000 and tcp6["reply"] == f"[{SERVER}]:80 -> [{NAT}]:40000"
    assert tcp6["state"] == "ESTABLISHED"
    udp4 = rows["udp 10.1.0.2:40000 -> 198.19.5.5:53"]
    assert udp4["reply"] == "198.19.5.5:53 -> 198.18.0.2:40000"


def test_an_expired_flow_frees_its_mapping_for_the_next_host() -> None:
    w = world()
    one(w.send(A, udp(A, A.ip, SERVER, 40000, 53)), "up")
    assert one(w.send(B, udp(B, B.ip, SERVER, 40000, 53)), "up").pkt[UDP].sport != 40000
    w.router.on_timer(NOW + 31)  # UDP's unreplied timeout (30 s) passed for both
    assert w.table(NOW + 31) == []
    nat6 = w.router.v6.nat if w.router.v6 is not None else None
    assert nat6 is not None and nat6.mappings == {}
    assert one(w.send(B, udp(B, B.ip, SERVER, 40000, 53), NOW + 32), "up").pkt[UDP].sport == 40000


def test_the_trace_of_a_new_flow_commits_no_flow_and_no_mapping() -> None:
    """`vswitch trace` runs the real pipeline and takes every change back: NAT66's mapping too."""
    w = world()
    sent = tcp(A, A.ip, SERVER, 40000, 80, "S")
    result = trace(w.dp, w.ports["a"], sent, NOW)
    assert [port for port, _ in result.outputs] == ["up"]
    assert w.table() == []
    nat6 = w.router.v6.nat if w.router.v6 is not None else None
    assert nat6 is not None and nat6.mappings == {}
    one(w.send(B, tcp(B, B.ip, SERVER, 40000, 80, "S")), "up")
    assert w.table()[0]["reply"] == f"[{SERVER}]:80 -> [{NAT}]:40000", "the port was never taken"


# --- the flow cache ----------------------------------------------------------------------------------
@dataclass
class Twin:
    """Two worlds, the flow cache on and off, fed the same frames: the frames out must be equal."""

    on: World
    off: World

    def send(self, h: Host, buf: bytes, now: float = NOW) -> tuple[bool, list[Out]]:
        before = self.on.hits
        got, expected = self.on.send(h, buf, now), self.off.send(h, buf, now)
        assert got == expected
        assert self.on.drops() == self.off.drops()
        assert self.on.table(now) == self.off.table(now)
        return self.on.hits == before + 1, got

    def entries(self) -> int:
        flows = self.on.dp.flows
        assert flows is not None
        return sum(len(t) for t in (*flows.tables6, *flows.echo_tables6))


def _tcp_flow(twin: Twin) -> tuple[bytes, bytes]:
    for h, sent in ((A, tcp(A, A.ip, SERVER, 40000, 80, "S")), (UP, tcp(UP, SERVER, NAT, 80, 40000, "SA"))):
        twin.send(h, sent)
    return tcp(A, A.ip, SERVER, 40000, 80, "A", b"data"), tcp(UP, SERVER, NAT, 80, 40000, "A", b"ok")


def _udp_flow(twin: Twin) -> tuple[bytes, bytes]:
    return udp(A, A.ip, SERVER, 5000, 53), udp(UP, SERVER, NAT, 53, 5000, b"answer")


def _echo_flow(twin: Twin) -> tuple[bytes, bytes]:
    return (
        frame(A, IPv6(src=A.ip, dst=SERVER) / ICMPv6EchoRequest(id=7, seq=1, data=b"ping")),
        frame(UP, IPv6(src=SERVER, dst=NAT) / ICMPv6EchoReply(id=7, seq=1, data=b"ping")),
    )


FLOWS = {"tcp-ack": _tcp_flow, "udp": _udp_flow, "icmpv6-echo": _echo_flow}
CACHED = list(FLOWS)


@pytest.mark.parametrize("kind", CACHED)
def test_the_second_packet_of_a_nat66_flow_is_a_hit_with_the_slow_paths_bytes(kind: str) -> None:
    """Out and back: each direction's first packet takes the slow path and leaves its action (the
    flow's translation); the second is a hit, and writes what the datapath without a cache wrote."""
    twin = Twin(world(cache=True), world(cache=False))
    out, back = FLOWS[kind](twin)
    hit, first = twin.send(A, out)
    assert not hit and [(o.port, o.ip.src) for o in first] == [("up", NAT)]
    hit, second = twin.send(A, out, NOW + 1)
    assert hit and second == first and checksum_ok(second[0])
    hit, first = twin.send(UP, back, NOW + 1)
    assert not hit and [(o.port, o.ip.dst) for o in first] == [("a", A.ip)]
    hit, second = twin.send(UP, back, NOW + 2)
    assert hit and second == first and checksum_ok(second[0])


def test_a_partial_checksum_hit_writes_the_slow_paths_sum() -> None:
    """An ESTABLISHED flow whose port was remapped (b holds 40000): a NEEDS_CSUM ACK is a hit, and
    its field holds the pseudo-header sum for the NAT address, as the slow path writes it."""
    twin = Twin(world(cache=True), world(cache=False))
    for h in (B, A):
        _, [syn] = twin.send(h, tcp(h, h.ip, SERVER, 40000, 80, "S"))
        ext = int(syn.pkt[TCP].sport)
        twin.send(UP, tcp(UP, SERVER, NAT, 80, ext, "SA"))
        twin.send(h, tcp(h, h.ip, SERVER, 40000, 80, "A"))
    assert ext != 40000
    sent = needs_csum(A, SERVER, 40000, 512)
    hit, [o] = twin.send(A, sent)
    assert hit, "the flow is ESTABLISHED: its ACKs are replayed"
    assert (o.ip.src, o.pkt[TCP].sport) == (NAT, ext)
    at = L3 + 40 + 16
    assert o.buf[at : at + 2] == partial_sum(NAT, SERVER, 512 + 20, 6).to_bytes(2, "big")
    assert checksum_ok(Out(o.port, finish_checksum(o.buf)))


@pytest.mark.parametrize("kind", CACHED)
def test_when_conntrack_removes_the_flow_its_cache_entries_go(kind: str) -> None:
    twin = Twin(world(cache=True), world(cache=False))
    out, back = FLOWS[kind](twin)
    for h, sent in ((A, out), (UP, back), (A, out), (UP, back)):
        twin.send(h, sent)
    assert twin.entries() == 2
    later = NOW + 432001  # past every timeout, TCP's established one too
    for w in (twin.on, twin.off):
        w.router.on_timer(later)
    assert twin.on.table(later) == [] and twin.entries() == 0
    assert twin.send(A, out, later)[0] is False


def test_a_rst_ends_the_cached_tcp_flows_entries_at_once() -> None:
    twin = Twin(world(cache=True), world(cache=False))
    out, back = _tcp_flow(twin)
    for h, sent in ((A, out), (UP, back), (A, out), (UP, back)):
        twin.send(h, sent)
    assert twin.entries() == 2
    twin.send(UP, tcp(UP, SERVER, NAT, 80, 40000, "R"), NOW + 1)
    assert twin.entries() == 0
    (row,) = twin.on.table(NOW + 1)
    assert row["state"] == "CLOSE"
    assert twin.send(A, out, NOW + 2)[0] is False


def test_a_hop_limit_1_packet_of_a_cached_flow_misses_and_gets_time_exceeded() -> None:
    twin = Twin(world(cache=True), world(cache=False))
    out, _ = _udp_flow(twin)
    twin.send(A, out)
    assert twin.send(A, out, NOW + 1)[0]
    dying = udp(A, A.ip, SERVER, 5000, 53)
    dying = dying[:HLIM] + b"\x01" + dying[HLIM + 1 :]
    hit, [o] = twin.send(A, dying, NOW + 2)
    assert not hit and o.port == "a" and ICMPv6TimeExceeded in o.pkt
    assert twin.send(A, out, NOW + 3)[0], "the entry is still good for the flow's next packets"


def test_icmpv6_errors_about_a_cached_flow_are_never_cached() -> None:
    twin = Twin(world(cache=True), world(cache=False))
    out, _ = _udp_flow(twin)
    [sent] = twin.on.send(A, out)
    twin.off.send(A, out)
    error = frame(UP, IPv6(src=UPSTREAM, dst=NAT) / ICMPv6DestUnreach(code=4) / Raw(sent.buf[L3:]))
    for now in (NOW, NOW + 1):
        hit, [o] = twin.send(UP, error, now)
        assert not hit and o.ip.dst == A.ip and checksum_ok(o)
