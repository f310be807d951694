"""The flow cache's IPv6 half (flowcache.forward6, _cacheable6) against the slow path it replaces.

As in test_flowcache.py, every packet goes through two datapaths built alike, one with the cache and
one without (``Twin``): the verdicts must be equal byte for byte, and so must everything observable
afterwards (counters, drops, events, the neighbour cache, the FDBs). A test then says whether the
packet was a hit. Routed TCP (ACK only), UDP and ICMPv6 echo are cached; each thing that must send a
packet back to the slow path is tried on a flow that is cached; route and neighbour changes flush;
IPv4 and IPv6 entries never answer for each other.

The world: lan (a) fd00:1::/64 and 10.1.0.0/24, dmz (c) fd00:2::/64 and 10.2.0.0/24 with MTU 1280.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    PadN,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.flowcache import INSERT_WHEN_FULL, FlowCache
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV6, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR

R_LAN, R_DMZ = "02:aa:00:00:00:01", "02:aa:00:00:00:02"
A_MAC, C_MAC, C_NEW_MAC = "02:00:00:00:01:0a", "02:00:00:00:02:0c", "02:00:00:00:02:99"
A_IP, C_IP = "fd00:1::a", "fd00:2::c"
PORTS = {"a": 0, "c": 1}
L3 = 24
HLIM = L3 + 7
TIMEOUT = 300.0  # the neighbour caches' freshness
# TCP ports whose bytes are also a destination options header's first four (next header TCP,
# length 0, a PadN of 4): a packet with that header matches the flow's key, and must still miss.
SPORT, DPORT = 0x0600, 0x0104
# A sequence number whose second byte, read as TCP flags 8 bytes too early, is ACK: the flag check
# alone would not send that packet to the slow path.
SEQ_LOOKS_LIKE_ACK = 0x00100000


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _iface(segment: int, name: str, router_mac: str, n: int, **kw: Any) -> Interface:
    """The router on segment n: 10.n.0.1/24 and fd00:n::1/64."""
    v4, v6 = IPv4Interface(f"10.{n}.0.1/24"), IPv6Interface(f"fd00:{n}::1/64")
    return Interface(segment, name, mac(router_mac), v4, address6=v6, **kw)


def world(cache: bool, max_entries: int = 8192) -> Datapath:
    """lan (a) and dmz (c, MTU 1280), routed; the cache on or off."""
    dp = Datapath(flow_cache_max=max_entries if cache else 0)
    lan, dmz = dp.add_segment("lan"), dp.add_segment("dmz")
    dp.add_port("a", lan)
    dp.add_port("c", dmz)
    router = Router(
        [
            _iface(lan, "lan", R_LAN, 1),
            _iface(dmz, "dmz", R_DMZ, 2, mtu=1280),
        ],
        arp_timeout=TIMEOUT,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ)})
    return dp


def state(dp: Datapath) -> dict[str, Any]:
    """Everything a test, the CLI or a later packet could see of the datapath."""
    router = dp.router
    assert router is not None and router.v6 is not None
    snapshot = dp.counters.snapshot()
    snapshot["events"] = {k: v for k, v in dp.counters.all_events().items() if not k.startswith("flow-cache")}
    return {
        "counters": snapshot,
        "drops": dict(router.drops),
        "events": dict(router.events),
        "fdb": [
            sorted(
                (m, e.port, e.static, None if e.static else e.seen) for m, e in seg.switch.fdb.entries.items()
            )
            for seg in dp.segments
        ],
        "nd": sorted((ip, n.mac, n.iface, n.updated, n.probed) for ip, n in router.v6.nd.entries.items()),
        "arp": sorted((ip, n.mac, n.iface, n.updated, n.probed) for ip, n in router.arp.entries.items()),
    }


@dataclass
class Twin:
    """Two datapaths, the cache on and off, fed the same frames at the same times."""

    on: Datapath
    off: Datapath

    @classmethod
    def build(cls, **kw: Any) -> Twin:
        twin = cls(world(True, **kw), world(False, **kw))
        for name, src_mac, src, gateway in (("a", A_MAC, A_IP, "fd00:1::1"), ("c", C_MAC, C_IP, "fd00:2::1")):
            twin.send(name, solicit(src_mac, src, gateway), 0.0)
        return twin

    def send(self, port: str, buf: bytes, now: float) -> Verdict:
        got = self.on.receive(PORTS[port], buf, now)
        expected = self.off.receive(PORTS[port], buf, now)
        assert got == expected, f"cache {got!r}\nslow path {expected!r}"
        assert state(self.on) == state(self.off)
        return got

    def hit(self, port: str, buf: bytes, now: float) -> tuple[bool, list[Packet]]:
        """Send buf; whether the cache answered, and the frames sent (parsed)."""
        before = self.hits
        verdict = self.send(port, buf, now)
        assert isinstance(verdict, list)
        return self.hits == before + 1, [Ether(bytes(frame)[10:]) for _, frame in verdict]

    @property
    def hits(self) -> int:
        return self.on.counters.flow_cache_hits

    @property
    def flows(self) -> FlowCache:
        assert self.on.flows is not None
        return self.on.flows

    def both(self) -> tuple[Router, Router]:
        assert self.on.router is not None and self.off.router is not None
        return self.on.router, self.off.router


def solicit(src_mac: str, src: str, target: str) -> bytes:
    """A host's solicitation for its gateway: the router learns it, the FDB its port."""
    group = str(IPv6Address("ff02::1:ff00:0") + (int(IPv6Address(target)) & 0xFFFFFF))
    l3 = IPv6(src=src, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    tail = IPv6Address(group).packed[12:]
    return ZERO_VNET_HDR + bytes(Ether(src=src_mac, dst="33:33:" + ":".join(f"{x:02x}" for x in tail)) / l3)


def from_a(l3: Packet, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    return vnet + bytes(Ether(src=A_MAC, dst=R_LAN) / l3)


def tcp(flags: str = "A", hlim: int = 64, data: bytes = b"data", seq: int = 1) -> bytes:
    return from_a(
        IPv6(src=A_IP, dst=C_IP, hlim=hlim) / TCP(sport=SPORT, dport=DPORT, flags=flags, seq=seq) / data
    )


def udp(hlim: int = 64, data: bytes = b"stamp") -> bytes:
    return from_a(IPv6(src=A_IP, dst=C_IP, hlim=hlim) / UDP(sport=5000, dport=53) / data)


def echo(seq: int = 1) -> bytes:
    return from_a(IPv6(src=A_IP, dst=C_IP) / ICMPv6EchoRequest(id=7, seq=seq, data=b"ping"))


FLOWS: dict[str, Callable[[], bytes]] = {"tcp-ack": tcp, "udp": udp, "icmpv6-echo": echo}


# --- what is cached --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FLOWS))
def test_the_next_packet_of_a_forwarded_flow_is_a_hit_and_leaves_as_the_slow_path_writes_it(
    kind: str,
) -> None:
    """The first packet takes the slow path and leaves the action; the second is a hit, and its
    frame (compared by Twin) is the slow path's: MACs and hop limit changed, nothing else."""
    twin = Twin.build()
    first = FLOWS[kind]()
    hit, [p] = twin.hit("a", first, 1.0)
    assert not hit and len(twin.flows) == 1
    hit, [p] = twin.hit("a", first, 2.0)
    assert hit
    assert (p.src, p.dst, p[IPv6].hlim) == (R_DMZ, C_MAC, 63)
    assert bytes(p[IPv6])[8:] == first[L3 + 8 :]


def test_an_echo_reply_is_cached_under_its_own_key() -> None:
    """c's reply flows back to a: a key of its own (type 129), a hit on its second packet; the
    request's entry is a different one."""
    twin = Twin.build()
    reply = ZERO_VNET_HDR + bytes(
        Ether(src=C_MAC, dst=R_DMZ) / IPv6(src=C_IP, dst=A_IP) / ICMPv6EchoReply(id=7, seq=1, data=b"ping")
    )
    twin.send("a", echo(), 1.0)
    assert twin.hit("c", reply, 1.5)[0] is False
    hit, [p] = twin.hit("c", reply, 2.0)
    assert hit and p.dst == A_MAC and p[ICMPv6EchoReply].id == 7
    assert twin.hit("a", echo(seq=2), 2.5)[0]  # the request's entry is still there


def _tso6(gso_size: int, payload: int = 4000) -> bytes:
    """A TSO super-frame of the TCP flow: GSO_TCPV6, NEEDS_CSUM, the checksum field left partial."""
    raw = bytearray(bytes(Ether(src=A_MAC, dst=R_LAN) / IPv6(src=A_IP, dst=C_IP)
                          / TCP(sport=SPORT, dport=DPORT, flags="A") / bytes(payload)))  # fmt: skip
    raw[14 + 40 + 16 : 14 + 40 + 18] = b"\x12\x34"  # whatever it holds, nobody on the way touches it
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, GSO_TCPV6, 14 + 60, gso_size, 14 + 40, 16) + bytes(raw)


def test_a_tso6_super_frame_within_the_mtu_is_a_hit_with_its_vnet_header_kept() -> None:
    """Segments of 1220 + 60 bytes fit dmz's 1280; the hit's frame keeps the virtio-net header and
    the partial checksum."""
    twin = Twin.build()
    sent = _tso6(1220)
    twin.send("a", sent, 1.0)
    verdict = twin.send("a", sent, 2.0)
    assert twin.hits == 1 and isinstance(verdict, list)
    out = bytes(verdict[0][1])
    assert out[:10] == sent[:10] and out[HLIM + 1 :] == sent[HLIM + 1 :] and out[HLIM] == 63


# --- what misses -----------------------------------------------------------------------------------
def _with_padding() -> bytes:
    return tcp() + bytes(12)  # Ethernet padding: the payload length no longer matches the frame


def _with_options() -> bytes:
    header = IPv6ExtHdrDestOpt(nh=6, options=[PadN(optdata=b"\x00\x00\x00\x00")])
    sent = from_a(
        IPv6(src=A_IP, dst=C_IP)
        / header
        / TCP(sport=SPORT, dport=DPORT, flags="A", seq=SEQ_LOOKS_LIKE_ACK)
        / b"data"
    )
    assert sent[L3 + 40 : L3 + 44] == tcp()[L3 + 40 : L3 + 44]  # the flow's key, byte for byte
    return sent


MISSES: dict[str, Any] = {
    "hop-limit-1": lambda: tcp(hlim=1),
    "syn": lambda: tcp("S"),
    "syn-ack": lambda: tcp("SA"),
    "fin": lambda: tcp("FA"),
    "rst": lambda: tcp("R"),
    "extension-header": _with_options,
    "padded-frame": _with_padding,
    "over-the-mtu": lambda: tcp(data=bytes(1280 - 60 + 1)),
    "tso6-over-the-mtu": lambda: _tso6(1221),
}


@pytest.mark.parametrize("case", list(MISSES))
def test_a_packet_of_a_cached_flow_that_the_slow_path_must_see_misses(case: str) -> None:
    """The flow is cached (its second packet a hit); this one is not a hit, and leaves (or not) as
    the slow path says."""
    twin = Twin.build()
    twin.send("a", tcp(), 1.0)
    assert twin.hit("a", tcp(), 2.0)[0]
    assert twin.hit("a", MISSES[case](), 3.0)[0] is False
    assert twin.hit("a", tcp(), 4.0)[0]  # and the entry is still good for the flow's next packets


def test_hop_limit_1_and_too_big_get_their_errors_from_the_slow_path() -> None:
    twin = Twin.build()
    twin.send("a", tcp(), 1.0)
    [p] = twin.hit("a", tcp(hlim=1), 2.0)[1]
    assert ICMPv6TimeExceeded in p and p.dst == A_MAC
    [p] = twin.hit("a", tcp(data=bytes(1300)), 3.0)[1]
    assert p[ICMPv6PacketTooBig].mtu == 1280


def test_a_stale_neighbour_misses_and_the_slow_path_probes_it() -> None:
    """Past the neighbour timeout the hit would skip the unicast solicitation the slow path sends."""
    twin = Twin.build()
    twin.send("a", udp(), 1.0)
    assert twin.hit("a", udp(), 2.0)[0]
    hit, frames = twin.hit("a", udp(), TIMEOUT + 0.5)
    assert not hit and [ICMPv6ND_NS in p for p in frames] == [False, True]


# --- invalidation -----------------------------------------------------------------------------------
def test_a_route_change_flushes() -> None:
    twin = Twin.build()
    twin.send("a", udp(), 1.0)
    assert twin.hit("a", udp(), 2.0)[0] and len(twin.flows) == 1
    for router in twin.both():
        assert router.v6 is not None
        router.v6.routes.add(Route(IPv6Network("fd00:9::/32"), IPv6Address(C_IP)))
    assert len(twin.flows) == 0 and twin.on.counters.events[Event.FLOW_CACHE_FLUSHED] >= 1
    assert twin.hit("a", udp(), 3.0)[0] is False


def test_a_neighbours_new_mac_flushes_and_the_next_packet_goes_to_it() -> None:
    """c's NA with the override flag and a new MAC: the cached action (old MAC) is gone."""
    twin = Twin.build()
    twin.send("a", udp(), 1.0)
    assert twin.hit("a", udp(), 2.0)[0]
    na = IPv6(src=C_IP, dst="fd00:2::1", hlim=255) / ICMPv6ND_NA(tgt=C_IP, S=0, O=1)
    twin.send("c", ZERO_VNET_HDR + bytes(Ether(src=C_NEW_MAC, dst=R_DMZ) / na
                                         / ICMPv6NDOptDstLLAddr(lladdr=C_NEW_MAC)), 2.5)  # fmt: skip
    assert len(twin.flows) == 0
    hit, [p] = twin.hit("a", udp(), 3.0)
    assert not hit and p.dst == C_NEW_MAC
    hit, [p] = twin.hit("a", udp(), 4.0)
    assert hit and p.dst == C_NEW_MAC


def test_the_bound_holds_for_ipv6_entries() -> None:
    """flow_cache_max 2: the IPv6 table full, a third flow is let in one miss in INSERT_WHEN_FULL (as an
    IPv4 one is, judged by its own table: a full IPv6 table does not make IPv4 flows wait, nor the
    reverse), and evicts the oldest when it is."""
    twin = Twin.build(max_entries=2)
    for sport in (1, 2, 3):
        twin.send("a", from_a(IPv6(src=A_IP, dst=C_IP) / UDP(sport=sport, dport=53)), 1.0)
    assert len(twin.flows.tables6[0]) == 2 and twin.on.counters.events[Event.FLOW_CACHE_FULL_SKIP] == 1
    for _ in range(INSERT_WHEN_FULL):
        twin.send("a", from_a(IPv6(src=A_IP, dst=C_IP) / UDP(sport=3, dport=53)), 1.0)
    assert len(twin.flows.tables6[0]) == 2 and twin.on.counters.events[Event.FLOW_CACHE_EVICTED] == 1
    assert len(twin.flows.tables[0]) == 0


# --- IPv4 and IPv6 side by side ---------------------------------------------------------------------
V4_SRC, V4_DST, V4_SPORT, V4_DPORT = "10.1.0.2", "10.2.0.2", 1000, 80
# An IPv6 source whose bytes 4-15 are the IPv4 flow's key (addresses, ports): the IPv4 table's key is
# read at the same offsets, so this packet finds the IPv4 entry first.
COLLIDING = "fd00:1:a01:2:a02:2:3e8:50"  # fd00:1, then 10.1.0.2, 10.2.0.2, 1000, 80


def _arp(twin: Twin) -> None:
    for port, src_mac, ip, gateway in (("a", A_MAC, V4_SRC, "10.1.0.1"), ("c", C_MAC, V4_DST, "10.2.0.1")):
        request = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=src_mac, psrc=ip, pdst=gateway
        )
        twin.send(port, ZERO_VNET_HDR + bytes(request), 0.0)


