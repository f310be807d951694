"""The flow cache (flowcache.py) against the slow path it replaces.

Every test runs the same packets, at the same times, through two datapaths built alike, one with the
cache and one without (``Twin``), and asserts that the verdicts are equal byte for byte and that
everything observable afterwards is equal too: counters, drops and events (except the cache's own),
conntrack (states, packet counts, expiries), NAT mappings, ARP and FDB tables, timers. Routed and NAT
flows both ways, TCP and UDP, complete and NEEDS_CSUM checksums, TSO frames; then each reason an entry
must stop being used (route, ARP staleness and changes, conntrack expiry and state, FDB moves and
ageing) and the bound. A hypothesis test does the same over random packet sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from conftest import checksums_valid
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from vswitch.core.checksum import fold, ones_sum, words
from vswitch.core.conntrack import Timeouts
from vswitch.core.datapath import Datapath, Verdict
from vswitch.core.flowcache import GATHER_FROM, INSERT_WHEN_FULL, FlowCache
from vswitch.core.nat import NatConfig, PortForward
from vswitch.core.router import Interface, Router
from vswitch.core.routes import Route
from vswitch.core.wire import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR, ZERO_VNET_HDR, Gather

R_LAN, R_DMZ, R_WAN = "02:aa:00:00:00:01", "02:aa:00:00:00:02", "02:aa:00:00:00:03"
HOST_A, HOST_B, HOST_C = "02:00:00:00:01:02", "02:00:00:00:01:03", "02:00:00:00:02:02"
UPSTREAM, OTHER_UPSTREAM = "02:00:00:00:00:ff", "02:00:00:00:00:fe"
A_IP, B_IP, C_IP, UP_IP, UP2_IP = "10.1.0.2", "10.1.0.3", "10.2.0.2", "198.18.0.1", "198.18.0.9"
NAT_IP, REMOTE = "198.18.0.2", "198.19.5.5"
FAR_NET, FAR = "172.16.0.0/16", "172.16.0.5"  # behind c; neither inside nor out of the uplink
PORTS = {"a": 0, "b": 1, "c": 2, "up": 3}
HOSTS = {"a": (HOST_A, A_IP), "b": (HOST_B, B_IP), "c": (HOST_C, C_IP), "up": (UPSTREAM, UP_IP)}
GATEWAY = {
    "a": (R_LAN, "10.1.0.1"),
    "b": (R_LAN, "10.1.0.1"),
    "c": (R_DMZ, "10.2.0.1"),
    "up": (R_WAN, NAT_IP),
}
L3 = 24
CSUM_OFF = {6: 16, 17: 6}
ARP_TIMEOUT = 300.0


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def world(
    cache: bool,
    nat: bool = True,
    max_entries: int = 8192,
    mtu: int = 1500,
    ageing: float = 300.0,
    arp_cache_max: int = 4096,
) -> Datapath:
    """lan (a, b) 10.1.0.0/24, dmz (c) 10.2.0.0/24, wan (up) 198.18.0.0/24, default via 198.18.0.1.

    With NAT: masquerade to 198.18.0.2, TCP 8080 -> c:80 and UDP 5353 -> b:53 forwarded. Every host
    has asked the router for its gateway, so the router has its ARP entry and the FDB its port.
    """
    dp = Datapath(ageing=ageing, flow_cache_max=max_entries if cache else 0)
    lan, dmz, wan = dp.add_segment("lan"), dp.add_segment("dmz"), dp.add_segment("wan")
    for name, seg in (("a", lan), ("b", lan), ("c", dmz), ("up", wan)):
        dp.add_port(name, seg)
    config = None
    if nat:
        config = NatConfig(
            wan,
            IPv4Address(NAT_IP),
            [IPv4Network("10.1.0.0/24"), IPv4Network("10.2.0.0/24")],
            [
                PortForward(6, 8080, IPv4Address(C_IP), 80),
                PortForward(17, 5353, IPv4Address(B_IP), 53),
            ],
            timeouts=Timeouts(udp=30.0, udp_stream=120.0),
        )
    router = Router(
        [
            Interface(lan, "lan", mac(R_LAN), IPv4Interface("10.1.0.1/24")),
            Interface(dmz, "dmz", mac(R_DMZ), IPv4Interface("10.2.0.1/24"), mtu=mtu),
            Interface(wan, "wan", mac(R_WAN), IPv4Interface(f"{NAT_IP}/24"), mtu=mtu, uplink=True),
        ],
        [
            Route(IPv4Network("0.0.0.0/0"), IPv4Address(UP_IP), wan),
            Route(IPv4Network(FAR_NET), IPv4Address(C_IP), dmz),  # c routes on to a network NAT ignores
        ],
        config,
        arp_timeout=ARP_TIMEOUT,
        arp_cache_max=arp_cache_max,
    )
    dp.attach_router(router, {lan: mac(R_LAN), dmz: mac(R_DMZ), wan: mac(R_WAN)})
    for host in HOSTS:
        dp.receive(PORTS[host], arp(host, "request"), 0.0)
    assert len(router.arp.entries) == 4
    return dp


def arp(host: str, kind: str, hwsrc: str | None = None) -> bytes:
    """ARP from host to its gateway: a who-has for the gateway, or a reply (hwsrc: a new MAC)."""
    host_mac, host_ip = HOSTS[host]
    gw_mac, gw_ip = GATEWAY[host]
    sender = hwsrc or host_mac
    if kind == "request":
        packet = Ether(src=sender, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=sender, psrc=host_ip, pdst=gw_ip
        )
    else:
        packet = Ether(src=sender, dst=gw_mac) / ARP(
            op=2, hwsrc=sender, psrc=host_ip, hwdst=gw_mac, pdst=gw_ip
        )
    return ZERO_VNET_HDR + bytes(packet)


def frame(
    host: str, ip: Packet, form: str = "complete", src_mac: str | None = None, mss: int = 1000
) -> bytes:
    """ip sent by host to its gateway's MAC, its L4 checksum in one of the forms a tap hands over:
    complete; partial (NEEDS_CSUM: the folded pseudo-header sum); tso (partial, GSO TCPV4 with mss);
    zero (a UDP checksum of 0, none)."""
    eth = Ether(src=src_mac or HOSTS[host][0], dst=GATEWAY[host][0])
    if form == "zero":
        ip = ip.copy()
        ip[UDP].chksum = 0
    raw = bytearray(bytes(eth / ip))
    if form == "complete" or form == "zero":
        return ZERO_VNET_HDR + bytes(raw)
    ihl = (raw[14] & 0x0F) * 4
    proto = raw[23]
    total = int.from_bytes(raw[16:18], "big")
    l4 = 14 + ihl
    off = CSUM_OFF[proto]
    pseudo = fold(words(bytes(raw[26:34])) + proto + total - ihl)
    raw[l4 + off : l4 + off + 2] = pseudo.to_bytes(2, "big")
    gso_type, gso_size = (GSO_TCPV4, mss) if form == "tso" else (0, 0)
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso_type, l4 + 20, gso_size, l4, off) + bytes(raw)


def state(dp: Datapath, now: float) -> dict[str, Any]:
    """Everything a test, the CLI or a later packet could see of the datapath."""
    router = dp.router
    assert isinstance(router, Router)
    snapshot = dp.counters.snapshot()
    events = dp.counters.all_events()
    snapshot["events"] = {k: v for k, v in events.items() if not k.startswith("flow-cache")}
    fdbs = [
        sorted((m, e.port, e.static, None if e.static else e.seen) for m, e in seg.switch.fdb.entries.items())
        for seg in dp.segments
    ]
    neighbours = sorted((ip, n.mac, n.iface, n.updated, n.probed) for ip, n in router.arp.entries.items())
    result: dict[str, Any] = {
        "counters": snapshot,
        "drops": dict(router.drops),
        "events": dict(router.events),
        "fdb": fdbs,
        "fdb_deadlines": [seg.switch.fdb.next_deadline() for seg in dp.segments],
        "arp": router.arp_table(now),
        "neighbours": neighbours,
        "arp_pending": sorted(router.arp.pending),
        "deadline": dp.next_deadline(),
    }
    if router.nat is not None:
        conntrack = router.nat.conntrack
        result["conntrack"] = router.conntrack_table(now)
        result["flows"] = [(f.orig, f.state, f.assured, f.replied, f.expires) for f in conntrack.flows]
        result["conntrack_deadline"] = conntrack.next_deadline()
        result["mappings"] = dict(router.nat.mappings)
    return result


def cache_of(dp: Datapath) -> FlowCache:
    assert dp.flows is not None
    return dp.flows


@dataclass
class Twin:
    """Two datapaths, the cache on and off, fed the same packets and timer runs."""

    on: Datapath
    off: Datapath
    now: float = 1.0

    @classmethod
    def build(cls, **kw: Any) -> Twin:
        return cls(world(True, **kw), world(False, **kw))

    def send(self, port: str, pkt: bytes, dt: float = 0.001, timers: bool = True) -> Verdict:
        """timers=False: the clock moves on without the timer running (a late timer, or one held
        back by a table's minimum pass interval), so only the checks made per packet can notice."""
        if timers:
            self.advance(dt)
        else:
            self.now += dt
        got = self.on.receive(PORTS[port], pkt, self.now)
        expected = self.off.receive(PORTS[port], pkt, self.now)
        assert got == expected, f"cache {got!r}\nslow path {expected!r}"
        self.check()
        return got

    def advance(self, dt: float) -> None:
        """Move the clock on, running the timer as the shell would when it is due."""
        target = self.now + dt
        while True:
            deadline = self.off.next_deadline()
            assert self.on.next_deadline() == deadline
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            assert self.on.on_timer(self.now) == self.off.on_timer(self.now)
        self.now = target

    def check(self) -> None:
        assert state(self.on, self.now) == state(self.off, self.now)

    @property
    def hits(self) -> int:
        return self.on.counters.flow_cache_hits


def one(verdict: Verdict, port: str) -> Packet:
    """The single frame a verdict sends, to port, parsed; its checksums checked by scapy."""
    assert isinstance(verdict, list) and len(verdict) == 1, verdict
    out_port, frame = verdict[0]
    assert out_port == PORTS[port]
    buf = bytes(frame)  # a long payload comes as a Gather
    packet = Ether(buf[10:])
    if buf[0] & VNET_F_NEEDS_CSUM:
        complete_partial(buf)
    else:
        checksums_valid(packet[IP])
    return packet


def complete_partial(buf: bytes) -> None:
    """Finish a NEEDS_CSUM frame as the receiving kernel would, then check it with scapy."""
    out = bytearray(buf)
    _, _, _, _, start, off = VNET_HDR.unpack_from(out)
    start += 10
    end = L3 + int.from_bytes(out[L3 + 2 : L3 + 4], "big")
    out[start + off : start + off + 2] = ((~ones_sum(out[start:end]) & 0xFFFF) or 0xFFFF).to_bytes(2, "big")
    ip = Ether(bytes(out[10:]))[IP]
    assert IP(bytes(ip)).chksum == ip.chksum
    copy = IP(bytes(ip))
    del copy.chksum
    del copy.payload.chksum
    assert IP(bytes(copy)).payload.chksum == ip.payload.chksum


def tcp(
    src: str, dst: str, sport: int, dport: int, flags: str = "A", ttl: int = 64, size: int = 32
) -> Packet:
    return (
        IP(src=src, dst=dst, ttl=ttl, flags="DF")
        / TCP(sport=sport, dport=dport, flags=flags)
        / Raw(b"t" * size)
    )


def udp(src: str, dst: str, sport: int, dport: int, ttl: int = 64, size: int = 18) -> Packet:
    return IP(src=src, dst=dst, ttl=ttl) / UDP(sport=sport, dport=dport) / Raw(b"u" * size)


def echo(src: str, dst: str, ident: int, reply: bool = False, ttl: int = 64, seq: int = 1) -> Packet:
    return IP(src=src, dst=dst, ttl=ttl) / ICMP(type=0 if reply else 8, id=ident, seq=seq) / Raw(b"p" * 48)


def echo_frame(host: str, ip: Packet, form: str = "complete") -> bytes:
    """An echo as a tap hands it over: complete, or partial (NEEDS_CSUM at the ICMP checksum, which
    then holds 0: ICMP has no pseudo-header)."""
    raw = bytearray(bytes(Ether(src=HOSTS[host][0], dst=GATEWAY[host][0]) / ip))
    if form == "complete":
        return ZERO_VNET_HDR + bytes(raw)
    l4 = 14 + (raw[14] & 0x0F) * 4
    raw[l4 + 2 : l4 + 4] = b"\x00\x00"
    return VNET_HDR.pack(VNET_F_NEEDS_CSUM, 0, 0, 0, l4, 2) + bytes(raw)


def handshake(
    twin: Twin, client: str, server: str, to: str, sport: int, dport: int, reply_to: str, answer_from: int
) -> None:
    """SYN from client to (to, dport), SYN-ACK from server's port answer_from to (reply_to, sport)
    (the addresses and ports each end sees through NAT), then the ACK."""
    client_ip, server_ip = HOSTS[client][1], HOSTS[server][1] if server != "up" else REMOTE
    twin.send(client, frame(client, tcp(client_ip, to, sport, dport, "S")))
    twin.send(server, frame(server, tcp(server_ip, reply_to, answer_from, sport, "SA")))
    twin.send(client, frame(client, tcp(client_ip, to, sport, dport, "A")))


# --- equivalence, flow by flow -------------------------------------------------------------------------
def test_nat_tcp_both_directions_every_checksum_form() -> None:
    twin = Twin.build()
    handshake(twin, "a", "up", REMOTE, 40000, 80, NAT_IP, 80)
    for form in ("complete", "partial", "tso", "complete"):
        size = 2500 if form == "tso" else 100
        p = one(twin.send("a", frame("a", tcp(A_IP, REMOTE, 40000, 80, "PA", size=size), form)), "up")
        assert p[IP].src == NAT_IP and p[IP].ttl == 63 and p.dst == UPSTREAM and p.src == R_WAN
        q = one(twin.send("up", frame("up", tcp(REMOTE, NAT_IP, 80, 40000, "A", size=size), form)), "a")
        assert q[IP].dst == A_IP and q[TCP].dport == 40000 and q.dst == HOST_A
    assert twin.hits == 4 + 3  # the handshake's ACK installed the outbound entry, the first reply the inbound


def test_a_long_payload_leaves_as_a_gather_equal_to_the_slow_path() -> None:
    """Beyond GATHER_FROM bytes the payload is not copied: head + memoryview of the received frame."""
    twin = Twin.build()
    handshake(twin, "a", "up", REMOTE, 40000, 80, NAT_IP, 80)
    for size, gathered in ((GATHER_FROM - 100, False), (GATHER_FROM + 100, True), (60000, True)):
        pkt = frame("a", tcp(A_IP, REMOTE, 40000, 80, "PA", size=size), "tso")
        verdict = twin.send("a", pkt)  # which also checks: the same bytes as the router's
        assert isinstance(verdict, list)
        assert isinstance(verdict[0][1], Gather) is gathered


def test_nat_udp_both_directions_and_zero_checksum() -> None:
    twin = Twin.build()
    for form in ("complete", "partial", "zero", "complete"):
        p = one(twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53), form)), "up")
        assert p[IP].src == NAT_IP and p[UDP].sport == 5000
        if form == "zero":
            assert p[UDP].chksum == 0
        one(twin.send("up", frame("up", udp(REMOTE, NAT_IP, 53, 5000), form)), "a")
    # the first outbound installs; the first reply changes the flow (replied), so both reinstall
    assert twin.hits == 5


