"""NAT66: IPv6 masqueraded to the uplink address, with forwards and hairpin, over the same conntrack.

The policy is IPv4's (nat.py: endpoint-independent mapping with port preservation, address-and-port
dependent filtering, flows that start only with a SYN or an echo request, hairpin through a forward,
identity flows for what is routed in from the uplink); `Nat66` is `Nat` with IPv6's words: 128-bit
keys, ICMPv6's echo types (RFC 4443 4), and what differs in the packet:
- no header checksum, but ICMPv6's checksum covers a pseudo-header (RFC 4443 2.3), so an echo's
  rewrite changes it for the addresses as well as the identifier (action.py, ECHO6);
- fragments (RFC 8200 4.5): the first carries the ports and is translated with its flow; the rewrite
  is remembered by (protocol, source, destination, identification) for the later ones. A later one
  that comes before its first is dropped (``nat-fragment``): unlike IPv4, a sender of IPv6 fragments
  is the host itself, which sends them in order;
- ICMPv6 errors about a tracked flow are translated outer and quoted (RFC 5508's rules carried to
  IPv6, as Linux's nf_nat_icmpv6_reply_translation does), and their checksum is made again.
The IPv4 and IPv6 NATs share one conntrack (one bound, one table to show, one flow cache to tell).
"""

from __future__ import annotations

import struct
from typing import Final

from .checksum import delta, fold, internet_checksum, update_complete, update_partial
from .conntrack import KEY6, ORIGINAL, REPLY, Flow
from .counters import Drop, Event
from .icmp6 import ECHO_REPLY, ECHO_REQUEST, pseudo_header
from .ipv4 import NatChange
from .ipv6 import Packet6
from .nat import Nat, Route, _partial
from .wire import (
    IP6_DST,
    IP6_SRC,
    PORTS,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CSUM_OFF,
    TCP_FLAGS_OFF,
    U16,
    UDP_CSUM_OFF,
)

MAPPING6: Final = struct.Struct("!B16sH")
FRAGMENT_KEY6: Final = struct.Struct("!B16s16sI")  # proto, source, destination, identification
_L4_MIN: Final = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_ICMPV6: 8}
_ADDRESSES: Final = slice(IP6_SRC.start, IP6_DST.stop)
_new: Final = tuple.__new__


