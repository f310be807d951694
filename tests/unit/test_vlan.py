"""802.1Q trunks in the core: the tag's push, pop and retag (and the virtio-net header's offsets that
move with it), a trunk's classification of what it reads, and a datapath with access ports, trunks
and the router on a stick. Frames are built and read back with scapy."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from vswitch.core.counters import Drop, Event
from vswitch.core.datapath import Datapath, PortVerdict
from vswitch.core.gso import segment
from vswitch.core.router import Interface, Router
from vswitch.core.vlan import Trunk, pop, push, retag, tagged, vid_of
from vswitch.core.vxlan import Tunnel, Vtep
from vswitch.core.wire import (
    GSO_ECN,
    GSO_TCPV4,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
)

NOW = 1.0
BROADCAST = "ff:ff:ff:ff:ff:ff"
R_LAN, R_DMZ, R_LAB = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
# hosts: behind access ports a1 (lan), a2 (dmz), x1 and x2 (lab); behind trunks T, U and N
H1, H2, X1, X2 = "02:00:00:00:a1:01", "02:00:00:00:a2:01", "02:00:00:00:c1:01", "02:00:00:00:c2:01"
HT, HU, HN = "02:00:00:00:10:01", "02:00:00:00:30:01", "02:00:00:00:40:01"
HT_DMZ = "02:00:00:00:20:01"  # a host behind T in dmz (VID 20)
NOBODY = "02:00:00:00:ff:ff"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def tag(vid: int, prio: int = 0, dei: int = 0) -> Packet:
    return Dot1Q(vlan=vid, prio=prio, dei=dei)


def l3(payload: bytes = b"stamp") -> Packet:
    return IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=1024, dport=5000) / Raw(payload)


def frame(src: str, dst: str, *tags: Packet, payload: bytes = b"stamp", vnet: bytes = ZERO_VNET_HDR) -> bytes:
    """vnet + Ether(src, dst)/tags.../IP/UDP/payload, built by scapy."""
    pkt: Packet = Ether(src=src, dst=dst)
    for t in tags:
        pkt = pkt / t
    return vnet + bytes(raw(pkt / l3(payload)))


def header(pkt: bytes) -> tuple[int, ...]:
    return tuple(VNET_HDR.unpack_from(pkt))


def dot1q(pkt: bytes) -> tuple[int, int, int]:
    """(VID, PCP, DEI) of a frame's outer tag, read by scapy."""
    outer = Ether(pkt[VNET_HDR_LEN:])
    assert outer.type == 0x8100, outer.summary()
    q = outer[Dot1Q]
    return int(q.vlan), int(q.prio), int(q.dei)


# --- push, pop, retag: the bytes scapy builds --------------------------------------------------------
@pytest.mark.parametrize("vid", [1, 10, 4094])
def test_push_gives_scapys_tagged_frame_with_priority_0(vid: int) -> None:
    plain = frame(HT, H1)
    pushed = push(plain, vid)
    assert pushed == frame(HT, H1, tag(vid))
    assert dot1q(pushed) == (vid, 0, 0)
    assert tagged(pushed) and not tagged(plain)
    assert vid_of(pushed) == vid


@pytest.mark.parametrize(("vid", "prio", "dei"), [(10, 0, 0), (4094, 7, 1), (1, 5, 0)])
def test_pop_gives_scapys_untagged_frame(vid: int, prio: int, dei: int) -> None:
    assert pop(frame(HT, H1, tag(vid, prio, dei))) == frame(HT, H1)


def test_pop_undoes_push_byte_for_byte() -> None:
    plain = frame(HT, BROADCAST, payload=b"z" * 1400)
    assert pop(push(plain, 77)) == plain


@pytest.mark.parametrize("prio", range(8))
@pytest.mark.parametrize("dei", [0, 1])
def test_retag_changes_only_the_vid_and_keeps_priority_and_dei(prio: int, dei: int) -> None:
    before = frame(HT, H1, tag(10, prio, dei))
    after = retag(before, 4094)
    assert after == frame(HT, H1, tag(4094, prio, dei))
    assert dot1q(after) == (4094, prio, dei)
    assert len(after) == len(before)
    assert retag(before, 10) == before


def test_pop_of_a_double_tagged_frame_leaves_the_inner_tag() -> None:
    double = frame(HT, H1, tag(10, 3), tag(99, 6))
    popped = pop(double)
    assert popped == frame(HT, H1, tag(99, 6))
    assert dot1q(popped) == (99, 6, 0)


def test_retag_of_a_double_tagged_frame_changes_the_outer_vid_only() -> None:
    assert retag(frame(HT, H1, tag(10, 3), tag(99)), 30) == frame(HT, H1, tag(30, 3), tag(99))


