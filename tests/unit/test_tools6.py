"""Every debug tool in both families (issue 17): the capture filter on scapy-built IPv6 frames, doctor's
IPv6 checks as a pure function of what the kernel shows, and pingall's IPv6 pieces (its echo frames,
the neighbour it resolves, its JSON)."""

from __future__ import annotations

import base64
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from vswitch.core.bpf import FilterError, compile_filter
from vswitch.core.ipv6 import MAX_EXTENSIONS
from vswitch.core.npt import Npt
from vswitch.tools.debug.doctor import (
    IFA_F_DADFAILED,
    RTPROT_RA,
    Expect6,
    Finding,
    Link6,
    Route6,
    expect6,
    findings,
    ipv6_findings,
    slaac_address,
)
from vswitch.tools.debug.pingall import (
    FAIL,
    NO_ADDRESS,
    OK,
    Matrix,
    _outcome,
    _router_says,
    echo6,
    hop6,
    reply_to6,
    v4_matrix,
    v6_matrix,
)

M1, M2, ROUTER = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:fe"
A6, B6, C6 = "fd00:77::a", "fd00:77::b", "fd00:77:0:1::c"
LL = "fe80::fe"

# --- the capture filter -----------------------------------------------------------------------------------
FRAMES: dict[str, Packet] = {
    "ping4": Ether(src=M1, dst=M2) / IP(src="10.1.0.2", dst="10.2.0.2") / ICMP(),
    "web4": Ether(src=M1, dst=M2) / IP(src="10.1.0.2", dst="198.19.0.5") / TCP(sport=40000, dport=80),
    "arp": Ether(src=M1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.0.2", pdst="10.1.0.1"),
    "ping6": Ether(src=M1, dst=ROUTER) / IPv6(src=A6, dst=C6) / ICMPv6EchoRequest(id=7, seq=1),
    "pong6": Ether(src=ROUTER, dst=M1) / IPv6(src=C6, dst=A6) / ICMPv6EchoReply(id=7, seq=1),
    "web6": Ether(src=M2, dst=ROUTER) / IPv6(src=B6, dst=C6) / TCP(sport=40001, dport=80),
    "dns6": Ether(src=ROUTER, dst=M2) / IPv6(src=C6, dst=B6) / UDP(sport=53, dport=5353),
    # a neighbour solicitation from the router's link-local for A6, to A6's solicited-node group
    "ns6": Ether(src=ROUTER, dst="33:33:ff:00:00:0a")
    / IPv6(src=LL, dst="ff02::1:ff00:a", hlim=255)
    / ICMPv6ND_NS(tgt=A6),
}


def hits(expr: str) -> set[str]:
    matches = compile_filter(expr)
    return {name for name, pkt in FRAMES.items() if matches(bytes(pkt))}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("ip6", {"ping6", "pong6", "web6", "dns6", "ns6"}),
        ("icmp6", {"ping6", "pong6", "ns6"}),
        ("icmp", {"ping4"}),  # ICMP is IPv4's; icmp6 IPv6's
        ("icmp or icmp6", {"ping4", "ping6", "pong6", "ns6"}),
        ("tcp", {"web4", "web6"}),
        ("udp", {"dns6"}),
        ("tcp and ip6", {"web6"}),
        ("port 80", {"web4", "web6"}),
        ("tcp dst port 80", {"web4", "web6"}),
        ("udp src port 53", {"dns6"}),
        ("udp port 80", set()),
        (f"host {A6}", {"ping6", "pong6"}),  # the NS for A6 is not A6's: its target is no header address
        (f"src host {A6}", {"ping6"}),
        (f"dst {A6}", {"pong6"}),
        (f"icmp6 and host {A6}", {"ping6", "pong6"}),
        (f"host {C6} and not icmp6", {"web6", "dns6"}),
        ("net fd00:77::/64", {"ping6", "pong6", "web6", "dns6"}),
        ("net fd00:77:0:1::/64", {"ping6", "pong6", "web6", "dns6"}),
        ("dst net fd00:77:0:1::/64", {"ping6", "web6"}),
        ("net fd00:77::/48 and udp", {"dns6"}),
        ("src net fe80::/10", {"ns6"}),
        ("dst net ff02::/16", {"ns6"}),
        ("net fd00:77::/63", {"ping6", "pong6", "web6", "dns6"}),
        ("net fd00:78::/32", set()),
        ("host fd00:77:0:0::a", {"ping6", "pong6"}),  # written another way, the same address
        # both families in one expression
        (f"host 10.1.0.2 or host {B6}", {"ping4", "web4", "arp", "web6", "dns6"}),
        ("net 10.0.0.0/8 or net fd00::/8", {"ping4", "web4", "arp", "ping6", "pong6", "web6", "dns6"}),
        ("(ip or ip6) and not (icmp or icmp6)", {"web4", "web6", "dns6"}),
        ("!ip6 && !arp", {"ping4", "web4"}),
        # an IPv4 prefix never matches an IPv6 address (not even ::/0 against IPv4)
        ("net 0.0.0.0/0", {"ping4", "web4", "arp"}),
        ("net ::/0", {"ping6", "pong6", "web6", "dns6", "ns6"}),
        ("host ::a", set()),
        ("ether src 02:00:00:00:00:fe and ip6", {"pong6", "dns6", "ns6"}),
    ],
)
def test_ipv6_primitives_and_mixed_with_ipv4(expr: str, expected: set[str]) -> None:
    assert hits(expr) == expected


