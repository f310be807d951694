"""The datapath at L2: verdicts, counters, ageing through the timer, segment isolation, stamped bursts,
router plumbing (with a fake L3 engine) and malformed input."""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

import pytest
from conftest import BROADCAST, arp_request, frame, ip_of, mac
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath, Transmit
from vswitch.core.routed import Routed
from vswitch.core.router import Router
from vswitch.core.wire import VNET_HDR_LEN, ZERO_VNET_HDR

AGEING = 10.0
H = [mac(i) for i in range(3)]  # host i lives behind port i
OUTSIDER = mac(0x99)
ROUTER = mac(0xFE)


def lan(ageing: float = AGEING, ports: int = 3) -> Datapath:
    dp = Datapath(ageing=ageing)
    segment = dp.add_segment("lan")
    for i in range(ports):
        assert dp.add_port(f"p{i}", segment) == i
    return dp


def learn_hosts(dp: Datapath, now: float = 0.0) -> None:
    for port, host in enumerate(H):
        dp.receive(port, arp_request(host, ip_of(port), ip_of(0xFF)), now)


# --- verdicts and counters -------------------------------------------------------------------------


def test_verdict_shapes() -> None:
    dp = lan()
    assert dp.receive(0, frame(H[0], BROADCAST), 0.0) == (1, 2)
    assert dp.receive(1, frame(H[1], H[2]), 0.0) == (0, 2)  # unknown unicast
    assert dp.receive(1, frame(H[1], H[0]), 0.0) == 0
    assert dp.receive(2, frame(H[2], H[1]), 0.0) == 1
    assert dp.receive(2, b"", 0.0) is None


def test_rx_counters_exclude_vnet_header() -> None:
    dp = lan()
    sizes = (64, 1518, 9018)
    for size in sizes:
        dp.receive(0, frame(H[0], BROADCAST, size=size), 0.0)
    dp.receive(1, frame(H[1], H[0], size=100), 0.0)
    assert dp.counters.rx_packets == [3, 1, 0]
    assert dp.counters.rx_bytes == [sum(sizes), 100, 0]
    assert dp.counters.tx_packets == [0, 0, 0]  # the IO shell counts what it writes


def test_short_buffers_never_count_negative_bytes() -> None:
    dp = lan()
    for length in range(VNET_HDR_LEN + 1):
        assert dp.receive(0, bytes(length), 0.0) is None
    assert dp.counters.rx_packets[0] == VNET_HDR_LEN + 1
    assert dp.counters.rx_bytes[0] == 0
    assert dp.counters.drops[0] == {"runt": VNET_HDR_LEN + 1}


def test_drops_counted_per_port_by_reason() -> None:
    dp = lan()
    dp.receive(0, frame(H[1], H[0]), 0.0)  # H1 behind port 0 for now
    assert dp.receive(0, frame(H[0], H[1]), 0.0) is None  # same port
    assert dp.receive(0, b"\x00", 0.0) is None
    assert dp.receive(1, frame(BROADCAST, H[0]), 0.0) is None
    assert dp.receive(1, frame(bytes(6), H[0]), 0.0) is None
    assert dp.receive(2, frame(H[2], bytes.fromhex("0180c2000002")), 0.0) is None
    assert dp.counters.drops[0] == {Drop.SAME_PORT: 1, Drop.RUNT: 1}
    assert dp.counters.drops[1] == {Drop.SRC_MULTICAST: 1, Drop.SRC_ZERO: 1}
    assert dp.counters.drops[2] == {Drop.RESERVED_GROUP: 1}
    assert dp.drop_reasons() == {
        "same-port": 1,
        "runt": 1,
        "src-multicast": 1,
        "src-zero": 1,
        "reserved-group": 1,
    }


def test_snapshot_is_json_with_ports_drops_events() -> None:
    dp = lan()
    dp.receive(0, frame(H[0], BROADCAST, size=64), 0.0)
    dp.receive(1, b"", 0.0)
    snap = json.loads(json.dumps(dp.counters.snapshot()))
    assert set(snap) == {"ports", "drops", "events"}
    assert list(snap["ports"]) == ["p0", "p1", "p2"]
    assert snap["ports"]["p0"] == {
        "rx_packets": 1,
        "rx_bytes": 64,
        "tx_packets": 0,
        "tx_bytes": 0,
        "drops": {},
    }
    assert snap["ports"]["p1"]["drops"] == {"runt": 1}
    assert snap["drops"] == {"runt": 1}
    assert snap["events"] == {"fdb-learned": 1}


