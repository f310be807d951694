"""The router's DNS (services/dns.py) through the Router and directly: local names (the ports', DHCP
clients', `=dhcp` ports'), their reverse names, NXDOMAIN and NODATA, REFUSED without an upstream, the
forwarding to the upstream (ids, mismatches, timeouts, TCP after a truncated answer), the cache, the
truncation of a big answer to a client without EDNS, malformed questions, IPv6, the uplink, and the
RDNSS/DNSSL options of the router's advertisements. Questions and answers are built and read with
scapy; time is the `now` passed in.

The world: lan (10.0.0.0/24, fd00:1::/64 with six; the router at .1 / ::1) has the client at
10.0.0.50 (fd00:1::50), known to the router; dmz (10.2.0.0/24); wan, the uplink (198.18.0.2/24)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT, DNSRRSOA
from scapy.layers.inet import ICMP, IP, UDP, UDPerror, in4_chksum
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptDNSSL, ICMPv6NDOptRDNSS, IPv6, in6_chksum
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.router6 import RaConfig
from vswitch.core.services import Client
from vswitch.core.wire import ZERO_VNET_HDR
from vswitch.services.dhcp import DhcpServer, Scope
from vswitch.services.dns import UDP_PLAIN_MAX, DnsServer, Outgoing
from vswitch.tools.debug.trace import trace

LAN, DMZ, WAN = 0, 1, 2
R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
SERVER, SERVER6 = "10.0.0.1", "fd00:1::1"
CLIENT_MAC, CLIENT_IP, CLIENT6 = "02:00:00:00:01:02", "10.0.0.50", "fd00:1::50"
UPSTREAM_HOST = "198.18.0.1"
PORT_A, PORT_B = 7, 8
NOW = 1.0
QID = 0x4242
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
HOSTS: dict[str, Iterable[IPv4Address | IPv6Address]] = {
    "ns1": (IPv4Address("10.0.0.2"), IPv6Address("fd00:1::2")),
    "v4only": (IPv4Address("10.0.0.3"),),
}


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# --- the world -----------------------------------------------------------------------------------------
@dataclass
class Lab:
    router: Router
    dns: DnsServer
    dhcp: DhcpServer
    ledger: Counter[str] = field(default_factory=Counter)
    woken: list[int] = field(default_factory=list)

    def send(self, frame: bytes, now: float = NOW, iface: int = LAN, port: int = PORT_A) -> list[Packet]:
        frames = self.router.decide(iface, frame, now, self.ledger, port).frames
        return [Ether(f[len(ZERO_VNET_HDR) :]) for _, f in frames]

    def ask(self, payload: Packet | bytes, now: float = NOW, sport: int = 5353) -> list[Packet]:
        return self.send(frame4(payload, sport=sport), now)

    def answer(self, payload: Packet | bytes, now: float = NOW, sport: int = 5353) -> Packet:
        """The one answer to a question from the client, checked for its addresses and checksums."""
        [reply] = self.ask(payload, now, sport)
        return answer_to_client(reply, sport)

    def upstream(self, wire: bytes, now: float = NOW, over_tcp: bool = False) -> list[Packet]:
        frames = self.router.dns_upstream_reply(wire, now, over_tcp)
        return [Ether(f[len(ZERO_VNET_HDR) :]) for _, f in frames]

    def lease(self, client: str, hostname: str | None = None, port: int = PORT_A, now: float = NOW) -> str:
        """A DHCP lease for client (DISCOVER, REQUEST straight to the server): its address."""
        opts: list[Any] = [("hostname", hostname)] if hostname else []
        discover = BOOTP(op=1, chaddr=mac(client)) / DHCP(
            options=[("message-type", "discover"), *opts, "end"]
        )
        replies = self.dhcp.receive(LAN, port, mac(client), bytes(discover), now, Counter())
        assert isinstance(replies, list)
        address = BOOTP(replies[0].payload).yiaddr
        request = BOOTP(op=1, chaddr=mac(client)) / DHCP(
            options=[
                ("message-type", "request"),
                ("server_id", SERVER),
                ("requested_addr", address),
                *opts,
                "end",
            ]
        )
        acks = self.dhcp.receive(LAN, port, mac(client), bytes(request), now, Counter())
        assert isinstance(acks, list) and len(acks) == 1
        return str(address)


def make(
    upstream: bool = False,
    *,
    six: bool = False,
    with_dns: bool = True,
    ra: RaConfig | None = None,
    dhcp_ports: dict[str, int] | None = None,
    **dns_kw: Any,
) -> Lab:
    lan6 = IPv6Interface(f"{SERVER6}/64") if six else None
    dhcp = DhcpServer({LAN: Scope(LAN, IPv4Network("10.0.0.0/24"), IPv4Address(SERVER), ())}, domain="lab")
    networks: list[IPv4Network | IPv6Network] = [IPv4Network("10.0.0.0/24"), IPv4Network("10.2.0.0/24")]
    if six:
        networks.append(IPv6Network("fd00:1::/64"))
    dns = DnsServer("lab", networks, upstream, dhcp, rng=random.Random(7), **dns_kw)
    dns.set_hosts(HOSTS, dhcp_ports)
    router = Router(
        [
            Interface(LAN, "lan", mac(R_LAN), IPv4Interface(f"{SERVER}/24"), address6=lan6),
            Interface(DMZ, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24")),
            Interface(WAN, "wan", mac(R_WAN), IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        dhcp=dhcp,
        dns=dns if with_dns else None,
        ra=ra or RaConfig(reply_delay=0.0),
    )
    router.arp.learn(int(IPv4Address(CLIENT_IP)), mac(CLIENT_MAC), LAN, 0.0)
    router.arp.learn(int(IPv4Address(UPSTREAM_HOST)), mac("02:00:00:00:00:ff"), WAN, 0.0)
    if router.v6 is not None:
        router.v6.nd.learn(int(IPv6Address(CLIENT6)), mac(CLIENT_MAC), LAN, 0.0)
    lab = Lab(router, dns, dhcp)
    dns.wake = lambda: lab.woken.append(len(dns.outbox))
    return lab


# --- messages ------------------------------------------------------------------------------------------
def query(name: str, qtype: str | int = "A", *, qid: int = QID, edns: int | None = None, **kw: Any) -> Packet:
    q = DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype), **kw)
    if edns is not None:
        q.ar = [DNSRROPT(rclass=edns)]
    return q


def frame4(payload: Packet | bytes, src: str = CLIENT_IP, dst: str = SERVER, sport: int = 5353) -> bytes:
    l3 = IP(src=src, dst=dst) / UDP(sport=sport, dport=53) / bytes(payload)
    return ZERO_VNET_HDR + bytes(Ether(src=CLIENT_MAC, dst=R_LAN) / l3)


def answer_to_client(reply: Packet, sport: int = 5353) -> Packet:
    assert (reply.src, reply.dst) == (R_LAN, CLIENT_MAC)
    assert (reply[IP].src, reply[IP].dst) == (SERVER, CLIENT_IP)
    assert (reply[UDP].sport, reply[UDP].dport) == (53, sport)
    assert in4_chksum(17, reply[IP], bytes(reply[UDP])) == 0
    dns: Packet = reply[DNS]
    assert dns.qr == 1
    return dns


def rdatas(dns: Packet) -> list[Any]:
    return [rr.rdata for rr in (dns.an or [])]


def upstream_answer(
    out: Outgoing,
    *records: DNSRR,
    rcode: int = NOERROR,
    tc: int = 0,
    authority: list[Packet] | None = None,
    qname: str | None = None,
    ident: int | None = None,
) -> bytes:
    """The upstream's answer to the question it was sent."""
    q = DNS(out.wire)
    question = DNSQR(qname=qname, qtype=q.qd[0].qtype) if qname else q.qd[0]
    return bytes(
        DNS(
            id=out.ident if ident is None else ident,
            qr=1,
            rd=1,
            ra=1,
            tc=tc,
            rcode=rcode,
            qd=[question],
            an=list(records),
            ns=authority or [],
        )
    )


