"""`vswitch trace` on an in-process Datapath + Router: switched, routed, NAT-ed and dropped frames,
each stage named, each changed field shown, and no side effect on the traced datapath."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from vswitch.core.datapath import Datapath
from vswitch.core.nat import NatConfig
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import ZERO_VNET_HDR
from vswitch.tools.debug.trace import render, trace

R0, R1, RW = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
A, B, C, UP = "02:00:00:00:01:02", "02:00:00:00:01:03", "02:00:00:00:02:02", "02:00:00:00:00:ff"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def build() -> tuple[Datapath, dict[str, int]]:
    """lan (a 10.1.0.2, b 10.1.0.3), dmz (c 10.2.0.2), wan (up 198.18.0.1) with NAT to 198.18.0.2."""
    dp = Datapath()
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    ports = {"a": dp.add_port("a", lan), "b": dp.add_port("b", lan)}
    ports["c"] = dp.add_port("c", dmz)
    ports["up"] = dp.add_port("up", wan)
    router = Router(
        [
            Interface(lan, "lan", mac(R0), IPv4Interface("10.1.0.1/24")),
            Interface(dmz, "dmz", mac(R1), IPv4Interface("10.2.0.1/24")),
            Interface(wan, "wan", mac(RW), IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), wan)],
        NatConfig(wan, IPv4Address("198.18.0.2"), [IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24")]),
    )
    dp.attach_router(router, {lan: mac(R0), dmz: mac(R1), wan: mac(RW)})
    router.arp.learn(int(IPv4Address("10.2.0.2")), mac(C), dmz, 0.0)
    router.arp.learn(int(IPv4Address("198.18.0.1")), mac(UP), wan, 0.0)
    # b has spoken once: the lan FDB knows it
    dp.receive(ports["b"], buf(Ether(src=B, dst=A) / IP(src="10.1.0.3", dst="10.1.0.2") / UDP()), 0.0)
    return dp, ports


def buf(pkt: Packet) -> bytes:
    return ZERO_VNET_HDR + bytes(pkt)


def state(dp: Datapath) -> tuple[object, ...]:
    router = dp.router
    assert isinstance(router, Router)
    fdb = [sorted((k, e.port) for k, e in s.switch.fdb.entries.items()) for s in dp.segments]
    return (
        fdb,
        router.conntrack_table(1.0),
        router.arp_table(1.0),
        dict(router.drops),
        dp.counters.snapshot(),
    )


def text_of(dp: Datapath, port: int, pkt: Packet) -> str:
    before = state(dp)
    result = trace(dp, port, buf(pkt), 1.0)
    assert state(dp) == before, "trace changed the real datapath"
    return "\n".join(render(result.to_json()))


def test_switched_frame_goes_to_the_learnt_port_unchanged() -> None:
    dp, ports = build()
    out = text_of(dp, ports["a"], Ether(src=A, dst=B) / IP(src="10.1.0.2", dst="10.1.0.3") / ICMP())
    assert "learn 02:00:00:00:01:02 on a" in out
    assert "FDB: 02:00:00:00:01:03 is on b -> b" in out
    assert "unchanged  -> port b" in out


def test_unknown_destination_is_flooded() -> None:
    dp, ports = build()
    out = text_of(dp, ports["b"], Ether(src=B, dst="02:00:00:00:09:09") / IP(src="10.1.0.3", dst="10.1.0.9"))
    assert "no FDB entry for 02:00:00:00:09:09: flood -> a, the router" in out
    assert "-> port a" in out


def test_routed_frame_changes_macs_and_ttl() -> None:
    dp, ports = build()
    pkt = Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="10.2.0.2", ttl=64) / UDP(sport=5000, dport=53)
    out = text_of(dp, ports["a"], pkt)
    assert "route        10.2.0.2 -> dmz, directly connected" in out
    assert "next hop on dmz is 02:00:00:00:02:02 (cached)" in out
    line = next(x for x in out.splitlines() if "-> port c" in x)
    assert f"Ether.src {A} -> {R1}" in line
    assert f"Ether.dst {R0} -> {C}" in line
    assert "IP.ttl 64 -> 63" in line
    assert "IP.src" not in line  # inside to inside: not masqueraded


def test_nat_shows_the_translated_source() -> None:
    dp, ports = build()
    pkt = Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="198.19.5.5") / TCP(sport=40000, dport=80, flags="S")
    out = text_of(dp, ports["a"], pkt)
    assert "route        198.19.5.5 -> wan, via 198.18.0.1" in out
    assert "conntrack    new tcp flow 10.1.0.2:40000 -> 198.19.5.5:80" in out
    line = next(x for x in out.splitlines() if "-> port up" in x)
    assert "IP.src 10.1.0.2 -> 198.18.0.2" in line
    assert "TCP.sport 40000 -> " in line
    assert "IP.ttl 64 -> 63" in line


def test_dropped_frames_name_their_reason() -> None:
    dp, ports = build()
    out = text_of(dp, ports["a"], Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="10.2.0.2", ttl=1) / ICMP())
    assert "dropped: ttl-exceeded (at router)" in out
    assert "new frame" in out  # the time-exceeded error the router sends back
    out = text_of(dp, ports["a"], Ether(src="01:00:5e:00:00:01", dst=B) / IP())
    assert "dropped: src-multicast (at a)" in out
    out = text_of(
        dp, ports["up"], Ether(src=UP, dst=RW) / IP(src="198.19.5.5", dst="198.18.0.2") / UDP(dport=9)
    )
    assert "dropped: nat-unsolicited (at router)" in out


def test_unresolved_next_hop_is_queued_behind_an_arp_request() -> None:
    dp, ports = build()
    out = text_of(dp, ports["c"], Ether(src=C, dst=R1) / IP(src="10.2.0.2", dst="10.1.0.7") / ICMP())
    assert "10.1.0.7 unresolved on lan: who-has sent" in out
    assert "new frame Ether / ARP who has 10.1.0.7" in out


def test_trace_leaves_no_trace() -> None:
    dp, ports = build()
    snapshot = copy.deepcopy(state(dp))
    for _ in range(3):
        pkt = Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="198.19.5.5") / UDP(sport=1234, dport=53)
        trace(dp, ports["a"], buf(pkt), 1.0)
    assert state(dp) == snapshot


def test_trace_says_whether_the_flow_cache_would_forward_it() -> None:
    dp, ports = build()
    syn = Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="198.19.5.5") / TCP(sport=40000, dport=80, flags="S")
    assert "flow cache   miss" in text_of(dp, ports["a"], syn)
    # Establish the flow for real: SYN out, SYN-ACK back to the mapped port, then ACKs out.
    out = dp.receive(ports["a"], buf(syn), 1.0)
    assert isinstance(out, list)
    mapped = Ether(out[0][1][10:])[TCP].sport
    synack = (
        Ether(src=UP, dst=RW)
        / IP(src="198.19.5.5", dst="198.18.0.2")
        / TCP(sport=80, dport=mapped, flags="SA")
    )
    dp.receive(ports["up"], buf(synack), 1.0)
    ack = Ether(src=A, dst=R0) / IP(src="10.1.0.2", dst="198.19.5.5") / TCP(sport=40000, dport=80, flags="A")
    dp.receive(ports["a"], buf(ack), 1.0)
    text = text_of(dp, ports["a"], ack)
    assert "flow cache   hit" in text
    assert "IP.src 10.1.0.2 -> 198.18.0.2" in next(x for x in text.splitlines() if "-> port up" in x)