def test_udp_without_reply_is_cached_until_the_reply() -> None:
    """An iperf-style one-way UDP stream: cached from its second packet on, with the 30 s timeout;
    the first reply switches the flow to the stream timeout, and the cache follows."""
    twin = Twin.build()
    for _ in range(5):
        twin.send("a", frame("a", udp(A_IP, REMOTE, 5001, 5201)), dt=10.0)
    assert twin.hits == 4
    twin.send("up", frame("up", udp(REMOTE, NAT_IP, 5201, 5001)))
    for _ in range(3):
        twin.send("a", frame("a", udp(A_IP, REMOTE, 5001, 5201)), dt=60.0)  # alive only with 120 s
    assert twin.hits == 6


def test_routed_untracked_flows_with_and_without_nat() -> None:
    for nat in (True, False):
        twin = Twin.build(nat=nat)
        for form in ("complete", "partial", "zero"):
            p = one(twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000), form)), "c")
            assert p[IP].src == A_IP and p.dst == HOST_C and p.src == R_DMZ and p[IP].ttl == 63
            one(twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000), form)), "a")
        for flags in ("S", "SA", "A", "PA", "FA", "A", "R"):
            twin.send("a", frame("a", tcp(A_IP, C_IP, 41000, 22, flags)))
        assert twin.hits == 4 + 2  # UDP both ways after the first; TCP only plain ACKs after the first
        on = twin.on.router
        assert isinstance(on, Router) and (on.nat is None or len(on.nat.conntrack) == 0)


