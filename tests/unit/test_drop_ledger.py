"""The drop ledger, member by member: for each `Drop` reason a frame can cause in the core, a frame that
causes exactly that drop. It is counted once, in the ledger of the port it came in on (for a router drop
also in the router's rollup), and `vswitch trace` names it. Every other member is in EXEMPT with the
reason no frame through the core can cause it, and a test keeps the two tables covering `Drop` exactly."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from conftest import drain_wire, make_readable, socketpair_ports
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

import vswitch
from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath
from vswitch.core.emulation import DIRECTIONS, Direction, Emulator, Impairment, Stage
from vswitch.core.nat import FRAGMENT_TIMEOUT, HELD_DATAGRAMS_MAX, NatConfig, PortForward
from vswitch.core.npt import Npt
from vswitch.core.protect import PortSecurity
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.routes import Route
from vswitch.core.vlan import Trunk
from vswitch.core.vxlan import Tunnel, Vtep
from vswitch.core.wire import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR
from vswitch.services.dhcp import DhcpServer, Scope
from vswitch.services.dns import DnsServer
from vswitch.shell.loop import Shell
from vswitch.tools.debug.trace import render, trace

R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
A, B, C, UP = "02:00:00:00:01:02", "02:00:00:00:01:03", "02:00:00:00:02:02", "02:00:00:00:00:ff"
BROADCAST = "ff:ff:ff:ff:ff:ff"
NAT_ADDRESS = "198.18.0.2"  # the router's wan address, which NAT masquerades to
OUTSIDE = "198.19.5.5"  # a host beyond the upstream router (198.18.0.1)
SILENT = "10.2.0.9"  # on dmz, never answers ARP
# IPv6 (routed(six=True)): a /64 per segment, the router at ::1 on each, the hosts in its neighbour cache.
A6, B6, C6, UP6 = "fd00:1::2", "fd00:1::3", "fd00:2::2", "fd00:ff::1"
R6_LAN = "fd00:1::1"
ROUTER6 = ("fd00:1::1/64", "fd00:2::1/64", "fd00:ff::2/64")  # the router's, on lan, dmz and wan
SILENT6 = "fd00:2::9"  # on dmz, never answers a solicitation
NOW = 1.0


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# --- topologies ----------------------------------------------------------------------------------------
def switched(*names: str) -> tuple[Datapath, dict[str, int]]:
    """One segment, lan, with a port per name and no router."""
    dp = Datapath()
    lan = dp.add_segment("lan")
    return dp, {name: dp.add_port(name, lan) for name in names}


def routed(
    *,
    default_route: bool = True,
    dmz_mtu: int = 1500,
    forwards: tuple[PortForward, ...] = (),
    port_range: tuple[int, int] = (1024, 65535),
    max_flows: int = 65536,
    six: bool = False,
    **router_options: Any,
) -> tuple[Datapath, dict[str, int]]:
    """lan (a 10.1.0.2, b 10.1.0.3), dmz (c 10.2.0.2) and wan (up 198.18.0.1, the default gateway),
    masqueraded to 198.18.0.2; the router's ARP cache knows all four hosts. six: dual-stack, lan
    fd00:1::/64 (a ::2, b ::3), dmz fd00:2::/64 (c ::2) and wan fd00:ff::/64 (up ::1, the default
    gateway), the router ::1 on lan and dmz and ::2 on wan, advertising on all three (so RA guard is on
    in each segment); its neighbour cache knows the four hosts."""
    dp = Datapath()
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    ports = {name: dp.add_port(name, seg) for name, seg in (("a", lan), ("b", lan), ("c", dmz), ("up", wan))}
    routes = [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), wan)] if default_route else []
    if six and default_route:
        routes.append(Route(IPv6Network("::/0"), IPv6Address(UP6), wan))

    def v6(segment: int) -> IPv6Interface | None:
        return IPv6Interface(ROUTER6[segment]) if six else None

    router = Router(
        [
            Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24"), address6=v6(lan)),
            Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24"), mtu=dmz_mtu, address6=v6(dmz)),
            Interface(
                wan, "wan", mac(R_WAN), IPv4Interface(f"{NAT_ADDRESS}/24"), uplink=True, address6=v6(wan)
            ),
        ],
        routes,
        NatConfig(
            wan,
            IPv4Address(NAT_ADDRESS),
            [IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24")],
            list(forwards),
            port_range,
            max_flows,
        ),
        **router_options,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    for address, host, segment in (
        ("10.1.0.2", A, lan),
        ("10.1.0.3", B, lan),
        ("10.2.0.2", C, dmz),
        ("198.18.0.1", UP, wan),
    ):
        router.arp.learn(int(IPv4Address(address)), mac(host), segment, 0.0)
    if router.v6 is not None:
        for address, host, segment in ((A6, A, lan), (B6, B, lan), (C6, C, dmz), (UP6, UP, wan)):
            router.v6.nd.learn(int(IPv6Address(address)), mac(host), segment, 0.0)
    return dp, ports


# --- frames --------------------------------------------------------------------------------------------
def buf(pkt: Packet, vnet: bytes = ZERO_VNET_HDR) -> bytes:
    return vnet + bytes(pkt)


def from_a(l3: Packet, dst: str = R_LAN) -> bytes:
    """l3 sent by host a (10.1.0.2) to the router's lan MAC."""
    return buf(Ether(src=A, dst=dst) / l3)


def from_b(l3: Packet) -> bytes:
    return buf(Ether(src=B, dst=R_LAN) / l3)


def from_c(l3: Packet) -> bytes:
    """l3 sent by host c (on dmz) to the router's dmz MAC."""
    return buf(Ether(src=C, dst=R_DMZ) / l3)


def from_upstream(l3: Packet) -> bytes:
    """l3 sent by the upstream router (198.18.0.1) to the router's wan MAC."""
    return buf(Ether(src=UP, dst=R_WAN) / l3)


def bad_checksum(good: int) -> int:
    """A checksum that does not verify: both bytes changed (0 and 0xFFFF are the one value that
    ones' complement arithmetic would take as equal, and this never maps one to the other)."""
    return good ^ 0x0101


def udp_out(sport: int = 5000, dst: str = OUTSIDE) -> Packet:
    return IP(src="10.1.0.2", dst=dst) / UDP(sport=sport, dport=53) / b"query"


def later_fragment(ident: int) -> Packet:
    """The second fragment (offset 1480) of a UDP datagram from a to OUTSIDE: no ports in it."""
    return IP(src="10.1.0.2", dst=OUTSIDE, id=ident, frag=185, proto=17) / (b"f" * 64)


def udp6(src: str = A6, dst: str = C6, **fields: Any) -> Packet:
    """UDP from a to c across the router (IPv6)."""
    return IPv6(src=src, dst=dst, **fields) / UDP(sport=5000, dport=53) / b"query"


def nd6(message: Packet, hop_limit: int = 255) -> Packet:
    """An ND message from a to the router's lan address (RFC 4861 sends ND with hop limit 255)."""
    return IPv6(src=A6, dst=R6_LAN, hlim=hop_limit) / message


# --- scenarios -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Scenario:
    """A datapath, and the frame that arrives on port at now and dies."""

    dp: Datapath
    port: int
    frame: bytes
    now: float = NOW
    by_router: bool = True  # False: the L2 switch drops it (the trace names the port, not "router")
    charged: int | None = None  # the port whose ledger counts the drop, when it is not `port`

    @property
    def ledger_port(self) -> int:
        return self.port if self.charged is None else self.charged

    @property
    def where(self) -> str:
        return "router" if self.by_router else self.dp.counters.names[self.port]


@dataclass(kw_only=True)
class Timed(Scenario):
    """A frame that waits, and is dropped by dp.on_timer(later)."""

    later: float
    waits: tuple[str, str]  # (stage, text) the trace of the frame reports: why it waits