def test_ipv4_and_ipv6_entries_never_answer_for_each_other() -> None:
    """An IPv4 flow is cached; an IPv6 packet whose bytes at the IPv4 key's offsets are that key
    leaves as IPv6 (the slow path's frame), is cached in its own table, and both keep hitting."""
    twin = Twin.build()
    _arp(twin)
    v4 = ZERO_VNET_HDR + bytes(Ether(src=A_MAC, dst=R_LAN) / IP(src=V4_SRC, dst=V4_DST)
                               / UDP(sport=V4_SPORT, dport=V4_DPORT) / b"four")  # fmt: skip
    v6 = from_a(IPv6(src=COLLIDING, dst=C_IP) / UDP(sport=9, dport=9) / b"six")
    assert v6[L3 + 12 : L3 + 24] == v4[L3 + 12 : L3 + 24]
    twin.send("a", v4, 1.0)
    assert twin.hit("a", v4, 1.5)[0]
    hit, [p] = twin.hit("a", v6, 2.0)
    assert not hit and p[IPv6].src == COLLIDING and p[IPv6].hlim == 63 and p.dst == C_MAC
    hit, [p] = twin.hit("a", v6, 2.5)
    assert hit and IPv6 in p and p[IPv6].hlim == 63
    hit, [p] = twin.hit("a", v4, 3.0)
    assert hit and IP in p and p[IP].ttl == 63
    assert len(twin.flows.tables[0]) == 1 and len(twin.flows.tables6[0]) == 1