def test_port_forward_hairpin_and_identity_flows() -> None:
    twin = Twin.build()
    # from outside to the forward (DNAT to c:80)
    handshake(twin, "up", "c", NAT_IP, 33333, 8080, UP_IP, 80)
    for _ in range(2):
        one(twin.send("up", frame("up", tcp(UP_IP, NAT_IP, 33333, 8080, "PA"))), "c")
        one(twin.send("c", frame("c", tcp(C_IP, UP_IP, 80, 33333, "A"), "partial")), "up")
    # hairpin: b to the NAT address's forward, c answers to the NAT address
    handshake(twin, "b", "c", NAT_IP, 42000, 8080, NAT_IP, 80)
    for _ in range(2):
        p = one(twin.send("b", frame("b", tcp(B_IP, NAT_IP, 42000, 8080, "PA"))), "c")
        assert p[IP].src == NAT_IP and p[IP].dst == C_IP and p[TCP].dport == 80
        one(twin.send("c", frame("c", tcp(C_IP, NAT_IP, 80, 42000, "A"))), "b")
    # UDP forward to b:53
    for _ in range(3):
        one(twin.send("up", frame("up", udp(UP_IP, NAT_IP, 9999, 5353))), "b")
        one(twin.send("b", frame("b", udp(B_IP, UP_IP, 53, 9999), "partial")), "up")
    # identity: from the uplink straight to an inside address (tracked, not translated)
    for _ in range(3):
        one(twin.send("up", frame("up", udp(REMOTE, C_IP, 1234, 4321))), "c")
        one(twin.send("c", frame("c", udp(C_IP, REMOTE, 4321, 1234))), "up")
    # each: the first packet each way installs; a reply that changes the flow (UDP's first) reinstalls
    assert twin.hits == 3 + 3 + 3 + 3


