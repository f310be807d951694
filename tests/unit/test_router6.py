"""The router's IPv6 (router6.py, ipv6.py, icmp6.py) through the datapath: Neighbor Discovery (RFC
4861), resolution with its retries and bounds, router advertisements, RA guard (RFC 6105, RFC 7113),
forwarding (RFC 8200), ICMPv6 errors and their limits (RFC 4443), local delivery and the extension
header chain. Frames are built and read back with scapy; time is passed in, never slept.

The world: lan (a, b, host; the host port takes no advertisement), dmz (c, d; MTU 1280), quiet (q;
its interface does not advertise), all routed; sw (s1, s2) is switched, without the router.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from itertools import pairwise
from typing import Any, NamedTuple

import pytest
from scapy.layers.inet import TCP, UDP, UDPerror
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.router6 import MAX_INITIAL_RTR_ADVERT_INTERVAL, RaConfig
from vswitch.core.routes import Route
from vswitch.core.vlan import Trunk
from vswitch.core.wire import GSO_TCPV6, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR

R_LAN, R_DMZ, R_QUIET = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
# Their link-local addresses, worked by hand (RFC 4291 appendix A: flip the U/L bit, ff:fe in the middle)
LL_LAN, LL_DMZ = "fe80::aa:ff:fe00:1", "fe80::aa:ff:fe00:2"
ALL_NODES_MAC = "33:33:00:00:00:01"
L3 = 24  # the IPv6 header in a buffer: virtio-net header (10) + Ethernet (14)
HLIM = L3 + 7
NOW = 1.0


class Host(NamedTuple):
    port: str
    mac: str
    ip: str  # on its segment's /64
    ll: str  # link-local
    gateway_mac: str
    gateway: str  # the segment's ::1


HOSTS = {
    "a": Host("a", "02:00:00:00:01:0a", "fd00:1::a", "fe80::a", R_LAN, "fd00:1::1"),
    "b": Host("b", "02:00:00:00:01:0b", "fd00:1::b", "fe80::b", R_LAN, "fd00:1::1"),
    "host": Host("host", "02:00:00:00:01:0f", "fd00:1::f", "fe80::f", R_LAN, "fd00:1::1"),
    "c": Host("c", "02:00:00:00:02:0c", "fd00:2::c", "fe80::c", R_DMZ, "fd00:2::1"),
    "d": Host("d", "02:00:00:00:02:0d", "fd00:2::d", "fe80::d", R_DMZ, "fd00:2::1"),
    "q": Host("q", "02:00:00:00:03:0e", "fd00:3::e", "fe80::e", R_QUIET, "fd00:3::1"),
    "s1": Host("s1", "02:00:00:00:04:01", "fd00:4::1", "fe80::41", "", ""),
    "s2": Host("s2", "02:00:00:00:04:02", "fd00:4::2", "fe80::42", "", ""),
}
A, B, C, D = (HOSTS[n] for n in "abcd")


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class Out(NamedTuple):
    """One frame the datapath sends: the port's name and the buffer (virtio-net header first)."""

    port: str
    buf: bytes

    @property
    def pkt(self) -> Packet:
        return Ether(self.buf[10:])


@dataclass
class World:
    dp: Datapath
    router: Router
    ports: dict[str, int]
    names: dict[int, str] = field(default_factory=dict)

    def _outs(self, verdict: Verdict, sent: bytes) -> list[Out]:
        if verdict is None:
            return []
        if isinstance(verdict, int):
            return [Out(self.names[verdict], sent)]
        if isinstance(verdict, tuple):
            return [Out(self.names[p], sent) for p in verdict]
        return [Out(self.names[p], bytes(f)) for p, f in verdict]

    def send(self, port: str, buf: bytes, now: float = NOW) -> list[Out]:
        return self._outs(self.dp.receive(self.ports[port], buf, now), buf)

    def tick(self, now: float) -> list[Out]:
        return [Out(self.names[p], bytes(f)) for p, f in self.dp.on_timer(now)]

    def drops(self, port: str) -> dict[str, int]:
        return dict(self.dp.counters.drops[self.ports[port]])

    @property
    def events(self) -> Counter[str]:
        return self.router.events

    def known(self, name: str, now: float = 0.0, ll: bool = False) -> None:
        """The host tells the router its MAC: a solicitation for the gateway with its link-layer
        address (the router learns it, the segment's FDB learns its port)."""
        h = HOSTS[name]
        self.send(name, solicit(h, h.gateway, src=h.ll if ll else h.ip), now)
        assert self.router.v6 is not None
        assert int(IPv6Address(h.ll if ll else h.ip)) in self.router.v6.nd.entries


def _iface(segment: int, name: str, router_mac: str, n: int, **kw: Any) -> Interface:
    """The router on segment n: 10.n.0.1/24 and fd00:n::1/64."""
    v4, v6 = IPv4Interface(f"10.{n}.0.1/24"), IPv6Interface(f"fd00:{n}::1/64")
    return Interface(segment, name, mac(router_mac), v4, address6=v6, **kw)


def world(ra: RaConfig | None = None, **router_kw: Any) -> World:
    """The slow path alone (no flow cache: test_flowcache6.py has it). Answers to solicitations go at
    once unless ra says otherwise (the RFC's random delay has a test of its own)."""
    ra = ra or RaConfig(reply_delay=0.0)
    dp = Datapath(flow_cache_max=0)
    lan, dmz, quiet, sw = (dp.add_segment(n) for n in ("lan", "dmz", "quiet", "sw"))
    where = {"a": lan, "b": lan, "host": lan, "c": dmz, "d": dmz, "q": quiet, "s1": sw, "s2": sw}
    ports = {name: dp.add_port(name, seg) for name, seg in where.items()}
    router = Router(
        [
            _iface(lan, "lan", R_LAN, 1),
            _iface(dmz, "dmz", R_DMZ, 2, mtu=1280),
            _iface(quiet, "quiet", R_QUIET, 3, advertise=False),
        ],
        [
            Route(IPv6Network("fd00:9::/32"), IPv6Address(C.ip)),
            Route(IPv6Network("fd00:9:1::/48"), IPv6Address(D.ip)),
        ],
        ra=ra,
        **router_kw,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), quiet: mac(R_QUIET)})
    dp.port_switch[ports["host"]].no_ra.add(ports["host"])
    return World(dp, router, ports, {v: k for k, v in ports.items()})


