"""The router's services in the metrics: DHCP's leases and messages by type, DNS's questions by how
they were answered, the DNS cache; read back with prometheus-client's parser."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vswitch.core.datapath import Datapath
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.wire import ZERO_VNET_HDR
from vswitch.services.dhcp import DhcpServer, Scope
from vswitch.services.dns import DnsServer
from vswitch.shell.metrics import render

ROUTER_MAC = "02:aa:00:00:00:01"
CLIENT_MAC = "02:00:00:00:01:02"


def served() -> tuple[Datapath, int]:
    """One routed segment with DHCP and DNS; a port for the client."""
    dp = Datapath()
    lan = dp.add_segment("lan")
    port = dp.add_port("c1", lan)
    subnet = IPv4Network("10.0.0.0/24")
    dhcp = DhcpServer({0: Scope(0, subnet, IPv4Address("10.0.0.1"), ())}, domain="lab")
    dns = DnsServer("lab", [subnet], dhcp=dhcp)
    dns.set_hosts({}, {"c1": port})  # a `=dhcp` port: its name is its lease's
    iface = Interface(0, "lan", bytes.fromhex(ROUTER_MAC.replace(":", "")), IPv4Interface("10.0.0.1/24"))
    dp.attach_router(Router([iface], dhcp=dhcp, dns=dns), {lan: iface.mac})
    return dp, port


def dhcp_frame(kind: str, **options: str) -> bytes:
    message = BOOTP(chaddr=bytes.fromhex(CLIENT_MAC.replace(":", "")), xid=42) / DHCP(
        options=[("message-type", kind), *options.items(), "end"]
    )
    packet = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
    return ZERO_VNET_HDR + bytes(packet / UDP(sport=68, dport=67) / message)


def dns_frame(src: str, name: str) -> bytes:
    packet = Ether(src=CLIENT_MAC, dst=ROUTER_MAC) / IP(src=src, dst="10.0.0.1")
    return ZERO_VNET_HDR + bytes(packet / UDP(sport=5353, dport=53) / DNS(rd=1, qd=DNSQR(qname=name)))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_leases_messages_and_questions_are_counted() -> None:
    dp, port = served()
    now = time.monotonic()  # the clock the collector reads the leases against
    offer = dp.receive(port, dhcp_frame("discover"), now)
    assert offer, "the router answers the DISCOVER"
    dp.receive(port, dhcp_frame("request", server_id="10.0.0.1", requested_addr="10.0.0.0"), now)  # a NAK
    address = str(Ether(_first(offer)[10:])[BOOTP].yiaddr)
    dp.receive(port, dhcp_frame("request", server_id="10.0.0.1", requested_addr=address), now)
    for name in ("c1.lab", "nosuch.lab", "example.com"):
        dp.receive(port, dns_frame(address, name), now)

    got = samples(render(dp))
    assert got["vswitch_dhcp_leases", ()] == 1
    messages = {labels[0][1]: v for (name, labels), v in got.items() if name == "vswitch_dhcp_messages_total"}
    assert messages == {"discover": 1, "request": 2, "decline": 0, "release": 0, "inform": 0, "offer": 1,
                        "ack": 1, "nak": 1}  # fmt: skip
    questions = {labels[0][1]: v for (name, labels), v in got.items() if name == "vswitch_dns_queries_total"}
    assert questions["query"] == 3 and questions["local"] == 2 and questions["nxdomain"] == 1
    assert questions["refused"] == 1 and questions["forwarded"] == 0
    assert got["vswitch_dns_cache_entries", ()] == 0


def test_an_expired_lease_is_not_counted() -> None:
    dp, port = served()
    past = time.monotonic() - 7200  # bound two hours ago, for the default hour
    offer = dp.receive(port, dhcp_frame("discover"), past)
    address = str(Ether(_first(offer)[10:])[BOOTP].yiaddr)
    dp.receive(port, dhcp_frame("request", server_id="10.0.0.1", requested_addr=address), past)
    assert samples(render(dp))["vswitch_dhcp_leases", ()] == 0


def test_no_service_families_without_the_services() -> None:
    dp = Datapath()
    lan = dp.add_segment("lan")
    dp.add_port("c1", lan)
    iface = Interface(0, "lan", bytes.fromhex("02aa00000001"), IPv4Interface("10.0.0.1/24"))
    dp.attach_router(Router([iface]), {lan: iface.mac})
    names = {name for name, _ in samples(render(dp))}
    assert not {n for n in names if n.startswith(("vswitch_dhcp", "vswitch_dns"))}
    assert "vswitch_neighbour_entries" in names  # the router's other families are there


def _first(verdict: object) -> bytes:
    """The first frame of a datapath verdict (a list of (port, frame))."""
    assert isinstance(verdict, list) and verdict, verdict
    frame = verdict[0][1]
    return bytes(frame)