# --- push and pop move the virtio-net header's frame offsets -----------------------------------------
def vnet(
    flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, start: int = 0, offset: int = 0
) -> bytes:
    return bytes(VNET_HDR.pack(flags, gso_type, hdr_len, gso_size, start, offset))


def test_needs_csum_start_moves_4_on_push_and_back_on_pop() -> None:
    plain = frame(HT, H1, vnet=vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6))
    pushed = push(plain, 10)
    assert header(pushed) == (VNET_F_NEEDS_CSUM, 0, 0, 0, 38, 6)
    assert pushed[VNET_HDR_LEN:] == frame(HT, H1, tag(10))[VNET_HDR_LEN:]
    assert header(pop(pushed)) == (VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    assert pop(pushed) == plain


@pytest.mark.parametrize("gso_type", [GSO_TCPV4, GSO_TCPV4 | GSO_ECN])
def test_a_tso_headers_hdr_len_and_csum_start_move_together(gso_type: int) -> None:
    plain = frame(HT, H1, vnet=vnet(VNET_F_NEEDS_CSUM, gso_type, 54, 1448, 34, 16))
    pushed = push(plain, 10)
    assert header(pushed) == (VNET_F_NEEDS_CSUM, gso_type, 58, 1448, 38, 16)
    assert header(pop(pushed)) == (VNET_F_NEEDS_CSUM, gso_type, 54, 1448, 34, 16)


def test_a_tso_header_with_hdr_len_0_keeps_it_0() -> None:
    """hdr_len 0 is "not given" (the kernel's tun accepts it): a hint of 4 would be a wrong one."""
    pushed = push(frame(HT, H1, vnet=vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, 0, 1448, 34, 16)), 10)
    assert header(pushed) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 0, 1448, 38, 16)
    assert header(pop(pushed)) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 0, 1448, 34, 16)


@pytest.mark.parametrize(
    "plain_header",
    [ZERO_VNET_HDR, vnet(VNET_F_DATA_VALID), vnet(0, GSO_ECN)],
    ids=["zero", "data-valid", "ecn-only"],
)
def test_a_header_that_promises_nothing_is_left_as_it_is(plain_header: bytes) -> None:
    pushed = push(frame(HT, H1, vnet=plain_header), 10)
    assert pushed[:VNET_HDR_LEN] == plain_header
    assert pop(pushed)[:VNET_HDR_LEN] == plain_header
    assert retag(pushed, 20)[:VNET_HDR_LEN] == plain_header


def partial(pkt: Packet) -> bytes:
    """pkt (Ether/[Dot1Q/]IP/TCP|UDP) as a Linux sender's CHECKSUM_PARTIAL skb leaves it: the L4
    checksum field holds the folded pseudo-header sum, uncomplemented."""
    data = bytearray(raw(pkt))
    at_ip = len(data) - len(raw(pkt[IP]))
    ihl = (data[at_ip] & 0x0F) * 4
    proto = data[at_ip + 9]
    length = int.from_bytes(data[at_ip + 2 : at_ip + 4], "big") - ihl
    total = sum(struct.unpack("!4H", data[at_ip + 12 : at_ip + 20])) + proto + length
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    at = at_ip + ihl + (16 if proto == 6 else 6)
    data[at : at + 2] = struct.pack("!H", total)
    return bytes(data)


def assert_checksums_verify(pkt: bytes) -> None:
    """The IPv4 and TCP/UDP checksums of pkt's frame are the ones scapy computes afresh."""
    ip = Ether(pkt[VNET_HDR_LEN:])[IP]
    copy = IP(raw(ip))
    del copy.chksum
    del copy.payload.chksum
    rebuilt = IP(raw(copy))
    assert rebuilt.chksum == ip.chksum
    assert rebuilt.payload.chksum == ip.payload.chksum


def tcp_super(src: str, dst: str, *tags: Packet, payload: bytes) -> Packet:
    pkt: Packet = Ether(src=src, dst=dst)
    for t in tags:
        pkt = pkt / t
    return (
        pkt
        / IP(src="10.9.0.1", dst="10.9.0.2", flags="DF", id=100)
        / TCP(sport=40000, dport=80, seq=1000, flags="PA")
        / Raw(payload)
    )


def assert_segments(segments: list[bytes], payload: bytes, gso_size: int, vid: int | None) -> None:
    """Complete TCP segments of payload, in order, each tagged with vid (or untagged)."""
    assert len(segments) == -(-len(payload) // gso_size)
    got = b""
    for n, seg in enumerate(segments):
        assert seg[:VNET_HDR_LEN] == ZERO_VNET_HDR
        eth = Ether(seg[VNET_HDR_LEN:])
        if vid is None:
            assert Dot1Q not in eth
        else:
            assert dot1q(seg)[0] == vid and Dot1Q not in eth[Dot1Q].payload
        assert_checksums_verify(seg)
        assert eth[TCP].seq == 1000 + n * gso_size
        got += bytes(eth[TCP].payload)
    assert got == payload


def test_a_tso_frame_pushed_then_segmented_gives_tagged_segments_whose_checksums_verify() -> None:
    payload = bytes(range(256)) * 14  # 3584 bytes: four segments of 1000, the last of 584
    super_frame = vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16) + partial(
        tcp_super(H1, HT, payload=payload)
    )
    pushed = push(super_frame, 10)
    assert header(pushed) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 58, 1000, 38, 16)
    assert_segments(segment(pushed), payload, 1000, vid=10)


