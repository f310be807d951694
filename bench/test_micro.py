"""Microbenchmarks of the sans-IO core: what one packet costs in each decision, without any fd.

Run with `make bench-micro` (pytest bench --benchmark-only). Each benchmark stores its packets per
second in extra_info["pps"] (shown with --benchmark-json, and as the OPS column: one call is one
packet, except the new-flow batch, whose pps is the batch size over the batch time).

Buffers are what the tap hands over: [virtio-net header, 10 bytes][Ethernet frame], 64-byte frames.
"""

from __future__ import annotations

import functools
import io
import socket
import struct
from collections import Counter
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from vswitch.core.checksum import delta, update_complete
from vswitch.core.datapath import Datapath
from vswitch.core.emulation import Impairment
from vswitch.core.ipv4 import Packet
from vswitch.core.nat import NatConfig
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.vlan import Trunk
from vswitch.core.vxlan import Tunnel, Vtep
from vswitch.core.wire import L3, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, ZERO_VNET_HDR, mac_str
from vswitch.shell.loop import BATCH, READ_SIZE, Shell, new_loop
from vswitch.tools.bench.floor import pump

NOW = 1000.0
PAYLOAD = b"\x00" * 18  # 14 + 20 + 8 + 18 = 60 bytes: a 64-byte frame on the wire with the FCS
NEW_FLOW_BATCH = 1000
# 1,000,000 flows take ~20 s to build on the 2-core test machine; lower it if memory is short.
BIG_TABLE = 1_000_000
U16 = struct.Struct("!H")

HOST_A, HOST_B = bytes.fromhex("020000000a01"), bytes.fromhex("020000000b02")
ROUTER_LAN, ROUTER_WAN = bytes.fromhex("02000000f001"), bytes.fromhex("02000000f002")
OUTSIDE_MAC = bytes.fromhex("02000000c601")


def udp(src_mac: bytes, dst_mac: bytes, src: str, dst: str, sport: int = 40000, dport: int = 5201) -> bytes:
    """A 64-byte UDP frame with the vnet header; UDP checksum 0 (none) so ports can be patched."""
    frame = Ether(src=mac_str(src_mac), dst=mac_str(dst_mac)) / IP(src=src, dst=dst, ttl=64)
    frame = frame / UDP(sport=sport, dport=dport, chksum=0) / Raw(PAYLOAD)
    return ZERO_VNET_HDR + raw(frame)


def per_second(benchmark: Any, packets_per_call: int = 1) -> None:
    """Record packets per second from the mean time of one call."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean > 0:
        benchmark.extra_info["pps"] = round(packets_per_call / stats.stats.mean)


# --- L2 -------------------------------------------------------------------------------------------------
def l2_datapath(learned: int) -> tuple[Datapath, int, int]:
    """One segment, two ports; HOST_A and HOST_B learned, plus `learned - 2` other MACs on port b."""
    dp = Datapath(fdb_max=max(8192, learned + 16))
    seg = dp.add_segment("lan")
    a, b = dp.add_port("a", seg), dp.add_port("b", seg)
    dp.receive(b, udp(HOST_B, HOST_A, "10.0.0.2", "10.0.0.1"), NOW)
    dp.receive(a, udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2"), NOW)
    fdb = dp.segments[seg].switch.fdb
    for i in range(max(0, learned - 2)):
        fdb.learn(b"\x02\x01" + i.to_bytes(4, "big"), b, NOW)
    assert len(fdb) == max(2, learned)
    return dp, a, b


def test_l2_learned_unicast(benchmark: Any) -> None:
    dp, a, b = l2_datapath(2)
    frame = udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")
    assert benchmark(dp.receive, a, frame, NOW) == b
    per_second(benchmark)


@pytest.mark.parametrize("learned", [10, 100_000], ids=["fdb-10", "fdb-100k"])
def test_l2_fdb_size(benchmark: Any, learned: int) -> None:
    dp, a, b = l2_datapath(learned)
    frame = udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")
    assert benchmark(dp.receive, a, frame, NOW) == b
    per_second(benchmark)


# --- L3 -------------------------------------------------------------------------------------------------
def test_routed_packet(benchmark: Any) -> None:
    """Router.receive between two segments, the next hop's ARP entry already resolved."""
    router = Router(
        [
            Interface(0, "lan", ROUTER_LAN, IPv4Interface("10.1.0.1/24")),
            Interface(1, "lan2", ROUTER_WAN, IPv4Interface("10.2.0.1/24")),
        ]
    )
    router.arp.learn(int(IPv4Address("10.2.0.2")), HOST_B, 1, NOW)
    frame = udp(HOST_A, ROUTER_LAN, "10.1.0.2", "10.2.0.2")
    out = benchmark(router.receive, 0, frame, NOW)
    assert len(out) == 1 and out[0][0] == 1
    per_second(benchmark)