class Nat66(Nat):
    KEY = KEY6
    MAPPING = MAPPING6
    ICMP = PROTO_ICMPV6
    ECHO_REQUEST = ECHO_REQUEST
    ECHO_REPLY = ECHO_REPLY

    def process(self, p: Packet6, route: Route, now: float) -> NatChange | bytearray | Drop | None:  # type: ignore[override]
        """Translate a validated IPv6 packet before routing: None (route it as it is), a Drop, a
        NatChange for the forward action, or an ICMPv6 error translated outer and quoted."""
        if self.journal is not None:
            self.journal.keep(self)
        proto, l4, end = p.proto, p.l4, p.end
        if l4 < 0:
            return self._later_fragment6(p, route, now)
        need = _L4_MIN.get(proto)
        if need is None or l4 + need > end:
            if not self._needs_nat(p.iface, p.src, p.dst, route):
                return None
            return Drop.NAT_UNSUPPORTED if need is None else Drop.L4_TRUNCATED
        pkt = p.pkt
        flags = 0
        if proto == PROTO_ICMPV6:
            icmp_type = pkt[l4]
            if icmp_type == ECHO_REQUEST:
                sport, dport = U16.unpack_from(pkt, l4 + 4)[0], 0
            elif icmp_type == ECHO_REPLY:
                sport, dport = 0, U16.unpack_from(pkt, l4 + 4)[0]
            elif icmp_type < 128:  # an error (RFC 4443 2.1)
                return self._icmp_error6(p, route, now)
            else:
                return Drop.NAT_UNSUPPORTED if self._needs_nat(p.iface, p.src, p.dst, route) else None
        else:
            sport, dport = PORTS.unpack_from(pkt, l4)
            if proto == PROTO_TCP:
                flags = pkt[l4 + TCP_FLAGS_OFF]
        x = self._track(p, sport, dport, flags, route, now)
        if not isinstance(x, tuple):
            return x  # a Drop, or None: not NAT's
        if p.fragment >= 0:  # a first fragment: its later ones get its addresses
            self._keep_fragment(self._fragment_key(p), x, now)
        return self._change(p, x, pkt[l4] == ECHO_REQUEST)

    # --- fragments --------------------------------------------------------------------------------
    def _fragment_key(self, p: Packet6) -> bytes:
        ident = struct.unpack_from("!I", p.pkt, p.fragment + 4)[0]
        return FRAGMENT_KEY6.pack(p.proto, p.src, p.dst, ident)

    def _later_fragment6(self, p: Packet6, route: Route, now: float) -> NatChange | Drop | None:
        """A later fragment gets the address rewrite its first fragment got (the first one came
        before it, as a host sends them), within FRAGMENT_TIMEOUT of it (no timer expires these)."""
        entry = self.fragments.get(self._fragment_key(p))
        if entry is None or entry[1] <= now:
            return Drop.NAT_FRAGMENT if self._needs_nat(p.iface, p.src, p.dst, route) else None
        nsrc, ndst, _, addr_delta, _ = entry[0]
        self.events[Event.NAT_FRAGMENT_TRANSLATED] += 1
        p.route_to(ndst)
        return NatChange(nsrc + ndst, b"", addr_delta, 0, addresses_only=True)

    # --- ICMPv6 errors (RFC 5508 carried to IPv6) --------------------------------------------------
    def _icmp_error6(self, p: Packet6, route: Route, now: float) -> bytearray | Drop | None:
        pkt, l4, end = p.pkt, p.l4, p.end
        found = self._quoted_flow6(pkt, l4, end, now)
        if found is None:
            if (p.dst == self.address and p.iface == self.uplink) or self._needs_nat(
                p.iface, p.src, p.dst, route
            ):
                return Drop.NAT_ICMP_NO_FLOW
            return None
        flow, direction = found
        x = flow.xlate[direction]
        if x is None:
            return None
        buf = bytearray(pkt)
        # The outer header moves as a packet of `direction` would, in what that direction rewrites.
        pre = flow.orig if direction == ORIGINAL else flow.reply
        _, pre_src, _, pre_dst, _ = KEY6.unpack(pre)
        buf[IP6_SRC] = x[0] if x[0] != pre_src else pkt[IP6_SRC]
        buf[IP6_DST] = x[1] if x[1] != pre_dst else pkt[IP6_DST]
        self._translate_quoted6(buf, flow, direction, l4 + 8, end)
        if _partial(buf, l4):  # the field holds the pseudo-header sum: only the outer addresses move it
            change = delta(pkt[_ADDRESSES], bytes(buf[_ADDRESSES]))
            buf[l4 + 2 : l4 + 4] = U16.pack(update_partial(U16.unpack_from(buf, l4 + 2)[0], change))
        else:
            buf[l4 + 2 : l4 + 4] = b"\x00\x00"
            message = bytes(buf[l4:end])
            checksum = internet_checksum(
                pseudo_header(bytes(buf[IP6_SRC]), bytes(buf[IP6_DST]), len(message)) + message
            )
            buf[l4 + 2 : l4 + 4] = U16.pack(checksum)
        self.events[Event.NAT_ICMP_ERROR_TRANSLATED] += 1
        p.route_to(bytes(buf[IP6_DST]))
        return buf

    def _translate_quoted6(self, buf: bytearray, flow: Flow, direction: int, inner: int, end: int) -> None:
        """The quoted packet went the other way, translated: put back what its sender sent, and its
        checksum if the quote reaches it (its pseudo-header has the addresses, RFC 8200 8.1)."""
        back = flow.orig if direction == REPLY else flow.reply
        _, bsrc, bsp, bdst, bdp = KEY6.unpack(back)
        inner_l4 = inner + 40
        old = bytes(buf[inner + 8 : inner + 40])
        buf[inner + 8 : inner + 40] = bsrc + bdst
        change = delta(old, bsrc + bdst)
        proto = buf[inner + 6]
        if proto == PROTO_ICMPV6:
            id_at = inner_l4 + 4
            old_id = bytes(buf[id_at : id_at + 2])
            new_id = U16.pack(bsp if buf[inner_l4] == ECHO_REQUEST else bdp)
            buf[id_at : id_at + 2] = new_id
            csum_at, change = inner_l4 + 2, fold(change + delta(old_id, new_id))
        else:
            old_ports = bytes(buf[inner_l4 : inner_l4 + 4])
            buf[inner_l4 : inner_l4 + 4] = PORTS.pack(bsp, bdp)
            csum_at = inner_l4 + (TCP_CSUM_OFF if proto == PROTO_TCP else UDP_CSUM_OFF)
            change = fold(change + delta(old_ports, PORTS.pack(bsp, bdp)))
        if csum_at + 2 <= end:
            csum = U16.unpack_from(buf, csum_at)[0]
            if not (proto == PROTO_UDP and csum == 0):
                buf[csum_at : csum_at + 2] = U16.pack(update_complete(csum, change))

    def _quoted_flow6(self, pkt: bytes, l4: int, end: int, now: float) -> tuple[Flow, int] | None:
        inner = l4 + 8
        inner_l4 = inner + 40
        if inner_l4 + 8 > end or pkt[inner] >> 4 != 6:
            return None
        proto = pkt[inner + 6]  # the quote's upper layer right after its header (no extensions)
        if proto == PROTO_ICMPV6:
            ident = U16.unpack_from(pkt, inner_l4 + 4)[0]
            if pkt[inner_l4] == ECHO_REQUEST:
                sport, dport = ident, 0
            elif pkt[inner_l4] == ECHO_REPLY:
                sport, dport = 0, ident
            else:
                return None
        elif proto in (PROTO_TCP, PROTO_UDP):
            sport, dport = PORTS.unpack_from(pkt, inner_l4)
        else:
            return None
        src, dst = pkt[inner + 8 : inner + 24], pkt[inner + 24 : inner + 40]
        return self.conntrack.get(KEY6.pack(proto, dst, dport, src, sport), now)