def test_a_needs_csum_frame_pushed_then_completed_verifies() -> None:
    partial_udp = partial(
        Ether(src=H1, dst=HT) / IP(src="10.9.0.1", dst="10.9.0.2") / UDP() / Raw(b"u" * 300)
    )
    pushed = push(vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6) + partial_udp, 10)
    [done] = segment(pushed)
    assert done[:VNET_HDR_LEN] == ZERO_VNET_HDR and dot1q(done)[0] == 10
    assert_checksums_verify(done)


# --- Trunk.classify: which port a frame read off the trunk enters by ---------------------------------
def trunk(native: bool = False) -> Trunk:
    """Trunk T on port 0, VID 10 on port 1, VID 20 on port 2, and with native its untagged on port 3."""
    t = Trunk("T", port=0)
    t.add_vlan(10, 1)
    t.add_vlan(20, 2)
    if native:
        t.native = 3
    return t


def test_a_tagged_frame_of_a_carried_vid_enters_by_that_vids_port() -> None:
    t = trunk()
    assert t.classify(frame(HT, H1, tag(10))) == (1, None)
    assert t.classify(frame(HT, H1, tag(20, 7, 1))) == (2, None)
    assert t.classify(frame(HT, H1, tag(20), tag(10))) == (2, None)  # the outer tag decides


@pytest.mark.parametrize("native", [False, True])
def test_a_vid_the_trunk_does_not_carry_is_vlan_unknown_on_the_trunks_port(native: bool) -> None:
    t = trunk(native)
    for vid in (1, 11, 30, 4094, 4095):
        assert t.classify(frame(HT, H1, tag(vid))) == (0, Drop.VLAN_UNKNOWN)


def test_untagged_without_a_native_vlan_is_vlan_untagged_and_with_one_enters_the_native_port() -> None:
    assert trunk().classify(frame(HT, H1)) == (0, Drop.VLAN_UNTAGGED)
    assert trunk(native=True).classify(frame(HT, H1)) == (3, None)


@pytest.mark.parametrize("native", [False, True])
def test_runts_are_runt_on_the_trunks_port(native: bool) -> None:
    t = trunk(native)
    untagged = frame(HT, H1)
    tagged_frame = frame(HT, H1, tag(10))
    for short in (b"", untagged[:9], untagged[:23], tagged_frame[:23]):
        assert t.classify(short) == (0, Drop.RUNT), len(short)
    for short in (tagged_frame[:24], tagged_frame[:27]):  # a TPID but no whole tag and ethertype
        assert t.classify(short) == (0, Drop.RUNT), len(short)
    assert t.classify(tagged_frame[:28]) == (1, None)
    assert t.classify(untagged[:24]) == ((3, None) if native else (0, Drop.VLAN_UNTAGGED))


def test_a_priority_tagged_frame_without_a_native_vlan_is_untagged() -> None:
    """IEEE 802.1Q 6.9.1 and table 9-2: VID 0 means "no VLAN, priority only"; the frame is classified
    as an untagged one (the port's PVID). With no native VLAN that is vlan-untagged, not vlan-unknown."""
    assert trunk().classify(frame(HT, H1, tag(0, 5))) == (0, Drop.VLAN_UNTAGGED)


def test_a_priority_tagged_frame_enters_the_native_vlan() -> None:
    """IEEE 802.1Q 6.9.1: a priority-tagged frame (VID 0) belongs to the port's native VLAN."""
    assert trunk(native=True).classify(frame(HT, H1, tag(0, 5))) == (3, None)


def test_a_trunks_ports_are_its_vlans_then_its_native() -> None:
    assert trunk().ports == [1, 2]
    assert trunk(native=True).ports == [1, 2, 3]


# --- a datapath: access ports, trunks, and segments without a trunk ----------------------------------
TrunkDef = tuple[str, Sequence[tuple[str, int]], str | None]
T_DEF: TrunkDef = ("T", (("lan", 10), ("dmz", 20)), None)
U_DEF: TrunkDef = ("U", (("lan", 30),), None)
N_DEF: TrunkDef = ("N", (("dmz", 40),), "lan")


