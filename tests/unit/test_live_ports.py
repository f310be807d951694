"""Live ports in the core: Datapath.remove_port and move_port with the router attached, and
Router.forget_addresses (what `vswitch port del` and `port move` ask of the core).

The world: lan (a, b) 10.1.0.0/24 and fd00:1::/64, dmz (c) 10.2.0.0/24 and fd00:2::/64, wan (up)
198.18.0.0/24, all routed, masquerade to 198.18.0.2, the flow cache on. Every host has told the router
its MAC (ARP and NDP), so the router's tables and the FDB know each of them; a test takes a port away
or moves it and checks that nothing still leads to it where it was. Time is passed in, never slept.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from typing import NamedTuple

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from vswitch.core.conntrack import KEY, KEY6, Flow
from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.l2 import Switch
from vswitch.core.nat import NatConfig
from vswitch.core.routed import Interface
from vswitch.core.router import Router
from vswitch.core.router6 import RaConfig
from vswitch.core.routes import Route
from vswitch.core.vlan import Trunk
from vswitch.core.wire import BROADCAST_MAC, ZERO_VNET_HDR

NOW = 1.0
NAT_IP, UPSTREAM_IP, REMOTE = "198.18.0.2", "198.18.0.1", "198.19.5.5"


class Host(NamedTuple):
    mac: str
    ip: str
    ip6: str | None
    gateway_mac: str
    gateway: str
    gateway6: str | None


R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
HOSTS = {
    "a": Host("02:00:00:00:01:0a", "10.1.0.2", "fd00:1::a", R_LAN, "10.1.0.1", "fd00:1::1"),
    "b": Host("02:00:00:00:01:0b", "10.1.0.3", "fd00:1::b", R_LAN, "10.1.0.1", "fd00:1::1"),
    "c": Host("02:00:00:00:02:0c", "10.2.0.2", "fd00:2::c", R_DMZ, "10.2.0.1", "fd00:2::1"),
    "up": Host("02:00:00:00:00:ff", UPSTREAM_IP, None, R_WAN, NAT_IP, None),
}


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def eth(src: str, dst: str, l3: Packet) -> bytes:
    return ZERO_VNET_HDR + bytes(Ether(src=src, dst=dst) / l3)


def arp_request(h: Host, target: str) -> bytes:
    return eth(h.mac, "ff:ff:ff:ff:ff:ff", ARP(op=1, hwsrc=h.mac, psrc=h.ip, pdst=target))


def solicit(h: Host) -> bytes:
    """h's neighbour solicitation for its gateway, with its link-layer address (the router learns it)."""
    assert h.ip6 is not None and h.gateway6 is not None
    tail = IPv6Address(h.gateway6).packed[13:]
    group = str(IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + tail))
    group_mac = "33:33:ff:" + ":".join(f"{x:02x}" for x in tail)
    l3 = IPv6(src=h.ip6, dst=group, hlim=255) / ICMPv6ND_NS(tgt=h.gateway6)
    return eth(h.mac, group_mac, l3 / ICMPv6NDOptSrcLLAddr(lladdr=h.mac))


def udp(h: Host, dst: str, sport: int = 4000) -> bytes:
    """A UDP datagram from h to dst, through its gateway."""
    return eth(h.mac, h.gateway_mac, IP(src=h.ip, dst=dst, ttl=64) / UDP(sport=sport, dport=53) / b"q")


def tcp(h: Host, dst: str, flags: str, sport: int = 40000) -> bytes:
    return eth(h.mac, h.gateway_mac, IP(src=h.ip, dst=dst, ttl=64) / TCP(sport=sport, dport=80, flags=flags))


@dataclass
class World:
    dp: Datapath
    router: Router
    ports: dict[str, int]
    segments: dict[str, int]

    def send(self, name: str, buf: bytes, now: float = NOW) -> list[int]:
        """The ports a frame from name's port goes out of (every copy), in order."""
        return out_ports(self.dp.receive(self.ports[name], buf, now))

    def switch(self, segment: str) -> Switch:
        return self.dp.segments[self.segments[segment]].switch

    def fdb_ports(self) -> set[int]:
        return {e.port for seg in self.dp.segments for e in seg.switch.fdb.entries.values()}

    def neighbour_macs(self) -> tuple[set[bytes], set[bytes]]:
        """The MACs the router's ARP and NDP caches resolve to."""
        assert self.router.v6 is not None
        arp = {e.mac for e in self.router.arp.entries.values()}
        return arp, {e.mac for e in self.router.v6.nd.entries.values()}