# --- time ------------------------------------------------------------------------------------------


def test_ageing_through_the_datapath_timer() -> None:
    dp = lan()
    assert dp.next_deadline() is None
    learn_hosts(dp, now=0.0)
    assert dp.receive(0, frame(H[0], H[1]), 0.0) == 1
    assert dp.next_deadline() == AGEING
    dp.receive(0, frame(H[0], H[1]), 5.0)  # refresh H0 only
    assert dp.on_timer(AGEING) == []
    assert dp.counters.events["fdb-aged"] == 2  # H1 and H2
    assert dp.receive(2, frame(H[2], H[1]), AGEING) == (0, 1)  # H1 forgotten: flooded
    assert dp.receive(2, frame(H[2], H[0]), AGEING) == 0  # H0 still known
    assert dp.next_deadline() == 5.0 + AGEING


def test_next_deadline_is_the_earliest_segment() -> None:
    dp = Datapath(ageing=AGEING)
    a, b = dp.add_segment("a"), dp.add_segment("b")
    pa, pb = dp.add_port("a0", a), dp.add_port("b0", b)
    dp.receive(pb, frame(H[1], BROADCAST), 3.0)
    dp.receive(pa, frame(H[0], BROADCAST), 7.0)
    assert dp.next_deadline() == 3.0 + AGEING


# --- segments --------------------------------------------------------------------------------------


def test_segments_are_isolated() -> None:
    dp = Datapath(ageing=AGEING)
    a, b = dp.add_segment("a"), dp.add_segment("b")
    a_ports = [dp.add_port(f"a{i}", a) for i in range(3)]
    b_ports = [dp.add_port(f"b{i}", b) for i in range(2)]
    verdict = dp.receive(a_ports[0], arp_request(H[0], ip_of(0), ip_of(1)), 0.0)
    assert verdict == tuple(a_ports[1:])
    # H0 was learned in segment a only: from b it is unknown, and b floods within b.
    assert dp.receive(b_ports[0], frame(H[1], H[0]), 0.0) == (b_ports[1],)
    # The same MAC may live in both segments independently.
    assert dp.receive(b_ports[1], frame(H[0], BROADCAST), 0.0) == (b_ports[0],)
    assert dp.receive(a_ports[2], frame(H[2], H[0]), 0.0) == a_ports[0]
    assert dp.receive(b_ports[0], frame(H[1], H[0]), 0.0) == b_ports[1]


# --- stamped bursts (VPP style) --------------------------------------------------------------------

STAMP = struct.Struct("!IBB")  # packet index, ingress port, expected egress port