class Net:
    """lan (access port a1), dmz (a2), lab (x1 and x2, on no trunk), and the given trunks, added in
    order; by default T, carrying lan as VID 10 and dmz as VID 20."""

    def __init__(self, trunks: Sequence[TrunkDef] = (T_DEF,)) -> None:
        self.dp = Datapath()
        self.seg = {name: self.dp.add_segment(name) for name in ("lan", "dmz", "lab")}
        for name, seg in (("a1", "lan"), ("a2", "dmz"), ("x1", "lab"), ("x2", "lab")):
            self.dp.add_port(name, self.seg[seg])
        self.trunks: dict[str, Trunk] = {}
        for name, vlans, native in trunks:
            t = Trunk(name)
            self.dp.add_trunk(
                t,
                [(self.seg[s], vid) for s, vid in vlans],
                None if native is None else self.seg[native],
            )
            self.trunks[name] = t

    def port(self, name: str) -> int:
        return self.dp.counters.names.index(name)

    def from_port(self, name: str, pkt: bytes) -> dict[str, list[bytes]]:
        return self.sent(self.dp.receive(self.port(name), pkt, NOW), pkt)

    def from_trunk(self, name: str, pkt: bytes) -> dict[str, list[bytes]]:
        _, verdict = self.dp.receive_trunk(self.trunks[name], pkt, NOW)
        return self.sent(verdict, pkt)

    def sent(self, verdict: PortVerdict, pkt: bytes) -> dict[str, list[bytes]]:
        """Every port a verdict writes to, by name, with what it writes there."""
        assert not isinstance(verdict, Drop), verdict  # the switch's own verdict: not for these ports
        names = self.dp.counters.names
        if verdict is None:
            return {}
        if isinstance(verdict, int):
            return {names[verdict]: [pkt]}
        if isinstance(verdict, tuple):
            return {names[port]: [pkt] for port in verdict}
        out: dict[str, list[bytes]] = {}
        for port, f in verdict:
            out.setdefault(names[port], []).append(bytes(f))
        return out

    def drops(self) -> dict[str, dict[str, int]]:
        names = self.dp.counters.names
        return {names[p]: dict(c) for p, c in enumerate(self.dp.counters.drops) if sum(c.values())}

    def fdb_port(self, segment: str, host: str) -> str | None:
        entry = self.dp.segments[self.seg[segment]].switch.fdb.entries.get(mac(host))
        return None if entry is None else self.dp.counters.names[entry.port]


def test_a_frame_tagged_10_from_the_trunk_to_a_learned_host_reaches_a1_untagged() -> None:
    net = Net()
    net.from_port("a1", frame(H1, BROADCAST))
    out = net.from_trunk("T", frame(HT, H1, tag(10, 4), payload=b"to a1"))
    assert out == {"a1": [frame(HT, H1, payload=b"to a1")]}
    assert net.fdb_port("lan", HT) == "T.10"
    counters = net.dp.counters
    assert counters.rx_packets[net.port("T.10")] == 1
    assert counters.rx_bytes[net.port("T.10")] == len(frame(HT, H1, tag(10), payload=b"to a1")) - VNET_HDR_LEN
    assert net.drops() == {}


def test_a_broadcast_tagged_10_reaches_a1_untagged_and_nothing_in_dmz() -> None:
    net = Net()
    out = net.from_trunk("T", frame(HT, BROADCAST, tag(10), payload=b"bcast"))
    assert out == {"a1": [frame(HT, BROADCAST, payload=b"bcast")]}
    assert net.fdb_port("dmz", HT) is None


def test_a_broadcast_from_a1_leaves_the_trunk_tagged_10_only() -> None:
    net = Net()
    pkt = frame(H1, BROADCAST, payload=b"from a1")
    out = net.from_port("a1", pkt)
    assert out == {"T.10": [frame(H1, BROADCAST, tag(10), payload=b"from a1")]}


def test_a_frame_from_a1_to_a_host_learned_on_the_trunk_leaves_tagged_10_with_priority_0() -> None:
    net = Net()
    net.from_trunk("T", frame(HT, BROADCAST, tag(10, 6, 1)))
    pkt = frame(H1, HT, payload=b"to T")
    out = net.from_port("a1", pkt)
    assert out == {"T.10": [frame(H1, HT, tag(10), payload=b"to T")]}
    assert dot1q(out["T.10"][0]) == (10, 0, 0)
    a1 = net.port("a1")
    assert net.sent(net.dp.forwarder(a1)(a1, pkt, NOW), pkt) == out  # the IO shell's path too


def test_a_tagged_frame_on_an_access_port_of_a_trunked_segment_is_vlan_on_access() -> None:
    net = Net()
    for vid in (10, 20, 99):
        assert net.from_port("a1", frame(H1, BROADCAST, tag(vid))) == {}
    a1 = net.port("a1")
    assert net.dp.forwarder(a1)(a1, frame(H1, HT, tag(10)), NOW) is None
    assert net.drops() == {"a1": {Drop.VLAN_ON_ACCESS: 4}}
    assert net.fdb_port("lan", H1) is None  # dropped before learning