def one(expr: str, pkt: Packet | bytes) -> bool:
    return compile_filter(expr)(bytes(pkt))


def test_the_upper_layer_is_found_past_extension_headers() -> None:
    base = Ether(src=M1, dst=ROUTER) / IPv6(src=A6, dst=C6)
    tcp = TCP(sport=40000, dport=443)
    chains: list[Packet] = [
        IPv6ExtHdrHopByHop() / tcp,
        IPv6ExtHdrDestOpt() / tcp,
        IPv6ExtHdrRouting(addresses=[B6]) / tcp,
        IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(offset=0) / tcp,
        AH(nh=6, payloadlen=4, spi=1, icv=b"\x00" * 12) / tcp,  # 24 bytes: (4 + 2) * 4
    ]
    for chain in chains:
        pkt = base / chain
        assert one("tcp port 443", pkt), pkt.summary()
        assert one("tcp and src port 40000 and ip6", pkt), pkt.summary()
        assert not one("udp or icmp6", pkt), pkt.summary()
    echo = base / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest()
    assert one(f"icmp6 and dst host {C6}", echo)


def test_a_later_fragment_has_its_protocol_but_no_ports() -> None:
    base = Ether(src=M1, dst=ROUTER) / IPv6(src=A6, dst=C6)
    first = base / IPv6ExtHdrFragment(offset=0, m=1, nh=17) / UDP(sport=53, dport=53) / Raw(b"x" * 64)
    later = base / IPv6ExtHdrFragment(offset=9, nh=17) / Raw(b"y" * 64)
    assert one("udp port 53", first)
    assert one("udp", later) and not one("port 53", later) and not one("udp port 53", later)


def test_chains_the_router_refuses_have_no_upper_layer() -> None:
    base = Ether(src=M1, dst=ROUTER) / IPv6(src=A6, dst=C6)
    tcp = TCP(sport=1, dport=80)
    chain: Packet = IPv6ExtHdrDestOpt()
    for _ in range(MAX_EXTENSIONS - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    assert one("tcp port 80", base / chain / tcp)  # 8: the most the router walks
    assert not one("tcp", base / IPv6ExtHdrDestOpt() / chain / tcp)  # 9
    # ESP hides what follows it
    esp: Packet = base / IPv6(nh=50) / Raw(b"\x00" * 24)
    assert not one("tcp or udp or icmp6", esp) and one("ip6", esp)
    # an extension header whose length runs past the packet
    cut = bytearray(bytes(base / IPv6ExtHdrDestOpt() / tcp))
    cut[14 + 40 + 1] = 200
    assert not one("tcp", bytes(cut)) and one("ip6", bytes(cut))


def test_the_payload_length_bounds_the_packet_not_the_ethernet_padding() -> None:
    """A bare IPv6 header (no next header) is padded to 60 bytes: the padding is not a TCP header."""
    bare = bytes(Ether(src=M1, dst=ROUTER) / IPv6(src=A6, dst=C6, nh=6, plen=0))
    padded = bare + b"\x00\x50\x00\x50" + b"\x00" * (60 - len(bare) - 4)
    assert not one("port 80", padded)
    assert one("tcp", padded)  # the header says tcp; there is no header to read ports from


def test_runts_and_wrong_versions_never_raise() -> None:
    matches = compile_filter(f"tcp port 80 or icmp6 or host {A6} or net fd00::/8 or ip6")
    frames = [bytes(p) for p in FRAMES.values()] + [
        bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / TCP())
    ]
    for frame in frames:
        for size in range(len(frame)):
            matches(frame[:size])
    v4_in_v6 = bytearray(bytes(FRAMES["ping6"]))
    v4_in_v6[14] = 0x45
    assert not compile_filter(f"host {A6} or icmp6")(bytes(v4_in_v6))
    assert compile_filter("ip6")(bytes(v4_in_v6))  # the ethertype says so