@pytest.mark.parametrize("count", [2, 257])
@pytest.mark.parametrize("size", [64, 1518, 9018])
def test_stamped_burst_arrives_in_order_on_the_right_port(count: int, size: int) -> None:
    dp = lan()
    learn_hosts(dp)
    sent: dict[int, list[int]] = {port: [] for port in range(3)}
    captured: dict[int, list[bytes]] = {port: [] for port in range(3)}
    for index in range(count):
        src = index % 3
        dst = (src + 1 + index // 3 % 2) % 3
        pkt = frame(H[src], H[dst], payload=STAMP.pack(index, src, dst), size=size)
        assert len(pkt) == VNET_HDR_LEN + size
        verdict = dp.receive(src, pkt, 1.0)
        assert isinstance(verdict, int), f"packet {index}: {verdict!r}"
        captured[verdict].append(pkt)
        sent[dst].append(index)
    for port, pkts in captured.items():
        stamps = [STAMP.unpack_from(pkt, VNET_HDR_LEN + 14 + 20 + 8) for pkt in pkts]
        assert [s[0] for s in stamps] == sent[port], f"port {port}: wrong, missing or reordered"
        assert all(egress == port and ingress != port for _, ingress, egress in stamps)
    assert sum(map(len, captured.values())) == count
    assert dp.drop_reasons() == {}
    assert sum(dp.counters.rx_packets) == count + 3
    assert sum(dp.counters.rx_bytes) == count * size + 3 * (14 + 28)


# --- router plumbing with a fake L3 engine ---------------------------------------------------------


@dataclass
class FakeRouter:
    """Stands in for the Router to test the datapath's plumbing around it: records what reaches it;
    answers each frame with the frames queued in `replies`."""

    deadline: float | None = None
    received: list[tuple[int, bytes]] = field(default_factory=list)
    replies: list[Transmit] = field(default_factory=list)
    timer_frames: list[Transmit] = field(default_factory=list)
    timer_calls: list[float] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    tracer: object = None
    v6: None = None  # routes no IPv6
    foreign_ports: object = ()

    def decide(self, iface: int, pkt: bytes, now: float, ledger: Counter[str], port: int = -1) -> Routed:
        self.received.append((iface, pkt))
        replies, self.replies = self.replies, []
        return Routed(replies)

    def journaled(self) -> list[object]:
        return []

    def next_deadline(self) -> float | None:
        return self.deadline

    def on_timer(self, now: float) -> list[Transmit]:
        self.timer_calls.append(now)
        frames, self.timer_frames = self.timer_frames, []
        return frames


def attach(dp: Datapath, router: FakeRouter, macs: dict[int, bytes]) -> None:
    """The fake in the router's place; no flow cache (it reads a real router's tables)."""
    dp.flow_cache_max = 0
    dp.attach_router(cast(Router, router), macs)


def routed_lan() -> tuple[Datapath, FakeRouter, int]:
    dp = lan()
    router = FakeRouter()
    attach(dp, router, {0: ROUTER})
    return dp, router, 3  # the router's port id comes after the real ports


def test_unicast_to_router_mac_reaches_router() -> None:
    dp, router, _ = routed_lan()
    pkt = frame(H[0], ROUTER)
    assert dp.receive(0, pkt, 0.0) == []
    assert router.received == [(0, pkt)]


def test_broadcast_reaches_other_ports_and_router() -> None:
    dp, router, _ = routed_lan()
    pkt = arp_request(H[1], ip_of(1), ip_of(0xFE))
    assert dp.receive(1, pkt, 0.0) == [(0, pkt), (2, pkt)]
    assert router.received == [(0, pkt)]


def test_unicast_between_hosts_bypasses_router() -> None:
    dp, router, _ = routed_lan()
    learn_hosts(dp)
    router.received.clear()
    assert dp.receive(0, frame(H[0], H[2]), 0.0) == 2
    assert router.received == []


def test_router_output_to_known_host_goes_to_its_port() -> None:
    dp, router, rport = routed_lan()
    learn_hosts(dp)
    reply = frame(ROUTER, H[2], payload=b"reply", size=80)
    router.replies = [(0, reply)]
    assert dp.receive(0, frame(H[0], ROUTER), 1.0) == [(2, reply)]
    assert dp.counters.tx_packets[rport] == 1
    assert dp.counters.tx_bytes[rport] == 80


def test_router_output_to_unknown_host_floods_every_real_port() -> None:
    dp, router, _ = routed_lan()
    reply = frame(ROUTER, OUTSIDER)
    router.replies = [(0, reply)]
    assert dp.receive(0, frame(H[0], ROUTER), 0.0) == [(0, reply), (1, reply), (2, reply)]


def test_router_output_is_validated_and_counted_on_router_port() -> None:
    dp, router, rport = routed_lan()
    router.replies = [(0, frame(ROUTER, bytes.fromhex("0180c2000000"))), (0, b"\x00" * 5)]
    assert dp.receive(0, frame(H[0], ROUTER), 0.0) == []
    assert dp.counters.drops[rport] == {Drop.RESERVED_GROUP: 1, Drop.RUNT: 1}


def test_router_timer_frames_are_switched_and_deadlines_merge() -> None:
    dp, router, _ = routed_lan()
    learn_hosts(dp, now=0.0)
    router.deadline = 4.0
    assert dp.next_deadline() == 4.0
    router.deadline = None
    assert dp.next_deadline() == AGEING
    retry = frame(ROUTER, H[1])
    router.timer_frames = [(0, retry)]
    assert dp.on_timer(4.0) == [(1, retry)]
    assert router.timer_calls == [4.0]


def test_port_claiming_router_mac_is_dropped() -> None:
    dp, router, _ = routed_lan()
    assert dp.receive(2, frame(ROUTER, BROADCAST), 0.0) is None
    assert dp.counters.drops[2] == {Drop.SRC_IS_SWITCH: 1}
    assert router.received == []


def test_router_flood_into_segment_without_ports_is_counted() -> None:
    dp = Datapath(ageing=AGEING)
    a, empty = dp.add_segment("a"), dp.add_segment("empty")
    dp.add_port("a0", a)
    router = FakeRouter()
    attach(dp, router, {a: ROUTER, empty: mac(0xFD)})
    router.timer_frames = [(empty, frame(mac(0xFD), BROADCAST))]
    assert dp.on_timer(0.0) == []
    assert dp.counters.drops[2] == {Drop.NO_DESTINATION: 1}


def test_single_port_segment_floods_to_router_only() -> None:
    dp = Datapath(ageing=AGEING)
    a = dp.add_segment("a")
    dp.add_port("a0", a)
    router = FakeRouter()
    attach(dp, router, {a: ROUTER})
    pkt = frame(H[0], BROADCAST)
    assert dp.receive(0, pkt, 0.0) == []
    assert router.received == [(0, pkt)]
    assert dp.drop_reasons() == {}


# --- malformed input -------------------------------------------------------------------------------


def forwarded(verdict: object) -> bool:
    if verdict is None:
        return False
    assert isinstance(verdict, int | tuple), verdict
    return True


def near_frames() -> st.SearchStrategy[bytes]:
    """Random bytes, and random bytes behind a plausible vnet header and a known source."""
    tail = st.binary(min_size=0, max_size=190)
    return st.one_of(
        st.binary(min_size=0, max_size=200),
        tail.map(lambda t: ZERO_VNET_HDR + t),
        st.tuples(st.binary(min_size=10, max_size=10), st.sampled_from([*H, BROADCAST]), tail).map(
            lambda v: v[0] + v[1] + H[0] + v[2]
        ),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2), near_frames()), min_size=1, max_size=20))
