"""Network emulation's core (core/emulation.py), exactly: a fake clock (the floats passed as `now`), seeds,
and frames built with scapy behind a virtio-net header as a tap hands them over. No sleeps: every time
below is a number the test chose, and every output time is compared with the one it must be.

Where a property is statistical (a loss rate, a burst length) the bound is computed from the model
(a binomial interval, a Markov chain's variance), not written down, and the run is seeded: the same
numbers come out every time, and a change in the model moves them out of the interval.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from functools import cache
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Padding, Raw
from scapy.utils import checksum

from vswitch.core.bpf import compile_filter
from vswitch.core.counters import Drop
from vswitch.core.emulation import (
    DEFAULT_LIMIT_MAX,
    DISTRIBUTIONS,
    LIMIT_MAX,
    LIMIT_MIN,
    SWITCH_PPS,
    Emulator,
    Impairment,
    Selector,
    Stage,
)
from vswitch.core.gso import complete, segment
from vswitch.core.wire import (
    GSO_TCPV4,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR,
    VNET_HDR_LEN,
    ZERO_VNET_HDR,
)

NOW = 100.0  # every stage starts here (binary-exact, as are the offsets added to it below)
SRC_MAC, DST_MAC = "02:00:00:00:01:01", "02:00:00:00:01:02"
SRC4, DST4 = "10.1.0.2", "10.1.0.3"
PROTO_TCP, PROTO_UDP = 6, 17
UDP_PAYLOAD = VNET_HDR_LEN + 14 + 20 + 8  # where udp()'s payload starts in the buffer (its index first)
Z = NormalDist().inv_cdf(1 - 0.001 / 2)  # a two-sided 99.9 % interval, in standard deviations


# --- frames ------------------------------------------------------------------------------------------
def stamped(size: int) -> bytes:
    """A payload no two stretches of which look alike."""
    return b"".join(struct.pack("!H", i & 0xFFFF) for i in range((size + 1) // 2))[:size]


@cache
def udp(index: int, size: int = 200, dport: int = 5353) -> bytes:
    """A complete UDPv4 frame (zeroed virtio-net header) of size bytes of Ethernet, its payload starting
    with index: the frame says which one it is wherever it comes out."""
    head = Ether(src=SRC_MAC, dst=DST_MAC) / IP(src=SRC4, dst=DST4, id=index & 0xFFFF)
    payload = index.to_bytes(4, "big") + stamped(size - (UDP_PAYLOAD - VNET_HDR_LEN) - 4)
    return ZERO_VNET_HDR + raw(head / UDP(sport=40001, dport=dport) / Raw(payload))


def index_of(pkt: bytes) -> int:
    return int.from_bytes(pkt[UDP_PAYLOAD : UDP_PAYLOAD + 4], "big")


def tcp4(payload: bytes, flags: str = "A", dport: int = 5201) -> Packet:
    ip = IP(src=SRC4, dst=DST4, id=0x1234, flags="DF", ttl=61)
    segment_ = TCP(sport=40000, dport=dport, seq=1000, ack=777, flags=flags, window=501)
    return Ether(raw(Ether(src=SRC_MAC, dst=DST_MAC) / ip / segment_ / Raw(payload)))


def udp4(payload: bytes) -> Packet:
    ip = IP(src=SRC4, dst=DST4, id=0x1234, flags="DF", ttl=61)
    return Ether(raw(Ether(src=SRC_MAC, dst=DST_MAC) / ip / UDP(sport=40001, dport=5353) / Raw(payload)))


def transport(pkt: Packet) -> Packet:
    layer: Packet = pkt[TCP] if TCP in pkt else pkt[UDP]
    return layer


def sum16(data: bytes) -> int:
    """The folded one's-complement sum of data (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def offloaded(pkt: Packet, gso_type: int = 0, gso_size: int = 0) -> bytes:
    """pkt (IPv4) as a tap hands it over with NEEDS_CSUM, as test_gso builds it: the L4 checksum field
    holds the folded pseudo-header sum, uncomplemented; csum_start is the L4 header's offset in the
    Ethernet frame and csum_offset the checksum's in the L4 header; GSO when gso_type says so."""
    data = bytearray(raw(pkt))
    l4 = transport(pkt)
    start = len(data) - len(raw(l4))
    is_tcp = isinstance(l4, TCP)
    offset = 16 if is_tcp else 6
    proto = PROTO_TCP if is_tcp else PROTO_UDP
    pseudo = sum16(raw(pkt[IP])[12:20] + struct.pack("!HH", proto, len(data) - start))
    data[start + offset : start + offset + 2] = struct.pack("!H", pseudo)
    hdr_len = start + (l4.dataofs * 4 if is_tcp else 8)
    header = VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_type, hdr_len if gso_type else 0, gso_size, start, offset)
    return bytes(header) + bytes(data)


def scapy_complete(pkt: Packet) -> bytes:
    """pkt with its checksums computed by scapy: what a NIC would have sent."""
    copy = pkt.copy()
    del transport(copy).chksum
    del copy[IP].chksum
    return bytes(raw(copy))


def stored_and_recomputed(frame: bytes) -> tuple[int, int]:
    """The L4 checksum a frame carries, and the one scapy computes for it afresh."""
    stored = transport(Ether(frame)).chksum
    copy = Ether(frame)
    del transport(copy).chksum
    return stored, transport(Ether(raw(copy))).chksum


def l4_verifies(frame: bytes) -> bool:
    """The IPv4 packet's L4 checksum verifies over the bytes as they are (scapy's in4_chksum over the
    pseudo-header and the segment, sliced by the IP header's lengths, not dissected)."""
    ip = IP(frame[14:])
    segment_bytes = frame[14 + ip.ihl * 4 : 14 + ip.len]
    return bool(in4_chksum(ip.proto, ip, segment_bytes) == 0)


def flipped_bits(before: bytes, after: bytes) -> list[int]:
    """The bit positions (byte * 8 + bit) where two equally long buffers differ."""
    assert len(before) == len(after)
    return [
        i * 8 + bit
        for i, (a, b) in enumerate(zip(before, after, strict=True))
        if a != b
        for bit in range(8)
        if (a ^ b) >> bit & 1
    ]


# --- driving a stage with a fake clock ---------------------------------------------------------------
def stage(selector: Selector | None = None, name: str = "p0/in", **fields: Any) -> Stage:
    return Stage(Impairment(**fields).check(), selector, Counter(), name, NOW)


def push(s: Stage, pkt: bytes, now: float = NOW) -> list[bytes]:
    out: list[bytes] = []
    s.push(pkt, now, out)
    return out


