"""A small subset of tcpdump's filter language (pcap-filter(7)), compiled to a Python predicate.

The predicate reads the raw Ethernet frame (no virtio-net header) at fixed offsets, so it runs inside
the switch process without scapy. Supported, combined with ``and``/``&&``, ``or``/``||``,
``not``/``!`` and parentheses (``not`` binds tightest, then ``and``, then ``or``):

- protocols: ``ether``, ``ip``, ``ip6``, ``arp``, ``vlan``, ``icmp`` (IPv4), ``icmp6``, ``tcp`` and
  ``udp`` (both families);
- ``[src|dst] host ADDR``, ``src ADDR``, ``dst ADDR``: an IPv4 address (IPv4 and ARP addresses) or an
  IPv6 one (the IPv6 header's addresses; an NDP message's target address is not one, as in tcpdump);
- ``[src|dst] net PREFIX``: IPv4 (10.1.0.0/24) or IPv6 (fd00:77::/64);
- ``[tcp|udp] [src|dst] port N``: TCP or UDP over either family; the first fragment only;
- ``ether [src|dst] host MAC`` and ``ether src MAC``, ``ether dst MAC``;
- ``greater N`` and ``less N`` (frame length).

IPv6's upper layer (icmp6, tcp, udp, ports) is found past extension headers: hop-by-hop, routing,
destination options, fragment (a later fragment has a protocol but no ports) and AH, at most 8 of
them; past ESP, or a chain longer or cut short, there is no upper layer. Frames are not looked into
past a VLAN tag: ``vlan`` matches a tagged frame, the other primitives untagged ones.

Not supported: byte-offset expressions (``tcp[13] & 2``), ``ip proto``/``ip6 proto``, ``portrange``,
names instead of numbers, IPv6 zones (``fe80::1%eth0``), and tcpdump's id-list abbreviations
(``host a or b``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Final

from .ipv6 import MAX_EXTENSIONS
from .wire import parse_mac

IPV4: Final = 0x0800
ARP: Final = 0x0806
IPV6: Final = 0x86DD
ETHERTYPES: Final = {"ip": IPV4, "arp": ARP, "ip6": IPV6, "vlan": 0x8100}
# A protocol word: (its IP protocol number, the ethertypes it is carried in).
IP_PROTOS: Final = {
    "icmp": (1, (IPV4,)),
    "icmp6": (58, (IPV6,)),
    "tcp": (6, (IPV4, IPV6)),
    "udp": (17, (IPV4, IPV6)),
}
TOKEN: Final = re.compile(r"\s+|&&|\|\||!|\(|\)|[^\s()!&|]+|.")
# Parentheses and `not` nest: each level costs a few Python frames to parse and to match, so the depth
# is capped far below the interpreter's recursion limit (1000) and far above any filter a person writes.
# Chains of `and`/`or` do not nest: they are flat lists, any length.
MAX_NESTING: Final = 64

# IPv6 (RFC 8200): the fixed header's offsets in the frame, and the extension headers walked to find the
# upper layer. Hop-by-hop, routing and destination options (and mobility, HIP, shim6, the experimental
# 253/254: RFC 7045's list) share one shape: next header, length in 8-octet units not counting the
# first. AH (RFC 4302 2.2) counts 4-octet units, minus 2. The router walks at most MAX_EXTENSIONS
# (core.ipv6); so do we. The offsets are core.wire's less the virtio-net header: a capture has none.
IP6_NEXT: Final = 14 + 6
IP6_SRC: Final = slice(14 + 8, 14 + 24)
IP6_DST: Final = slice(14 + 24, 14 + 40)
IP6_PAYLOAD_LENGTH: Final = slice(14 + 4, 14 + 6)
IP6_END: Final = 14 + 40
EXT_GENERIC: Final = frozenset({0, 43, 60, 135, 139, 140, 253, 254})
EXT_FRAGMENT: Final = 44
EXT_AH: Final = 51
EXTENSIONS: Final = EXT_GENERIC | {EXT_FRAGMENT, EXT_AH}


class FilterError(ValueError):
    """The expression is not in the supported subset; the message says where."""


@dataclass(frozen=True)
class Fields:
    """What the primitives look at, decoded once per frame. Absent layers are None."""

    length: int
    eth_src: bytes
    eth_dst: bytes
    ethertype: int
    ip_src: int | None = None  # IPv4, or the ARP sender
    ip_dst: int | None = None  # IPv4, or the ARP target
    proto: int | None = None  # IPv4's protocol, or IPv6's upper layer past its extension headers
    sport: int | None = None
    dport: int | None = None
    ip6_src: int | None = None
    ip6_dst: int | None = None


def decode(frame: bytes) -> Fields | None:
    """Fields of an Ethernet frame; None for anything shorter than an Ethernet header."""
    if len(frame) < 14:
        return None
    ethertype = frame[12] << 8 | frame[13]
    base = Fields(len(frame), bytes(frame[6:12]), bytes(frame[0:6]), ethertype)
    if ethertype == ARP and len(frame) >= 42:
        spa = int.from_bytes(frame[28:32], "big")
        tpa = int.from_bytes(frame[38:42], "big")
        return Fields(base.length, base.eth_src, base.eth_dst, ethertype, spa, tpa)
    if ethertype == IPV6:
        return _decode6(frame, base)
    if ethertype != IPV4 or len(frame) < 34 or frame[14] >> 4 != 4:
        return base
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    first_fragment = (frame[20] << 8 | frame[21]) & 0x1FFF == 0
    sport, dport = _ports(frame, proto, 14 + ihl, len(frame)) if first_fragment else (None, None)
    return Fields(base.length, base.eth_src, base.eth_dst, ethertype, src, dst, proto, sport, dport)


def _decode6(frame: bytes, base: Fields) -> Fields:
    """An IPv6 packet's addresses, and its upper layer and ports if the extension chain leads to them."""
    if len(frame) < IP6_END or frame[14] >> 4 != 6:
        return base
    src = int.from_bytes(frame[IP6_SRC], "big")
    dst = int.from_bytes(frame[IP6_DST], "big")
    # Ethernet pads a short packet: the payload length, not the frame, says where the packet ends.
    end = min(len(frame), IP6_END + int.from_bytes(frame[IP6_PAYLOAD_LENGTH], "big"))
    proto: int | None = frame[IP6_NEXT]
    offset, first_fragment, walked = IP6_END, True, 0
    while proto in EXTENSIONS:
        walked += 1
        fixed = 8 if proto == EXT_FRAGMENT else 2
        if walked > MAX_EXTENSIONS or offset + fixed > end:
            proto = None  # a chain the router drops too, or one cut short: no upper layer
            break
        if proto == EXT_FRAGMENT:
            first_fragment = (frame[offset + 2] << 8 | frame[offset + 3]) & 0xFFF8 == 0
            size = 8
        elif proto == EXT_AH:
            size = (frame[offset + 1] + 2) * 4
        else:
            size = (frame[offset + 1] + 1) * 8
        proto, offset = frame[offset], offset + size
    if proto is not None and offset > end:
        proto = None  # the last extension header runs past the packet
    sport, dport = _ports(frame, proto, offset, end) if first_fragment else (None, None)
    return Fields(
        base.length, base.eth_src, base.eth_dst, base.ethertype, None, None, proto, sport, dport, src, dst
    )


