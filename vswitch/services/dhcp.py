"""The DHCPv4 server of the router's segments (RFC 2131, options RFC 2132 and RFC 3442).

What dnsmasq does for libvirt, on vswitch's own ports only: a client on a routed segment gets an
address from the segment's pool, the router as its gateway and DNS server, the instance's name as its
domain, the segment's MTU, and the static routes as option 121. Sans-IO: `receive` takes a message
and the time and answers with the replies to send; the router wraps them in UDP and Ethernet.

The message format is scapy's (BOOTP and DHCP layers), not our own option parsing. Messages are
rare, so the cost of scapy (a few hundred microseconds) is paid only here, off the packet path, and a
token bucket bounds what a flood of them can take from the event loop.

A client is its hardware address (chaddr), not its client identifier (option 61): a container's MAC
is what users reserve and look up, and dhcpcd's DUID-based identifier changes with its state folder.
Leases are immutable records replaced on change, so a trace's journal puts the tables back exactly.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from scapy.layers.dhcp import BOOTP, DHCP

from ..core.counters import Drop, Event
from ..core.icmp import TokenBucket
from ..core.journal import keep
from ..core.services import Reply
from ..core.wire import domain_wire

if TYPE_CHECKING:
    from ..core.journal import Journal

SERVER_PORT: Final = 67
CLIENT_PORT: Final = 68
BROADCAST_FLAG: Final = 0x8000
MIN_MESSAGE: Final = 300  # RFC 1542 2.1: a BOOTP message is at least 300 bytes; some clients insist
OFFER_HOLD: Final = 30.0  # an offered address is kept for the client this long (RFC 2131 4.3.1)
DECLINED_HOLD: Final = 600.0  # an address a client found in use is not offered again for this long
SWEEP_INTERVAL: Final = 10.0  # expired leases leave the tables (and the lease file) this often
LEASE_MIN: Final = 2.0
LEASES_MAX: Final = 4096  # per segment, offers included (dnsmasq's dhcp-lease-max is 1000)
BROADCAST_MAC: Final = b"\xff" * 6
_LIMITED_BROADCAST: Final = IPv4Address("255.255.255.255")
_ANY: Final = IPv4Address("0.0.0.0")

# RFC 2132 9.6: DHCP message types
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
_TYPE_NAMES: Final = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release",
                      8: "inform"}  # fmt: skip
_RECEIVED_EVENTS: Final = {
    DISCOVER: Event.DHCP_DISCOVER,
    REQUEST: Event.DHCP_REQUEST,
    DECLINE: Event.DHCP_DECLINE,
    RELEASE: Event.DHCP_RELEASE,
    INFORM: Event.DHCP_INFORM,
}
OPT_ROUTES: Final = 121  # RFC 3442 classless static routes
OPT_SEARCH: Final = 119  # RFC 3397 domain search list
OPT_MTU: Final = 26


@dataclass(frozen=True)
class Scope:
    """One routed segment's DHCP: where its clients live and what they are told."""

    iface: int
    network: IPv4Network
    server: IPv4Address  # the router's address on the segment: server identifier, gateway, DNS
    ranges: tuple[tuple[IPv4Address, IPv4Address], ...]  # the pool, inclusive; empty: the whole subnet
    mtu: int = 1500
    dns: bool = True  # hand out the router as the DNS server
    routes: tuple[tuple[IPv4Network, IPv4Address], ...] = ()  # option 121, besides the default route


class Reservation(NamedTuple):
    address: IPv4Address
    name: str | None


class Lease(NamedTuple):
    """An address handed to a client: offered (held for it until its REQUEST) or bound."""

    mac: bytes
    address: IPv4Address
    iface: int
    port: int  # the switch port it was leased through: it goes when the port goes
    expires: float
    bound: bool
    hostname: str | None  # option 12 (or 81), as a DNS label: the client's name under the domain


class Message(NamedTuple):
    """A client's message, its fields as the server reads them (scapy parsed it)."""

    kind: int  # option 53
    xid: int
    flags: int
    ciaddr: IPv4Address
    giaddr: IPv4Address
    chaddr: bytes  # the 16-byte field, echoed back as it came
    options: dict[str, Any]

    @property
    def mac(self) -> bytes:
        return self.chaddr[:6]