# L2: the switch's checks, in the kernel bridge's order.
def runt() -> Scenario:
    """13 bytes of Ethernet: shorter than a whole Ethernet header, nothing to classify."""
    dp, ports = switched("a", "b")
    return Scenario(dp=dp, port=ports["a"], frame=buf(Ether(src=A, dst=B))[:-1], by_router=False)


def bad_vnet_header() -> Scenario:
    """NEEDS_CSUM with csum_start 1000 in a 42-byte frame: finishing the checksum would write past it."""
    dp, ports = switched("a", "b")
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, 1000, 6)
    pkt = Ether(src=A, dst=B) / IP(src="10.1.0.2", dst="10.1.0.3") / UDP()
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt, vnet), by_router=False)


def src_multicast() -> Scenario:
    """A group address as source: no station has one (IEEE 802 section 8.2)."""
    dp, ports = switched("a", "b")
    pkt = Ether(src="01:00:5e:00:00:01", dst=B) / IP() / UDP()
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def src_zero() -> Scenario:
    """00:00:00:00:00:00 as source: not an address, never learned."""
    dp, ports = switched("a", "b")
    pkt = Ether(src="00:00:00:00:00:00", dst=B) / IP() / UDP()
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def src_is_switch() -> Scenario:
    """Port a claims the router's lan MAC, a static FDB entry of the switch itself."""
    dp, ports = routed()
    pkt = Ether(src=R_LAN, dst=B) / IP(src="10.1.0.2", dst="10.1.0.3") / UDP()
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def reserved_group() -> Scenario:
    """A BPDU to 01:80:c2:00:00:00, link-local: never forwarded (IEEE 802.1Q table 8-1)."""
    dp, ports = switched("a", "b")
    pkt = Ether(src=A, dst="01:80:c2:00:00:00", type=0x0027) / Raw(bytes(46))
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def same_port() -> Scenario:
    """b was learned on port a (a hub behind it): a frame from a to b would go back where it came from."""
    dp, ports = switched("a", "b")
    dp.receive(ports["a"], buf(Ether(src=B, dst=A) / IP() / UDP()), 0.0)
    pkt = Ether(src=A, dst=B) / IP(src="10.1.0.2", dst="10.1.0.3") / UDP()
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def no_destination() -> Scenario:
    """A broadcast on a segment with one port and no router: the flood has nowhere to go."""
    dp, ports = switched("alone")
    pkt = Ether(src=A, dst=BROADCAST) / ARP(hwsrc=A, psrc="10.1.0.2", pdst="10.1.0.9")
    return Scenario(dp=dp, port=ports["alone"], frame=buf(pkt), by_router=False)


# The router: classification and ARP.
def unsupported_ethertype() -> Scenario:
    """IPv6 to the router's MAC when no interface has IPv6: it routes IPv4 and answers ARP, nothing else."""
    dp, ports = routed()
    pkt = Ether(src=A, dst=R_LAN, type=0x86DD) / Raw(bytes(40))
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt))


def arp_malformed() -> Scenario:
    """A broadcast ARP with hardware type 6 (IEEE 802): not Ethernet/IPv4 ARP (RFC 826)."""
    dp, ports = routed()
    pkt = Ether(src=A, dst=BROADCAST) / ARP(hwtype=6, hwsrc=A, psrc="10.1.0.2", pdst="10.1.0.1")
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt))


def arp_queue_full() -> Scenario:
    """With room for one packet per unresolved next hop, a's packet pushes out b's, which waited
    first (RFC 1122 2.3.2.2 keeps the latest): the drop is b's, charged to b's port."""
    dp, ports = routed(arp_queue_max=1)
    dp.receive(ports["b"], from_b(IP(src="10.1.0.3", dst=SILENT) / UDP()), NOW)
    frame = from_a(IP(src="10.1.0.2", dst=SILENT) / UDP())
    return Scenario(dp=dp, port=ports["a"], frame=frame, charged=ports["b"])


def arp_pending_full() -> Scenario:
    """With one resolution at a time and 10.2.0.9 already being resolved, 10.2.0.10 cannot start."""
    dp, ports = routed(arp_pending_max=1)
    dp.receive(ports["a"], from_a(IP(src="10.1.0.2", dst=SILENT) / UDP()), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.2.0.10") / UDP()))


def arp_failed() -> Scenario:
    """10.2.0.9 did not answer and is in the negative cache: the next packet to it dies at once."""
    dp, ports = routed(arp_retries=1)
    frame = from_a(IP(src="10.1.0.2", dst=SILENT) / UDP())
    dp.receive(ports["a"], frame, NOW)
    dp.on_timer(NOW + 1.0)  # the one request went unanswered: negative entry until NOW + 6
    return Scenario(dp=dp, port=ports["a"], frame=frame, now=NOW + 2.0)


# The router: RFC 1812 5.2.2 header checks and 5.3.x address checks (ipv4.parse).
def ip_truncated() -> Scenario:
    """12 bytes after an IPv4 ethertype: shorter than a minimal IPv4 header (RFC 1812 5.2.2)."""
    dp, ports = routed()
    frame = buf(Ether(src=A, dst=R_LAN, type=0x0800) / Raw(bytes(IP(src="10.1.0.2", dst="10.2.0.2"))[:12]))
    return Scenario(dp=dp, port=ports["a"], frame=frame)


def ip_bad_version() -> Scenario:
    """Version 6 in an IPv4 ethertype frame (RFC 1812 5.2.2)."""
    dp, ports = routed()
    return Scenario(
        dp=dp, port=ports["a"], frame=from_a(IP(version=6, src="10.1.0.2", dst="10.2.0.2") / UDP())
    )


def ip_bad_ihl() -> Scenario:
    """Header length 4 words, below the 5 of a minimal header (RFC 1812 5.2.2)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(ihl=4, src="10.1.0.2", dst="10.2.0.2") / UDP()))


def ip_bad_length() -> Scenario:
    """Total length 2000 in a 28-byte packet: it claims more than the frame holds (RFC 1812 5.2.2)."""
    dp, ports = routed()
    return Scenario(
        dp=dp, port=ports["a"], frame=from_a(IP(len=2000, src="10.1.0.2", dst="10.2.0.2") / UDP())
    )


def ip_bad_checksum() -> Scenario:
    """The header checksum does not verify (RFC 1812 5.2.2)."""
    dp, ports = routed()
    ip = IP(src="10.1.0.2", dst="10.2.0.2") / UDP()
    ip.chksum = bad_checksum(IP(bytes(ip)).chksum)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def ip_martian_source() -> Scenario:
    """From 127.0.0.1, a loopback address, on the wire (RFC 1812 5.3.7)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="127.0.0.1", dst="10.2.0.2") / UDP()))


def ip_broadcast() -> Scenario:
    """To 10.2.0.255, dmz's directed broadcast: never forwarded (RFC 1812 5.3.5)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.2.0.255") / UDP()))


def ip_multicast() -> Scenario:
    """To 224.0.0.9 (RIP), unicast to the router's MAC: it does not route multicast."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="224.0.0.9") / UDP()))


def ip_martian_destination() -> Scenario:
    """To 240.0.0.1, class E, reserved: not a destination (RFC 1812 5.3.7)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="240.0.0.1") / UDP()))


# The router: forwarding.
def ttl_exceeded() -> Scenario:
    """TTL 1 to c on dmz: it would leave with TTL 0 (RFC 1812 5.3.1)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.2.0.2", ttl=1) / UDP()))


def no_route() -> Scenario:
    """To 192.0.2.1 with no default route: no route matches it."""
    dp, ports = routed(default_route=False)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="192.0.2.1") / UDP()))