def test_a_tagged_frame_on_a_segment_without_a_trunk_passes_unchanged() -> None:
    net = Net()
    net.from_port("x2", frame(X2, BROADCAST))
    pkt = frame(X1, X2, tag(99, 5))
    assert net.from_port("x1", pkt) == {"x2": [pkt]}
    x1 = net.port("x1")
    assert net.sent(net.dp.forwarder(x1)(x1, pkt, NOW), pkt) == {"x2": [pkt]}
    flood = frame(X1, BROADCAST, tag(4094))
    assert net.from_port("x1", flood) == {"x2": [flood]}
    assert net.drops() == {}


def test_one_mac_in_two_vlans_is_two_fdb_entries() -> None:
    """IEEE 802.1Q 8.8: independent learning, one FDB per segment."""
    net = Net()
    net.from_trunk("T", frame(HT, BROADCAST, tag(10)))
    net.from_trunk("T", frame(HT, BROADCAST, tag(20)))
    assert (net.fdb_port("lan", HT), net.fdb_port("dmz", HT)) == ("T.10", "T.20")
    assert net.dp.counters.events[Event.FDB_MOVES] == 0
    assert net.from_port("a1", frame(H1, HT)) == {"T.10": [frame(H1, HT, tag(10))]}
    assert net.from_port("a2", frame(H2, HT)) == {"T.20": [frame(H2, HT, tag(20))]}


def test_unknown_vid_and_untagged_on_a_trunk_are_counted_on_the_trunks_own_port() -> None:
    net = Net()
    assert net.from_trunk("T", frame(HT, BROADCAST, tag(30))) == {}
    assert net.from_trunk("T", frame(HT, BROADCAST)) == {}
    assert net.from_trunk("T", frame(HT, BROADCAST, tag(10))[:26]) == {}
    assert net.drops() == {"T": {Drop.VLAN_UNKNOWN: 1, Drop.VLAN_UNTAGGED: 1, Drop.RUNT: 1}}
    assert net.dp.counters.rx_packets[net.port("T")] == 3
    assert net.fdb_port("lan", HT) is None


def test_a_second_trunk_on_a_segment_leaves_the_first_trunks_vlan_port_a_trunk_port() -> None:
    """add_trunk makes every port already on the segment an access port (tagged in is a drop); a VLAN
    port of a trunk added before is not an access port: its frames are tagged by definition."""
    net = Net((T_DEF, U_DEF))
    out = net.from_trunk("T", frame(HT, BROADCAST, tag(10, 2)))
    assert net.drops() == {}
    assert out == {"a1": [frame(HT, BROADCAST)], "U.30": [frame(HT, BROADCAST, tag(30, 2))]}


def test_priority_is_kept_from_trunk_to_trunk_and_only_the_vid_changes() -> None:
    net = Net((T_DEF, U_DEF))
    net.from_trunk("U", frame(HU, BROADCAST, tag(30)))
    out = net.from_trunk("T", frame(HT, HU, tag(10, 5, 1), payload=b"T to U"))
    assert net.drops() == {}
    assert out == {"U.30": [frame(HT, HU, tag(30, 5, 1), payload=b"T to U")]}


def test_a_broadcast_from_the_later_trunk_reaches_the_earlier_retagged_with_its_priority() -> None:
    net = Net((T_DEF, U_DEF))
    out = net.from_trunk("U", frame(HU, BROADCAST, tag(30, 5), payload=b"U to all"))
    assert out == {
        "a1": [frame(HU, BROADCAST, payload=b"U to all")],
        "T.10": [frame(HU, BROADCAST, tag(10, 5), payload=b"U to all")],
    }
    assert net.drops() == {}


def test_a_double_tagged_frame_reaches_a1_with_its_inner_tag() -> None:
    """The outer tag is ours; the inner one (Q-in-Q's customer tag) is payload."""
    net = Net()
    net.from_port("a1", frame(H1, BROADCAST))
    out = net.from_trunk("T", frame(HT, H1, tag(10, 1), tag(99, 4), payload=b"inner"))
    assert out == {"a1": [frame(HT, H1, tag(99, 4), payload=b"inner")]}


def test_the_native_vlan_takes_untagged_frames_and_sends_untagged() -> None:
    net = Net((N_DEF,))
    pkt = frame(HN, BROADCAST, payload=b"native")
    assert net.from_trunk("N", pkt) == {"a1": [pkt]}
    assert net.fdb_port("lan", HN) == "N.native"
    to_n = frame(H1, HN, payload=b"to native")
    assert net.from_port("a1", to_n) == {"N.native": [to_n]}
    bcast = frame(H1, BROADCAST)
    assert net.from_port("a1", bcast) == {"N.native": [bcast]}
    # N's tagged VLAN still works beside it
    assert net.from_port("a2", frame(H2, BROADCAST)) == {"N.40": [frame(H2, BROADCAST, tag(40))]}
    assert net.drops() == {}


