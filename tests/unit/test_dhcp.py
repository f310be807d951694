"""The router's DHCPv4 server (services/dhcp.py) through Router.decide and the datapath, and directly:
RFC 2131's exchanges (DISCOVER/OFFER, REQUEST/ACK or NAK, RENEWING, RELEASE, DECLINE), the options
(RFC 2132, RFC 3442's classless routes), the pool and its bounds, expiry on a fake clock, the drops,
and a trace that commits nothing. Requests are built and replies read back with scapy; time is the
`now` passed in, never slept.

The world: lan (10.0.0.0/24, the router at .1) is served; dmz (10.2.0.0/24) is routed but has no
scope; wan is the uplink."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

import vswitch.services.dhcp as dhcp_module
from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.wire import ZERO_VNET_HDR
from vswitch.services.dhcp import (
    DECLINED_HOLD,
    OFFER_HOLD,
    DhcpServer,
    Reservation,
    Scope,
)
from vswitch.services.dns import DnsServer
from vswitch.tools.debug.trace import trace

LAN, DMZ, WAN = 0, 1, 2
R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
SERVER = "10.0.0.1"
CLIENT, OTHER = "02:00:00:00:01:02", "02:00:00:00:01:03"
BROADCAST = "ff:ff:ff:ff:ff:ff"
PORT_A, PORT_B = 7, 8  # the switch ports the frames come in on (Router.decide's port)
NOW = 1.0
# RFC 2131 message types
OFFER, ACK, NAK = 2, 5, 6


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def client_mac(i: int) -> str:
    return f"02:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}"


# --- the world -----------------------------------------------------------------------------------------
@dataclass
class Lab:
    router: Router
    dhcp: DhcpServer
    ledger: Counter[str] = field(default_factory=Counter)

    def send(self, frame: bytes, now: float = NOW, port: int = PORT_A, iface: int = LAN) -> list[Packet]:
        """What the router sends for frame (all on lan, checked), read back by scapy."""
        frames = self.router.decide(iface, frame, now, self.ledger, port).frames
        return [Ether(f[len(ZERO_VNET_HDR) :]) for _, f in frames]

    def one(self, frame: bytes, now: float = NOW, port: int = PORT_A) -> Packet:
        routed = self.router.decide(LAN, frame, now, self.ledger, port).frames
        assert len(routed) == 1, routed
        iface, buf = routed[0]
        assert iface == LAN
        return Ether(buf[len(ZERO_VNET_HDR) :])

    def lease(
        self, client: str = CLIENT, now: float = NOW, port: int = PORT_A, options: Sequence[Any] = ()
    ) -> str:
        """client's DISCOVER then REQUEST (SELECTING): its bound address."""
        offer = self.one(broadcast(message("discover", client, options=options), client), now, port)
        assert kind(offer) == OFFER
        address = str(offer[BOOTP].yiaddr)
        request = message("request", client, options=[*selecting(address), *options])
        ack = self.one(broadcast(request, client), now, port)
        assert kind(ack) == ACK and ack[BOOTP].yiaddr == address
        return address