# --- frames ---------------------------------------------------------------------------------------
def eth(src: str, dst: str, l3: Packet, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    return vnet + bytes(Ether(src=src, dst=dst) / l3)


def group_mac(address: str) -> str:
    """33:33 and the group's last 32 bits (RFC 2464 7)."""
    tail = IPv6Address(address).packed[12:]
    return "33:33:" + ":".join(f"{x:02x}" for x in tail)


def solicited(address: str) -> str:
    return str(IPv6Address("ff02::1:ff00:0") + (int(IPv6Address(address)) & 0xFFFFFF))


def solicit(h: Host, target: str, src: str | None = None) -> bytes:
    """h's neighbour solicitation for target, to target's solicited-node group, with its SLLAO."""
    group = solicited(target)
    l3 = IPv6(src=src or h.ip, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target)
    return eth(h.mac, group_mac(group), l3 / ICMPv6NDOptSrcLLAddr(lladdr=h.mac))


def to_router(h: Host, l3: Packet) -> bytes:
    """A frame from h to its gateway's MAC."""
    return eth(h.mac, h.gateway_mac, l3)


def udp(h: Host, dst: str, hlim: int = 64, data: bytes = b"payload", **ip: Any) -> bytes:
    return to_router(h, IPv6(src=h.ip, dst=dst, hlim=hlim, **ip) / UDP(sport=4000, dport=53) / data)


def of(outs: list[Out], layer: type[Packet]) -> list[Out]:
    return [o for o in outs if layer in o.pkt]


def checksum_ok(o: Out) -> bool:
    """The ICMPv6 (or other upper-layer) checksum of a frame's IPv6 packet verifies afresh."""
    ip = o.pkt[IPv6]
    payload = o.buf[L3 + 40 : L3 + 40 + ip.plen]
    return bool(in6_chksum(ip.nh, ip, payload) == 0)  # type: ignore[no-untyped-call]


def error_to(outs: list[Out], h: Host, layer: type[Packet]) -> Packet:
    """The one ICMPv6 error of type layer sent back to h, checked for addresses and checksum."""
    [err] = of(outs, layer)
    assert err.port == h.port and err.pkt.dst == h.mac and err.pkt.src == h.gateway_mac
    assert err.pkt[IPv6].dst == h.ip and err.pkt[IPv6].src == h.gateway
    assert checksum_ok(err)
    return err.pkt


# === 1. Neighbor Discovery ========================================================================
@pytest.mark.parametrize("target", ["fd00:1::1", LL_LAN])
def test_a_solicitation_for_our_address_is_answered_unicast_with_r_s_o_and_our_mac(target: str) -> None:
    """The segment's ::1 and the link-local address of the router's MAC are both answered: to the
    solicitor's MAC and address, from the target, R S O set, our MAC as target link-layer address;
    and the solicitor's MAC is learned."""
    w = world()
    out = w.send("a", solicit(A, target))
    [na] = of(out, ICMPv6ND_NA)
    p = na.pkt
    assert na.port == "a" and (p.src, p.dst) == (R_LAN, A.mac)
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (target, A.ip, 255)
    assert (p[ICMPv6ND_NA].R, p[ICMPv6ND_NA].S, p[ICMPv6ND_NA].O) == (1, 1, 1)
    assert p[ICMPv6ND_NA].tgt == target and p[ICMPv6NDOptDstLLAddr].lladdr == R_LAN
    assert checksum_ok(na)
    assert w.router.v6 is not None
    assert w.router.v6.nd.entries[int(IPv6Address(A.ip))].mac == mac(A.mac)
    assert {o.port for o in out if o is not na} == {"b", "host"}  # the group frame flooded too


def test_the_link_local_address_is_the_eui64_of_the_mac() -> None:
    """What the router answers for and advertises from is fe80:: + modified EUI-64 of its MAC."""
    w = world()
    assert w.router.v6 is not None
    assert [str(IPv6Address(a)) for a in w.router.v6.link_local.values()] == [
        LL_LAN,
        LL_DMZ,
        "fe80::aa:ff:fe00:3",
    ]


def test_a_dad_probe_for_our_address_is_defended_to_all_nodes_not_solicited() -> None:
    """A probe from :: (RFC 4862 DAD) for fd00:1::1: an NA to ff02::1 with S clear (7.2.4), and no
    neighbour learned from an address-less sender."""
    w = world()
    group = solicited("fd00:1::1")
    probe = eth(A.mac, group_mac(group), IPv6(src="::", dst=group, hlim=255) / ICMPv6ND_NS(tgt="fd00:1::1"))
    out = w.send("a", probe)
    nas = of(out, ICMPv6ND_NA)
    assert {o.port for o in nas} == {"a", "b", "host"}
    p = nas[0].pkt
    assert p.dst == ALL_NODES_MAC and (p[IPv6].src, p[IPv6].dst) == ("fd00:1::1", "ff02::1")
    assert (p[ICMPv6ND_NA].R, p[ICMPv6ND_NA].S, p[ICMPv6ND_NA].O) == (1, 0, 1)
    assert w.events[Event.ND_DAD_DEFENDED] == 1
    assert w.router.v6 is not None and not w.router.v6.nd.entries


def test_a_solicitation_for_someone_elses_address_is_not_answered() -> None:
    """To b's solicited-node group (which we do not listen to) or unicast to us: no NA either way."""
    w = world()
    out = w.send("a", solicit(A, B.ip))
    assert not of(out, ICMPv6ND_NA) and {o.port for o in out} == {"b", "host"}
    assert w.events[Event.IPV6_MULTICAST_IGNORED] == 1
    unicast = to_router(A, IPv6(src=A.ip, dst="fd00:1::1", hlim=255) / ICMPv6ND_NS(tgt=B.ip))
    assert w.send("a", unicast) == []
    assert w.events[Event.NOT_FOR_ROUTER] == 1
    assert w.drops("a") == {}


def _ns(**kw: Any) -> Packet:
    return IPv6(src=A.ip, dst=solicited("fd00:1::1"), hlim=kw.pop("hlim", 255)) / ICMPv6ND_NS(
        tgt=kw.pop("tgt", "fd00:1::1"), **kw
    )


SLLAO_A = ICMPv6NDOptSrcLLAddr(lladdr=A.mac)
SOLICITED_1 = solicited("fd00:1::1")
ND_REFUSED = {
    "hop-limit-64": (_ns(hlim=64) / SLLAO_A, Drop.ND_BAD_HOP_LIMIT),
    "code-1": (_ns(code=1) / SLLAO_A, Drop.ND_MALFORMED),
    "short": (IPv6(src=A.ip, dst=SOLICITED_1, hlim=255, nh=58) / Raw(bytes([135, 0, 0, 0]) + bytes(12)),
              Drop.ND_MALFORMED),
    "option-length-0": (_ns() / ICMPv6NDOptSrcLLAddr(len=0, lladdr=A.mac), Drop.ND_MALFORMED),
    "multicast-target": (IPv6(src=A.ip, dst="ff02::1", hlim=255) / ICMPv6ND_NS(tgt="ff02::1") / SLLAO_A,
                         Drop.ND_MALFORMED),
    "dad-with-sllao": (IPv6(src="::", dst=SOLICITED_1, hlim=255) / ICMPv6ND_NS(tgt="fd00:1::1") / SLLAO_A,
                       Drop.ND_MALFORMED),
    "bad-checksum": (_ns(cksum=0x1234) / SLLAO_A, Drop.L4_BAD_CHECKSUM),
    "na-claims-our-address": (IPv6(src=A.ip, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="fd00:1::1", O=1)
                              / ICMPv6NDOptDstLLAddr(lladdr=A.mac), Drop.ND_CLAIMS_ROUTER_ADDRESS),
    "na-solicited-to-multicast": (IPv6(src=A.ip, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=A.ip, S=1)
                                  / ICMPv6NDOptDstLLAddr(lladdr=A.mac), Drop.ND_MALFORMED),
    "rs-from-unspecified-with-sllao": (IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS() / SLLAO_A,
                                       Drop.ND_MALFORMED),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ND_REFUSED))
def test_an_invalid_nd_message_is_dropped_with_its_reason_and_teaches_nothing(case: str) -> None:
    """RFC 4861 6.1 and 7.1: each invalid message is one named drop in a's ledger, no answer, and
    no neighbour entry."""
    l3, reason = ND_REFUSED[case]
    w = world()
    out = w.send("a", eth(A.mac, group_mac(l3[IPv6].dst), l3))
    assert w.drops("a") == {reason: 1}
    assert {o.port for o in out} == {"b", "host"}  # only the flooded copies
    assert w.router.v6 is not None and not w.router.v6.nd.entries