def broadcast(n: int) -> bytes:
    """A broadcast frame from 02:00:00:00:00:0n (an ARP-sized one: the switch only reads the MACs)."""
    return ZERO_VNET_HDR + BROADCAST_MAC + bytes((2, 0, 0, 0, 0, n)) + b"\x08\x06" + bytes(46)


def out_ports(verdict: Verdict) -> list[int]:
    if verdict is None:
        return []
    if isinstance(verdict, int):
        return [verdict]
    if isinstance(verdict, tuple):
        return list(verdict)
    return [port for port, _ in verdict]


def world(flow_cache: bool = True) -> World:
    dp = Datapath(flow_cache_max=8192 if flow_cache else 0)
    segments = {name: dp.add_segment(name) for name in ("lan", "dmz", "wan")}
    where = {"a": "lan", "b": "lan", "c": "dmz", "up": "wan"}
    ports = {name: dp.add_port(name, segments[seg]) for name, seg in where.items()}
    lan, dmz, wan = segments["lan"], segments["dmz"], segments["wan"]
    nat = NatConfig(wan, IPv4Address(NAT_IP), [IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24")])
    router = Router(
        [
            Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24"),
                      address6=IPv6Interface("fd00:1::1/64")),
            Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24"),
                      address6=IPv6Interface("fd00:2::1/64")),
            Interface(wan, "wan", mac(R_WAN), IPv4Interface(f"{NAT_IP}/24"), uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address(UPSTREAM_IP), wan)],
        nat,
        ra=RaConfig(reply_delay=0.0),
    )  # fmt: skip
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    w = World(dp, router, ports, segments)
    for name, h in HOSTS.items():
        w.send(name, arp_request(h, h.gateway), 0.0)
        if h.ip6 is not None:
            w.send(name, solicit(h), 0.0)
    arp, nd = w.neighbour_macs()
    assert arp == {mac(h.mac) for h in HOSTS.values()}
    assert nd == {mac(h.mac) for h in HOSTS.values() if h.ip6 is not None}
    return w


def cached_udp_to_b(w: World) -> bytes:
    """A UDP flow c -> b (dmz to lan, routed, not NAT-ed) whose action the flow cache holds: its
    next packet, which hits."""
    pkt = udp(HOSTS["c"], HOSTS["b"].ip)
    assert w.send("c", pkt) == [w.ports["b"]]  # the slow path, installed
    flows = w.dp.flows
    assert flows is not None and len(flows) == 1
    assert flows.forward(w.segments["dmz"], pkt, NOW, dry_run=True) is not None
    return pkt


# --- remove_port ---------------------------------------------------------------------------------------
def test_removed_port_leaves_every_flood_set_and_its_fdb_entries_go() -> None:
    w = world()
    b = w.ports["b"]
    lan = w.switch("lan")
    assert b in lan.flood_sets[w.ports["a"]]
    w.dp.remove_port(b)
    assert b not in lan.ports
    assert b not in lan.flood_sets
    assert all(b not in targets for targets in lan.flood_sets.values())  # the router's too
    assert b not in w.dp.segments[w.segments["lan"]].ports
    assert b not in w.fdb_ports()
    assert mac(HOSTS["b"].mac) not in lan.fdb.entries
    assert mac(HOSTS["a"].mac) in lan.fdb.entries  # the others stay


def test_no_frame_is_switched_to_a_removed_port() -> None:
    w = world()
    a, b, c = HOSTS["a"], HOSTS["b"], HOSTS["c"]
    assert w.send("a", eth(a.mac, b.mac, IP(src=a.ip, dst=b.ip) / UDP())) == [w.ports["b"]]
    w.dp.remove_port(w.ports["b"])
    # To its MAC (unknown now: flooded), a broadcast, and routed to its address (the router asks
    # again for it, by a broadcast on lan): none of them reaches b.
    for name, buf in (
        ("a", eth(a.mac, b.mac, IP(src=a.ip, dst=b.ip) / UDP())),
        ("a", eth(a.mac, "ff:ff:ff:ff:ff:ff", IP(src=a.ip, dst="10.1.0.255") / UDP())),
        ("c", udp(c, b.ip)),
    ):
        assert w.ports["b"] not in w.send(name, buf)


