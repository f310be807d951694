"""The capture filter subset: tcpdump primitives with and/or/not over raw Ethernet frames."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vswitch.core.bpf import FilterError, compile_filter

M1, M2 = "02:00:00:00:00:01", "02:00:00:00:00:02"
PING = Ether(src=M1, dst=M2) / IP(src="10.1.0.2", dst="10.2.0.2") / ICMP()
WEB = Ether(src=M1, dst=M2) / IP(src="10.1.0.2", dst="198.19.0.5") / TCP(sport=40000, dport=80)
DNS = Ether(src=M2, dst=M1) / IP(src="10.2.0.2", dst="10.1.0.2") / UDP(sport=53, dport=5353)
WHO = Ether(src=M1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.0.2", pdst="10.1.0.1")
ALL = {"ping": PING, "web": WEB, "dns": DNS, "arp": WHO}


def hits(expr: str) -> set[str]:
    matches = compile_filter(expr)
    return {name for name, pkt in ALL.items() if matches(bytes(pkt))}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", {"ping", "web", "dns", "arp"}),
        ("icmp", {"ping"}),
        ("tcp", {"web"}),
        ("udp", {"dns"}),
        ("arp", {"arp"}),
        ("ip", {"ping", "web", "dns"}),
        ("tcp port 80", {"web"}),
        ("udp port 80", set()),
        ("port 53", {"dns"}),
        ("src port 53", {"dns"}),
        ("dst port 53", set()),
        ("host 10.1.0.2", {"ping", "web", "dns", "arp"}),
        ("src host 10.1.0.2", {"ping", "web", "arp"}),
        ("dst 10.1.0.2", {"dns"}),
        ("net 198.18.0.0/15", {"web"}),
        ("icmp or udp", {"ping", "dns"}),
        ("host 10.1.0.2 and not arp", {"ping", "web", "dns"}),
        ("!(tcp || udp) && ip", {"ping"}),
        ("ether src 02:00:00:00:00:02", {"dns"}),
        ("ether host 02:00:00:00:00:02", {"ping", "web", "dns"}),
        ("not icmp and not tcp or arp", {"dns", "arp"}),
        ("greater 60", set()),
        ("less 59", {"ping", "web", "dns", "arp"}),
    ],
)
def test_primitives(expr: str, expected: set[str]) -> None:
    assert hits(expr) == expected


@pytest.mark.parametrize(
    "expr", ["tcp[13] & 2", "host", "port http", "host 10.0.0.300", "(icmp", "icmp)", "ether 1", "frob"]
)
def test_unsupported_is_refused_with_a_message(expr: str) -> None:
    with pytest.raises(FilterError, match="filter"):
        compile_filter(expr)


def test_runts_and_fragments_never_raise() -> None:
    matches = compile_filter("tcp port 80 or arp or host 1.2.3.4")
    for size in range(40):
        matches(bytes(WEB)[:size])
    frag: Packet = Ether() / IP(frag=10, proto=6) / bytes(20)
    assert not compile_filter("port 0")(bytes(frag))
