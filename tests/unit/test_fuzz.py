"""Malformed and mutated frames through the whole routed datapath (switch, router, NAT).

Valid frames of every kind the pipeline parses are built with scapy, then cut short, bit-flipped and
given random virtio-net headers. Whatever arrives, `Datapath.receive` must return a verdict, never
raise, and every frame must be accounted for: forwarded, answered or dropped with a named reason.
The default run is short; `make fuzz` runs the `slow` variant with many more examples.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath
from vswitch.core.nat import NatConfig, PortForward
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route

R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
HOST_A, HOST_C, UPSTREAM = "02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:00:ff"
KNOWN_REASONS = {reason.value for reason in Drop}


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def routed_datapath() -> tuple[Datapath, Router]:
    dp = Datapath(fdb_max=64)
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    for name, seg in (("a", lan), ("b", lan), ("c", dmz), ("up", wan)):
        dp.add_port(name, seg)
    router = Router(
        [
            Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24")),
            Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24")),
            Interface(wan, "wan", mac(R_WAN), IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), wan)],
        NatConfig(
            wan,
            IPv4Address("198.18.0.2"),
            [IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24")],
            [PortForward(6, 8080, IPv4Address("10.2.0.2"), 80)],
            max_flows=32,
        ),
        arp_cache_max=16,
        arp_queue_max=4,
        arp_pending_max=4,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    return dp, router


def seeds() -> list[Packet]:
    """One well-formed frame of each kind the pipeline looks into."""
    to_router = Ether(src=HOST_A, dst=R_LAN)
    inbound = Ether(src=UPSTREAM, dst=R_WAN)
    return [
        Ether(src=HOST_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.0.2", pdst="10.1.0.1", hwsrc=HOST_A),
        Ether(src=UPSTREAM, dst=R_WAN) / ARP(op=2, psrc="198.18.0.1", pdst="198.18.0.2", hwsrc=UPSTREAM),
        to_router / IP(src="10.1.0.2", dst="198.18.0.1") / TCP(sport=40000, dport=80, flags="S"),
        to_router / IP(src="10.1.0.2", dst="198.18.0.1") / UDP(sport=5353, dport=53) / b"q",
        to_router / IP(src="10.1.0.2", dst="198.18.0.1") / ICMP(id=7) / b"ping",
        to_router / IP(src="10.1.0.2", dst="10.2.0.2", ttl=1) / UDP(),
        to_router / IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(),
        to_router / IP(src="10.1.0.2", dst="198.18.0.2") / TCP(dport=8080, flags="S"),
        inbound / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=80, dport=40000, flags="SA"),
        inbound / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=9, dport=8080, flags="S"),
        inbound
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / ICMP(type=3, code=3)
        / IPerror(src="198.18.0.2", dst="198.18.0.1")
        / UDPerror(sport=5353, dport=53),
        Ether(src=HOST_A, dst=HOST_C) / IP(src="10.1.0.2", dst="10.1.0.3") / UDP() / (b"x" * 1400),
    ]


SEEDS = [bytes(p) for p in seeds()]
VNET = struct.Struct("<BBHHHH")


@st.composite
def mangled(draw: st.DrawFn) -> tuple[int, bytes]:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        if frame:
            index = draw(st.integers(0, len(frame) - 1))
            frame[index] ^= 1 << draw(st.integers(0, 7))
    cut = draw(st.integers(0, len(frame)))
    if draw(st.booleans()):
        frame = frame[:cut]
    if draw(st.booleans()):
        vnet = VNET.pack(
            draw(st.sampled_from([0, 1, 2, 3])),
            draw(st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x7F])),
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFF)),
        )
    else:
        vnet = bytes(10)
    port = draw(st.integers(0, 3))
    return port, vnet + bytes(frame)


def run_and_account(frames: list[tuple[int, bytes]]) -> None:
    dp, router = routed_datapath()
    router_ports = [i for i, name in enumerate(dp.counters.names) if name.startswith("router:")]

    def drops() -> int:
        return sum(dp.counters.total_drops().values()) + sum(router.drops.values())

    def to_router() -> int:
        return sum(dp.counters.rx_packets[i] for i in router_ports)

    now = 0.0
    for port, pkt in frames:
        now += 0.5
        drops_before, routed_before = drops(), to_router()
        verdict = dp.receive(port, pkt, now)
        if verdict is None:
            # Nothing sent: a named drop was counted, or the router took the frame (an ARP reply it
            # learnt from, a frame for another MAC, a packet queued behind ARP). Never a silent loss.
            assert drops() > drops_before or to_router() > routed_before
        else:
            assert isinstance(verdict, int | tuple | list)
        assert isinstance(dp.on_timer(now), list)
    assert set(dp.counters.total_drops()) <= KNOWN_REASONS
    assert set(router.drops) <= KNOWN_REASONS


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mangled(), min_size=1, max_size=30))
def test_mangled_frames_never_raise_and_drops_are_named(frames: list[tuple[int, bytes]]) -> None:
    run_and_account(frames)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mangled(), min_size=1, max_size=60))
def test_mangled_frames_long_run(frames: list[tuple[int, bytes]]) -> None:
    run_and_account(frames)


def test_every_seed_is_accepted_unmangled() -> None:
    """The seeds are valid: none of them is dropped as malformed, so mutations start from real frames."""
    dp, router = routed_datapath()
    malformed = {Drop.RUNT, Drop.BAD_VNET_HEADER, Drop.IP_TRUNCATED, Drop.IP_BAD_CHECKSUM}
    for pkt in SEEDS:
        dp.receive(0 if pkt[6:12] == mac(HOST_A) else 3, bytes(10) + pkt, 1.0)
    assert not malformed & set(dp.counters.total_drops())
    assert not malformed & set(router.drops)
