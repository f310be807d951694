"""ARP: responder, RFC 826 merge, resolution with a queue, retries on a fake clock, failure,
negative cache, ageing and every bound."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.l2 import ARP, Ether

from vswitch.core.router import Interface, Router
from vswitch.core.wire import ZERO_VNET_HDR

R0 = bytes.fromhex("02aa00000001")
R1 = bytes.fromhex("02aa00000002")
H1 = bytes.fromhex("020000000101")
H2 = bytes.fromhex("020000000201")
H2B = bytes.fromhex("0200000002bb")


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def ipn(text: str) -> int:
    return int(IPv4Address(text))


def make_router(**kw: Any) -> Router:
    return Router(
        [
            Interface(0, "seg0", R0, IPv4Interface("10.0.1.1/24")),
            Interface(1, "seg1", R1, IPv4Interface("10.0.2.1/24")),
        ],
        **kw,
    )


def arp_frame(op: int, hwsrc: bytes, psrc: str, pdst: str, dst: bytes = b"\xff" * 6) -> bytes:
    pkt = Ether(src=mac(hwsrc), dst=mac(dst)) / ARP(
        op=op, hwsrc=mac(hwsrc), psrc=psrc, pdst=pdst, hwdst="00:00:00:00:00:00"
    )
    return ZERO_VNET_HDR + bytes(pkt)


def udp_frame(src: str, dst: str, hwsrc: bytes, hwdst: bytes, sport: int = 1000) -> bytes:
    pkt = (
        Ether(src=mac(hwsrc), dst=mac(hwdst))
        / IP(src=src, dst=dst, ttl=64)
        / UDP(sport=sport, dport=53)
        / (b"x" * 20)
    )
    return ZERO_VNET_HDR + bytes(pkt)


def learn_h1(router: Router, now: float = 0.0) -> None:
    router.receive(0, arp_frame(1, H1, "10.0.1.2", "10.0.1.1"), now)


def test_responder_answers_and_learns_requester() -> None:
    router = make_router()
    out = router.receive(0, arp_frame(1, H1, "10.0.1.2", "10.0.1.1"), 0.0)
    assert len(out) == 1
    iface, buf = out[0]
    assert iface == 0 and buf[:10] == ZERO_VNET_HDR
    reply = Ether(buf[10:])
    assert reply.dst == mac(H1) and reply.src == mac(R0)
    assert reply[ARP].op == 2 and reply[ARP].psrc == "10.0.1.1" and reply[ARP].hwsrc == mac(R0)
    assert reply[ARP].pdst == "10.0.1.2" and reply[ARP].hwdst == mac(H1)
    assert len(buf) - 10 == 60
    assert router.arp.lookup(ipn("10.0.1.2"), 1.0) == H1
    assert router.events["arp-replied"] == 1


def test_request_for_other_address_ignored_and_not_learned() -> None:
    router = make_router()
    assert router.receive(0, arp_frame(1, H1, "10.0.1.2", "10.0.1.3"), 0.0) == []
    assert router.arp.lookup(ipn("10.0.1.2"), 0.0) is None
    # wrong interface: 10.0.2.1 is not ours on segment 0
    assert router.receive(0, arp_frame(1, H1, "10.0.1.2", "10.0.2.1"), 0.0) == []


def test_merge_rule_updates_known_sender_from_any_arp() -> None:
    router = make_router()
    learn_h1(router)
    router.receive(0, arp_frame(1, H2B, "10.0.1.2", "10.0.1.77"), 5.0)
    assert router.arp.lookup(ipn("10.0.1.2"), 5.0) == H2B
    assert router.events["arp-changed"] == 1


def test_gratuitous_arp_updates_existing_only() -> None:
    router = make_router()
    router.receive(0, arp_frame(1, H2, "10.0.1.9", "10.0.1.9"), 0.0)
    assert router.arp.lookup(ipn("10.0.1.9"), 0.0) is None
    learn_h1(router)
    router.receive(0, arp_frame(2, H2B, "10.0.1.2", "10.0.1.2"), 1.0)
    assert router.arp.lookup(ipn("10.0.1.2"), 1.0) == H2B


def test_malformed_arp_dropped() -> None:
    router = make_router()
    good = arp_frame(1, H1, "10.0.1.2", "10.0.1.1")
    assert router.receive(0, good[:30], 0.0) == []
    bad_op = bytearray(good)
    bad_op[10 + 14 + 7] = 9
    router.receive(0, bytes(bad_op), 0.0)
    router.receive(0, arp_frame(1, b"\x01" + H1[1:], "10.0.1.2", "10.0.1.1"), 0.0)
    assert router.drops["arp-malformed"] == 3


def test_foreign_sender_not_learned_but_probe_answered() -> None:
    router = make_router()
    out = router.receive(0, arp_frame(1, H1, "0.0.0.0", "10.0.1.1"), 0.0)
    assert len(out) == 1 and router.arp.entries == {}
    router.receive(0, arp_frame(1, H1, "10.0.9.9", "10.0.1.1"), 0.0)
    assert router.arp.entries == {}


def test_resolution_queues_then_flushes() -> None:
    router = make_router()
    learn_h1(router)
    out = router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0), 0.0)
    assert len(out) == 1 and out[0][0] == 1
    req = Ether(out[0][1][10:])
    assert req.dst == "ff:ff:ff:ff:ff:ff" and req[ARP].op == 1
    assert req[ARP].pdst == "10.0.2.5" and req[ARP].psrc == "10.0.2.1"
    # a second packet waits silently, no second request
    assert router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0, 1001), 0.1) == []
    out = router.receive(1, arp_frame(2, H2, "10.0.2.5", "10.0.2.1", R1), 0.2)
    assert [i for i, _ in out] == [1, 1]
    sports = []
    for _, buf in out:
        p = Ether(buf[10:])
        assert p.dst == mac(H2) and p.src == mac(R1) and p[IP].ttl == 63
        sports.append(p[UDP].sport)
    assert sports == [1000, 1001]
    assert router.events["arp-resolved"] == 1


def test_retries_then_failure_sends_host_unreachable() -> None:
    router = make_router(arp_retries=3, arp_retry_interval=1.0)
    learn_h1(router)
    router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0), 10.0)
    assert router.next_deadline() == 11.0
    assert router.on_timer(10.5) == []
    for t in (11.0, 12.0):
        out = router.on_timer(t)
        assert len(out) == 1 and Ether(out[0][1][10:])[ARP].pdst == "10.0.2.5"
    out = router.on_timer(13.0)
    assert router.drops["arp-failed"] == 1
    assert len(out) == 1 and out[0][0] == 0
    err = Ether(out[0][1][10:])
    assert err.dst == mac(H1)
    assert err[IP].src == "10.0.1.1" and err[IP].dst == "10.0.1.2"
    assert err[ICMP].type == 3 and err[ICMP].code == 1
    assert err[IPerror].dst == "10.0.2.5"
    # negative cache: the next packet fails at once, no new request
    out = router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0), 14.0)
    assert router.drops["arp-failed"] == 2
    assert len(out) == 1 and Ether(out[0][1][10:])[ICMP].code == 1
    # after the negative entry lapses, resolution starts again
    out = router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0), 20.0)
    assert len(out) == 1 and Ether(out[0][1][10:]).haslayer(ARP)


def test_queue_bound_drops_oldest() -> None:
    router = make_router(arp_queue_max=2)
    learn_h1(router)
    for sport in (1, 2, 3):
        router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0, sport), 0.0)
    assert router.drops["arp-queue-full"] == 1
    out = router.receive(1, arp_frame(2, H2, "10.0.2.5", "10.0.2.1", R1), 0.1)
    assert [Ether(b[10:])[UDP].sport for _, b in out] == [2, 3]


def test_pending_bound() -> None:
    router = make_router(arp_pending_max=2)
    learn_h1(router)
    for host in (5, 6, 7):
        router.receive(0, udp_frame("10.0.1.2", f"10.0.2.{host}", H1, R0), 0.0)
    assert router.drops["arp-pending-full"] == 1
    assert len(router.arp.pending) == 2


def test_ageing_expires_entries() -> None:
    """Fresh for arp_timeout, then stale (still used) for retries x interval, then forgotten."""
    router = make_router(arp_timeout=30.0)  # retries 3 x 1 s: the confirmation window is 3 s
    learn_h1(router, 0.0)
    assert router.arp.lookup(ipn("10.0.1.2"), 29.0) == H1
    assert router.arp.lookup(ipn("10.0.1.2"), 30.0) == H1  # stale, still in use
    assert router.arp.lookup(ipn("10.0.1.2"), 33.0) is None
    deadline = router.next_deadline()
    assert deadline == 33.0
    router.on_timer(deadline)
    assert router.arp.entries == {}
    assert router.events["arp-aged"] == 1
    # a packet to the aged neighbour triggers a fresh request
    out = router.receive(1, udp_frame("10.0.2.5", "10.0.1.2", H2, R1), 34.0)
    assert len(out) == 1 and Ether(out[0][1][10:])[ARP].pdst == "10.0.1.2"


def test_stale_neighbour_keeps_forwarding_and_is_asked_to_confirm() -> None:
    """Linux's STALE -> PROBE: traffic never stalls behind a broadcast request every timeout."""
    router = make_router(arp_timeout=30.0)
    learn_h1(router, 0.0)
    out = router.receive(1, udp_frame("10.0.2.5", "10.0.1.2", H2, R1), 31.0)
    kinds = [Ether(frame[10:]) for _, frame in out]
    assert kinds[0].haslayer(UDP) and kinds[0].dst == mac(H1)
    probe = kinds[1]
    assert probe[ARP].op == 1 and probe[ARP].pdst == "10.0.1.2"
    assert probe.dst == mac(H1)  # unicast to the MAC we hold, not a broadcast
    # no second probe within the retry interval
    again = router.receive(1, udp_frame("10.0.2.5", "10.0.1.2", H2, R1), 31.5)
    assert len(again) == 1
    # the neighbour answers: fresh again, no more probes
    router.receive(0, arp_frame(2, H1, "10.0.1.2", "10.0.1.1", dst=R0), 32.0)
    fresh = router.receive(1, udp_frame("10.0.2.5", "10.0.1.2", H2, R1), 40.0)
    assert len(fresh) == 1
    assert router.arp.lookup(ipn("10.0.1.2"), 61.0) == H1


def test_cache_bound_evicts_oldest() -> None:
    router = make_router(arp_cache_max=2)
    for i, t in ((2, 0.0), (3, 1.0), (4, 2.0)):
        router.receive(0, arp_frame(1, H1[:5] + bytes([i]), f"10.0.1.{i}", "10.0.1.1"), t)
    assert len(router.arp.entries) == 2
    assert ipn("10.0.1.2") not in router.arp.entries
    assert router.events["arp-evicted"] == 1


def test_arp_table_rows() -> None:
    router = make_router()
    learn_h1(router)
    router.receive(0, udp_frame("10.0.1.2", "10.0.2.5", H1, R0), 0.0)
    rows = router.arp_table(1.0)
    states = {r["ip"]: r["state"] for r in rows}
    assert states == {"10.0.1.2": "reachable", "10.0.2.5": "incomplete"}
