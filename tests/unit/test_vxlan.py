"""VXLAN (RFC 7348) in the core: the push onto the underlay, the checks on what it delivers, the
virtio-net header an inner frame gets, and a datapath with two remote VTEPs (head-end replication,
split horizon, remotes learned in the FDB). Frames are built and read back with scapy."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from vswitch.core.checksum import ones_sum
from vswitch.core.counters import Drop
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.gso import complete
from vswitch.core.vxlan import (
    SPORT_BASE,
    VNI_MAX,
    Tunnel,
    Vtep,
    outer_ipv4_header,
    parse_header,
    received_vnet_header,
    source_port,
)
from vswitch.core.wire import GSO_TCPV4, GSO_TCPV6, VNET_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN, ZERO_VNET_HDR

LOCAL, RA, RB, RC = "198.18.5.1", "198.18.5.2", "198.18.5.3", "198.18.5.4"
VNI = 42
MTU = 1450
NOW = 1.0
BROADCAST = "ff:ff:ff:ff:ff:ff"
# hosts: behind local ports a and b, and behind the remote VTEPs A, B and C
MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"
MAC_RA, MAC_RB, MAC_RC = "02:00:00:00:a0:01", "02:00:00:00:b0:01", "02:00:00:00:c0:01"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def udp_frame(src: str, dst: str, payload: bytes = b"stamp", sport: int = 1024, dport: int = 5000) -> bytes:
    """An Ethernet frame (no virtio-net header) carrying IPv4/UDP."""
    return bytes(
        raw(
            Ether(src=src, dst=dst)
            / IP(src="10.1.0.2", dst="10.1.0.3")
            / UDP(sport=sport, dport=dport)
            / Raw(payload)
        )
    )


def arp_frame(src: str) -> bytes:
    return bytes(raw(Ether(src=src, dst=BROADCAST) / ARP(hwsrc=src, psrc="10.1.0.9", pdst="10.1.0.1")))


def vnet(frame: bytes) -> bytes:
    """frame as a port hands it over: a zero virtio-net header (nothing to finish) in front."""
    return ZERO_VNET_HDR + frame


def datagram(inner: bytes, vni: int = VNI) -> bytes:
    """A VXLAN packet's UDP payload, built by scapy: the I flag and the VNI, then the inner frame."""
    return bytes(raw(VXLAN(flags=0x08, vni=vni) / Raw(inner)))


def header(flags: int, word: int) -> bytes:
    return struct.pack("!II", flags, word)


# --- the push: outer IPv4, UDP and VXLAN headers -----------------------------------------------------
def tunnel(ttl: int = 64, dstport: int = 4789, vni: int = VNI, mtu: int = MTU) -> Tunnel:
    t = Tunnel(vni, 0, 100, LOCAL, dstport=dstport, ttl=ttl, mtu=mtu)
    t.add_remote(RA, 7)
    t.add_remote(RB, 8)
    return t


def push_one(t: Tunnel, port: int, pkt: bytes) -> bytes:
    packets = t.push(port, pkt)
    assert isinstance(packets, list) and len(packets) == 1, packets
    return packets[0]


@pytest.mark.parametrize(
    ("ttl", "dstport", "vni"), [(64, 4789, VNI), (1, 8472, 0), (255, 4790, VNI_MAX)], ids=str
)
def test_push_wraps_the_frame_in_ipv4_udp_and_vxlan_headers(ttl: int, dstport: int, vni: int) -> None:
    t = tunnel(ttl, dstport, vni)
    inner = udp_frame(MAC_A, MAC_RB, payload=b"x" * 100)
    for port, remote in ((7, RA), (8, RB)):
        packet = push_one(t, port, vnet(inner))
        assert len(packet) == 20 + 8 + 8 + len(inner)
        outer = IP(packet)
        assert (outer.version, outer.ihl, outer.tos) == (4, 5, 0)
        assert (outer.flags, outer.frag) == ("DF", 0)  # RFC 7348 4.3: the outer packet is never fragmented
        assert (outer.ttl, outer.proto, outer.src, outer.dst) == (ttl, 17, LOCAL, remote)
        # raw(7) with IP_HDRINCL: the kernel fills in a zero total length, id and header checksum
        assert (outer.len, outer.id, outer.chksum) == (0, 0, 0)
        udp = outer[UDP]
        assert (udp.dport, udp.chksum, udp.len) == (dstport, 0, 16 + len(inner))
        assert SPORT_BASE <= udp.sport <= 0xFFFF
        vxlan = VXLAN(raw(udp.payload))
        assert (vxlan.flags, vxlan.reserved1, vxlan.vni, vxlan.reserved2) == (0x08, 0, vni, 0)
        assert raw(vxlan.payload) == inner  # byte for byte, without the virtio-net header