def test_a_vlan_tag_is_not_looked_through() -> None:
    """As the module says: `vlan` matches tagged frames, the rest untagged ones (IPv4 the same)."""
    tagged = Ether(src=M1, dst=ROUTER) / Dot1Q(vlan=10) / IPv6(src=A6, dst=C6) / ICMPv6EchoRequest()
    assert one("vlan", tagged)
    assert not one("icmp6", tagged) and not one(f"host {A6}", tagged)


@pytest.mark.parametrize(
    "expr",
    [
        "host fd00::1::2",
        "host fe80::1%eth0",
        "net fd00::/129",
        "host fd00::/64",
        "net fd00:77::/64x",
        "icmp6 port 53",
        "ip6 host fd00::1",
        "host 10.1.0.0/24",
    ],
)
def test_bad_ipv6_filters_are_refused_with_a_message(expr: str) -> None:
    with pytest.raises(FilterError, match="filter"):
        compile_filter(expr)


def test_capture_help_shows_the_ipv6_grammar() -> None:
    import argparse

    from vswitch.tools.debug import capture

    sub = argparse.ArgumentParser(prog="vswitch").add_subparsers()
    capture.add_parser(sub)
    text = sub.choices["capture"].format_help()
    for word in ("icmp6", "fd00:77::/64", "extension headers", "VLAN tag"):
        assert word in text, word


# --- doctor: the IPv6 checklist as a function of what the kernel shows ---------------------------------
NS, MAC = "v6tns", "3e:40:68:f1:64:39"
PREFIX = IPv6Network("fd00:77::/64")
SLAAC = IPv6Interface("fd00:77::3c40:68ff:fef1:6439/64")  # EUI-64 of MAC
ROUTER_LL = IPv6Address("fe80::d83c:42ff:feb2:4c9a")
ROUTED = Expect6("lan", PREFIX, SLAAC, ROUTER_LL, 1500)
SWITCHED = Expect6("lan", PREFIX, IPv6Interface("fd00:77::2/64"), None, 1500)
HEALTHY_CONF = {"disable_ipv6": 0, "forwarding": 0, "accept_ra": 1, "accept_ra_defrtr": 1, "autoconf": 1,
                "accept_ra_mtu": 1, "mtu": 1500}  # fmt: skip
LINK_LOCAL = (IPv6Interface("fe80::3c40:68ff:fef1:6439/64"), 0x80)  # IFA_F_PERMANENT


def link6(
    addresses: tuple[tuple[IPv6Interface, int], ...] = ((SLAAC, 0), LINK_LOCAL),
    defaults: tuple[Route6, ...] = (Route6(ROUTER_LL, 2, RTPROT_RA),),
    link_mtu: int = 1500,
    **conf: int,
) -> Link6:
    """A port's IPv6 as the kernel would show it, healthy unless told otherwise (conf: net.ipv6.conf)."""
    return Link6("eth0", 2, MAC, link_mtu, addresses, defaults, {**HEALTHY_CONF, **conf})


def texts(found: list[Finding]) -> list[str]:
    return [f.text for f in found]


def test_slaac_address_is_the_modified_eui64_of_the_mac() -> None:
    assert slaac_address(PREFIX, MAC) == SLAAC


def test_a_healthy_port_has_no_ipv6_findings() -> None:
    assert ipv6_findings(NS, link6(), ROUTED) == []
    static = link6(addresses=((IPv6Interface("fd00:77::2/64"), 0x80), LINK_LOCAL), defaults=())
    assert ipv6_findings(NS, static, SWITCHED) == []