def run(s: Stage, arrivals: Iterable[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """What leaves s and when, for frames arriving at the given times (in order): the loop the shell
    runs, its clock jumping to each due time exactly and to each arrival."""
    out: list[tuple[float, bytes]] = []

    def until(now: float) -> None:
        while (due := s.next_due()) is not None and due <= now:
            ready: list[bytes] = []
            s.release(due, ready)
            out.extend((due, pkt) for pkt in ready)

    for now, pkt in arrivals:
        until(now)
        out.extend((now, p) for p in push(s, pkt, now))
    until(math.inf)
    return out


def lost(s: Stage, count: int) -> list[int]:
    """Which of count frames pushed into s (loss only: the others leave at once) were lost."""
    pkt = udp(0, size=64)
    return [i for i in range(count) if not push(s, pkt)]


def runs(indices: list[int]) -> list[int]:
    """The lengths of the runs of consecutive numbers in a sorted list."""
    lengths: list[int] = []
    for i, index in enumerate(indices):
        if i and index == indices[i - 1] + 1:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


# --- delay -------------------------------------------------------------------------------------------
def test_each_frame_leaves_exactly_its_delay_after_it_came() -> None:
    s = stage(delay=0.25)
    arrivals = [(NOW + i * 0.125, udp(i)) for i in range(8)]
    assert run(s, arrivals) == [(t + 0.25, pkt) for t, pkt in arrivals]
    assert s.stats == {"delayed": 8}
    assert s.ledger == {}


def test_release_gives_only_what_is_due_in_order_and_the_deadline_is_the_head() -> None:
    s = stage(delay=1.0)
    frames = [udp(i) for i in range(3)]
    for i, pkt in enumerate(frames):
        assert push(s, pkt, NOW + i * 0.25) == []
    assert s.next_due() == NOW + 1.0
    out: list[bytes] = []
    s.release(NOW + 0.999, out)
    assert out == []
    s.release(NOW + 1.25, out)
    assert out == frames[:2]
    assert s.next_due() == NOW + 1.5
    s.release(NOW + 1.49, out)
    assert out == frames[:2]
    s.release(NOW + 1.5, out)
    assert out == frames
    assert s.next_due() is None


def test_the_emulators_deadline_is_the_earliest_due_frame_of_any_stage() -> None:
    em = Emulator([Counter(), Counter()])
    em.set(0, "p0", ("in",), Impairment(delay=1.0), None, NOW)
    em.set(1, "p1", ("out",), Impairment(delay=0.5), None, NOW)
    assert em.deadline(NOW) is None  # nothing queued, no flap
    a, b = udp(1), udp(2)
    assert push(em.ins[0], a) == [] and push(em.outs[1], b) == []
    assert em.deadline(NOW) == NOW + 0.5
    assert em.release(NOW + 0.25) == ([], [])
    assert em.release(NOW + 0.5) == ([], [(1, b)])
    assert em.deadline(NOW + 0.5) == NOW + 1.0
    assert em.release(NOW + 1.0) == ([(0, a)], [])
    assert em.deadline(NOW + 1.0) is None


# --- jitter ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_jitter_never_reorders_never_leaves_early_and_repeats_with_its_seed(distribution: str) -> None:
    delay, jitter = 0.02, 0.015
    arrivals = [(NOW + i * 0.01, udp(i)) for i in range(1000)]  # closer than the spread: some wait

    def times(seed: int) -> list[float]:
        s = stage(delay=delay, jitter=jitter, distribution=distribution, seed=seed)
        out = run(s, arrivals)
        assert [pkt for _, pkt in out] == [pkt for _, pkt in arrivals]  # every frame, in order
        return [t for t, _ in out]

    due = times(1)
    assert all(later >= earlier for earlier, later in pairwise(due))
    waits = [t - arrival for t, (arrival, _) in zip(due, arrivals, strict=True)]
    assert min(waits) >= 0.0
    # The jitter is there, both ways; and frames were held behind the one before (the clamp works).
    assert min(waits) < delay - jitter / 2 and max(waits) > delay + jitter / 2
    assert sum(later == earlier for earlier, later in pairwise(due)) > 10
    if distribution == "uniform":  # within +-jitter, unless held behind the frame before
        assert all(
            delay - jitter - 1e-9 <= w <= delay + jitter + 1e-9 or (i and due[i] == due[i - 1])
            for i, w in enumerate(waits)
        )
    assert times(1) == due  # two fresh stages, the same seed: the same times
    assert times(2) != due


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_jitter_larger_than_the_delay_never_sends_a_frame_before_it_came(distribution: str) -> None:
    s = stage(jitter=0.01, distribution=distribution, seed=3)
    arrivals = [(NOW + i, udp(i)) for i in range(400)]  # a second apart: no frame waits for another
    out = run(s, arrivals)
    waits = [t - arrival for (t, _), (arrival, _) in zip(out, arrivals, strict=True)]
    assert all(w >= 0.0 for w in waits)
    assert waits.count(0.0) == s.stats["passed"] > 100  # about half would be early: they go at once
    assert s.stats["delayed"] == 400 - s.stats["passed"] > 100
    assert max(waits) <= (0.01 if distribution == "uniform" else 0.1)


# --- loss --------------------------------------------------------------------------------------------
def test_with_a_seed_the_same_frames_are_lost() -> None:
    first = lost(stage(loss=0.25, seed=5), 4000)
    assert lost(stage(loss=0.25, seed=5), 4000) == first
    assert lost(stage(loss=0.25, seed=6), 4000) != first
    s = stage(loss=0.25, seed=5)
    assert lost(s, 4000) == first
    assert s.stats == {"lost": len(first), "passed": 4000 - len(first)}
    assert s.ledger == {Drop.IMPAIR_LOSS: len(first)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_long_run_loss_is_within_a_binomial_interval(seed: int) -> None:
    n, p = 20000, 0.1
    count = len(lost(stage(loss=p, seed=seed), n))
    sd = math.sqrt(n * p * (1 - p))
    assert n * p - Z * sd <= count <= n * p + Z * sd


def test_full_loss_loses_everything() -> None:
    s = stage(loss=1.0)
    assert len(lost(s, 500)) == 500
    assert s.ledger == {Drop.IMPAIR_LOSS: 500}
    assert not s.queue


def test_gilbert_losses_come_in_bursts_of_the_mean_length_at_the_same_long_run_rate() -> None:
    n, loss, burst = 100_000, 0.05, 4.0
    bursty = lost(stage(loss=loss, loss_burst=burst, seed=3), n)
    independent = lost(stage(loss=loss, seed=3), n)
    # The chain leaves a burst with r = 1/burst and enters one with p = loss * r / (1 - loss); the
    # fraction lost is its mean, whose variance is the binomial one times (1 + l) / (1 - l), l = 1 - p - r.
    r = 1 / burst
    p = loss * r / (1 - loss)
    eigen = 1 - p - r
    sd_rate = math.sqrt(loss * (1 - loss) * (1 + eigen) / (1 - eigen) / n)
    assert abs(len(bursty) / n - loss) <= Z * sd_rate
    # A burst's length is geometric with mean 1/r (variance (1 - r) / r^2).
    lengths = runs(bursty)
    mean = sum(lengths) / len(lengths)
    assert abs(mean - burst) <= Z * math.sqrt((1 - r) / r**2 / len(lengths))
    assert max(lengths) > 1
    # Independent losses at the same rate: runs of mean 1 / (1 - loss), barely over one.
    alone = runs(independent)
    mean_alone = sum(alone) / len(alone)
    assert abs(mean_alone - 1 / (1 - loss)) <= Z * math.sqrt(loss / (1 - loss) ** 2 / len(alone))
    assert mean > 2 * mean_alone
    sd_independent = math.sqrt(n * loss * (1 - loss))
    assert abs(len(independent) - n * loss) <= Z * sd_independent


def test_reconfiguring_with_the_seed_repeats_the_losses_even_in_the_middle_of_a_burst() -> None:
    """configure() with a seed: the decisions from there repeat for the same frames, so the Gilbert
    chain starts over with the generator (a burst under way would change them)."""
    imp = Impairment(loss=0.3, loss_burst=5.0, seed=8)
    fresh = lost(stage(loss=0.3, loss_burst=5.0, seed=8), 300)
    s = stage(loss=0.3, loss_burst=5.0, seed=8)
    pkt = udp(0, size=64)
    for _ in range(1000):
        if not push(s, pkt):
            break
    assert s.bad  # the last frame was lost: a burst is under way
    s.configure(imp, None, NOW)
    assert lost(s, 300) == fresh


# --- duplication and reordering ------------------------------------------------------------------------
def test_a_duplicated_frame_leaves_twice_in_a_row_and_is_counted() -> None:
    s = stage(delay=0.1, duplicate=0.3, seed=9)
    arrivals = [(NOW + i * 0.01, udp(i)) for i in range(500)]
    out = run(s, arrivals)
    indices = [index_of(pkt) for _, pkt in out]
    assert [k for j, k in enumerate(indices) if j == 0 or indices[j - 1] != k] == list(range(500))
    counts = Counter(indices)
    assert set(counts.values()) == {1, 2}
    twice = sum(1 for c in counts.values() if c == 2)
    assert twice == s.stats["duplicated"] > 100
    assert len(out) == 500 + twice
    for j in range(1, len(out)):
        if indices[j] == indices[j - 1]:
            assert out[j] == out[j - 1]  # the same bytes at the same time
    assert all(t == NOW + index_of(pkt) * 0.01 + 0.1 for t, pkt in out)


def test_a_reordered_frame_leaves_at_once_ahead_of_the_queued_ones() -> None:
    s = stage(delay=1.0)
    queued = [udp(0), udp(1)]
    for pkt in queued:
        assert push(s, pkt) == []
    s.configure(Impairment(delay=1.0, reorder=1.0), None, NOW + 0.5)
    late = udp(2)
    assert push(s, late, NOW + 0.5) == [late]
    assert list(s.queue) == [(NOW + 1.0, queued[0]), (NOW + 1.0, queued[1])]
    assert s.stats["reordered"] == 1


def test_reordering_with_a_seed_sends_ahead_exactly_the_frames_it_counts() -> None:
    delay, gap = 0.05, 0.001
    s = stage(delay=delay, reorder=0.2, seed=4)
    arrivals = [(NOW + i * gap, udp(i)) for i in range(1000)]
    out = run(s, arrivals)
    assert sorted(index_of(pkt) for _, pkt in out) == list(range(1000))  # each once
    came = {index_of(pkt): t for t, pkt in arrivals}
    early = [index_of(pkt) for t, pkt in out if t == came[index_of(pkt)]]
    assert len(early) == s.stats["reordered"] > 100
    assert all(t == came[index_of(pkt)] + delay for t, pkt in out if index_of(pkt) not in early)
    # Each one sent ahead overtook every earlier frame still held when it came.
    position = {index_of(pkt): j for j, (_, pkt) in enumerate(out)}
    early_set = set(early)
    overtaken = 0
    for k in early:
        for j in range(k):
            if j not in early_set and came[j] + delay > came[k]:
                assert position[j] > position[k]
                overtaken += 1
    assert overtaken > 1000


# --- corruption ----------------------------------------------------------------------------------------
def test_corruption_flips_one_payload_bit_after_the_checksum_so_the_receiver_notices() -> None:
    s = stage(corrupt=1.0, seed=12)
    for i in range(64):
        original = udp(i, size=300)
        (out,) = push(s, original)
        assert out[:VNET_HDR_LEN] == ZERO_VNET_HDR
        (bit,) = flipped_bits(original, out)
        assert UDP_PAYLOAD * 8 <= bit < len(original) * 8  # in the transport payload
        stored, recomputed = stored_and_recomputed(out[VNET_HDR_LEN:])
        assert stored != recomputed
        assert checksum(out[VNET_HDR_LEN + 14 : VNET_HDR_LEN + 34]) == 0  # the IP header is intact
    assert s.stats == {"corrupted": 64, "passed": 64}


def test_a_corrupted_frame_loses_data_valid_so_the_receiver_checks_it() -> None:
    original = udp(7, size=300)
    valid = VNET_HDR.pack(VNET_F_DATA_VALID, 0, 0, 0, 0, 0) + original[VNET_HDR_LEN:]
    (out,) = push(stage(corrupt=1.0, seed=1), valid)
    assert out[:VNET_HDR_LEN] == ZERO_VNET_HDR
    assert len(flipped_bits(original, out)) == 1


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_a_needs_csum_frame_is_completed_then_corrupted(kind: str) -> None:
    pkt = udp4(stamped(333)) if kind == "udp" else tcp4(stamped(333), flags="PA")
    partial = offloaded(pkt)
    right = scapy_complete(pkt)
    assert complete(partial) == ZERO_VNET_HDR + right  # the frame as it should have been sent
    s = stage(corrupt=1.0, seed=2)
    payload_start = len(right) - 333
    for _ in range(32):
        (out,) = push(s, partial)
        assert out[:VNET_HDR_LEN] == ZERO_VNET_HDR  # no NEEDS_CSUM left: the checksum is final
        (bit,) = flipped_bits(right, out[VNET_HDR_LEN:])
        assert payload_start * 8 <= bit
        stored, recomputed = stored_and_recomputed(out[VNET_HDR_LEN:])
        assert stored != recomputed
        assert not l4_verifies(out[VNET_HDR_LEN:])


def test_corruption_of_a_padded_frame_flips_a_bit_of_the_packet_not_of_the_padding() -> None:
    """Ethernet pads a short frame to 60 bytes: a bit flipped in the padding would corrupt nothing."""
    short = Ether(src=SRC_MAC, dst=DST_MAC) / IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=2) / Raw(b"x")
    frame = raw(short / Padding(bytes(60 - len(raw(short)))))
    assert len(frame) == 60
    original = ZERO_VNET_HDR + frame
    s = stage(corrupt=1.0, seed=5)
    for _ in range(64):
        (out,) = push(s, original)
        (bit,) = flipped_bits(original, out)
        assert bit // 8 == UDP_PAYLOAD  # the one byte of payload, never the 17 of padding
        assert not l4_verifies(out[VNET_HDR_LEN:])


def test_corruption_of_a_segment_without_payload_flips_its_transport_header() -> None:
    ack = raw(tcp4(b""))
    original = ZERO_VNET_HDR + ack
    s = stage(corrupt=1.0, seed=6)
    header = VNET_HDR_LEN + 14 + 20
    for _ in range(64):
        (out,) = push(s, original)
        (bit,) = flipped_bits(original, out)
        assert header * 8 <= bit < (header + 20) * 8
        assert not l4_verifies(out[VNET_HDR_LEN:])


# --- the rate ------------------------------------------------------------------------------------------
RATE = 8_192_000.0  # bits a second: a 1000-byte frame takes 2**-10 s, so every time below is exact
FRAME = 1000  # bytes of Ethernet


def token_bucket(
    arrivals: list[tuple[float, int]], rate: float, burst: int, latency: float
) -> list[Fraction | None]:
    """The reference: a bucket of burst bytes, full at first, filling at rate/8 bytes a second; each
    frame leaves (behind the one before) once the bucket holds its size, which it takes; None for a frame
    that would wait longer than latency (it takes nothing). Exact arithmetic."""
    fill = Fraction(rate) / 8
    tokens, at, last = Fraction(burst), Fraction(arrivals[0][0]), Fraction(arrivals[0][0])
    departures: list[Fraction | None] = []
    for t, size in arrivals:
        start = max(Fraction(t), last)
        have = min(Fraction(burst), tokens + (start - at) * fill)
        depart = start if have >= size else start + (size - have) / fill
        if depart - Fraction(t) > Fraction(latency):
            departures.append(None)
            continue
        tokens = min(Fraction(burst), tokens + (depart - at) * fill) - size
        at = last = depart
        departures.append(depart)
    return departures


def test_the_bucket_lets_its_burst_through_at_once_then_one_frame_per_its_time() -> None:
    s = stage(rate=RATE, burst=3 * FRAME, latency=1.0)
    arrivals = [(NOW, udp(i, size=FRAME)) for i in range(10)]
    out = run(s, arrivals)
    assert [pkt for _, pkt in out] == [pkt for _, pkt in arrivals]
    step = FRAME * 8 / RATE
    assert step == 2**-10
    assert [t for t, _ in out] == [NOW] * 3 + [NOW + k * step for k in range(1, 8)]
    assert s.stats == {"passed": 3, "delayed": 7}
    # Idle, the bucket fills again: a burst goes through at once.
    later = [(NOW + 1.0, udp(100 + i, size=FRAME)) for i in range(3)]
    assert run(s, later) == later


def test_a_frame_that_would_wait_longer_than_the_latency_is_rate_dropped() -> None:
    s = stage(rate=RATE, burst=3 * FRAME, latency=0.005)
    arrivals = [(NOW, udp(i, size=FRAME)) for i in range(20)]
    out = run(s, arrivals)
    # 3 at once, then 5 at 1..5 ms * 1.024 (the 6th would wait 5.9 ms): the other 12 are dropped.
    assert [index_of(pkt) for _, pkt in out] == list(range(8))
    assert s.stats == {"passed": 3, "delayed": 5, "rate-dropped": 12}
    assert s.ledger == {Drop.IMPAIR_RATE: 12}
    expected = token_bucket([(NOW, FRAME)] * 20, RATE, 3 * FRAME, 0.005)
    assert [t for t, _ in out] == [float(t) for t in expected if t is not None]


def test_departures_follow_the_token_bucket_for_any_sizes_and_arrivals() -> None:
    rnd = random.Random(17)
    rate, burst, latency = 2e6, 4000, 0.02
    sizes = [rnd.choice((64, 590, 1514)) if i % 7 else 1514 for i in range(600)]
    times: list[float] = []
    now = NOW
    for _ in sizes:
        now += rnd.expovariate(400.0)  # about 2.7 Mbit/s offered into 2: the shaper drops some
        times.append(now)
    arrivals = [(t, udp(i, size=size)) for i, (t, size) in enumerate(zip(times, sizes, strict=True))]
    s = stage(rate=rate, burst=burst, latency=latency)
    out = {index_of(pkt): t for t, pkt in run(s, arrivals)}
    expected = token_bucket(list(zip(times, sizes, strict=True)), rate, burst, latency)
    assert set(out) == {i for i, t in enumerate(expected) if t is not None}
    for i, t in out.items():
        reference = expected[i]
        assert reference is not None and t == pytest.approx(float(reference), abs=1e-9)
    dropped = expected.count(None)
    assert s.stats["rate-dropped"] == s.ledger[Drop.IMPAIR_RATE] == dropped > 10
    assert s.stats["passed"] > 10 and s.stats["delayed"] > 10


def test_jitter_never_sends_a_frame_before_the_shaper_lets_it_go() -> None:
    jitter = 4 * 2**-10
    s = stage(rate=RATE, burst=3 * FRAME, latency=1.0, jitter=jitter, seed=8)
    out = run(s, [(NOW, udp(i, size=FRAME)) for i in range(40)])
    assert [index_of(pkt) for _, pkt in out] == list(range(40))
    shaped = token_bucket([(NOW, FRAME)] * 40, RATE, 3 * FRAME, 1.0)
    assert all(
        reference is not None and t >= reference for (t, _), reference in zip(out, shaped, strict=True)
    )
    assert any(reference is not None and t > reference for (t, _), reference in zip(out, shaped, strict=True))
    assert all(t <= float(reference) + jitter or t == out[i - 1][0]
               for i, ((t, _), reference) in enumerate(zip(out, shaped, strict=True))
               if reference is not None)  # fmt: skip


# --- the queue's limit -----------------------------------------------------------------------------------
def test_a_full_queue_drops_and_counts_it_apart_from_loss() -> None:
    s = stage(delay=1.0, limit=5)
    frames = [udp(i) for i in range(8)]
    for pkt in frames:
        assert push(s, pkt) == []
    assert [pkt for _, pkt in s.queue] == frames[:5]
    assert s.stats == {"delayed": 5, "limit-dropped": 3}
    assert s.ledger == {Drop.IMPAIR_LIMIT: 3}
    out: list[bytes] = []
    s.release(NOW + 1.0, out)
    assert out == frames[:5]
    assert push(s, frames[5], NOW + 1.0) == [] and len(s.queue) == 1  # room again


def test_with_a_rate_a_full_queue_drops_before_the_shaper_takes_tokens() -> None:
    s = stage(rate=RATE, burst=3 * FRAME, latency=1.0, limit=2)
    out = run(s, [(NOW, udp(i, size=FRAME)) for i in range(8)])
    # 3 at once, 2 queued behind (the limit), 3 dropped: they took no tokens, so a frame at the time
    # the queue empties leaves one frame time after the last, not four.
    assert [index_of(pkt) for _, pkt in out] == [0, 1, 2, 3, 4]
    assert s.stats["limit-dropped"] == 3 and s.ledger == {Drop.IMPAIR_LIMIT: 3}
    step = FRAME * 8 / RATE
    assert run(s, [(NOW + 2 * step, udp(9, size=FRAME))]) == [(NOW + 3 * step, udp(9, size=FRAME))]


def test_the_default_limit_holds_what_the_rate_and_delay_keep_in_flight() -> None:
    assert Impairment().effective_limit == LIMIT_MIN >= 1000
    assert Impairment(delay=0.0001).effective_limit == LIMIT_MIN
    assert Impairment(delay=0.1).effective_limit >= SWITCH_PPS * 0.1  # without a rate: the switch's
    by_delay = [Impairment(delay=d, rate=1e8).effective_limit for d in (0.01, 0.1, 1.0)]
    assert LIMIT_MIN < by_delay[0] < by_delay[1] < by_delay[2] <= DEFAULT_LIMIT_MAX
    by_rate = [Impairment(delay=0.1, rate=r).effective_limit for r in (1e7, 3e7, 1e8)]
    assert LIMIT_MIN < by_rate[0] < by_rate[1] < by_rate[2]
    for imp in (Impairment(delay=0.2, rate=1e8), Impairment(delay=0.5, rate=5e7, jitter=0.1)):
        in_flight = imp.rate / 8 / 64 * (imp.delay + imp.jitter)  # 64-byte frames over the delay
        assert imp.effective_limit >= in_flight
    assert Impairment(delay=60.0, rate=1e11).effective_limit == DEFAULT_LIMIT_MAX
    assert Impairment(delay=60.0, limit=7).effective_limit == 7


def test_a_stage_holds_its_default_limit_and_drops_the_next() -> None:
    s = stage(delay=0.0005)
    assert s.limit == LIMIT_MIN
    pkt = udp(0, size=64)
    for _ in range(LIMIT_MIN + 1):
        push(s, pkt)
    assert len(s.queue) == LIMIT_MIN
    assert s.ledger == {Drop.IMPAIR_LIMIT: 1}


# --- GSO super-frames ----------------------------------------------------------------------------------
def tso_frame(segments: int = 8) -> bytes:
    """A TCPv4 super-frame as a tap hands it over: gso_type 1, gso_size 1448, NEEDS_CSUM."""
    return offloaded(tcp4(stamped(1448 * segments - 100), flags="PA"), GSO_TCPV4, 1448)


def test_a_super_frame_is_cut_into_wire_packets_before_loss() -> None:
    big = tso_frame()
    pieces = segment(big)
    assert len(pieces) == 8
    s = stage(loss=0.5, seed=2)
    out = push(s, big)
    assert s.stats["lost"] + s.stats["passed"] == 8  # counted as wire packets
    assert 0 < s.stats["lost"] < 8
    assert s.ledger == {Drop.IMPAIR_LOSS: s.stats["lost"]}
    kept = iter(pieces)
    assert all(any(pkt == piece for piece in kept) for pkt in out)  # pieces, in order
    assert len(out) == s.stats["passed"]
    assert all(pkt[:VNET_HDR_LEN] == ZERO_VNET_HDR and len(pkt) <= VNET_HDR_LEN + 1514 for pkt in out)


def test_a_super_frame_only_delayed_stays_one_frame_with_its_offloads() -> None:
    big = tso_frame()
    s = stage(delay=0.1)
    assert push(s, big) == []
    assert list(s.queue) == [(NOW + 0.1, big)]  # one entry, the same bytes, header and all
    out: list[bytes] = []
    s.release(NOW + 0.1, out)
    assert out == [big]


def test_a_super_frame_whose_header_lies_is_a_bad_vnet_header_drop() -> None:
    pkt = udp(0, size=3000)
    liar = VNET_HDR.pack(VNET_F_NEEDS_CSUM, GSO_TCPV4, 42, 1448, 34, 16) + pkt[VNET_HDR_LEN:]
    s = stage(loss=0.01, seed=1)
    assert push(s, liar) == []
    assert s.ledger == {Drop.BAD_VNET_HEADER: 1}


# --- down and flapping -----------------------------------------------------------------------------------
def test_a_link_down_drops_everything() -> None:
    s = stage(down=True)
    for i in range(5):
        assert push(s, udp(i), NOW + i) == []
    assert s.stats == {"down-dropped": 5}
    assert s.ledger == {Drop.LINK_DOWN: 5}
    assert s.next_transition(NOW) is None


FLAP = (2.0, 0.5)
FLAP_TIMES = [  # (seconds after the flap was set, whether a frame passes)
    (0.0, True),
    (1.999, True),
    (2.0, False),
    (2.25, False),
    (2.4999, False),
    (2.5, True),
    (4.4999, True),
    (4.5, False),
    (5.0, True),
    (40 * 2.5 + 0.1, True),
    (40 * 2.5 + 2.0, False),
]


def test_a_flap_passes_in_its_up_phases_and_drops_in_its_down_phases() -> None:
    s = stage(flap=FLAP)
    for offset, passes in FLAP_TIMES:
        pkt = udp(int(offset * 1000))
        assert push(s, pkt, NOW + offset) == ([pkt] if passes else []), offset
        assert s.down(NOW + offset) is not passes
    drops = sum(not passes for _, passes in FLAP_TIMES)
    assert s.stats == {"passed": len(FLAP_TIMES) - drops, "down-dropped": drops}
    assert s.ledger == {Drop.LINK_DOWN: drops}


def test_next_transition_gives_the_flaps_edges() -> None:
    s = stage(flap=FLAP)
    assert s.next_transition(NOW) == NOW + 2.0
    assert s.next_transition(NOW + 1.0) == NOW + 2.0
    assert s.next_transition(NOW + 2.0) == NOW + 2.5
    assert s.next_transition(NOW + 2.2) == NOW + 2.5
    assert s.next_transition(NOW + 2.5) == NOW + 4.5
    assert s.next_transition(NOW + 4.5) == NOW + 5.0
    assert s.next_transition(NOW + 100.0) == NOW + 102.0
    assert stage(delay=0.1).next_transition(NOW) is None


def test_at_each_edge_next_transition_gives_the_link_has_changed_whenever_the_flap_began() -> None:
    """At any start time (the loop's clock is large and not round), the time next_transition() gives
    is one at which down() says the other thing: else the carrier misses a whole phase."""
    rnd = random.Random(4)
    for _ in range(200):
        since = rnd.uniform(0, 1e6)
        up, down = rnd.choice([(2.0, 0.5), (0.3, 0.1), (1.7, 0.23), (0.001, 0.001)])
        s = Stage(Impairment(flap=(up, down)).check(), None, Counter(), "p0/in", since)
        now, state = since, False
        for _ in range(20):
            edge = s.next_transition(now)
            assert edge is not None and edge > now
            assert edge - now == pytest.approx(down if state else up, abs=1e-6)
            assert s.down(edge) is not state
            now, state = edge, not state


def test_the_carrier_follows_a_flap_at_its_edges() -> None:
    em = Emulator([Counter(), Counter()])
    em.set(1, "p1", ("in", "out"), Impairment(flap=FLAP, carrier=True), None, NOW)
    assert em.carrier_changes == []
    assert em.deadline(NOW) == NOW + 2.0
    em.release(NOW + 1.0)
    assert em.carrier_changes == []
    em.release(NOW + 2.0)
    assert em.carrier_changes == [(1, False)]  # once, though both directions flap
    assert em.deadline(NOW + 2.0) == NOW + 2.5
    em.release(NOW + 2.5)
    assert em.carrier_changes == [(1, False), (1, True)]
    assert em.deadline(NOW + 2.5) == NOW + 4.5
    quiet = Emulator([Counter()])
    quiet.set(0, "p0", ("in",), Impairment(flap=FLAP), None, NOW)
    assert quiet.deadline(NOW) is None  # no carrier: the edges need no timer
    quiet.release(NOW + 2.0)
    assert quiet.carrier_changes == []


def test_a_long_flap_moves_the_carrier_at_every_edge() -> None:
    since = 1_234_567.891  # what loop.time() looks like
    em = Emulator([Counter()])
    em.set(0, "p0", ("out",), Impairment(flap=(0.3, 0.1), carrier=True), None, since)
    now = since
    times: list[float] = []
    while True:
        due = em.deadline(now)
        assert due is not None and due > now
        if due > since + 40.0 + 0.05:
            break
        now = due
        before = len(em.carrier_changes)
        em.release(now)
        assert len(em.carrier_changes) == before + 1  # every edge the timer fires at moves it
        times.append(now)
    assert len(em.carrier_changes) == 200
    assert em.carrier_changes == [(0, up) for _ in range(100) for up in (False, True)]
    for k, t in enumerate(times):
        assert t - since == pytest.approx(k // 2 * 0.4 + (0.3 if k % 2 == 0 else 0.4), abs=1e-6)


def test_down_with_the_carrier_takes_it_down_at_once_and_clear_brings_it_back() -> None:
    em = Emulator([Counter()])
    em.set(0, "p0", ("in",), Impairment(down=True, carrier=True), None, NOW)
    assert em.carrier_changes == [(0, False)]
    em.set(0, "p0", ("out",), Impairment(down=True, carrier=True), None, NOW)
    em.clear(0, ("in",), NOW)
    assert em.carrier_changes == [(0, False)]  # the out stage still holds it down
    em.clear(0, ("out",), NOW)
    assert em.carrier_changes == [(0, False), (0, True)]
    assert em.ins == {} and em.outs == {} and not em.configured
    # A flap cleared in its down phase gives the carrier back there and then.
    em.set(0, "p0", ("in",), Impairment(flap=FLAP, carrier=True), None, NOW)
    em.release(NOW + 2.0)
    assert em.carrier_changes[-1] == (0, False)
    em.clear(0, ("in",), NOW + 2.1)
    assert em.carrier_changes[-1] == (0, True)
    # Down without --carrier leaves the carrier alone.
    em.set(0, "p0", ("in",), Impairment(down=True), None, NOW + 3.0)
    assert len(em.carrier_changes) == 4


# --- changes at run time ----------------------------------------------------------------------------------
def test_a_shorter_delay_keeps_the_queue_and_new_frames_never_overtake_it() -> None:
    s = stage(delay=1.0)
    a, b, c = udp(0), udp(1), udp(2)
    assert push(s, a, NOW) == []
    s.configure(Impairment(delay=0.1), None, NOW + 0.5)
    assert push(s, b, NOW + 0.5) == []
    assert list(s.queue) == [(NOW + 1.0, a), (NOW + 1.0, b)]  # b's 0.6 waits for a's 1.0
    out: list[bytes] = []
    s.release(NOW + 0.6, out)
    assert out == []
    s.release(NOW + 1.0, out)
    assert out == [a, b]
    assert push(s, c, NOW + 1.5) == []
    assert list(s.queue) == [(NOW + 1.6, c)]  # the queue gone, the new delay alone


def test_clear_passes_new_frames_behind_the_queue_and_the_stage_goes_once_it_empties() -> None:
    em = Emulator([Counter()])
    em.set(0, "p0", ("in",), Impairment(delay=1.0, loss=0.5, seed=1), None, NOW)
    s = em.ins[0]
    a = udp(0)
    while not s.queue:  # until one frame waits (the loss may take some first)
        assert push(s, a) == []
    em.clear(0, ("in",), NOW + 0.25)
    assert em.ins[0] is s and s.cleared and em.stage(0, "in") is None
    frames = [udp(i) for i in range(1, 50)]
    for pkt in frames:  # no loss any more, but behind a
        assert push(s, pkt, NOW + 0.5) == []
    assert em.release(NOW + 0.9) == ([], []) and 0 in em.ins
    assert em.release(NOW + 1.0) == ([(0, pkt) for pkt in [a, *frames]], [])
    assert em.ins == {} and not em.configured
    # A stage with nothing queued goes at once.
    em.set(0, "p0", ("out",), Impairment(delay=1.0), None, NOW)
    em.clear(0, ("out",), NOW)
    assert em.outs == {}


def test_a_cleared_stage_still_takes_what_waits_behind_a_queue_longer_than_the_default_limit() -> None:
    s = stage(delay=1.0, limit=3000)
    pkt = udp(0, size=64)
    for _ in range(2000):
        push(s, pkt)
    s.clear()
    for _ in range(500):
        assert push(s, pkt, NOW + 0.5) == []
    assert len(s.queue) == 2500
    assert s.ledger == {}


def test_setting_a_cleared_stage_again_makes_it_the_ports_stage() -> None:
    em = Emulator([Counter()])
    em.set(0, "p0", ("in",), Impairment(delay=1.0), None, NOW)
    push(em.ins[0], udp(0))
    em.clear(0, ("in",), NOW)
    assert em.stage(0, "in") is None
    em.set(0, "p0", ("in",), Impairment(delay=0.5), None, NOW + 0.1)
    assert em.stage(0, "in") is em.ins[0]
    em.release(NOW + 1.0)
    assert 0 in em.ins  # set again: it stays, empty


# --- the filter --------------------------------------------------------------------------------------
def test_a_filter_impairs_only_the_frames_it_selects() -> None:
    text = "udp port 53"
    s = stage(compile_filter(text), delay=0.5, filter=text)
    other = ZERO_VNET_HDR + raw(tcp4(b"hello", dport=53))
    dns, not_dns = udp(1, dport=53), udp(2, dport=54)
    assert push(s, other) == [other]
    assert push(s, dns) == []
    assert push(s, not_dns) == [not_dns]
    assert list(s.queue) == [(NOW + 0.5, dns)]
    assert s.stats == {"bypassed": 2, "delayed": 1}


def test_a_filtered_link_down_drops_only_what_the_filter_selects() -> None:
    text = "udp port 53"
    s = stage(compile_filter(text), down=True, filter=text)
    other = ZERO_VNET_HDR + raw(tcp4(b"hello"))
    assert push(s, other) == [other]
    assert push(s, udp(1, dport=53)) == []
    assert s.ledger == {Drop.LINK_DOWN: 1}


# --- partitions -------------------------------------------------------------------------------------------
def blocked(em: Emulator, ports: int) -> set[tuple[int, int]]:
    return {(src, dst) for src in range(ports) for dst in range(ports) if em.blocks(src, dst)}


def test_partitions_block_between_their_sides_only_and_heal_removes_them_all() -> None:
    em = Emulator([Counter() for _ in range(4)])
    assert (em.active, em.configured) == (False, False)
    two = em.partition({"a": 0, "b": 1}, {"c": 2}, two_way=True)
    assert blocked(em, 4) == {(0, 2), (1, 2), (2, 0), (2, 1)}
    assert two.describe() == "a,b / c"
    one = em.partition({"d": 3}, {"a": 0}, two_way=False)
    assert blocked(em, 4) == {(0, 2), (1, 2), (2, 0), (2, 1), (3, 0)}
    assert one.describe() == "d -> a"
    assert (em.active, em.configured) == (True, True)
    assert em.describe(["a", "b", "c", "d"], NOW)["partitions"] == ["a,b / c", "d -> a"]
    assert em.heal() == 2
    assert blocked(em, 4) == set() and em.partitions == []
    assert (em.active, em.configured) == (False, False)
    assert em.heal() == 0


def test_a_port_on_both_sides_of_a_partition_is_refused() -> None:
    em = Emulator([Counter() for _ in range(3)])
    with pytest.raises(ValueError, match="both sides"):
        em.partition({"a": 0, "b": 1}, {"b": 1, "c": 2}, two_way=True)
    assert blocked(em, 3) == set() and em.partitions == []


def test_forget_port_drops_its_stages_its_carrier_and_its_blocks() -> None:
    em = Emulator([Counter() for _ in range(3)])
    em.set(2, "c", ("in", "out"), Impairment(down=True, carrier=True), None, NOW)
    em.set(1, "b", ("in",), Impairment(delay=0.1), None, NOW)
    em.partition({"a": 0}, {"c": 2}, two_way=True)
    em.partition({"a": 0}, {"b": 1}, two_way=False)
    assert em.carrier_down == {2}
    em.forget_port(2)
    assert 2 not in em.ins and 2 not in em.outs and em.carrier_down == set()
    assert blocked(em, 3) == {(0, 1)}
    assert 1 in em.ins
    # the partition that named the removed port goes from the listing too; the other stays
    assert [part.describe() for part in em.partitions] == ["a -> b"]
    assert em.carrier_changes == [] or all(port != 2 for port, _up in em.carrier_changes)


# --- settings -------------------------------------------------------------------------------------------
CHECK_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"loss": 1.5}, "--loss"),
    ({"loss": -0.01}, "--loss"),
    ({"duplicate": -0.1}, "--duplicate"),
    ({"reorder": math.nan}, "--reorder"),
    ({"corrupt": 2.0}, "--corrupt"),
    ({"delay": -1.0}, "--delay"),
    ({"delay": 61.0}, "--delay"),
    ({"jitter": math.inf}, "--jitter"),
    ({"distribution": "pareto"}, "--distribution"),
    ({"loss": 0.1, "loss_burst": 0.5}, "--loss-burst"),
    ({"loss": 0.1, "loss_burst": 2e6}, "--loss-burst"),
    ({"loss": 1.0, "loss_burst": 3.0}, "--loss-burst"),
    ({"loss": 0.8, "loss_burst": 2.0}, "--loss-burst"),  # bursts of 2 leave at most 2/3 lost
    ({"rate": 7999.0}, "--rate"),
    ({"rate": 1e12}, "--rate"),
    ({"rate": -1e6}, "--rate"),
    ({"burst": 3000}, "--burst"),
    ({"latency": 0.1}, "--latency"),
    ({"rate": 1e6, "burst": 1000}, "--burst"),
    ({"rate": 1e6, "burst": (1 << 30) + 1}, "--burst"),
    ({"rate": 1e6, "burst": -1}, "--burst"),
    ({"rate": 1e6, "latency": 61.0}, "--latency"),
    ({"rate": 1e6, "latency": -1.0}, "--latency"),
    ({"limit": -1}, "--limit"),
    ({"limit": LIMIT_MAX + 1}, "--limit"),
    ({"flap": (0.0, 1.0)}, "--flap"),
    ({"flap": (1.0, 86401.0)}, "--flap"),
    ({"flap": (1.0, math.nan)}, "--flap"),
    ({"carrier": True}, "--carrier"),
    ({"seed": -1}, "--seed"),
    ({"seed": 1 << 64}, "--seed"),
]