def a_record(name: str = "example.com.", address: str = "93.184.216.34", ttl: int = 300) -> DNSRR:
    return DNSRR(rrname=name, type="A", ttl=ttl, rdata=address)


def soa(minimum: int, ttl: int = 3600) -> DNSRRSOA:
    return DNSRRSOA(
        rrname="example.com.", ttl=ttl, mname="ns.example.com.", rname="h.example.com.", minimum=minimum
    )


def forward(lab: Lab, name: str = "example.com.", now: float = NOW, **kw: Any) -> Outgoing:
    """A question that goes upstream: nothing answered now, its Outgoing."""
    before = len(lab.dns.outbox)
    assert lab.ask(query(name, **kw), now) == []
    assert len(lab.dns.outbox) == before + 1
    return lab.dns.outbox[-1]


# === 1. Local names ========================================================================================
@pytest.mark.parametrize(
    ("qtype", "expected"),
    [("A", ["10.0.0.2"]), ("AAAA", ["fd00:1::2"]), (255, ["10.0.0.2", "fd00:1::2"])],
)
def test_a_ports_name_is_answered_authoritatively(qtype: str | int, expected: list[str]) -> None:
    lab = make()
    dns = lab.answer(query("ns1.lab.", qtype))
    assert (dns.id, dns.rcode, dns.aa, dns.rd) == (QID, NOERROR, 1, 1)
    assert dns.qd[0].qname == b"ns1.lab." and dns.qd[0].qtype == DNSQR(qtype=qtype).qtype
    assert sorted(str(r) for r in rdatas(dns)) == expected
    assert all(rr.rrname == b"ns1.lab." and rr.ttl > 0 for rr in dns.an)
    assert lab.router.events[Event.DNS_LOCAL] == 1 and lab.dns.outbox == []


