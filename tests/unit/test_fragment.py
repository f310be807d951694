"""IPv4 fragmentation in the router (RFC 791 3.2, RFC 1812 5.2.6): pieces that fit the next hop's MTU
and that scapy reassembles into the packet as routed; options, partial checksums, fragments of
fragments, and the cases that are not fragmented."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet import defragment as scapy_defragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from test_checksum_offload import partial
from test_router import H1, H2, R0, R1, R2, UP, frame, from_h1, mac, make_router, tso

from vswitch.core.checksum import internet_checksum
from vswitch.core.fragment import copied_options, fragment
from vswitch.core.nat import NatConfig
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import L3, VNET_HDR_LEN, ZERO_VNET_HDR

# scapy's reassembly, typed here: scapy leaves it unannotated.
defragment: Callable[[list[Packet]], list[Packet]] = scapy_defragment

NEW_HOST = "02:00:00:00:02:09"  # 10.0.2.9 on seg1: not in make_router's ARP cache
SEG1_MTU = 1400  # make_router's interface 1 (10.0.2.0/24); interface 0 has 1500


def pieces_of(out: list[tuple[int, bytes]], iface: int = 1) -> list[Packet]:
    assert out and all(port == iface for port, _ in out), [port for port, _ in out]
    assert all(buf[:VNET_HDR_LEN] == ZERO_VNET_HDR for _, buf in out), "fragments leave as plain frames"
    return [Ether(buf[VNET_HDR_LEN:]) for _, buf in out]


def reassembled(pieces: list[Packet]) -> Packet:
    """scapy's reassembly of the pieces' IP packets, parsed again (so its checksums are the wire's)."""
    whole = defragment([p[IP] for p in pieces])
    assert len(whole) == 1
    return IP(bytes(whole[0]))


def header_checksum_ok(ip: Packet) -> bool:
    copy = IP(bytes(ip))
    del copy.chksum
    return bool(IP(bytes(copy)).chksum == ip.chksum)


def test_a_packet_without_df_leaves_in_fragments_that_fit_and_reassemble() -> None:
    router = make_router()
    payload = bytes(range(256)) * 12  # 3072 bytes: three fragments at 1400
    sent = IP(src="10.0.1.2", dst="10.0.2.5", id=4242, ttl=9) / UDP(sport=5000, dport=7) / payload
    pieces = pieces_of(router.receive(0, from_h1(sent), 0.0))
    assert len(pieces) == 3
    for piece in pieces:
        assert piece.src == mac(R1) and piece.dst == mac(H2)
        assert len(piece[IP]) <= SEG1_MTU and piece[IP].id == 4242 and piece[IP].ttl == 8
        assert header_checksum_ok(piece[IP])
    assert [p[IP].flags.MF for p in pieces] == [True, True, False]
    assert [p[IP].frag * 8 for p in pieces] == [0, 1376, 2752]  # 1400 - 20 = 1380, down to 8-byte units
    whole = reassembled(pieces)
    assert bytes(whole[UDP].payload) == payload and whole[UDP].sport == 5000
    assert UDP(bytes(whole[UDP])).chksum == sent[UDP].__class__(bytes(sent[UDP])).chksum
    assert router.events["ip-fragmented"] == 1 and router.events["ip-fragments-made"] == 3
    assert router.drops["fragmentation-unsupported"] == 0


def test_a_partial_checksum_is_completed_before_splitting() -> None:
    """NEEDS_CSUM: the tap left the L4 checksum to the device; fragments cannot carry that, so the
    router completes it first and the reassembled datagram's checksum verifies."""
    router = make_router()
    payload = b"q" * 2000
    ip = IP(src="10.0.1.2", dst="10.0.2.5", id=7) / TCP(sport=40000, dport=22, flags="PA") / payload
    pieces = pieces_of(router.receive(0, partial(ip), 0.0))
    assert len(pieces) == 2
    whole = reassembled(pieces)
    rebuilt = TCP(bytes(whole[TCP]))
    del rebuilt.chksum
    again = IP(src=whole.src, dst=whole.dst) / rebuilt
    assert IP(bytes(again))[TCP].chksum == whole[TCP].chksum
    assert bytes(whole[TCP].payload) == payload


def test_only_copied_options_repeat_in_later_fragments() -> None:
    """RFC 791 3.1: the copied flag (0x80) says which options every fragment carries. Here a copied
    one (type 0x88, stream id, 4 bytes) and one that is not (type 0x44, timestamp, 8 bytes)."""
    router = make_router()
    copied = IPOption(b"\x88\x04\x12\x34")
    first_only = IPOption(b"\x44\x08\x05\x00" + bytes(4))
    sent = IP(src="10.0.1.2", dst="10.0.2.5", options=[copied, first_only]) / UDP() / (b"o" * 3000)
    pieces = pieces_of(router.receive(0, from_h1(sent), 0.0))
    first, *later = [p[IP] for p in pieces]
    assert first.ihl == 8 and bytes(first)[20:32] == b"\x88\x04\x12\x34\x44\x08\x05\x00" + bytes(4)
    for ip in later:
        assert ip.ihl == 6 and bytes(ip)[20:24] == b"\x88\x04\x12\x34"
        assert header_checksum_ok(ip) and len(ip) <= SEG1_MTU
    assert all((p[IP].frag * 8) % 8 == 0 for p in pieces)
    assert bytes(reassembled(pieces)[UDP].payload) == b"o" * 3000


def test_copied_options_skip_nops_stop_at_end_and_pad() -> None:
    assert copied_options(b"\x01\x88\x04\xab\xcd\x00\x99\x99") == b"\x88\x04\xab\xcd"
    assert copied_options(b"\x83\x07\x04" + bytes(4) + b"\x00") == b"\x83\x07\x04" + bytes(4) + b"\x00"
    assert copied_options(b"\x88\x09\x01") == b""  # its length runs past the header: nothing past it
    assert copied_options(b"\x07\x03\x04\x00") == b""  # record route is not copied


def test_a_fragment_too_big_is_fragmented_again_with_offsets_added() -> None:
    """A piece of a bigger datagram (MF set, offset 185 x 8) on a smaller link: its pieces' offsets
    continue from its own, and all of them keep MF, since more of the datagram follows."""
    router = make_router()
    sent = IP(src="10.0.1.2", dst="10.0.2.5", id=99, flags="MF", frag=185) / (b"f" * 1480)
    pieces = pieces_of(router.receive(0, from_h1(sent), 0.0))
    assert [p[IP].frag for p in pieces] == [185, 185 + 1376 // 8]
    assert all(p[IP].flags.MF for p in pieces)
    assert b"".join(bytes(p[IP].payload) for p in pieces) == b"f" * 1480


def test_df_still_gets_fragmentation_needed_and_gso_without_df_is_refused() -> None:
    router = make_router()
    big = IP(src="10.0.1.2", dst="10.0.2.5", flags="DF") / UDP() / (b"z" * 1400)
    out = router.receive(0, from_h1(big), 0.0)
    assert len(out) == 1 and out[0][0] == 0 and router.drops["fragmentation-needed"] == 1
    buf = bytearray(tso(1361, 30000))
    buf[L3 + 6] = 0  # clear DF: a super-frame would have to be segmented before it could be split
    buf[L3 + 10 : L3 + 12] = bytes(2)
    buf[L3 + 10 : L3 + 12] = internet_checksum(buf[L3 : L3 + 20]).to_bytes(2, "big")
    assert router.receive(0, bytes(buf), 0.0) == []
    assert router.drops["fragmentation-unsupported"] == 1
    assert router.events["ip-fragmented"] == 0


def test_an_mtu_too_small_for_a_header_and_eight_bytes_gives_none() -> None:
    buf = ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / IP(dst="10.0.2.5") / (b"x" * 100))
    end = len(buf)
    assert fragment(buf, end, 27) is None
    pieces = fragment(buf, end, 28)
    assert pieces is not None and len(pieces) == 100 // 8 + 1


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=9000),
    mtu=st.integers(min_value=68, max_value=9000),
    options=st.sampled_from([b"", b"\x88\x04\x00\x01", b"\x44\x08\x05\x00" + bytes(4)]),
    more=st.booleans(),
)
def test_any_size_and_mtu_reassemble_exactly(size: int, mtu: int, options: bytes, more: bool) -> None:
    ip = IP(
        src="10.0.1.2",
        dst="10.0.2.5",
        id=3,
        flags="MF" if more else 0,
        options=IPOption(options) if options else [],
    )
    buf = ZERO_VNET_HDR + bytes(Ether(src=mac(H1), dst=mac(R0)) / ip / bytes(i % 251 for i in range(size)))
    pieces = fragment(buf, len(buf), mtu)
    assert pieces is not None
    parsed = [Ether(p[VNET_HDR_LEN:])[IP] for p in pieces]
    assert all(len(p) <= mtu and header_checksum_ok(p) for p in parsed)
    assert all(p.flags.MF for p in parsed[:-1])
    assert bool(parsed[-1].flags.MF) is more
    offsets = [p.frag * 8 for p in parsed]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert b"".join(bytes(p.payload) for p in parsed) == bytes(i % 251 for i in range(size))
    assert all(offsets[i + 1] - offsets[i] == len(parsed[i].payload) for i in range(len(parsed) - 1))


