"""The protections of issue 23 in the pure core: per-port MAC limits, storm control, the loop guard
and port security, each with the case it must let through beside the one it stops."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath
from vswitch.core.fdb import Fdb
from vswitch.core.protect import PortSecurity, eui64_address
from vswitch.core.wire import ZERO_VNET_HDR

BROADCAST = "ff:ff:ff:ff:ff:ff"
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frame(pkt: Packet) -> bytes:
    return ZERO_VNET_HDR + bytes(pkt)


def lan(*names: str) -> tuple[Datapath, dict[str, int]]:
    dp = Datapath()
    segment = dp.add_segment("lan")
    return dp, {name: dp.add_port(name, segment) for name in names}


def drops(dp: Datapath, port: int) -> dict[str, int]:
    return {str(reason): n for reason, n in dp.counters.drops[port].items() if n}


# --- per-port MAC limit ---------------------------------------------------------------------------
def test_a_port_at_its_limit_learns_no_more_and_others_still_learn() -> None:
    fdb = Fdb(max_entries=100)
    fdb.port_limits[1] = 2
    assert fdb.learn(mac(A), 1, 0.0) is None
    assert fdb.learn(mac(B), 1, 0.0) is None
    assert fdb.learn(mac(C), 1, 0.0) is Drop.PORT_MAC_LIMIT
    assert fdb.lookup(mac(C)) is None
    assert fdb.learn(mac(C), 2, 0.0) is None  # another port, no limit of its own
    assert fdb.port_counts[1] == 2


def test_the_limit_counts_moves_ageing_and_a_port_going() -> None:
    fdb = Fdb(ageing=10.0)
    fdb.port_limits[1] = 1
    fdb.learn(mac(A), 1, 0.0)
    fdb.learn(mac(A), 2, 1.0)  # moved away: port 1 has room again
    assert fdb.learn(mac(B), 1, 1.0) is None
    assert fdb.learn(mac(A), 1, 2.0) is Drop.PORT_MAC_LIMIT  # moving onto a full port is refused
    assert fdb.lookup(mac(A)) == 2
    fdb.age(12.0)  # B (seen at 1.0) ages out
    assert fdb.port_counts[1] == 0
    assert fdb.learn(mac(C), 1, 12.5) is None
    fdb.forget_port(1)
    assert fdb.port_counts[1] == 0
    assert fdb.learn(mac(A), 1, 13.0) is None


def test_the_frames_of_a_port_over_its_limit_are_dropped_not_flooded() -> None:
    dp, ports = lan("a", "b")
    dp.set_port_mac_max(ports["a"], 1)
    assert dp.receive(ports["a"], frame(Ether(src=A, dst=BROADCAST) / IP() / UDP()), 0.0) == (ports["b"],)
    assert dp.receive(ports["a"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 0.0) is None
    assert drops(dp, ports["a"]) == {"port-mac-limit": 1}
    dp.set_port_mac_max(ports["a"], None)
    assert dp.receive(ports["a"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 0.0) == (ports["b"],)


# --- storm control --------------------------------------------------------------------------------
def test_storm_control_counts_each_kind_per_port_per_second() -> None:
    dp, ports = lan("a", "b", "c")
    dp.protect(storm_limit=2, loop_moves=0)
    broadcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    multicast = frame(Ether(src=A, dst="01:00:5e:00:00:01") / IP() / UDP())
    unknown = frame(Ether(src=A, dst="02:00:00:00:99:99") / IP() / UDP())
    verdicts = [dp.receive(ports["a"], pkt, 5.0) for pkt in (broadcast, multicast, unknown) * 3]
    flooded = (ports["b"], ports["c"])
    assert verdicts == [flooded] * 6 + [None] * 3
    assert drops(dp, ports["a"]) == {"storm-broadcast": 1, "storm-multicast": 1, "storm-unknown-unicast": 1}
    assert dp.receive(ports["b"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 5.5) == (
        ports["a"],
        ports["c"],
    )  # b has its own budget
    assert dp.receive(ports["a"], broadcast, 6.0) == flooded  # a new second


def test_known_unicast_is_never_storm_limited() -> None:
    dp, ports = lan("a", "b")
    dp.protect(storm_limit=1, loop_moves=0)
    dp.receive(ports["b"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 0.0)
    for _ in range(10):
        assert dp.receive(ports["a"], frame(Ether(src=A, dst=B) / IP() / UDP()), 0.0) == ports["b"]


# --- loop guard -----------------------------------------------------------------------------------
def test_a_flapping_mac_blocks_the_port_it_flapped_onto_until_the_hold_runs_out() -> None:
    dp, ports = lan("x", "y", "z")
    dp.protect(storm_limit=0, loop_moves=3, loop_hold=10.0)
    bcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    dp.receive(ports["z"], bcast, 1.0)
    for step in range(4):  # the storm: A's broadcast comes back on x, then y, then x ...
        dp.receive(ports["x" if step % 2 == 0 else "y"], bcast, 1.0 + step * 0.001)
    assert dp.counters.events[Event.LOOP_DETECTED] == 1
    assert list(dp.blocked_ports(1.1)) == ["y"]
    notices = dp.take_notices()
    assert len(notices) == 1 and "port y is blocked" in notices[0]
    # Blocked: nothing from y passes, nothing floods to it, and the storm is broken.
    assert dp.receive(ports["y"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 2.0) is None
    assert dp.receive(ports["z"], frame(Ether(src=C, dst=BROADCAST) / IP() / UDP()), 2.0) == (ports["x"],)
    assert drops(dp, ports["y"]) == {"loop-blocked": 2}  # the flap that tripped it, and this one
    assert dp.next_deadline() == 1.003 + 10.0
    dp.on_timer(11.1)
    assert dp.blocked_ports(11.1) == {}
    assert dp.take_notices() == ["loop guard: port y forwards again"]
    assert dp.counters.events[Event.LOOP_RECOVERED] == 1
    assert dp.receive(ports["z"], frame(Ether(src=C, dst=BROADCAST) / IP() / UDP()), 12.0) == (
        ports["x"],
        ports["y"],
    )


def test_hosts_changing_ports_are_not_a_loop() -> None:
    """A container moved, a VM migrated: one move each, at any pace below the threshold per second."""
    dp, ports = lan("x", "y")
    dp.protect(storm_limit=0, loop_moves=3)
    bcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    for second in range(20):
        for step in range(3):  # three moves a second, every second: at the threshold, never over it
            dp.receive(ports["x" if step % 2 == 0 else "y"], bcast, second + step * 0.1)
    assert dp.counters.events[Event.LOOP_DETECTED] == 0
    assert dp.blocked_ports(20.0) == {}


def test_the_loop_guard_off_lets_a_mac_flap() -> None:
    dp, ports = lan("x", "y")
    dp.protect(storm_limit=0, loop_moves=0)
    bcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    for step in range(1000):
        assert dp.receive(ports["x" if step % 2 == 0 else "y"], bcast, 1.0) is not None
    assert dp.counters.events[Event.FDB_MOVES] == 999


# --- port security --------------------------------------------------------------------------------
SECURED = PortSecurity.of(
    mac(A),
    [IPv4Address("10.1.0.2")],
    [IPv6Address("2001:db8:1::2")],
    prefixes6=[IPv6Address("2001:db8:7::")],
)


def check(pkt: Packet) -> Drop | None:
    return SECURED.check(frame(pkt))


def test_a_port_may_send_from_its_own_addresses() -> None:
    assert check(Ether(src=A, dst=B) / IP(src="10.1.0.2") / UDP()) is None
    assert check(Ether(src=A, dst=BROADCAST) / ARP(hwsrc=A, psrc="10.1.0.2", pdst="10.1.0.1")) is None
    assert check(Ether(src=A, dst=B) / IPv6(src="2001:db8:1::2") / UDP()) is None
    slaac = IPv6Address(eui64_address(IPv6Address("2001:db8:7::").packed, mac(A)))
    assert str(slaac) == "2001:db8:7::ff:fe00:a"
    assert check(Ether(src=A, dst=B) / IPv6(src=str(slaac)) / UDP()) is None
    assert check(Ether(src=A, dst=B) / IPv6(src="fe80::ff:fe00:a") / UDP()) is None
    assert check(Ether(src=A, dst=B, type=0x88CC) / b"lldp") is None  # other ethertypes: the MAC only


def test_a_host_without_an_address_yet_may_ask_for_one() -> None:
    discover = IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / BOOTP() / DHCP()
    assert check(Ether(src=A, dst=BROADCAST) / discover) is None
    probe = ARP(hwsrc=A, psrc="0.0.0.0", pdst="10.1.0.2")  # RFC 5227 2.1.1
    assert check(Ether(src=A, dst=BROADCAST) / probe) is None
    dad = IPv6(src="::", dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt="2001:db8:1::2")  # RFC 4862 5.4
    assert check(Ether(src=A, dst="33:33:ff:00:00:02") / dad) is None
    not_dhcp = IP(src="0.0.0.0", dst="10.1.0.9") / UDP(sport=1, dport=53)
    assert check(Ether(src=A, dst=B) / not_dhcp) is Drop.SPOOFED_IPV4


def test_spoofed_sources_are_named_drops() -> None:
    assert check(Ether(src=B, dst=BROADCAST) / IP(src="10.1.0.2") / UDP()) is Drop.SPOOFED_MAC
    assert check(Ether(src=A, dst=B) / IP(src="10.1.0.99") / UDP()) is Drop.SPOOFED_IPV4
    assert check(Ether(src=A, dst=BROADCAST) / ARP(hwsrc=B, psrc="10.1.0.2")) is Drop.SPOOFED_ARP
    assert check(Ether(src=A, dst=BROADCAST) / ARP(hwsrc=A, psrc="10.1.0.1")) is Drop.SPOOFED_ARP
    assert check(Ether(src=A, dst=B) / IPv6(src="2001:db8:1::99") / UDP()) is Drop.SPOOFED_IPV6
    advert = IPv6(src="fe80::ff:fe00:a", dst="ff02::1") / ICMPv6ND_NA(tgt="2001:db8:1::1")  # the router's
    assert check(Ether(src=A, dst="33:33:00:00:00:01") / advert) is Drop.SPOOFED_IPV6


def test_an_address_leased_to_the_port_is_its_own_while_the_lease_holds() -> None:
    leases: dict[bytes, IPv4Address] = {}
    rules = PortSecurity.of(mac(A), leased=leases.get)
    pkt = frame(Ether(src=A, dst=B) / IP(src="10.1.0.66") / UDP())
    assert rules.check(pkt) is Drop.SPOOFED_IPV4
    leases[mac(A)] = IPv4Address("10.1.0.66")
    assert rules.check(pkt) is None
    del leases[mac(A)]
    assert rules.check(pkt) is Drop.SPOOFED_IPV4


def test_a_secured_ports_frames_are_checked_before_learning_and_others_are_not() -> None:
    dp, ports = lan("a", "b")
    dp.secure(ports["a"], SECURED)
    spoofed = frame(Ether(src=C, dst=BROADCAST) / IP(src="10.1.0.2") / UDP())
    assert dp.forwarder(ports["a"])(ports["a"], spoofed, 0.0) is None
    assert dp.port_switch[ports["a"]].fdb.lookup(mac(C)) is None  # never learned
    assert drops(dp, ports["a"]) == {"spoofed-mac": 1}
    assert dp.forwarder(ports["b"])(ports["b"], frame(Ether(src=C, dst=BROADCAST) / IP() / UDP()), 0.0) == (
        ports["a"],
    )
    dp.secure(ports["a"], None)
    assert dp.receive(ports["a"], spoofed, 0.0) == (ports["b"],)


def test_a_block_forgets_where_the_loop_carried_other_hosts() -> None:
    """B's MAC was carried onto x by the loop before y was blocked: left there, frames to B would go
    into the loop's remains for ever. The block flushes what was learned; B is found again by a flood."""
    dp, ports = lan("a", "b", "x", "y")
    dp.protect(storm_limit=0, loop_moves=3)
    dp.receive(ports["b"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 1.0)
    dp.receive(ports["x"], frame(Ether(src=B, dst=BROADCAST) / IP() / UDP()), 1.0)  # B's frame, looped
    bcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    dp.receive(ports["a"], bcast, 1.0)
    for step in range(4):
        dp.receive(ports["x" if step % 2 == 0 else "y"], bcast, 1.0)
    assert list(dp.blocked_ports(1.0)) == ["y"]
    to_b = frame(Ether(src=C, dst=B) / IP() / UDP())
    assert dp.receive(ports["a"], to_b, 1.1) == (ports["b"], ports["x"])  # flooded, not sent into x alone


def test_the_loops_port_is_blocked_not_the_hosts_own() -> None:
    """A's own frames keep coming from a while its looped copies flap between x and y: the move that
    crosses the threshold may be A's own, back onto a; the port blocked is still a loop port, and a
    keeps forwarding."""
    dp, ports = lan("a", "b", "x", "y")
    dp.protect(storm_limit=0, loop_moves=5)
    bcast = frame(Ether(src=A, dst=BROADCAST) / IP() / UDP())
    order = ["a", "x", "y", "x", "y", "x", "a"]  # the sixth move (> 5) is A's own frame, back on a
    verdicts = [dp.receive(ports[name], bcast, 1.0) for name in order]
    assert list(dp.blocked_ports(1.0)) == ["x"]  # onto x three times, y twice, a once
    assert verdicts[-1] == (ports["b"], ports["y"])  # A's own frame passed, flooded past the blocked x
    assert drops(dp, ports["a"]) == {}
    assert dp.port_switch[ports["a"]].fdb.lookup(mac(A)) is None  # the block flushed what was learned