def test_names_are_case_insensitive() -> None:
    lab = make(upstream=True)
    dns = lab.answer(query("NS1.Lab.", "A"))
    assert rdatas(dns) == ["10.0.0.2"] and dns.aa == 1


@pytest.mark.parametrize(
    ("name", "target"),
    [("2.0.0.10.in-addr.arpa.", b"ns1.lab."), (IPv6Address("fd00:1::2").reverse_pointer + ".", b"ns1.lab.")],
)
def test_the_reverse_name_of_a_ports_address_is_answered(name: str, target: bytes) -> None:
    lab = make(upstream=True, six=True)
    dns = lab.answer(query(name, "PTR"))
    assert (dns.rcode, dns.aa) == (NOERROR, 1)
    assert rdatas(dns) == [target]
    assert lab.dns.outbox == []


def test_a_dhcp_clients_name_resolves_to_its_lease_and_back() -> None:
    lab = make()
    address = lab.lease("02:00:00:00:01:09", "web")
    assert rdatas(lab.answer(query("web.lab."))) == [address]
    reverse = IPv4Address(address).reverse_pointer + "."
    assert rdatas(lab.answer(query(reverse, "PTR"))) == [b"web.lab."]


def test_a_dhcp_port_resolves_to_its_ports_lease_by_the_ports_name() -> None:
    lab = make(dhcp_ports={"db": PORT_B})
    address = lab.lease("02:00:00:00:01:09", port=PORT_B)  # no host name of its own
    assert rdatas(lab.answer(query("db.lab."))) == [address]
    lab.lease("02:00:00:00:01:0a", port=PORT_A)  # through another port: not db's
    assert rdatas(lab.answer(query("db.lab."))) == [address]


def test_a_ports_name_wins_over_a_dhcp_client_that_takes_it() -> None:
    lab = make()
    address = lab.lease("02:00:00:00:01:09", "ns1")
    assert rdatas(lab.answer(query("ns1.lab."))) == ["10.0.0.2"]
    assert lab.answer(query(IPv4Address(address).reverse_pointer + ".", "PTR")).rcode == NXDOMAIN