def test_a_missing_address_says_what_slaac_would_give_and_the_fix() -> None:
    (found,) = ipv6_findings(NS, link6(addresses=(LINK_LOCAL,)), ROUTED)
    assert found.problem and f"no IPv6 address in {PREFIX} on eth0" in found.text and str(SLAAC) in found.text
    assert found.fix == f"ip -n {NS} addr add {SLAAC} dev eth0 nodad"
    # status had none (SLAAC never came): the address is worked out from the MAC
    (found,) = ipv6_findings(
        NS, link6(addresses=(LINK_LOCAL,)), Expect6("lan", PREFIX, None, ROUTER_LL, 1500)
    )
    assert str(SLAAC) in found.text
    # an address outside the segment's prefix does not count
    elsewhere = ((IPv6Interface("fd00:99::1/64"), 0), LINK_LOCAL)
    assert "no IPv6 address" in ipv6_findings(NS, link6(addresses=elsewhere), ROUTED)[0].text
    (static,) = ipv6_findings(NS, link6(addresses=(LINK_LOCAL,), defaults=()), SWITCHED)
    assert "vswitch gave it fd00:77::2/64" in static.text
    assert static.fix == f"ip -n {NS} addr add fd00:77::2/64 dev eth0 nodad"


@pytest.mark.parametrize(
    ("conf", "cause", "fix"),
    [
        ({"accept_ra": 0}, "accept_ra 0", "net.ipv6.conf.eth0.accept_ra=1"),
        ({"forwarding": 1}, "forwarding 1 with accept_ra 1", "net.ipv6.conf.eth0.accept_ra=2"),
    ],
)
def test_ignored_advertisements_are_named_as_the_cause(conf: dict[str, int], cause: str, fix: str) -> None:
    found = ipv6_findings(NS, link6(addresses=(LINK_LOCAL,), defaults=(), **conf), ROUTED)
    assert len(found) == 2  # the address and the default route, each with the one fix
    assert "no IPv6 address" in found[0].text and "no IPv6 default route" in found[1].text
    for f in found:
        assert cause in f.text and f.fix == f"ip netns exec {NS} sysctl -w {fix}", f
    # forwarding with accept_ra 2 takes advertisements: no cause to name, the plain fixes
    plain = ipv6_findings(NS, link6(addresses=(LINK_LOCAL,), defaults=(), forwarding=1, accept_ra=2), ROUTED)
    assert [f.fix for f in plain] == [
        f"ip -n {NS} addr add {SLAAC} dev eth0 nodad",
        f"ip -n {NS} -6 route add default via {ROUTER_LL} dev eth0",
    ]


def test_autoconf_off_and_ipv6_disabled() -> None:
    (found,) = ipv6_findings(NS, link6(addresses=(LINK_LOCAL,), autoconf=0), ROUTED)
    assert "autoconf 0" in found.text and found.fix and found.fix.endswith("net.ipv6.conf.eth0.autoconf=1")
    (off,) = ipv6_findings(NS, link6(addresses=(), defaults=(), disable_ipv6=1), ROUTED)
    assert "IPv6 is disabled on eth0" in off.text and off.fix and off.fix.endswith("disable_ipv6=0")


def test_tentative_and_dadfailed_addresses_are_problems_with_fixes() -> None:
    tentative = link6(addresses=((SLAAC, 0x40), LINK_LOCAL))
    (found,) = ipv6_findings(NS, tentative, ROUTED)
    assert "tentative" in found.text and found.fix and "nodad" in found.fix
    failed = link6(addresses=((SLAAC, IFA_F_DADFAILED | 0x40), LINK_LOCAL))
    (found,) = ipv6_findings(NS, failed, ROUTED)
    assert "failed duplicate address detection" in found.text and found.problem
    assert found.fix and found.fix.startswith(f"ip -n {NS} addr del {SLAAC} dev eth0")