@pytest.mark.parametrize(("fields", "option"), CHECK_ERRORS, ids=lambda v: str(v))
def test_check_names_the_option_out_of_range(fields: dict[str, Any], option: str) -> None:
    with pytest.raises(ValueError, match=f"^{option}|{option}[ :]"):
        Impairment(**fields).check()


CHECK_ACCEPTS: list[dict[str, Any]] = [
    {},
    {"loss": 1.0},
    {"loss": 0.0, "loss_burst": 5.0},
    {"loss": 0.75, "loss_burst": 3.0},  # exactly L / (L + 1)
    {"loss": 0.2, "loss_burst": 1.0},  # bursts of one: independent
    {"delay": 60.0, "jitter": 60.0, "distribution": "normal"},
    {"rate": 8000.0},
    {"rate": 100e9, "burst": 1 << 30, "latency": 60.0},
    {"rate": 1e6, "burst": 1514},
    {"limit": LIMIT_MAX},
    {"flap": (0.001, 86400.0), "carrier": True},
    {"down": True, "carrier": True},
    {"seed": 0},
    {"seed": (1 << 64) - 1},
]


@pytest.mark.parametrize("fields", CHECK_ACCEPTS, ids=lambda v: str(v))
def test_check_accepts_the_edges_of_every_range(fields: dict[str, Any]) -> None:
    imp = Impairment(**fields)
    assert imp.check() is imp


