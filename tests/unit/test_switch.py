"""Switch.decide: classify, learn only what is valid, then forward, flood or drop with a reason."""

from __future__ import annotations

import pytest
from conftest import BROADCAST, arp_request, frame, ip_of, mac, vnet_header

from vswitch.core.counters import Drop
from vswitch.core.fdb import Fdb
from vswitch.core.l2 import Switch
from vswitch.core.wire import ETH_MIN, VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, ZERO_MAC

A, B, C = mac(1), mac(2), mac(3)
ROUTER = mac(0xFE)
IPV4_MULTICAST = bytes.fromhex("01005e000001")
IPV6_MULTICAST = bytes.fromhex("333300000001")
PORTS = (0, 1, 2)


@pytest.fixture
def switch() -> Switch:
    return Switch(Fdb(ageing=300.0), PORTS)


def others(port: int) -> tuple[int, ...]:
    return tuple(p for p in PORTS if p != port)


# --- forwarding ---------------------------------------------------------------------------------------


def test_known_unicast_goes_to_one_port(switch: Switch) -> None:
    assert switch.decide(1, frame(B, A), now=0.0) == (0, 2)  # teaches B on port 1
    assert switch.decide(0, frame(A, B), now=1.0) == 1
    assert switch.decide(1, frame(B, A), now=2.0) == 0  # A was learned by the previous frame


@pytest.mark.parametrize("in_port", PORTS)
@pytest.mark.parametrize(
    "dst", [C, BROADCAST, IPV4_MULTICAST, IPV6_MULTICAST], ids=["unknown", "bcast", "v4mc", "v6mc"]
)
def test_flood_goes_to_every_other_port(switch: Switch, in_port: int, dst: bytes) -> None:
    decision = switch.decide(in_port, frame(A, dst), now=0.0)
    assert decision == others(in_port)
    assert isinstance(decision, tuple)
    assert in_port not in decision


def test_arp_broadcast_floods_and_teaches(switch: Switch) -> None:
    assert switch.decide(2, arp_request(A, ip_of(1), ip_of(2)), now=0.0) == (0, 1)
    assert switch.fdb.lookup(A) == 2


def test_multicast_destination_is_never_learned_as_unicast(switch: Switch) -> None:
    switch.decide(0, frame(A, IPV4_MULTICAST), now=0.0)
    assert switch.fdb.lookup(IPV4_MULTICAST) is None
    assert switch.decide(1, frame(B, IPV4_MULTICAST), now=0.0) == (0, 2)


def test_no_reflection_to_the_ingress_port(switch: Switch) -> None:
    switch.decide(0, frame(B, C), now=0.0)  # B lives behind port 0 (e.g. a hub)
    assert switch.decide(0, frame(A, B), now=1.0) is Drop.SAME_PORT
    assert switch.fdb.lookup(A) == 0  # a valid frame still teaches its source


def test_mac_move_follows_the_host(switch: Switch) -> None:
    switch.decide(0, frame(A, BROADCAST), now=0.0)
    switch.decide(2, frame(A, BROADCAST), now=1.0)
    assert switch.decide(1, frame(B, A), now=2.0) == 2
    assert switch.fdb.events["fdb-moves"] == 1


@pytest.mark.parametrize("vlan", [1, 100, 4094])
def test_vlan_tagged_frames_are_switched_transparently(switch: Switch, vlan: int) -> None:
    assert switch.decide(1, frame(B, BROADCAST, vlan=vlan), now=0.0) == (0, 2)
    assert switch.decide(0, frame(A, B, vlan=vlan), now=0.0) == 1
    assert switch.decide(0, frame(A, C, vlan=vlan), now=0.0) == (1, 2)


def test_shortest_valid_buffer_is_switched(switch: Switch) -> None:
    pkt = frame(A, BROADCAST)[:ETH_MIN]  # vnet header + bare Ethernet header
    assert switch.decide(0, pkt, now=0.0) == (1, 2)


# --- drops --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 9, 10, 23])
def test_runt(switch: Switch, length: int) -> None:
    pkt = frame(A, B)[:length]
    assert switch.decide(0, pkt, now=0.0) is Drop.RUNT
    assert len(switch.fdb) == 0


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        (BROADCAST, Drop.SRC_MULTICAST),
        (IPV4_MULTICAST, Drop.SRC_MULTICAST),
        (bytes.fromhex("0180c2000000"), Drop.SRC_MULTICAST),
        (ZERO_MAC, Drop.SRC_ZERO),
    ],
    ids=["broadcast", "multicast", "stp-group", "zero"],
)
@pytest.mark.parametrize("dst", [B, BROADCAST], ids=["to-unicast", "to-broadcast"])
def test_bad_source(switch: Switch, src: bytes, reason: Drop, dst: bytes) -> None:
    assert switch.decide(0, frame(src, dst), now=0.0) is reason
    assert len(switch.fdb) == 0


@pytest.mark.parametrize("last", range(0x10))
def test_reserved_group_is_never_forwarded_nor_learned(switch: Switch, last: int) -> None:
    dst = bytes.fromhex("0180c20000") + bytes([last])
    assert switch.decide(0, frame(A, dst), now=0.0) is Drop.RESERVED_GROUP
    assert switch.fdb.lookup(A) is None