# --- NAT ------------------------------------------------------------------------------------------------
def nat_router(max_flows: int = 65536) -> Router:
    """lan 10.1.0.1/24, uplink 198.18.0.2/24 masqueraded, default via 198.18.0.1 (ARP resolved)."""
    router = Router(
        [
            Interface(0, "lan", ROUTER_LAN, IPv4Interface("10.1.0.1/24")),
            Interface(1, "wan", ROUTER_WAN, IPv4Interface("198.18.0.2/24"), uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"), 1)],
        NatConfig(
            uplink=1,
            address=IPv4Address("198.18.0.2"),
            inside=[IPv4Network("10.1.0.0/24")],
            max_flows=max_flows,
        ),
    )
    router.arp.learn(int(IPv4Address("198.18.0.1")), OUTSIDE_MAC, 1, NOW)
    return router


OUTBOUND = udp(HOST_A, ROUTER_LAN, "10.1.0.2", "198.18.0.1")


def translated(out: list[tuple[int, bytes]]) -> bool:
    """One frame, out of the uplink, from the NAT address."""
    return len(out) == 1 and out[0][0] == 1 and out[0][1][L3 + 12 : L3 + 16] == bytes([198, 18, 0, 2])


def test_nat_existing_flow(benchmark: Any) -> None:
    router = nat_router()
    assert translated(router.receive(0, OUTBOUND, NOW))
    assert translated(benchmark(router.receive, 0, OUTBOUND, NOW))
    per_second(benchmark)


def new_flow_frames() -> list[bytes]:
    """NEW_FLOW_BATCH outbound frames, each a new flow (its own source port)."""
    template = bytearray(OUTBOUND)
    frames = []
    for i in range(NEW_FLOW_BATCH):
        template[L3 + 20 : L3 + 22] = U16.pack(20000 + i)
        frames.append(bytes(template))
    return frames


def test_nat_new_flow(benchmark: Any) -> None:
    """A batch of first packets: conntrack insert, port allocation, rewrite, route; fresh table each round."""
    frames = new_flow_frames()

    def run(router: Router) -> Router:
        receive = router.receive
        for frame in frames:
            receive(0, frame, NOW)
        return router

    def setup() -> tuple[tuple[Router], dict[str, Any]]:
        return (nat_router(),), {}

    router = benchmark.pedantic(run, setup=setup, rounds=20, iterations=1)
    assert router.nat is not None and len(router.nat.conntrack) == NEW_FLOW_BATCH
    per_second(benchmark, NEW_FLOW_BATCH)


def via_uplink(_dst: bytes) -> tuple[int, int | None]:
    """The route Nat.process asks for: everything outside leaves through the uplink (iface 1)."""
    return (1, None)


def fill_flows(router: Router, flows: int) -> None:
    """Create `flows` UDP flows straight through Nat.process (no frame building, no routing).

    One inside endpoint (10.1.0.2:40000, so one mapping and one external port) to distinct outside
    (address, port) pairs in 198.19.0.0/16: the conntrack table grows, the port space does not.
    """
    nat = router.nat
    assert nat is not None
    buf = bytearray(OUTBOUND)
    l4 = L3 + 20
    end = len(buf)
    src = bytes([10, 1, 0, 2])
    base = int(IPv4Address("198.19.0.0"))  # clear of 198.18.0.0/24, where the NAT address is
    process = nat.process
    ledger: Counter[str] = Counter()
    for i in range(flows - 1):  # the real OUTBOUND frame's flow is the last one
        buf[l4 + 2 : l4 + 4] = U16.pack(1024 + (i >> 16))
        dst_int = base + (i & 0xFFFF)
        pkt = bytes(buf)
        packet = Packet(0, pkt, pkt, ledger, 20, l4, end, 17, 0, src, dst_int.to_bytes(4, "big"), dst_int)
        process(packet, via_uplink, NOW)
    assert translated(router.receive(0, OUTBOUND, NOW))
    assert len(nat.conntrack) == flows


@pytest.mark.parametrize("flows", [1, BIG_TABLE], ids=["flows-1", "flows-1M"])
def test_nat_table_size(benchmark: Any, flows: int) -> None:
    """An existing flow's packet with 1 or 1,000,000 flows tracked: a dict lookup should not care."""
    router = nat_router(max_flows=flows + 16)
    fill_flows(router, flows)
    assert translated(benchmark(router.receive, 0, OUTBOUND, NOW))
    per_second(benchmark)


# --- the flow cache: a routed frame through the whole datapath ------------------------------------------
# Datapath.receive with a router: the ingress L2 decision, then the flow cache (hit) or the router and
# the egress L2 decision (cache off, the slow path every time). The cache-off figure is what every routed
# packet cost before the cache.
CACHE = {"cache-off": 0, "cache-on": 8192}


def routed_datapath(flow_cache_max: int) -> tuple[Datapath, int, bytes]:
    """lan 10.1.0.1/24 (port a) and lan2 10.2.0.1/24 (port b), no NAT; HOST_B resolved and learned."""
    dp = Datapath(flow_cache_max=flow_cache_max)
    lan, lan2 = dp.add_segment("lan"), dp.add_segment("lan2")
    a, b = dp.add_port("a", lan), dp.add_port("b", lan2)
    router = Router(
        [
            Interface(lan, "lan", ROUTER_LAN, IPv4Interface("10.1.0.1/24")),
            Interface(lan2, "lan2", ROUTER_WAN, IPv4Interface("10.2.0.1/24")),
        ]
    )
    dp.attach_router(router, {lan: ROUTER_LAN, lan2: ROUTER_WAN})
    router.arp.learn(int(IPv4Address("10.2.0.2")), HOST_B, lan2, NOW)
    dp.receive(b, udp(HOST_B, ROUTER_WAN, "10.2.0.2", "10.2.0.1"), NOW)  # lan2's FDB learns HOST_B
    frame = udp(HOST_A, ROUTER_LAN, "10.1.0.2", "10.2.0.2")
    first = dp.receive(a, frame, NOW)  # the slow path; with the cache on, it installs the entry
    assert isinstance(first, list) and [port for port, _ in first] == [b]
    return dp, a, frame


@pytest.mark.parametrize("cache", CACHE, ids=list(CACHE))
def test_routed_datapath(benchmark: Any, cache: str) -> None:
    dp, a, frame = routed_datapath(CACHE[cache])
    expected = dp.receive(a, frame, NOW)
    assert benchmark(dp.receive, a, frame, NOW) == expected
    assert (dp.counters.flow_cache_hits > 0) == (cache == "cache-on")
    per_second(benchmark)


def udp6(src_mac: bytes, dst_mac: bytes, src: str, dst: str) -> bytes:
    """A 64-byte IPv6 UDP frame (14 + 40 + 8 + 2) with the vnet header."""
    frame = Ether(src=mac_str(src_mac), dst=mac_str(dst_mac)) / IPv6(src=src, dst=dst, hlim=64)
    return ZERO_VNET_HDR + raw(frame / UDP(sport=40000, dport=5201) / Raw(b"\x00\x00"))


def routed6_datapath(flow_cache_max: int) -> tuple[Datapath, int, bytes]:
    """routed_datapath in IPv6: lan fd00:1::/64 (port a), lan2 fd00:2::/64 (port b), HOST_B resolved."""
    dp = Datapath(flow_cache_max=flow_cache_max)
    lan, lan2 = dp.add_segment("lan"), dp.add_segment("lan2")
    a, b = dp.add_port("a", lan), dp.add_port("b", lan2)
    router = Router(
        [
            Interface(
                lan, "lan", ROUTER_LAN, IPv4Interface("10.1.0.1/24"), address6=IPv6Interface("fd00:1::1/64")
            ),
            Interface(
                lan2, "lan2", ROUTER_WAN, IPv4Interface("10.2.0.1/24"), address6=IPv6Interface("fd00:2::1/64")
            ),
        ]
    )
    dp.attach_router(router, {lan: ROUTER_LAN, lan2: ROUTER_WAN})
    assert router.v6 is not None
    router.v6.nd.learn(int(IPv6Address("fd00:2::2")), HOST_B, lan2, NOW)
    dp.receive(b, udp6(HOST_B, ROUTER_WAN, "fd00:2::2", "fd00:2::1"), NOW)  # lan2's FDB learns HOST_B
    frame = udp6(HOST_A, ROUTER_LAN, "fd00:1::2", "fd00:2::2")
    first = dp.receive(a, frame, NOW)
    assert isinstance(first, list) and [port for port, _ in first] == [b]
    return dp, a, frame


@pytest.mark.parametrize("cache", CACHE, ids=list(CACHE))
def test_routed6_datapath(benchmark: Any, cache: str) -> None:
    """A routed IPv6 packet: the slow path (router6.py) or the flow cache's forward6."""
    dp, a, frame = routed6_datapath(CACHE[cache])
    expected = dp.receive(a, frame, NOW)
    assert benchmark(dp.receive, a, frame, NOW) == expected
    assert (dp.counters.flow_cache_hits > 0) == (cache == "cache-on")
    per_second(benchmark)


def nat_datapath(flow_cache_max: int) -> tuple[Datapath, int, int]:
    """nat_router() in a datapath: lan port a (HOST_A, 10.1.0.2), uplink port up (OUTSIDE_MAC)."""
    dp = Datapath(flow_cache_max=flow_cache_max)
    lan, wan = dp.add_segment("lan"), dp.add_segment("wan")
    a, up = dp.add_port("a", lan), dp.add_port("up", wan)
    router = nat_router()
    dp.attach_router(router, {lan: ROUTER_LAN, wan: ROUTER_WAN})
    router.arp.learn(int(IPv4Address("10.1.0.2")), HOST_A, lan, NOW)
    dp.receive(up, udp(OUTSIDE_MAC, ROUTER_WAN, "198.18.0.1", "198.18.0.2", 9, 9), NOW)  # FDBs learn
    dp.receive(a, udp(HOST_A, ROUTER_LAN, "10.1.0.2", "10.1.0.1", 9, 9), NOW)
    return dp, a, up


INBOUND = udp(OUTSIDE_MAC, ROUTER_WAN, "198.18.0.1", "198.18.0.2", sport=5201, dport=40000)


@pytest.mark.parametrize("cache", CACHE, ids=list(CACHE))
@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_nat_datapath(benchmark: Any, direction: str, cache: str) -> None:
    """An established UDP flow (it has seen a reply), one direction measured."""
    dp, a, up = nat_datapath(CACHE[cache])
    for _ in range(2):  # open the flow both ways: the second round's packets are hits
        out, back = dp.receive(a, OUTBOUND, NOW), dp.receive(up, INBOUND, NOW)
        assert isinstance(out, list) and [port for port, _ in out] == [up]
        assert isinstance(back, list) and [port for port, _ in back] == [a]
    port, frame, expected = (a, OUTBOUND, out) if direction == "outbound" else (up, INBOUND, back)
    hits = dp.counters.flow_cache_hits
    assert benchmark(dp.receive, port, frame, NOW) == expected
    assert (dp.counters.flow_cache_hits > hits) == (cache == "cache-on")
    per_second(benchmark)


MANY_FLOWS = 40_000  # five times what one segment's cache holds: every flow keeps coming back to a miss


@pytest.mark.parametrize("cache", CACHE, ids=list(CACHE))
def test_nat_datapath_more_flows_than_the_cache(benchmark: Any, cache: str) -> None:
    """The worst case for a cache: 40,000 one-way UDP flows visited round robin, so with the cache on
    nearly every packet misses (8,192 entries). Its cost over cache-off is what a miss and an
    insertion add; OVS's exact-match cache has the same problem (emc-insert-inv-prob)."""
    dp, a, _up = nat_datapath(CACHE[cache])
    frames = [udp(HOST_A, ROUTER_LAN, "10.1.0.2", "198.18.0.1", sport=10_000 + i) for i in range(MANY_FLOWS)]
    for frame in frames:  # every flow tracked (the NAT's first packet) before the clock starts
        dp.receive(a, frame, NOW)
    index = 0

    def next_packet() -> None:
        nonlocal index
        dp.receive(a, frames[index], NOW)
        index = (index + 1) % MANY_FLOWS

    benchmark(next_packet)
    per_second(benchmark)


@pytest.mark.parametrize("flow", ["routed", "nat-outbound", "nat-inbound"])
def test_flow_cache_hit(benchmark: Any, flow: str) -> None:
    """FlowCache.forward alone: what replaces Router.receive and the egress L2 decision on a hit (to
    compare with test_routed_packet and test_nat_existing_flow, which leave the L2 decisions out too)."""
    if flow == "routed":
        dp, port, frame = routed_datapath(CACHE["cache-on"])
    else:
        dp, a, up = nat_datapath(CACHE["cache-on"])
        for _ in range(2):
            dp.receive(a, OUTBOUND, NOW)
            dp.receive(up, INBOUND, NOW)
        port, frame = (a, OUTBOUND) if flow == "nat-outbound" else (up, INBOUND)
    assert dp.flows is not None
    segment = dp.port_segment[port]
    expected = dp.receive(port, frame, NOW)
    assert benchmark(dp.flows.forward, segment, frame, NOW) == expected
    per_second(benchmark)


# --- checksums ------------------------------------------------------------------------------------------
def test_checksum_update(benchmark: Any) -> None:
    """RFC 1624 update of a complete checksum for a source address rewrite (the delta precomputed)."""
    change = delta(bytes([10, 1, 0, 2]), bytes([198, 18, 0, 2]))
    result = benchmark(update_complete, 0x1C46, change)
    assert 0 <= result <= 0xFFFF
    per_second(benchmark)


# --- the IO shell against the floor ---------------------------------------------------------------------
# What the tap hands over for a UDP or TCP frame of a local sender: NEEDS_CSUM, the checksum's place.
OFFLOADED = struct.pack("<BBHHHH", VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
FRAMES_PER_WAKEUP = {"frames-1": 1, "frames-64": BATCH}


def test_l2_offloaded_unicast(benchmark: Any) -> None:
    """The port's forwarder, what the shell calls (rx counted per batch; on this router-less segment,
    the switch's decision itself), for a NEEDS_CSUM frame."""
    dp, a, b = l2_datapath(2)
    frame = OFFLOADED + udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")[VNET_HDR_LEN:]
    assert benchmark(dp.forwarder(a), a, frame, NOW) == b
    per_second(benchmark)


# --- VXLAN ------------------------------------------------------------------------------------------------
VTEP_LOCAL, VTEP_REMOTE = "198.18.7.1", "198.18.7.2"


def tunnel_datapath() -> tuple[Datapath, int, int, Vtep]:
    """lan: port a and a VXLAN tunnel (VNI 42) to one remote, behind which HOST_B is learned."""
    dp = Datapath()
    seg = dp.add_segment("lan")
    a = dp.add_port("a", seg)
    tunnel = Tunnel(42, seg, -1, VTEP_LOCAL)
    dp.add_tunnel(tunnel, [(VTEP_REMOTE, True)])
    vtep = Vtep(VTEP_LOCAL, 4789)
    vtep.add(tunnel)
    remote = tunnel.remotes[VTEP_REMOTE]
    dp.receive(a, udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2"), NOW)
    dp.receive_underlay(vtep, underlay_payload(), VTEP_REMOTE, NOW)
    return dp, a, remote, vtep


def underlay_payload() -> bytes:
    """What the underlay socket receives from the remote: a VXLAN header (VNI 42) and HOST_B's frame."""
    return bytes.fromhex("0800000000002a00") + udp(HOST_B, HOST_A, "10.0.0.2", "10.0.0.1")[VNET_HDR_LEN:]


def test_vxlan_push(benchmark: Any) -> None:
    """A complete 64-byte frame from port a to HOST_B, behind the remote: decided and encapsulated."""
    dp, a, remote, _ = tunnel_datapath()
    frame = udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")
    out = benchmark(dp.forwarder(a), a, frame, NOW)
    assert isinstance(out, list) and out[0][0] == remote and len(out[0][1]) == len(frame) - VNET_HDR_LEN + 36
    per_second(benchmark)


def test_vxlan_receive(benchmark: Any) -> None:
    """An underlay datagram for HOST_A: checked, decapsulated and switched to port a."""
    dp, a, _, vtep = tunnel_datapath()
    payload = underlay_payload()
    _, frame, verdict = benchmark(dp.receive_underlay, vtep, payload, VTEP_REMOTE, NOW)
    assert verdict == a and frame is not None
    per_second(benchmark)


# --- 802.1Q trunks ----------------------------------------------------------------------------------------
def trunk_datapath() -> tuple[Datapath, int, Trunk]:
    """lan: access port a (HOST_A) and trunk T carrying lan as VLAN 10, HOST_B learned on T.10."""
    dp = Datapath()
    seg = dp.add_segment("lan")
    a = dp.add_port("a", seg)
    trunk = Trunk("T")
    dp.add_trunk(trunk, [(seg, 10)], None)
    dp.receive(a, udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2"), NOW)
    dp.receive_trunk(trunk, tagged_udp(HOST_B, HOST_A, "10.0.0.2", "10.0.0.1"), NOW)
    return dp, a, trunk


def tagged_udp(src_mac: bytes, dst_mac: bytes, src: str, dst: str) -> bytes:
    """udp()'s frame with an 802.1Q tag for VLAN 10 (68 bytes on the wire)."""
    frame = udp(src_mac, dst_mac, src, dst)
    return frame[:22] + b"\x81\x00\x00\x0a" + frame[22:]


def test_trunk_push(benchmark: Any) -> None:
    """A 64-byte frame from access port a to HOST_B on the trunk: decided and tagged."""
    dp, a, trunk = trunk_datapath()
    frame = udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")
    out = benchmark(dp.forwarder(a), a, frame, NOW)
    assert isinstance(out, list) and out[0][0] == trunk.by_vid[10] and len(out[0][1]) == len(frame) + 4
    per_second(benchmark)


def test_trunk_pop(benchmark: Any) -> None:
    """A tagged 64-byte frame read off the trunk for HOST_A: classified, decided, popped."""
    dp, a, trunk = trunk_datapath()
    frame = tagged_udp(HOST_B, HOST_A, "10.0.0.2", "10.0.0.1")
    port, out = benchmark(dp.receive_trunk, trunk, frame, NOW)
    assert port == trunk.by_vid[10] and isinstance(out, list) and out[0] == (a, frame[:22] + frame[26:])
    per_second(benchmark)


def datagram_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of an AF_UNIX datagram socketpair: frame boundaries kept, as a tap keeps them."""
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (one, two):
        end.setblocking(False)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return one, two


@pytest.mark.parametrize("wakeup", list(FRAMES_PER_WAKEUP))
@pytest.mark.parametrize("forwarder", ["floor", "shell", "shell-impaired-beside", "shell-mirror-beside"])
def test_wakeup(benchmark: Any, forwarder: str, wakeup: str) -> None:
    """One readable port's turn, per frame: python-floor's pump (read, write) or the Shell's (read,
    Datapath.forward, write, counters, timer check), over socketpairs instead of taps, with 1 or 64
    frames waiting. The shell's figure less the floor's is what vswitch adds to the IO per frame.
    shell-impaired-beside: the same two ports while a third has a delay (network emulation): the
    writes go through Shell._send, what an unimpaired port pays for an impaired one beside it.
    shell-mirror-beside: the same while a third port is mirrored (--mirror): what a port that is not
    mirrored pays for a mirror beside it."""
    frames = FRAMES_PER_WAKEUP[wakeup]
    frame = OFFLOADED + udp(HOST_A, HOST_B, "10.0.0.1", "10.0.0.2")[VNET_HDR_LEN:]
    dp, a, b = l2_datapath(2)
    loop = new_loop()
    shell = Shell(dp, loop)
    if forwarder == "shell-impaired-beside":
        c = dp.add_port("c", 0)
        shell.emulator.set(c, "c", ("out",), Impairment(delay=0.01), None, 0.0)
        shell._divert = True  # what emulation_changed sets (it would also arm the timer on the loop)
    mirror_ends: tuple[socket.socket, socket.socket] | None = None
    if forwarder == "shell-mirror-beside":
        c, m = dp.add_port("c", 0), dp.add_mirror("m")
        mirror_ends = datagram_pair()
        shell.attach_sender(m, mirror_ends[0].fileno())
        shell.mirror(c, m, ("in", "out"))
    wire_in, shell_in = datagram_pair()
    shell_out, wire_out = datagram_pair()
    shell.attach(a, shell_in.fileno())  # the loop never runs: the test calls the reader itself
    shell.attach(b, shell_out.fileno())
    del shell._drain_of[b]  # frames to b stay there: the peer read would take them back
    if forwarder == "floor":
        reader = io.FileIO(shell_in.fileno(), "rb", closefd=False)
        turn = functools.partial(pump, reader.read, shell_out.fileno(), lambda: None)
    else:
        turn = functools.partial(shell._on_readable, a, shell._drain_of[a])

    def fill() -> None:
        while True:  # what the last round wrote
            try:
                wire_out.recv(READ_SIZE)
            except BlockingIOError:
                break
        for _ in range(frames):
            wire_in.send(frame)

    try:
        benchmark.pedantic(turn, setup=fill, rounds=20_000 // frames, warmup_rounds=10)
        assert wire_out.recv(READ_SIZE) == frame  # forwarded as it came
    finally:
        shell.detach_all()
        loop.close()
        for end in (wire_in, shell_in, shell_out, wire_out, *(mirror_ends or ())):
            end.close()
    per_second(benchmark, frames)