def frag_needed() -> Scenario:
    """1428 bytes with DF to dmz, whose MTU is 1400: too big, may not be split (RFC 1191)."""
    dp, ports = routed(dmz_mtu=1400)
    ip = IP(src="10.1.0.2", dst="10.2.0.2", flags="DF") / UDP() / bytes(1400)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def frag_unsupported() -> Scenario:
    """A TSO super-frame without DF whose 1500-byte segments exceed dmz's MTU of 1400: it would have
    to be segmented before it could be fragmented."""
    dp, ports = routed(dmz_mtu=1400)
    ip = IP(src="10.1.0.2", dst="10.2.0.2") / TCP(sport=40000, dport=80, flags="A") / bytes(3000)
    vnet = VNET_HDR.pack(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1460, 34, 16)
    return Scenario(dp=dp, port=ports["a"], frame=buf(Ether(src=A, dst=R_LAN) / ip, vnet))


def ip_bad_fragment() -> Scenario:
    """A fragment at offset 8191 x 8 with 1480 bytes, too big for dmz: its pieces would end past
    65,535 (RFC 791)."""
    dp, ports = routed(dmz_mtu=1400)
    ip = IP(src="10.1.0.2", dst="10.2.0.2", flags="MF", frag=8191, proto=17) / bytes(1480)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


# The router: local delivery.
def to_router() -> Scenario:
    """UDP to the router's own address: it runs no UDP service (refused with port unreachable)."""
    dp, ports = routed()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.1.0.1") / UDP(dport=9)))


def l4_truncated() -> Scenario:
    """ICMP to the router with 4 bytes of ICMP: shorter than the 8-byte header it must read."""
    dp, ports = routed()
    ip = IP(src="10.1.0.2", dst="10.1.0.1", proto=1) / Raw(b"\x08\x00\x00\x00")
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def l4_bad_checksum() -> Scenario:
    """An echo request to the router whose ICMP checksum does not verify: not answered."""
    dp, ports = routed()
    ip = IP(src="10.1.0.2", dst="10.1.0.1") / ICMP(type=8, id=7) / b"ping"
    ip[ICMP].chksum = bad_checksum(IP(bytes(ip))[ICMP].chksum)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


# NAT and conntrack.
def nat_no_flow() -> Scenario:
    """A TCP ACK from inside to outside, no flow: masqueraded flows start with a SYN (RFC 5382 REQ-2)."""
    dp, ports = routed()
    ip = IP(src="10.1.0.2", dst=OUTSIDE) / TCP(sport=40000, dport=80, flags="A")
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def nat_unsolicited() -> Scenario:
    """UDP from outside to the NAT address, no flow and no port forward: filtered (RFC 4787 REQ-8)."""
    dp, ports = routed()
    ip = IP(src=OUTSIDE, dst=NAT_ADDRESS) / UDP(sport=53, dport=9)
    return Scenario(dp=dp, port=ports["up"], frame=from_upstream(ip))


def nat_ports_exhausted() -> Scenario:
    """The UDP port range is the one port 1024, held by a's mapping for port 5000: none for 5001."""
    dp, ports = routed(port_range=(1024, 1024))
    dp.receive(ports["a"], from_a(udp_out(5000)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp_out(5001)))


def nat_fragment() -> Scenario:
    """Later fragments wait for their first (RFC 4787 REQ-14), but at most HELD_DATAGRAMS_MAX
    datagrams at once: one more is dropped."""
    dp, ports = routed()
    for ident in range(HELD_DATAGRAMS_MAX):
        dp.receive(ports["a"], from_a(later_fragment(ident)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(later_fragment(HELD_DATAGRAMS_MAX)))


def nat_icmp_no_flow() -> Scenario:
    """Port unreachable to the NAT address about a UDP flow never tracked: nobody inside to tell
    (RFC 5508 4.1 translates only errors about a known flow)."""
    dp, ports = routed()
    quoted = IPerror(src=NAT_ADDRESS, dst=OUTSIDE) / UDPerror(sport=40000, dport=53)
    ip = IP(src="198.18.0.1", dst=NAT_ADDRESS) / ICMP(type=3, code=3) / quoted
    return Scenario(dp=dp, port=ports["up"], frame=from_upstream(ip))


def nat_unsupported() -> Scenario:
    """GRE (protocol 47) from inside to outside: it needs masquerading, which has no ports to map."""
    dp, ports = routed()
    ip = IP(src="10.1.0.2", dst=OUTSIDE, proto=47) / Raw(bytes(8))
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def nat_clash() -> Scenario:
    """Ports 8080 and 8081 both forward to 10.2.0.2:80: the same outside host and port through the
    second would have the reply tuple of its flow through the first, already tracked."""
    target = IPv4Address("10.2.0.2")
    dp, ports = routed(forwards=(PortForward(6, 8080, target, 80), PortForward(6, 8081, target, 80)))
    first = IP(src=OUTSIDE, dst=NAT_ADDRESS) / TCP(sport=40000, dport=8080, flags="S")
    dp.receive(ports["up"], from_upstream(first), NOW)
    second = IP(src=OUTSIDE, dst=NAT_ADDRESS) / TCP(sport=40000, dport=8081, flags="S")
    return Scenario(dp=dp, port=ports["up"], frame=from_upstream(second))


def conntrack_full() -> Scenario:
    """The table holds one flow, assured (its reply came): a new flow finds no room and nothing to
    evict early."""
    dp, ports = routed(max_flows=1)
    dp.receive(ports["a"], from_a(udp_out(5000)), NOW)
    reply = IP(src=OUTSIDE, dst=NAT_ADDRESS) / UDP(sport=53, dport=5000) / b"answer"  # port kept
    dp.receive(ports["up"], from_upstream(reply), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp_out(5001)))


# The router, IPv6: RFC 8200 sections 3-4 and RFC 4291's addresses (ipv6.parse).
def ipv6_truncated() -> Scenario:
    """20 bytes after an IPv6 ethertype: shorter than the 40-byte IPv6 header."""
    dp, ports = routed(six=True)
    frame = buf(Ether(src=A, dst=R_LAN, type=0x86DD) / Raw(bytes(IPv6(src=A6, dst=C6))[:20]))
    return Scenario(dp=dp, port=ports["a"], frame=frame)


def ipv6_bad_version() -> Scenario:
    """Version 4 in an IPv6 ethertype frame (RFC 8200 3)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(version=4)))


def ipv6_bad_length() -> Scenario:
    """Payload length 2000 in a packet with 13 bytes of payload: it claims more than the frame holds."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(plen=2000)))


def ipv6_martian_source() -> Scenario:
    """From ::1, the loopback address, on the wire (RFC 4291 2.5.3)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(src="::1")))


def ipv6_martian_destination() -> Scenario:
    """To ::, the unspecified address: never a destination (RFC 4291 2.5.2)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(dst="::")))


def ipv6_extension_truncated() -> Scenario:
    """A destination options header whose length says 48 bytes, with 8 in the packet (RFC 8200 4.6)."""
    dp, ports = routed(six=True)
    ip = IPv6(src=A6, dst=C6, nh=60) / Raw(bytes((17, 5)) + bytes(6))
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def ipv6_extension_chain_too_long() -> Scenario:
    """Nine destination options headers in a row: more than the eight the router walks."""
    dp, ports = routed(six=True)
    ip = IPv6(src=A6, dst=C6)
    for _ in range(9):
        ip = ip / IPv6ExtHdrDestOpt()
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip / UDP(sport=5000, dport=53)))


def ipv6_bad_extension() -> Scenario:
    """Hop-by-hop options after a destination options header: only right after the IPv6 header
    (RFC 8200 4.1; answered with a parameter problem, unrecognized next header)."""
    dp, ports = routed(six=True)
    ip = IPv6(src=A6, dst=C6) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP(sport=5000, dport=53)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def ipv6_unknown_option() -> Scenario:
    """A hop-by-hop option of type 0x41, unknown, whose high bits 01 say discard silently (RFC 8200 4.2)."""
    dp, ports = routed(six=True)
    option = HBHOptUnknown(otype=0x41, optdata=bytes(4))
    ip = IPv6(src=A6, dst=C6) / IPv6ExtHdrHopByHop(options=[option]) / UDP(sport=5000, dport=53)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