def test_a_redirect_to_the_router_is_dropped() -> None:
    """Only hosts follow redirects (RFC 4861 8.1)."""
    w = world()
    redirect = IPv6(src=A.ll, dst="fd00:1::1", hlim=255) / ICMPv6ND_Redirect(tgt="fe80::b", dst=B.ip)
    assert w.send("a", to_router(A, redirect)) == []
    assert w.drops("a") == {Drop.ND_REDIRECT: 1}


def _na(h: Host, lladdr: str, o: int, s: int = 1) -> bytes:
    l3 = IPv6(src=h.ip, dst=h.gateway, hlim=255) / ICMPv6ND_NA(tgt=h.ip, R=0, S=s, O=o)
    return to_router(h, l3 / ICMPv6NDOptDstLLAddr(lladdr=lladdr))


def test_an_advertisement_without_override_does_not_replace_a_known_mac() -> None:
    """7.2.5: a different link-layer address without O is ignored; with O it replaces the entry."""
    w = world()
    w.known("a")
    assert w.router.v6 is not None
    entries, key = w.router.v6.nd.entries, int(IPv6Address(A.ip))
    w.send("a", _na(A, "02:00:00:00:01:99", o=0), 2.0)
    assert entries[key].mac == mac(A.mac) and entries[key].updated == 0.0
    w.send("a", _na(A, "02:00:00:00:01:99", o=1), 3.0)
    assert entries[key].mac == mac("02:00:00:00:01:99")


def test_an_unsolicited_advertisement_for_an_unknown_target_creates_nothing() -> None:
    """7.2.5: an NA only updates an entry we have or a resolution under way."""
    w = world()
    gratuitous = IPv6(src=B.ip, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=B.ip, O=1)
    out = w.send("b", eth(B.mac, ALL_NODES_MAC, gratuitous / ICMPv6NDOptDstLLAddr(lladdr=B.mac)))
    assert {o.port for o in out} == {"a", "host"}
    w.send("b", _na(B, B.mac, o=1))
    assert w.router.v6 is not None and not w.router.v6.nd.entries
    assert w.drops("b") == {}


# === 2. Resolution ================================================================================
def _tcp(h: Host, dst: str, hlim: int = 64, seq: int = 0) -> bytes:
    l3 = IPv6(src=h.ip, dst=dst, hlim=hlim) / TCP(sport=40000, dport=80, flags="A", seq=seq) / b"data"
    return to_router(h, l3)


def test_an_unknown_on_link_host_is_solicited_and_its_answer_releases_the_packet() -> None:
    """Multicast NS to c's solicited-node group from the router's link-local address with its
    SLLAO; the packet waits; c's NA lets it go with the hop limit one less and the right MACs."""
    w = world()
    sent = _tcp(A, C.ip, hlim=9)
    out = w.send("a", sent)
    assert {o.port for o in out} == {"c", "d"} and all(ICMPv6ND_NS in o.pkt for o in out)
    p = out[0].pkt
    assert (p.src, p.dst) == (R_DMZ, "33:33:ff:00:00:0c")
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (LL_DMZ, "ff02::1:ff00:c", 255)
    assert p[ICMPv6ND_NS].tgt == C.ip and p[ICMPv6NDOptSrcLLAddr].lladdr == R_DMZ
    assert checksum_ok(out[0])
    na = IPv6(src=C.ip, dst=LL_DMZ, hlim=255) / ICMPv6ND_NA(tgt=C.ip, R=0, S=1, O=1)
    [released] = w.send("c", eth(C.mac, R_DMZ, na / ICMPv6NDOptDstLLAddr(lladdr=C.mac)))
    assert released.port == "c"
    q = released.pkt
    assert (q.src, q.dst, q[IPv6].hlim) == (R_DMZ, C.mac, 8)
    assert released.buf[L3 + 8 :] == sent[L3 + 8 :]


def _ns_out(outs: list[Out]) -> list[Out]:
    return [o for o in of(outs, ICMPv6ND_NS) if o.port == "c"]


def test_resolution_retries_on_the_timer_then_fails_with_address_unreachable() -> None:
    """Three solicitations a retry interval apart (router.next_deadline says when), then the packet
    is dropped (nd-failed, in a's ledger) and a hears destination unreachable code 3 quoting it."""
    w = world()
    w.tick(0.0)  # the first advertisements; the next are 16 s away
    w.known("a")
    sent = _tcp(A, C.ip, hlim=9)
    assert len(_ns_out(w.send("a", sent, 1.0))) == 1
    assert w.router.next_deadline() == 2.0
    assert w.tick(1.5) == []
    assert len(_ns_out(w.tick(2.0))) == 1
    assert len(_ns_out(w.tick(3.0))) == 1
    assert w.drops("a") == {}
    out = w.tick(4.0)
    assert _ns_out(out) == []
    assert w.drops("a") == {Drop.ND_FAILED: 1}
    p = error_to(out, A, ICMPv6DestUnreach)
    assert p[ICMPv6DestUnreach].code == 3
    assert bytes(p[IPerror6]) == sent[L3:]  # as it arrived: hop limit 9
    assert w.events[Event.ICMPV6_ADDRESS_UNREACHABLE_SENT] == 1


def test_a_full_size_packet_whose_next_hop_fails_is_reported_too() -> None:
    """The router keeps the first 1280 bytes of a waiting packet for the error: a 1500-byte packet
    to silent q (on quiet, MTU 1500) still gets address unreachable, quoting as much as fits."""
    w = world()
    w.tick(0.0)
    w.known("a")
    sent = udp(A, HOSTS["q"].ip, data=bytes(1500 - 48))
    w.send("a", sent, 1.0)
    out = [o for t in (2.0, 3.0, 4.0) for o in w.tick(t)]
    p = error_to(out, A, ICMPv6DestUnreach)
    assert p[ICMPv6DestUnreach].code == 3 and len(p[IPv6]) == 1280
    assert of(out, ICMPv6DestUnreach)[0].buf[L3 + 48 :] == sent[L3 : L3 + 1232]
    assert w.drops("a") == {Drop.ND_FAILED: 1}


def test_a_failed_next_hop_is_remembered_for_the_negative_timeout() -> None:
    """After a failure (at 4.0) the next packet fails at once, no solicitation; after 5 s it tries
    again."""
    w = world()
    w.tick(0.0)
    w.known("a")
    w.send("a", _tcp(A, C.ip), 1.0)
    for t in (2.0, 3.0, 4.0):
        w.tick(t)
    out = w.send("a", _tcp(A, C.ip), 4.5)
    assert _ns_out(out) == [] and of(out, ICMPv6DestUnreach)
    assert w.drops("a") == {Drop.ND_FAILED: 2}
    assert len(_ns_out(w.send("a", _tcp(A, C.ip), 9.0))) == 1


