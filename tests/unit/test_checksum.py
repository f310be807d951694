"""RFC 1071 sums and RFC 1624 incremental updates, checked against checksums scapy computes afresh."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet, Raw

from vswitch.core.checksum import delta, fold, internet_checksum, ones_sum, update_complete, update_partial
from vswitch.core.wire import PROTO_TCP, PROTO_UDP, TCP_CSUM_OFF, UDP_CSUM_OFF

addresses = st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big")))
ports = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=64)


def aton(address: str) -> bytes:
    return socket.inet_aton(address)


@pytest.mark.parametrize(
    ("total", "folded"),
    [(0, 0), (0xFFFF, 0xFFFF), (0x10000, 1), (0x1FFFE, 0xFFFF), (0x2FFFE, 1), (0xFFFF * 0xFFFF, 0xFFFF)],
)
def test_fold(total: int, folded: int) -> None:
    assert fold(total) == folded


def test_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")  # RFC 1071 section 3
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_odd_length_is_padded_with_zero() -> None:
    assert ones_sum(b"\xab") == 0xAB00
    assert ones_sum(b"\x00\x01\xab") == 0xAB01
    assert ones_sum(memoryview(b"\x00\x01\xab")) == 0xAB01


@settings(max_examples=200, deadline=None)
@given(src=addresses, dst=addresses, ttl=st.integers(0, 255), ident=ports, tos=st.integers(0, 255))
def test_internet_checksum_matches_scapy_ip_header(
    src: str, dst: str, ttl: int, ident: int, tos: int
) -> None:
    header = raw(IP(src=src, dst=dst, ttl=ttl, id=ident, tos=tos, proto=PROTO_UDP))[:20]
    expected = struct.unpack_from("!H", header, 10)[0]
    zeroed = header[:10] + b"\x00\x00" + header[12:]
    assert internet_checksum(zeroed) == expected
    assert internet_checksum(header) == 0  # a correct header verifies to zero


def csum_at(data: bytes, offset: int) -> int:
    value: int = struct.unpack_from("!H", data, offset)[0]
    return value


def nonzero(checksum: int) -> int:
    """UDP sends a computed 0 as 0xFFFF (RFC 768); both are the same one's-complement value."""
    return checksum or 0xFFFF


def build(src: str, dst: str, l4: Packet, payload: bytes) -> bytes:
    return raw(IP(src=src, dst=dst) / l4 / Raw(payload))


@settings(max_examples=200, deadline=None)
@given(
    src=addresses,
    new_src=addresses,
    dst=addresses,
    sport=ports,
    new_sport=ports,
    dport=ports,
    payload=payloads,
)
def test_update_complete_matches_fresh_udp_and_ip(
    src: str, new_src: str, dst: str, sport: int, new_sport: int, dport: int, payload: bytes
) -> None:
    """SNAT rewrites the source address and port: IP and UDP checksums follow incrementally."""
    old = build(src, dst, UDP(sport=sport, dport=dport), payload)
    fresh = build(new_src, dst, UDP(sport=new_sport, dport=dport), payload)
    addr_change = delta(aton(src), aton(new_src))
    port_change = delta(struct.pack("!H", sport), struct.pack("!H", new_sport))
    assert update_complete(csum_at(old, 10), addr_change) == csum_at(fresh, 10)
    udp = update_complete(csum_at(old, 20 + UDP_CSUM_OFF), fold(addr_change + port_change))
    assert nonzero(udp) == nonzero(csum_at(fresh, 20 + UDP_CSUM_OFF))


@settings(max_examples=200, deadline=None)
@given(src=addresses, new_src=addresses, dst=addresses, dport=ports, new_dport=ports, payload=payloads)
def test_update_complete_matches_fresh_tcp(
    src: str, new_src: str, dst: str, dport: int, new_dport: int, payload: bytes
) -> None:
    old = build(src, dst, TCP(sport=40000, dport=dport, flags="S"), payload)
    fresh = build(new_src, dst, TCP(sport=40000, dport=new_dport, flags="S"), payload)
    change = fold(
        delta(aton(src), aton(new_src)) + delta(struct.pack("!H", dport), struct.pack("!H", new_dport))
    )
    assert update_complete(csum_at(old, 20 + TCP_CSUM_OFF), change) == csum_at(fresh, 20 + TCP_CSUM_OFF)


def test_delta_of_no_change_leaves_checksum_alone() -> None:
    pkt = build("192.0.2.1", "198.51.100.7", UDP(sport=1, dport=2), b"x")
    before = csum_at(pkt, 10)
    assert update_complete(before, delta(aton("192.0.2.1"), aton("192.0.2.1"))) == before


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """What a NEEDS_CSUM field holds: the folded pseudo-header sum, not complemented (RFC 768/793)."""
    return ones_sum(src + dst + struct.pack("!BBH", 0, proto, length))


@settings(max_examples=300, deadline=None)
@given(
    src=addresses,
    dst=addresses,
    new_src=addresses,
    new_dst=addresses,
    proto=st.sampled_from([PROTO_TCP, PROTO_UDP]),
    length=st.integers(8, 0xFFFF),
)
def test_update_partial_keeps_the_pseudo_header_sum(
    src: str, dst: str, new_src: str, new_dst: str, proto: int, length: int
) -> None:
    field = pseudo_header_sum(aton(src), aton(dst), proto, length)
    field = update_partial(field, delta(aton(src), aton(new_src)))
    assert field == pseudo_header_sum(aton(new_src), aton(dst), proto, length)
    field = update_partial(field, delta(aton(dst), aton(new_dst)))
    assert field == pseudo_header_sum(aton(new_src), aton(new_dst), proto, length)