def test_an_ipv6_entry_is_never_used_for_ipv4() -> None:
    """The other way: a cached IPv6 flow, then IPv4 traffic on the same segment takes its own path."""
    twin = Twin.build()
    _arp(twin)
    twin.send("a", tcp(), 1.0)
    v4 = ZERO_VNET_HDR + bytes(Ether(src=A_MAC, dst=R_LAN) / IP(src=V4_SRC, dst=V4_DST) / TCP(flags="A"))
    hit, [p] = twin.hit("a", v4, 2.0)
    assert not hit and IP in p and p.dst == C_MAC and p[IP].ttl == 63


@pytest.mark.parametrize("length", [0, 0xFFFF], ids=["zero", "past-the-frame"])
def test_a_super_frame_whose_payload_length_the_slow_path_refuses_is_a_miss(length: int) -> None:
    """A cached UDP flow, then a USO frame of it with a payload length of 0 or past its end: the
    slow path drops it (ipv6-bad-length) and the cache must not forward it (found by the fuzz)."""
    twin = Twin.build()
    twin.send("a", udp(), 1.0)
    frame = bytearray(udp(data=b"x" * 1100))
    frame[:10] = VNET_HDR.pack(0, 5, 0, 1000, 0, 0)  # GSO_UDP_L4, gso_size 1000
    frame[L3 + 4 : L3 + 6] = length.to_bytes(2, "big")
    assert twin.send("a", bytes(frame), 2.0) == []
    assert twin.on.counters.drops[PORTS["a"]][Drop.IPV6_BAD_LENGTH] == 1