def test_the_queue_for_one_next_hop_keeps_the_latest_packets() -> None:
    """queue_max 2: the third packet pushes the first out (nd-queue-full); the NA releases the two
    latest in order."""
    w = world(arp_queue_max=2)
    for seq in (1, 2, 3):
        w.send("a", _tcp(A, C.ip, seq=seq))
    assert w.drops("a") == {Drop.ND_QUEUE_FULL: 1}
    na = IPv6(src=C.ip, dst=LL_DMZ, hlim=255) / ICMPv6ND_NA(tgt=C.ip, S=1, O=1)
    released = w.send("c", eth(C.mac, R_DMZ, na / ICMPv6NDOptDstLLAddr(lladdr=C.mac)))
    assert [o.pkt[TCP].seq for o in released] == [2, 3]


def test_too_many_next_hops_pending_is_a_drop() -> None:
    """pending_max 1: while c is being resolved, a packet for d is refused (nd-pending-full)."""
    w = world(arp_pending_max=1)
    w.send("a", _tcp(A, C.ip))
    out = w.send("a", _tcp(A, D.ip))
    assert out == [] and w.drops("a") == {Drop.ND_PENDING_FULL: 1}


def test_the_neighbour_cache_is_bounded() -> None:
    """cache_max 2: a third neighbour evicts the oldest."""
    w = world(arp_cache_max=2)
    for name, t in (("a", 0.0), ("b", 1.0), ("host", 2.0)):
        w.send(name, solicit(HOSTS[name], "fd00:1::1"), t)
    assert w.router.v6 is not None
    assert sorted(w.router.v6.nd.entries) == sorted(int(IPv6Address(h.ip)) for h in (B, HOSTS["host"]))
    assert w.events[Event.ND_EVICTED] == 1


def test_a_stale_neighbour_in_use_gets_one_unicast_probe() -> None:
    """Past its timeout (10 s) c is still used, and asked to confirm itself by a unicast NS (RFC 4861
    7.3.3), once per retry interval."""
    w = world(arp_timeout=10.0)
    w.known("a")
    w.known("c")
    out = w.send("a", _tcp(A, C.ip), 11.0)
    [fwd] = of(out, TCP)
    assert fwd.port == "c" and fwd.pkt.dst == C.mac
    [probe] = of(out, ICMPv6ND_NS)
    p = probe.pkt
    assert probe.port == "c" and (p.src, p.dst) == (R_DMZ, C.mac)
    assert (p[IPv6].src, p[IPv6].dst, p[ICMPv6ND_NS].tgt) == (LL_DMZ, C.ip, C.ip)
    assert checksum_ok(probe)
    assert of(w.send("a", _tcp(A, C.ip), 11.5), ICMPv6ND_NS) == []


def test_a_link_local_address_two_segments_use_is_resolved_on_the_segment_it_is_sent_to() -> None:
    """RFC 4007: a link-local address names a host on one link only. c, on dmz, calls itself
    fe80::a as well; the reply to lan's fe80::a must not go out on lan to c's MAC: fe80::a is
    solicited on lan, and a's answer lets the reply go to a."""
    w = world()
    w.known("a", ll=True)
    w.send("c", solicit(C, LL_DMZ, src=A.ll))
    request = IPv6(src=A.ll, dst=LL_LAN) / ICMPv6EchoRequest(id=1, seq=1)
    out = w.send("a", to_router(A, request), 2.0)
    assert all(o.pkt.dst != C.mac for o in out)
    assert sorted(o.port for o in of(out, ICMPv6ND_NS)) == ["a", "b", "host"]
    na = IPv6(src=A.ll, dst=LL_LAN, hlim=255) / ICMPv6ND_NA(tgt=A.ll, S=1, O=1)
    [reply] = w.send("a", to_router(A, na / ICMPv6NDOptDstLLAddr(lladdr=A.mac)), 2.5)
    assert reply.port == "a" and reply.pkt.dst == A.mac and ICMPv6EchoReply in reply.pkt


# === 3. Router advertisements =====================================================================
def _ras(outs: list[Out]) -> list[Out]:
    return of(outs, ICMPv6ND_RA)


def test_the_first_timer_advertises_on_each_advertising_segment() -> None:
    """To ff02::1 from the link-local address, hop limit 255, with SLLAO, the segment's MTU and its
    /64 (L and A, 30 and 7 days), router lifetime 3 x MaxRtrAdvInterval; never to the host port nor
    on the quiet segment."""
    w = world()
    ras = _ras(w.tick(0.0))
    assert sorted(o.port for o in ras) == ["a", "b", "c", "d"]
    for o, ll, router_mac, mtu, prefix in (
        (ras[0], LL_LAN, R_LAN, 1500, "fd00:1::"),
        (next(r for r in ras if r.port == "c"), LL_DMZ, R_DMZ, 1280, "fd00:2::"),
    ):
        p = o.pkt
        assert (p.src, p.dst) == (router_mac, ALL_NODES_MAC)
        assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (ll, "ff02::1", 255)
        ra = p[ICMPv6ND_RA]
        assert (ra.chlim, ra.M, ra.O, ra.routerlifetime) == (64, 0, 0, 1800)
        assert p[ICMPv6NDOptSrcLLAddr].lladdr == router_mac and p[ICMPv6NDOptMTU].mtu == mtu
        info = p[ICMPv6NDOptPrefixInfo]
        assert (info.prefix, info.prefixlen, info.L, info.A) == (prefix, 64, 1, 1)
        assert (info.validlifetime, info.preferredlifetime) == (2592000, 604800)
        assert checksum_ok(o)
    assert w.events[Event.RA_SENT] == 2


@pytest.mark.parametrize(("max_interval", "lifetime"), [(600.0, 1800), (1000.0, 3000), (4.0, 1800)])
def test_the_router_lifetime_is_three_max_intervals_at_least_half_an_hour(
    max_interval: float, lifetime: int
) -> None:
    """AdvDefaultLifetime (6.2.1), floored so a lab's short interval keeps the default route."""
    w = world(ra=RaConfig(max_interval=max_interval))
    assert _ras(w.tick(0.0))[0].pkt[ICMPv6ND_RA].routerlifetime == lifetime


def _ra_times(w: World, count: int) -> list[float]:
    """Drive the timer by next_deadline; the times lan's advertisements left."""
    times: list[float] = []
    t = 0.0
    while len(times) < count:
        if any(o.port == "a" for o in _ras(w.tick(t))):
            times.append(t)
        deadline = w.router.next_deadline()
        assert deadline is not None and deadline > t
        t = deadline
    return times