def test_removed_ports_arp_and_ndp_entries_go() -> None:
    w = world()
    gone = w.dp.remove_port(w.ports["b"])
    assert gone == {mac(HOSTS["b"].mac)}
    arp, nd = w.neighbour_macs()
    assert mac(HOSTS["b"].mac) not in arp and mac(HOSTS["b"].mac) not in nd
    assert mac(HOSTS["a"].mac) in arp and mac(HOSTS["a"].mac) in nd  # a neighbour on the same segment stays


def test_a_cached_flow_to_a_removed_port_misses() -> None:
    w = world()
    pkt = cached_udp_to_b(w)
    w.dp.remove_port(w.ports["b"])
    flows = w.dp.flows
    assert flows is not None
    assert flows.forward(w.segments["dmz"], pkt, NOW, dry_run=True) is None
    # The slow path has no MAC for b: it parks the packet and asks for it, on lan, which b left.
    out = w.send("c", pkt)
    assert w.ports["b"] not in out
    assert flows.forward(w.segments["dmz"], pkt, NOW, dry_run=True) is None  # nothing fresh installed


def test_remove_port_on_a_switched_segment() -> None:
    """No router: the FDB and the flood sets alone, and the segment's decision (the shell's
    forwarder there) never names the port again."""
    dp = Datapath()
    seg = dp.add_segment("sw")
    p = [dp.add_port(f"p{i}", seg) for i in range(3)]
    macs = [bytes((2, 0, 0, 0, 0, i + 1)) for i in range(3)]
    for port, i in zip(p, range(1, 4), strict=True):
        dp.receive(port, broadcast(i), NOW)
    assert dp.remove_port(p[1]) == {macs[1]}
    decide = dp.forwarder(p[0])
    to_gone = ZERO_VNET_HDR + macs[1] + macs[0] + b"\x08\x00" + bytes(46)
    assert decide(p[0], to_gone, NOW) == (p[2],)  # unknown now: flooded, to p2 alone
    assert dp.segments[seg].switch.flood_sets == {p[0]: (p[2],), p[2]: (p[0],)}


# --- Router.forget_addresses -----------------------------------------------------------------------
def test_forget_addresses_removes_the_flows_and_nat_mappings_of_an_address() -> None:
    w = world()
    a, b = HOSTS["a"], HOSTS["b"]
    nat = w.router.nat
    assert nat is not None
    assert w.send("a", tcp(a, REMOTE, "S")) == [w.ports["up"]]
    assert w.send("b", tcp(b, REMOTE, "S", sport=40001)) == [w.ports["up"]]
    assert w.send("a", udp(a, REMOTE, sport=5000)) == [w.ports["up"]]
    assert len(nat.conntrack) == 3 and len(nat.mappings) == 3
    assert w.router.forget_addresses({IPv4Address(a.ip).packed}) == 2
    assert len(nat.conntrack) == 1 and len(nat.mappings) == 1  # b's flow and its mapping stay
    (flow,) = nat.conntrack.flows
    assert IPv4Address(b.ip).packed in flow.orig
    assert w.router.forget_addresses({IPv4Address("10.1.0.99").packed}) == 0


