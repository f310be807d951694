"""The router's DNS: local names answered, the rest forwarded upstream, with a bounded cache.

What dnsmasq does for a libvirt network, on the router's own addresses: A, AAAA and PTR for the
ports (`ns1.NAME.`) and for DHCP clients' host names, NXDOMAIN for the local names that do not exist
(and for the reverse zones of private addresses we do not hold, RFC 6303), and every other question
forwarded to `--dns-upstream`. Without an upstream the answer is REFUSED, so a client moves on
rather than waits.

Sans-IO like the rest of the core: `query` answers at once or queues the question in `outbox` for the
shell, which sends it from a socket in the uplink's namespace and hands the answer to `upstream_reply`
(`over_tcp` when it had to ask again over TCP because the answer was truncated, RFC 7766 5). Time
comes in as ``now``; a question upstream that outlives `timeout` is answered SERVFAIL by `on_timer`.
The wire format is dnspython's.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Final, NamedTuple

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from ..core.counters import Drop, Event
from ..core.icmp import TokenBucket
from ..core.journal import keep
from ..core.services import Client

if TYPE_CHECKING:
    from ..core.journal import Journal
    from .dhcp import DhcpServer

PORT: Final = 53
HEADER_LEN: Final = 12
UDP_PLAIN_MAX: Final = 512  # a client without EDNS0 takes this much (RFC 1035 4.2.1)
EDNS_PAYLOAD: Final = 1232  # what we offer and send at most over UDP (DNS flag day 2020)
LOCAL_TTL: Final = 30  # our own names change as leases come and go
NEGATIVE_TTL: Final = 60  # a negative answer without an SOA to say otherwise (RFC 2308 5)
# RFC 6303: reverse zones of private and local addresses are answered here, never sent upstream.
_PRIVATE_TEXT: Final = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
)
PRIVATE: Final = tuple(ip_network(n) for n in _PRIVATE_TEXT)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class Key(NamedTuple):
    name: str  # lower case, absolute ("ns1.default.")
    rdtype: int
    rdclass: int


class Pending(NamedTuple):
    client: Client
    client_id: int
    key: Key
    deadline: float
    query: bytes  # as sent upstream (our id)
    size: int  # what the client takes over UDP
    edns: bool
    tcp: bool  # asked again over TCP


class Cached(NamedTuple):
    stored: float
    expires: float
    wire: bytes


class Outgoing(NamedTuple):
    """A question for the shell to send upstream (over TCP when the UDP answer was truncated)."""

    ident: int
    wire: bytes
    tcp: bool


@dataclass
class DnsServer:
    domain: str  # the instance's name: ports are `PORT.domain.`
    networks: list[Network] = field(default_factory=list)  # ours: their reverse names are answered here
    upstream: bool = False  # a `--dns-upstream` exists
    dhcp: DhcpServer | None = None
    events: Counter[str] = field(default_factory=Counter)
    cache_max: int = 1024
    pending_max: int = 256
    timeout: float = 3.0
    ttl_max: int = 3600
    rng: random.Random = field(default_factory=random.SystemRandom)
    rate: float = 1000.0  # questions per second that reach the server (about 100 us each here)
    burst: int = 100

    def __post_init__(self) -> None:
        self.origin = dns.name.from_text(self.domain)
        self.hosts: dict[str, list[Address]] = {}  # a port's label -> its fixed addresses
        self._hosts_version = 0
        self._table_version: tuple[int, int] = (-1, -1)
        self._by_name: dict[str, list[tuple[Address, float]]] = {}
        self._by_address: dict[Address, list[tuple[str, float]]] = {}
        self.bucket = TokenBucket(self.rate, self.burst)
        self.dhcp_ports: dict[str, int] = {}  # a `=dhcp` port's label -> its switch port
        self.cache: dict[Key, Cached] = {}
        self.pending: dict[int, Pending] = {}
        self.outbox: list[Outgoing] = []
        self.wake: Callable[[], None] | None = None  # the shell's: there is something in outbox
        self.journal: Journal | None = None  # attached while a trace runs: nothing goes upstream then

    # --- the shell's view -------------------------------------------------------------------------
    def set_hosts(
        self, hosts: dict[str, Iterable[Address]], dhcp_ports: dict[str, int] | None = None
    ) -> None:
        self.hosts = {name.lower(): list(addresses) for name, addresses in hosts.items()}
        self.dhcp_ports = {name.lower(): port for name, port in (dhcp_ports or {}).items()}
        self._hosts_version += 1

    def names(self, now: float) -> dict[str, list[Address]]:
        """Every local name and its addresses (ports first: a DHCP client may not take a port's name)."""
        return {name: found for name in self._table() if (found := self._addresses(name, now)) is not None}

    def _table(self) -> dict[str, list[tuple[Address, float]]]:
        """name -> (address, until when), rebuilt only when the ports or the leases changed: a
        question costs a lookup, not a walk of 4096 leases."""
        version = (self._hosts_version, -1 if self.dhcp is None else self.dhcp.version)
        if version != self._table_version:
            forever = float("inf")
            table = {name: [(a, forever) for a in addresses] for name, addresses in self.hosts.items()}
            if self.dhcp is not None:
                by_port = {port: name for name, port in self.dhcp_ports.items()}
                for lease in self.dhcp.leases.values():
                    if not lease.bound:
                        continue
                    for name in (by_port.get(lease.port), lease.hostname):
                        if name is not None and name not in self.hosts:
                            table.setdefault(name, []).append((lease.address, lease.expires))
            self._by_name, self._table_version = table, version
            self._by_address = {}
            for name, entries in table.items():
                for address, until in entries:
                    self._by_address.setdefault(address, []).append((name, until))
        return self._by_name

    def _addresses(self, name: str, now: float) -> list[Address] | None:
        entries = self._table().get(name)
        found = [address for address, until in entries or () if until > now]
        return found or None

    def _owners(self, address: Address, now: float) -> list[str]:
        self._table()
        return sorted(name for name, until in self._by_address.get(address, ()) if until > now)

    # --- a client's question ------------------------------------------------------------------------
    def query(self, payload: bytes, client: Client, now: float) -> bytes | Drop | None:
        """The answer to send back now, None if the question went upstream, or why it was dropped."""
        keep(self.journal, self, self.cache, self.pending, self.outbox, self.bucket)
        if len(payload) < HEADER_LEN or payload[2] & 0x80:
            return Drop.DNS_MALFORMED  # no header, or a response sent to a server
        if not self.bucket.take(now):
            return Drop.DNS_RATE_LIMITED  # dnspython's parse and render take the loop's time
        self.events[Event.DNS_QUERY] += 1
        try:
            q = dns.message.from_wire(payload)
        except dns.exception.DNSException:
            return _header_only(payload, dns.rcode.FORMERR)
        if q.opcode() != dns.opcode.QUERY:
            return self._rcode(q, dns.rcode.NOTIMP)
        if len(q.question) != 1:
            return self._rcode(q, dns.rcode.FORMERR)
        question = q.question[0]
        key = Key(question.name.to_text().lower(), question.rdtype, question.rdclass)
        size = min(max(q.payload, UDP_PLAIN_MAX), EDNS_PAYLOAD) if q.edns >= 0 else UDP_PLAIN_MAX
        local = self._local(q, question.name, key, now)
        if local is not None:
            self.events[Event.DNS_LOCAL] += 1
            return self._render(local, size)
        if not self.upstream:
            self.events[Event.DNS_REFUSED] += 1
            return self._rcode(q, dns.rcode.REFUSED)
        cached = self.cache.get(key)
        if cached is not None and cached.expires > now:
            self.events[Event.DNS_CACHE_HIT] += 1
            return self._from_cache(cached, q.id, q.edns >= 0, size, now)
        if len(self.pending) >= self.pending_max:
            return Drop.DNS_PENDING_FULL
        ident = self._new_id()
        wire = ident.to_bytes(2, "big") + payload[2:]
        self.pending[ident] = Pending(client, q.id, key, now + self.timeout, wire, size, q.edns >= 0, False)
        self.events[Event.DNS_FORWARDED] += 1
        self._send(Outgoing(ident, wire, False))
        return None

    def _local(
        self, q: dns.message.Message, name: dns.name.Name, key: Key, now: float
    ) -> dns.message.Message | None:
        """The answer if the name is ours (under the domain, or a reverse name we answer), else None."""
        if key.rdclass != dns.rdataclass.IN:
            return None
        ours = name.is_subdomain(self.origin)
        single = not ours and len(name.labels) == 2 and key.rdtype in _VERSIONS  # "ns1.": no domain
        if ours or single:
            # A single label is answered here too, never sent upstream (dnsmasq's domain-needed): a
            # resolver's search list tries it bare, and the world has no use for our host names.
            r = self._response(q)
            r.flags |= dns.flags.AA
            labels = name.labels[:1] if single else name.relativize(self.origin).labels
            if not labels or labels == (b"@",):
                return r  # the domain itself: no data
            addresses = self._addresses(b".".join(labels).decode("ascii", "replace").lower(), now)
            if addresses is None:
                r.set_rcode(dns.rcode.NXDOMAIN)
                self.events[Event.DNS_NXDOMAIN] += 1
                return r
            wanted = _VERSIONS.get(key.rdtype)  # 0: ANY, both; None: a type we hold none of
            chosen = [str(a) for a in addresses if wanted == 0 or a.version == wanted]
            for version, rdtype in ((4, "A"), (6, "AAAA")):
                texts = [a for a in chosen if ip_address(a).version == version]
                if texts:
                    r.answer.append(dns.rrset.from_text_list(name, LOCAL_TTL, "IN", rdtype, texts))
            return r
        if not (name.is_subdomain(_IN_ADDR) or name.is_subdomain(_IP6)):
            return None
        try:
            address = ip_address(dns.reversename.to_address(name))
        except (dns.exception.DNSException, ValueError):
            return None  # a partial reverse name: a zone's, not an address's
        if not _within(address, self.networks) and not _within(address, PRIVATE):
            return None
        r = self._response(q)
        r.flags |= dns.flags.AA
        owners = self._owners(address, now)
        if not owners:
            r.set_rcode(dns.rcode.NXDOMAIN)
            self.events[Event.DNS_NXDOMAIN] += 1
        elif key.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
            targets = [f"{owner}.{self.origin.to_text()}" for owner in owners]
            r.answer.append(dns.rrset.from_text_list(name, LOCAL_TTL, "IN", "PTR", targets))
        return r

    # --- upstream -----------------------------------------------------------------------------------
    def upstream_reply(self, wire: bytes, now: float, over_tcp: bool = False) -> list[tuple[Client, bytes]]:
        """An answer from upstream: to its client (and into the cache), or asked again over TCP."""
        keep(self.journal, self, self.cache, self.pending, self.outbox)
        try:
            answer = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self.events[Event.DNS_UPSTREAM_MALFORMED] += 1
            return []
        pending = self.pending.get(answer.id)
        if pending is None or len(answer.question) != 1 or not _same(answer, pending.key):
            self.events[Event.DNS_UPSTREAM_MISMATCH] += 1  # late, or not the answer to our question
            return []
        if answer.flags & dns.flags.TC and not over_tcp:
            self.pending[answer.id] = pending._replace(tcp=True)
            self.events[Event.DNS_UPSTREAM_TCP] += 1
            self._send(Outgoing(answer.id, pending.query, True))
            return []
        del self.pending[answer.id]
        ttl = self._ttl(answer)
        if ttl > 0:
            if len(self.cache) >= self.cache_max:
                self._evict(now)
            self.cache[pending.key] = Cached(now, now + ttl, wire)
        answer.id = pending.client_id
        return [(pending.client, self._relay(answer, pending.edns, pending.size))]

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self.pending.values()), default=None)

    def on_timer(self, now: float) -> list[tuple[Client, bytes]]:
        """Questions upstream never answered: SERVFAIL, so the client tries again or gives up now."""
        late = [ident for ident, p in self.pending.items() if p.deadline <= now]
        if not late:
            return []
        keep(self.journal, self.pending)
        out: list[tuple[Client, bytes]] = []
        for ident in late:
            p = self.pending.pop(ident)
            self.events[Event.DNS_UPSTREAM_TIMEOUT] += 1
            query = p.client_id.to_bytes(2, "big") + p.query[2:]
            out.append((p.client, _header_only(query, dns.rcode.SERVFAIL, with_question=True)))
        return out

    def _send(self, outgoing: Outgoing) -> None:
        if self.journal is not None:
            return  # a trace shows the question going upstream; it never leaves
        self.outbox.append(outgoing)
        if self.wake is not None:
            self.wake()

    def _new_id(self) -> int:
        """A random id (RFC 5452 9.2: with the shell's random source port, spoofing takes guessing)."""
        while True:
            ident = self.rng.randrange(1 << 16)
            if ident not in self.pending:
                return ident

    def _ttl(self, answer: dns.message.Message) -> int:
        """How long to keep an answer: its shortest TTL; a negative one by its SOA (RFC 2308 5);
        errors other than NXDOMAIN are not kept."""
        rcode = answer.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return 0
        if answer.answer and rcode == dns.rcode.NOERROR:
            return min(min(rrset.ttl for rrset in answer.answer), self.ttl_max)
        soa = [rrset for rrset in answer.authority if rrset.rdtype == dns.rdatatype.SOA]
        if soa:
            return int(min(soa[0].ttl, soa[0][0].minimum, self.ttl_max))
        return min(NEGATIVE_TTL, self.ttl_max)

    def _evict(self, now: float) -> None:
        """Room for one more: the expired go, else the oldest (insertion order is age order)."""
        for key in [k for k, c in self.cache.items() if c.expires <= now]:
            del self.cache[key]
        while len(self.cache) >= self.cache_max:
            del self.cache[next(iter(self.cache))]

    def _from_cache(self, cached: Cached, client_id: int, edns: bool, size: int, now: float) -> bytes:
        answer = dns.message.from_wire(cached.wire)
        answer.id = client_id
        elapsed = int(now - cached.stored)
        for section in (answer.answer, answer.authority, answer.additional):
            for rrset in section:
                rrset.ttl = max(rrset.ttl - elapsed, 0)
        return self._relay(answer, edns, size)

    # --- answers --------------------------------------------------------------------------------------
    def _response(self, q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q, recursion_available=self.upstream, our_payload=EDNS_PAYLOAD)
        return r

    def _rcode(self, q: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        r = self._response(q)
        r.set_rcode(rcode)
        return self._render(r, UDP_PLAIN_MAX)

    def _relay(self, answer: dns.message.Message, edns: bool, size: int) -> bytes:
        # Ours to say: recursion is available here, and we hold no authority for what we relay.
        answer.flags = (answer.flags | dns.flags.RA) & ~dns.flags.AA
        if edns:
            answer.use_edns(0, payload=EDNS_PAYLOAD)
        else:
            answer.use_edns(False)
        return self._render(answer, size)

    def _render(self, r: dns.message.Message, size: int) -> bytes:
        """The wire answer in size bytes; too big, it is cut with TC set (RFC 2181 9)."""
        wire = r.to_wire(max_size=size, prefer_truncation=True)
        if wire[2] & 0x02:
            self.events[Event.DNS_TRUNCATED] += 1
        return wire


_VERSIONS: Final[dict[int, int]] = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6, dns.rdatatype.ANY: 0}
_IN_ADDR: Final = dns.name.from_text("in-addr.arpa.")
_IP6: Final = dns.name.from_text("ip6.arpa.")


def _same(answer: dns.message.Message, key: Key) -> bool:
    q = answer.question[0]
    return q.name.to_text().lower() == key.name and q.rdtype == key.rdtype and q.rdclass == key.rdclass


def _header_only(query: bytes, rcode: int, with_question: bool = False) -> bytes:
    """An error answer built from the header alone (the question, when asked, copied as it came):
    for a message dnspython cannot read, or a timeout."""
    flags = 0x8000 | (query[2] & 0x79) << 8 | 0x80 | rcode  # QR, the opcode and RD echoed, RA
    if with_question and query[4:6] == b"\x00\x01":
        try:
            q = dns.message.from_wire(query)
            r = dns.message.make_response(q, recursion_available=True, our_payload=EDNS_PAYLOAD)
            r.set_rcode(dns.rcode.Rcode(rcode))
            return r.to_wire()
        except dns.exception.DNSException:
            pass
    return query[:2] + flags.to_bytes(2, "big") + bytes(8)


def _within(address: Address, networks: Iterable[Network]) -> bool:
    return any(address in network for network in networks if network.version == address.version)