@pytest.mark.parametrize("last", [0x10, 0x20, 0xFF])
def test_group_just_past_reserved_range_floods(switch: Switch, last: int) -> None:
    dst = bytes.fromhex("0180c20000") + bytes([last])
    assert switch.decide(0, frame(A, dst), now=0.0) == (1, 2)
    assert switch.fdb.lookup(A) == 0


def needs_csum(start: int, offset: int, size: int = 64) -> bytes:
    return frame(
        A, B, vnet=vnet_header(flags=VNET_F_NEEDS_CSUM, csum_start=start, csum_offset=offset), size=size
    )


def test_needs_csum_within_frame_is_switched(switch: Switch) -> None:
    # Ethernet 14 + IPv4 20: the UDP checksum field sits at 34 + 6 in the frame.
    assert switch.decide(0, needs_csum(34, 6), now=0.0) == (1, 2)
    # The 2-byte field ending exactly at the end of the frame is still inside it.
    assert switch.decide(0, needs_csum(60, 2), now=0.0) == (1, 2)


@pytest.mark.parametrize(("start", "offset"), [(61, 2), (63, 0), (34, 30), (0xFFFF, 0xFFFF)])
def test_needs_csum_beyond_frame_is_bad_vnet_header(switch: Switch, start: int, offset: int) -> None:
    assert switch.decide(0, needs_csum(start, offset), now=0.0) is Drop.BAD_VNET_HEADER
    assert len(switch.fdb) == 0


def test_offsets_are_ignored_without_needs_csum(switch: Switch) -> None:
    pkt = frame(A, B, vnet=vnet_header(flags=VNET_F_DATA_VALID, csum_start=0xFFFF, csum_offset=0xFFFF))
    assert switch.decide(0, pkt, now=0.0) == (1, 2)


@pytest.mark.parametrize("dst", [B, BROADCAST, IPV4_MULTICAST])
def test_single_port_flood_has_no_destination(dst: bytes) -> None:
    switch = Switch(Fdb(), [0])
    assert switch.decide(0, frame(A, dst), now=0.0) is Drop.NO_DESTINATION


def test_invalid_frames_teach_nothing(switch: Switch) -> None:
    bad = [
        frame(A, bytes.fromhex("0180c2000000")),
        needs_csum(100, 0),
        frame(A, B)[:23],
    ]
    for pkt in bad:
        assert isinstance(switch.decide(1, pkt, now=0.0), Drop)
    assert len(switch.fdb) == 0
    assert switch.decide(0, frame(B, A), now=1.0) == (1, 2)  # A is still unknown: flooded


# --- the router's port ---------------------------------------------------------------------------------


@pytest.fixture
def routed(switch: Switch) -> Switch:
    switch.set_router_port(3, ROUTER)
    return switch


def test_router_mac_is_static_on_router_port(routed: Switch) -> None:
    entry = routed.fdb.entries[ROUTER]
    assert (entry.port, entry.static) == (3, True)
    assert routed.decide(0, frame(A, ROUTER), now=0.0) == 3


def test_flood_from_real_port_leaves_router_out_of_the_tuple(routed: Switch) -> None:
    assert routed.decide(0, frame(A, BROADCAST), now=0.0) == (1, 2)
    assert routed.decide(1, frame(B, C), now=0.0) == (0, 2)


def test_flood_from_router_port_covers_every_real_port(routed: Switch) -> None:
    assert routed.decide(3, frame(ROUTER, BROADCAST), now=0.0) == (0, 1, 2)
    assert routed.decide(3, frame(ROUTER, C), now=0.0) == (0, 1, 2)


def test_router_reaches_learned_host(routed: Switch) -> None:
    routed.decide(2, frame(C, BROADCAST), now=0.0)
    assert routed.decide(3, frame(ROUTER, C), now=0.0) == 2


@pytest.mark.parametrize("dst", [B, BROADCAST])
def test_port_claiming_router_mac_is_dropped(routed: Switch, dst: bytes) -> None:
    assert routed.decide(0, frame(ROUTER, dst), now=0.0) is Drop.SRC_IS_SWITCH
    assert routed.fdb.lookup(ROUTER) == 3
    assert routed.decide(1, frame(B, ROUTER), now=0.0) == 3


def test_single_real_port_with_router_floods_to_router_only() -> None:
    switch = Switch(Fdb(), [0])
    switch.set_router_port(1, ROUTER)
    assert switch.decide(0, frame(A, BROADCAST), now=0.0) == ()


def test_router_flood_into_empty_segment_has_no_destination() -> None:
    switch = Switch(Fdb())
    switch.set_router_port(1, ROUTER)
    assert switch.decide(1, frame(ROUTER, BROADCAST), now=0.0) is Drop.NO_DESTINATION


# --- building ------------------------------------------------------------------------------------------


def test_duplicate_ports_are_refused(routed: Switch) -> None:
    with pytest.raises(ValueError):
        routed.add_port(1)
    with pytest.raises(ValueError):
        routed.add_port(3)  # the router's
    with pytest.raises(ValueError):
        routed.set_router_port(0, mac(0xFD))


def test_remove_port_updates_floods_and_forgets(routed: Switch) -> None:
    routed.decide(2, frame(C, BROADCAST), now=0.0)
    routed.remove_port(2)
    assert routed.fdb.lookup(C) is None
    assert routed.decide(0, frame(A, C), now=0.0) == (1,)
    assert routed.decide(3, frame(ROUTER, BROADCAST), now=0.0) == (0, 1)