def test_forget_addresses_also_forgets_the_cached_flows_of_the_address() -> None:
    """A NAT-ed flow a -> REMOTE, established and cached both ways; forgetting a's address drops
    both entries: the reply from outside misses, and its next packet is a new flow to conntrack."""
    w = world()
    a, up = HOSTS["a"], HOSTS["up"]
    w.send("a", tcp(a, REMOTE, "S"))
    nat = w.router.nat
    assert nat is not None
    (flow,) = nat.conntrack.flows
    _, _, _, _, ext = KEY.unpack(flow.reply)  # the reply as it comes back: to NAT_IP, port ext
    reply = eth(up.mac, R_WAN, IP(src=REMOTE, dst=NAT_IP, ttl=64) / TCP(sport=80, dport=ext, flags="SA"))
    assert w.send("up", reply) == [w.ports["a"]]
    ack = tcp(a, REMOTE, "A")
    w.send("a", ack)  # established: the slow path installs the action
    w.send("a", ack)
    flows = w.dp.flows
    assert flows is not None
    lan = w.segments["lan"]
    assert flows.forward(lan, ack, NOW, dry_run=True) is not None
    assert w.router.forget_addresses({IPv4Address(a.ip).packed}) == 1
    assert flows.forward(lan, ack, NOW, dry_run=True) is None
    assert len(nat.conntrack) == 0 and not nat.mappings


def test_forget_addresses_matches_ipv6_flows_of_the_shared_conntrack() -> None:
    """NAT66 shares IPv4's conntrack, with 128-bit keys: an IPv6 address finds its flows too."""
    w = world()
    nat = w.router.nat
    assert nat is not None
    mine, other = IPv6Address("fd00:1::a").packed, IPv6Address("fd00:1::b").packed
    remote = IPv6Address("2001:db8::5").packed
    for n, src in enumerate((mine, other)):
        orig = KEY6.pack(17, src, 4000 + n, remote, 53)
        reply = KEY6.pack(17, remote, 53, src, 4000 + n)
        nat.conntrack.insert(Flow(17, orig, reply, NOW, expires=NOW + 30), NOW)
    assert w.router.forget_addresses({mine}) == 1
    (left,) = nat.conntrack.flows
    assert other in left.orig