@dataclass
class DhcpServer:
    scopes: dict[int, Scope]
    lease_time: float = 3600.0
    domain: str | None = None
    reservations: dict[bytes, Reservation] = field(default_factory=dict)
    static: set[IPv4Address] = field(default_factory=set)  # ports' fixed addresses: never offered
    events: Counter[str] = field(default_factory=Counter)
    rate: float = 200.0
    burst: int = 50

    def __post_init__(self) -> None:
        if self.lease_time < LEASE_MIN:
            raise ValueError(f"a lease must last at least {LEASE_MIN:g} seconds")
        self.leases: dict[bytes, Lease] = {}  # by client MAC
        self.by_address: dict[IPv4Address, bytes] = {}
        self.declined: dict[IPv4Address, float] = {}  # address -> until when it is not offered
        self.bucket = TokenBucket(self.rate, self.burst)
        self.next_sweep: float | None = None
        self.version = 0  # bumped when the leases change: the shell rewrites the lease file
        self.journal: Journal | None = None
        self._pools: dict[int, Pool] = {i: Pool.of(s) for i, s in self.scopes.items()}
        self.count: dict[int, int] = dict.fromkeys(self.scopes, 0)  # leases and offers per segment
        self._reserved = {r.address for r in self.reservations.values()}
        # iface -> (the version at which its pool was found full, when a hold or a lease ends there)
        self._exhausted: dict[int, tuple[int, float]] = {}

    # --- entry ---------------------------------------------------------------------------------
    def receive(
        self, iface: int, port: int, src_mac: bytes, payload: bytes, now: float, ledger: Counter[str]
    ) -> list[Reply] | Drop:
        """A message from a client on segment iface, through switch port `port`."""
        scope = self.scopes.get(iface)
        if scope is None:
            return Drop.DHCP_NOT_SERVED
        keep(self.journal, self, self.leases, self.by_address, self.declined, self.count, self.bucket)
        if not self.bucket.take(now):
            return Drop.DHCP_RATE_LIMITED
        m = _parse(payload)
        if m is None:
            return Drop.DHCP_MALFORMED
        if m.giaddr != _ANY:
            return Drop.DHCP_NOT_SERVED  # relayed: we serve our own segments only, no relay's
        if m.mac != src_mac:
            return Drop.DHCP_CHADDR_MISMATCH  # a client's own frame carries its chaddr as source
        self.events[_RECEIVED_EVENTS[m.kind]] += 1
        if m.kind == DISCOVER:
            return self._discover(scope, port, m, now)
        if m.kind == REQUEST:
            return self._request(scope, port, m, now)
        if m.kind == DECLINE:
            return self._decline(m, now)
        if m.kind == RELEASE:
            return self._release(m)
        return self._inform(scope, m)

    # --- RFC 2131 4.3.1: DISCOVER -> OFFER ---------------------------------------------------------
    def _discover(self, scope: Scope, port: int, m: Message, now: float) -> list[Reply] | Drop:
        address = self._choose(scope, m.mac, _address(m.options.get("requested_addr")), now)
        if address is None:
            return Drop.DHCP_POOL_EXHAUSTED
        lease = self.leases.get(m.mac)
        if lease is not None and lease.address == address and lease.bound and lease.expires > now:
            held = lease._replace(port=port)  # still bound: an OFFER never shortens a lease
        else:
            held = Lease(m.mac, address, scope.iface, port, now + OFFER_HOLD, False, _hostname(m.options))
        self._put(held)
        self.events[Event.DHCP_OFFER] += 1
        return [self._reply(scope, m, OFFER, address)]

    def _choose(
        self, scope: Scope, mac: bytes, requested: IPv4Address | None, now: float
    ) -> IPv4Address | None:
        """The client's address (4.3.1): its current one, its reservation, the one it asks for if it
        is free, else the first free address from a place fixed by its MAC (so a client that comes
        back after a release or an expiry gets the same address, if no one took it)."""
        lease = self.leases.get(mac)
        if lease is not None and lease.iface == scope.iface:
            return lease.address
        reservation = self.reservations.get(mac)
        if reservation is not None and reservation.address in scope.network:
            return reservation.address if self._free_for(reservation.address, mac, now) else None
        if requested is not None and self._allocatable(scope, requested, mac, now):
            return requested
        pool = self._pools[scope.iface]
        full = self._exhausted.get(scope.iface)
        if self.count[scope.iface] >= LEASES_MAX or (full and full[0] == self.version and now < full[1]):
            return None  # at the bound, or full with nothing freed or expired since it was found full
        if pool.size == 0:
            return None  # a /31 or /32 segment: no host address besides the router's
        start = zlib.crc32(mac) % pool.size
        for i in range(pool.size):
            candidate = pool.at((start + i) % pool.size)
            if self._allocatable(scope, candidate, mac, now):
                return candidate
        ends = [*self.declined.values(), *(lease.expires for lease in self.leases.values())]
        self._exhausted[scope.iface] = (self.version, min((t for t in ends if t > now), default=math.inf))
        return None

    def _allocatable(self, scope: Scope, address: IPv4Address, mac: bytes, now: float) -> bool:
        """address may be leased to mac: reserved for it, or in the pool and reserved for no one."""
        reserved = self.reservations.get(mac)
        if reserved is not None and reserved.address == address:
            return self._free_for(address, mac, now)
        if address in self._reserved or not _in_pool(scope, address):
            return False
        return self._free_for(address, mac, now)

    def _free_for(self, address: IPv4Address, mac: bytes, now: float) -> bool:
        """No one else holds address (an expired lease no longer does), and it is no port's."""
        if address in self.static or self.declined.get(address, 0.0) > now:
            return False
        holder = self.by_address.get(address)
        return holder is None or holder == mac or self.leases[holder].expires <= now

    # --- 4.3.2: REQUEST -> ACK or NAK ---------------------------------------------------------------
    def _request(self, scope: Scope, port: int, m: Message, now: float) -> list[Reply] | Drop:
        server = m.options.get("server_id")
        lease = self.leases.get(m.mac)
        if server is not None:  # SELECTING: the client chose a server
            if _address(server) != scope.server:
                if lease is not None and not lease.bound:
                    self._drop_lease(m.mac)  # it chose another server: our offer is free again
                self.events[Event.DHCP_OTHER_SERVER] += 1
                return []
            wanted = _address(m.options.get("requested_addr"))
            if lease is not None and lease.iface == scope.iface and wanted == lease.address:
                return self._ack(scope, port, m, wanted, now)
            if wanted is not None and self._allocatable(scope, wanted, m.mac, now):
                return self._ack(scope, port, m, wanted, now)  # our offer expired; the address is still free
            return self._nak(scope, m, "no such offer")
        # INIT-REBOOT (the address in option 50), RENEWING or REBINDING (in ciaddr). We are the only
        # server of our own ports, so authoritative: a wrong or taken address is NAKed at once.
        wanted = _address(m.options.get("requested_addr")) if m.ciaddr == _ANY else m.ciaddr
        if wanted is None or wanted not in scope.network:
            return self._nak(scope, m, "wrong network")
        if lease is not None and lease.iface == scope.iface and lease.address == wanted:
            return self._ack(scope, port, m, wanted, now)
        if self._allocatable(scope, wanted, m.mac, now):  # ours to give: a lease we forgot (a new `up`)
            return self._ack(scope, port, m, wanted, now)
        return self._nak(scope, m, "address not available")

    def _ack(self, scope: Scope, port: int, m: Message, address: IPv4Address, now: float) -> list[Reply]:
        old = self.leases.get(m.mac)
        name = _hostname(m.options) or (old.hostname if old is not None else None)
        reservation = self.reservations.get(m.mac)
        if reservation is not None and reservation.name:
            name = reservation.name
        self._put(Lease(m.mac, address, scope.iface, port, now + self.lease_time, True, name))
        self.events[Event.DHCP_ACK] += 1
        return [self._reply(scope, m, ACK, address)]

    def _nak(self, scope: Scope, m: Message, why: str) -> list[Reply]:
        self.events[Event.DHCP_NAK] += 1
        # 4.3.2: a NAK carries no address and, with giaddr 0, is broadcast.
        message = BOOTP(op=2, xid=m.xid, flags=m.flags, chaddr=m.chaddr) / DHCP(
            options=[("message-type", "nak"), ("server_id", str(scope.server)), ("error_message", why), "end"]
        )
        payload = _padded(bytes(message))
        return [Reply(scope.iface, BROADCAST_MAC, _LIMITED_BROADCAST, scope.server, payload, f"NAK: {why}")]

    # --- 4.3.3-4.3.5: DECLINE, RELEASE, INFORM ----------------------------------------------------
    def _decline(self, m: Message, now: float) -> list[Reply]:
        """4.3.3: the client found its address in use (an ARP answer): it is not offered for a while."""
        address = _address(m.options.get("requested_addr"))
        lease = self.leases.get(m.mac)
        if lease is not None and address is not None and lease.address == address:
            self._drop_lease(m.mac)
            self.declined[address] = now + DECLINED_HOLD
        return []

    def _release(self, m: Message) -> list[Reply]:
        lease = self.leases.get(m.mac)
        if lease is not None and lease.address == m.ciaddr:
            self._drop_lease(m.mac)
        return []

    def _inform(self, scope: Scope, m: Message) -> list[Reply]:
        """4.3.5: the client has its address; it wants the other parameters, and no lease."""
        if m.ciaddr not in scope.network:
            return []
        self.events[Event.DHCP_ACK] += 1
        return [self._reply(scope, m, ACK, None)]

    # --- the reply ----------------------------------------------------------------------------------
    def _reply(self, scope: Scope, m: Message, kind: int, address: IPv4Address | None) -> Reply:
        opts: list[Any] = [("message-type", _TYPE_NAMES[kind]), ("server_id", str(scope.server))]
        if address is not None:  # an INFORM's ACK carries no lease (4.3.5)
            t = int(self.lease_time)
            opts += [("lease_time", t), ("renewal_time", t // 2), ("rebinding_time", t * 7 // 8)]
        opts += [
            ("subnet_mask", str(scope.network.netmask)),
            ("broadcast_address", str(scope.network.broadcast_address)),
            ("router", str(scope.server)),
        ]
        if scope.dns:
            opts.append(("name_server", str(scope.server)))
        if self.domain:
            opts.append(("domain", self.domain))
            opts.append((OPT_SEARCH, domain_wire(self.domain)))  # RFC 3397
        opts.append(("interface-mtu", scope.mtu))
        if scope.routes:
            # RFC 3442: a client that takes option 121 ignores the router option, so the default route
            # goes in it too, first.
            routes = [(IPv4Network("0.0.0.0/0"), scope.server), *scope.routes]
            opts.append((OPT_ROUTES, _classless_routes(routes)))
        opts.append("end")
        message = BOOTP(
            op=2,
            xid=m.xid,
            flags=m.flags,
            ciaddr=str(m.ciaddr) if kind == ACK else "0.0.0.0",
            yiaddr=str(address or _ANY),
            chaddr=m.chaddr,
        ) / DHCP(options=opts)
        # RFC 2131 4.1, with giaddr 0: to ciaddr if the client has one; else broadcast if it asks
        # (the broadcast bit); else to the offered address at its own MAC.
        if m.ciaddr != _ANY:
            dst, dst_mac = m.ciaddr, m.mac
        elif m.flags & BROADCAST_FLAG or address is None:
            dst, dst_mac = _LIMITED_BROADCAST, BROADCAST_MAC
        else:
            dst, dst_mac = address, m.mac
        what = f"{_TYPE_NAMES[kind].upper()} {address or m.ciaddr} to {dst}"
        return Reply(scope.iface, dst_mac, dst, scope.server, _padded(bytes(message)), what)

    # --- the tables -----------------------------------------------------------------------------------
    def _put(self, lease: Lease) -> None:
        holder = self.by_address.get(lease.address)
        if holder is not None and holder != lease.mac:
            self._drop_lease(holder)  # its lease had expired (_free_for): the sweep had not come yet
        old = self.leases.get(lease.mac)
        if old is not None:
            self._drop_lease(lease.mac)
        self.leases[lease.mac] = lease
        self.by_address[lease.address] = lease.mac
        self.count[lease.iface] += 1
        self.version += 1
        if self.next_sweep is None or lease.expires < self.next_sweep:
            self.next_sweep = lease.expires

    def _drop_lease(self, mac: bytes) -> None:
        lease = self.leases.pop(mac, None)
        if lease is not None:
            if self.by_address.get(lease.address) == mac:
                del self.by_address[lease.address]
            self.count[lease.iface] -= 1
            self.version += 1

    def _expire(self, now: float) -> None:
        for mac in [m for m, lease in self.leases.items() if lease.expires <= now]:
            bound = self.leases[mac].bound
            self._drop_lease(mac)
            self.events[Event.DHCP_LEASE_EXPIRED if bound else Event.DHCP_OFFER_EXPIRED] += 1
        for address in [a for a, until in self.declined.items() if until <= now]:
            del self.declined[address]

    def next_deadline(self) -> float | None:
        return self.next_sweep

    def on_timer(self, now: float) -> None:
        if self.next_sweep is None or now < self.next_sweep:
            return
        keep(self.journal, self, self.leases, self.by_address, self.declined, self.count)
        self._expire(now)
        soonest = min((lease.expires for lease in self.leases.values()), default=None)
        self.next_sweep = None if soonest is None else max(soonest, now + SWEEP_INTERVAL)

    def forget_port(self, port: int) -> int:
        """A port left (or moved): the leases made through it go. Returns how many."""
        gone = [mac for mac, lease in self.leases.items() if lease.port == port]
        for mac in gone:
            self._drop_lease(mac)
        return len(gone)

    def set_static(self, addresses: Iterable[IPv4Address]) -> None:
        """The ports' fixed addresses, which the pool skips (the shell updates them as ports come)."""
        self.static = set(addresses)

    def bound(self, now: float) -> list[Lease]:
        return sorted(
            (lease for lease in self.leases.values() if lease.bound and lease.expires > now),
            key=lambda lease: (lease.iface, int(lease.address)),
        )

    def table(self, now: float, names: dict[int, str]) -> list[dict[str, object]]:
        """The bound leases, as `vswitch leases` shows them; names: the switch ports' names."""
        return [
            {
                "mac": ":".join(f"{b:02x}" for b in lease.mac),
                "address": str(lease.address),
                "hostname": lease.hostname or "",
                "port": names.get(lease.port, str(lease.port)),
                "expires_in": round(lease.expires - now, 1),
            }
            for lease in self.bound(now)
        ]


# --- helpers ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pool:
    """A scope's pool as ranges of integers: a /8 costs nothing until addresses are handed out."""

    ranges: tuple[tuple[int, int], ...]  # inclusive
    size: int

    @classmethod
    def of(cls, scope: Scope) -> Pool:
        net = scope.network
        given = scope.ranges or ((net.network_address + 1, net.broadcast_address - 1),)
        ranges = tuple((int(first), int(last)) for first, last in given if first <= last)
        return cls(ranges, sum(last - first + 1 for first, last in ranges))

    def at(self, index: int) -> IPv4Address:
        for first, last in self.ranges:
            if index <= last - first:
                return IPv4Address(first + index)
            index -= last - first + 1
        raise IndexError(index)


def _in_pool(scope: Scope, address: IPv4Address) -> bool:
    if address == scope.server or address not in scope.network:
        return False
    if address in (scope.network.network_address, scope.network.broadcast_address):
        return False
    return not scope.ranges or any(first <= address <= last for first, last in scope.ranges)


def _parse(payload: bytes) -> Message | None:
    """A client's message (BOOTREQUEST, Ethernet addresses, the magic cookie, a type) or None."""
    try:
        bootp = BOOTP(payload)
        if bootp.op != 1 or bootp.htype != 1 or bootp.hlen != 6 or DHCP not in bootp:
            return None
        options: dict[str, Any] = {}
        for option in bootp[DHCP].options:
            if isinstance(option, tuple) and len(option) >= 2 and isinstance(option[0], str):
                options.setdefault(option[0], option[1])
        kind = options.get("message-type")
        ciaddr, giaddr = IPv4Address(bootp.ciaddr), IPv4Address(bootp.giaddr)
        chaddr = bytes(bootp.chaddr).ljust(16, b"\x00")[:16]
    except Exception:  # scapy on hostile bytes: a named drop, never an exception out of the core
        return None
    if kind not in _RECEIVED_EVENTS:
        return None
    return Message(kind, int(bootp.xid), int(bootp.flags), ciaddr, giaddr, chaddr, options)


def _address(value: Any) -> IPv4Address | None:
    if value is None:
        return None
    try:
        return IPv4Address(value)
    except ValueError:
        return None


def _hostname(options: dict[str, Any]) -> str | None:
    """The client's name (option 12, else option 81's first label), if it is a valid DNS label."""
    raw = options.get("hostname")
    if raw is None:
        fqdn = options.get("client_FQDN")
        if isinstance(fqdn, bytes) and len(fqdn) > 3:
            raw = _fqdn_label(fqdn[3:])
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str):
        return None
    label = raw.split(".")[0].strip().lower()
    valid = all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    if 0 < len(label) <= 63 and valid and not label.startswith("-") and not label.endswith("-"):
        return label
    return None


def _fqdn_label(name: bytes) -> bytes:
    """Option 81's name (RFC 4702 2.3): wire format (a length first) or, from old clients, ASCII."""
    if name and name[0] < 64 and len(name) > name[0]:
        return name[1 : 1 + name[0]]
    return name


def _classless_routes(routes: list[tuple[IPv4Network, IPv4Address]]) -> bytes:
    """Option 121 (RFC 3442): each route as width, the significant octets, the router."""
    out = b""
    for network, router in routes:
        octets = (network.prefixlen + 7) // 8
        route = bytes((network.prefixlen,)) + network.network_address.packed[:octets] + router.packed
        if len(out) + len(route) > 255:
            break  # one option's length (a longer list would need RFC 3396's splitting); config caps it
        out += route
    return out


def _padded(message: bytes) -> bytes:
    return message.ljust(MIN_MESSAGE, b"\x00")