def make(
    network: str = "10.0.0.1/24",
    *,
    ranges: Iterable[tuple[str, str]] = (),
    routes: Iterable[tuple[str, str]] = (),
    reservations: dict[str, tuple[str, str | None]] | None = None,
    mtu: int = 1500,
    dns: bool = True,
    uplink_scope: bool = False,
    dns_server: bool = False,
    **kw: Any,
) -> Lab:
    """The router on lan (served), dmz (not) and wan (the uplink; uplink_scope: served by mistake,
    to show the router refuses it anyway), with a DhcpServer for the domain "lab"."""
    lan = IPv4Interface(network)
    scopes = {
        LAN: Scope(
            LAN,
            lan.network,
            lan.ip,
            tuple((IPv4Address(a), IPv4Address(b)) for a, b in ranges),
            mtu,
            dns,
            tuple((IPv4Network(n), IPv4Address(g)) for n, g in routes),
        )
    }
    if uplink_scope:
        scopes[WAN] = Scope(WAN, IPv4Network("198.18.0.0/24"), IPv4Address("198.18.0.2"), ())
    kw.setdefault("domain", "lab")
    server = DhcpServer(
        scopes,
        reservations={mac(m): Reservation(IPv4Address(a), n) for m, (a, n) in (reservations or {}).items()},
        **kw,
    )
    router = Router(
        [
            Interface(LAN, "lan", mac(R_LAN), lan, mtu=mtu),
            Interface(DMZ, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24")),
            Interface(WAN, "wan", mac(R_WAN), IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        dhcp=server,
        dns=DnsServer("lab", dhcp=server) if dns_server else None,
    )
    return Lab(router, server)


# --- frames --------------------------------------------------------------------------------------------
def message(
    kind: str,
    client: str = CLIENT,
    *,
    xid: int = 0x1234,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    chaddr: str | None = None,
    options: Sequence[Any] = (),
) -> Packet:
    return BOOTP(
        op=1, xid=xid, flags=flags, ciaddr=ciaddr, giaddr=giaddr, chaddr=mac(chaddr or client)
    ) / DHCP(options=[("message-type", kind), *options, "end"])


def selecting(address: str, server: str = SERVER) -> list[tuple[str, str]]:
    return [("server_id", server), ("requested_addr", address)]


def broadcast(payload: Packet, client: str = CLIENT, **ip: Any) -> bytes:
    """From a client with no address yet: 0.0.0.0:68 to 255.255.255.255:67, Ethernet broadcast."""
    fields = {"src": "0.0.0.0", "dst": "255.255.255.255", **ip}
    return ZERO_VNET_HDR + bytes(
        Ether(src=client, dst=BROADCAST) / IP(**fields) / UDP(sport=68, dport=67) / payload
    )


def unicast(payload: Packet, src: str, client: str = CLIENT, dst: str = SERVER) -> bytes:
    """From a client that has its address, to the router's MAC and dst (RENEWING, RELEASE)."""
    return ZERO_VNET_HDR + bytes(
        Ether(src=client, dst=R_LAN) / IP(src=src, dst=dst) / UDP(sport=68, dport=67) / payload
    )


def kind(p: Packet) -> int:
    value = options(p)["message-type"]
    assert isinstance(value, int)
    return value


def options(p: Packet) -> dict[str, Any]:
    return {o[0]: o[1] for o in p[DHCP].options if isinstance(o, tuple)}


def raw_options(p: Packet) -> dict[int, bytes]:
    """The reply's options as the wire has them (RFC 2132 2: code, length, value), after the cookie."""
    data = bytes(p[BOOTP])
    assert data[236:240] == b"\x63\x82\x53\x63"
    found: dict[int, bytes] = {}
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, length = data[i], data[i + 1]
        assert code not in found
        found[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    assert i < len(data), "no end option"
    return found


def assert_from_server(p: Packet) -> None:
    """From the router's MAC and address, port 67 to 68, both checksums valid, a BOOTREPLY of 300+
    bytes (RFC 1542 2.1)."""
    assert p.src == R_LAN and p[IP].src == SERVER
    assert (p[UDP].sport, p[UDP].dport) == (67, 68)
    ip = bytes(p[IP])
    assert checksum(ip[: p[IP].ihl * 4]) == 0
    assert p[UDP].chksum != 0 and in4_chksum(17, p[IP], bytes(p[UDP])) == 0
    assert p[BOOTP].op == 2 and len(bytes(p[BOOTP])) >= 300


# === 1. DISCOVER -> OFFER =================================================================================
def test_a_discover_with_the_broadcast_flag_gets_a_broadcast_offer() -> None:
    lab = make()
    offer = lab.one(broadcast(message("discover", flags=0x8000, xid=77)))
    assert_from_server(offer)
    assert kind(offer) == OFFER
    assert (offer.dst, offer[IP].dst) == (BROADCAST, "255.255.255.255")
    assert offer[BOOTP].xid == 77 and offer[BOOTP].flags == 0x8000
    assert offer[BOOTP].chaddr[:6] == mac(CLIENT)
    yiaddr = IPv4Address(offer[BOOTP].yiaddr)
    assert yiaddr in IPv4Network("10.0.0.0/24") and yiaddr != IPv4Address(SERVER)
    assert options(offer)["server_id"] == SERVER
    [held] = lab.dhcp.leases.values()
    assert (held.address, held.bound, held.port, held.expires) == (yiaddr, False, PORT_A, NOW + OFFER_HOLD)
    assert lab.router.events[Event.DHCP_DISCOVER] == lab.router.events[Event.DHCP_OFFER] == 1
    assert lab.dhcp.bound(NOW) == []  # an offer is no lease


def test_a_discover_without_the_broadcast_flag_gets_an_offer_unicast_to_chaddr_at_yiaddr() -> None:
    lab = make()
    offer = lab.one(broadcast(message("discover")))
    assert_from_server(offer)
    assert offer.dst == CLIENT and offer[IP].dst == offer[BOOTP].yiaddr != "0.0.0.0"


def test_a_request_for_the_offer_gets_an_ack_with_every_option() -> None:
    lab = make(mtu=1400, lease_time=7200.0)
    offer = lab.one(broadcast(message("discover")))
    address = offer[BOOTP].yiaddr
    ack = lab.one(broadcast(message("request", xid=99, options=selecting(address))), NOW + 1)
    assert_from_server(ack)
    assert kind(ack) == ACK and ack[BOOTP].yiaddr == address and ack[BOOTP].xid == 99
    assert ack.dst == CLIENT and ack[IP].dst == address
    o = options(ack)
    assert o["server_id"] == SERVER
    assert o["subnet_mask"] == "255.255.255.0"
    assert o["router"] == SERVER
    assert o["name_server"] == SERVER
    assert (o["lease_time"], o["renewal_time"], o["rebinding_time"]) == (7200, 3600, 6300)
    raw = raw_options(ack)
    assert raw[15] == b"lab"  # the domain: the instance's name
    assert raw[119] == b"\x03lab\x00"  # RFC 3397: the search list, in DNS wire format
    assert raw[26] == (1400).to_bytes(2, "big")  # the segment's MTU
    assert 121 not in raw  # no static routes: the router option alone
    [lease] = lab.dhcp.bound(NOW + 1)
    assert (lease.mac, str(lease.address), lease.expires) == (mac(CLIENT), address, NOW + 1 + 7200)
    assert lab.router.events[Event.DHCP_ACK] == 1


def test_without_dns_no_name_server_and_without_a_domain_no_domain_options() -> None:
    lab = make(dns=False, domain=None)
    address = lab.lease()
    ack = lab.one(broadcast(message("request", options=selecting(address))))
    assert "name_server" not in options(ack)
    raw = raw_options(ack)
    assert 15 not in raw and 119 not in raw and raw[3] == IPv4Address(SERVER).packed


def test_static_routes_go_in_option_121_after_the_default_route_as_rfc_3442_has_them() -> None:
    """RFC 3442: each route as its width, only its significant octets, then the router; the default
    route first (a client taking 121 ignores the router option)."""
    routes = [("172.16.0.0/12", "10.0.0.5"), ("10.9.8.0/24", "10.0.0.1"), ("192.168.3.128/25", "10.0.0.6")]
    lab = make(routes=routes)
    offer = lab.one(broadcast(message("discover")))
    expected = (
        b"\x00" + bytes([10, 0, 0, 1])
        + b"\x0c" + bytes([172, 16]) + bytes([10, 0, 0, 5])
        + b"\x18" + bytes([10, 9, 8]) + bytes([10, 0, 0, 1])
        + b"\x19" + bytes([192, 168, 3, 128]) + bytes([10, 0, 0, 6])
    )  # fmt: skip
    assert raw_options(offer)[121] == expected
    assert str(options(offer)["router"]) == SERVER  # still there, for clients without 121


# === 2. REQUEST: INIT-REBOOT, RENEWING, another server ===================================================
def test_an_init_reboot_request_for_another_subnet_is_naked_by_broadcast() -> None:
    lab = make()
    nak = lab.one(broadcast(message("request", options=[("requested_addr", "192.168.1.50")])))
    assert_from_server(nak)
    assert kind(nak) == NAK
    assert (nak.dst, nak[IP].dst, nak[BOOTP].yiaddr) == (BROADCAST, "255.255.255.255", "0.0.0.0")
    assert lab.dhcp.leases == {} and lab.router.events[Event.DHCP_NAK] == 1


def test_an_init_reboot_request_for_an_address_someone_holds_is_naked() -> None:
    lab = make()
    taken = lab.lease(OTHER)
    nak = lab.one(broadcast(message("request", options=[("requested_addr", taken)])))
    assert kind(nak) == NAK
    assert [str(lease.address) for lease in lab.dhcp.bound(NOW)] == [taken]
    assert lab.dhcp.leases[mac(OTHER)].address == IPv4Address(taken)


def test_an_init_reboot_request_for_a_free_pool_address_is_acked() -> None:
    """We are the only server of our ports: a lease we forgot (a new `up`) is given back at once."""
    lab = make()
    ack = lab.one(broadcast(message("request", options=[("requested_addr", "10.0.0.77")])))
    assert kind(ack) == ACK and ack[BOOTP].yiaddr == "10.0.0.77"
    [lease] = lab.dhcp.bound(NOW)
    assert (lease.mac, str(lease.address)) == (mac(CLIENT), "10.0.0.77")


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.0", "10.0.0.255"])
def test_an_init_reboot_request_for_the_router_or_a_non_host_address_is_naked(address: str) -> None:
    lab = make()
    assert kind(lab.one(broadcast(message("request", options=[("requested_addr", address)])))) == NAK
    assert lab.dhcp.leases == {}


def test_a_selecting_request_without_an_offer_is_acked_if_free_and_naked_if_taken() -> None:
    """RFC 2131 4.3.2: the chosen server NAKs what it cannot satisfy. An offer that expired (or a
    server that restarted) can still satisfy a free address; a port's address it cannot."""
    lab = make()
    assert kind(lab.one(broadcast(message("request", options=selecting("10.0.0.50"))))) == ACK
    other = make()
    other.dhcp.set_static([IPv4Address("10.0.0.60")])
    assert kind(other.one(broadcast(message("request", options=selecting("10.0.0.60"))))) == NAK


@pytest.mark.parametrize("with_dns", [False, True])
def test_renewing_extends_the_lease_and_the_ack_goes_unicast_to_ciaddr(with_dns: bool) -> None:
    """A client at T1 unicasts to the server with ciaddr set: ACK to ciaddr at its MAC, the lease
    moved on from now (with a DNS server too, whose UDP check comes first in local delivery)."""
    lab = make(dns_server=with_dns)
    address = lab.lease()
    assert lab.dhcp.leases[mac(CLIENT)].expires == NOW + 3600
    later = NOW + 1800
    ack = lab.one(unicast(message("request", ciaddr=address), src=address), later)
    assert_from_server(ack)
    assert kind(ack) == ACK
    assert (ack.dst, ack[IP].dst, ack[BOOTP].ciaddr, ack[BOOTP].yiaddr) == (CLIENT, address, address, address)
    assert lab.dhcp.leases[mac(CLIENT)].expires == later + 3600
    [lease] = lab.dhcp.bound(NOW + 3600 + 1)  # past the first expiry, still bound
    assert str(lease.address) == address


def test_rebinding_by_broadcast_is_answered_to_ciaddr() -> None:
    lab = make()
    address = lab.lease()
    frame = broadcast(message("request", ciaddr=address), src=address)
    ack = lab.one(frame, NOW + 3200)
    assert kind(ack) == ACK and ack[IP].dst == address and ack.dst == CLIENT
    assert lab.dhcp.leases[mac(CLIENT)].expires == NOW + 3200 + 3600


def test_renewing_an_address_that_is_not_the_clients_is_naked() -> None:
    lab = make()
    lab.lease(CLIENT)
    theirs = lab.lease(OTHER)
    nak = lab.one(unicast(message("request", ciaddr=theirs), src=theirs), NOW + 10)
    assert kind(nak) == NAK
    assert lab.dhcp.leases[mac(OTHER)].address == IPv4Address(theirs)


def test_a_request_naming_another_server_frees_our_offer_and_gets_no_answer() -> None:
    lab = make()
    offer = lab.one(broadcast(message("discover")))
    request = message("request", options=selecting(offer[BOOTP].yiaddr, server="10.0.0.254"))
    assert lab.send(broadcast(request), NOW + 1) == []
    assert lab.dhcp.leases == {} and lab.dhcp.by_address == {}
    assert lab.router.events[Event.DHCP_OTHER_SERVER] == 1
    assert lab.dhcp.count[LAN] == 0


def test_a_request_naming_another_server_keeps_a_bound_lease() -> None:
    lab = make()
    address = lab.lease()
    lab.send(broadcast(message("request", options=selecting(address, server="10.0.0.254"))))
    assert [str(lease.address) for lease in lab.dhcp.bound(NOW)] == [address]


# === 3. The same address again; RELEASE; DECLINE =========================================================
def test_after_a_release_the_same_mac_gets_the_same_address_and_another_mac_another() -> None:
    lab = make()
    address = lab.lease()
    assert lab.send(unicast(message("release", ciaddr=address), src=address), NOW + 5) == []
    assert lab.dhcp.leases == {} and lab.dhcp.bound(NOW + 5) == []
    assert lab.router.events[Event.DHCP_RELEASE] == 1
    assert lab.lease(now=NOW + 10) == address
    assert lab.lease(OTHER, now=NOW + 10) != address


def test_after_expiry_the_same_mac_gets_the_same_address() -> None:
    lab = make(lease_time=60.0)
    address = lab.lease()
    lab.router.on_timer(NOW + 60)
    assert lab.dhcp.leases == {}
    assert lab.lease(now=NOW + 100) == address


def test_a_release_frees_the_address_for_another_mac() -> None:
    lab = make()
    address = lab.lease()
    asks = [("requested_addr", address)]
    third = "02:00:00:00:01:04"
    offer = lab.one(broadcast(message("discover", third, options=asks), third))
    assert offer[BOOTP].yiaddr != address  # held: another is offered
    lab.send(unicast(message("release", ciaddr=address), src=address))
    assert lab.dhcp.by_address.get(IPv4Address(address)) is None
    offer = lab.one(broadcast(message("discover", OTHER, options=asks), OTHER), NOW + 1)
    assert offer[BOOTP].yiaddr == address


def test_a_release_for_an_address_not_the_clients_changes_nothing() -> None:
    lab = make()
    address = lab.lease()
    lab.send(unicast(message("release", ciaddr="10.0.0.200"), src=address))
    assert [str(lease.address) for lease in lab.dhcp.bound(NOW)] == [address]


def test_a_declined_address_is_offered_to_no_one_for_the_hold_then_it_is_again() -> None:
    lab = make()
    address = lab.lease()
    decline = message("decline", options=[("requested_addr", address), ("server_id", SERVER)])
    assert lab.send(broadcast(decline), NOW + 1) == []
    assert lab.dhcp.leases == {} and lab.router.events[Event.DHCP_DECLINE] == 1
    offer = lab.one(broadcast(message("discover")), NOW + 2)
    assert offer[BOOTP].yiaddr != address  # not even to the client that declined it
    asks = [("requested_addr", address)]
    third = "02:00:00:00:01:04"
    offer = lab.one(broadcast(message("discover", third, options=asks), third), NOW + DECLINED_HOLD)
    assert offer[BOOTP].yiaddr != address
    offer = lab.one(broadcast(message("discover", OTHER, options=asks), OTHER), NOW + 1 + DECLINED_HOLD)
    assert offer[BOOTP].yiaddr == address
    lab.router.on_timer(NOW + 1 + DECLINED_HOLD + OFFER_HOLD)
    assert lab.dhcp.declined == {}


# === 4. Expiry on the fake clock ========================================================================
def test_a_bound_lease_is_gone_after_the_lease_time() -> None:
    lab = make(lease_time=120.0)
    address = lab.lease()
    names = {PORT_A: "a"}
    lab.router.on_timer(NOW + 60)
    assert [row["address"] for row in lab.dhcp.table(NOW + 119, names)] == [address]
    assert lab.dhcp.table(NOW + 119, names)[0]["port"] == "a"
    assert lab.dhcp.bound(NOW + 120) == []  # bound() no longer lists it, even before the sweep
    lab.router.on_timer(NOW + 119.5)
    assert mac(CLIENT) in lab.dhcp.leases
    version = lab.dhcp.version
    lab.router.on_timer(NOW + 120)
    assert lab.dhcp.leases == {} and lab.dhcp.by_address == {} and lab.dhcp.count[LAN] == 0
    assert lab.dhcp.table(NOW + 120, names) == []
    assert lab.router.events[Event.DHCP_LEASE_EXPIRED] == 1
    assert lab.dhcp.version > version  # the lease file is rewritten


def test_an_offer_never_requested_expires_after_the_offer_hold() -> None:
    lab = make()
    lab.one(broadcast(message("discover")))
    assert lab.router.next_deadline() == NOW + OFFER_HOLD
    lab.router.on_timer(NOW + OFFER_HOLD - 0.5)
    assert mac(CLIENT) in lab.dhcp.leases
    lab.router.on_timer(NOW + OFFER_HOLD)
    assert lab.dhcp.leases == {}
    assert lab.router.events[Event.DHCP_OFFER_EXPIRED] == 1
    assert lab.router.events[Event.DHCP_LEASE_EXPIRED] == 0
    assert lab.dhcp.next_deadline() is None


def test_an_ack_turns_the_offer_into_a_lease_that_outlives_the_offer_hold() -> None:
    lab = make()
    lab.lease()
    lab.router.on_timer(NOW + OFFER_HOLD)
    assert len(lab.dhcp.bound(NOW + OFFER_HOLD)) == 1
    deadline = lab.dhcp.next_deadline()
    assert deadline is not None and deadline >= NOW + OFFER_HOLD


# === 5. The pool ==========================================================================================
def test_the_pool_skips_the_router_the_ports_and_others_reservations_and_is_bounded() -> None:
    """A /28: 14 hosts, less the router (.1), two ports' fixed addresses and OTHER's reservation: 10
    offers to a flood of 20 new MACs, the rest dropped as pool-exhausted in the port's ledger. A client
    bound before the flood keeps its lease and renews it."""
    lab = make("10.0.0.1/28", reservations={OTHER: ("10.0.0.4", None)})
    lab.dhcp.set_static([IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")])
    bound = lab.lease()
    offered = {bound}
    exhausted = 0
    for i in range(20):
        client = client_mac(i)
        out = lab.send(broadcast(message("discover", client), client), NOW + 1)
        if out:
            offered.add(out[0][BOOTP].yiaddr)
        else:
            exhausted += 1
    hosts = {str(a) for a in IPv4Network("10.0.0.0/28").hosts()}
    assert offered == hosts - {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
    assert exhausted == 20 - 9
    assert lab.ledger == Counter({Drop.DHCP_POOL_EXHAUSTED: exhausted})
    assert lab.router.drops[Drop.DHCP_POOL_EXHAUSTED] == exhausted
    assert lab.dhcp.count[LAN] == 10
    ack = lab.one(unicast(message("request", ciaddr=bound), src=bound), NOW + 1800)
    assert kind(ack) == ACK and ack[BOOTP].yiaddr == bound
    assert lab.dhcp.leases[mac(CLIENT)].expires == NOW + 1800 + 3600
    # OTHER's reservation was kept for it through the flood
    assert lab.lease(OTHER, now=NOW + 2) == "10.0.0.4"


def test_a_full_pool_gives_again_once_an_offer_expires() -> None:
    lab = make(ranges=[("10.0.0.100", "10.0.0.101")])
    lab.one(broadcast(message("discover", client_mac(1)), client_mac(1)))
    lab.one(broadcast(message("discover", client_mac(2)), client_mac(2)))
    assert lab.send(broadcast(message("discover", client_mac(3)), client_mac(3))) == []
    assert lab.ledger[Drop.DHCP_POOL_EXHAUSTED] == 1
    lab.router.on_timer(NOW + OFFER_HOLD)
    offer = lab.one(broadcast(message("discover", client_mac(3)), client_mac(3)), NOW + OFFER_HOLD)
    assert offer[BOOTP].yiaddr in ("10.0.0.100", "10.0.0.101")


def test_a_full_pool_gives_an_expired_offer_before_the_sweep() -> None:
    """Found full once, the pool is not scanned again while nothing changes (a flood costs little);
    but an offer that has run out frees its address at once, sweep or not."""
    lab = make(ranges=[("10.0.0.100", "10.0.0.100")])
    lab.one(broadcast(message("discover", client_mac(1)), client_mac(1)))
    assert lab.send(broadcast(message("discover", client_mac(2)), client_mac(2)), NOW + 1) == []
    assert lab.send(broadcast(message("discover", client_mac(2)), client_mac(2)), NOW + 2) == []
    offer = lab.one(broadcast(message("discover", client_mac(2)), client_mac(2)), NOW + OFFER_HOLD)
    assert offer[BOOTP].yiaddr == "10.0.0.100"
    assert lab.ledger[Drop.DHCP_POOL_EXHAUSTED] == 2


def test_a_declined_address_in_a_full_pool_is_offered_again_after_the_hold() -> None:
    lab = make(ranges=[("10.0.0.100", "10.0.0.100")])
    address = lab.lease()
    lab.send(broadcast(message("decline", options=[("requested_addr", address)])), NOW + 1)
    assert lab.send(broadcast(message("discover", OTHER), OTHER), NOW + 2) == []
    lab.router.on_timer(NOW + 100)  # nothing left to sweep: no timer until something changes
    assert lab.send(broadcast(message("discover", OTHER), OTHER), NOW + DECLINED_HOLD) == []
    offer = lab.one(broadcast(message("discover", OTHER), OTHER), NOW + 1 + DECLINED_HOLD)
    assert offer[BOOTP].yiaddr == address


@pytest.mark.parametrize("network", ["10.0.0.0/31", "10.0.0.0/32"])
def test_a_segment_with_no_host_address_to_give_is_exhausted_not_an_exception(network: str) -> None:
    server = DhcpServer({LAN: Scope(LAN, IPv4Network(network), IPv4Address("10.0.0.0"), ())})
    payload = bytes(message("discover"))
    assert server.receive(LAN, PORT_A, mac(CLIENT), payload, NOW, Counter()) is Drop.DHCP_POOL_EXHAUSTED
    assert server.leases == {}


def test_an_init_reboot_request_for_a_ports_fixed_address_is_naked() -> None:
    lab = make()
    lab.dhcp.set_static([IPv4Address("10.0.0.2")])
    assert kind(lab.one(broadcast(message("request", options=[("requested_addr", "10.0.0.2")])))) == NAK
    offer = lab.one(broadcast(message("discover", options=[("requested_addr", "10.0.0.2")])))
    assert offer[BOOTP].yiaddr != "10.0.0.2"


def test_the_range_bounds_the_pool() -> None:
    lab = make(ranges=[("10.0.0.100", "10.0.0.102")])
    got = {lab.lease(client_mac(i)) for i in range(3)}
    assert got == {"10.0.0.100", "10.0.0.101", "10.0.0.102"}
    assert lab.send(broadcast(message("discover", client_mac(3)), client_mac(3))) == []
    assert lab.ledger[Drop.DHCP_POOL_EXHAUSTED] == 1


def test_a_requested_address_outside_the_range_is_not_offered() -> None:
    lab = make(ranges=[("10.0.0.100", "10.0.0.102")])
    offer = lab.one(broadcast(message("discover", options=[("requested_addr", "10.0.0.50")])))
    assert offer[BOOTP].yiaddr in ("10.0.0.100", "10.0.0.101", "10.0.0.102")
    assert (
        kind(lab.one(broadcast(message("request", OTHER, options=[("requested_addr", "10.0.0.50")]), OTHER)))
        == NAK
    )


def test_a_requested_free_address_in_the_pool_is_offered() -> None:
    lab = make()
    offer = lab.one(broadcast(message("discover", options=[("requested_addr", "10.0.0.42")])))
    assert offer[BOOTP].yiaddr == "10.0.0.42"


def test_a_reserved_mac_gets_its_address_outside_the_range_and_its_name_over_the_clients() -> None:
    lab = make(ranges=[("10.0.0.100", "10.0.0.110")], reservations={CLIENT: ("10.0.0.10", "web")})
    address = lab.lease(options=[("hostname", "laptop")])
    assert address == "10.0.0.10"
    [lease] = lab.dhcp.bound(NOW)
    assert lease.hostname == "web"


def test_a_reserved_address_is_not_given_to_another_mac_even_on_request() -> None:
    lab = make(reservations={CLIENT: ("10.0.0.10", None)})
    offer = lab.one(broadcast(message("discover", OTHER, options=[("requested_addr", "10.0.0.10")]), OTHER))
    assert offer[BOOTP].yiaddr != "10.0.0.10"
    nak = lab.one(
        broadcast(
            message("request", "02:00:00:00:01:09", options=[("requested_addr", "10.0.0.10")]),
            "02:00:00:00:01:09",
        )
    )
    assert kind(nak) == NAK


def test_a_reservation_held_by_an_unexpired_lease_of_another_mac_is_exhausted_not_stolen() -> None:
    """A reservation added for an address someone else already holds: the reserved MAC waits."""
    lab = make()
    taken = lab.lease(OTHER)
    lab.dhcp.reservations[mac(CLIENT)] = Reservation(IPv4Address(taken), None)
    assert lab.send(broadcast(message("discover"))) == []
    assert lab.ledger[Drop.DHCP_POOL_EXHAUSTED] == 1


def test_the_leases_bound_stops_offers_before_the_pool_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp_module, "LEASES_MAX", 3)
    lab = make()
    addresses = [lab.lease(client_mac(i)) for i in range(3)]
    assert lab.send(broadcast(message("discover", client_mac(3)), client_mac(3))) == []
    assert lab.ledger[Drop.DHCP_POOL_EXHAUSTED] == 1
    # a bound client still renews at the bound
    ack = lab.one(
        unicast(message("request", ciaddr=addresses[0], chaddr=client_mac(0)), addresses[0], client_mac(0))
    )
    assert kind(ack) == ACK
    lab.send(unicast(message("release", client_mac(1), ciaddr=addresses[1]), addresses[1], client_mac(1)))
    assert kind(lab.one(broadcast(message("discover", client_mac(3)), client_mac(3)))) == OFFER


def test_the_token_bucket_drops_messages_over_the_rate_within_one_instant() -> None:
    lab = make(rate=1.0, burst=3)
    for i in range(3):
        assert len(lab.send(broadcast(message("discover", client_mac(i)), client_mac(i)))) == 1
    assert lab.send(broadcast(message("discover", client_mac(3)), client_mac(3))) == []
    assert lab.ledger == Counter({Drop.DHCP_RATE_LIMITED: 1})
    assert mac(client_mac(3)) not in lab.dhcp.leases
    assert len(lab.send(broadcast(message("discover", client_mac(3)), client_mac(3)), NOW + 1)) == 1


def test_the_rate_limit_is_checked_before_parsing() -> None:
    """A flood of garbage costs the bucket too: scapy's parse is the expensive part."""
    lab = make(rate=1.0, burst=1)
    lab.send(broadcast(Raw(b"\x01" * 300)))
    lab.send(broadcast(Raw(b"\x01" * 300)))
    assert lab.ledger == Counter({Drop.DHCP_MALFORMED: 1, Drop.DHCP_RATE_LIMITED: 1})


# === 6. Ports that go ======================================================================================
def test_forgetting_a_port_drops_the_leases_made_through_it_only() -> None:
    lab = make()
    lab.lease(CLIENT, port=PORT_A)
    theirs = lab.lease(OTHER, port=PORT_B)
    assert lab.router.forget_port(PORT_A) == 1
    assert [(lease.mac, str(lease.address)) for lease in lab.dhcp.bound(NOW)] == [(mac(OTHER), theirs)]
    assert lab.router.events[Event.DHCP_PORT_LEASES_FORGOTTEN] == 1
    assert lab.dhcp.count[LAN] == 1
    assert lab.router.forget_port(PORT_A) == 0


def test_a_renewal_through_another_port_moves_the_lease_to_it() -> None:
    lab = make()
    address = lab.lease(port=PORT_A)
    lab.one(unicast(message("request", ciaddr=address), src=address), NOW + 10, port=PORT_B)
    assert lab.router.forget_port(PORT_A) == 0
    assert lab.router.forget_port(PORT_B) == 1


def test_removing_a_port_from_the_datapath_forgets_its_leases() -> None:
    dp = Datapath()
    lan, dmz = dp.add_segment("lan"), dp.add_segment("dmz")
    a, b = dp.add_port("a", lan), dp.add_port("b", lan)
    scope = Scope(lan, IPv4Network("10.0.0.0/24"), IPv4Address(SERVER), ())
    server = DhcpServer({lan: scope}, domain="lab")
    router = Router(
        [
            Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.0.0.1/24")),
            Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24")),
        ],
        dhcp=server,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ)})
    for port, client in ((a, CLIENT), (b, OTHER)):
        dp.receive(port, broadcast(message("discover", client), client), NOW)
        address = str(server.leases[mac(client)].address)
        dp.receive(port, broadcast(message("request", client, options=selecting(address)), client), NOW)
    assert {lease.mac: lease.port for lease in server.bound(NOW)} == {mac(CLIENT): a, mac(OTHER): b}
    dp.remove_port(a)
    assert [lease.mac for lease in server.bound(NOW)] == [mac(OTHER)]
    assert router.events[Event.DHCP_PORT_LEASES_FORGOTTEN] == 1


# === 7. What is not served, or not DHCP ===================================================================
OFFER_TYPE: list[Any] = [("message-type", "offer"), "end"]
DISCOVER_TYPE: list[Any] = [("message-type", "discover"), "end"]


def _bad_ip_checksum() -> bytes:
    frame = bytearray(broadcast(message("discover")))
    frame[10 + 14 + 10] ^= 0x01  # the IPv4 header checksum
    return bytes(frame)


def _bad_udp_checksum() -> bytes:
    frame = bytearray(broadcast(message("discover")))
    frame[10 + 14 + 20 + 6] ^= 0x01
    return bytes(frame)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (broadcast(Raw(b"\xde\xad\xbe\xef" * 75)), Drop.DHCP_MALFORMED),
        (broadcast(Raw(b"")), Drop.DHCP_MALFORMED),
        (broadcast(BOOTP(op=2, chaddr=mac(CLIENT)) / DHCP(options=OFFER_TYPE)), Drop.DHCP_MALFORMED),
        (broadcast(BOOTP(op=1, chaddr=mac(CLIENT))), Drop.DHCP_MALFORMED),  # BOOTP, no DHCP cookie
        (broadcast(BOOTP(op=1, chaddr=mac(CLIENT)) / DHCP(options=["end"])), Drop.DHCP_MALFORMED),  # no type
        (broadcast(BOOTP(htype=6, chaddr=mac(CLIENT)) / DHCP(options=DISCOVER_TYPE)), Drop.DHCP_MALFORMED),
        (broadcast(message("offer")), Drop.DHCP_MALFORMED),  # a server's message type
        (broadcast(message("discover"), flags="MF"), Drop.DHCP_MALFORMED),  # a fragment
        (_bad_udp_checksum(), Drop.DHCP_MALFORMED),
        (broadcast(message("discover", chaddr=OTHER)), Drop.DHCP_CHADDR_MISMATCH),
        (broadcast(message("discover", giaddr="10.9.9.9")), Drop.DHCP_NOT_SERVED),
        (_bad_ip_checksum(), Drop.IP_BAD_CHECKSUM),
        (broadcast(message("discover"), len=2000), Drop.IP_BAD_LENGTH),
    ],
    ids=[
        "garbage", "empty", "bootreply", "no-cookie", "no-type", "not-ethernet", "offer-type", "fragment",
        "udp-checksum", "chaddr", "relayed", "ip-checksum", "ip-length",
    ],
)  # fmt: skip
def test_a_message_the_server_cannot_take_is_a_named_drop(frame: bytes, reason: Drop) -> None:
    lab = make()
    assert lab.send(frame) == []
    assert lab.ledger == Counter({reason: 1})
    assert lab.router.drops == Counter({reason: 1})
    assert lab.dhcp.leases == {}


def test_a_client_behind_a_tunnel_is_not_served() -> None:
    lab = make()
    lab.router.foreign_ports = {PORT_B}
    assert lab.send(broadcast(message("discover")), port=PORT_B) == []
    assert lab.ledger == Counter({Drop.DHCP_NOT_SERVED: 1})
    assert lab.router.events[Event.DHCP_DISCOVER] == 0
    assert len(lab.send(broadcast(message("discover")), port=PORT_A)) == 1


def test_the_uplink_is_never_served_even_with_a_scope() -> None:
    lab = make(uplink_scope=True)
    frame = ZERO_VNET_HDR + bytes(
        Ether(src=CLIENT, dst=BROADCAST)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / message("discover")
    )
    assert lab.send(frame, iface=WAN) == []
    assert lab.ledger == Counter({Drop.DHCP_NOT_SERVED: 1})
    assert lab.dhcp.leases == {}


def test_a_segment_without_a_scope_is_not_served() -> None:
    lab = make()
    frame = ZERO_VNET_HDR + bytes(
        Ether(src=CLIENT, dst=BROADCAST)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / message("discover")
    )
    assert lab.send(frame, iface=DMZ) == []
    assert lab.ledger == Counter({Drop.DHCP_NOT_SERVED: 1})


def test_a_direct_call_for_an_unserved_segment_or_with_giaddr_raises_nothing() -> None:
    lab = make()
    payload = bytes(message("discover"))
    assert lab.dhcp.receive(DMZ, PORT_A, mac(CLIENT), payload, NOW, Counter()) is Drop.DHCP_NOT_SERVED
    for junk in (b"", b"\x01", bytes(300), b"\x01\x01\x06\x00" + bytes(232) + b"\x63\x82\x53\x63\x35\x01"):
        assert lab.dhcp.receive(LAN, PORT_A, mac(CLIENT), junk, NOW, Counter()) is Drop.DHCP_MALFORMED


def test_udp_to_port_67_of_another_host_is_routed_not_taken() -> None:
    lab = make()
    lab.router.arp.learn(int(IPv4Address("10.2.0.9")), mac("02:00:00:00:02:09"), DMZ, 0.0)
    frame = ZERO_VNET_HDR + bytes(
        Ether(src=CLIENT, dst=R_LAN)
        / IP(src="10.0.0.50", dst="10.2.0.9", ttl=9)
        / UDP(sport=68, dport=67)
        / message("discover")
    )
    frames = lab.router.decide(LAN, frame, NOW, lab.ledger, PORT_A).frames
    [(iface, out)] = frames
    p = Ether(out[len(ZERO_VNET_HDR) :])
    assert iface == DMZ and p[IP].dst == "10.2.0.9" and p[IP].ttl == 8 and p.dst == "02:00:00:00:02:09"
    assert lab.dhcp.leases == {} and lab.router.events[Event.DHCP_DISCOVER] == 0
    assert lab.ledger == Counter()


def test_a_unicast_to_the_router_on_another_port_than_67_is_refused_as_usual() -> None:
    lab = make()
    lab.router.arp.learn(int(IPv4Address("10.0.0.50")), mac(CLIENT), LAN, 0.0)
    frame = ZERO_VNET_HDR + bytes(
        Ether(src=CLIENT, dst=R_LAN)
        / IP(src="10.0.0.50", dst=SERVER)
        / UDP(sport=68, dport=69)
        / message("discover")
    )
    lab.send(frame)
    assert lab.ledger == Counter({Drop.TO_ROUTER: 1}) and lab.dhcp.leases == {}


# === 8. Host names ==========================================================================================
@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (("hostname", "web"), "web"),
        (("hostname", "Web-1.example.com"), "web-1"),
        (("hostname", "bad_name"), None),
        (("hostname", "-web"), None),
        (("hostname", "web-"), None),
        (("hostname", "x" * 64), None),
        (("hostname", b"caf\xc3\xa9"), None),
        (("client_FQDN", b"\x01\x00\x00\x04host\x07example\x00"), "host"),  # RFC 4702 wire format
        (("client_FQDN", b"\x00\x00\x00Host.example"), "host"),  # the old ASCII form
        (("client_FQDN", b"\x01\x00\x00\x03a_b\x00"), None),
        (("client_FQDN", b"\x01\x00"), None),
    ],
)
def test_the_clients_name_becomes_the_leases_sanitized(option: tuple[str, Any], expected: str | None) -> None:
    lab = make()
    lab.lease(options=[option])
    [lease] = lab.dhcp.bound(NOW)
    assert lease.hostname == expected
    assert lab.dhcp.table(NOW, {})[0]["hostname"] == (expected or "")


