"""NPTv6 (RFC 6296, npt.py) on its own and through the router (router6.py `_forward`/`_npt`).

The mapping is checked against the RFC's worked example (3.6), then over seeded random prefixes and
addresses from /32 to /64: it round-trips, it keeps the address's one's-complement sum (so no
checksum over a pseudo-header moves), it changes the word the RFC names and nothing else, and it
keeps the 0xFFFF rules. Through a datapath, every frame is built and read back with scapy: what
leaves by the uplink has its source mapped and its checksums still verify (a partial one is left as
it was), the reply is mapped back, an ICMPv6 error has its outer address and its quoted packet
mapped the other way, and the flow cache replays the very bytes the slow path wrote.

The world: lan (a, b) fd00:80::/64 and dmz (c) fd00:80:0:1::/64, out of the inside prefix
fd00:80::/52; the uplink wan (up: 2001:2::1, the default gateway; the router 2001:2::2), mapped to
2001:2:0:1000::/52. A server beyond the upstream router is 2001:2:5::80 (RFC 5180's range).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import NamedTuple

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPv6,
    in6_chksum,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.npt import Npt
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV6, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR
from vswitch.tools.debug.trace import trace

L3 = 24  # the IPv6 header in a buffer: virtio-net header (10) + Ethernet (14)
HLIM = L3 + 7
SRC = slice(L3 + 8, L3 + 24)
DST = slice(L3 + 24, L3 + 40)
NOW = 1.0


def a6(text: str) -> bytes:
    return IPv6Address(text).packed


def text(address: bytes | None) -> str | None:
    return None if address is None else str(IPv6Address(address))


def ones_sum(data: bytes) -> int:
    """RFC 1071's folded sum of 16-bit words: written here, not imported from the code under test."""
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def words(address: bytes) -> list[int]:
    return [int.from_bytes(address[i : i + 2], "big") for i in range(0, 16, 2)]


# === 1. the mapping ===================================================================================
# RFC 6296 3.6: "the Internal Prefix is FD01:0203:0405:/48, and the External Prefix is 2001:0DB8:0001:/48.
# If a node with internal address FD01:0203:0405:0001::1234 sends an outbound datagram through the NPTv6
# Translator, the resulting external address will be 2001:0DB8:0001:D550::1234."
RFC = Npt(IPv6Network("fd01:203:405::/48"), IPv6Network("2001:db8:1::/48"))


def test_the_rfcs_worked_example() -> None:
    assert text(RFC.outward(a6("fd01:203:405:1::1234"))) == "2001:db8:1:d550::1234"
    assert text(RFC.inward(a6("2001:db8:1:d550::1234"))) == "fd01:203:405:1::1234"


def test_the_rfcs_arithmetic_step_by_step() -> None:
    """'The one's complement checksum of FD01:0203:0405 is 0xFCF5. [...] of 2001:0DB8:0001 is 0xD245.
    Using one's complement arithmetic, 0xD245 - 0xFCF5 = 0xD54F. [...] 0x0001 + 0xD54F = 0xD550.'"""
    internal = 0xFFFF - ones_sum(bytes.fromhex("fd0102030405"))
    external = 0xFFFF - ones_sum(bytes.fromhex("20010db80001"))
    assert (internal, external) == (0xFCF5, 0xD245)
    adjustment = ones_sum((external + (0xFFFF - internal)).to_bytes(4, "big"))
    assert adjustment == 0xD54F
    assert ones_sum((0x0001 + adjustment).to_bytes(4, "big")) == 0xD550
    assert words(RFC.outward(a6("fd01:203:405:1::1234")) or b"")[3] == 0xD550


def test_a_word_that_would_become_ffff_is_written_0_and_maps_back() -> None:
    """0x2AB0 + 0xD54F = 0xFFFF: the RFC's 'changed to 0x0000' (the same number in one's complement)."""
    assert text(RFC.outward(a6("fd01:203:405:2ab0::1234"))) == "2001:db8:1::1234"
    assert text(RFC.inward(a6("2001:db8:1::1234"))) == "fd01:203:405:2ab0::1234"