def test_a_masqueraded_datagram_is_fragmented_after_nat() -> None:
    """Through NAT to an uplink with a smaller MTU: the pieces carry the NAT source, and the
    datagram they rebuild has a checksum that verifies against it (partial form, completed here)."""
    router = Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24")),
            Interface(2, "uplink", R2, IPv4Interface("198.18.0.2/24"), mtu=1280, uplink=True),
        ],
        [Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1"))],
        NatConfig(2, IPv4Address("198.18.0.2"), [IPv4Network("10.0.0.0/16")]),
    )
    router.arp.learn(int(IPv4Address("198.18.0.1")), UP, 2, 0.0)
    payload = bytes(range(200)) * 10
    ip = IP(src="10.0.1.2", dst="198.18.0.1", id=55) / UDP(sport=4000, dport=53) / payload
    pieces = pieces_of(router.receive(0, partial(ip), 0.0), iface=2)
    assert len(pieces) == 2 and {p[IP].src for p in pieces} == {"198.18.0.2"}
    whole = reassembled(pieces)
    rebuilt = IP(src=whole.src, dst=whole.dst) / UDP(bytes(whole[UDP]))
    del rebuilt[UDP].chksum
    assert IP(bytes(rebuilt))[UDP].chksum == whole[UDP].chksum
    assert bytes(whole[UDP].payload) == payload


