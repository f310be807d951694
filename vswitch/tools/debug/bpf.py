"""A small subset of tcpdump's filter language (pcap-filter(7)), compiled to a Python predicate.

The predicate reads the raw Ethernet frame (no virtio-net header) at fixed offsets, so it runs inside
the switch process without scapy. Supported, combined with ``and``/``&&``, ``or``/``||``,
``not``/``!`` and parentheses (``not`` binds tightest, then ``and``, then ``or``):

- protocols: ``ether``, ``ip``, ``ip6``, ``arp``, ``vlan``, ``icmp``, ``tcp``, ``udp``;
- ``[src|dst] host ADDR`` (IPv4; matches IPv4 and ARP addresses), ``src ADDR``, ``dst ADDR``;
- ``[src|dst] net CIDR``;
- ``[tcp|udp] [src|dst] port N`` (TCP or UDP; the first fragment only);
- ``ether [src|dst] host MAC`` and ``ether src MAC``, ``ether dst MAC``;
- ``greater N`` and ``less N`` (frame length).

Not supported: byte-offset expressions (``tcp[13] & 2``), IPv6 addresses, ``portrange``, names
instead of numbers, and tcpdump's id-list abbreviations (``host a or b``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from ...core.wire import parse_mac

ETHERTYPES: Final = {"ip": 0x0800, "arp": 0x0806, "ip6": 0x86DD, "vlan": 0x8100}
IP_PROTOS: Final = {"icmp": 1, "tcp": 6, "udp": 17}
TOKEN: Final = re.compile(r"\s+|&&|\|\||!|\(|\)|[^\s()!&|]+|.")
# Parentheses and `not` nest: each level costs a few Python frames to parse and to match, so the depth
# is capped far below the interpreter's recursion limit (1000) and far above any filter a person writes.
# Chains of `and`/`or` do not nest: they are flat lists, any length.
MAX_NESTING: Final = 64


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
    proto: int | None = None
    sport: int | None = None
    dport: int | None = None


def decode(frame: bytes) -> Fields | None:
    """Fields of an Ethernet frame; None for anything shorter than an Ethernet header."""
    if len(frame) < 14:
        return None
    ethertype = frame[12] << 8 | frame[13]
    base = Fields(len(frame), bytes(frame[6:12]), bytes(frame[0:6]), ethertype)
    if ethertype == 0x0806 and len(frame) >= 42:
        spa = int.from_bytes(frame[28:32], "big")
        tpa = int.from_bytes(frame[38:42], "big")
        return Fields(base.length, base.eth_src, base.eth_dst, ethertype, spa, tpa)
    if ethertype != 0x0800 or len(frame) < 34 or frame[14] >> 4 != 4:
        return base
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    sport = dport = None
    first_fragment = (frame[20] << 8 | frame[21]) & 0x1FFF == 0
    l4 = 14 + ihl
    if proto in (6, 17) and first_fragment and len(frame) >= l4 + 4:
        sport = frame[l4] << 8 | frame[l4 + 1]
        dport = frame[l4 + 2] << 8 | frame[l4 + 3]
    return Fields(base.length, base.eth_src, base.eth_dst, ethertype, src, dst, proto, sport, dport)


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
        if word in ("tcp", "udp") and self.peek() in ("port", "src", "dst"):
            proto = IP_PROTOS[word]
            port = self.port_primitive()
            return lambda f: f.proto == proto and port(f)
        if word in IP_PROTOS:
            proto = IP_PROTOS[word]
            return lambda f: f.ethertype == 0x0800 and f.proto == proto
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
        try:
            net = IPv4Network(value, strict=False) if kind == "net" else IPv4Network(IPv4Address(value))
        except ValueError:
            raise FilterError(f"filter {self.shown!r}: {value!r} is not an IPv4 {kind}") from None
        base, mask = int(net.network_address), int(net.netmask)

        def hit(addr: int | None) -> bool:
            return addr is not None and addr & mask == base

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