def test_a_leases_name_goes_with_its_port_and_with_its_expiry() -> None:
    lab = make()
    lab.lease("02:00:00:00:01:09", "web", port=PORT_A)
    lab.lease("02:00:00:00:01:0a", "app", port=PORT_B)
    lab.router.forget_port(PORT_A)
    assert lab.answer(query("web.lab.")).rcode == NXDOMAIN
    assert lab.answer(query("app.lab.")).rcode == NOERROR
    lab.router.arp.learn(int(IPv4Address(CLIENT_IP)), mac(CLIENT_MAC), LAN, NOW + 3600)
    assert lab.answer(query("app.lab."), NOW + 3600).rcode == NXDOMAIN  # expired, not yet swept


def test_a_missing_local_name_is_nxdomain_even_with_an_upstream() -> None:
    lab = make(upstream=True)
    dns = lab.answer(query("nope.lab."))
    assert (dns.rcode, dns.aa, dns.ancount) == (NXDOMAIN, 1, 0)
    assert lab.dns.outbox == [] and lab.router.events[Event.DNS_NXDOMAIN] == 1


@pytest.mark.parametrize(
    "name", ["7.7.168.192.in-addr.arpa.", "9.0.2.10.in-addr.arpa.", "1.0.0.10.in-addr.arpa."]
)
def test_a_private_or_our_reverse_name_that_is_no_ones_is_nxdomain_here(name: str) -> None:
    """RFC 6303: 192.168.7.7 and a free address of ours are never asked upstream. (10.0.0.1, the
    router's own, is not a port's either: NXDOMAIN too.)"""
    lab = make(upstream=True)
    dns = lab.answer(query(name, "PTR"))
    assert (dns.rcode, dns.aa) == (NXDOMAIN, 1)
    assert lab.dns.outbox == [] and lab.dns.pending == {}


def test_a_public_reverse_name_goes_upstream() -> None:
    lab = make(upstream=True)
    forward(lab, "8.8.8.8.in-addr.arpa.", qtype="PTR")


def test_aaaa_of_a_v4_only_host_is_nodata() -> None:
    lab = make(upstream=True)
    dns = lab.answer(query("v4only.lab.", "AAAA"))
    assert (dns.rcode, dns.aa, dns.ancount) == (NOERROR, 1, 0)
    assert lab.dns.outbox == []


def test_the_domain_itself_is_nodata() -> None:
    lab = make()
    dns = lab.answer(query("lab.", "A"))
    assert (dns.rcode, dns.aa, dns.ancount) == (NOERROR, 1, 0)


# === 2. Without an upstream, and with one ==================================================================
def test_a_name_not_ours_is_refused_without_an_upstream() -> None:
    lab = make()
    dns = lab.answer(query("example.com."))
    assert (dns.rcode, dns.id, dns.ra) == (REFUSED, QID, 0)
    assert dns.qd[0].qname == b"example.com."
    assert lab.router.events[Event.DNS_REFUSED] == 1 and lab.dns.outbox == [] and lab.dns.pending == {}


def test_a_name_not_ours_goes_upstream_with_a_new_id_and_the_answer_comes_back_as_the_clients() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    assert not out.tcp and out.ident != QID and out.ident in lab.dns.pending
    sent = DNS(out.wire)
    assert sent.id == out.ident and sent.qd[0].qname == b"example.com." and sent.qd[0].qtype == 1
    assert sent.rd == 1
    assert lab.woken == [1]  # the shell was told, once there was something in the outbox
    assert lab.router.events[Event.DNS_FORWARDED] == 1
    [reply] = lab.upstream(upstream_answer(out, a_record()), NOW + 0.1)
    dns = answer_to_client(reply)
    assert (dns.id, dns.rcode, dns.aa) == (QID, NOERROR, 0)
    assert rdatas(dns) == ["93.184.216.34"]
    assert lab.dns.pending == {}


def test_each_client_gets_its_own_answer() -> None:
    lab = make(upstream=True)
    first = forward(lab, "one.example.", qid=1)
    lab.router.arp.learn(int(IPv4Address("10.0.0.60")), mac("02:00:00:00:01:60"), LAN, 0.0)
    frame = ZERO_VNET_HDR + bytes(
        Ether(src="02:00:00:00:01:60", dst=R_LAN)
        / IP(src="10.0.0.60", dst=SERVER)
        / UDP(sport=4000, dport=53)
        / query("two.example.", qid=2)
    )
    assert lab.send(frame) == []
    second = lab.dns.outbox[-1]
    assert first.ident != second.ident
    [reply] = lab.upstream(upstream_answer(second, a_record("two.example.", "192.0.2.2")))
    assert (reply[IP].dst, reply[UDP].dport, reply[DNS].id) == ("10.0.0.60", 4000, 2)
    [reply] = lab.upstream(upstream_answer(first, a_record("one.example.", "192.0.2.1")))
    assert (reply[IP].dst, reply[UDP].dport, reply[DNS].id) == (CLIENT_IP, 5353, 1)