def test_the_interval_is_drawn_between_min_and_max_and_the_first_three_are_clamped_to_16s() -> None:
    """6.2.4: uniform(MinRtrAdvInterval, MaxRtrAdvInterval) each time (0.33 x 30 = 9.9 .. 30); for
    the first MAX_INITIAL_RTR_ADVERTISEMENTS the timer is at most 16 s."""
    w = world(ra=RaConfig(max_interval=30.0))
    assert w.router.v6 is not None
    asked: list[tuple[float, float]] = []

    def highest(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return hi

    w.router.v6.uniform = highest
    times = _ra_times(w, 6)
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps == [16.0, 16.0, 16.0, 30.0, 30.0]
    assert len(asked) == 12 and all(lo == pytest.approx(9.9) and hi == 30.0 for lo, hi in asked)


def test_with_real_randomness_the_gaps_stay_within_the_bounds() -> None:
    """The default uniform: the first gaps at most 16 s, the rest between 0.75 x 8 and 8 s (an
    interval below 9 s has MinRtrAdvInterval 0.75 x Max)."""
    w = world(ra=RaConfig(max_interval=8.0))
    times = _ra_times(w, 25)
    gaps = [b - a for a, b in pairwise(times)]
    assert all(g <= MAX_INITIAL_RTR_ADVERT_INTERVAL for g in gaps[:3])
    assert all(6.0 <= g <= 8.0 for g in gaps)


def _rs(h: Host, src: str, sllao: bool) -> bytes:
    l3 = IPv6(src=src, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    if sllao:
        l3 = l3 / ICMPv6NDOptSrcLLAddr(lladdr=h.mac)
    return eth(h.mac, "33:33:00:00:00:02", l3)


def test_a_solicitation_with_a_link_layer_address_gets_a_unicast_advertisement_at_once() -> None:
    """RFC 7772 4: straight to the solicitor's MAC and link-local address; it is learned too."""
    w = world()
    w.tick(0.0)
    [ra] = _ras(w.send("a", _rs(A, A.ll, sllao=True), 1.0))
    p = ra.pkt
    assert ra.port == "a" and (p.src, p.dst) == (R_LAN, A.mac)
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (LL_LAN, A.ll, 255)
    assert p[ICMPv6NDOptPrefixInfo].prefix == "fd00:1::" and checksum_ok(ra)
    assert w.router.v6 is not None and int(IPv6Address(A.ll)) in w.router.v6.nd.entries
    assert w.events[Event.RA_SOLICITED] == 1


def test_an_answer_to_a_solicitation_waits_its_random_delay() -> None:
    """6.2.6: between 0 and MAX_RA_DELAY_TIME (0.5 s); here the longest: due at 1.5 s, sent then."""
    w = world(ra=RaConfig())
    assert w.router.v6 is not None
    w.router.v6.uniform = lambda low, high: high
    w.tick(0.0)
    assert _ras(w.send("a", _rs(A, A.ll, sllao=True), 1.0)) == []
    assert w.router.next_deadline() == 1.5
    [ra] = _ras(w.tick(1.5))
    assert ra.port == "a" and ra.pkt[IPv6].dst == A.ll


def test_a_solicitation_from_no_address_moves_the_multicast_advertisement_min_delay_after_the_last() -> None:
    """6.2.6: the answer is multicast, and no sooner than 3 s after the last multicast one: at 1 s it
    waits (the deadline moves to 3 s); at 10 s it goes at once."""
    w = world()
    w.tick(0.0)
    assert _ras(w.send("a", _rs(A, "::", sllao=False), 1.0)) == []
    assert w.router.next_deadline() == 3.0
    assert sorted(o.port for o in _ras(w.tick(3.0))) == ["a", "b"]
    out = _ras(w.send("a", _rs(A, "::", sllao=False), 10.0))
    assert sorted(o.port for o in out) == ["a", "b"] and out[0].pkt[IPv6].dst == "ff02::1"


def test_an_interface_that_does_not_advertise_sends_none() -> None:
    """The quiet segment: no periodic advertisement, none in answer to a solicitation."""
    w = world()
    assert not any(o.port == "q" for o in w.tick(0.0))
    assert w.send("q", _rs(HOSTS["q"], HOSTS["q"].ll, sllao=True), 1.0) == []
    assert w.events[Event.NOT_FOR_ROUTER] == 1


def test_the_host_port_never_gets_an_advertisement_but_gets_the_rest() -> None:
    """Switch.no_ra: the unicast answer to the host port's solicitation is made, and never reaches
    it; its neighbour solicitation is answered as anyone's."""
    w = world()
    host = HOSTS["host"]
    out = w.send("host", _rs(host, host.ll, sllao=True), 1.0)
    assert _ras(out) == [] and w.events[Event.RA_SENT] == 1
    assert of(w.send("host", solicit(host, "fd00:1::1"), 2.0), ICMPv6ND_NA)[0].port == "host"


# === 4. RA guard ==================================================================================
def _rogue(src_mac: str = A.mac, dst_mac: str = ALL_NODES_MAC, dst: str = "ff02::1", *ext: Packet) -> bytes:
    l3: Packet = IPv6(src=A.ll, dst=dst, hlim=255)
    for header in ext:
        l3 = l3 / header
    ra = ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    return eth(src_mac, dst_mac, l3 / ra)


@pytest.mark.parametrize(
    "rogue",
    [
        _rogue(),
        _rogue(A.mac, ALL_NODES_MAC, "ff02::1", IPv6ExtHdrDestOpt()),
        _rogue(A.mac, ALL_NODES_MAC, "ff02::1", IPv6ExtHdrFragment(offset=0, m=1, id=7)),
        _rogue(A.mac, ALL_NODES_MAC, "ff02::1", IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()),
        _rogue(A.mac, B.mac, B.ll),
    ],
    ids=["plain", "destination-options", "first-fragment", "hop-by-hop-and-options", "unicast"],
)
def test_an_advertisement_from_a_port_on_an_advertising_segment_is_dropped_at_l2(rogue: bytes) -> None:
    """RFC 6105 and RFC 7113: in a's ledger, and no port (nor the router) gets it."""
    w = world()
    w.known("b")
    assert w.send("a", rogue) == []
    assert w.drops("a") == {Drop.RA_GUARD: 1}


def test_on_a_switched_segment_advertisements_pass() -> None:
    """No router there: whoever advertises is the segment's business."""
    w = world()
    rogue = _rogue(HOSTS["s1"].mac)
    assert w.send("s1", rogue) == [Out("s2", rogue)]


def _trunked() -> tuple[World, Trunk]:
    w = world()
    trunk = Trunk("T")
    w.dp.add_trunk(trunk, [(w.dp.port_segment[w.ports["a"]], 10)], None)
    port = trunk.by_vid[10]
    w.ports["T.10"], w.names[port] = port, "T.10"
    return w, trunk


def _tagged(frame: bytes) -> bytes:
    """frame with an 802.1Q tag, VID 10, after its MACs."""
    return frame[:22] + b"\x81\x00" + (10).to_bytes(2, "big") + frame[22:]


def test_a_tagged_advertisement_from_a_trunk_is_dropped_too() -> None:
    """Router on a stick: lan is also VLAN 10 of trunk T. A rogue advertisement that arrives tagged
    is one all the same; the access ports must not get it untagged."""
    w, trunk = _trunked()
    port, verdict = w.dp.receive_trunk(trunk, _tagged(_rogue()), NOW)
    assert w._outs(verdict, b"") == []
    assert dict(w.dp.counters.drops[port]) == {Drop.RA_GUARD: 1}


def test_a_tagged_unicast_advertisement_from_a_trunk_is_dropped_too() -> None:
    """As above, to b's MAC: the unicast path looks through the tag as well."""
    w, trunk = _trunked()
    w.known("b")
    port, verdict = w.dp.receive_trunk(trunk, _tagged(_rogue(A.mac, B.mac, B.ll)), NOW)
    assert w._outs(verdict, b"") == []
    assert dict(w.dp.counters.drops[port]) == {Drop.RA_GUARD: 1}


# === 5. Forwarding ================================================================================
def _a_and_c() -> World:
    w = world()
    w.known("a")
    w.known("c")
    return w


def test_forwarding_changes_the_macs_and_the_hop_limit_and_nothing_else() -> None:
    """Traffic class, flow label, payload: byte for byte; the virtio-net header passes through."""
    w = _a_and_c()
    sent = udp(A, C.ip, hlim=9, tc=0x28, fl=0x12345, data=bytes(range(200)))
    [o] = w.send("a", sent)
    assert o.port == "c" and o.buf[:10] == sent[:10]
    assert o.buf[10:22] == mac(C.mac) + mac(R_DMZ)
    assert o.buf[HLIM] == 8
    assert o.buf[22:HLIM] + o.buf[HLIM + 1 :] == sent[22:HLIM] + sent[HLIM + 1 :]


def test_hop_limit_1_is_time_exceeded_from_the_ingress_1_quoting_the_packet() -> None:
    w = _a_and_c()
    sent = udp(A, C.ip, hlim=1)
    p = error_to(w.send("a", sent), A, ICMPv6TimeExceeded)
    assert (p[ICMPv6TimeExceeded].type, p[ICMPv6TimeExceeded].code) == (3, 0)
    assert bytes(p[IPerror6]) == sent[L3:] and p[UDPerror].dport == 53
    assert w.drops("a") == {Drop.HOP_LIMIT_EXCEEDED: 1}


def test_no_route_is_destination_unreachable_code_0() -> None:
    w = _a_and_c()
    p = error_to(w.send("a", udp(A, "2001:db8::1")), A, ICMPv6DestUnreach)
    assert p[ICMPv6DestUnreach].code == 0 and p[IPerror6].dst == "2001:db8::1"
    assert w.drops("a") == {Drop.NO_ROUTE: 1}


def test_a_link_local_source_to_another_segment_is_beyond_scope_code_2() -> None:
    """RFC 4443 3.1: the error comes from our link-local address, to a's link-local address."""
    w = _a_and_c()
    w.known("a", ll=True)
    out = w.send("a", to_router(A, IPv6(src=A.ll, dst=C.ip) / UDP()))
    [err] = of(out, ICMPv6DestUnreach)
    p = err.pkt
    assert err.port == "a" and p.dst == A.mac and (p[IPv6].src, p[IPv6].dst) == (LL_LAN, A.ll)
    assert p[ICMPv6DestUnreach].code == 2 and checksum_ok(err)
    assert w.drops("a") == {Drop.IPV6_BEYOND_SCOPE: 1}


def test_a_link_local_destination_not_ours_is_never_routed() -> None:
    w = _a_and_c()
    assert w.send("a", to_router(A, IPv6(src=A.ip, dst=C.ll) / UDP())) == []
    assert w.drops("a") == {Drop.IPV6_LINK_LOCAL_DESTINATION: 1}


def test_a_packet_over_the_next_mtu_is_packet_too_big_and_one_that_fits_passes() -> None:
    """dmz's MTU is 1280: a 1281-byte packet gets packet too big (type 2) carrying 1280."""
    w = _a_and_c()
    fits = udp(A, C.ip, data=bytes(1280 - 48))
    assert [o.port for o in w.send("a", fits)] == ["c"]
    p = error_to(w.send("a", udp(A, C.ip, data=bytes(1281 - 48))), A, ICMPv6PacketTooBig)
    assert p[ICMPv6PacketTooBig].mtu == 1280
    assert w.drops("a") == {Drop.PACKET_TOO_BIG: 1}


def partial_sum(src: str, dst: str, length: int, nh: int) -> int:
    """The folded pseudo-header sum (RFC 8200 8.1), uncomplemented: what a NEEDS_CSUM field holds."""
    data = IPv6Address(src).packed + IPv6Address(dst).packed + struct.pack("!I3xB", length, nh)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tso6(h: Host, dst: str, gso_size: int, payload: int = 4000) -> bytes:
    """A TSO super-frame as a tap hands it over: GSO_TCPV6, NEEDS_CSUM, the partial sum in place."""
    ip = IPv6(src=h.ip, dst=dst) / TCP(sport=40000, dport=80, flags="A") / bytes(payload)
    raw = bytearray(bytes(Ether(src=h.mac, dst=h.gateway_mac) / ip))
    raw[14 + 40 + 16 : 14 + 40 + 18] = partial_sum(h.ip, dst, 20 + payload, 6).to_bytes(2, "big")
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, GSO_TCPV6, 14 + 40 + 20, gso_size, 14 + 40, 16)
    return vnet + bytes(raw)


def test_a_tso6_super_frame_whose_segments_fit_crosses_whole() -> None:
    """gso_size 1220 + 60 bytes of headers = 1280: forwarded as one frame, virtio-net header and
    partial checksum untouched."""
    w = _a_and_c()
    sent = tso6(A, C.ip, gso_size=1220)
    [o] = w.send("a", sent)
    assert o.port == "c" and o.buf[:10] == sent[:10] and len(o.buf) == len(sent)
    assert o.buf[HLIM] == sent[HLIM] - 1 and o.buf[HLIM + 1 :] == sent[HLIM + 1 :]


def test_a_tso6_super_frame_whose_segments_do_not_fit_is_packet_too_big() -> None:
    """gso_size 1221: each segment would be 1281 bytes; the super-frame's length is not what counts."""
    w = _a_and_c()
    p = error_to(w.send("a", tso6(A, C.ip, gso_size=1221)), A, ICMPv6PacketTooBig)
    assert p[ICMPv6PacketTooBig].mtu == 1280 and len(p[IPv6]) == 1280


def test_static_routes_via_gateways_take_the_longest_prefix() -> None:
    """fd00:9::/32 via c, fd00:9:1::/48 via d."""
    w = _a_and_c()
    w.known("d")
    assert [(o.port, o.pkt.dst) for o in w.send("a", udp(A, "fd00:9:1::5"))] == [("d", D.mac)]
    assert [(o.port, o.pkt.dst) for o in w.send("a", udp(A, "fd00:9:2::5"))] == [("c", C.mac)]


# === 6. Errors and their limits ===================================================================
def test_no_error_about_an_icmpv6_error_but_one_about_an_echo() -> None:
    """RFC 4443 2.4(e.1): a destination unreachable with hop limit 1 dies silently; an echo request
    (informational) with hop limit 1 gets time exceeded."""
    w = _a_and_c()
    quoted = IPerror6(src=C.ip, dst=A.ip) / UDPerror()
    assert w.send("a", to_router(A, IPv6(src=A.ip, dst=C.ip, hlim=1) / ICMPv6DestUnreach() / quoted)) == []
    assert w.events[Event.ICMPV6_ERROR_ABOUT_ERROR_SUPPRESSED] == 1
    assert w.drops("a") == {Drop.HOP_LIMIT_EXCEEDED: 1}
    echo = IPv6(src=A.ip, dst=C.ip, hlim=1) / ICMPv6EchoRequest(id=1, seq=1)
    error_to(w.send("a", to_router(A, echo)), A, ICMPv6TimeExceeded)


def _hbh(option_type: int) -> IPv6ExtHdrHopByHop:
    return IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=option_type, optdata=b"\x00\x00")])