def test_echo_through_nat_and_routed_is_cached_both_ways() -> None:
    """ping: requests and replies take the cache, masqueraded or routed, each sequence number (a new
    checksum) under the same entry."""
    twin = Twin.build()
    for seq in range(1, 5):
        p = one(twin.send("a", echo_frame("a", echo(A_IP, REMOTE, 7, seq=seq))), "up")
        assert p[IP].src == NAT_IP and p[ICMP].id == 7 and p[IP].ttl == 63
        q = one(twin.send("up", echo_frame("up", echo(REMOTE, NAT_IP, 7, reply=True, seq=seq))), "a")
        assert q[IP].dst == A_IP and q[ICMP].id == 7 and q[ICMP].seq == seq
        one(twin.send("a", echo_frame("a", echo(A_IP, C_IP, 9, seq=seq))), "c")
        one(twin.send("c", echo_frame("c", echo(C_IP, A_IP, 9, reply=True, seq=seq))), "a")
    # Masqueraded: the first request installs (requests 2-4 would hit), but the first reply marks
    # the flow answered, which drops that entry: requests 3-4 and replies 2-4 hit. Inside, untracked:
    # requests 2-4 and replies 2-4.
    assert twin.hits == (2 + 3) + (3 + 3)
    assert len(cache_of(twin.on).echo_tables[0]) == 2


def test_a_translated_identifier_is_rewritten_on_a_hit() -> None:
    """Two inside hosts ping out with the same identifier: the second is given another one (NAT),
    and its hits rewrite it there and back, the checksum with it."""
    twin = Twin.build()
    for seq in range(1, 4):
        one(twin.send("a", echo_frame("a", echo(A_IP, REMOTE, 5, seq=seq))), "up")
        p = one(twin.send("b", echo_frame("b", echo(B_IP, REMOTE, 5, seq=seq))), "up")
        assert p[ICMP].id != 5
        q = one(twin.send("up", echo_frame("up", echo(REMOTE, NAT_IP, p[ICMP].id, reply=True, seq=seq))), "b")
        assert q[ICMP].id == 5 and q[IP].dst == B_IP
    assert twin.hits >= 4