def test_the_default_route_must_be_the_routers_link_local_learned_from_its_advertisements() -> None:
    (missing,) = ipv6_findings(NS, link6(defaults=()), ROUTED)
    assert f"expected: default via {ROUTER_LL} dev eth0 proto ra" in missing.text
    assert missing.fix == f"ip -n {NS} -6 route add default via {ROUTER_LL} dev eth0"
    (no_defrtr,) = ipv6_findings(NS, link6(defaults=(), accept_ra_defrtr=0), ROUTED)
    assert no_defrtr.fix and no_defrtr.fix.endswith("accept_ra_defrtr=1")
    # a rogue router's advertisement (or a hand-made route) beside ours: remove it
    rogue = Route6(IPv6Address("fe80::bad:1"), 2, RTPROT_RA)
    (other,) = ipv6_findings(NS, link6(defaults=(Route6(ROUTER_LL, 2, RTPROT_RA), rogue)), ROUTED)
    assert "fe80::bad:1" in other.text and "another router" in other.text
    assert other.fix == f"ip -n {NS} -6 route del default via fe80::bad:1 dev eth0"
    # only the rogue one: both said
    assert len(ipv6_findings(NS, link6(defaults=(rogue,)), ROUTED)) == 2
    # via the router on another interface is not via the router on this one
    assert (
        "no IPv6 default route"
        in ipv6_findings(NS, link6(defaults=(Route6(ROUTER_LL, 7, 9),)), ROUTED)[0].text
    )
    # the right gateway set by hand: works, but will not follow the router: a note, not a problem
    (static,) = ipv6_findings(NS, link6(defaults=(Route6(ROUTER_LL, 2, 4),)), ROUTED)
    assert not static.problem and "set by hand" in static.text


def test_the_ipv6_mtu_must_be_the_segments() -> None:
    (found,) = ipv6_findings(NS, link6(mtu=1400), ROUTED)
    assert "IPv6 MTU is 1400" in found.text and "say 1500" in found.text
    assert found.fix == f"ip netns exec {NS} sysctl -w net.ipv6.conf.eth0.mtu=1500"
    (found,) = ipv6_findings(NS, link6(mtu=1400, accept_ra_mtu=0), ROUTED)
    assert "accept_ra_mtu 0" in found.text and found.fix and found.fix.endswith("accept_ra_mtu=1")
    # a wrong link MTU is kernel_findings' to report (the IPv6 MTU follows it): not said twice
    assert ipv6_findings(NS, link6(link_mtu=9000, mtu=9000), ROUTED) == []


STATUS: dict[str, Any] = {
    "instance": "v6t",
    "routed": True,
    "uplink": None,
    "fdb_entries": 3,
    "ports": [
        {"port": "a", "namespace": "a", "interface": "eth0", "mac": "02:00:00:00:00:0a",
         "address": "10.1.0.2/24", "address6": "fd00:77::a/64", "segment": "lan"},
        {"port": "b", "namespace": "b", "interface": "eth0", "mac": "02:00:00:00:00:0b",
         "address": "10.1.0.3/24", "address6": None, "segment": "lan"},
        {"port": "c", "namespace": "c", "interface": "eth0", "mac": "02:00:00:00:00:0c",
         "address": "10.2.0.2/24", "address6": "fd00:77:0:1::c/64", "segment": "dmz"},
        {"port": "host", "namespace": None, "interface": "vs-v6t", "mac": "02:00:00:00:00:01",
         "address": "10.1.0.4/24", "address6": None, "segment": "lan"},
    ],
    "router_interfaces": [
        {"index": 0, "name": "lan", "mac": ROUTER, "address": "10.1.0.1/24", "address6": "fd00:77::1/64"},
        {"index": 1, "name": "dmz", "mac": "02:00:00:00:01:fe", "address": "10.2.0.1/24",
         "address6": "fd00:77:0:1::1/64"},
    ],
    "segments": [
        {"name": "lan", "subnet": "10.1.0.0/24", "gateway": "10.1.0.1/24", "subnet6": "fd00:77::/64",
         "gateway6": "fd00:77::1/64", "router_mac": ROUTER, "link_local": LL, "ports": ["a", "b", "host"],
         "mtu": 1500},
        {"name": "dmz", "subnet": "10.2.0.0/24", "gateway": "10.2.0.1/24", "subnet6": "fd00:77:0:1::/64",
         "gateway6": "fd00:77:0:1::1/64", "router_mac": "02:00:00:00:01:fe", "link_local": "fe80::1fe",
         "ports": ["c"], "mtu": 1280},
    ],
}  # fmt: skip


def port(label: str) -> dict[str, Any]:
    return next(p for p in STATUS["ports"] if p["port"] == label)