def test_an_error_about_a_packet_with_a_bad_option_in_an_icmpv6_error_is_not_sent() -> None:
    """2.4(e.1) holds past the extension headers: a parameter problem is due about an unknown option
    of type 10xxxxxx, but the packet carries an ICMPv6 error (behind the options), so none is sent;
    an echo request in its place is answered with one."""
    w = _a_and_c()
    quoted = IPerror6(src=C.ip, dst=A.ip) / UDPerror()
    l3 = IPv6(src=A.ip, dst=C.ip) / _hbh(0x8F) / IPv6ExtHdrDestOpt() / ICMPv6DestUnreach() / quoted
    assert w.send("a", to_router(A, l3)) == []
    assert w.events[Event.ICMPV6_ERROR_ABOUT_ERROR_SUPPRESSED] == 1
    echo = IPv6(src=A.ip, dst=C.ip) / _hbh(0x8F) / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest()
    error_to(w.send("a", to_router(A, echo)), A, ICMPv6ParamProblem)
    assert w.drops("a") == {Drop.IPV6_UNKNOWN_OPTION: 2}


def test_an_option_of_type_11_is_not_reported_to_a_multicast_destination_but_10_is() -> None:
    """RFC 8200 4.2: 11xxxxxx tells the source only if the destination was not multicast; 10xxxxxx
    tells it in any case (and RFC 4443 2.4(e.3) lets it)."""
    w = _a_and_c()
    for option, answered in ((0xCF, False), (0x8F, True)):
        l3 = IPv6(src=A.ip, dst="ff0e::1") / _hbh(option) / UDP()
        out = w.send("a", eth(A.mac, group_mac("ff0e::1"), l3))
        assert bool(of(out, ICMPv6ParamProblem)) == answered
    assert w.drops("a") == {Drop.IPV6_UNKNOWN_OPTION: 2}
    assert w.events[Event.ICMPV6_PARAMETER_PROBLEM_SENT] == 1