def test_the_outer_header_template_reads_back_as_ipv4() -> None:
    head = IP(outer_ipv4_header("192.0.2.1", "192.0.2.200", 17))
    assert (head.version, head.ihl, head.flags, head.ttl, head.proto) == (4, 5, "DF", 17, 17)
    assert (head.src, head.dst, head.len, head.id, head.chksum) == ("192.0.2.1", "192.0.2.200", 0, 0, 0)
    assert len(raw(head)) == 20


def sport_of(t: Tunnel, pkt: bytes) -> int:
    port: int = IP(push_one(t, 7, pkt))[UDP].sport
    return port


def test_one_flow_takes_one_source_port_whatever_else_its_packets_carry() -> None:
    """RFC 7348 5: a hash of the inner flow, so ECMP keeps a flow on one path."""
    t = tunnel()
    first = Ether(src=MAC_A, dst=MAC_RA) / IP(src="10.1.0.2", dst="10.1.0.3", id=1, ttl=64)
    second = Ether(src=MAC_A, dst=MAC_RA) / IP(src="10.1.0.2", dst="10.1.0.3", id=999, ttl=3)
    one = sport_of(t, vnet(raw(first / TCP(sport=3333, dport=80, seq=1) / Raw(b"a"))))
    two = sport_of(t, vnet(raw(second / TCP(sport=3333, dport=80, seq=5000, flags="PA") / Raw(b"b" * 900))))
    assert one == two
    assert source_port(vnet(arp_frame(MAC_A))) == source_port(vnet(arp_frame(MAC_A)))


def test_many_flows_spread_over_many_source_ports_in_the_dynamic_range() -> None:
    t = tunnel()
    ports = [sport_of(t, vnet(udp_frame(MAC_A, MAC_RA, sport=10000 + n))) for n in range(256)]
    assert all(SPORT_BASE <= p <= 0xFFFF for p in ports)
    assert len(set(ports)) >= 64  # 256 flows over 16384 ports: nearly all distinct if the hash spreads
    by_address = {
        sport_of(t, vnet(raw(Ether(src=MAC_A, dst=MAC_RA) / IP(src=f"10.1.{n}.2", dst="10.1.0.3") / UDP())))
        for n in range(64)
    }
    assert len(by_address) >= 16
    by_mac = {source_port(vnet(arp_frame(f"02:00:00:00:{n:02x}:01"))) for n in range(64)}
    assert len(by_mac) >= 16 and all(SPORT_BASE <= p <= 0xFFFF for p in by_mac)


# --- what the underlay delivers: parse_header and Vtep.receive ---------------------------------------
INNER = udp_frame(MAC_RA, BROADCAST)


def test_parse_header_gives_the_vni_of_a_valid_packet() -> None:
    assert parse_header(datagram(INNER, 0)) == 0
    assert parse_header(datagram(INNER, VNI)) == VNI
    assert parse_header(datagram(INNER, VNI_MAX)) == VNI_MAX
    assert parse_header(memoryview(datagram(INNER))) == VNI


def test_parse_header_refuses_a_packet_too_short_for_an_inner_ethernet_header() -> None:
    whole = datagram(INNER)
    assert parse_header(whole[: 8 + 14]) == VNI
    for cut in (0, 7, 8, 8 + 13):
        assert parse_header(whole[:cut]) == Drop.VXLAN_RUNT


@pytest.mark.parametrize("bit", [b for b in range(32) if b != 27])
def test_each_reserved_flag_bit_is_bad_flags(bit: int) -> None:
    """RFC 7348 5: only I (bit 27 of the first word) may be set; the kernel drops the rest."""
    assert parse_header(header(0x08000000 | 1 << bit, VNI << 8) + INNER) == Drop.VXLAN_BAD_FLAGS


def test_a_packet_without_the_i_flag_is_bad_flags() -> None:
    assert parse_header(header(0, VNI << 8) + INNER) == Drop.VXLAN_BAD_FLAGS


@pytest.mark.parametrize("bit", range(8))
def test_each_bit_of_the_reserved_byte_after_the_vni_is_bad_flags(bit: int) -> None:
    assert parse_header(header(0x08000000, VNI << 8 | 1 << bit) + INNER) == Drop.VXLAN_BAD_FLAGS