def test_icmp_errors_are_never_cached() -> None:
    twin = Twin.build()
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)))
    error = (
        IP(src=REMOTE, dst=NAT_IP)
        / ICMP(type=3, code=3)
        / IP(src=NAT_IP, dst=REMOTE)
        / UDP(sport=5000, dport=53)
    )
    for _ in range(3):
        one(twin.send("up", echo_frame("up", error)), "a")
    assert not any(cache_of(twin.on).echo_tables) and twin.hits == 0


def test_checks_a_hit_must_still_make() -> None:
    """On a cached flow: a bad IP checksum, TTL 1, DF beyond the MTU, a fragment, IP options and an
    oversize TSO frame all take the slow path and end as it says."""
    twin = Twin.build(mtu=1400)

    def send(ip: Packet, form: str = "complete") -> Verdict:
        return twin.send("a", frame("a", ip, form))

    for _ in range(2):
        send(udp(A_IP, REMOTE, 5000, 53))
        send(tcp(A_IP, C_IP, 41000, 22))
    hits = twin.hits
    bad = bytearray(frame("a", udp(A_IP, REMOTE, 5000, 53)))
    bad[L3 + 10] ^= 0x40
    assert twin.send("a", bytes(bad)) == []
    assert twin.on.router.drops["ip-bad-checksum"] == 1  # type: ignore[union-attr]
    ttl1 = twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53, ttl=1)))
    assert Ether(ttl1[0][1][10:])[ICMP].type == 11  # type: ignore[index]
    too_big = twin.send("a", frame("a", tcp(A_IP, C_IP, 41000, 22, size=1400)))
    assert Ether(too_big[0][1][10:])[ICMP].code == 4  # type: ignore[index]
    assert twin.send("a", frame("a", tcp(A_IP, C_IP, 41000, 22, size=3000), "tso"))  # 3 x 1000
    assert twin.send("a", frame("a", tcp(A_IP, C_IP, 41000, 22, size=3000), "tso"))
    oversize = twin.send("a", frame("a", tcp(A_IP, C_IP, 41000, 22, size=3000), "tso", mss=1400))
    assert Ether(oversize[0][1][10:])[ICMP].code == 4  # type: ignore[index]
    fragment = udp(A_IP, REMOTE, 5000, 53)
    fragment.flags = "MF"
    send(fragment)
    send(IP(src=A_IP, dst=REMOTE, options=b"\x01\x01\x01\x00") / UDP(sport=5000, dport=53) / b"options")
    truncated = bytearray(frame("a", udp(A_IP, REMOTE, 5000, 53)))
    del truncated[L3 + 20 + 6 :]
    twin.send("a", bytes(truncated))
    assert twin.hits == hits + 2  # only the TSO frames that fit


def test_stats_show_hits_and_misses() -> None:
    dp = world(True)
    for _ in range(3):
        dp.receive(PORTS["a"], frame("a", udp(A_IP, C_IP, 6000, 7000)), 1.0)
    events = dp.counters.snapshot()["events"]
    assert events["flow-cache-hits"] == 2  # type: ignore[index]
    assert events["flow-cache-misses"] == 1  # type: ignore[index]
    assert len(cache_of(dp)) == 1


# --- invalidation ---------------------------------------------------------------------------------------
def warm(twin: Twin, host: str, ip: Packet, port: str, rounds: int = 2) -> None:
    """Send ip from host until its entry is installed and hit."""
    for _ in range(rounds):
        one(twin.send(host, frame(host, ip)), port)


def test_route_change_takes_effect_at_once() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, REMOTE, 5000, 53), "up")
    twin.send("up", frame("up", udp(UP2_IP, NAT_IP, 1, 1), src_mac=OTHER_UPSTREAM))  # FDB learns it
    for dp in (twin.on, twin.off):
        assert isinstance(dp.router, Router)
        dp.router.routes.add(Route(IPv4Network("198.19.0.0/16"), IPv4Address(UP2_IP), 2))
        dp.router.arp.learn(int(IPv4Address(UP2_IP)), mac(OTHER_UPSTREAM), 2, twin.now)
    p = one(twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53))), "up")
    assert p.dst == OTHER_UPSTREAM


def test_stale_neighbour_is_probed_then_cached_again() -> None:
    """Both ends keep talking, so their FDB entries stay; their ARP entries go stale after 300 s and
    the next packet each way must take the slow path, which sends the unicast probe."""
    twin = Twin.build(ageing=1000.0)  # no FDB ageing pass (which would flush the cache) meanwhile
    for _ in range(2):
        one(twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)), dt=100.0), "c")
        one(twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000))), "a")
    hits = twin.hits
    out = twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)), dt=100.0)  # c learnt at 0, now 301
    assert isinstance(out, list) and len(out) == 2  # the packet, and a unicast who-has to c
    probe = Ether(out[1][1][10:])
    assert probe[ARP].op == 1 and probe.dst == HOST_C and probe[ARP].pdst == C_IP
    assert twin.hits == hits  # the stale neighbour made the entry a miss
    twin.send("c", arp("c", "reply"))  # c confirms itself: fresh again, and the same entry serves
    one(twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000))), "c")
    assert twin.hits == hits + 1