def test_no_error_to_the_unspecified_address() -> None:
    """2.4(e.5): a packet without a unique source is not answered, even for an option of type 10."""
    w = _a_and_c()
    l3 = IPv6(src="::", dst="ff02::1") / _hbh(0x8F) / UDP()
    out = w.send("a", eth(A.mac, ALL_NODES_MAC, l3))
    assert of(out, ICMPv6ParamProblem) == [] and w.drops("a") == {Drop.IPV6_UNKNOWN_OPTION: 1}
    assert w.events[Event.ICMPV6_PARAMETER_PROBLEM_SENT] == 0  # not made at all (nor a token spent)


def test_errors_are_rate_limited_a_burst_of_10_refilled_at_100_per_second() -> None:
    """2.4(f): 12 at once give 10 errors and 2 icmpv6-rate-limited; 1/16 s later 6.25 tokens have
    come back: 6 more errors."""
    w = _a_and_c()
    errors = [of(w.send("a", udp(A, "2001:db8::1"), 5.0), ICMPv6DestUnreach) for _ in range(12)]
    assert sum(map(len, errors)) == 10 and w.events[Event.ICMPV6_RATE_LIMITED] == 2
    errors = [of(w.send("a", udp(A, "2001:db8::1"), 5.0625), ICMPv6DestUnreach) for _ in range(8)]
    assert sum(map(len, errors)) == 6 and w.events[Event.ICMPV6_RATE_LIMITED] == 4
    assert w.drops("a") == {Drop.NO_ROUTE: 20}


def test_an_error_is_at_most_1280_bytes() -> None:
    """2.4(c): the quote is cut so the whole error fits the IPv6 minimum MTU."""
    w = _a_and_c()
    sent = udp(A, "2001:db8::1", data=bytes(1400))
    out = w.send("a", sent)
    error_to(out, A, ICMPv6DestUnreach)
    assert len(out[0].buf) == L3 + 1280 and out[0].buf[L3 + 48 :] == sent[L3 : L3 + 1280 - 48]


# === 7. Local delivery ============================================================================
@pytest.mark.parametrize(
    ("src", "dst"),
    [(A.ip, "fd00:1::1"), (A.ll, LL_LAN), (A.ip, LL_LAN), (A.ip, "fd00:2::1")],
    ids=["global", "link-local", "global-to-link-local", "the-other-segments-1"],
)
def test_an_echo_request_to_any_of_our_addresses_is_answered(src: str, dst: str) -> None:
    """RFC 4443 4.2: from the address pinged, to the sender, identifier, sequence and data copied."""
    w = _a_and_c()
    w.known("a", ll=True)
    request = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=0x4242, seq=7, data=b"stamp-123")
    [reply] = w.send("a", to_router(A, request))
    p = reply.pkt
    assert reply.port == "a" and (p.src, p.dst) == (R_LAN, A.mac)
    assert (p[IPv6].src, p[IPv6].dst) == (dst, src)
    echo = p[ICMPv6EchoReply]
    assert (echo.id, echo.seq, echo.data) == (0x4242, 7, b"stamp-123")
    assert checksum_ok(reply)


def test_an_echo_request_with_a_bad_checksum_is_dropped() -> None:
    w = _a_and_c()
    request = IPv6(src=A.ip, dst="fd00:1::1") / ICMPv6EchoRequest(id=1, seq=1, cksum=0x1234)
    assert w.send("a", to_router(A, request)) == []
    assert w.drops("a") == {Drop.L4_BAD_CHECKSUM: 1}


def test_udp_to_the_router_is_port_unreachable() -> None:
    w = _a_and_c()
    p = error_to(w.send("a", udp(A, "fd00:1::1")), A, ICMPv6DestUnreach)
    assert p[ICMPv6DestUnreach].code == 4
    assert w.drops("a") == {Drop.TO_ROUTER: 1}


@pytest.mark.parametrize(("src", "dst"), [(A.ip, "fd00:2::1"), (A.ip, LL_LAN), (A.ll, "fd00:1::1")])
def test_an_error_about_a_packet_to_one_of_our_addresses_comes_from_that_address(src: str, dst: str) -> None:
    """RFC 4443 2.2(b): the port unreachable for a datagram to dmz's ::1 (arriving on lan), or to
    our link-local address, has that address as its source, as a reply does."""
    w = _a_and_c()
    w.known("a", ll=True)
    [err] = of(w.send("a", to_router(A, IPv6(src=src, dst=dst) / UDP(dport=9))), ICMPv6DestUnreach)
    assert (err.pkt[IPv6].src, err.pkt[IPv6].dst) == (dst, src)
    assert err.port == "a" and err.pkt[ICMPv6DestUnreach].code == 4 and checksum_ok(err)


def test_tcp_to_the_router_is_dropped_silently() -> None:
    w = _a_and_c()
    assert w.send("a", _tcp(A, "fd00:1::1")) == []
    assert w.drops("a") == {Drop.TO_ROUTER: 1}


@pytest.mark.parametrize(
    ("l3", "pointer"),
    [
        (IPv6(src=A.ip, dst="fd00:1::1", nh=132) / b"sctp....", 6),
        (IPv6(src=A.ip, dst="fd00:1::1") / IPv6ExtHdrDestOpt(nh=132) / b"sctp....", 40),
    ],
    ids=["after-the-header", "after-destination-options"],
)
def test_an_unknown_upper_protocol_is_parameter_problem_code_1_at_its_next_header(
    l3: Packet, pointer: int
) -> None:
    w = _a_and_c()
    p = error_to(w.send("a", to_router(A, l3)), A, ICMPv6ParamProblem)
    assert (p[ICMPv6ParamProblem].code, p[ICMPv6ParamProblem].ptr) == (1, pointer)


# === 8. Extension headers =========================================================================
def _forwarded_as_is(w: World, l3: Packet) -> None:
    """l3 from a to c leaves on c with only the MACs and the hop limit changed."""
    sent = to_router(A, l3)
    [o] = w.send("a", sent)
    assert o.port == "c" and o.buf[HLIM] == sent[HLIM] - 1
    assert o.buf[HLIM + 1 :] == sent[HLIM + 1 :] and o.buf[L3:HLIM] == sent[L3:HLIM]
    assert w.drops("a") == {}