def two_tunnels() -> tuple[Vtep, Tunnel, Tunnel]:
    """One socket (local address and port) serving VNI 42 (remotes A and B) and VNI 43 (remote C)."""
    first = Tunnel(VNI, 0, 100, LOCAL)
    first.add_remote(RA, 101)
    first.add_remote(RB, 102)
    second = Tunnel(43, 1, 200, LOCAL)
    second.add_remote(RC, 201)
    vtep = Vtep(LOCAL, 4789)
    vtep.add(first)
    vtep.add(second)
    return vtep, first, second


def test_vtep_receive_names_the_port_of_the_remote_a_packet_came_from() -> None:
    vtep, _, _ = two_tunnels()
    assert vtep.receive(datagram(INNER, VNI), RA) == (101, None)
    assert vtep.receive(datagram(INNER, VNI), RB) == (102, None)
    assert vtep.receive(datagram(INNER, 43), RC) == (201, None)


def test_vtep_receive_refuses_a_remote_of_another_vni_or_none_charged_to_the_tunnel() -> None:
    """RFC 7348 7: only the VTEPs configured for the VNI are let in; the drop is the tunnel's."""
    vtep, _, _ = two_tunnels()
    assert vtep.receive(datagram(INNER, VNI), RC) == (100, Drop.VXLAN_UNKNOWN_REMOTE)
    assert vtep.receive(datagram(INNER, 43), RA) == (200, Drop.VXLAN_UNKNOWN_REMOTE)
    assert vtep.receive(datagram(INNER, 43), LOCAL) == (200, Drop.VXLAN_UNKNOWN_REMOTE)


def test_vtep_receive_charges_what_belongs_to_no_tunnel_to_its_ledger_port() -> None:
    vtep, _, _ = two_tunnels()
    assert vtep.receive(datagram(INNER, 44), RA) == (100, Drop.VXLAN_UNKNOWN_VNI)
    assert vtep.receive(datagram(INNER)[:20], RA) == (100, Drop.VXLAN_RUNT)
    assert vtep.receive(header(0x08000001, VNI << 8) + INNER, RA) == (100, Drop.VXLAN_BAD_FLAGS)


def test_a_vni_twice_on_one_socket_is_refused() -> None:
    vtep, _, _ = two_tunnels()
    with pytest.raises(ValueError, match="VNI 43"):
        vtep.add(Tunnel(43, 2, 300, LOCAL))


# --- received_vnet_header: the inner frame's promises kept ------------------------------------------
def pseudo_partial(pkt: Packet) -> bytes:
    """pkt (Ether/IP/TCP|UDP) as a Linux sender's CHECKSUM_PARTIAL skb leaves it: the L4 checksum
    field holds the folded pseudo-header sum over the IP header's length, uncomplemented."""
    data = bytearray(raw(pkt))
    ihl = (data[14] & 0x0F) * 4
    proto = data[23]
    length = int.from_bytes(data[16:18], "big") - ihl
    words = struct.unpack("!4H", data[26:34])
    total = sum(words) + proto + length
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    at = 14 + ihl + (16 if proto == 6 else 6)
    data[at : at + 2] = struct.pack("!H", total)
    return bytes(data)


def tcp(
    payload: bytes = b"x" * 200, flags: str = "DF", frag: int = 0, options: Sequence[object] = ()
) -> Packet:
    return (
        Ether(src=MAC_RA, dst=MAC_A)
        / IP(src="10.1.0.9", dst="10.1.0.2", flags=flags, frag=frag)
        / TCP(sport=40000, dport=80, flags="PA", options=list(options))
        / Raw(payload)
    )


def udp(payload: bytes = b"x" * 200, flags: str = "DF", frag: int = 0) -> Packet:
    return (
        Ether(src=MAC_RA, dst=MAC_A)
        / IP(src="10.1.0.9", dst="10.1.0.2", flags=flags, frag=frag)
        / UDP(sport=40000, dport=53)
        / Raw(payload)
    )


@pytest.mark.parametrize(("build", "offset"), [(tcp, 16), (udp, 6)], ids=["tcp", "udp"])
def test_an_inner_frame_with_a_partial_checksum_goes_on_as_needs_csum(
    build: Callable[..., Packet], offset: int
) -> None:
    frame = pseudo_partial(build())
    assert VNET_HDR.unpack(received_vnet_header(frame, MTU)) == (VNET_F_NEEDS_CSUM, 0, 0, 0, 34, offset)
    assert received_vnet_header(memoryview(frame), MTU) == received_vnet_header(frame, MTU)
    with_df_clear = pseudo_partial(build(flags=""))
    assert VNET_HDR.unpack(received_vnet_header(with_df_clear, MTU))[0] == VNET_F_NEEDS_CSUM