def test_malformed_input_never_raises_and_is_always_accounted(packets: list[tuple[int, bytes]]) -> None:
    dp = lan()
    sent = 0
    for port, pkt in packets:
        if forwarded(dp.receive(port, pkt, 0.0)):
            sent += 1
    drops = sum(dp.counters.total_drops().values())
    assert sent + drops == len(packets) == sum(dp.counters.rx_packets)
    assert all(n >= 0 for n in dp.counters.rx_bytes)


# --- the shell's forwarder ---------------------------------------------------------------------------
class _Silent:
    def note(self, stage: str, text: str) -> None:
        pass

    def drop(self, where: str, reason: str) -> None:
        pass


def test_the_forwarder_is_the_switchs_decision_only_without_the_router_and_a_tracer() -> None:
    dp = lan()
    switch = dp.segments[0].switch
    assert dp.forwarder(0) == switch.decide  # the verdict is final on a plain L2 segment
    with dp.tracing(_Silent()):
        assert dp.forwarder(0) == dp.forward  # a trace takes every stage, and its journal
    assert dp.forwarder(0) == switch.decide
    switch.set_router_port(3, ROUTER)  # with the router on the segment, a frame may be its
    assert dp.forwarder(0) == dp.forward


ODD_FRAMES = [
    frame(H[0], BROADCAST),
    frame(H[0], H[1]),
    frame(H[1], H[0]),
    frame(H[0], H[0]),  # to itself: same port
    frame(H[2], H[1], size=60),
    frame(BROADCAST, H[1]),  # a group source
    frame(bytes(6), H[1]),  # the zero source
    frame(H[1], bytes.fromhex("0180c2000000")),  # link-local group
    b"",
    b"\x01" + bytes(30),  # a runt claiming NEEDS_CSUM
    bytes([1, 0, 0, 0, 0, 0, 250, 0, 6, 0]) + frame(H[0], H[1])[VNET_HDR_LEN:],  # csum beyond the frame
]


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(ODD_FRAMES)), max_size=40))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_the_forwarder_and_count_drop_do_what_receive_does(steps: list[tuple[int, bytes]]) -> None:
    """What the shell does with a forwarder (a Drop verdict counted with count_drop, rx counted per
    batch) leaves the same verdicts, tables and counters as receive."""
    by_receive, by_forwarder = lan(), lan()
    for now, (port, pkt) in enumerate(steps):
        expected = by_receive.receive(port, pkt, float(now))
        verdict = by_forwarder.forwarder(port)(port, pkt, float(now))
        if isinstance(verdict, Drop):
            by_forwarder.count_drop(port, verdict)
            verdict = None
        by_forwarder.counters.received(port, 1, max(0, len(pkt) - VNET_HDR_LEN))
        assert verdict == expected
    assert by_forwarder.counters.snapshot() == by_receive.counters.snapshot()
    assert by_forwarder.segments[0].switch.fdb.table(0.0) == by_receive.segments[0].switch.fdb.table(0.0)