def test_an_answer_with_an_unknown_id_or_another_question_is_ignored() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    assert lab.upstream(upstream_answer(out, a_record(), ident=out.ident ^ 1)) == []
    assert lab.upstream(upstream_answer(out, a_record("evil.example."), qname="evil.example.")) == []
    assert lab.router.events[Event.DNS_UPSTREAM_MISMATCH] == 2
    assert out.ident in lab.dns.pending and lab.dns.cache == {}
    assert lab.upstream(b"\x00\x01garbage") == []
    assert lab.router.events[Event.DNS_UPSTREAM_MALFORMED] == 1
    [reply] = lab.upstream(upstream_answer(out, a_record()))  # the true one still gets through
    assert reply[DNS].id == QID


def test_a_late_answer_after_the_first_is_a_mismatch() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    wire = upstream_answer(out, a_record())
    assert len(lab.upstream(wire)) == 1
    assert lab.upstream(wire) == []
    assert lab.router.events[Event.DNS_UPSTREAM_MISMATCH] == 1


# === 3. The cache ==========================================================================================
def test_a_second_question_within_the_ttl_is_answered_from_the_cache_with_the_ttl_gone_down() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    lab.upstream(upstream_answer(out, a_record(ttl=300)), NOW)
    dns = lab.answer(query("example.com.", qid=7), NOW + 100)
    assert (dns.id, dns.rcode) == (7, NOERROR)
    assert rdatas(dns) == ["93.184.216.34"] and dns.an[0].ttl == 200
    assert lab.router.events[Event.DNS_CACHE_HIT] == 1
    assert len(lab.dns.outbox) == 1  # nothing more went upstream
    forward(lab, now=NOW + 300)  # expired: upstream again
    assert lab.router.events[Event.DNS_CACHE_HIT] == 1


def test_a_cached_answer_is_per_question() -> None:
    lab = make(upstream=True)
    lab.upstream(upstream_answer(forward(lab), a_record()))
    forward(lab, qtype="AAAA")
    forward(lab, "other.example.")


def test_a_negative_answer_is_cached_by_its_soa_minimum() -> None:
    lab = make(upstream=True)
    out = forward(lab, "gone.example.")
    [reply] = lab.upstream(upstream_answer(out, rcode=NXDOMAIN, authority=[soa(minimum=30)]))
    assert reply[DNS].rcode == NXDOMAIN
    dns = lab.answer(query("gone.example."), NOW + 29)
    assert dns.rcode == NXDOMAIN and lab.router.events[Event.DNS_CACHE_HIT] == 1
    forward(lab, "gone.example.", now=NOW + 30)


def test_servfail_is_not_cached() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    [reply] = lab.upstream(upstream_answer(out, rcode=SERVFAIL))
    assert reply[DNS].rcode == SERVFAIL and reply[DNS].id == QID
    assert lab.dns.cache == {}
    forward(lab, now=NOW + 1)


def test_the_cache_is_bounded_and_the_oldest_goes_first() -> None:
    lab = make(upstream=True, cache_max=2)
    for i, name in enumerate(("a.example.", "b.example.", "c.example.")):
        lab.upstream(upstream_answer(forward(lab, name, now=NOW + i), a_record(name)), NOW + i)
    assert [key.name for key in lab.dns.cache] == ["b.example.", "c.example."]
    assert len(lab.dns.cache) == 2
    lab.answer(query("c.example."), NOW + 3)  # still there
    forward(lab, "a.example.", now=NOW + 3)  # evicted