def test_at_48_or_shorter_a_subnet_of_ffff_cannot_be_mapped() -> None:
    """3.4: the adjustment goes in bits 48-63 and nowhere else; 0xFFFF there would not come back (the
    word written is never 0xFFFF), so the address has no mapping at all, either way."""
    assert RFC.outward(a6("fd01:203:405:ffff::1234")) is None
    assert RFC.inward(a6("2001:db8:1:ffff::1234")) is None
    short = Npt(IPv6Network("fd01:200::/24"), IPv6Network("2001:d00::/24"))
    assert short.outward(a6("fd01:203:405:ffff::1234")) is None


def test_past_48_the_first_identifier_word_that_is_not_ffff_takes_the_adjustment() -> None:
    """3.5: words 64-79, 80-95, 96-111, 112-127 in that order, the first not initially 0xFFFF."""
    npt = Npt(IPv6Network("fd00:80::/52"), IPv6Network("2001:2:0:1000::/52"))
    # fd00:0080:0 less 2001:0002:0:1 (bits 48-51: the prefix's part of word 3), in one's complement
    adjustment = ones_sum(
        bytes.fromhex("fd000080") + (0xFFFF - ones_sum(bytes.fromhex("200100021000"))).to_bytes(2, "big")
    )
    for iid, adjusted in (
        ("0:0:0:a", 4),
        ("ffff:0:0:a", 5),
        ("ffff:ffff:7:a", 6),
        ("ffff:ffff:ffff:a", 7),
    ):
        inside = a6(f"fd00:80::{iid}")
        mapped = npt.outward(inside)
        assert mapped is not None
        changed = [i for i, (x, y) in enumerate(zip(words(inside), words(mapped), strict=True)) if x != y]
        assert changed == [0, 1, 3, adjusted], (iid, text(mapped))
        assert words(mapped)[adjusted] == ones_sum((words(inside)[adjusted] + adjustment).to_bytes(4, "big"))
        assert npt.inward(mapped) == inside
    assert npt.outward(a6("fd00:80::ffff:ffff:ffff:ffff")) is None
    assert npt.inward(a6("2001:2:0:1000:ffff:ffff:ffff:ffff")) is None