def test_neighbour_mac_change() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, C_IP, 6000, 7000), "c")
    twin.send("c", arp("c", "reply", hwsrc="02:00:00:00:02:99"))
    p = one(twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000))), "c")
    assert p.dst == "02:00:00:00:02:99"


def test_expired_flow_misses_before_the_timer_runs() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, REMOTE, 5000, 53), "up")
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)), dt=31.0, timers=False)
    assert twin.on.router.events["conntrack-new"] == 2  # type: ignore[union-attr]


def test_a_new_flow_ends_an_untracked_route() -> None:
    """From the uplink to an inside address, TCP that is not a SYN is routed untracked (and cached);
    a SYN for the same addresses and ports then starts an identity flow that must count every packet."""
    twin = Twin.build()
    for _ in range(3):
        one(twin.send("up", frame("up", tcp(UP_IP, C_IP, 2222, 3333, "A"))), "c")
    hits = twin.hits
    router = twin.on.router
    assert isinstance(router, Router) and router.nat is not None
    one(twin.send("up", frame("up", tcp(UP_IP, C_IP, 2222, 3333, "S"))), "c")
    one(twin.send("up", frame("up", tcp(UP_IP, C_IP, 2222, 3333, "A"))), "c")  # SYN_SENT: counted
    assert [row["packets"] for row in router.conntrack_table(twin.now)] == [[2, 0]]
    assert twin.hits == hits


def test_a_new_udp_flow_ends_an_untracked_route() -> None:
    """a to a network behind c is routed untracked. A packet from the uplink claiming to come from there
    starts an identity flow whose reply key is a's route: a's next packet is that flow's reply."""
    twin = Twin.build()
    for _ in range(2):
        one(twin.send("a", frame("a", udp(A_IP, FAR, 5000, 53))), "c")
    one(twin.send("up", frame("up", udp(FAR, A_IP, 53, 5000))), "a")
    one(twin.send("a", frame("a", udp(A_IP, FAR, 5000, 53))), "c")
    router = twin.on.router
    assert isinstance(router, Router)
    assert [(row["packets"], row["assured"]) for row in router.conntrack_table(twin.now)] == [([1, 1], True)]


def test_not_ipv4_with_a_cached_key() -> None:
    """The bytes of a cached key in a frame of another ethertype: never forwarded as IPv4."""
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, C_IP, 6000, 7000), "c")
    other = bytearray(frame("a", udp(A_IP, C_IP, 6000, 7000)))
    other[L3 - 2 : L3] = b"\x86\xdd"
    assert twin.send("a", bytes(other)) == []
    assert twin.on.router.drops["unsupported-ethertype"] == 1  # type: ignore[union-attr]


def test_conntrack_expiry_starts_a_new_flow() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, REMOTE, 5000, 53), "up")
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)), dt=31.0)  # the flow timed out: new flow
    assert twin.on.router.events["conntrack-new"] == 2  # type: ignore[union-attr]
    hits = twin.hits
    twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)), dt=29.0)
    assert twin.hits == hits + 1


def test_fin_and_rst_leave_the_fast_path() -> None:
    twin = Twin.build()
    handshake(twin, "a", "up", REMOTE, 40000, 80, NAT_IP, 80)
    one(twin.send("up", frame("up", tcp(REMOTE, NAT_IP, 80, 40000, "A"))), "a")
    one(twin.send("up", frame("up", tcp(REMOTE, NAT_IP, 80, 40000, "A"))), "a")
    hits = twin.hits
    assert len(cache_of(twin.on)) == 2
    twin.send("a", frame("a", tcp(A_IP, REMOTE, 40000, 80, "FA")))  # ESTABLISHED -> FIN_WAIT
    assert len(cache_of(twin.on)) == 0  # both directions forgotten
    for _ in range(3):
        twin.send("up", frame("up", tcp(REMOTE, NAT_IP, 80, 40000, "A")))  # the slow path: CLOSE_WAIT
    assert twin.hits == hits
    twin.send("a", frame("a", tcp(A_IP, REMOTE, 40000, 80, "R")))
    twin.send("a", frame("a", tcp(A_IP, REMOTE, 40000, 80, "A")))
    assert twin.hits == hits


def test_mac_move() -> None:
    twin = Twin.build()
    warm(twin, "c", udp(C_IP, A_IP, 7000, 6000), "a")
    # a's MAC shows up on port b (to the router: a port unreachable comes back, to b)
    twin.send("b", frame("b", udp(A_IP, "10.1.0.1", 1, 1), src_mac=HOST_A))
    hits = twin.hits
    one(twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000))), "b")
    one(twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000))), "b")
    assert twin.hits == hits + 1


def test_neighbour_evicted_from_a_full_arp_cache() -> None:
    """c's ARP entry is pushed out by a newcomer: the next packet to c must ask for c again."""
    twin = Twin.build(arp_cache_max=4)
    warm(twin, "a", udp(A_IP, C_IP, 6000, 7000), "c")
    for dp in (twin.on, twin.off):
        arp_cache = dp.router.arp  # type: ignore[union-attr]
        c_entry = arp_cache.entries.pop(int(IPv4Address(C_IP)))
        arp_cache.entries = {int(IPv4Address(C_IP)): c_entry, **arp_cache.entries}  # c is the oldest
        arp_cache.learn(int(IPv4Address(UP2_IP)), mac(OTHER_UPSTREAM), 2, twin.now)  # a fifth: c goes
    out = twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)))
    assert isinstance(out, list) and len(out) == 1 and Ether(out[0][1][10:])[ARP].pdst == C_IP