@pytest.mark.parametrize("build", [tcp, udp], ids=["tcp", "udp"])
def test_an_inner_frame_with_a_complete_checksum_gets_a_zero_header(build: Callable[..., Packet]) -> None:
    assert received_vnet_header(raw(build()), MTU) == ZERO_VNET_HDR


@pytest.mark.parametrize(
    ("flags", "frag"), [("MF", 0), ("", 185), ("MF", 185)], ids=["first", "last", "middle"]
)
@pytest.mark.parametrize("build", [tcp, udp], ids=["tcp", "udp"])
def test_a_fragment_gets_a_zero_header_even_when_its_field_looks_partial(
    build: Callable[..., Packet], flags: str, frag: int
) -> None:
    """A fragment has no whole L4 header to finish (what sits at the field may be any payload)."""
    frame = pseudo_partial(build(flags=flags, frag=frag))
    assert received_vnet_header(frame, MTU) == ZERO_VNET_HDR


def test_complete_ipv6_tagged_optioned_and_non_ip_frames_get_a_zero_header() -> None:
    v6 = raw(Ether(src=MAC_RA, dst=MAC_A) / IPv6() / UDP() / Raw(b"x" * 50))
    tagged = raw(Ether(src=MAC_RA, dst=MAC_A) / Dot1Q(vlan=3) / IP() / UDP() / Raw(b"x" * 50))
    with_options = raw(
        Ether(src=MAC_RA, dst=MAC_A) / IP(options=[b"\x01\x01\x01\x00"]) / UDP() / Raw(b"x" * 50)
    )
    for frame in (arp_frame(MAC_RA), v6, tagged, with_options, raw(tcp())[:33], b""):
        assert received_vnet_header(frame, MTU) == ZERO_VNET_HDR


def test_a_truncated_inner_frame_gets_a_zero_header() -> None:
    """The IP header claims more than arrived: no checksum to promise over bytes that are not there."""
    frame = pseudo_partial(udp())
    assert received_vnet_header(frame[:-1], MTU) == ZERO_VNET_HDR


@pytest.mark.parametrize(
    "options", [[], [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]], ids=["20", "32"]
)
def test_a_tcp_super_frame_longer_than_the_mtu_goes_on_as_tso(options: list[object]) -> None:
    """A sender's GSO frame that crossed veth whole: cut at the MSS the tunnel's MTU allows."""
    pkt = tcp(payload=b"y" * 4000, options=options)
    frame = pseudo_partial(pkt)
    tcp_len = 20 + (12 if options else 0)
    assert Ether(frame)[TCP].dataofs * 4 == tcp_len
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack(received_vnet_header(frame, MTU))
    assert (flags, gso_type, start, offset) == (VNET_F_NEEDS_CSUM, GSO_TCPV4, 34, 16)
    assert hdr_len == 14 + 20 + tcp_len
    assert gso_size == MTU - 20 - tcp_len
    assert gso_size + hdr_len - 14 == MTU  # every segment is exactly the tunnel's MTU but the last


def test_a_frame_of_exactly_the_mtu_is_not_tso_and_a_long_udp_or_complete_tcp_is_not_either() -> None:
    at_mtu = pseudo_partial(tcp(payload=b"z" * (MTU - 40)))
    assert len(at_mtu) == 14 + MTU
    assert VNET_HDR.unpack(received_vnet_header(at_mtu, MTU))[1] == 0
    over = pseudo_partial(tcp(payload=b"z" * (MTU - 39)))
    assert VNET_HDR.unpack(received_vnet_header(over, MTU))[1] == GSO_TCPV4
    long_udp = pseudo_partial(udp(payload=b"z" * 3000))
    assert VNET_HDR.unpack(received_vnet_header(long_udp, MTU))[:2] == (VNET_F_NEEDS_CSUM, 0)
    assert received_vnet_header(raw(tcp(payload=b"z" * 3000)), MTU) == ZERO_VNET_HDR