ROUND_TRIPS = [
    Impairment(),
    Impairment(delay=0.04, jitter=0.01, distribution="normal"),
    Impairment(loss=0.01, loss_burst=3.0),
    Impairment(duplicate=0.01, reorder=0.02, corrupt=0.001),
    Impairment(rate=1e7, burst=20000, latency=0.1, limit=5000),
    Impairment(down=True, carrier=True),
    Impairment(flap=(2.0, 0.5), carrier=True),
    Impairment(delay=0.1, filter="udp port 53"),
    Impairment(loss=0.1, seed=0),
    Impairment(seed=(1 << 64) - 1),
]


@pytest.mark.parametrize("imp", ROUND_TRIPS, ids=lambda imp: json.dumps(imp.settings()))
def test_from_settings_takes_back_what_settings_gives_through_json(imp: Impairment) -> None:
    assert Impairment.from_settings(json.loads(json.dumps(imp.settings()))) == imp


def test_settings_leaves_out_what_is_not_set() -> None:
    assert Impairment().settings() == {}
    assert Impairment(delay=0.1, distribution="uniform").settings() == {"delay": 0.1}
    assert Impairment(flap=(1.0, 2.0), carrier=True).settings() == {"flap": [1.0, 2.0], "carrier": True}


FROM_SETTINGS_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"delay": 0.1, "latenzy": 1.0}, "latenzy"),
    ({"delay": True}, "delay"),
    ({"loss": "0.1"}, "loss"),
    ({"rate": None}, "rate"),
    ({"limit": "5"}, "limit"),
    ({"limit": 5.0}, "limit"),
    ({"burst": 3000.0, "rate": 1e6}, "burst"),
    ({"seed": True}, "seed"),
    ({"seed": "1"}, "seed"),
    ({"down": 1}, "down"),
    ({"carrier": "yes", "down": True}, "carrier"),
    ({"flap": "12"}, "flap"),
    ({"flap": [1.0]}, "flap"),
    ({"flap": [1.0, 2.0, 3.0]}, "flap"),
    ({"flap": {"up": 1.0}}, "flap"),
    ({"flap": [True, 1.0]}, "flap"),
    ({"distribution": 1}, "distribution"),
    ({"filter": 53}, "filter"),
    ({"loss": 2.0}, "--loss"),  # well typed, out of range: check()'s word
]