def _ports(frame: bytes, proto: int | None, l4: int, end: int) -> tuple[int | None, int | None]:
    if proto in (6, 17) and l4 + 4 <= end:
        return frame[l4] << 8 | frame[l4 + 1], frame[l4 + 2] << 8 | frame[l4 + 3]
    return None, None


Test = Callable[[Fields], bool]


class _Parser:
    def __init__(self, text: str) -> None:
        self.shown = text if len(text) <= 80 else text[:60] + " ... " + text[-15:]  # for messages
        self.tokens: list[str] = []
        for match in TOKEN.finditer(text):
            token = match.group(0)
            if token in ("&", "|"):
                raise FilterError(f"filter {self.shown!r}: {token!r} at {match.start()}: use && or ||")
            if not token.isspace():
                self.tokens.append(token)
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str = "a value") -> str:
        token = self.peek()
        if token is None:
            raise FilterError(f"filter {self.shown!r}: expected {what} at the end")
        self.pos += 1
        return token

    def parse(self) -> Test:
        if not self.tokens:
            return lambda _f: True
        test = self.parse_or()
        if self.peek() is not None:
            raise FilterError(f"filter {self.shown!r}: unexpected {self.peek()!r}")
        return test

    def parse_or(self) -> Test:
        terms = [self.parse_and()]
        while self.peek() in ("or", "||"):
            self.pos += 1
            terms.append(self.parse_and())
        return terms[0] if len(terms) == 1 else _any_of(terms)

    def parse_and(self) -> Test:
        terms = [self.parse_not()]
        while self.peek() in ("and", "&&"):
            self.pos += 1
            terms.append(self.parse_not())
        return terms[0] if len(terms) == 1 else _all_of(terms)

    def parse_not(self) -> Test:
        negate = False
        while self.peek() in ("not", "!"):  # a run of nots is one negation or none, however long
            self.pos += 1
            negate = not negate
        if self.peek() == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise FilterError(f"filter {self.shown!r}: parentheses nested deeper than {MAX_NESTING}")
            self.pos += 1
            inner = self.parse_or()
            if self.take("')'") != ")":
                raise FilterError(f"filter {self.shown!r}: expected ')'")
            self.depth -= 1
        else:
            inner = self.primitive()
        if negate:
            return lambda f: not inner(f)
        return inner

    def primitive(self) -> Test:
        word = self.take("a primitive")
        if word == "ether":
            return self.ether()
        if word in IP_PROTOS:
            proto, carriers = IP_PROTOS[word]
            if word in ("tcp", "udp") and self.peek() in ("port", "src", "dst"):
                port = self.port_primitive()
                return lambda f: f.proto == proto and f.ethertype in carriers and port(f)
            return lambda f: f.proto == proto and f.ethertype in carriers
        if word in ETHERTYPES:
            ethertype = ETHERTYPES[word]
            return lambda f: f.ethertype == ethertype
        if word in ("greater", "less"):
            size = self.number(self.take("a length"), 1 << 20)
            if word == "greater":
                return lambda f: f.length >= size
            return lambda f: f.length <= size
        if word in ("src", "dst", "host", "net", "port"):
            self.pos -= 1
            return self.address_primitive()
        raise FilterError(f"filter {self.shown!r}: unknown primitive {word!r} (see vswitch capture --help)")

    def direction(self) -> str:
        if self.peek() in ("src", "dst"):
            return self.take()
        return "any"

    def address_primitive(self) -> Test:
        save = self.pos
        direction = self.direction()
        kind = self.peek()
        if kind == "port":
            self.pos = save
            return self.port_primitive()
        if kind in ("host", "net"):
            self.pos += 1
        else:
            kind = "host"  # `src 10.0.0.1` is `src host 10.0.0.1`
        value = self.take("an address")
        if "%" in value:
            raise FilterError(f"filter {self.shown!r}: {value!r}: IPv6 zones (%) are not supported")
        try:
            net = ip_network(value, strict=False) if kind == "net" else ip_network(ip_address(value))
        except ValueError:
            raise FilterError(f"filter {self.shown!r}: {value!r} is not an IPv4 or IPv6 {kind}") from None
        base, mask = int(net.network_address), int(net.netmask)

        def hit(addr: int | None) -> bool:
            return addr is not None and addr & mask == base

        # Each family its own fields: an IPv4 prefix never meets an IPv6 address's low 32 bits.
        if net.version == 6:
            if direction == "src":
                return lambda f: hit(f.ip6_src)
            if direction == "dst":
                return lambda f: hit(f.ip6_dst)
            return lambda f: hit(f.ip6_src) or hit(f.ip6_dst)
        if direction == "src":
            return lambda f: hit(f.ip_src)
        if direction == "dst":
            return lambda f: hit(f.ip_dst)
        return lambda f: hit(f.ip_src) or hit(f.ip_dst)

    def port_primitive(self) -> Test:
        direction = self.direction()
        if self.take("'port'") != "port":
            raise FilterError(f"filter {self.shown!r}: expected 'port'")
        port = self.number(self.take("a port number"), 65535)
        if direction == "src":
            return lambda f: f.sport == port
        if direction == "dst":
            return lambda f: f.dport == port
        return lambda f: f.sport == port or f.dport == port

    def ether(self) -> Test:
        direction = self.direction()
        if self.peek() == "host":
            self.pos += 1
        elif direction == "any":
            raise FilterError(f"filter {self.shown!r}: expected 'ether host', 'ether src' or 'ether dst'")
        value = self.take("a MAC address")
        try:
            mac = parse_mac(value)
        except ValueError:
            raise FilterError(f"filter {self.shown!r}: {value!r} is not a MAC address") from None
        if direction == "src":
            return lambda f: f.eth_src == mac
        if direction == "dst":
            return lambda f: f.eth_dst == mac
        return lambda f: f.eth_src == mac or f.eth_dst == mac

    def number(self, token: str, limit: int) -> int:
        if not token.isdigit() or int(token) > limit:
            raise FilterError(f"filter {self.shown!r}: {token!r} is not a number up to {limit}")
        return int(token)


def _all_of(terms: list[Test]) -> Test:
    """`a and b and ...` as one loop: matching depth does not grow with the number of terms."""
    chain = tuple(terms)

    def test(fields: Fields) -> bool:
        return all(term(fields) for term in chain)

    return test


def _any_of(terms: list[Test]) -> Test:
    """`a or b or ...` as one loop: matching depth does not grow with the number of terms."""
    chain = tuple(terms)

    def test(fields: Fields) -> bool:
        return any(term(fields) for term in chain)

    return test


def compile_filter(text: str | None) -> Callable[[bytes], bool]:
    """A predicate over Ethernet frames; raises FilterError for anything outside the subset."""
    if text is None or not text.strip():
        return lambda _frame: True
    test = _Parser(text).parse()

    def matches(frame: bytes) -> bool:
        fields = decode(frame)
        return fields is not None and test(fields)

    return matches