@pytest.mark.parametrize("mtu", [68, 79, 80])
def test_a_tcp_header_that_leaves_no_room_under_the_mtu_gets_a_header_a_tap_takes(mtu: int) -> None:
    """A tunnel's MTU may be as low as 68 (RFC 791's minimum): a remote's partial TCP frame with a
    60-byte header (40 bytes of options) over it leaves no MSS to cut at. Whatever header it gets, it
    is returned, not raised, and a GSO one has a gso_size of at least 1 (gso.py itself refuses 0)."""
    frame = pseudo_partial(tcp(payload=b"a" * 100, options=[("NOP", None)] * 40))
    flags, gso_type, _, gso_size, start, offset = VNET_HDR.unpack(received_vnet_header(frame, mtu))
    assert (flags, start, offset) == (VNET_F_NEEDS_CSUM, 34, 16)
    assert gso_type == 0 or gso_size > 0


# --- a datapath with a tunnel: two local ports, remotes A and B (and C, named by a static entry) -----
class Net:
    """lan with local ports a and b and a VXLAN tunnel (VNI 42, MTU 1450) to the given remotes."""

    def __init__(
        self, remotes: Sequence[tuple[str, bool]] = ((RA, True), (RB, True)), mtu: int = MTU
    ) -> None:
        self.dp = Datapath()
        lan = self.dp.add_segment("lan")
        self.a = self.dp.add_port("a", lan)
        self.b = self.dp.add_port("b", lan)
        self.tunnel = Tunnel(VNI, lan, -1, LOCAL, mtu=mtu)
        self.dp.add_tunnel(self.tunnel, list(remotes))
        self.vtep = Vtep(LOCAL, 4789)
        self.vtep.add(self.tunnel)
        self.fdb = self.dp.segments[lan].switch.fdb

    def port_of(self, remote: str) -> int:
        return self.tunnel.remotes[remote]

    def from_remote(self, remote: str, inner: bytes) -> tuple[int, bytes | None, Verdict]:
        return self.dp.receive_underlay(self.vtep, datagram(inner), remote, NOW)

    def sent(self, verdict: Verdict, pkt: bytes) -> dict[int, list[bytes]]:
        """Every port a verdict writes to, with what it writes there."""
        out: dict[int, list[bytes]] = {}
        if verdict is None:
            return out
        if isinstance(verdict, int):
            return {verdict: [pkt]}
        if isinstance(verdict, tuple):
            return {port: [pkt] for port in verdict}
        for port, frame in verdict:
            out.setdefault(port, []).append(bytes(frame))
        return out

    def drops(self) -> dict[int, dict[str, int]]:
        return {p: dict(c) for p, c in enumerate(self.dp.counters.drops) if sum(c.values())}


def decap(packet: bytes) -> tuple[str, bytes]:
    """(the outer destination, the inner frame) of a packet pushed into the tunnel."""
    outer = IP(packet)
    vxlan = VXLAN(raw(outer[UDP].payload))
    assert vxlan.vni == VNI
    return outer.dst, bytes(raw(vxlan.payload))


def test_a_broadcast_from_a_local_port_reaches_the_other_port_and_each_remote_once() -> None:
    """Head-end replication (RFC 7348 4.2): one encapsulated copy per remote VTEP."""
    net = Net()
    pkt = vnet(arp_frame(MAC_A))
    out = net.sent(net.dp.receive(net.a, pkt, NOW), pkt)
    ra, rb = net.port_of(RA), net.port_of(RB)
    assert set(out) == {net.b, ra, rb}
    assert out[net.b] == [pkt]
    assert [decap(p) for p in out[ra]] == [(RA, pkt[10:])]
    assert [decap(p) for p in out[rb]] == [(RB, pkt[10:])]
    assert net.drops() == {}


def test_the_shells_forwarder_for_a_tunnelled_segment_encapsulates_too() -> None:
    """The IO shell calls forwarder(port), not receive: it must not be the bare switch decision,
    whose flood would hand raw frames to the remotes' ports."""
    net = Net()
    pkt = vnet(arp_frame(MAC_A))
    out = net.sent(net.dp.forwarder(net.a)(net.a, pkt, NOW), pkt)  # type: ignore[arg-type]
    assert [decap(p)[0] for p in out[net.port_of(RA)]] == [RA]
    assert [decap(p)[0] for p in out[net.port_of(RB)]] == [RB]


def test_a_broadcast_from_a_remote_reaches_the_local_ports_and_never_another_remote() -> None:
    """Split horizon: what came from the underlay never goes back into it."""
    net = Net()
    inner = arp_frame(MAC_RA)
    port, pkt, verdict = net.from_remote(RA, inner)
    assert port == net.port_of(RA)
    assert pkt == ZERO_VNET_HDR + inner
    out = net.sent(verdict, pkt)
    assert set(out) == {net.a, net.b}
    assert out[net.a] == out[net.b] == [pkt]
    assert net.dp.counters.rx_packets[port] == 1
    assert net.dp.counters.rx_bytes[port] == len(inner)