def test_the_cache_caps_a_long_ttl() -> None:
    lab = make(upstream=True, ttl_max=60)
    lab.upstream(upstream_answer(forward(lab), a_record(ttl=86400)))
    assert lab.answer(query("example.com."), NOW + 59).rcode == NOERROR
    forward(lab, now=NOW + 60)


# === 4. Timeouts and TCP ====================================================================================
def test_an_unanswered_question_is_answered_servfail_after_the_timeout() -> None:
    lab = make(upstream=True, timeout=3.0)
    forward(lab, qid=99)
    assert lab.dns.next_deadline() == NOW + 3.0
    assert lab.router.next_deadline() == NOW + 3.0
    assert lab.router.on_timer(NOW + 2.9) == [] and len(lab.dns.pending) == 1
    [(iface, frame)] = lab.router.on_timer(NOW + 3.0)
    reply = Ether(frame[10:])
    assert iface == LAN
    dns = answer_to_client(reply)
    assert (dns.id, dns.rcode, dns.qd[0].qname) == (99, SERVFAIL, b"example.com.")
    assert lab.router.events[Event.DNS_UPSTREAM_TIMEOUT] == 1
    assert lab.dns.pending == {} and lab.dns.next_deadline() is None


def test_a_truncated_udp_answer_is_asked_again_over_tcp_and_the_tcp_answer_reaches_the_client() -> None:
    lab = make(upstream=True)
    out = forward(lab)
    assert lab.upstream(upstream_answer(out, tc=1)) == []
    again = lab.dns.outbox[-1]
    assert (again.ident, again.wire, again.tcp) == (out.ident, out.wire, True)
    assert lab.router.events[Event.DNS_UPSTREAM_TCP] == 1
    assert lab.woken == [1, 2]
    [reply] = lab.upstream(upstream_answer(out, a_record()), over_tcp=True)
    assert rdatas(answer_to_client(reply)) == ["93.184.216.34"]


# === 5. Truncation to the client ============================================================================
def big_answer(out: Outgoing) -> bytes:
    return upstream_answer(out, *(a_record("big.example.", f"192.0.2.{i}") for i in range(1, 61)))


def test_a_big_answer_to_a_client_without_edns_is_cut_to_512_bytes_with_tc() -> None:
    lab = make(upstream=True)
    out = forward(lab, "big.example.")
    wire = big_answer(out)
    assert len(wire) > UDP_PLAIN_MAX
    [reply] = lab.upstream(wire)
    dns = answer_to_client(reply)
    assert dns.tc == 1 and len(bytes(reply[UDP].payload)) <= UDP_PLAIN_MAX and dns.id == QID
    assert lab.router.events[Event.DNS_TRUNCATED] == 1
    # from the cache too
    dns = lab.answer(query("big.example."), NOW + 1)
    assert dns.tc == 1 and len(bytes(dns)) <= UDP_PLAIN_MAX


def test_a_big_answer_to_a_client_with_edns_comes_whole() -> None:
    lab = make(upstream=True)
    out = forward(lab, "big.example.", edns=1232)
    [reply] = lab.upstream(big_answer(out))
    dns = answer_to_client(reply)
    assert dns.tc == 0 and len(dns.an) == 60
    assert len(bytes(reply[UDP].payload)) > UDP_PLAIN_MAX
    assert any(isinstance(rr, DNSRROPT) for rr in dns.ar)
    dns = lab.answer(query("big.example.", edns=1232), NOW + 1)
    assert dns.tc == 0 and len(dns.an) == 60


# === 6. Malformed questions =================================================================================
def test_less_than_a_header_is_a_drop() -> None:
    lab = make()
    assert lab.ask(b"\x00" * 11) == []
    assert lab.ledger == Counter({Drop.DNS_MALFORMED: 1})
    assert lab.router.drops[Drop.DNS_MALFORMED] == 1


def test_a_response_sent_to_the_server_is_a_drop() -> None:
    lab = make(upstream=True)
    assert lab.ask(DNS(id=5, qr=1, qd=DNSQR(qname="example.com."))) == []
    assert lab.ledger == Counter({Drop.DNS_MALFORMED: 1})
    assert lab.dns.outbox == []


