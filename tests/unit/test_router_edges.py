"""Router edge cases found in review: what NAT must not leak or leave behind."""

from __future__ import annotations

from ipaddress import IPv4Address

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether
from test_fuzz import HOST_A, R_LAN, R_WAN, UPSTREAM, mac, routed_datapath

from vswitch.core.router import Router


def send(router: Router, iface: int, pkt: Ether, now: float) -> list[Ether]:
    return [Ether(frame[10:]) for _, frame in router.receive(iface, bytes(10) + bytes(pkt), now)]


def test_host_unreachable_after_arp_failure_quotes_the_packet_before_nat() -> None:
    """RFC 5508 4.1: the inside host must get the error, about the packet it sent."""
    _, router = routed_datapath()
    router.arp.learn(int(IPv4Address("10.1.0.2")), mac(HOST_A), 0, 0.0)
    out = send(
        router,
        0,
        Ether(src=HOST_A, dst=R_LAN) / IP(src="10.1.0.2", dst="198.18.0.1") / UDP(sport=5000, dport=53),
        1.0,
    )
    assert out and out[0][ARP].pdst == "198.18.0.1"  # the upstream never answers
    errors: list[Ether] = []
    now = 1.0
    for _ in range(5):
        now += 1.0
        errors += [Ether(f[10:]) for _, f in router.on_timer(now)]
    unreachable = [e for e in errors if e.haslayer(ICMP) and e[ICMP].type == 3]
    assert len(unreachable) == 1
    error = unreachable[0]
    assert error[IP].dst == "10.1.0.2" and error.dst == HOST_A
    assert error[ICMP].code == 1
    assert error[IPerror].src == "10.1.0.2" and error[UDPerror].sport == 5000  # pre-NAT quote
    assert not [e for e in errors if e.haslayer(ARP) and e[ARP].pdst == "198.18.0.2"]


def test_traceroute_probe_leaves_no_conntrack_entry() -> None:
    _, router = routed_datapath()
    router.arp.learn(int(IPv4Address("10.1.0.2")), mac(HOST_A), 0, 0.0)
    for port in range(33434, 33439):
        out = send(
            router,
            0,
            Ether(src=HOST_A, dst=R_LAN)
            / IP(src="10.1.0.2", dst="198.18.0.1", ttl=1)
            / UDP(sport=40000, dport=port),
            1.0,
        )
        assert out[0][ICMP].type == 11
    assert router.nat is not None
    assert len(router.nat.conntrack.keys) == 0
    assert router.nat.mappings == {}


def test_packets_from_our_own_addresses_are_martians() -> None:
    """RFC 1812 5.3.7: a packet claiming to come from the router itself is spoofed or looped."""
    _, router = routed_datapath()
    inbound = Ether(src=UPSTREAM, dst=R_WAN) / IP(src="198.18.0.2", dst="10.1.0.2") / TCP(flags="S")
    assert send(router, 2, inbound, 1.0) == []
    lan = Ether(src=HOST_A, dst=R_LAN) / IP(src="10.1.0.1", dst="198.18.0.1", ttl=1) / UDP()
    assert send(router, 0, lan, 1.0) == []
    assert router.drops["ip-martian-source"] == 2