def test_a_renewal_without_a_name_keeps_the_name() -> None:
    lab = make()
    address = lab.lease(options=[("hostname", "web")])
    lab.one(unicast(message("request", ciaddr=address), src=address), NOW + 10)
    assert lab.dhcp.leases[mac(CLIENT)].hostname == "web"


# === 9. A trace commits nothing ===========================================================================
def _traced_world() -> tuple[Datapath, DhcpServer, int]:
    dp = Datapath()
    lan = dp.add_segment("lan")
    a = dp.add_port("a", lan)
    server = DhcpServer({lan: Scope(lan, IPv4Network("10.0.0.0/24"), IPv4Address(SERVER), ())}, domain="lab")
    router = Router([Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.0.0.1/24"))], dhcp=server)
    dp.attach_router(router, {lan: mac(R_LAN)})
    return dp, server, a


def test_a_traced_discover_is_answered_in_the_trace_and_leaves_the_leases_unchanged() -> None:
    dp, server, a = _traced_world()
    result = trace(dp, a, broadcast(message("discover")), NOW)
    assert any(stage == "DHCP" and "OFFER" in text for stage, text in result.stages), result.stages
    assert server.leases == {} and server.by_address == {} and server.count == {0: 0}
    assert server.version == 0 and server.next_sweep is None
    assert server.bucket.tokens == server.burst
    assert dp.router is not None and dp.router.events[Event.DHCP_OFFER] == 0


def test_a_traced_release_leaves_the_lease_in_place() -> None:
    dp, server, a = _traced_world()
    dp.receive(a, broadcast(message("discover")), NOW)
    address = str(server.leases[mac(CLIENT)].address)
    dp.receive(a, broadcast(message("request", options=selecting(address))), NOW)
    before = dict(server.leases), dict(server.by_address), server.version
    trace(dp, a, broadcast(message("release", ciaddr=address), src=address), NOW + 1)
    assert (dict(server.leases), dict(server.by_address), server.version) == before


# === 10. INFORM ===========================================================================================
def test_an_inform_gets_an_ack_with_the_parameters_and_no_lease() -> None:
    lab = make()
    lab.router.arp.learn(int(IPv4Address("10.0.0.50")), mac(CLIENT), LAN, 0.0)
    ack = lab.one(unicast(message("inform", ciaddr="10.0.0.50"), src="10.0.0.50"))
    assert kind(ack) == ACK and ack[BOOTP].yiaddr == "0.0.0.0" and ack[IP].dst == "10.0.0.50"
    o = options(ack)
    assert "lease_time" not in o and o["router"] == SERVER
    assert lab.dhcp.leases == {}