def test_forget_addresses_without_nat_has_nothing_to_forget() -> None:
    router = Router([Interface(0, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24"))])
    assert router.forget_addresses({IPv4Address("10.1.0.2").packed}) == 0


# --- move_port -------------------------------------------------------------------------------------
def test_moved_port_is_on_the_new_segment_and_learned_there() -> None:
    w = world()
    a, b, c = HOSTS["a"], HOSTS["b"], HOSTS["c"]
    port = w.ports["b"]
    gone = w.dp.move_port(port, w.segments["dmz"])
    assert gone == {mac(b.mac)}
    lan, dmz = w.switch("lan"), w.switch("dmz")
    assert port not in lan.ports and all(port not in t for t in lan.flood_sets.values())
    assert port in dmz.ports and port in dmz.flood_sets[w.ports["c"]]
    assert w.dp.port_segment[port] == w.segments["dmz"] and w.dp.port_switch[port] is dmz
    arp, nd = w.neighbour_macs()
    assert mac(b.mac) not in arp and mac(b.mac) not in nd
    # b, readdressed as 10.2.0.3, asks for its new gateway: the router on dmz answers, to b, and dmz
    # learns b there; lan does not.
    moved = b._replace(ip="10.2.0.3", gateway="10.2.0.1", gateway_mac=R_DMZ)
    replies = w.dp.receive(port, arp_request(moved, "10.2.0.1"), NOW)
    assert isinstance(replies, list)
    answers = [Ether(bytes(f)[10:]) for p, f in replies if p == port]
    assert any(ARP in x and x[ARP].op == 2 and x[ARP].psrc == "10.2.0.1" for x in answers)
    assert dmz.fdb.lookup(mac(b.mac)) == port
    assert mac(b.mac) not in lan.fdb.entries
    # c reaches it by its MAC on dmz; a's frame to it floods lan, where it no longer is.
    assert w.send("c", eth(c.mac, b.mac, IP(src=c.ip, dst=moved.ip) / UDP())) == [port]
    assert port not in w.send("a", eth(a.mac, b.mac, IP(src=a.ip, dst=moved.ip) / UDP()))
    # Routed from lan to its new address: the router resolved it on dmz, and sends it there.
    assert w.send("a", udp(a, moved.ip)) == [port]


def test_a_cached_flow_to_a_moved_port_misses() -> None:
    w = world()
    pkt = cached_udp_to_b(w)
    w.dp.move_port(w.ports["b"], w.segments["dmz"])
    flows = w.dp.flows
    assert flows is not None
    assert flows.forward(w.segments["dmz"], pkt, NOW, dry_run=True) is None


def test_moved_port_takes_the_new_segments_forwarder() -> None:
    """The shell asks for a port's forwarder once per batch: on a switched segment it is that
    segment's own decision, so after a move it must be the new segment's."""
    dp = Datapath()
    one, two = dp.add_segment("one"), dp.add_segment("two")
    p0, p1, q0 = dp.add_port("p0", one), dp.add_port("p1", one), dp.add_port("q0", two)
    dp.move_port(p1, two)
    assert dp.forwarder(p1) == dp.segments[two].switch.decide
    assert dp.forwarder(p1)(p1, broadcast(9), NOW) == (q0,)
    assert dp.forwarder(p0)(p0, broadcast(8), NOW) is Drop.NO_DESTINATION  # p1 is not there now
    assert dp.segments[one].switch.flood_sets == {p0: ()}
    assert dp.segments[two].switch.fdb.lookup(bytes((2, 0, 0, 0, 0, 9))) == p1


# --- segments on a trunk -----------------------------------------------------------------------------
HT, HX = "02:00:00:00:0f:01", "02:00:00:00:0f:02"  # a host behind the trunk; the moved port's host


def l2(src: str, dst: str, vid: int | None = None) -> bytes:
    head = Ether(src=src, dst=dst)
    inner = IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1, dport=2) / b"stamp"
    return ZERO_VNET_HDR + bytes(head / Dot1Q(vlan=vid) / inner if vid is not None else head / inner)


def trunked() -> tuple[Datapath, Trunk, dict[str, int], dict[str, int]]:
    """lan (a1) on trunk T as VID 10; lab (x1) on no trunk."""
    dp = Datapath()
    seg = {name: dp.add_segment(name) for name in ("lan", "lab")}
    ports = {"a1": dp.add_port("a1", seg["lan"]), "x1": dp.add_port("x1", seg["lab"])}
    trunk = Trunk("T")
    dp.add_trunk(trunk, [(seg["lan"], 10)], None)
    return dp, trunk, seg, ports


def test_a_port_moved_onto_a_segment_on_a_trunk_takes_its_frames_untagged() -> None:
    dp, trunk, seg, ports = trunked()
    x1 = ports["x1"]
    dp.move_port(x1, seg["lan"])
    dp.receive(x1, l2(HX, "ff:ff:ff:ff:ff:ff"), NOW)  # lan learns x1's host
    _, verdict = dp.receive_trunk(trunk, l2(HT, HX, vid=10), NOW)
    assert verdict is not None and out_ports(verdict) == [x1]
    assert isinstance(verdict, list)
    [(_, frame)] = verdict
    assert bytes(frame) == l2(HT, HX), "popped, as for every access port of a segment on a trunk"
    # A tagged frame from it is refused there, as from a1.
    assert dp.receive(x1, l2(HX, HT, vid=10), NOW) is None
    assert dp.counters.drops[x1][Drop.VLAN_ON_ACCESS] == 1


def test_a_port_moved_off_a_segment_on_a_trunk_is_a_plain_port_again() -> None:
    dp, _, seg, ports = trunked()
    a1, x1 = ports["a1"], ports["x1"]
    dp.move_port(a1, seg["lab"])
    dp.receive(x1, l2(HX, "ff:ff:ff:ff:ff:ff"), NOW)
    tagged = l2(HT, HX, vid=5)
    assert dp.receive(a1, tagged, NOW) == x1, "switched as it came, tag and all, as on any plain segment"
    assert not dp.counters.drops[a1]


def test_a_port_added_to_a_segment_on_a_trunk_is_made_an_access_port() -> None:
    """What `port add` does after start-up (Instance.add_port_live): add_port, then access."""
    dp, trunk, seg, _ = trunked()
    new = dp.add_port("n1", seg["lan"])
    dp.access(new)
    dp.receive(new, l2(HX, "ff:ff:ff:ff:ff:ff"), NOW)
    _, verdict = dp.receive_trunk(trunk, l2(HT, HX, vid=10), NOW)
    assert isinstance(verdict, list)
    assert [(p, bytes(f)) for p, f in verdict] == [(new, l2(HT, HX))]