def test_a_frame_tagged_on_one_trunk_leaves_another_trunks_native_vlan_untagged() -> None:
    # N first: a VLAN port added to lan later does not touch N's native port (see the test of the
    # second trunk above for the other order)
    net = Net((N_DEF, T_DEF))
    net.from_trunk("N", frame(HN, BROADCAST))
    out = net.from_trunk("T", frame(HT, HN, tag(10, 7), payload=b"T to N"))
    assert out == {"N.native": [frame(HT, HN, payload=b"T to N")]}
    assert net.drops() == {}


def test_a_tso_frame_from_the_trunk_is_popped_with_its_offsets_and_segments_cleanly() -> None:
    net = Net()
    net.from_port("a1", frame(H1, BROADCAST))
    payload = bytes(range(200)) * 20
    super_frame = vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, 58, 1200, 38, 16) + partial(
        tcp_super(HT, H1, tag(10), payload=payload)
    )
    out = net.from_trunk("T", super_frame)
    [delivered] = out["a1"]
    assert header(delivered) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1200, 34, 16)
    assert_segments(segment(delivered), payload, 1200, vid=None)


def test_a_tso_frame_from_a1_is_pushed_with_its_offsets_and_segments_cleanly() -> None:
    net = Net()
    net.from_trunk("T", frame(HT, BROADCAST, tag(10)))
    payload = bytes(range(100)) * 30
    super_frame = vnet(VNET_F_NEEDS_CSUM, GSO_TCPV4, 54, 1400, 34, 16) + partial(
        tcp_super(H1, HT, payload=payload)
    )
    [pushed] = net.from_port("a1", super_frame)["T.10"]
    assert header(pushed) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 58, 1400, 38, 16)
    assert_segments(segment(pushed), payload, 1400, vid=10)


# --- the router on a stick ---------------------------------------------------------------------------
class Stick(Net):
    """Net with T, and a router with interfaces on lan (10.1.0.1), dmz (10.2.0.1) and lab (10.3.0.1).
    Its ARP cache knows 10.1.0.5 (HT, behind T.10), 10.1.0.6 (H1, on a1) and 10.2.0.5 (HT_DMZ,
    behind T.20); the dmz FDB has HT_DMZ on T.20 and the lan FDB H1 on a1."""

    def __init__(self, flow_cache: bool = True) -> None:
        super().__init__()
        if not flow_cache:
            self.dp.flow_cache_max = 0
        lan, dmz, lab = self.seg["lan"], self.seg["dmz"], self.seg["lab"]
        self.router = Router(
            [
                Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24")),
                Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24")),
                Interface(lab, "lab", mac(R_LAB), IPv4Interface("10.3.0.1/24")),
            ]
        )
        self.dp.attach_router(self.router, {lan: mac(R_LAN), dmz: mac(R_DMZ), lab: mac(R_LAB)})
        for address, host, seg in (("10.1.0.5", HT, lan), ("10.1.0.6", H1, lan), ("10.2.0.5", HT_DMZ, dmz)):
            self.router.arp.learn(int(IPv4Address(address)), mac(host), seg, 0.0)
        # Unicast to a MAC nobody has: flooded, the router's copy not for its MAC (no drop, no ARP).
        self.from_port("a2", frame(H2, NOBODY))
        self.from_trunk("T", frame(HT_DMZ, H2, tag(20)))
        self.from_port("a1", frame(H1, NOBODY))
        assert (self.fdb_port("dmz", HT_DMZ), self.fdb_port("lan", H1)) == ("T.20", "a1")


def routed_udp(src_mac: str, dst_mac: str, src: str, dst: str, *tags: Packet, ttl: int = 64) -> bytes:
    pkt: Packet = Ether(src=src_mac, dst=dst_mac)
    for t in tags:
        pkt = pkt / t
    return ZERO_VNET_HDR + bytes(
        raw(pkt / IP(src=src, dst=dst, ttl=ttl, id=7) / UDP(sport=3000, dport=4000) / Raw(b"routed"))
    )


def test_a_packet_tagged_10_for_a_host_in_dmz_behind_the_same_trunk_leaves_tagged_20() -> None:
    net = Stick()
    pkt = routed_udp(HT, R_LAN, "10.1.0.5", "10.2.0.5", tag(10, 5))
    out = net.from_trunk("T", pkt)
    assert list(out) == ["T.20"] and len(out["T.20"]) == 1
    sent = out["T.20"][0]
    eth = Ether(sent[VNET_HDR_LEN:])
    assert (eth.src, eth.dst) == (R_DMZ, HT_DMZ)
    assert dot1q(sent) == (20, 0, 0)  # the router takes it untagged: its priority is not kept
    ip = eth[IP]
    assert (ip.src, ip.dst, ip.ttl) == ("10.1.0.5", "10.2.0.5", 63)
    assert_checksums_verify(sent)
    assert bytes(eth[UDP].payload) == b"routed"
    assert net.drops() == {}


