"""The router's IPv6 stages: Neighbor Discovery, router advertisements, forwarding, ICMPv6 errors.

The router (router.py) hands every IPv6 frame of a segment with IPv6 here; the stages mirror its IPv4
ones, and share what is not about the family: the drop ledger (``Router._count``), the events, the
tracer, the MTUs, and the action a forwarded packet leaves by (action.rewrite6, written by
action.apply on the slow path and by the flow cache alike).

- Parse once (ipv6.parse): RFC 8200's checks and the extension header chain.
- Neighbor Discovery (RFC 4861): answer solicitations for our addresses (the link-local one, from our
  MAC, and the segment's ``::1``), resolve next hops with the neighbour cache ARP uses (arp.ArpCache:
  the same bounds, queue and staleness), refuse what 6.1 and 7.1 call invalid (hop limit not 255 above
  all: such a message crossed a router), and never let an advertisement claim our addresses.
- Router advertisements (RFC 4861 6.2): periodic, at a random interval between MinRtrAdvInterval and
  MaxRtrAdvInterval (the first three within 16 s), and in answer to a solicitation (unicast to a
  solicitor that gave its link-layer address, as RFC 7772 recommends; else multicast, no sooner than
  MIN_DELAY_BETWEEN_RAS after the last), with the segment's /64 for SLAAC and its MTU. A segment whose
  interface does not advertise (the host port's) never gets one.
- Forwarding (RFC 8200, RFC 4443): LPM route, hop limit, scope, MTU (routers never fragment: too big
  is an error back), next hop; the errors the router makes are rate-limited by a token bucket (RFC
  4443 2.4(f)) and never sent about an error, a multicast or a packet without a unique source (2.4(e)).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import TYPE_CHECKING, Final, Protocol

from .action import apply, rewrite6, rewrite6_nat
from .arp import ND_WORDS, QUEUED_SEND_REQUEST, REJECTED, REJECTED_COUNTED, ArpCache
from .conntrack import describe
from .counters import Drop, Event
from .icmp import TokenBucket
from .icmp6 import (
    ADDRESS_UNREACH,
    ALL_NODES,
    ALL_ROUTERS,
    BEYOND_SCOPE,
    DEST_UNREACH,
    ECHO_REQUEST,
    NA_OVERRIDE,
    NA_ROUTER,
    NA_SOLICITED,
    ND_HOP_LIMIT,
    ND_MIN_LEN,
    ND_TYPES,
    NEIGHBOR_ADVERT,
    NEIGHBOR_SOLICIT,
    NO_ROUTE,
    OPT_SOURCE_LL,
    OPT_TARGET_LL,
    PACKET_TOO_BIG,
    PARAM_PROBLEM,
    PORT_UNREACH,
    REDIRECT,
    ROUTER_ADVERT,
    ROUTER_SOLICIT,
    TIME_EXCEEDED,
    UNRECOGNIZED_NEXT_HEADER,
    UNSPECIFIED,
    Prefix,
    build_advert,
    build_advertisement,
    build_echo_reply,
    build_error,
    build_solicit,
    is_link_local,
    link_layer,
    link_local_of,
    multicast_mac,
    options,
    solicited_node,
    verify,
)
from .ipv4 import NatChange
from .ipv6 import Packet6, Problem, parse, upper_layer
from .nat6 import Nat66
from .npt import Npt
from .routed import NOTHING, Forwarded, Interface, Routed, Transmit, wire_size
from .routes import NextHop, Route, RouteTable
from .services import DnsService
from .udp import datagram
from .wire import (
    ETH_DST,
    ETH_SRC,
    GSO_NONE,
    IP6_DST,
    IP6_HOP_LIMIT,
    L3,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    ZERO_MAC,
    mac_str,
)

if TYPE_CHECKING:
    from .journal import Journal
    from .trace import Tracer


class Host(Protocol):
    """What the IPv6 stages use of the router they belong to (router.Router)."""

    events: Counter[str]
    tracer: Tracer | None
    journal: Journal | None
    interfaces: dict[int, Interface]
    _mac: dict[int, bytes]
    _mtu: dict[int, int]

    def _count(self, ledger: Counter[str], reason: Drop, n: int = 1) -> None: ...

    dns: DnsService | None

    def dns_query(
        self,
        iface: int,
        v6: bool,
        src: bytes,
        dst: bytes,
        sport: int,
        payload: bytes,
        now: float,
        ledger: Counter[str],
    ) -> list[Transmit]: ...


# RFC 4861 section 10, the router's constants
MAX_INITIAL_RTR_ADVERT_INTERVAL: Final = 16.0
MAX_INITIAL_RTR_ADVERTISEMENTS: Final = 3
MIN_DELAY_BETWEEN_RAS: Final = 3.0
MAX_RA_DELAY_TIME: Final = 0.5
ANSWERS_MAX: Final = 64  # unicast answers waiting for their random delay; beyond, one multicast answer
MAX_LIFETIME: Final = 9000  # AdvDefaultLifetime's ceiling (6.2.1)
_NO_IFACE: Final = -1
DNS_PORT: Final = 53


@dataclass(frozen=True)
class RaConfig:
    """The advertising interface's variables (RFC 4861 6.2.1). A lab may shorten the intervals below
    the RFC's floors (MaxRtrAdvInterval 4 s, MIN_DELAY_BETWEEN_RAS 3 s), as RFC 6275 7.5 allows for
    mobile hosts; the defaults are the RFC's."""

    max_interval: float = 600.0
    min_delay: float = MIN_DELAY_BETWEEN_RAS
    reply_delay: float = MAX_RA_DELAY_TIME  # an answer to a solicitation waits 0 to this (6.2.6)
    valid_lifetime: int = 2592000  # AdvValidLifetime: 30 days
    preferred_lifetime: int = 604800  # AdvPreferredLifetime: 7 days
    hop_limit: int = 64  # AdvCurHopLimit

    def __post_init__(self) -> None:
        if not 0 < self.max_interval <= 1800 or self.min_delay < 0 or self.reply_delay < 0:
            raise ValueError("the advertisement interval must be more than 0 and at most 1800 seconds")

    @property
    def min_interval(self) -> float:
        """MinRtrAdvInterval's default: 0.33 x Max, or 0.75 x Max below 9 s (6.2.1)."""
        return self.max_interval * (0.33 if self.max_interval >= 9 else 0.75)

    @property
    def dns_lifetime(self) -> int:
        """RDNSS and DNSSL lifetimes: 3 x MaxRtrAdvInterval (RFC 8106 5.1's default)."""
        return int(max(3 * self.max_interval, 1))

    @property
    def router_lifetime(self) -> int:
        """AdvDefaultLifetime: 3 x Max (6.2.1), at least 30 minutes so a lab's short interval does not
        make the default route fragile, at most 9000 s."""
        return int(min(MAX_LIFETIME, max(1800, 3 * self.max_interval)))