def test_removed_port_forgets_its_macs() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, C_IP, 6000, 7000), "c")
    for dp in (twin.on, twin.off):
        dp.segments[1].switch.remove_port(PORTS["c"])
    assert twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000))) == []  # no port left to flood to


def test_fdb_ageing() -> None:
    """The destination's FDB entry ages out while its ARP entry is fresh: the frame floods."""
    twin = Twin.build(ageing=60.0)
    warm(twin, "c", udp(C_IP, A_IP, 7000, 6000), "a")
    out = twin.send("c", frame("c", udp(C_IP, A_IP, 7000, 6000)), dt=61.0)
    assert isinstance(out, list) and sorted(port for port, _ in out) == [PORTS["a"], PORTS["b"]]


def test_cache_is_bounded() -> None:
    twin = Twin.build(max_entries=4)
    for sport in range(6000, 6004):
        for _ in range(2):
            twin.send("a", frame("a", udp(A_IP, C_IP, sport, 7000)))
    cache = cache_of(twin.on)
    assert len(cache.tables[0]) == 4 and twin.hits == 4
    events = twin.on.counters.events
    # More flows than it holds: their misses are not installed (each would evict one entry to save
    # nothing), except one in INSERT_WHEN_FULL, which evicts the oldest.
    for sport in range(7000, 7000 + INSERT_WHEN_FULL - 1):
        twin.send("a", frame("a", udp(A_IP, C_IP, sport, 7000)))
    assert events["flow-cache-full-skip"] == INSERT_WHEN_FULL - 1
    assert events["flow-cache-evicted"] == 0 and len(cache.tables[0]) == 4
    twin.send("a", frame("a", udp(A_IP, C_IP, 9999, 7000)))  # the one that gets in
    assert events["flow-cache-evicted"] == 1 and len(cache.tables[0]) == 4
    hits = twin.hits
    twin.send("a", frame("a", udp(A_IP, C_IP, 9999, 7000)))
    twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)))  # the oldest, evicted: a miss
    assert twin.hits == hits + 1
    for sport in range(6001, 6004):  # the other three are still there
        twin.send("a", frame("a", udp(A_IP, C_IP, sport, 7000)))
    assert twin.hits == hits + 4


def test_timers_keep_the_twins_equal() -> None:
    twin = Twin.build()
    warm(twin, "a", udp(A_IP, C_IP, 6000, 7000), "c")
    warm(twin, "a", udp(A_IP, REMOTE, 5000, 53), "up")
    for step in (100.0, 200.0, 400.0, 1000.0):  # ageing, ARP sweeps, conntrack expiry on the timer
        twin.advance(step)
        twin.check()
        twin.send("a", frame("a", udp(A_IP, C_IP, 6000, 7000)))
        twin.send("a", frame("a", udp(A_IP, REMOTE, 5000, 53)))


# --- the property: any packet sequence, the same result -------------------------------------------------
FLOWS = [
    # (client, server host, proto, client port, server port, address the client sends to,
    #  address the server answers to)
    ("a", "up", 6, 40000, 80, REMOTE, NAT_IP),  # masquerade
    ("a", "up", 17, 5000, 53, REMOTE, NAT_IP),
    ("a", "c", 17, 6000, 7000, C_IP, A_IP),  # routed inside, untracked
    ("a", "c", 6, 41000, 22, C_IP, A_IP),
    ("up", "c", 6, 33333, 8080, NAT_IP, UP_IP),  # port forward to c:80
    ("b", "c", 6, 42000, 8080, NAT_IP, NAT_IP),  # hairpin
    ("up", "c", 17, 1234, 4321, C_IP, REMOTE),  # identity flow from the uplink
    ("up", "c", 6, 2222, 3333, C_IP, UP_IP),  # the same in TCP: untracked until its SYN
]
# (client, server, address the client pings, address the server answers to): masqueraded, routed
# inside (tracked, not translated), and an identity flow from the uplink.
ECHO_FLOWS = [("a", "up", REMOTE, NAT_IP), ("a", "c", C_IP, A_IP), ("up", "c", C_IP, REMOTE)]
TCP_FLOWS = [0, 3, 4, 5, 7]
OPENED = [0, 3, 4, 5]  # handshaken before each example
ROUTED_UDP = 2  # a -> c, routed inside and untracked
FLAGS = ["A", "A", "PA", "S", "SA", "FA", "R", "", "U"]