def test_expect6_from_status() -> None:
    assert expect6(STATUS, port("a")) == Expect6(
        "lan", PREFIX, IPv6Interface("fd00:77::a/64"), IPv6Address(LL), 1500
    )
    assert expect6(STATUS, port("c")) == Expect6(
        "dmz",
        IPv6Network("fd00:77:0:1::/64"),
        IPv6Interface("fd00:77:0:1::c/64"),
        IPv6Address("fe80::1fe"),
        1280,
    )
    assert expect6(STATUS, port("host")) is None  # the host port's link is left without IPv6
    switched = {**STATUS, "routed": False}
    routerless = expect6(switched, port("a"))
    assert routerless is not None and routerless.router is None
    v4_only = {**STATUS, "segments": [{**s, "subnet6": None} for s in STATUS["segments"]]}
    assert expect6(v4_only, port("a")) is None


def test_router_ndp_rows_are_told_apart_from_arp_rows_in_doctor() -> None:
    arp = [
        {"ip": "10.1.0.9", "mac": None, "iface": 0, "state": "failed", "age": 1.0},
        {"ip": "fd00:77::9", "mac": None, "iface": 0, "state": "incomplete", "age": 1.0},
    ]
    stats: dict[str, Any] = {"ports": {}, "router": {"drops": {}}}
    notes = texts(findings({**STATUS, "ports": []}, stats, arp))
    assert "router: 10.1.0.9 is failed (no ARP reply)" in notes
    assert "router: fd00:77::9 is incomplete (no neighbour advertisement)" in notes


# --- pingall: the IPv6 matrix, its frames and its JSON ----------------------------------------------------
def test_the_v6_matrix_has_the_ports_with_ipv6_and_the_ones_slaac_has_not_reached() -> None:
    assert [n["port"] for n in v4_matrix(STATUS).nodes] == ["a", "b", "c", "host"]
    matrix = v6_matrix(STATUS, lookup=False)
    assert matrix is not None
    assert [n["port"] for n in matrix.nodes] == ["a", "b", "c"]  # not the host port: it has no IPv6
    assert matrix.addresses == {"a": "fd00:77::a", "b": None, "c": "fd00:77:0:1::c"}
    no_v6 = {**STATUS, "ports": [{**p, "address6": None} for p in STATUS["ports"]]}
    assert v6_matrix(no_v6, lookup=False) is None


def test_hop6_is_the_destination_on_link_else_the_routers_link_local() -> None:
    assert hop6(STATUS, port("a"), "fd00:77::a", "fd00:77::b") == ("fd00:77::b", None)  # b: not in status
    assert hop6(STATUS, port("c"), "fd00:77:0:1::c", "fd00:77:0:1::c") == (
        "fd00:77:0:1::c",
        "02:00:00:00:00:0c",
    )
    assert hop6(STATUS, port("a"), "fd00:77::a", "fd00:77::1") == ("fd00:77::1", ROUTER)  # the router's
    assert hop6(STATUS, port("a"), "fd00:77::a", "fd00:77::") == ("fd00:77::", ROUTER)  # its anycast
    assert hop6(STATUS, port("a"), "fd00:77::a", "fd00:77:0:1::c") == (LL, ROUTER)
    assert hop6(STATUS, port("c"), "fd00:77:0:1::c", "fd00:77::a") == ("fe80::1fe", "02:00:00:00:01:fe")