def ipv6_routing_type_0() -> Scenario:
    """A type 0 routing header with no segments left: deprecated source routing (RFC 5095 3)."""
    dp, ports = routed(six=True)
    ip = IPv6(src=A6, dst=C6) / IPv6ExtHdrRouting(type=0, addresses=[]) / UDP(sport=5000, dport=53)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ip))


# The router, IPv6: forwarding (RFC 8200, RFC 4443).
def ipv6_link_local_destination() -> Scenario:
    """To fe80::99, a link-local address not the router's, sent to the router's MAC: never forwarded
    (RFC 4291 2.5.6)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(dst="fe80::99")))


def ipv6_beyond_scope() -> Scenario:
    """From fe80::2, link-local, to c on dmz: it would leave its source's link (RFC 4443 3.1 code 2)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(src="fe80::2")))


def ipv6_multicast() -> Scenario:
    """To ff0e::1, a global group, unicast to the router's MAC: it does not route multicast."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(dst="ff0e::1")))


def hop_limit_exceeded() -> Scenario:
    """Hop limit 1 to c on dmz: it would leave with 0 (RFC 8200 3; time exceeded back, RFC 4443 3.3)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(hlim=1)))


def packet_too_big() -> Scenario:
    """1353 bytes to dmz, whose MTU is 1280: a router never fragments IPv6 (RFC 8200 5)."""
    dp, ports = routed(six=True, dmz_mtu=1280)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6() / bytes(1300)))


def npt_unmappable() -> Scenario:
    """NPTv6 maps lan's fd00:1::/48 to 2001:2::/48 on wan; from upstream to 2001:2:0:ffff::2, whose
    bits 48-63 are 0xFFFF: at /48 that word alone takes the adjustment, and no mapped address has it
    (RFC 6296 3.4; a result of 0xFFFF is written 0), so it has no inside address."""
    npt = Npt(IPv6Network("fd00:1::/48"), IPv6Network("2001:2::/48"))
    dp, ports = routed(six=True, npt=(npt, 2))  # 2: wan, the third segment
    return Scenario(dp=dp, port=ports["up"], frame=from_upstream(udp6(src=UP6, dst="2001:2:0:ffff::2")))


# The router, IPv6: Neighbor Discovery (RFC 4861).
def nd_bad_hop_limit() -> Scenario:
    """A solicitation for the router's address with hop limit 64: it crossed a router (RFC 4861 7.1.1)."""
    dp, ports = routed(six=True)
    ns = ICMPv6ND_NS(tgt=R6_LAN) / ICMPv6NDOptSrcLLAddr(lladdr=A)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(nd6(ns, hop_limit=64)))


def nd_malformed() -> Scenario:
    """A solicitation for the router's address with code 1: ND messages have code 0 (RFC 4861 7.1.1)."""
    dp, ports = routed(six=True)
    ns = ICMPv6ND_NS(code=1, tgt=R6_LAN) / ICMPv6NDOptSrcLLAddr(lladdr=A)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(nd6(ns)))


def nd_claims_router_address() -> Scenario:
    """a advertises fd00:1::1, the router's own address, as its own (with override): never believed."""
    dp, ports = routed(six=True)
    na = ICMPv6ND_NA(tgt=R6_LAN, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=A)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(nd6(na)))


def nd_redirect() -> Scenario:
    """A redirect sent to the router: only hosts follow redirects (RFC 4861 8.1)."""
    dp, ports = routed(six=True)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(nd6(ICMPv6ND_Redirect(tgt=B6, dst=C6))))


def ra_guard() -> Scenario:
    """A router advertisement from port a to all nodes, on lan where the router advertises: a rogue
    router's, dropped by the switch before any host sees it (RFC 6105)."""
    dp, ports = routed(six=True)
    ra = IPv6(src="fe80::2", dst="ff02::1", hlim=255) / ICMPv6ND_RA() / ICMPv6NDOptSrcLLAddr(lladdr=A)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(ra, dst="33:33:00:00:00:01"), by_router=False)


def nd_queue_full() -> Scenario:
    """With room for one packet per unresolved next hop, a's packet pushes out b's, which waited
    first (RFC 4861 7.2.2: the new arrival replaces the oldest): the drop is b's, charged to b's port."""
    dp, ports = routed(six=True, arp_queue_max=1)
    dp.receive(ports["b"], from_b(udp6(src=B6, dst=SILENT6)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(dst=SILENT6)), charged=ports["b"])