def test_a_unicast_from_one_remote_to_a_mac_behind_another_is_dropped_same_port() -> None:
    net = Net()
    net.from_remote(RB, arp_frame(MAC_RB))
    _, _, verdict = net.from_remote(RA, udp_frame(MAC_RA, MAC_RB))
    assert verdict is None
    assert net.drops() == {net.port_of(RA): {Drop.SAME_PORT: 1}}


def test_a_unicast_to_a_mac_behind_a_remote_goes_to_that_remote_only() -> None:
    net = Net()
    net.from_remote(RB, arp_frame(MAC_RB))
    pkt = vnet(udp_frame(MAC_A, MAC_RB))
    out = net.sent(net.dp.receive(net.a, pkt, NOW), pkt)
    assert list(out) == [net.port_of(RB)]
    assert [decap(p) for p in out[net.port_of(RB)]] == [(RB, pkt[10:])]


def test_a_unicast_from_a_remote_to_a_local_host_is_delivered_unwrapped() -> None:
    net = Net()
    net.dp.receive(net.a, vnet(arp_frame(MAC_A)), NOW)
    inner = udp_frame(MAC_RA, MAC_A)
    _, pkt, verdict = net.from_remote(RA, inner)
    assert verdict == net.a and pkt == ZERO_VNET_HDR + inner


def test_a_mac_learned_from_a_remote_lives_on_its_port_and_moves_with_it() -> None:
    net = Net()
    assert net.fdb.lookup(mac(MAC_RB)) is None
    net.from_remote(RB, arp_frame(MAC_RB))
    assert net.fdb.lookup(mac(MAC_RB)) == net.port_of(RB)
    net.from_remote(RA, arp_frame(MAC_RB))
    assert net.fdb.lookup(mac(MAC_RB)) == net.port_of(RA)
    pkt = vnet(udp_frame(MAC_A, MAC_RB))
    out = net.sent(net.dp.receive(net.a, pkt, NOW), pkt)
    assert [decap(p)[0] for p in out[net.port_of(RA)]] == [RA] and list(out) == [net.port_of(RA)]


def test_a_remote_named_only_by_a_static_entry_gets_no_floods_but_its_unicast() -> None:
    net = Net([(RA, True), (RB, True), (RC, False)])
    rc = net.port_of(RC)
    net.fdb.add_static(mac(MAC_RC), rc, owned=False)
    pkt = vnet(arp_frame(MAC_A))
    assert rc not in net.sent(net.dp.receive(net.a, pkt, NOW), pkt)
    _, from_a, verdict = net.from_remote(RA, arp_frame(MAC_RA))
    assert from_a is not None and set(net.sent(verdict, from_a)) == {net.a, net.b}
    unicast = vnet(udp_frame(MAC_A, MAC_RC))
    out = net.sent(net.dp.receive(net.a, unicast, NOW), unicast)
    assert list(out) == [rc]
    assert [decap(p) for p in out[rc]] == [(RC, unicast[10:])]


def test_learning_from_another_port_does_not_move_a_static_remote_entry() -> None:
    net = Net([(RA, True), (RC, False)])
    rc = net.port_of(RC)
    net.fdb.add_static(mac(MAC_RC), rc, owned=False)
    pkt = vnet(udp_frame(MAC_RC, BROADCAST))
    out = net.sent(net.dp.receive(net.b, pkt, NOW), pkt)
    assert net.b not in out and net.a in out  # not refused as the switch's own address: it floods
    net.from_remote(RA, arp_frame(MAC_RC))
    assert net.fdb.lookup(mac(MAC_RC)) == rc
    assert net.drops() == {}


def test_a_frame_too_big_for_the_tunnel_still_reaches_the_local_ports() -> None:
    net = Net()
    pkt = vnet(udp_frame(MAC_A, BROADCAST, payload=b"q" * (MTU - 28 + 1)))
    out = net.sent(net.dp.receive(net.a, pkt, NOW), pkt)
    assert out == {net.b: [pkt]}
    assert net.drops()[net.a][Drop.VXLAN_TOO_BIG] > 0