def test_the_reply_across_the_uplink_goes_where_nat66_or_nptv6_sends_it() -> None:
    wan = {"port": "w", "namespace": "w", "interface": "eth0", "mac": "02:00:00:00:00:77",
           "address": "198.18.0.1/24", "address6": "2001:2::1/64", "segment": "wan"}  # fmt: skip
    uplink = {"address": "198.18.0.2/24", "address6": "2001:2::2/64", "upstream6": "2001:2::1"}
    a = port("a")
    assert reply_to6(STATUS, a, "fd00:77::a", port("c")) == "fd00:77::a"  # inside: no translation
    masquerade = {**STATUS, "uplink": {**uplink, "nat6": "masquerade"}}
    assert reply_to6(masquerade, a, "fd00:77::a", wan) == "2001:2::2"
    assert reply_to6({**STATUS, "uplink": {**uplink, "nat6": "none"}}, a, "fd00:77::a", wan) == "fd00:77::a"
    npt = {**STATUS, "uplink": {**uplink, "nat6": "prefix=2001:db8:1::/48"}}
    mapped = reply_to6(npt, a, "fd00:77::a", wan)
    assert IPv6Address(mapped) in IPv6Network("2001:db8:1::/48")
    assert (
        Npt(IPv6Network("fd00:77::/48"), IPv6Network("2001:db8:1::/48")).inward(IPv6Address(mapped).packed)
        == IPv6Address("fd00:77::a").packed
    )
    # the outside's reply: to the router's uplink MAC, which status has under the uplink segment's name
    routed_wan = {**masquerade, "router_interfaces": [{"name": "wan", "mac": "02:00:00:00:77:fe",
                  "address6": "2001:2::2/64"}], "ports": [*STATUS["ports"], wan]}  # fmt: skip
    assert hop6(routed_wan, wan, "2001:2::1", "2001:2::2") == ("2001:2::2", "02:00:00:00:77:fe")


def test_echo6_frames_are_what_the_namespace_would_send() -> None:
    request = echo6(STATUS, port("a"), "fd00:77::a", "fd00:77:0:1::c", reply=False)
    frame = Ether(base64.b64decode(request["data"]))
    assert request["port"] == "a"
    assert (frame.src, frame.dst) == ("02:00:00:00:00:0a", ROUTER)
    assert (frame[IPv6].src, frame[IPv6].dst) == ("fd00:77::a", "fd00:77:0:1::c")
    assert frame.haslayer(ICMPv6EchoRequest) and frame[IPv6].nh == 58
    reply = Ether(
        base64.b64decode(echo6(STATUS, port("c"), "fd00:77:0:1::c", "fd00:77::a", True, mac=M2)["data"])
    )
    assert reply.haslayer(ICMPv6EchoReply) and reply.dst == M2  # the namespace's own NDP entry wins
    # the filter agrees with what the frames are
    assert compile_filter("icmp6 and src host fd00:77::a")(bytes(frame))


def test_the_trace_outcome_names_ndp_failures() -> None:
    dropped = {"outputs": [], "stages": [], "drops": {"router": "nd-failed"}}
    reached, text = _outcome(dropped, "c")
    assert not reached and text.startswith(
        "dropped at router: nd-failed (the router's neighbour solicitations"
    )
    queued = {"outputs": [], "drops": {}, "stages": [["NDP", "fd00:77:0:1::c unresolved on dmz: solicited"]]}
    reached, text = _outcome(queued, "c")
    assert not reached and "NDP unanswered" in text
    rows = [{"ip": "fd00:77:0:1:0::c", "mac": None, "iface": 1, "state": "failed", "age": 3.0}]
    assert _router_says(rows, "fd00:77:0:1::c") == (
        "router: NDP for fd00:77:0:1::c is failed (the namespace never answered)"
    )
    assert _router_says(rows, "fd00:77::a") is None


def test_the_json_keeps_one_shape_for_each_family() -> None:
    v4 = v4_matrix(STATUS)
    v6 = v6_matrix(STATUS, lookup=False)
    assert v6 is not None
    for matrix in (v4, v6):
        for s, d in matrix.pairs:
            missing = matrix.addresses[s["port"]] is None or matrix.addresses[d["port"]] is None
            matrix.outcome[(s["port"], d["port"])] = NO_ADDRESS if missing else OK
    v6.outcome[("a", "c")] = FAIL
    v6.why[("a", "c")] = ["a: something"]
    four, six = v4.as_json(), v6.as_json()
    assert set(four) == set(six) == {"ports", "pairs", "reachable", "tried"}
    assert (four["reachable"], four["tried"]) == (12, 12)
    assert (six["reachable"], six["tried"]) == (1, 6)  # a<->c: one ok, one fail; four with b: no address
    row = next(r for r in six["pairs"] if (r["from"], r["to"]) == ("a", "c"))
    assert row == {
        "from": "a",
        "to": "c",
        "address": "fd00:77:0:1::c",
        "result": "fail",
        "why": ["a: something"],
    }
    assert next(r for r in six["pairs"] if r["to"] == "b")["address"] is None
    assert isinstance(Matrix(6, [], {}).as_json()["pairs"], list)