@pytest.mark.parametrize(("fields", "name"), FROM_SETTINGS_ERRORS, ids=lambda v: str(v))
def test_from_settings_refuses_unknown_and_badly_typed_fields(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Impairment.from_settings(fields)


# --- seeds: the whole stage repeats -----------------------------------------------------------------------
EVERYTHING = {
    "delay": 0.01,
    "jitter": 0.004,
    "loss": 0.1,
    "duplicate": 0.1,
    "reorder": 0.1,
    "corrupt": 0.1,
    "rate": 4e7,
}


def emulate(seed: int, direction: str = "out") -> tuple[list[tuple[float, bytes]], Counter[str]]:
    """2000 frames of mixed sizes through one port's stage with EVERYTHING, under an Emulator driven by
    its deadline as the shell drives it: what leaves, when; and the stage's counts."""
    em = Emulator([Counter()])
    imp = Impairment(seed=seed, **EVERYTHING)  # type: ignore[arg-type]
    em.set(0, "p0", ("out",) if direction == "out" else ("in",), imp, None, NOW)
    s = em.outs[0] if direction == "out" else em.ins[0]
    out: list[tuple[float, bytes]] = []
    now = NOW
    for i in range(2000):
        arrival = NOW + i * 0.00005  # 20000 frames a second, more than the rate takes
        while (due := em.deadline(now)) is not None and due <= arrival:
            now = due
            ingress, egress = em.release(now)
            out.extend((now, pkt) for _, pkt in ingress + egress)
        now = arrival
        out.extend((now, pkt) for pkt in push(s, udp(i, size=64 + i * 7 % 1400), now))
    while (due := em.deadline(now)) is not None:
        now = due
        ingress, egress = em.release(now)
        out.extend((now, pkt) for _, pkt in ingress + egress)
    return out, s.stats


def test_the_same_seed_and_frames_give_the_same_times_and_bytes() -> None:
    first, stats = emulate(seed=42)
    again, _ = emulate(seed=42)
    assert again == first
    for what in ("lost", "duplicated", "reordered", "corrupted", "rate-dropped", "delayed"):
        assert stats[what] > 10, what  # every impairment took part
    assert emulate(seed=43)[0] != first
    assert emulate(seed=42, direction="in")[0] != first  # each direction has its own generator


# --- describe -------------------------------------------------------------------------------------------
def test_describe_shows_the_settings_the_queue_and_the_counts_that_are_not_zero() -> None:
    em = Emulator([Counter(), Counter()])
    em.set(1, "b", ("out",), Impairment(delay=0.5, loss=1.0), None, NOW)
    push(em.outs[1], udp(0))
    em.set(1, "b", ("out",), Impairment(delay=0.5), None, NOW)
    push(em.outs[1], udp(1))
    assert em.describe(["a", "b"], NOW) == {
        "links": [
            {
                "port": "b",
                "out": {
                    "settings": {"delay": 0.5},
                    "limit": Impairment(delay=0.5).effective_limit,
                    "queued": 1,
                    "down": False,
                    "stats": {"lost": 1, "delayed": 1},
                },
            }
        ],
        "partitions": [],
        "carrier_down": [],
    }


# --- doctor: an impaired link or a partition is a note with the command that removes it ----------------
def test_doctor_notes_each_impaired_direction_and_partition_with_its_fix() -> None:
    from vswitch.tools.debug.doctor import emulation_findings

    em = Emulator([Counter() for _ in range(2)])
    em.set(0, "a", ("in",), Impairment(delay=0.02, loss=0.1), None, NOW)
    em.set(1, "b", ("out",), Impairment(down=True), None, NOW)
    em.partition({"a": 0}, {"b": 1}, two_way=True)
    info = {"instance": "lab", "emulation": em.describe(["a", "b"], NOW)}
    found = [(f.where, f.text, f.fix, f.problem) for f in emulation_findings(info)]
    assert found == [
        ("a", "impaired (in): delay 20 ms, loss 10%", "vswitch link --name lab a --clear", False),
        ("b", "impaired (out): down (down now)", "vswitch link --name lab b --clear", False),
        ("partition", "a / b: no frame crosses it", "vswitch heal --name lab", False),
    ]
    assert emulation_findings({"instance": "default", "emulation": None}) == []