class Ipv6Router:
    """The IPv6 half of a router: its interfaces that have an IPv6 prefix, its table, its caches."""

    def __init__(
        self,
        router: Host,
        interfaces: Iterable[Interface],
        routes: Iterable[Route] = (),
        ra: RaConfig | None = None,
        *,
        like: ArpCache | None = None,
        icmp_rate: float = 100.0,
        icmp_burst: int = 10,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """like: the ARP cache whose bounds the neighbour cache takes; uniform: where the advertisement
        intervals' randomness comes from (a test fixes it)."""
        self.router = router
        self.ra = ra or RaConfig()
        self.uniform = uniform
        self.link_local: dict[int, bytes] = {}
        self.address: dict[int, bytes] = {}  # the segment's ::1
        self.anycast: dict[int, bytes] = {}  # the segment's prefix:: (every router on it answers)
        self.prefixes: dict[int, Prefix] = {}
        self.on_link: dict[int, tuple[int, int]] = {}  # iface -> (network, mask) of its /64
        self.local: dict[bytes, int] = {}  # every address of ours -> its iface
        self.groups: dict[int, frozenset[bytes]] = {}  # the multicast groups we listen to, per iface
        self.advertising: set[int] = set()
        self.routes = RouteTable(128)
        for iface in interfaces:
            self._add_interface(iface)
        for route in routes:
            self.routes.add(route)
        like = like or ArpCache()
        self.nd = ArpCache(
            like.timeout,
            like.retries,
            like.retry_interval,
            like.queue_max,
            like.cache_max,
            like.pending_max,
            like.negative_timeout,
            events=router.events,
            count_drop=router._count,
            words=ND_WORDS,
        )
        self.bucket = TokenBucket(icmp_rate, icmp_burst)
        self.reply_bucket = TokenBucket(10.0, 10)  # unicast answers to solicitations
        # Advertising state per interface: when the next is due (0: at once), how many of the initial
        # ones are left, when the last multicast one went.
        self.next_ra: dict[int, float] = dict.fromkeys(self.advertising, 0.0)
        self.initial_left: dict[int, int] = dict.fromkeys(self.advertising, MAX_INITIAL_RTR_ADVERTISEMENTS)
        self.last_ra: dict[int, float] = dict.fromkeys(self.advertising, float("-inf"))
        self.answers: list[tuple[float, int, bytes, bytes]] = []  # (due, iface, solicitor, its MAC)
        self.npt: Npt | None = None  # NPTv6 on the uplink (npt.py), with the uplink's interface
        self.nat: Nat66 | None = None  # NAT66 on the uplink (nat6.py), the other choice
        self.npt_uplink = -1

    def _add_interface(self, iface: Interface) -> None:
        assert iface.address6 is not None
        index = iface.index
        network = iface.address6.network
        self.link_local[index] = link_local_of(iface.mac)
        self.address[index] = iface.address6.ip.packed
        self.prefixes[index] = Prefix(network.network_address.packed, network.prefixlen, 0, 0)
        self.on_link[index] = (int(network.network_address), int(network.netmask))
        self.anycast[index] = network.network_address.packed  # subnet-router anycast (RFC 4291 2.6.1)
        for address in (self.link_local[index], self.address[index], self.anycast[index]):
            self.local[address] = index
        self.groups[index] = frozenset(
            {ALL_NODES, ALL_ROUTERS, *(solicited_node(address) for address in self.local_of(index))}
        )
        self.routes.add_connected(network, index)
        if iface.advertise:
            self.advertising.add(index)

    def local_of(self, iface: int) -> tuple[bytes, bytes, bytes]:
        """Our addresses on iface: link-local, ::1, subnet-router anycast."""
        return self.link_local[iface], self.address[iface], self.anycast[iface]

    def _keep(self) -> None:
        """A trace is running: hand the journal what a frame may change here (journal.py)."""
        journal = self.router.journal
        if journal is not None:
            journal.keep(
                self.bucket, self.reply_bucket, self.next_ra, self.initial_left, self.last_ra, self.answers
            )

    # --- entry --------------------------------------------------------------------------------------
    def receive(
        self, iface: int, pkt: bytes, link_multicast: bool, ledger: Counter[str], now: float
    ) -> Routed:
        """An IPv6 frame on segment iface, to our MAC or a group address (link_multicast)."""
        router = self.router
        if iface not in self.link_local:  # no IPv6 on this segment
            if link_multicast:
                router.events[Event.IPV6_MULTICAST_IGNORED] += 1
            else:
                router._count(ledger, Drop.UNSUPPORTED_ETHERTYPE)
            return NOTHING
        self._keep()
        p = parse(iface, pkt, ledger)
        if not isinstance(p, Packet6):
            if isinstance(p, Problem):
                router._count(ledger, p.reason)
                return Routed(self._problem(iface, pkt, p, now, ledger))
            router._count(ledger, p)
            return NOTHING
        dst = p.dst
        nd = p.proto == PROTO_ICMPV6 and 0 <= p.l4 < p.end and p.pkt[p.l4] in ND_TYPES
        if dst[0] == 0xFF:
            if nd and dst in self.groups[iface]:
                return Routed(self._nd(p, link_multicast, now))
            if link_multicast:
                router.events[Event.IPV6_MULTICAST_IGNORED] += 1  # MLD, mDNS, others' solicitations
            else:
                router._count(ledger, Drop.IPV6_MULTICAST)
            return NOTHING
        if link_multicast:  # a unicast address in a group frame: not for the router to take
            router.events[Event.IPV6_MULTICAST_IGNORED] += 1
            return NOTHING
        if nd and dst in self.local:
            return Routed(self._nd(p, False, now))
        if self.nat is not None and not (p.pkt[IP6_HOP_LIMIT] <= 1 and dst not in self.local):
            # Pre-routing NAT66, after the hop limit is known to do (a dying probe leaves no flow)
            refused = self._nat66(p, now)
            if refused is not None:
                return refused
            dst = p.dst
        if dst in self.local:
            return Routed(self._deliver(p, now))
        if is_link_local(dst):
            router._count(ledger, Drop.IPV6_LINK_LOCAL_DESTINATION)  # RFC 4291 2.5.6: never forwarded
            return NOTHING
        return self._forward(p, now)

    def _nat66(self, p: Packet6, now: float) -> Routed | None:
        """NAT66 (nat6.py): None to go on (translated, p.nat, or not); else what became of p."""
        assert self.nat is not None
        verdict = self.nat.process(p, self._route_bytes, now)
        if isinstance(verdict, NatChange):
            p.nat = verdict
        elif isinstance(verdict, bytearray):
            p.pkt = bytes(verdict)  # an ICMPv6 error, translated outer and quoted: routed as it is
        elif verdict is not None:
            self.router._count(p.ledger, verdict)
            return NOTHING
        tracer = self.router.tracer
        if tracer is not None:
            made, flow = p.made_flow, p.flow
            words = (
                f"new {describe(made)}" if made else f"existing {describe(flow)}" if flow else "not NAT-ed"
            )
            tracer.note("conntrack", words)
        return None

    def _route_bytes(self, dst: bytes) -> NextHop | None:
        return self.routes.lookup(int.from_bytes(dst, "big"))

    def next_deadline(self) -> float | None:
        best = self.nd.next_deadline()
        for due in self.next_ra.values():
            if best is None or due < best:
                best = due
        for due, *_ in self.answers:
            if best is None or due < best:
                best = due
        return best

    def on_timer(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for iface, due in self.next_ra.items():
            if now >= due:
                out.append(self._multicast_ra(iface, now))
        if self.answers:
            due_now = [answer for answer in self.answers if answer[0] <= now]
            self.answers = [answer for answer in self.answers if answer[0] > now]
            out.extend(self._advertisement(iface, dst, mac) for _, iface, dst, mac in due_now)
        requests, failed = self.nd.on_timer(now)
        for iface, ip in requests:
            out.append(self._solicitation(iface, ip.to_bytes(16, "big"), None))
        for _frame, in_iface, original, ledger in failed:
            # RFC 4443 3.1 code 3: the next hop did not answer; tell the source, quoting the packet.
            self.router._count(ledger, Drop.ND_FAILED)
            if in_iface != _NO_IFACE:  # original: its first 1280 bytes, checked when it came
                p = self._checked(in_iface, original, ledger)
                out.extend(self._error(p, DEST_UNREACH, ADDRESS_UNREACH, 0, now))
        return out

    # --- Neighbor Discovery (RFC 4861) --------------------------------------------------------------
    def _nd(self, p: Packet6, link_multicast: bool, now: float) -> list[Transmit]:
        """A router or neighbour solicitation or advertisement, or a redirect, for us."""
        router, pkt, l4, end = self.router, p.pkt, p.l4, p.end
        kind = pkt[l4]
        if kind == ROUTER_ADVERT:  # another router on a segment we route: a rogue (RFC 6105)
            router._count(p.ledger, Drop.RA_GUARD)
            return []
        if kind == REDIRECT:
            router._count(p.ledger, Drop.ND_REDIRECT)
            return []
        if pkt[IP6_HOP_LIMIT] != ND_HOP_LIMIT:  # 6.1.1, 7.1.1: it came through a router
            router._count(p.ledger, Drop.ND_BAD_HOP_LIMIT)
            return []
        if end - l4 < ND_MIN_LEN[kind] or pkt[l4 + 1] != 0:
            router._count(p.ledger, Drop.ND_MALFORMED)
            return []
        if not pkt[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) and not verify(p.src, p.dst, pkt[l4:end]):
            router._count(p.ledger, Drop.L4_BAD_CHECKSUM)
            return []
        found = options(memoryview(pkt)[l4:end], 8 if kind == ROUTER_SOLICIT else 24)
        if found is None:
            router._count(p.ledger, Drop.ND_MALFORMED)
            return []
        if kind == ROUTER_SOLICIT:
            return self._router_solicit(p, found, now)
        if kind == NEIGHBOR_SOLICIT:
            return self._neighbour_solicit(p, found, now)
        assert kind == NEIGHBOR_ADVERT
        return self._neighbour_advert(p, found, link_multicast, now)

    def _neighbour_solicit(self, p: Packet6, found: dict[int, bytes], now: float) -> list[Transmit]:
        router, pkt, iface = self.router, p.pkt, p.iface
        target = pkt[p.l4 + 8 : p.l4 + 24]
        sender_mac = link_layer(found.get(OPT_SOURCE_LL))
        dad = p.src == UNSPECIFIED
        # 7.1.1: a multicast target never; a probe from no address goes to the solicited-node group
        # and carries no link-layer address.
        if target[0] == 0xFF or (dad and (p.dst != solicited_node(target) or OPT_SOURCE_LL in found)):
            router._count(p.ledger, Drop.ND_MALFORMED)
            return []
        if target not in self.local_of(iface):
            router.events[Event.NOT_FOR_ROUTER] += 1  # someone else's address
            return []
        mac = router._mac[iface]
        if dad:  # 7.2.4: someone probes for our address; defend it to all nodes, not solicited
            router.events[Event.ND_DAD_DEFENDED] += 1
            advert = build_advert(target, ALL_NODES, target, mac, NA_ROUTER | NA_OVERRIDE)
            advert[ETH_DST], advert[ETH_SRC] = multicast_mac(ALL_NODES), mac
            return [(iface, bytes(advert))]
        out: list[Transmit] = []
        if sender_mac is not None and self._is_on_link(iface, p.src):
            out += self._release(
                self.nd.learn(int.from_bytes(p.src, "big"), sender_mac, iface, now), iface, sender_mac
            )
        # 7.2.4 and 7.2.7: override, except for an anycast target (another router may answer for it).
        flags = NA_ROUTER | NA_SOLICITED | (0 if target == self.anycast[iface] else NA_OVERRIDE)
        advert = build_advert(target, p.src, target, mac, flags)
        advert[ETH_DST], advert[ETH_SRC] = sender_mac or pkt[ETH_SRC], mac
        router.events[Event.ND_ADVERTISED] += 1
        if router.tracer is not None:
            router.tracer.note("NDP", f"answered a solicitation for {IPv6Address(target)}")
        return [(iface, bytes(advert)), *out]

    def _neighbour_advert(
        self, p: Packet6, found: dict[int, bytes], link_multicast: bool, now: float
    ) -> list[Transmit]:
        router, pkt, iface = self.router, p.pkt, p.iface
        flags, target = pkt[p.l4 + 4], pkt[p.l4 + 8 : p.l4 + 24]
        if target[0] == 0xFF or (p.dst[0] == 0xFF and flags & NA_SOLICITED):  # 7.1.2
            router._count(p.ledger, Drop.ND_MALFORMED)
            return []
        if target in self.local:
            router._count(p.ledger, Drop.ND_CLAIMS_ROUTER_ADDRESS)
            return []
        key = int.from_bytes(target, "big")
        mac = link_layer(found.get(OPT_TARGET_LL))
        if mac is None and not link_multicast:
            mac = pkt[ETH_SRC]  # 7.2.5: an answer to a unicast solicitation may leave it out
        known = self.nd.entries.get(key)
        # 7.2.5: only a resolution under way or an entry we have is updated; without the override flag
        # a different link-layer address does not replace the one we have.
        if mac is None or not self.nd.known(key) or not self._is_on_link(iface, target):
            return []
        if known is not None and known.mac != mac and not flags & NA_OVERRIDE:
            return []
        if known is not None and known.mac == mac and not flags & NA_SOLICITED:
            return []  # 7.2.5: unsolicited, it confirms nothing: the entry stays as fresh as it was
        return self._release(self.nd.learn(key, mac, iface, now), iface, mac)

    def _router_solicit(self, p: Packet6, found: dict[int, bytes], now: float) -> list[Transmit]:
        router, iface = self.router, p.iface
        sender_mac = link_layer(found.get(OPT_SOURCE_LL))
        if p.src == UNSPECIFIED and OPT_SOURCE_LL in found:  # 6.1.1
            router._count(p.ledger, Drop.ND_MALFORMED)
            return []
        if iface not in self.advertising:
            router.events[Event.NOT_FOR_ROUTER] += 1
            return []
        router.events[Event.RA_SOLICITED] += 1
        out: list[Transmit] = []
        if sender_mac is not None and self._is_on_link(iface, p.src):
            # 6.2.6: the solicitor's link-layer address goes into the cache; our answer goes straight
            # to it (RFC 7772 4), unless answers come faster than a host's solicitations ever do.
            key = int.from_bytes(p.src, "big")
            out += self._release(self.nd.learn(key, sender_mac, iface, now), iface, sender_mac)
            # Every answer waits a random 0 to MAX_RA_DELAY_TIME (6.2.6), so hosts that came up together
            # do not get theirs in one burst.
            if len(self.answers) < ANSWERS_MAX and self.reply_bucket.take(now):
                due = now + self.uniform(0.0, self.ra.reply_delay)
                if router.tracer is not None:
                    router.tracer.note(
                        "NDP", f"a router solicitation from {IPv6Address(p.src)}: answer in {due - now:.3f} s"
                    )
                if due <= now:
                    return [self._advertisement(iface, p.src, sender_mac), *out]
                self.answers.append((due, iface, p.src, sender_mac))
                return out
        # A multicast answer, no sooner than MIN_DELAY_BETWEEN_RAS after the last one (6.2.6).
        due = max(now + self.uniform(0.0, self.ra.reply_delay), self.last_ra[iface] + self.ra.min_delay)
        if due <= now:
            out.append(self._multicast_ra(iface, now))
        else:
            self.next_ra[iface] = min(self.next_ra[iface], due)
        return out

    def _multicast_ra(self, iface: int, now: float) -> Transmit:
        """An unsolicited advertisement to all nodes, and when the next one is due (6.2.4)."""
        interval = self.uniform(self.ra.min_interval, self.ra.max_interval)
        if self.initial_left[iface] > 0:
            self.initial_left[iface] -= 1
            interval = min(interval, MAX_INITIAL_RTR_ADVERT_INTERVAL)
        self.next_ra[iface] = now + interval
        self.last_ra[iface] = now
        return self._advertisement(iface, ALL_NODES, multicast_mac(ALL_NODES))

    def _advertisement(self, iface: int, dst: bytes, dst_mac: bytes) -> Transmit:
        router = self.router
        mac = router._mac[iface]
        prefix = self.prefixes[iface]._replace(
            valid=self.ra.valid_lifetime, preferred=self.ra.preferred_lifetime
        )
        dns = router.dns
        ra = build_advertisement(
            self.link_local[iface],
            dst,
            mac,
            self.ra.router_lifetime,
            router._mtu[iface],
            [prefix],
            self.ra.hop_limit,
            # RFC 8106 5.1: the router's own address as the resolver, the instance's domain to search
            dns=None if dns is None else (self.address[iface], dns.domain, self.ra.dns_lifetime),
        )
        ra[ETH_DST], ra[ETH_SRC] = dst_mac, mac
        router.events[Event.RA_SENT] += 1
        return (iface, bytes(ra))

    def _release(
        self, waiting: list[tuple[bytearray, int, bytes, Counter[str]]], iface: int, mac: bytes
    ) -> list[Transmit]:
        """The frames that waited for a neighbour, now with its MAC."""
        return [
            (iface, bytes(frame[: ETH_DST.start]) + mac + bytes(frame[ETH_DST.stop :]))
            for frame, *_ in waiting
        ]

    def _is_on_link(self, iface: int, address: bytes) -> bool:
        if is_link_local(address):
            return True
        network, mask = self.on_link[iface]
        return int.from_bytes(address, "big") & mask == network

    def _solicitation(self, iface: int, target: bytes, neighbour_mac: bytes | None) -> Transmit:
        """To resolve target (to its solicited-node group), or to confirm a stale entry (unicast)."""
        mac = self.router._mac[iface]
        dst = solicited_node(target) if neighbour_mac is None else target
        ns = build_solicit(self.link_local[iface], dst, target, mac)
        ns[ETH_DST], ns[ETH_SRC] = neighbour_mac or multicast_mac(dst), mac
        return (iface, bytes(ns))

    # --- local delivery -----------------------------------------------------------------------------
    def _deliver(self, p: Packet6, now: float) -> list[Transmit]:
        """Packets for the router itself: echo is answered (RFC 4443 4.2), the rest refused."""
        router, pkt, l4, end = self.router, p.pkt, p.l4, p.end
        if l4 < 0:
            router._count(p.ledger, Drop.TO_ROUTER)  # a later fragment: no reassembly here
            return []
        if p.proto == PROTO_ICMPV6:
            if l4 + 8 > end:
                router._count(p.ledger, Drop.L4_TRUNCATED)
                return []
            if pkt[l4] != ECHO_REQUEST:
                router._count(p.ledger, Drop.TO_ROUTER)
                return []
            if not pkt[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID) and not verify(p.src, p.dst, pkt[l4:end]):
                router._count(p.ledger, Drop.L4_BAD_CHECKSUM)
                return []
            router.events[Event.ICMPV6_ECHO_REPLIED] += 1
            anycast = p.dst in self.local and p.dst == self.anycast[self.local[p.dst]]
            src = self.address[p.iface] if anycast else p.dst  # 4.2: never from an anycast address
            return self._originate(build_echo_reply(src, p.src, pkt[l4:end]), p.iface, now, p.ledger)
        dns = router.dns
        if p.proto == PROTO_UDP and dns is not None and not router.interfaces[p.iface].uplink:
            udp = datagram(pkt, l4, end, p.src + p.dst, True)
            if udp is None:
                router._count(p.ledger, Drop.L4_BAD_CHECKSUM)
                return []
            if udp.dport == DNS_PORT and p.dst != self.anycast[self.local[p.dst]]:
                return router.dns_query(p.iface, True, p.src, p.dst, udp.sport, udp.payload, now, p.ledger)
        router._count(p.ledger, Drop.TO_ROUTER)
        if p.proto == PROTO_TCP:
            return []  # silently: we run no TCP service
        if p.proto == PROTO_UDP:
            return self._error(p, DEST_UNREACH, PORT_UNREACH, 0, now)
        return self._error(p, PARAM_PROBLEM, UNRECOGNIZED_NEXT_HEADER, p.proto_at, now)

    # --- forwarding ---------------------------------------------------------------------------------
    def _forward(self, p: Packet6, now: float) -> Routed:
        router, pkt = self.router, p.pkt
        tracer = router.tracer
        npt = self.npt
        inward = None
        if npt is not None and p.iface == self.npt_uplink and npt.is_outside(p.dst):
            inward = npt.inward(p.dst)  # NPTv6 inbound, before routing (RFC 6296 3.1)
            if inward is None:
                router._count(p.ledger, Drop.NPT_UNMAPPABLE)
                return NOTHING
            if inward in self.local:  # one of ours, as the outside sees it: delivered, answered as that
                return Routed(self._deliver(p, now))
        dst = inward or p.dst
        hop = self.routes.lookup(int.from_bytes(dst, "big"))
        if hop is None:
            if tracer is not None:
                tracer.note("route", f"{IPv6Address(dst)}: no route")
            return Routed(self._refuse(p, Drop.NO_ROUTE, DEST_UNREACH, NO_ROUTE, 0, now))
        out_iface, gateway = hop
        if tracer is not None:
            via = "directly connected" if gateway is None else f"via {IPv6Address(gateway)}"
            tracer.note("route", f"{IPv6Address(dst)} -> {router.interfaces[out_iface].name}, {via}")
        if pkt[IP6_HOP_LIMIT] <= 1:  # RFC 8200 3, RFC 4443 3.3
            return Routed(self._refuse(p, Drop.HOP_LIMIT_EXCEEDED, TIME_EXCEEDED, 0, 0, now))
        if is_link_local(p.src):  # RFC 4443 3.1 code 2: it would leave its source's scope
            return Routed(self._refuse(p, Drop.IPV6_BEYOND_SCOPE, DEST_UNREACH, BEYOND_SCOPE, 0, now))
        mtu = router._mtu[out_iface]
        size = p.end - L3 if pkt[1] == GSO_NONE or p.l4 < 0 else wire_size(pkt, p.l4, p.end)
        if size > mtu:  # RFC 8200 5: a router never fragments; RFC 8201 path MTU discovery
            return Routed(self._refuse(p, Drop.PACKET_TOO_BIG, PACKET_TOO_BIG, 0, mtu, now))
        addresses = None
        if p.nat is not None:
            return self._forward_nat(p, out_iface, dst if gateway is None else gateway, now)
        if npt is not None:
            translated = self._npt(p, out_iface, inward)
            if isinstance(translated, Drop):
                router._count(p.ledger, translated)
                return NOTHING
            if translated is not None:
                pkt, addresses = translated
        next_hop = int.from_bytes(dst, "big") if gateway is None else gateway
        nd = self.nd
        neighbour = nd.entries.get(next_hop)
        if neighbour is not None and now - neighbour.updated < nd.timeout:
            if tracer is not None:
                name = router.interfaces[out_iface].name
                tracer.note("NDP", f"next hop on {name} is {mac_str(neighbour.mac)} (cached)")
            action = rewrite6(neighbour.mac + router._mac[out_iface], addresses)
            frame = apply(action, pkt, action.reader.unpack_from(pkt))
            assert isinstance(frame, bytes)
            # An error whose quoted packet NPTv6 mapped is not its flow's usual rewrite: not cached.
            forwarded = Forwarded(action, out_iface, neighbour, None, 0) if pkt is p.pkt else None
            return Routed([(out_iface, frame)], forwarded)
        action = rewrite6(ZERO_MAC + router._mac[out_iface], addresses)
        frame = apply(action, pkt, action.reader.unpack_from(pkt))
        assert isinstance(frame, bytes)
        return Routed(self._resolve(bytearray(frame), out_iface, next_hop, p, now, p.ledger))

    def _forward_nat(self, p: Packet6, out_iface: int, next_hop: bytes | int, now: float) -> Routed:
        """The last step of _forward for a packet NAT66 translated: its action has the flow's rewrite."""
        assert p.nat is not None
        router, nd = self.router, self.nd
        hop = next_hop if isinstance(next_hop, int) else int.from_bytes(next_hop, "big")
        extensions = p.l4 - L3 - 40 if p.l4 >= 0 else 0
        neighbour = nd.entries.get(hop)
        if neighbour is not None and now - neighbour.updated < nd.timeout:
            action = rewrite6_nat(p.proto, extensions, neighbour.mac + router._mac[out_iface], p.nat)
            frame = apply(action, p.pkt, action.reader.unpack_from(p.pkt))
            assert isinstance(frame, bytes)
            return Routed([(out_iface, frame)], Forwarded(action, out_iface, neighbour, p.flow, p.direction))
        action = rewrite6_nat(p.proto, extensions, ZERO_MAC + router._mac[out_iface], p.nat)
        frame = apply(action, p.pkt, action.reader.unpack_from(p.pkt))
        assert isinstance(frame, bytes)
        return Routed(self._resolve(bytearray(frame), out_iface, hop, p, now, p.ledger))

    def _npt(self, p: Packet6, out_iface: int, inward: bytes | None) -> tuple[bytes, bytes] | Drop | None:
        """NPTv6's new addresses for p (RFC 6296): the destination mapped in (already: inward), the
        source mapped out when it leaves by the uplink. An ICMPv6 error's quoted packet is mapped the
        other way, so its sender knows it again (as Linux's ip6t_NPT does); every change keeps the
        sums, so no checksum moves. Returns (the packet to write from, the new source and destination)."""
        npt = self.npt
        assert npt is not None
        src = p.src
        if out_iface == self.npt_uplink and npt.is_inside(src):
            outward = npt.outward(src)
            if outward is None:
                return Drop.NPT_UNMAPPABLE
            src = outward
        if src == p.src and inward is None:
            return None
        pkt, l4 = p.pkt, p.l4
        if p.proto == PROTO_ICMPV6 and l4 >= 0 and l4 + 48 <= p.end and pkt[l4] < 128:
            quoted = l4 + 8  # the invoking packet's IPv6 header
            buf = bytearray(pkt)
            inner_src, inner_dst = pkt[quoted + 8 : quoted + 24], pkt[quoted + 24 : quoted + 40]
            if inward is not None and npt.is_outside(inner_src):
                buf[quoted + 8 : quoted + 24] = npt.inward(inner_src) or inner_src
            if src != p.src and npt.is_inside(inner_dst):
                buf[quoted + 24 : quoted + 40] = npt.outward(inner_dst) or inner_dst
            pkt = bytes(buf)
        if self.router.tracer is not None:
            self.router.tracer.note("NPTv6", f"{IPv6Address(p.src)} > {IPv6Address(p.dst)} becomes "
                                    f"{IPv6Address(src)} > {IPv6Address(inward or p.dst)}")  # fmt: skip
        return pkt, src + (inward or p.dst)

    def _refuse(
        self, p: Packet6, reason: Drop, icmp_type: int, code: int, rest: int, now: float
    ) -> list[Transmit]:
        """Drop p with an error about it; a flow it has just made goes too (as for IPv4)."""
        self.router._count(p.ledger, reason)
        if p.made_flow is not None and self.nat is not None:
            self.nat.conntrack.remove(p.made_flow, Event.CONNTRACK_UNCONFIRMED)
            p.made_flow = None
        return self._error(p, icmp_type, code, rest, now)

    def _resolve(
        self,
        buf: bytearray,
        out_iface: int,
        next_hop: int,
        p: Packet6 | None,
        now: float,
        ledger: Counter[str],
    ) -> list[Transmit]:
        """Fill in the next hop's MAC, or park the frame until it answers a solicitation (7.2.2)."""
        router, nd = self.router, self.nd
        mac = nd.lookup(next_hop, now)
        if mac is not None and nd.entries[next_hop].iface != out_iface:
            mac = None  # a link-local address a host on another segment uses too (RFC 4007): ask here
        if mac is not None:
            buf[ETH_DST] = mac
            sent = [(out_iface, bytes(buf))]
            probe = nd.probe_due(next_hop, now)
            if probe is not None:  # stale and in use: confirm it with a unicast solicitation (7.3.3)
                sent.append(self._solicitation(out_iface, next_hop.to_bytes(16, "big"), probe))
            return sent
        if nd.is_failed(next_hop, now):
            router._count(ledger, Drop.ND_FAILED)
            return [] if p is None else self._error(p, DEST_UNREACH, ADDRESS_UNREACH, 0, now)
        in_iface, original = (_NO_IFACE, b"") if p is None else (p.iface, p.pkt[: L3 + 1280])
        outcome = nd.enqueue(next_hop, out_iface, buf, in_iface, original, ledger, now)
        if outcome == REJECTED:
            router._count(ledger, Drop.ND_PENDING_FULL)
            return []
        if outcome == REJECTED_COUNTED:
            return []
        if router.tracer is not None:
            name, target = router.interfaces[out_iface].name, IPv6Address(next_hop)
            router.tracer.note(
                "NDP", f"{target} unresolved on {name}: solicited, packet queued for the answer"
            )
        if outcome == QUEUED_SEND_REQUEST:
            return [self._solicitation(out_iface, next_hop.to_bytes(16, "big"), None)]
        return []

    def _originate(self, buf: bytearray, in_iface: int, now: float, ledger: Counter[str]) -> list[Transmit]:
        """Send a packet the router made (MACs blank): a link-local destination is reached on the
        interface the packet that prompted it came in on; any other is routed."""
        router = self.router
        dst = bytes(buf[IP6_DST])
        if is_link_local(dst):
            out_iface, next_hop = in_iface, int.from_bytes(dst, "big")
        else:
            hop = self.routes.lookup(int.from_bytes(dst, "big"))
            if hop is None:
                router.events[Event.ORIGINATED_NO_ROUTE] += 1
                return []
            out_iface = hop[0]
            next_hop = int.from_bytes(dst, "big") if hop[1] is None else hop[1]
        buf[ETH_SRC] = router._mac[out_iface]
        return self._resolve(buf, out_iface, next_hop, None, now, ledger)

    # --- ICMPv6 errors (RFC 4443) -------------------------------------------------------------------
    def _error(
        self, p: Packet6, icmp_type: int, code: int, rest: int, now: float, multicast_ok: bool = False
    ) -> list[Transmit]:
        """An error about p back to its source, if RFC 4443 2.4(e) allows one and the bucket has a
        token (2.4(f)). Its source is our address on the interface p came in on: the link-local one
        for a link-local sender, else the segment's ::1 (what traceroute shows as the hop)."""
        router, pkt = self.router, p.pkt
        if p.src == UNSPECIFIED or p.src[0] == 0xFF:
            return []
        if (p.dst[0] == 0xFF or pkt[ETH_DST.start] & 1) and not multicast_ok:
            return []
        if (
            p.proto == PROTO_ICMPV6
            and p.l4 >= 0
            and (p.l4 >= p.end or pkt[p.l4] < 128 or pkt[p.l4] == REDIRECT)
        ):
            router.events[Event.ICMPV6_ERROR_ABOUT_ERROR_SUPPRESSED] += 1
            return []
        if not self.bucket.take(now):
            router.events[Event.ICMPV6_RATE_LIMITED] += 1
            return []
        iface = p.iface
        # 2.2(b): about a packet to one of our unicast addresses, from that address (an anycast one
        # is never a source: the ::1 of its segment answers, RFC 4291 2.6)
        if p.dst in self.local and p.dst != self.anycast[self.local[p.dst]]:
            src = p.dst
        else:
            src = self.link_local[iface] if is_link_local(p.src) else self.address[iface]
        error = build_error(icmp_type, code, rest, src, p.src, pkt[L3 : p.end])
        router.events[_ERROR_EVENTS.get((icmp_type, code), Event.ICMPV6_PARAMETER_PROBLEM_SENT)] += 1
        if router.tracer is not None:
            words = _ERROR_WORDS.get((icmp_type, code), f"parameter problem (code {code}, pointer {rest})")
            router.tracer.note("icmpv6", f"{words} to {IPv6Address(p.src)}")
        return self._originate(error, iface, now, p.ledger)

    def _problem(
        self, iface: int, pkt: bytes, problem: Problem, now: float, ledger: Counter[str]
    ) -> list[Transmit]:
        """A parameter problem (RFC 4443 3.4) about a packet parse refused, pointing at the field."""
        p = self._checked(iface, pkt, ledger)
        return self._error(p, PARAM_PROBLEM, problem.code, problem.pointer, now, problem.multicast_ok)

    @staticmethod
    def _checked(iface: int, pkt: bytes, ledger: Counter[str]) -> Packet6:
        """An error's view of a packet whose fixed header parse has checked: one it refused past that
        header, or the first 1280 bytes kept of one that waited for a neighbour (its payload length
        may run past them). Its upper layer is looked for past the extension headers, whatever they
        hold: none is sent about an ICMPv6 error (2.4(e.1))."""
        end = min(L3 + 40 + (pkt[L3 + 4] << 8 | pkt[L3 + 5]), len(pkt))
        proto, l4 = upper_layer(pkt, end)
        return Packet6(iface, pkt[:end], ledger, end, pkt[L3 + 8 : L3 + 24], pkt[IP6_DST], proto, 0, l4, True)


_ERROR_WORDS: Final = {
    (DEST_UNREACH, NO_ROUTE): "destination unreachable: no route",
    (DEST_UNREACH, BEYOND_SCOPE): "destination unreachable: beyond the scope of the source",
    (DEST_UNREACH, ADDRESS_UNREACH): "destination unreachable: address unreachable",
    (DEST_UNREACH, PORT_UNREACH): "destination unreachable: port unreachable",
    (PACKET_TOO_BIG, 0): "packet too big",
    (TIME_EXCEEDED, 0): "time exceeded: hop limit",
}
_ERROR_EVENTS: Final = {
    (DEST_UNREACH, NO_ROUTE): Event.ICMPV6_NO_ROUTE_SENT,
    (DEST_UNREACH, BEYOND_SCOPE): Event.ICMPV6_BEYOND_SCOPE_SENT,
    (DEST_UNREACH, ADDRESS_UNREACH): Event.ICMPV6_ADDRESS_UNREACHABLE_SENT,
    (DEST_UNREACH, PORT_UNREACH): Event.ICMPV6_PORT_UNREACHABLE_SENT,
    (PACKET_TOO_BIG, 0): Event.ICMPV6_PACKET_TOO_BIG_SENT,
    (TIME_EXCEEDED, 0): Event.ICMPV6_TIME_EXCEEDED_SENT,
}