def test_the_flow_caches_path_gives_the_same_bytes_as_the_router() -> None:
    net = Stick()
    pkt = routed_udp(HT, R_LAN, "10.1.0.5", "10.2.0.5", tag(10))
    first = net.from_trunk("T", pkt)
    assert net.dp.counters.flow_cache_hits == 0
    second = net.from_trunk("T", pkt)
    assert net.dp.counters.flow_cache_hits == 1  # the second packet took the cache
    assert second == first
    assert dot1q(second["T.20"][0])[0] == 20
    uncached = Stick(flow_cache=False)
    assert uncached.from_trunk("T", pkt) == first


def test_a_packet_tagged_20_for_a_host_on_a1_leaves_a1_untagged() -> None:
    net = Stick()
    pkt = routed_udp(HT_DMZ, R_DMZ, "10.2.0.5", "10.1.0.6", tag(20, 3))
    out = net.from_trunk("T", pkt)
    expected = routed_udp(R_LAN, H1, "10.2.0.5", "10.1.0.6", ttl=63)
    assert list(out) == ["a1"]
    assert Ether(out["a1"][0][VNET_HDR_LEN:])[IP].ttl == 63
    assert_checksums_verify(out["a1"][0])
    assert out["a1"][0] == expected


def test_a_packet_from_a1_for_a_host_behind_the_trunk_in_dmz_leaves_tagged_20() -> None:
    net = Stick()
    out = net.from_port("a1", routed_udp(H1, R_LAN, "10.1.0.6", "10.2.0.5"))
    assert out == {"T.20": [routed_udp(R_DMZ, HT_DMZ, "10.1.0.6", "10.2.0.5", tag(20), ttl=63)]}


def test_an_arp_request_tagged_10_for_the_router_is_answered_tagged_10() -> None:
    net = Stick()
    request = ZERO_VNET_HDR + bytes(
        raw(Ether(src=HT, dst=BROADCAST) / tag(10) / ARP(op=1, hwsrc=HT, psrc="10.1.0.5", pdst="10.1.0.1"))
    )
    out = net.from_trunk("T", request)
    assert out["a1"] == [pop(request)]
    [reply] = out["T.10"]
    eth = Ether(reply[VNET_HDR_LEN:])
    assert dot1q(reply) == (10, 0, 0)
    assert (eth.src, eth.dst) == (R_LAN, HT)
    assert (eth[ARP].op, eth[ARP].psrc, eth[ARP].hwsrc, eth[ARP].pdst) == (2, "10.1.0.1", R_LAN, "10.1.0.5")
    assert set(out) == {"a1", "T.10"}


def test_a_tagged_frame_from_a_segment_without_a_trunk_is_not_routed() -> None:
    """lab is on no trunk, so a tag on its frames is not one of ours (its L2 switch passes it on
    unchanged): the router must refuse it as it does with no trunk anywhere (unsupported
    ethertype), not pop a VLAN it knows nothing about and route what was inside."""
    pkt = routed_udp(X1, R_LAB, "10.3.0.5", "10.1.0.6", tag(99))
    alone = Datapath()  # the same frame with no trunk anywhere
    lab = alone.add_segment("lab")
    x1 = alone.add_port("x1", lab)
    alone.attach_router(
        Router([Interface(lab, "lab", mac(R_LAB), IPv4Interface("10.3.0.1/24"))]), {lab: mac(R_LAB)}
    )
    assert not alone.receive(x1, pkt, NOW)  # nothing sent (the router's verdict: an empty list)
    assert alone.drop_reasons() == {Drop.UNSUPPORTED_ETHERTYPE: 1}
    net = Stick()
    assert net.from_port("x1", pkt) == {}
    assert net.drops() == {"x1": {Drop.UNSUPPORTED_ETHERTYPE: 1}}


def test_a_tagged_arp_request_on_a_segment_without_a_trunk_is_not_answered() -> None:
    """The flood branch of the same rule: a VID 99 who-has for the router's lab address passes on to
    x2 unchanged, and the router, which has no VLAN 99, does not answer it (untagged, at that)."""
    pkt = ZERO_VNET_HDR + bytes(
        raw(Ether(src=X1, dst=BROADCAST) / tag(99) / ARP(op=1, hwsrc=X1, psrc="10.3.0.5", pdst="10.3.0.1"))
    )
    alone = Datapath()  # the same frame with no trunk anywhere: flooded, not answered
    lab = alone.add_segment("lab")
    x1, x2 = alone.add_port("x1", lab), alone.add_port("x2", lab)
    alone.attach_router(
        Router([Interface(lab, "lab", mac(R_LAB), IPv4Interface("10.3.0.1/24"))]), {lab: mac(R_LAB)}
    )
    assert alone.receive(x1, pkt, NOW) == [(x2, pkt)]
    assert Stick().from_port("x1", pkt) == {"x2": [pkt]}