@pytest.mark.parametrize("payload_len", [200, 4000], ids=["needs-csum", "tso"])
def test_a_partial_frame_from_the_underlay_reaches_a_local_port_with_its_header(payload_len: int) -> None:
    net = Net()
    net.dp.receive(net.a, vnet(arp_frame(MAC_A)), NOW)
    inner = pseudo_partial(tcp(payload=b"p" * payload_len))
    _, pkt, verdict = net.from_remote(RA, inner)
    assert verdict == net.a
    assert pkt is not None and pkt[10:] == inner
    assert pkt[:10] == received_vnet_header(inner, MTU)
    flags, gso_type = VNET_HDR.unpack(pkt[:10])[:2]
    assert (flags, gso_type) == (VNET_F_NEEDS_CSUM, GSO_TCPV4 if payload_len > MTU else 0)


def test_a_remotes_frame_on_a_tunnel_of_the_smallest_mtu_is_delivered_not_raised() -> None:
    """Bad input from the wire never raises out of the core (a remote's TCP options, MTU 68)."""
    net = Net(mtu=68)
    net.dp.receive(net.a, vnet(arp_frame(MAC_A)), NOW)
    inner = pseudo_partial(tcp(payload=b"a" * 100, options=[("NOP", None)] * 40))
    _, pkt, verdict = net.from_remote(RA, inner)
    assert verdict == net.a and pkt is not None and pkt[10:] == inner


@pytest.mark.parametrize(
    ("payload", "source", "reason"),
    [
        (datagram(INNER)[:21], RA, Drop.VXLAN_RUNT),
        (header(0x08000000, VNI << 8 | 1) + INNER, RA, Drop.VXLAN_BAD_FLAGS),
        (datagram(INNER, 7), RA, Drop.VXLAN_UNKNOWN_VNI),
        (datagram(INNER), RC, Drop.VXLAN_UNKNOWN_REMOTE),
    ],
    ids=str,
)
def test_the_datapath_counts_an_underlay_drop_on_the_tunnels_port(
    payload: bytes, source: str, reason: Drop
) -> None:
    net = Net()
    assert net.dp.receive_underlay(net.vtep, payload, source, NOW) == (net.tunnel.port, None, None)
    assert net.drops() == {net.tunnel.port: {reason: 1}}
    assert net.fdb.lookup(mac(MAC_RA)) is None  # nothing was learned from it


def partial_of(frame: bytes, l4: int, offset: int) -> bytes:
    """frame with its complete L4 checksum turned back into the partial form a Linux sender leaves:
    since ~C = P + S (S: the L4 bytes summed with the field zeroed), P = ~C + ~S in one's complement.
    Derived from scapy's checksum, not from the pseudo-header the code under test sums."""
    data = bytearray(frame)
    complete_sum = int.from_bytes(data[l4 + offset : l4 + offset + 2], "big")
    data[l4 + offset : l4 + offset + 2] = b"\0\0"
    total = (~complete_sum & 0xFFFF) + (~ones_sum(data[l4:]) & 0xFFFF)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    data[l4 + offset : l4 + offset + 2] = struct.pack("!H", total)
    return bytes(data)


PARTIAL_SHAPES = {
    "ipv6-tcp": (
        Ether(src=MAC_RA, dst=MAC_A) / IPv6(src="fd00::9", dst="fd00::2") / TCP() / Raw(b"x" * 99),
        54,
        16,
    ),
    "ipv6-udp": (
        Ether(src=MAC_RA, dst=MAC_A) / IPv6(src="fd00::9", dst="fd00::2") / UDP() / Raw(b"x" * 99),
        54,
        6,
    ),
    "vlan-ipv4-tcp": (
        Ether(src=MAC_RA, dst=MAC_A)
        / Dot1Q(vlan=3)
        / IP(src="10.1.0.9", dst="10.1.0.2")
        / TCP()
        / Raw(b"x" * 99),
        38,
        16,
    ),
    "ipv4-options-udp": (
        Ether(src=MAC_RA, dst=MAC_A)
        / IP(src="10.1.0.9", dst="10.1.0.2", options=[b"\x01\x01\x01\x00"])
        / UDP()
        / Raw(b"x" * 99),
        38,
        6,
    ),
}


@pytest.mark.parametrize("shape", list(PARTIAL_SHAPES))
def test_a_partial_checksum_is_recognised_in_ipv6_tagged_and_optioned_frames(shape: str) -> None:
    """The header says where the checksum starts; finishing the frame by it (gso.complete, as a tap's
    receiver would) gives back scapy's complete checksum."""
    packet, l4, offset = PARTIAL_SHAPES[shape]
    whole = raw(packet)
    frame = partial_of(whole, l4, offset)
    assert frame != whole
    header = received_vnet_header(frame, MTU)
    assert VNET_HDR.unpack(header) == (VNET_F_NEEDS_CSUM, 0, 0, 0, l4, offset)
    assert complete(header + frame)[VNET_HDR_LEN:] == whole