def test_a_packet_waiting_for_arp_is_parked_whole_and_split_when_arp_answers() -> None:
    """22 pieces would overflow the 16-frame queue of one next hop; parked whole, the packet takes
    one place, and ARP's answer releases it in pieces that all arrive."""
    router = make_router()
    payload = bytes(range(250)) * 120  # 30,000 bytes: 22 pieces at MTU 1400
    sent = IP(src="10.0.1.2", dst="10.0.2.9", id=31) / UDP(sport=1, dport=2) / payload
    (request,) = router.receive(0, from_h1(sent), 0.0)
    assert request[0] == 1 and Ether(request[1][VNET_HDR_LEN:])[ARP].pdst == "10.0.2.9"
    answer = Ether(src=NEW_HOST, dst=mac(R1)) / ARP(
        op=2, hwsrc=NEW_HOST, psrc="10.0.2.9", hwdst=mac(R1), pdst="10.0.2.1"
    )
    pieces = pieces_of(router.receive(1, frame(answer), 0.5))
    assert len(pieces) == 22 and all(p.dst == NEW_HOST for p in pieces)
    assert bytes(reassembled(pieces)[UDP].payload) == payload
    assert router.drops["arp-queue-full"] == 0


def test_arp_failure_for_a_packet_to_fragment_sends_one_icmp_error() -> None:
    router = make_router()
    sent = IP(src="10.0.1.2", dst="10.0.2.9") / UDP(sport=1, dport=2) / (b"u" * 5000)
    router.receive(0, from_h1(sent), 0.0)
    out: list[tuple[int, bytes]] = []
    for second in range(1, 30):
        out += router.on_timer(float(second))
    errors = [Ether(buf[VNET_HDR_LEN:]) for port, buf in out if port == 0]
    assert len(errors) == 1 and errors[0][ICMP].type == 3 and errors[0][ICMP].code == 1
    assert router.drops["arp-failed"] == 1


def test_pieces_that_would_reach_past_65535_are_a_named_drop() -> None:
    router = make_router()
    sent = IP(src="10.0.1.2", dst="10.0.2.5", flags="MF", frag=8191) / (b"e" * 1480)
    assert router.receive(0, from_h1(sent), 0.0) == []
    assert router.drops["ip-bad-fragment"] == 1
    buf = ZERO_VNET_HDR + bytes(Ether() / sent)
    assert fragment(buf, len(buf), 1400) is None


def test_a_partial_checksum_pointing_into_the_ip_header_is_refused_not_written() -> None:
    router = make_router()
    ip = IP(src="10.0.1.2", dst="10.0.2.5") / UDP(sport=1, dport=2) / (b"c" * 2000)
    buf = bytearray(partial(ip))
    buf[6:10] = (14).to_bytes(2, "little") + (12).to_bytes(2, "little")  # csum_start/offset: the source
    assert router.receive(0, bytes(buf), 0.0) == []
    assert router.drops["bad-vnet-header"] == 1


def test_the_reserved_flag_is_not_copied_into_pieces() -> None:
    router = make_router()
    sent = IP(src="10.0.1.2", dst="10.0.2.5", flags="evil") / UDP() / (b"r" * 2000)
    pieces = pieces_of(router.receive(0, from_h1(sent), 0.0))
    assert len(pieces) == 2 and not any(p[IP].flags.evil for p in pieces)


def test_an_icmp_error_bigger_than_a_small_mtu_leaves_in_fragments() -> None:
    """RFC 1812 4.3.2.3 quotes up to 576 bytes; on a segment with MTU 296 the error itself is split."""
    router = Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24"), mtu=296),
            Interface(1, "seg1", R1, IPv4Interface("10.0.2.1/24")),
        ]
    )
    router.arp.learn(int(IPv4Address("10.0.1.2")), H1, 0, 0.0)
    router.arp.learn(int(IPv4Address("10.0.2.5")), H2, 1, 0.0)
    dying = IP(src="10.0.1.2", dst="10.0.2.5", ttl=1, flags="DF") / UDP(sport=3, dport=4) / (b"t" * 260)
    pieces = pieces_of(router.receive(0, from_h1(dying), 0.0), iface=0)
    assert len(pieces) == 2 and all(len(p[IP]) <= 296 for p in pieces)
    error = reassembled(pieces)
    assert error[ICMP].type == 11 and error.dst == "10.0.1.2"
    quoted = bytes(error[ICMP].payload)
    assert quoted[12:20] == bytes(IP(bytes(dying)))[12:20] and quoted.endswith(b"t" * 40)
