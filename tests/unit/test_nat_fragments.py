"""Fragments through NAT (RFC 4787 REQ-14): the first fragment's translation reaches the others."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

from scapy.layers.inet import IP, UDP
from scapy.layers.inet import defragment as scapy_defragment
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from test_fuzz import HOST_A, R_LAN, R_WAN, UPSTREAM, mac, routed_datapath

from vswitch.core.datapath import Datapath
from vswitch.core.nat import HELD_DATAGRAMS_MAX
from vswitch.core.router import Router

# scapy's own helpers, typed here: scapy leaves them unannotated.
fragment: Callable[..., list[Packet]] = scapy_fragment
defragment: Callable[[list[Packet]], list[Packet]] = scapy_defragment

PAYLOAD = bytes(range(256)) * 12  # 3072 bytes: three fragments at MTU 1500


def frames_to(dp: Datapath, port: int, pkt: bytes, now: float) -> list[tuple[int, bytes]]:
    verdict = dp.receive(port, bytes(10) + pkt, now)
    assert isinstance(verdict, list), verdict
    return verdict


def setup() -> tuple[Datapath, dict[str, int]]:
    dp, router = routed_datapath()
    router.arp.learn(int(IPv4Address("198.18.0.1")), mac(UPSTREAM), 2, 0.0)
    router.arp.learn(int(IPv4Address("10.1.0.2")), mac(HOST_A), 0, 0.0)
    ports = {name: i for i, name in enumerate(dp.counters.names)}
    return dp, ports


def test_outbound_fragments_all_get_the_nat_address_and_reassemble() -> None:
    dp, ports = setup()
    datagram = IP(src="10.1.0.2", dst="198.18.0.1", id=4242) / UDP(sport=5000, dport=7) / PAYLOAD
    pieces = fragment(datagram, fragsize=1480)
    assert len(pieces) == 3
    out = []
    for piece in pieces:
        sent = frames_to(dp, ports["a"], bytes(Ether(src=HOST_A, dst=R_LAN) / piece), 1.0)
        assert [port for port, _ in sent] == [ports["up"]]
        out.append(Ether(sent[0][1][10:])[IP])
    assert {p.src for p in out} == {"198.18.0.2"}
    whole = defragment(out)[0]
    checked = IP(bytes(whole))
    assert bytes(checked[UDP].payload) == PAYLOAD
    assert checked[UDP].sport == 5000
    recomputed = IP(bytes(checked))
    del recomputed[UDP].chksum
    assert IP(bytes(recomputed))[UDP].chksum == checked[UDP].chksum  # the L4 checksum still holds


def test_inbound_reply_fragments_reach_the_inside_host() -> None:
    dp, ports = setup()
    frames_to(
        dp,
        ports["a"],
        bytes(
            Ether(src=HOST_A, dst=R_LAN)
            / IP(src="10.1.0.2", dst="198.18.0.1")
            / UDP(sport=5000, dport=7)
            / b"hi"
        ),
        1.0,
    )
    reply = IP(src="198.18.0.1", dst="198.18.0.2", id=99) / UDP(sport=7, dport=5000) / PAYLOAD
    out = []
    for piece in fragment(reply, fragsize=1480):
        sent = frames_to(dp, ports["up"], bytes(Ether(src=UPSTREAM, dst=R_WAN) / piece), 2.0)
        assert [port for port, _ in sent] == [ports["a"]]
        out.append(Ether(sent[0][1][10:])[IP])
    assert {p.dst for p in out} == {"10.1.0.2"}
    assert bytes(defragment(out)[0][UDP].payload) == PAYLOAD


def test_later_fragments_before_their_first_wait_for_it_and_follow_it() -> None:
    """Fragments in reverse order: the later two are held (no ports to find their flow by) and leave
    translated right behind the first, which names the flow."""
    dp, ports = setup()
    pieces = fragment(
        IP(src="10.1.0.2", dst="198.18.0.1", id=7) / UDP(sport=5001, dport=7) / PAYLOAD, fragsize=1480
    )
    for piece in (pieces[2], pieces[1]):
        assert dp.receive(ports["a"], bytes(10) + bytes(Ether(src=HOST_A, dst=R_LAN) / piece), 1.0) == []
    router = dp.router
    assert isinstance(router, Router) and router.nat is not None
    assert router.events["nat-fragment-held"] == 2 and not router.drops["nat-fragment"]
    sent = frames_to(dp, ports["a"], bytes(Ether(src=HOST_A, dst=R_LAN) / pieces[0]), 1.5)
    assert [port for port, _ in sent] == [ports["up"]] * 3
    out = [Ether(frame[10:])[IP] for _, frame in sent]
    assert [p.frag for p in out] == [0, pieces[2].frag, pieces[1].frag]
    assert {p.src for p in out} == {"198.18.0.2"}
    in_order = sorted(out, key=lambda p: int(p.frag))  # scapy reassembles fragments in order only
    assert bytes(defragment(in_order)[0][UDP].payload) == PAYLOAD
    assert not router.nat.held and router.nat.held_bytes == 0


def test_held_fragments_are_bounded() -> None:
    """At most HELD_DATAGRAMS_MAX datagrams wait; a fragment beyond is a named drop at once."""
    dp, ports = setup()
    router = dp.router
    assert isinstance(router, Router) and router.nat is not None
    for ident in range(HELD_DATAGRAMS_MAX + 1):
        later = IP(src="10.1.0.2", dst="198.18.0.1", id=ident, frag=185, proto=17) / (b"h" * 64)
        dp.receive(ports["a"], bytes(10) + bytes(Ether(src=HOST_A, dst=R_LAN) / later), 1.0)
    assert len(router.nat.held) == HELD_DATAGRAMS_MAX and router.drops["nat-fragment"] == 1
    dp.on_timer(1.0 + 31.0)
    assert not router.nat.held and router.drops["nat-fragment"] == 1 + HELD_DATAGRAMS_MAX


def test_fragment_memory_expires() -> None:
    dp, ports = setup()
    pieces = fragment(
        IP(src="10.1.0.2", dst="198.18.0.1", id=8) / UDP(sport=5002, dport=7) / PAYLOAD, fragsize=1480
    )
    frames_to(dp, ports["a"], bytes(Ether(src=HOST_A, dst=R_LAN) / pieces[0]), 1.0)
    router = dp.router
    assert router is not None and router.nat is not None
    assert len(router.nat.fragments) == 1
    dp.on_timer(1.0 + 31.0)
    assert not router.nat.fragments
    verdict = dp.receive(ports["a"], bytes(10) + bytes(Ether(src=HOST_A, dst=R_LAN) / pieces[1]), 32.5)
    assert verdict == []