def test_a_header_with_garbage_after_it_is_formerr() -> None:
    lab = make()
    dns = lab.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff")
    assert (dns.id, dns.rcode, dns.qr) == (0x1234, FORMERR, 1)
    assert lab.ledger == Counter()


def test_another_opcode_than_query_is_notimp() -> None:
    lab = make(upstream=True)
    dns = lab.answer(query("example.com.", opcode=2))  # STATUS
    assert (dns.id, dns.rcode, dns.opcode) == (QID, NOTIMP, 2)
    assert lab.dns.outbox == []


def test_two_questions_are_formerr() -> None:
    lab = make(upstream=True)
    q = DNS(id=QID, rd=1, qd=[DNSQR(qname="a.example."), DNSQR(qname="b.example.")])
    assert lab.answer(q).rcode == FORMERR


def test_too_many_questions_waiting_upstream_is_a_drop() -> None:
    lab = make(upstream=True, pending_max=2)
    forward(lab, "a.example.")
    forward(lab, "b.example.")
    assert lab.ask(query("c.example.")) == []
    assert lab.ledger == Counter({Drop.DNS_PENDING_FULL: 1})
    assert len(lab.dns.pending) == 2 and len(lab.dns.outbox) == 2
    lab.router.on_timer(NOW + lab.dns.timeout)
    forward(lab, "c.example.", now=NOW + lab.dns.timeout)


def test_questions_over_the_rate_within_one_instant_are_dropped() -> None:
    lab = make(rate=1.0, burst=2)
    assert lab.answer(query("ns1.lab.")).rcode == NOERROR
    assert lab.answer(query("ns1.lab.")).rcode == NOERROR
    assert lab.ask(query("ns1.lab.")) == []
    assert lab.ledger == Counter({Drop.DNS_RATE_LIMITED: 1})
    assert lab.router.events[Event.DNS_QUERY] == 2
    assert lab.answer(query("ns1.lab."), NOW + 1).rcode == NOERROR


def test_a_bad_udp_checksum_is_a_drop_not_a_question() -> None:
    lab = make()
    frame = bytearray(frame4(query("ns1.lab.")))
    frame[10 + 14 + 20 + 6] ^= 0x01
    assert lab.send(bytes(frame)) == []
    assert lab.ledger == Counter({Drop.L4_BAD_CHECKSUM: 1})
    assert lab.router.events[Event.DNS_QUERY] == 0


@pytest.mark.parametrize("payload", [b"", b"\x00" * 12, bytes(range(256)) * 2, b"\xff" * 40])
def test_the_server_raises_nothing_on_junk(payload: bytes) -> None:
    lab = make(upstream=True)
    client = Client(LAN, False, IPv4Address(CLIENT_IP).packed, 5353, IPv4Address(SERVER).packed)
    lab.dns.query(payload, client, NOW)
    lab.dns.upstream_reply(payload, NOW)


# === 7. IPv6, the uplink, a trace =========================================================================
def test_a_question_over_ipv6_is_answered_over_ipv6() -> None:
    lab = make(six=True)
    l3 = IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=5353, dport=53) / query("ns1.lab.", "AAAA")
    [reply] = lab.send(ZERO_VNET_HDR + bytes(Ether(src=CLIENT_MAC, dst=R_LAN) / l3))
    assert (reply.src, reply.dst) == (R_LAN, CLIENT_MAC)
    assert (reply[IPv6].src, reply[IPv6].dst) == (SERVER6, CLIENT6)
    assert (reply[UDP].sport, reply[UDP].dport) == (53, 5353)
    payload = bytes(reply[IPv6].payload)
    assert in6_chksum(17, reply[IPv6], payload) == 0  # type: ignore[no-untyped-call]
    assert rdatas(reply[DNS]) == ["fd00:1::2"] and reply[DNS].id == QID


def test_a_question_over_ipv6_goes_upstream_and_its_answer_comes_back_over_ipv6() -> None:
    lab = make(upstream=True, six=True)
    l3 = IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=5353, dport=53) / query("example.com.")
    assert lab.send(ZERO_VNET_HDR + bytes(Ether(src=CLIENT_MAC, dst=R_LAN) / l3)) == []
    [reply] = lab.upstream(upstream_answer(lab.dns.outbox[-1], a_record()))
    assert (reply[IPv6].src, reply[IPv6].dst, reply[DNS].id) == (SERVER6, CLIENT6, QID)