def nd_pending_full() -> Scenario:
    """With one resolution at a time and fd00:2::9 already being solicited, fd00:2::10 cannot start."""
    dp, ports = routed(six=True, arp_pending_max=1)
    dp.receive(ports["a"], from_a(udp6(dst=SILENT6)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(udp6(dst="fd00:2::10")))


def nd_failed() -> Scenario:
    """fd00:2::9 did not answer and is in the negative cache: the next packet to it dies at once."""
    dp, ports = routed(six=True, arp_retries=1)
    frame = from_a(udp6(dst=SILENT6))
    dp.receive(ports["a"], frame, NOW)
    dp.on_timer(NOW + 1.0)  # the one solicitation went unanswered: negative entry until NOW + 6
    return Scenario(dp=dp, port=ports["a"], frame=frame, now=NOW + 2.0)


# The router's services: DHCP on lan (10.1.0.0/24), DNS on the router's addresses.
def dhcp_server(**options: Any) -> DhcpServer:
    """A DHCP server for lan (segment 0, the router at 10.1.0.1)."""
    ranges = options.pop("ranges", ())
    scope = Scope(0, IPv4Network("10.1.0.0/24"), IPv4Address("10.1.0.1"), ranges)
    return DhcpServer({0: scope}, domain="lab", **options)


def dhcp_from(host: str, message: Packet) -> bytes:
    """A client with no address yet: 0.0.0.0:68 to 255.255.255.255:67, Ethernet broadcast."""
    l3 = IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / message
    return buf(Ether(src=host, dst=BROADCAST) / l3)


def discover(chaddr: str, giaddr: str = "0.0.0.0") -> Packet:
    bootp = BOOTP(op=1, chaddr=mac(chaddr), giaddr=giaddr)
    return bootp / DHCP(options=[("message-type", "discover"), "end"])


def dhcp_malformed() -> Scenario:
    """To the DHCP server's port, 300 bytes that are no BOOTREQUEST (RFC 2131 2)."""
    dp, ports = routed(dhcp=dhcp_server())
    return Scenario(dp=dp, port=ports["a"], frame=dhcp_from(A, Raw(b"\xee" * 300)))


def dhcp_not_served() -> Scenario:
    """A DISCOVER with giaddr set: relayed, and we serve our own segments only."""
    dp, ports = routed(dhcp=dhcp_server())
    return Scenario(dp=dp, port=ports["a"], frame=dhcp_from(A, discover(A, giaddr="10.9.0.1")))


def dhcp_chaddr_mismatch() -> Scenario:
    """From a, asking for b's hardware address: a client's frame carries its own chaddr as source."""
    dp, ports = routed(dhcp=dhcp_server())
    return Scenario(dp=dp, port=ports["a"], frame=dhcp_from(A, discover(B)))


def dhcp_rate_limited() -> Scenario:
    """With a bucket of one message, b's DISCOVER took it: a's, in the same instant, is over the rate."""
    dp, ports = routed(dhcp=dhcp_server(rate=1.0, burst=1))
    dp.receive(ports["b"], dhcp_from(B, discover(B)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=dhcp_from(A, discover(A)))


def dhcp_pool_exhausted() -> Scenario:
    """A pool of one address, offered to b: nothing is left for a."""
    pool = ((IPv4Address("10.1.0.100"), IPv4Address("10.1.0.100")),)
    dp, ports = routed(dhcp=dhcp_server(ranges=pool))
    dp.receive(ports["b"], dhcp_from(B, discover(B)), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=dhcp_from(A, discover(A)))


def dns_query(question: Packet | bytes) -> Packet:
    return IP(src="10.1.0.2", dst="10.1.0.1") / UDP(sport=5353, dport=53) / bytes(question)


def dns_malformed() -> Scenario:
    """Five bytes to the router's DNS: shorter than a DNS header (RFC 1035 4.1.1)."""
    dp, ports = routed(dns=DnsServer("lab"))
    return Scenario(dp=dp, port=ports["a"], frame=from_a(dns_query(b"\x12\x34\x01\x00\x00")))


def dns_rate_limited() -> Scenario:
    """With a bucket of one question, b's took it: a's, in the same instant, is over the rate."""
    dp, ports = routed(dns=DnsServer("lab", rate=1.0, burst=1))
    question = DNS(rd=1, qd=DNSQR(qname="ns1.lab."))
    dp.receive(ports["b"], from_b(IP(src="10.1.0.3", dst="10.1.0.1") / UDP(dport=53) / question), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=from_a(dns_query(question)))


def dns_pending_full() -> Scenario:
    """With room for one question upstream, b's holds it: a's cannot wait too."""
    dp, ports = routed(dns=DnsServer("lab", upstream=True, pending_max=1))
    question = DNS(rd=1, qd=DNSQR(qname="example.com."))
    dp.receive(ports["b"], from_b(IP(src="10.1.0.3", dst="10.1.0.1") / UDP(dport=53) / question), NOW)
    other = DNS(rd=1, qd=DNSQR(qname="example.org."))
    return Scenario(dp=dp, port=ports["a"], frame=from_a(dns_query(other)))


TRIGGERS: dict[Drop, Callable[[], Scenario]] = {
    Drop.RUNT: runt,
    Drop.BAD_VNET_HEADER: bad_vnet_header,
    Drop.SRC_MULTICAST: src_multicast,
    Drop.SRC_ZERO: src_zero,
    Drop.SRC_IS_SWITCH: src_is_switch,
    Drop.RESERVED_GROUP: reserved_group,
    Drop.SAME_PORT: same_port,
    Drop.NO_DESTINATION: no_destination,
    Drop.UNSUPPORTED_ETHERTYPE: unsupported_ethertype,
    Drop.ARP_MALFORMED: arp_malformed,
    Drop.ARP_QUEUE_FULL: arp_queue_full,
    Drop.ARP_PENDING_FULL: arp_pending_full,
    Drop.ARP_FAILED: arp_failed,
    Drop.IP_TRUNCATED: ip_truncated,
    Drop.IP_BAD_VERSION: ip_bad_version,
    Drop.IP_BAD_IHL: ip_bad_ihl,
    Drop.IP_BAD_LENGTH: ip_bad_length,
    Drop.IP_BAD_CHECKSUM: ip_bad_checksum,
    Drop.IP_MARTIAN_SOURCE: ip_martian_source,
    Drop.IP_BROADCAST: ip_broadcast,
    Drop.IP_MULTICAST: ip_multicast,
    Drop.TTL_EXCEEDED: ttl_exceeded,
    Drop.NO_ROUTE: no_route,
    Drop.FRAG_NEEDED: frag_needed,
    Drop.FRAG_UNSUPPORTED: frag_unsupported,
    Drop.IP_BAD_FRAGMENT: ip_bad_fragment,
    Drop.TO_ROUTER: to_router,
    Drop.L4_TRUNCATED: l4_truncated,
    Drop.NAT_NO_FLOW: nat_no_flow,
    Drop.NAT_UNSOLICITED: nat_unsolicited,
    Drop.NAT_PORTS_EXHAUSTED: nat_ports_exhausted,
    Drop.NAT_FRAGMENT: nat_fragment,
    Drop.NAT_ICMP_NO_FLOW: nat_icmp_no_flow,
    Drop.NAT_UNSUPPORTED: nat_unsupported,
    Drop.NAT_CLASH: nat_clash,
    Drop.IP_MARTIAN_DESTINATION: ip_martian_destination,
    Drop.L4_BAD_CHECKSUM: l4_bad_checksum,
    Drop.CONNTRACK_FULL: conntrack_full,
    Drop.IPV6_TRUNCATED: ipv6_truncated,
    Drop.IPV6_BAD_VERSION: ipv6_bad_version,
    Drop.IPV6_BAD_LENGTH: ipv6_bad_length,
    Drop.IPV6_MARTIAN_SOURCE: ipv6_martian_source,
    Drop.IPV6_MARTIAN_DESTINATION: ipv6_martian_destination,
    Drop.IPV6_EXTENSION_TRUNCATED: ipv6_extension_truncated,
    Drop.IPV6_EXTENSION_CHAIN_TOO_LONG: ipv6_extension_chain_too_long,
    Drop.IPV6_BAD_EXTENSION: ipv6_bad_extension,
    Drop.IPV6_UNKNOWN_OPTION: ipv6_unknown_option,
    Drop.IPV6_ROUTING_TYPE_0: ipv6_routing_type_0,
    Drop.IPV6_LINK_LOCAL_DESTINATION: ipv6_link_local_destination,
    Drop.IPV6_BEYOND_SCOPE: ipv6_beyond_scope,
    Drop.IPV6_MULTICAST: ipv6_multicast,
    Drop.HOP_LIMIT_EXCEEDED: hop_limit_exceeded,
    Drop.PACKET_TOO_BIG: packet_too_big,
    Drop.NPT_UNMAPPABLE: npt_unmappable,
    Drop.ND_BAD_HOP_LIMIT: nd_bad_hop_limit,
    Drop.ND_MALFORMED: nd_malformed,
    Drop.ND_CLAIMS_ROUTER_ADDRESS: nd_claims_router_address,
    Drop.ND_REDIRECT: nd_redirect,
    Drop.RA_GUARD: ra_guard,
    Drop.ND_QUEUE_FULL: nd_queue_full,
    Drop.ND_PENDING_FULL: nd_pending_full,
    Drop.ND_FAILED: nd_failed,
    Drop.DHCP_MALFORMED: dhcp_malformed,
    Drop.DHCP_NOT_SERVED: dhcp_not_served,
    Drop.DHCP_CHADDR_MISMATCH: dhcp_chaddr_mismatch,
    Drop.DHCP_RATE_LIMITED: dhcp_rate_limited,
    Drop.DHCP_POOL_EXHAUSTED: dhcp_pool_exhausted,
    Drop.DNS_MALFORMED: dns_malformed,
    Drop.DNS_PENDING_FULL: dns_pending_full,
    Drop.DNS_RATE_LIMITED: dns_rate_limited,
}

# VXLAN: a frame too big for the tunnel comes from a port like any other.
REMOTE = "198.18.5.2"


def tunnelled() -> tuple[Datapath, dict[str, int], Vtep]:
    """lan with port a and a VXLAN tunnel (VNI 42, inner MTU 1450) to one remote, 198.18.5.2."""
    dp, ports = switched("a")
    tunnel = Tunnel(42, 0, -1, "198.18.5.1", mtu=1450)
    dp.add_tunnel(tunnel, [(REMOTE, True)])
    vtep = Vtep("198.18.5.1", 4789)
    vtep.add(tunnel)
    ports["tunnel"], ports["remote"] = tunnel.port, tunnel.remotes[REMOTE]
    return dp, ports, vtep


def vxlan_too_big() -> Scenario:
    """1451 bytes of IPv4 flooded toward the tunnel, whose inner MTU is 1450 (RFC 7348 section 4.3:
    no fragmentation of the outer packet): dropped, never sent to be refused by the underlay."""
    dp, ports, _ = tunnelled()
    frame = buf(
        Ether(src="02:00:00:00:0a:01", dst="ff:ff:ff:ff:ff:ff")
        / IP(src="10.1.0.2", dst="10.1.0.9")
        / UDP()
        / bytes(1423)
    )
    return Scenario(dp=dp, port=ports["a"], frame=frame, by_router=False)


TRIGGERS[Drop.VXLAN_TOO_BIG] = vxlan_too_big


# 802.1Q: lan on a trunk T (VID 10); a tagged frame on lan's access port a is refused there.
def trunked() -> tuple[Datapath, dict[str, int], Trunk]:
    dp, ports = switched("a")
    trunk = Trunk("T")
    dp.add_trunk(trunk, [(0, 10)], None)
    ports["trunk"], ports["T.10"] = trunk.port, trunk.by_vid[10]
    return dp, ports, trunk


def vlan_on_access() -> Scenario:
    """A VLAN-aware switch's access port takes untagged frames only (IEEE 802.1Q 6.9)."""
    dp, ports, _ = trunked()
    frame = buf(Ether(src="02:00:00:00:0a:01", dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=10) / IP() / UDP())
    return Scenario(dp=dp, port=ports["a"], frame=frame, by_router=False)


TRIGGERS[Drop.VLAN_ON_ACCESS] = vlan_on_access
# Frames a trunk refuses before they enter any segment (Datapath.receive_trunk), charged to the trunk.
TRUNK_TRIGGERS: dict[Drop, bytes] = {
    Drop.VLAN_UNKNOWN: buf(Ether(src="02:00:00:00:0b:01", dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=30) / IP()),
    Drop.VLAN_UNTAGGED: buf(Ether(src="02:00:00:00:0b:01", dst="ff:ff:ff:ff:ff:ff") / IP()),
}


@pytest.mark.parametrize("reason", list(TRUNK_TRIGGERS), ids=str)
def test_a_frame_a_trunk_refuses_is_counted_once_on_the_trunks_port(reason: Drop) -> None:
    dp, ports, trunk = trunked()
    ledger = Ledger(dp)
    assert dp.receive_trunk(trunk, TRUNK_TRIGGERS[reason], NOW) == (ports["trunk"], None)
    ledger.assert_one_drop(reason, Scenario(dp=dp, port=ports["trunk"], frame=b"", by_router=False))
    assert dp.counters.rx_packets[ports["T.10"]] == 0


# Drops of what the underlay socket received, decided before there is a frame (Datapath.receive_underlay),
# charged to the tunnel's own port (vx42): (payload, source address).
def _vxlan(flags: int, word: int, inner: bytes) -> bytes:
    return flags.to_bytes(4, "big") + word.to_bytes(4, "big") + inner


INNER = bytes(
    Ether(src="02:00:00:00:09:01", dst="ff:ff:ff:ff:ff:ff") / IP(src="10.1.0.9", dst="10.1.0.2") / UDP()
)
UNDERLAY_TRIGGERS: dict[Drop, tuple[bytes, str]] = {
    Drop.VXLAN_RUNT: (_vxlan(0x08000000, 42 << 8, INNER[:13]), REMOTE),
    Drop.VXLAN_BAD_FLAGS: (_vxlan(0x08000001, 42 << 8, INNER), REMOTE),
    Drop.VXLAN_UNKNOWN_VNI: (_vxlan(0x08000000, 43 << 8, INNER), REMOTE),
    Drop.VXLAN_UNKNOWN_REMOTE: (_vxlan(0x08000000, 42 << 8, INNER), "198.18.5.3"),
}


@pytest.mark.parametrize("reason", list(UNDERLAY_TRIGGERS), ids=str)
def test_an_underlay_datagram_dropped_is_counted_once_on_the_tunnels_port(reason: Drop) -> None:
    dp, ports, vtep = tunnelled()
    ledger = Ledger(dp)
    payload, source = UNDERLAY_TRIGGERS[reason]
    port, frame, verdict = dp.receive_underlay(vtep, payload, source, NOW)
    assert (port, frame, verdict) == (ports["tunnel"], None, None)
    ledger.assert_one_drop(reason, Scenario(dp=dp, port=ports["tunnel"], frame=b"", by_router=False))
    assert dp.counters.rx_packets[ports["remote"]] == 0  # nothing entered the segment


# Network emulation (core/emulation.py): a frame an impaired link's stage takes and drops, in either
# direction. The Emulator holds the datapath's own ledgers (as the shell builds it) and charges the
# drop to the impaired port: for "out", the port the frame was going to. What comes before the frame
# (one that empties the bucket, one that fills the queue) is the setup.
@dataclass(kw_only=True)
class Impaired(Scenario):
    stage: Stage


def impaired(direction: Direction, impairment: Impairment, *before: bytes) -> Impaired:
    dp, ports = switched("a", "b")
    emulator = Emulator(dp.counters.drops)
    emulator.set(ports["a"], "a", (direction,), impairment.check(), None, NOW)
    stage = emulator.stage(ports["a"], direction)
    assert stage is not None
    for pkt in before:
        out: list[bytes] = []
        stage.push(pkt, NOW, out)
        assert len(out) + len(stage.queue) == 1  # the setup's frame went through, or waits
    frame = buf(Ether(src=B, dst=A) / IP(src="10.1.0.3", dst="10.1.0.2") / UDP() / bytes(100))
    return Impaired(dp=dp, port=ports["a"], frame=frame, by_router=False, stage=stage)


def full_frame() -> bytes:
    """1514 bytes of Ethernet: as much as --burst must hold."""
    return buf(Ether(src=B, dst=A) / IP(src="10.1.0.3", dst="10.1.0.2") / UDP() / bytes(1514 - 42))


EMULATION_TRIGGERS: dict[Drop, Callable[[Direction], Impaired]] = {
    # --down: nothing passes.
    Drop.LINK_DOWN: lambda direction: impaired(direction, Impairment(down=True)),
    # --loss 100%.
    Drop.IMPAIR_LOSS: lambda direction: impaired(direction, Impairment(loss=1.0)),
    # 8 kbit/s with a bucket of one full frame, which a full frame empties: the next would wait 0.1 s
    # for its tokens, longer than the 10 ms latency.
    Drop.IMPAIR_RATE: lambda direction: impaired(
        direction, Impairment(rate=8000.0, burst=1514, latency=0.01), full_frame()
    ),
    # A queue of one, held by the frame before for a second.
    Drop.IMPAIR_LIMIT: lambda direction: impaired(direction, Impairment(delay=1.0, limit=1), full_frame()),
}


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("reason", list(EMULATION_TRIGGERS), ids=str)
def test_a_frame_an_impaired_link_drops_is_counted_once_on_the_impaired_port(
    reason: Drop, direction: Direction
) -> None:
    scenario = EMULATION_TRIGGERS[reason](direction)
    ledger = Ledger(scenario.dp)
    out: list[bytes] = []
    scenario.stage.push(scenario.frame, scenario.now, out)
    assert out == []
    ledger.assert_one_drop(reason, scenario)


# Counted by the shell for the core's emulator: a real Shell over AF_UNIX datagram socketpairs (the tap's
# stand-in, as in test_shell.py), three ports p0, p1 and p2 on one segment; the frame arrives on p0.
@dataclass
class ShellBench:
    dp: Datapath
    shell: Shell
    wires: list[socket.socket]


@pytest.fixture
def shell_bench() -> Iterator[ShellBench]:
    loop = asyncio.new_event_loop()
    dp = Datapath()
    shell = Shell(dp, loop)
    wires, inner = socketpair_ports(dp, shell, 3)
    try:
        yield ShellBench(dp, shell, wires)
    finally:
        shell.detach_all()
        loop.close()
        for end in wires + inner:
            end.close()


def partitioned(bench: ShellBench) -> None:
    """p0 is cut off from p1, one way: p0's broadcast reaches p2 and not p1."""
    bench.shell.emulator.partition({"p0": 0}, {"p1": 1}, two_way=False)
    bench.shell.emulation_changed()


SHELL_TRIGGERS: dict[Drop, Callable[[ShellBench], None]] = {
    Drop.PARTITIONED: partitioned,
}


@pytest.mark.parametrize("reason", list(SHELL_TRIGGERS), ids=str)
def test_a_frame_the_shell_drops_for_the_emulator_is_counted_once_on_its_ingress_port(
    reason: Drop, shell_bench: ShellBench
) -> None:
    SHELL_TRIGGERS[reason](shell_bench)
    ledger = Ledger(shell_bench.dp)
    shell_bench.wires[0].send(buf(Ether(src=A, dst=BROADCAST) / IP(src="10.1.0.2", dst="10.1.0.255") / UDP()))
    make_readable(shell_bench.shell, 0)
    ledger.assert_one_drop(reason, Scenario(dp=shell_bench.dp, port=0, frame=b"", by_router=False))
    assert drain_wire(shell_bench.wires[1]) == []
    assert len(drain_wire(shell_bench.wires[2])) == 1


_SHELL = "counted by the IO shell (vswitch/shell/loop.py) around the port's forwarder, never by the core"
EXEMPT: dict[Drop, str] = {
    Drop.TX_QUEUE_FULL: f"a write to the tap would block: {_SHELL}",
    Drop.TX_ERROR: f"the kernel refused a write: {_SHELL}",
    Drop.TRUNCATED: f"a read filled the whole buffer: {_SHELL}",
    Drop.OVER_MTU: f"a frame read over the port's MTU (test_runtime_faults.py): {_SHELL}",
    Drop.HOOK: f"the packet hook returned None or raised: {_SHELL}",
    Drop.RX_ERROR: f"a read failed: {_SHELL}",
    Drop.INTERNAL_ERROR: f"receive (or an observer) raised: {_SHELL}",
    Drop.MIRROR_PORT: f"read from a mirror (SPAN) port, never handed to the core: {_SHELL} (test_mirror.py)",
}


# Drops decided on a timer, after the frame's trace: the same reasons as above, by their other path.
def arp_failed_on_timer() -> Timed:
    """10.2.0.9 never answers the one request: the queued packet dies when the retry is due
    (RFC 1812 4.3.3.1, host unreachable to the source)."""
    dp, ports = routed(arp_retries=1)
    frame = from_a(IP(src="10.1.0.2", dst=SILENT) / UDP())
    return Timed(dp=dp, port=ports["a"], frame=frame, later=NOW + 1.0, waits=("ARP", "unresolved on dmz"))


def nat_fragment_on_timer() -> Timed:
    """A later fragment waits for its first (RFC 4787 REQ-14), which never comes: it expires."""
    dp, ports = routed()
    return Timed(
        dp=dp,
        port=ports["a"],
        frame=from_a(later_fragment(7)),
        later=NOW + FRAGMENT_TIMEOUT,
        waits=("conntrack", "held until it comes"),
    )


def nd_failed_on_timer() -> Timed:
    """fd00:2::9 never answers the one solicitation: the queued packet dies when the retry is due
    (RFC 4861 7.2.2, address unreachable to the source)."""
    dp, ports = routed(six=True, arp_retries=1)
    frame = from_a(udp6(dst=SILENT6))
    return Timed(dp=dp, port=ports["a"], frame=frame, later=NOW + 1.0, waits=("NDP", "unresolved on dmz"))


TIMER_TRIGGERS: dict[Drop, Callable[[], Timed]] = {
    Drop.ARP_FAILED: arp_failed_on_timer,
    Drop.NAT_FRAGMENT: nat_fragment_on_timer,
    Drop.ND_FAILED: nd_failed_on_timer,
}


# --- the checks ----------------------------------------------------------------------------------------
def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """What changed from before to after, by key (zero changes left out)."""
    keys = set(before) | set(after)
    return {
        key: after.get(key, 0) - before.get(key, 0) for key in keys if after.get(key, 0) != before.get(key, 0)
    }


def ledgers(dp: Datapath) -> dict[str, dict[str, int]]:
    """Every port's drops by reason, by port name (the router's ports included)."""
    return {name: dict(dp.counters.drops[i]) for i, name in enumerate(dp.counters.names)}


def rollup(dp: Datapath) -> dict[str, int]:
    return {} if dp.router is None else dict(dp.router.drops)


class Ledger:
    """The ledger, the router's rollup and the switch-wide sum, at one moment."""

    def __init__(self, dp: Datapath) -> None:
        self.dp = dp
        self.ports = ledgers(dp)
        self.rollup = rollup(dp)
        self.total = dp.drop_reasons()

    def assert_one_drop(self, reason: Drop, scenario: Scenario) -> None:
        """Since then: exactly one drop, for reason, in the charged port's ledger and nowhere else;
        in the router's rollup if the router counted it; in the sum over the ports."""
        dp = self.dp
        now = ledgers(dp)
        changed = {name: delta(self.ports[name], now[name]) for name in now}
        charged = dp.counters.names[scenario.ledger_port]
        assert {name: d for name, d in changed.items() if d} == {charged: {reason: 1}}
        assert delta(self.rollup, rollup(dp)) == ({reason: 1} if scenario.by_router else {})
        assert delta(self.total, dp.drop_reasons()) == {reason: 1}
        if scenario.by_router:
            assert dp.router is not None and dp.router.drops[reason] == dp.drop_reasons()[reason]

    def assert_unchanged(self) -> None:
        assert ledgers(self.dp) == self.ports
        assert rollup(self.dp) == self.rollup


# Protections (l2.py, fdb.py, protect.py): each set up on a switched lan, then the frame that crosses it.
def port_mac_limit() -> Scenario:
    """Port a may learn one MAC and has: a second source from it is refused, not learned."""
    dp, ports = switched("a", "b")
    dp.set_port_mac_max(ports["a"], 1)
    dp.receive(ports["a"], buf(Ether(src=A, dst=BROADCAST) / IP() / UDP()), 0.0)
    return Scenario(
        dp=dp, port=ports["a"], frame=buf(Ether(src=B, dst=BROADCAST) / IP() / UDP()), by_router=False
    )


def _storm(first: Packet, second: Packet) -> Scenario:
    """A storm limit of one flood a second per kind: the first passes, the second of its kind dies."""
    dp, ports = switched("a", "b")
    dp.protect(storm_limit=1, loop_moves=0)
    dp.receive(ports["a"], buf(first), NOW)
    return Scenario(dp=dp, port=ports["a"], frame=buf(second), by_router=False)


def storm_broadcast() -> Scenario:
    return _storm(
        Ether(src=A, dst=BROADCAST) / IP() / UDP(), Ether(src=A, dst=BROADCAST) / IP() / UDP(dport=9)
    )


def storm_multicast() -> Scenario:
    group = "01:00:5e:00:00:fb"
    return _storm(Ether(src=A, dst=group) / IP() / UDP(), Ether(src=A, dst=group) / IP() / UDP(dport=9))


def storm_unknown_unicast() -> Scenario:
    return _storm(Ether(src=A, dst=C) / IP() / UDP(), Ether(src=A, dst=C) / IP() / UDP(dport=9))


def loop_blocked() -> Scenario:
    """A moves a -> b (one move: a host changing ports), then straight back: with a threshold of one
    move a second, the second is a flap, and a (where it flapped to) is blocked."""
    dp, ports = switched("a", "b", "c")
    dp.protect(storm_limit=0, loop_moves=1)
    dp.receive(ports["a"], buf(Ether(src=A, dst=BROADCAST) / IP() / UDP()), NOW)
    dp.receive(ports["b"], buf(Ether(src=A, dst=BROADCAST) / IP() / UDP()), NOW)
    return Scenario(
        dp=dp, port=ports["a"], frame=buf(Ether(src=A, dst=BROADCAST) / IP() / UDP()), by_router=False
    )


def _secured(pkt: Packet) -> Scenario:
    """Port a under port security: MAC A, 10.1.0.2 and 2001:db8:1::2 (and its EUI-64 link-local)."""
    dp, ports = switched("a", "b")
    dp.secure(ports["a"], PortSecurity.of(mac(A), [IPv4Address("10.1.0.2")], [IPv6Address("2001:db8:1::2")]))
    return Scenario(dp=dp, port=ports["a"], frame=buf(pkt), by_router=False)


def spoofed_mac() -> Scenario:
    return _secured(Ether(src=B, dst=BROADCAST) / IP(src="10.1.0.2") / UDP())


def spoofed_ipv4() -> Scenario:
    return _secured(Ether(src=A, dst=BROADCAST) / IP(src="10.1.0.3") / UDP())


def spoofed_arp() -> Scenario:
    return _secured(Ether(src=A, dst=BROADCAST) / ARP(hwsrc=A, psrc="10.1.0.3", pdst="10.1.0.9"))


def spoofed_ipv6() -> Scenario:
    return _secured(Ether(src=A, dst="33:33:00:00:00:01") / IPv6(src="2001:db8:1::3", dst="ff02::1") / UDP())


TRIGGERS[Drop.PORT_MAC_LIMIT] = port_mac_limit
TRIGGERS[Drop.STORM_BROADCAST] = storm_broadcast
TRIGGERS[Drop.STORM_MULTICAST] = storm_multicast
TRIGGERS[Drop.STORM_UNKNOWN_UNICAST] = storm_unknown_unicast
TRIGGERS[Drop.LOOP_BLOCKED] = loop_blocked
TRIGGERS[Drop.SPOOFED_MAC] = spoofed_mac
TRIGGERS[Drop.SPOOFED_IPV4] = spoofed_ipv4
TRIGGERS[Drop.SPOOFED_ARP] = spoofed_arp
TRIGGERS[Drop.SPOOFED_IPV6] = spoofed_ipv6


@pytest.mark.parametrize("reason", list(TRIGGERS), ids=str)
def test_the_frame_is_counted_once_in_its_ingress_ports_ledger(reason: Drop) -> None:
    scenario = TRIGGERS[reason]()
    ledger = Ledger(scenario.dp)
    scenario.dp.receive(scenario.port, scenario.frame, scenario.now)
    ledger.assert_one_drop(reason, scenario)


@pytest.mark.parametrize("reason", list(TRIGGERS), ids=str)
def test_the_trace_of_the_frame_names_the_same_reason(reason: Drop) -> None:
    scenario = TRIGGERS[reason]()
    ledger = Ledger(scenario.dp)
    result = trace(scenario.dp, scenario.port, scenario.frame, scenario.now)
    assert result.drops == {scenario.where: reason}
    assert f"dropped: {reason} (at {scenario.where})" in "\n".join(render(result.to_json()))
    ledger.assert_unchanged()  # the trace counted it, then took the count back


@pytest.mark.parametrize("reason", list(TIMER_TRIGGERS), ids=str)
def test_a_frame_dropped_on_a_timer_is_charged_to_its_ingress_port(reason: Drop) -> None:
    scenario = TIMER_TRIGGERS[reason]()
    dp = scenario.dp
    ledger = Ledger(dp)
    dp.receive(scenario.port, scenario.frame, scenario.now)
    ledger.assert_unchanged()  # it waits: not dropped yet
    dp.on_timer(scenario.later - 0.5)
    ledger.assert_unchanged()  # nor before its time
    dp.on_timer(scenario.later)
    ledger.assert_one_drop(reason, scenario)


@pytest.mark.parametrize("reason", list(TIMER_TRIGGERS), ids=str)
def test_the_trace_of_a_frame_dropped_on_a_timer_says_why_it_waits(reason: Drop) -> None:
    """Decided on a timer, after the frame's trace: the trace shows the stage that parked it."""
    scenario = TIMER_TRIGGERS[reason]()
    result = trace(scenario.dp, scenario.port, scenario.frame, scenario.now)
    assert result.drops == {}
    stage, text = scenario.waits
    assert any(s == stage and text in t for s, t in result.stages), result.stages


def test_every_member_is_triggered_or_exempt_and_none_is_both() -> None:
    """A new member needs a frame that triggers it, or a reason no frame can."""
    assert set(TRIGGERS) & set(EXEMPT) == set()
    tables = (TRIGGERS, EXEMPT, UNDERLAY_TRIGGERS, TRUNK_TRIGGERS, EMULATION_TRIGGERS, SHELL_TRIGGERS)
    assert set(Drop) - set().union(*tables) == set()
    assert set(UNDERLAY_TRIGGERS) & (set(TRIGGERS) | set(EXEMPT)) == set()
    emulated = set(EMULATION_TRIGGERS) | set(SHELL_TRIGGERS)
    assert emulated & set().union(*tables[:4]) == set() and not set(EMULATION_TRIGGERS) & set(SHELL_TRIGGERS)
    assert set(TIMER_TRIGGERS) <= set(TRIGGERS)
    assert all(why.strip() for why in EXEMPT.values())


def test_exempt_members_are_counted_by_the_shell_and_never_by_the_core() -> None:
    package = Path(vswitch.__file__).parent
    core = "\n".join(path.read_text() for path in sorted((package / "core").glob("*.py")))
    shell = (package / "shell" / "loop.py").read_text()
    for member in EXEMPT:
        assert f"Drop.{member.name}" in shell, member
        assert f"Drop.{member.name}" not in core, member


# --- drops of what the router makes or splits: charged to the port of the frame that caused it ------------
def test_a_packet_the_mtu_cannot_take_in_any_piece_is_charged_to_its_ingress_port() -> None:
    """dmz's MTU of 20 leaves no room for 8 bytes of data beside a header: the packet cannot be
    fragmented at all (RFC 791 3.2), and the drop is a's, not nobody's."""
    dp, ports = routed(dmz_mtu=20)
    scenario = Scenario(
        dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.2.0.2") / UDP() / bytes(100))
    )
    ledger = Ledger(dp)
    dp.receive(scenario.port, scenario.frame, scenario.now)
    ledger.assert_one_drop(Drop.FRAG_UNSUPPORTED, scenario)


def test_a_reply_the_router_cannot_send_is_charged_to_the_port_of_the_request() -> None:
    """The router has not resolved a (10.1.0.2) and, with one resolution at a time, b's packet to a
    silent host holds the only place: a's echo request is answered, but the reply cannot wait for
    ARP. The drop is a's, where the request came in."""
    dp, ports = routed(arp_pending_max=1)
    assert dp.router is not None
    del dp.router.arp.entries[int(IPv4Address("10.1.0.2"))]
    dp.receive(ports["b"], from_b(IP(src="10.1.0.3", dst=SILENT) / UDP()), NOW)
    scenario = Scenario(dp=dp, port=ports["a"], frame=from_a(IP(src="10.1.0.2", dst="10.1.0.1") / ICMP()))
    ledger = Ledger(dp)
    dp.receive(scenario.port, scenario.frame, scenario.now)
    ledger.assert_one_drop(Drop.ARP_PENDING_FULL, scenario)


def test_an_error_made_on_a_timer_that_overflows_a_queue_is_charged_to_the_frame_it_pushes_out() -> None:
    """a's packet to fd00:2::9 fails on the timer (charged to a). The address unreachable error back
    to a must wait for a's address too (forgotten here), where c's packet already waits; with room for
    one, the error replaces it (RFC 4861 7.2.2) and that drop is c's, not a's nor nobody's."""
    dp, ports = routed(six=True, arp_retries=1, arp_queue_max=1)
    assert dp.router is not None and dp.router.v6 is not None
    del dp.router.v6.nd.entries[int(IPv6Address(A6))]
    dp.receive(ports["a"], from_a(udp6(dst=SILENT6)), NOW)
    dp.receive(ports["c"], from_c(udp6(src=C6, dst=A6)), NOW + 0.5)  # a's solicitation due at NOW + 1.5
    before = Ledger(dp)
    dp.on_timer(NOW + 1.0)
    after = ledgers(dp)
    changed = {name: delta(before.ports[name], after[name]) for name in after}
    assert {name: d for name, d in changed.items() if d} == {
        "a": {Drop.ND_FAILED: 1},
        "c": {Drop.ND_QUEUE_FULL: 1},
    }
    assert delta(before.rollup, rollup(dp)) == {Drop.ND_FAILED: 1, Drop.ND_QUEUE_FULL: 1}
