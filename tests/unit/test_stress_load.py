"""The load generator's frames (vswitch/tools/stress/load.py), read back by scapy, and its bounds."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from vswitch.tools.stress import load
from vswitch.tools.stress.load import Endpoints

SRC_MAC = "02:00:00:00:00:0a"
ROUTER_MAC = "02:00:00:00:00:01"
EP = Endpoints(
    src_mac=load.mac_bytes(SRC_MAC),
    dst_mac=load.mac_bytes(ROUTER_MAC),
    src_ip=IPv4Address("10.1.0.2"),
    dst_ip=IPv4Address("198.18.0.1"),
    sweep=IPv4Network("10.1.0.0/16"),
)


def parsed(frame: bytes) -> Ether:
    return Ether(frame)


def checksums_verify(packet: Ether) -> bool:
    """scapy recomputes a checksum it is told to forget: equal means the built one was right."""
    again = Ether(bytes(packet))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in again:
            del again[layer].chksum
    return bytes(Ether(bytes(again))) == bytes(packet)


def test_random_macs_are_distinct_unicast_and_locally_administered() -> None:
    frames = load.build("random-macs", EP, 2000, seed=1)
    sources = {parsed(f).src for f in frames}
    targets = {parsed(f).dst for f in frames}
    assert len(sources) == 2000 and len(targets) == 2000
    for mac in sources | targets:
        first = int(mac.split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02 == 2  # unicast, locally administered
    packet = parsed(frames[0])
    assert UDP in packet and checksums_verify(packet)


def test_syn_frames_are_syns_from_random_ports_through_the_router() -> None:
    frames = load.build("syn", EP, 1000, seed=2)
    packets = [parsed(f) for f in frames]
    assert all(p.dst == ROUTER_MAC and p.src == SRC_MAC for p in packets)
    assert all(p[TCP].flags == "S" and p[TCP].dport == 80 and p[IP].src == "10.1.0.2" for p in packets)
    assert all(1024 <= p[TCP].sport <= 65535 for p in packets)
    assert len({p[TCP].sport for p in packets}) > 900  # random, not one port
    assert packets[1][IP].dst == "198.18.0.2"  # spread over the /16 from dst_ip
    assert all(checksums_verify(p) for p in packets[:50])
    assert all(len(f) >= load.MIN_FRAME for f in frames)


def test_udp_ports_vary_the_destination_port_only() -> None:
    packets = [parsed(f) for f in load.build("udp-ports", EP, 500, seed=3)]
    assert len({p[UDP].sport for p in packets}) == 1
    assert len({p[UDP].dport for p in packets}) > 450
    assert {p[IP].dst for p in packets} == {"198.18.0.1"}
    assert all(checksums_verify(p) for p in packets[:50])


def test_icmp_echo_requests_with_distinct_identifiers() -> None:
    packets = [parsed(f) for f in load.build("icmp-echo", EP, 300, seed=4)]
    assert all(p[ICMP].type == 8 and p[ICMP].code == 0 for p in packets)
    assert len({p[ICMP].id for p in packets}) == 300
    assert all(len(p[ICMP].payload) == 56 for p in packets)
    assert all(checksums_verify(p) for p in packets[:50])


def test_arp_sweep_asks_for_every_address_of_the_16_once() -> None:
    frames = load.build("arp-sweep", EP, 70000)
    assert len(frames) == 65536  # the /16, no more
    first, last = parsed(frames[0]), parsed(frames[-1])
    assert first.dst == "ff:ff:ff:ff:ff:ff" and first[ARP].op == 1
    assert first[ARP].hwsrc == SRC_MAC and first[ARP].psrc == "10.1.0.2"
    assert first[ARP].pdst == "10.1.0.0" and last[ARP].pdst == "10.1.255.255"
    assert len({parsed(f)[ARP].pdst for f in frames[:5000]}) == 5000
    assert all(len(f) == load.MIN_FRAME for f in frames[:10])


def test_fragments_never_complete_a_datagram() -> None:
    packets = [parsed(f) for f in load.build("fragments", EP, 400, seed=5)]
    firsts = [p for p in packets if p[IP].frag == 0]
    laters = [p for p in packets if p[IP].frag != 0]
    assert len(firsts) == len(laters) == 200
    assert all(p[IP].flags == "MF" for p in firsts)
    assert all(p[IP].flags == 0 and p[IP].frag == 185 for p in laters)  # 1480 bytes in
    # No identifier has both its first and its later fragment: nothing reassembles.
    assert not {p[IP].id for p in firsts} & {p[IP].id for p in laters}
    assert len({p[IP].id for p in packets}) == 400
    assert firsts[0][UDP].len == 8 + load.FRAGMENT_DATAGRAM  # the header speaks for the whole datagram
    assert all(p[IP].len == len(p[IP]) for p in packets)  # each IP header counts what it carries


def test_runts_are_all_short_and_some_below_an_ethernet_header() -> None:
    frames = load.build("runts", EP, 100)
    assert len(frames) == 16  # each runt once, to the router and to broadcast
    lengths = {len(f) for f in frames}
    assert max(lengths) < load.MIN_FRAME
    assert min(lengths) < 14
    assert 14 in lengths and 59 in lengths
    bad = Ether(next(f for f in frames if len(f) == 34))
    assert bad[IP].len == 120  # claims more than it has


def test_oversized_frames_exceed_the_mtu_with_and_without_df() -> None:
    packets = [parsed(f) for f in load.build("oversized", EP, 6)]
    assert sorted({p[IP].len for p in packets}) == list(load.OVERSIZED_LENGTHS)
    assert all(p[IP].len > 1500 for p in packets)
    assert {str(p[IP].flags) for p in packets} == {"DF", ""}
    assert all(checksums_verify(p) for p in packets)


def test_udp64_frames_are_60_bytes_and_numbered() -> None:
    frames = load.build("udp64", EP, 10)
    assert {len(f) for f in frames} == {60}
    packets = [parsed(f) for f in frames]
    assert [int.from_bytes(bytes(p[UDP].payload)[:8], "big") for p in packets] == list(range(10))
    assert all(checksums_verify(p) for p in packets)


def test_unknown_kind_and_empty_count_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown flood kind"):
        load.build("teardrop", EP, 1)
    with pytest.raises(ValueError):
        load.build("syn", EP, 0)


# --- the send loop (no socket: a list stands for it, a fake clock for time) ------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_send_stops_at_the_count_and_cycles_the_frames() -> None:
    written: list[bytes] = []

    def write(frame: bytes) -> int:
        written.append(frame)
        return len(frame)

    result = load.send(write, [b"a", b"b", b"c"], pps=0, count=1000, seconds=60)
    assert result.sent == result.attempted == 1000 and result.stopped_by == "count"
    assert written[:4] == [b"a", b"b", b"c", b"a"] and len(written) == 1000


def test_send_counts_errors_by_errno_and_goes_on() -> None:
    calls = 0

    def write(frame: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls % 4 == 0:
            raise OSError(105, "No buffer space available")  # ENOBUFS
        if calls % 10 == 0:
            raise OSError(22, "Invalid argument")  # EINVAL
        return len(frame)

    result = load.send(write, [b"x"], pps=0, count=100, seconds=60)
    assert result.attempted == 100
    assert result.errors == {"ENOBUFS": 25, "EINVAL": 5}
    assert result.sent == 70


def test_paced_send_keeps_the_rate_and_stops_at_the_time_bound() -> None:
    clock = FakeClock()
    sent_at: list[float] = []

    def write(frame: bytes) -> int:
        sent_at.append(clock.now)
        clock.now += 1e-7  # each send costs a little time
        return len(frame)

    result = load.send(write, [b"x"], pps=10_000, count=10**9, seconds=2.0, clock=clock, sleep=clock.sleep)
    assert result.stopped_by == "seconds"
    assert 19_900 <= result.sent <= 20_100  # 2 s at 10 kpps
    first_second = sum(1 for t in sent_at if t < 101.0)
    assert 9_900 <= first_second <= 10_100