def test_dns_is_not_served_on_the_uplink() -> None:
    lab = make(upstream=True)
    l3 = IP(src=UPSTREAM_HOST, dst="198.18.0.2") / UDP(sport=5353, dport=53) / query("ns1.lab.")
    out = lab.send(ZERO_VNET_HDR + bytes(Ether(src="02:00:00:00:00:ff", dst=R_WAN) / l3), iface=WAN)
    assert lab.ledger == Counter({Drop.TO_ROUTER: 1})
    assert lab.router.events[Event.DNS_QUERY] == 0 and lab.dns.outbox == []
    [error] = out
    assert error[IP].dst == UPSTREAM_HOST and (error[ICMP].type, error[ICMP].code) == (3, 3)
    assert error[UDPerror].dport == 53


def test_without_a_dns_server_port_53_is_unreachable() -> None:
    lab = make(with_dns=False)
    [error] = lab.ask(query("ns1.lab."))
    assert (error[ICMP].type, error[ICMP].code) == (3, 3)
    assert lab.ledger == Counter({Drop.TO_ROUTER: 1})


def test_a_traced_question_goes_nowhere_and_leaves_nothing_pending() -> None:
    dp = Datapath()
    lan = dp.add_segment("lan")
    a = dp.add_port("a", lan)
    dns = DnsServer("lab", [IPv4Network("10.0.0.0/24")], upstream=True)
    router = Router([Interface(lan, "lan", mac(R_LAN), IPv4Interface(f"{SERVER}/24"))], dns=dns)
    dp.attach_router(router, {lan: mac(R_LAN)})
    router.arp.learn(int(IPv4Address(CLIENT_IP)), mac(CLIENT_MAC), lan, 0.0)
    woken: list[bool] = []
    dns.wake = lambda: woken.append(True)
    result = trace(dp, a, frame4(query("example.com.")), NOW)
    assert any(stage == "DNS" and "upstream" in text for stage, text in result.stages), result.stages
    assert dns.outbox == [] and dns.pending == {} and woken == []
    assert router.events[Event.DNS_FORWARDED] == 0


# === 8. Router advertisements ===============================================================================
def _advertisement(lab: Lab) -> Packet:
    [ra] = [Ether(f[10:]) for _, f in lab.router.on_timer(0.0) if ICMPv6ND_RA in Ether(f[10:])]
    return ra


def test_advertisements_carry_rdnss_and_dnssl_with_a_dns_server() -> None:
    """RFC 8106: the router's address on the segment as the resolver, the domain to search, both for
    3 x MaxRtrAdvInterval."""
    lab = make(six=True, ra=RaConfig(max_interval=100.0, reply_delay=0.0))
    ra = _advertisement(lab)
    rdnss = ra[ICMPv6NDOptRDNSS]
    assert rdnss.type == 25 and list(rdnss.dns) == [SERVER6] and rdnss.lifetime == 300
    dnssl = ra[ICMPv6NDOptDNSSL]
    assert dnssl.type == 31 and list(dnssl.searchlist) == ["lab."] and dnssl.lifetime == 300
    assert in6_chksum(58, ra[IPv6], bytes(ra[IPv6].payload)) == 0  # type: ignore[no-untyped-call]


def test_advertisements_carry_neither_without_a_dns_server() -> None:
    lab = make(six=True, with_dns=False)
    ra = _advertisement(lab)
    assert ICMPv6NDOptRDNSS not in ra and ICMPv6NDOptDNSSL not in ra
    assert in6_chksum(58, ra[IPv6], bytes(ra[IPv6].payload)) == 0  # type: ignore[no-untyped-call]


def test_raw_dns_payload_is_carried_as_raw() -> None:
    """Guard for the helpers: scapy reads our answers as DNS (port 53), not as Raw."""
    lab = make()
    [reply] = lab.ask(query("ns1.lab."))
    assert DNS in reply and Raw not in reply