def test_an_ipv6_tcp_super_frame_from_the_underlay_becomes_a_tsov6_frame() -> None:
    packet = Ether(src=MAC_RA, dst=MAC_A) / IPv6(src="fd00::9", dst="fd00::2") / TCP() / Raw(b"x" * 4000)
    frame = partial_of(raw(packet), 54, 16)
    flags, gso_type, hdr_len, gso_size, start, offset = VNET_HDR.unpack(received_vnet_header(frame, 1450))
    assert (flags, gso_type, hdr_len, start, offset) == (VNET_F_NEEDS_CSUM, GSO_TCPV6, 74, 54, 16)
    assert gso_size == 1450 - 40 - 20


# --- a multicast group: floods to it, VTEPs heard from learned as remotes (RFC 7348 section 4.2) ----------
GROUP = "239.1.1.42"


def grouped(max_learned: int = 256) -> tuple[Datapath, int, Tunnel, Vtep]:
    """lan: local port a, and a tunnel whose only configured remote is the group."""
    dp = Datapath()
    lan = dp.add_segment("lan")
    a = dp.add_port("a", lan)
    t = Tunnel(VNI, lan, -1, LOCAL, mtu=MTU)
    t.group, t.max_learned = GROUP, max_learned
    dp.add_tunnel(t, [(GROUP, True)])
    vtep = Vtep(LOCAL, 4789)
    vtep.add(t)
    return dp, a, t, vtep


def test_a_vtep_heard_on_a_group_tunnel_is_learned_as_a_remote_reached_by_unicast_only() -> None:
    dp, a, t, vtep = grouped()
    port, frame, verdict = dp.receive_underlay(vtep, datagram(arp_frame(MAC_RA)), RA, NOW)
    assert frame is not None and port == t.remotes[RA] and verdict == (a,)
    assert dp.new_remotes == [(t, RA, port)]  # the shell opens its socket
    assert dp.segments[0].switch.fdb.lookup(mac(MAC_RA)) == port
    # A flood from a goes to the group only (one copy, TTL 1); a unicast to MAC_RA goes to RA only.
    flood = dp.receive(a, vnet(udp_frame(MAC_A, BROADCAST)), NOW)
    assert isinstance(flood, list) and [p for p, _ in flood] == [t.remotes[GROUP]]
    outer = IP(bytes(flood[0][1]))
    assert (outer.dst, outer.ttl) == (GROUP, 1)
    unicast = dp.receive(a, vnet(udp_frame(MAC_A, MAC_RA)), NOW)
    assert isinstance(unicast, list) and [p for p, _ in unicast] == [port]
    assert IP(bytes(unicast[0][1])).dst == RA


def test_learned_remotes_are_bounded_and_our_own_address_is_never_learned() -> None:
    dp, _, t, vtep = grouped(max_learned=1)
    dp.receive_underlay(vtep, datagram(arp_frame(MAC_RA)), RA, NOW)
    port, frame, _ = dp.receive_underlay(vtep, datagram(arp_frame(MAC_RB)), RB, NOW)
    assert (port, frame) == (t.port, None) and RB not in t.remotes
    assert dp.counters.drops[t.port][Drop.VXLAN_UNKNOWN_REMOTE] == 1
    dp2, _, t2, vtep2 = grouped()
    port, frame, _ = dp2.receive_underlay(vtep2, datagram(arp_frame(MAC_RC)), LOCAL, NOW)
    assert (port, frame) == (t2.port, None) and LOCAL not in t2.remotes


def test_without_a_group_an_unknown_vtep_is_never_learned() -> None:
    dp = Datapath()
    lan = dp.add_segment("lan")
    dp.add_port("a", lan)
    t = Tunnel(VNI, lan, -1, LOCAL, mtu=MTU)
    dp.add_tunnel(t, [(RA, True)])
    vtep = Vtep(LOCAL, 4789)
    vtep.add(t)
    port, frame, _ = dp.receive_underlay(vtep, datagram(arp_frame(MAC_RB)), RB, NOW)
    assert (port, frame) == (t.port, None) and set(t.remotes) == {RA} and dp.new_remotes == []