@st.composite
def steps(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(
        st.sampled_from(["packet"] * 6 + ["burst"] * 3 + ["echo"] * 2 + ["handshake", "time", "arp", "move"])
    )
    if kind == "echo":
        return (
            kind,
            draw(st.integers(0, len(ECHO_FLOWS) - 1)),
            draw(st.booleans()),  # the reply
            draw(st.sampled_from([7, 7, 7, 0x7673])),  # identifier
            draw(st.sampled_from(["complete", "complete", "partial"])),
            draw(st.sampled_from([64, 64, 64, 1])),
            draw(st.sampled_from([None] * (22 * 8) + list(range(22 * 8)))),  # half the frames intact
        )
    if kind == "packet":
        flow = draw(st.integers(0, len(FLOWS) - 1))
        return (
            kind,
            flow,
            draw(st.booleans()),  # reply direction
            draw(st.sampled_from(FLAGS)),
            draw(st.sampled_from([64, 64, 64, 2, 1])),
            draw(st.sampled_from(["complete", "partial", "zero", "tso"])),
            draw(st.sampled_from([0, 0, 0, 0, 600, 1600])),  # payload size
            # a bit to flip, from the ethertype to the end of the IPv4 header
            draw(st.sampled_from([None] * (22 * 8) + list(range(22 * 8)))),  # half the frames intact
        )
    if kind == "burst":  # plain packets of one flow, both ways: what the cache is for
        flow = draw(st.integers(0, len(FLOWS) - 1))
        return (kind, flow, draw(st.integers(1, 4)), draw(st.sampled_from(["complete", "partial", "zero"])))
    if kind == "handshake":
        return (kind, draw(st.sampled_from(TCP_FLOWS)))
    if kind == "time":
        return (kind, draw(st.sampled_from([0.5, 29.0, 31.0, 121.0, 299.0, 305.0])))
    if kind == "arp":
        return (kind, draw(st.sampled_from(list(HOSTS))), draw(st.booleans()))
    return (kind, draw(st.sampled_from(["a", "c"])))


def play(twin: Twin, step: tuple[Any, ...]) -> None:
    kind = step[0]
    if kind == "packet":
        _, index, reply, flags, ttl, form, size, flip = step
        client, server, proto, cport, sport, to, reply_to = FLOWS[index]
        client_ip = HOSTS[client][1] if client != "up" else (REMOTE if index == 6 else UP_IP)
        server_ip = HOSTS[server][1] if server != "up" else REMOTE
        host = server if reply else client
        src, dst, s, d = (server_ip, reply_to, sport, cport) if reply else (client_ip, to, cport, sport)
        if server == "c" and to == NAT_IP:
            s = 80 if reply else s  # the forward's target answers from port 80
        if proto == 6:
            ip = tcp(src, dst, s, d, flags, ttl, size)
        else:
            ip = udp(src, dst, s, d, ttl, size)
            form = "partial" if form == "tso" else form
        if form == "zero" and proto == 6:
            form = "complete"
        pkt = bytearray(frame(host, ip, form))
        if flip is not None:
            pkt[L3 - 2 + flip // 8] ^= 1 << (flip % 8)
        twin.send(host, bytes(pkt))
    elif kind == "echo":
        _, index, reply, ident, form, ttl, flip = step
        client, server, to, reply_to = ECHO_FLOWS[index]
        client_ip = REMOTE if client == "up" else HOSTS[client][1]
        server_ip = REMOTE if server == "up" else HOSTS[server][1]
        src, dst, host = (server_ip, reply_to, server) if reply else (client_ip, to, client)
        pkt = bytearray(echo_frame(host, echo(src, dst, ident, reply, ttl), form))
        if flip is not None:
            pkt[L3 - 2 + flip // 8] ^= 1 << (flip % 8)
        twin.send(host, bytes(pkt))
    elif kind == "burst":
        _, index, rounds, form = step
        for _ in range(rounds):
            for reply in (False, True):
                play(twin, ("packet", index, reply, "A", 64, form, 0, None))
    elif kind == "handshake":
        client, server, _, cport, sport, to, reply_to = FLOWS[step[1]]
        handshake(twin, client, server, to, cport, sport, reply_to, 80 if to == NAT_IP else sport)
    elif kind == "time":
        twin.advance(step[1])
        twin.check()
    elif kind == "arp":
        _, host, changed = step
        twin.send(host, arp(host, "reply", hwsrc="02:00:00:00:77:77" if changed else None))
    else:
        host = step[1]
        other = "b" if host == "a" else "c"
        twin.send(other, frame(other, udp(HOSTS[host][1], "10.9.9.9", 1, 1), src_mac=HOSTS[host][0]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps(), min_size=1, max_size=40))
def test_any_sequence_matches_the_slow_path(sequence: list[tuple[Any, ...]]) -> None:
    """With one writer of bytes (action.apply), what is left to differ is the cache's own: its keys,
    its checks and its invalidation. Each sequence ends with the neighbours answering again and a
    burst of a routed flow both ways, and the cached side must have hit: a cache that never hit would
    pass the comparison vacuously."""
    twin = Twin.build()
    for index in OPENED:
        play(twin, ("handshake", index))
    for step in sequence:
        play(twin, step)
    hits = twin.hits
    for host in HOSTS:
        play(twin, ("arp", host, False))
    play(twin, ("burst", ROUTED_UDP, 4, "complete"))  # needs no conntrack state the steps may have ended
    assert twin.hits > hits


def test_a_long_mixed_sequence_hits_often() -> None:
    """The property test's steps in a fixed, busy order: the cache must actually be used."""
    twin = Twin.build()
    for index in OPENED:
        play(twin, ("handshake", index))
    for round_ in range(6):
        for index in range(len(FLOWS)):
            for reply in (False, True):
                form = ["complete", "partial", "zero", "tso"][round_ % 4]
                play(twin, ("packet", index, reply, "A", 64, form, 0, None))
    assert twin.hits > 50, twin.hits