@pytest.mark.parametrize(
    "chain",
    [
        [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()],
        [_hbh(0x0F)],  # an unknown option of type 00xxxxxx: skipped
        [IPv6ExtHdrFragment(offset=0, m=1, id=9)],
        [IPv6ExtHdrDestOpt() for _ in range(8)],
    ],
    ids=["hop-by-hop-then-options", "unknown-option-00", "first-fragment", "eight-headers"],
)
def test_an_allowed_chain_is_forwarded_untouched(chain: list[Packet]) -> None:
    l3: Packet = IPv6(src=A.ip, dst=C.ip)
    for header in chain:
        l3 = l3 / header
    _forwarded_as_is(_a_and_c(), l3 / UDP(sport=1, dport=2) / b"xxx")


def test_a_later_fragment_is_forwarded_untouched() -> None:
    """It carries no upper-layer header; a router never reassembles (RFC 8200 4.5)."""
    l3 = IPv6(src=A.ip, dst=C.ip) / IPv6ExtHdrFragment(nh=17, offset=100, m=0, id=9) / bytes(64)
    _forwarded_as_is(_a_and_c(), l3)


@pytest.mark.parametrize(
    ("l3", "reason", "code", "pointer"),
    [
        (
            IPv6(src=A.ip, dst=C.ip) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP(),
            Drop.IPV6_BAD_EXTENSION,
            1,
            40,
        ),
        (IPv6(src=A.ip, dst=C.ip) / _hbh(0x8F) / UDP(), Drop.IPV6_UNKNOWN_OPTION, 2, 42),
        (IPv6(src=A.ip, dst=C.ip) / _hbh(0xCF) / UDP(), Drop.IPV6_UNKNOWN_OPTION, 2, 42),
        (
            IPv6(src=A.ip, dst=C.ip) / IPv6ExtHdrRouting(type=0, segleft=1, addresses=[D.ip]) / UDP(),
            Drop.IPV6_ROUTING_TYPE_0,
            0,
            42,
        ),
    ],
    ids=["hop-by-hop-not-first", "option-10", "option-11", "routing-0-segments-left"],
)
def test_a_refused_chain_is_a_parameter_problem_pointing_at_the_field(
    l3: Packet, reason: Drop, code: int, pointer: int
) -> None:
    w = _a_and_c()
    sent = to_router(A, l3)
    p = error_to(w.send("a", sent), A, ICMPv6ParamProblem)
    assert (p[ICMPv6ParamProblem].code, p[ICMPv6ParamProblem].ptr) == (code, pointer)
    assert bytes(p[IPerror6]) == sent[L3:]
    assert w.drops("a") == {reason: 1}


def _raw6(version: int = 6, plen: int | None = None, nh: int = 17, payload: bytes = bytes(8)) -> Packet:
    return IPv6(version=version, src=A.ip, dst=C.ip, plen=plen, nh=nh) / Raw(payload)


SILENT = {
    "option-01": (IPv6(src=A.ip, dst=C.ip) / _hbh(0x4F) / UDP(), Drop.IPV6_UNKNOWN_OPTION),
    "routing-0-no-segments-left": (
        IPv6(src=A.ip, dst=C.ip) / IPv6ExtHdrRouting(type=0, segleft=0, addresses=[]) / UDP(),
        Drop.IPV6_ROUTING_TYPE_0,
    ),
    "nine-headers": (
        IPv6(src=A.ip, dst=C.ip) / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / UDP(),
        Drop.IPV6_EXTENSION_CHAIN_TOO_LONG,
    ),
    "header-longer-than-the-packet": (_raw6(nh=60, payload=b"\x11\x05" + bytes(6)),
                                      Drop.IPV6_EXTENSION_TRUNCATED),
    "header-shorter-than-8": (_raw6(nh=60, payload=b"\x11\x00\x00\x00"), Drop.IPV6_EXTENSION_TRUNCATED),
    "payload-length-beyond-the-frame": (_raw6(plen=200), Drop.IPV6_BAD_LENGTH),
    "version-5": (_raw6(version=5), Drop.IPV6_BAD_VERSION),
    "multicast-source": (IPv6(src="ff02::1", dst=C.ip) / UDP(), Drop.IPV6_MARTIAN_SOURCE),
    "loopback-source": (IPv6(src="::1", dst=C.ip) / UDP(), Drop.IPV6_MARTIAN_SOURCE),
    "unspecified-source-to-unicast": (IPv6(src="::", dst=C.ip) / UDP(), Drop.IPV6_MARTIAN_SOURCE),
    "loopback-destination": (IPv6(src=A.ip, dst="::1") / UDP(), Drop.IPV6_MARTIAN_DESTINATION),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SILENT))
def test_a_packet_parse_refuses_is_a_named_drop_and_nothing_is_sent(case: str) -> None:
    l3, reason = SILENT[case]
    w = _a_and_c()
    assert w.send("a", to_router(A, l3)) == []
    assert w.drops("a") == {reason: 1}


def test_the_subnet_router_anycast_address_is_answered_from_the_segments_own_address() -> None:
    """RFC 4291 2.6.1: every router answers its subnet's prefix::; a reply never comes from an anycast
    address (RFC 4443 4.2), and its neighbour advertisement does not override (RFC 4861 7.2.7)."""
    w = world()
    w.send("a", solicit(A, "fd00:1::1"), 1.0)  # the router learns a's MAC
    ping = IPv6(src=A.ip, dst="fd00:1::") / ICMPv6EchoRequest(id=7, seq=1, data=b"any")
    [reply] = of(w.send("a", eth(A.mac, R_LAN, ping), 1.5), ICMPv6EchoReply)
    assert reply.pkt[IPv6].src == "fd00:1::1" and reply.pkt[ICMPv6EchoReply].data == b"any"
    [advert] = of(w.send("a", solicit(A, "fd00:1::"), 2.0), ICMPv6ND_NA)
    assert advert.pkt[ICMPv6ND_NA].R == 1 and advert.pkt[ICMPv6ND_NA].O == 0


def test_an_unsolicited_advertisement_with_the_same_mac_confirms_nothing() -> None:
    """RFC 4861 7.2.5: only a solicited advertisement makes an entry reachable again."""
    w = world()
    w.send("a", solicit(A, "fd00:1::1"), 1.0)
    assert w.router.v6 is not None
    entry = w.router.v6.nd.entries[int(IPv6Address(A.ip))]
    unsolicited = IPv6(src=A.ip, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=A.ip, S=0, O=1)
    w.send("a", eth(A.mac, "33:33:00:00:00:01", unsolicited / ICMPv6NDOptDstLLAddr(lladdr=A.mac)), 50.0)
    assert entry.updated == 1.0


@pytest.mark.parametrize("kind", [133, 135, 136])
def test_a_one_byte_nd_message_is_malformed_not_an_exception(kind: int) -> None:
    """A solicitation or advertisement cut to its type byte: nd-malformed (found by the fuzz: the
    code byte was read before the length was checked)."""
    w = world()
    short = IPv6(src=A.ip, dst="fd00:1::1", nh=58, hlim=255) / Raw(bytes([kind]))
    assert w.send("a", eth(A.mac, R_LAN, short), 1.0) == []
    assert w.drops("a") == {Drop.ND_MALFORMED: 1}