def test_a_trunk_with_only_a_native_vlan_takes_untagged_and_refuses_every_tag() -> None:
    net = Net((("M", (), "lab"),))
    pkt = frame(HN, BROADCAST)
    assert net.from_trunk("M", pkt) == {"x1": [pkt], "x2": [pkt]}
    assert net.from_trunk("M", frame(HN, BROADCAST, tag(1))) == {}
    assert net.from_port("x1", frame(X1, BROADCAST, tag(99))) == {}  # lab is on a trunk now
    assert net.drops() == {"M": {Drop.VLAN_UNKNOWN: 1}, "x1": {Drop.VLAN_ON_ACCESS: 1}}
    assert net.trunks["M"].ports == [net.port("M.native")]


# --- a trunk and a VXLAN tunnel on one segment: the tunnel carries what access ports carry ---------------
def trunk_and_tunnel() -> tuple[Datapath, Trunk, int]:
    """lan on trunk T (VID 10) and on a VXLAN tunnel (VNI 42) to one remote; returns the remote's port."""
    dp = Datapath()
    lan = dp.add_segment("lan")
    dp.add_port("a1", lan)
    tunnel = Tunnel(42, lan, -1, "198.18.6.1", mtu=1450)
    dp.add_tunnel(tunnel, [("198.18.6.2", True)])
    trunk = Trunk("T")
    dp.add_trunk(trunk, [(lan, 10)], None)
    return dp, trunk, tunnel.remotes["198.18.6.2"]


def test_a_tagged_frame_from_the_trunk_crosses_the_tunnel_untagged_and_comes_back_tagged() -> None:
    """The tag is the trunk's business: a frame tagged 10 (PCP 5) from T is wrapped for the remote with
    no tag inside; the remote's frame to T's MAC leaves T tagged 10, priority 0."""
    dp, trunk, remote = trunk_and_tunnel()
    t_mac, far_mac = "02:00:00:00:0c:01", "02:00:00:00:0d:01"
    inner = Ether(src=far_mac, dst=t_mac) / IP(src="10.1.0.9", dst="10.1.0.7") / UDP(sport=9, dport=9)
    payload = bytes(raw(VXLAN(flags=0x08, vni=42) / inner))
    vtep = Vtep("198.18.6.1", 4789)
    vtep.add(dp.tunnels[0])
    frame_in = ZERO_VNET_HDR + bytes(
        raw(Ether(src=t_mac, dst=far_mac) / Dot1Q(vlan=10, prio=5) / IP() / UDP())
    )
    assert dp.receive_underlay(vtep, payload, "198.18.6.2", NOW)[1] is not None  # far_mac learned
    _, out = dp.receive_trunk(trunk, frame_in, NOW)  # t_mac learned on T.10, then to far_mac
    assert isinstance(out, list) and [p for p, _ in out] == [remote]
    wrapped = IP(bytes(out[0][1]))
    assert Dot1Q not in wrapped[VXLAN].payload and wrapped[VXLAN].payload[Ether].type == 0x0800
    _, _, back = dp.receive_underlay(vtep, payload, "198.18.6.2", NOW)
    assert isinstance(back, list) and [p for p, _ in back] == [trunk.by_vid[10]]
    tagged_back = Ether(bytes(back[0][1])[VNET_HDR_LEN:])
    assert (tagged_back[Dot1Q].vlan, tagged_back[Dot1Q].prio) == (10, 0)


def test_a_tunnel_on_a_segment_with_no_trunk_carries_tagged_frames_as_they_are() -> None:
    """A trunk elsewhere (on lan) changes nothing on other: a tagged frame from other's access port
    enters other's tunnel with its tag, as on a switch without VLANs (only trunked segments pop)."""
    dp = Datapath()
    lan, other = dp.add_segment("lan"), dp.add_segment("other")
    dp.add_port("a1", lan)
    b1 = dp.add_port("b1", other)
    tunnel = Tunnel(42, other, -1, "198.18.6.1", mtu=1450)
    dp.add_tunnel(tunnel, [("198.18.6.2", True)])
    dp.add_trunk(Trunk("T"), [(lan, 10)], None)
    sent = ZERO_VNET_HDR + bytes(
        raw(Ether(src="02:00:00:00:0e:01", dst=BROADCAST) / Dot1Q(vlan=7) / IP() / UDP())
    )
    out = dp.receive(b1, sent, NOW)
    assert isinstance(out, list) and [p for p, _ in out] == [tunnel.remotes["198.18.6.2"]]
    inner = IP(bytes(out[0][1]))[VXLAN].payload
    assert inner[Dot1Q].vlan == 7