@pytest.mark.parametrize("length", [32, 40, 47, 48, 49, 52, 56, 60, 63, 64])
def test_random_addresses_round_trip_keep_their_sum_and_change_prefix_and_one_word(length: int) -> None:
    """Outside the prefix only the word 3.4/3.5 name changes (bits 48-63, or the first identifier
    word not 0xFFFF), never to 0xFFFF; the sum is kept; inward undoes outward."""
    rng = random.Random(6296 * 100 + length)
    mask = ((1 << length) - 1) << (128 - length)
    # Words forced to 0xFFFF in some addresses, so that the rules about them run: at /48 or shorter the
    # subnet word; longer, the first identifier word, the first two, or all four.
    forced = (0, 0, 0xFFFF << 64) if length <= 48 else (0, 0, 0xFFFF << 48, 0xFFFF_FFFF << 32, (1 << 64) - 1)
    for _ in range(40):
        inside = IPv6Network(((0xFD << 120 | rng.getrandbits(120)) & mask, length))
        outside = IPv6Network(((0x2001_0002 << 96 | rng.getrandbits(96)) & mask, length))
        npt = Npt(inside, outside)
        for _ in range(25):
            host = rng.getrandbits(128 - length) | rng.choice(forced)
            address = (int(inside.network_address) | host & ~mask).to_bytes(16, "big")
            assert npt.is_inside(address) and not npt.is_outside(address)
            candidates = [3] if length <= 48 else [i for i in (4, 5, 6, 7) if words(address)[i] != 0xFFFF][:1]
            mapped = npt.outward(address)
            if not candidates or words(address)[candidates[0]] == 0xFFFF:
                assert mapped is None
                continue
            assert mapped is not None and IPv6Address(mapped) in outside and npt.is_outside(mapped)
            assert ones_sum(mapped) == ones_sum(address)
            beyond_prefix = range((length + 15) // 16, 8)
            changed = [i for i in beyond_prefix if words(address)[i] != words(mapped)[i]]
            assert set(changed) <= set(candidates) and words(mapped)[candidates[0]] != 0xFFFF
            assert npt.inward(mapped) == address


def test_random_outside_addresses_map_in_and_back_out() -> None:
    rng = random.Random(52)
    npt = Npt(IPv6Network("fd00:80::/52"), IPv6Network("2001:2:0:1000::/52"))
    for _ in range(1000):
        outside = (int(IPv6Address("2001:2:0:1000::")) | rng.getrandbits(76)).to_bytes(16, "big")
        inside = npt.inward(outside)
        if words(outside)[4:] == [0xFFFF] * 4:
            assert inside is None
            continue
        assert inside is not None and IPv6Address(inside) in IPv6Network("fd00:80::/52")
        assert npt.outward(inside) == outside
        assert ones_sum(inside) == ones_sum(outside)


@pytest.mark.parametrize(
    ("inside", "outside"),
    [("fd00:80::/52", "2001:2::/48"), ("fd00:80::/56", "2001:2::/64"), ("fd00:80::/96", "2001:2::/96")],
)
def test_prefixes_of_two_lengths_or_longer_than_64_are_refused(inside: str, outside: str) -> None:
    with pytest.raises(ValueError, match="at most /64"):
        Npt(IPv6Network(inside), IPv6Network(outside))


# === 2. through the router ============================================================================
INSIDE = IPv6Network("fd00:80::/52")
OUTSIDE = IPv6Network("2001:2:0:1000::/52")
NPT = Npt(INSIDE, OUTSIDE)
UPSTREAM, ROUTER_WAN, SERVER = "2001:2::1", "2001:2::2", "2001:2:5::80"
R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
TIMEOUT = 300.0


class Host(NamedTuple):
    port: str
    mac: str
    ip: str
    gateway_mac: str
    gateway: str


A = Host("a", "02:00:00:00:01:0a", "fd00:80::a", R_LAN, "fd00:80::1")
B = Host("b", "02:00:00:00:01:0b", "fd00:80::21b:ff:fe00:b", R_LAN, "fd00:80::1")
C = Host("c", "02:00:00:00:02:0c", "fd00:80:0:1::c", R_DMZ, "fd00:80:0:1::1")
UP = Host("up", "02:00:00:00:00:ff", UPSTREAM, R_WAN, ROUTER_WAN)


def mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def outward(h: Host) -> str:
    mapped = NPT.outward(a6(h.ip))
    assert mapped is not None
    return str(IPv6Address(mapped))


class Out(NamedTuple):
    port: str
    buf: bytes

    @property
    def pkt(self) -> Packet:
        return Ether(self.buf[10:])


@dataclass
class World:
    dp: Datapath
    ports: dict[str, int]
    names: dict[int, str] = field(default_factory=dict)

    def send(self, h: Host, buf: bytes, now: float = NOW) -> list[Out]:
        return self.outs(self.dp.receive(self.ports[h.port], buf, now), buf)

    def outs(self, verdict: Verdict, sent: bytes) -> list[Out]:
        if verdict is None:
            return []
        if isinstance(verdict, int):
            return [Out(self.names[verdict], sent)]
        if isinstance(verdict, tuple):
            return [Out(self.names[p], sent) for p in verdict]
        return [Out(self.names[p], bytes(f)) for p, f in verdict]

    @property
    def hits(self) -> int:
        return self.dp.counters.flow_cache_hits

    def drops(self) -> dict[str, int]:
        assert self.dp.router is not None
        return dict(self.dp.router.drops)


def world(cache: bool = False) -> World:
    """The lan, dmz and wan above, the hosts and the upstream router known to the router and the FDBs."""
    dp = Datapath(flow_cache_max=8192 if cache else 0)
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    where = {"a": lan, "b": lan, "c": dmz, "up": wan}
    ports = {name: dp.add_port(name, segment) for name, segment in where.items()}
    wan_iface = Interface(
        wan, "wan", mac(R_WAN), IPv4Interface("198.18.0.2/24"), uplink=True,
        address6=IPv6Interface(f"{ROUTER_WAN}/64"), advertise=False,
    )  # fmt: skip
    router = Router(
        [
            Interface(
                lan,
                "lan",
                mac(R_LAN),
                IPv4Interface("10.1.0.1/24"),
                address6=IPv6Interface(A.gateway + "/64"),
            ),
            Interface(
                dmz,
                "dmz",
                mac(R_DMZ),
                IPv4Interface("10.2.0.1/24"),
                address6=IPv6Interface(C.gateway + "/64"),
            ),
            wan_iface,
        ],
        [Route(IPv6Network("::/0"), IPv6Address(UPSTREAM), wan)],
        arp_timeout=TIMEOUT,
        npt=(NPT, wan),
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    w = World(dp, ports, {v: k for k, v in ports.items()})
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


def tcp(h: Host, src: str, dst: str, flags: str = "A", seq: int = 1, data: bytes = b"data") -> bytes:
    return frame(h, IPv6(src=src, dst=dst) / TCP(sport=40000, dport=80, flags=flags, seq=seq) / data)


def checksum_ok(o: Out) -> bool:
    """The upper-layer checksum of the frame's IPv6 packet verifies afresh (scapy, RFC 8200 8.1)."""
    ip = o.pkt[IPv6]
    payload = o.buf[L3 + 40 : L3 + 40 + ip.plen]
    return bool(in6_chksum(ip.nh, ip, payload) == 0)  # type: ignore[no-untyped-call]


def only_addresses_and_hop_limit_changed(sent: bytes, o: Out, src: str, dst: str) -> None:
    assert o.buf[:10] == sent[:10], "the virtio-net header passes through"
    assert o.buf[SRC] == a6(src) and o.buf[DST] == a6(dst)
    assert o.buf[HLIM] == sent[HLIM] - 1
    assert o.buf[L3:HLIM] == sent[L3:HLIM] and o.buf[L3 + 40 :] == sent[L3 + 40 :], "nothing else moves"


# --- outbound and back -----------------------------------------------------------------------------
def test_tcp_leaving_by_the_uplink_gets_its_source_mapped_and_its_checksum_still_verifies() -> None:
    w = world()
    sent = tcp(A, A.ip, SERVER, flags="S")
    [o] = w.send(A, sent)
    assert o.port == "up" and o.pkt.dst == UP.mac and o.pkt.src == R_WAN
    assert outward(A) == "2001:2:0:1000:cd7d::a"  # fd00:80 - 2001:2:0:1000 is 0xcd7d, into word 4
    only_addresses_and_hop_limit_changed(sent, o, outward(A), SERVER)
    assert checksum_ok(o)
    assert o.pkt[TCP].chksum == Ether(sent[10:])[TCP].chksum, "checksum-neutral: the field is untouched"


def test_the_reply_is_mapped_back_to_the_inside_address() -> None:
    w = world()
    sent = tcp(UP, SERVER, outward(A), flags="SA")
    [o] = w.send(UP, sent)
    assert o.port == "a" and o.pkt.dst == A.mac and o.pkt.src == R_LAN
    only_addresses_and_hop_limit_changed(sent, o, SERVER, A.ip)
    assert checksum_ok(o)


def test_every_inside_host_gets_its_own_mapping_and_udp_and_echo_verify_too() -> None:
    w = world()
    for h in (A, B, C):
        for l4 in (UDP(sport=5000, dport=53) / b"query", ICMPv6EchoRequest(id=7, seq=1, data=b"ping")):
            sent = frame(h, IPv6(src=h.ip, dst=SERVER) / l4)
            [o] = w.send(h, sent)
            assert o.port == "up" and o.pkt[IPv6].src == outward(h) and checksum_ok(o)
            [back] = w.send(UP, frame(UP, IPv6(src=SERVER, dst=outward(h)) / l4))
            assert back.port == h.port and back.pkt[IPv6].dst == h.ip and checksum_ok(back)
    assert len({outward(h) for h in (A, B, C)}) == 3


def test_between_inside_segments_nothing_is_mapped() -> None:
    w = world()
    sent = tcp(A, A.ip, C.ip)
    [o] = w.send(A, sent)
    assert o.port == "c"
    only_addresses_and_hop_limit_changed(sent, o, A.ip, C.ip)


def test_from_the_uplink_to_an_address_outside_the_mapping_nothing_is_mapped() -> None:
    """Only a destination in the outside prefix is translated; the router's own wan /64 is not it."""
    w = world()
    sent = tcp(UP, SERVER, C.ip)
    [o] = w.send(UP, sent)
    assert o.port == "c"
    only_addresses_and_hop_limit_changed(sent, o, SERVER, C.ip)


def partial_sum(src: str, dst: str, length: int, nh: int) -> int:
    """The folded pseudo-header sum (RFC 8200 8.1), uncomplemented: what a NEEDS_CSUM field holds."""
    return ones_sum(a6(src) + a6(dst) + struct.pack("!I3xB", length, nh))


def needs_csum(h: Host, dst: str, payload: int, gso_size: int = 0) -> bytes:
    """TCP from h as a tap hands it over with the checksum left to finish: NEEDS_CSUM, the partial
    pseudo-header sum in the field (GSO_TCPV6 too when gso_size is given)."""
    ip = (
        IPv6(src=h.ip, dst=dst)
        / TCP(sport=40000, dport=80, flags="A")
        / (bytes(range(256)) * (payload // 256))
    )
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


@pytest.mark.parametrize(("payload", "gso_size"), [(512, 0), (4096, 1440)], ids=["needs-csum", "tso6"])
def test_a_partial_checksum_is_left_as_it_was_and_finishes_right_for_the_new_source(
    payload: int, gso_size: int
) -> None:
    w = world()
    sent = needs_csum(A, SERVER, payload, gso_size)
    [o] = w.send(A, sent)
    assert o.port == "up" and o.buf[:10] == sent[:10]
    only_addresses_and_hop_limit_changed(sent, o, outward(A), SERVER)
    # The same partial sum is the right one for the mapped source: NPTv6 kept the address's sum.
    field_at = L3 + 40 + 16
    assert o.buf[field_at : field_at + 2] == partial_sum(outward(A), SERVER, payload + 20, 6).to_bytes(
        2, "big"
    )
    assert checksum_ok(Out(o.port, finish_checksum(o.buf)))


# --- ICMPv6 errors ---------------------------------------------------------------------------------
def test_an_error_from_outside_about_an_outbound_packet_is_mapped_back_quote_and_all() -> None:
    """The server's port unreachable quotes the packet as it arrived there (source mapped): a gets it
    at its own address, quoting its own packet (hop limit one less), and both checksums verify."""
    w = world()
    sent = frame(A, IPv6(src=A.ip, dst=SERVER) / UDP(sport=5000, dport=9) / b"anyone?")
    [out] = w.send(A, sent)
    as_seen_outside = out.buf[L3:]
    error = IPv6(src=SERVER, dst=outward(A)) / ICMPv6DestUnreach(code=4) / Raw(as_seen_outside)
    [o] = w.send(UP, frame(UP, error))
    assert o.port == "a" and o.pkt[IPv6].src == SERVER and o.pkt[IPv6].dst == A.ip
    assert o.pkt[ICMPv6DestUnreach].code == 4
    quoted = o.buf[L3 + 48 :]
    assert quoted[8:24] == a6(A.ip) and quoted[24:40] == a6(SERVER)
    assert quoted[:7] + quoted[8:] == sent[L3 : L3 + 7] + sent[L3 + 8 :] and quoted[7] == sent[HLIM] - 1
    assert checksum_ok(o)
    quoted_ip = IPv6(quoted)
    quoted_sum = in6_chksum(17, quoted_ip, quoted[40:])  # type: ignore[no-untyped-call]
    assert quoted_sum == 0, "the quoted UDP checksum is a's own again"


def test_packet_too_big_from_outside_about_a_tcp_packet_reaches_its_sender() -> None:
    w = world()
    sent = tcp(A, A.ip, SERVER, data=bytes(1200))
    [out] = w.send(A, sent)
    error = IPv6(src=UPSTREAM, dst=outward(A)) / ICMPv6PacketTooBig(mtu=1280) / Raw(out.buf[L3:][:1232])
    [o] = w.send(UP, frame(UP, error))
    assert o.port == "a" and o.pkt[IPv6].dst == A.ip and o.pkt[ICMPv6PacketTooBig].mtu == 1280
    assert o.buf[L3 + 48 + 8 : L3 + 48 + 24] == a6(A.ip)
    assert checksum_ok(o)


def test_an_error_from_inside_about_an_inbound_packet_is_mapped_out_quote_and_all() -> None:
    """The other way: c refuses a datagram from the server; the error leaves from c's mapped address
    and quotes the datagram as the server sent it (its destination mapped again)."""
    w = world()
    sent = frame(UP, IPv6(src=SERVER, dst=outward(C)) / UDP(sport=5000, dport=9) / b"anyone?")
    [into] = w.send(UP, sent)
    assert into.port == "c"
    error = IPv6(src=C.ip, dst=SERVER) / ICMPv6DestUnreach(code=4) / Raw(into.buf[L3:])
    [o] = w.send(C, frame(C, error))
    assert o.port == "up" and o.pkt[IPv6].src == outward(C) and o.pkt[IPv6].dst == SERVER
    quoted = o.buf[L3 + 48 :]
    assert quoted[8:24] == a6(SERVER) and quoted[24:40] == a6(outward(C))
    assert quoted[:7] + quoted[8:] == sent[L3 : L3 + 7] + sent[L3 + 8 :]
    assert checksum_ok(o)


def test_an_error_the_router_makes_about_an_inbound_packet_quotes_it_as_it_came() -> None:
    """Hop limit 1 from outside to a mapped address: time exceeded from the router's wan address back
    to the sender, quoting the packet unmapped (the sender must know it)."""
    w = world()
    sent = frame(UP, IPv6(src=SERVER, dst=outward(A), hlim=1) / UDP(sport=5000, dport=9))
    [o] = w.send(UP, sent)
    assert o.port == "up" and (o.pkt[IPv6].src, o.pkt[IPv6].dst) == (ROUTER_WAN, SERVER)
    assert o.buf[L3 + 48 :] == sent[L3:] and checksum_ok(o)
    assert w.drops() == {Drop.HOP_LIMIT_EXCEEDED: 1}


# --- what cannot be mapped -------------------------------------------------------------------------
def test_an_inside_host_whose_identifier_is_all_ffff_is_dropped_not_leaked() -> None:
    """Past /48 no word of fd00:80::ffff:ffff:ffff:ffff may take the adjustment: npt-unmappable,
    nothing leaves (its inside address must not reach the outside); inward the same."""
    w = world()
    assert w.send(A, tcp(A, "fd00:80::ffff:ffff:ffff:ffff", SERVER)) == []
    assert w.send(UP, tcp(UP, SERVER, "2001:2:0:1000:ffff:ffff:ffff:ffff")) == []
    assert w.drops() == {Drop.NPT_UNMAPPABLE: 2}


def test_the_trace_shows_the_translation() -> None:
    w = world()
    result = trace(w.dp, w.ports["a"], tcp(A, A.ip, SERVER), NOW)
    assert ("NPTv6", f"{A.ip} > {SERVER} becomes {outward(A)} > {SERVER}") in result.stages


# --- the flow cache ----------------------------------------------------------------------------------
@dataclass
class Twin:
    """Two worlds, the flow cache on and off, fed the same frames: the verdicts must be equal."""

    on: World
    off: World

    def send(self, h: Host, buf: bytes, now: float = NOW) -> tuple[bool, list[Out]]:
        before = self.on.hits
        got, expected = self.on.send(h, buf, now), self.off.send(h, buf, now)
        assert got == expected
        assert self.on.drops() == self.off.drops()
        return self.on.hits == before + 1, got


# Each kind of flow the cache keeps: the packet out, and the one back.
FLOWS: dict[str, tuple[Packet, Packet]] = {
    "tcp-ack": (
        TCP(sport=40000, dport=80, flags="A") / b"data",
        TCP(sport=80, dport=40000, flags="A") / b"ok",
    ),
    "udp": (UDP(sport=5000, dport=53) / b"query", UDP(sport=53, dport=5000) / b"answer"),
    "icmpv6-echo": (ICMPv6EchoRequest(id=7, seq=1, data=b"ping"), ICMPv6EchoReply(id=7, seq=1, data=b"ping")),
}


@pytest.mark.parametrize("kind", list(FLOWS))
def test_the_second_packet_of_a_flow_is_a_hit_with_the_slow_paths_bytes(kind: str) -> None:
    """Out and back: the first packet of each direction takes the slow path and leaves its action
    (PREFIX6, with the flow's new addresses); the second is a hit, byte for byte the same frame."""
    twin = Twin(world(cache=True), world(cache=False))
    there, back = FLOWS[kind]
    out = frame(A, IPv6(src=A.ip, dst=SERVER) / there)
    hit, first = twin.send(A, out)
    assert not hit and [(o.port, o.pkt[IPv6].src) for o in first] == [("up", outward(A))]
    hit, second = twin.send(A, out, NOW + 1)
    assert hit and second == first and checksum_ok(second[0])
    reply = frame(UP, IPv6(src=SERVER, dst=outward(A)) / back)
    hit, first = twin.send(UP, reply)
    assert not hit and [(o.port, o.pkt[IPv6].dst) for o in first] == [("a", A.ip)]
    hit, second = twin.send(UP, reply, NOW + 1)
    assert hit and second == first and checksum_ok(second[0])


def test_a_cached_flow_never_lends_its_mapping_to_another_host() -> None:
    """b's packet to the same server and ports misses a's entry and gets b's own source."""
    twin = Twin(world(cache=True), world(cache=False))
    for _ in range(2):
        twin.send(A, tcp(A, A.ip, SERVER))
    hit, [o] = twin.send(B, tcp(B, B.ip, SERVER))
    assert not hit and o.pkt[IPv6].src == outward(B) and checksum_ok(o)
    hit, [o] = twin.send(B, tcp(B, B.ip, SERVER), NOW + 1)
    assert hit and o.pkt[IPv6].src == outward(B)


def test_a_tso6_super_frame_hit_keeps_its_partial_checksum() -> None:
    twin = Twin(world(cache=True), world(cache=False))
    sent = needs_csum(A, SERVER, 4096, 1440)
    hit, first = twin.send(A, sent)
    assert not hit
    hit, [o] = twin.send(A, sent, NOW + 1)
    assert hit and [o] == first and o.buf[:10] == sent[:10]
    assert checksum_ok(Out(o.port, finish_checksum(o.buf)))


def test_icmpv6_errors_are_never_cached() -> None:
    """Each one's quoted packet is mapped afresh: the slow path every time."""
    twin = Twin(world(cache=True), world(cache=False))
    [out] = twin.on.send(A, frame(A, IPv6(src=A.ip, dst=SERVER) / UDP(sport=5000, dport=9)))
    twin.off.send(A, frame(A, IPv6(src=A.ip, dst=SERVER) / UDP(sport=5000, dport=9)))
    error = frame(UP, IPv6(src=SERVER, dst=outward(A)) / ICMPv6DestUnreach(code=4) / Raw(out.buf[L3:]))
    for now in (NOW, NOW + 1):
        hit, [o] = twin.send(UP, error, now)
        assert not hit and o.pkt[IPv6].dst == A.ip and o.buf[L3 + 56 : L3 + 72] == a6(A.ip)


def test_the_mapped_address_of_the_routers_own_inside_address_is_the_router() -> None:
    """From outside, the NPTv6 mapping of the router's ::1 reaches the router itself (as Linux delivers
    it locally), and the echo reply comes from that mapped address."""
    w = world()
    mapped = text(NPT.outward(a6("fd00:80::1")))
    assert mapped is not None
    ping = IPv6(src=SERVER, dst=mapped) / ICMPv6EchoRequest(id=5, seq=1, data=b"own")
    [o] = w.send(UP, frame(UP, ping))
    assert o.port == "up" and o.pkt[IPv6].src == mapped and o.pkt[IPv6].dst == SERVER
    assert o.pkt[ICMPv6EchoReply].data == b"own" and checksum_ok(o)
