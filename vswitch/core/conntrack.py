"""Connection tracking: flows keyed both ways, a TCP state machine as data, expiry on passed-in time.

The rules that govern tracking all live here (h11's ``_state.py`` style):
- A flow has two keys, like the kernel's two tuplehashes: ``orig``, the tuple of its first packet as
  it arrived, and ``reply``, the tuple a reply arrives with (after the peer saw the translated
  packet). One dict maps both keys to (flow, direction).
- TCP follows ``TCP_TRANSITIONS`` (after the kernel's ``tcp_conntracks`` table in
  nf_conntrack_proto_tcp.c, without window tracking and simultaneous open). A (direction, event,
  state) with no entry is invalid: the packet still passes, the state stays, an event is counted.
- Timeouts follow the kernel defaults; UDP gets the longer "stream" timeout once it has seen a reply.
- A flow is *assured* once TCP reached ESTABLISHED or UDP/ICMP saw a reply. When the table is full,
  the oldest unassured flow is evicted (the kernel's early_drop); if every flow is assured, the new
  one is refused.
- Expiry is one pass, run at the core's single deadline; a lookup also treats an expired flow as gone,
  so behaviour never depends on when the pass ran.
- A packet that leaves a flow's state as it was (an ACK-only TCP segment of an ESTABLISHED flow, a UDP
  packet that does not flip "replied") only counts and refreshes the timeout: ``steady_timeout``
  says which timeout, ``refresh`` applies it. A flow cache replays such packets without ``update``;
  ``on_change`` tells it when a flow is inserted, changes state or goes, so the replay stays exact.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from .counters import Event
from .journal import Journal, keep
from .wire import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

KEY: Final = struct.Struct("!B4sH4sH")  # proto, src, sport, dst, dport: a flow key, as bytes
KEY6: Final = struct.Struct("!B16sH16sH")  # the same for IPv6 (NAT66 shares the table: keys differ in size)
ORIGINAL: Final = 0
REPLY: Final = 1
MIN_PASS_INTERVAL: Final = 1.0


class TcpState(IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8


class TcpEvent(IntEnum):
    SYN = 0
    SYNACK = 1
    FIN = 2
    ACK = 3
    RST = 4
    NONE = 5


def tcp_event(flags: int) -> TcpEvent:
    """The kernel's get_conntrack_index: RST wins, then SYN(+ACK), FIN, ACK."""
    if flags & TCP_RST:
        return TcpEvent.RST
    if flags & TCP_SYN:
        return TcpEvent.SYNACK if flags & TCP_ACK else TcpEvent.SYN
    if flags & TCP_FIN:
        return TcpEvent.FIN
    if flags & TCP_ACK:
        return TcpEvent.ACK
    return TcpEvent.NONE


S = TcpState
_CLOSING: Final[dict[TcpState, TcpState]] = {
    S.SYN_RECV: S.FIN_WAIT,
    S.ESTABLISHED: S.FIN_WAIT,
    S.FIN_WAIT: S.LAST_ACK,
    S.CLOSE_WAIT: S.LAST_ACK,
    S.LAST_ACK: S.LAST_ACK,
    S.TIME_WAIT: S.TIME_WAIT,
    S.CLOSE: S.CLOSE,
}
_RESET: Final[dict[TcpState, TcpState]] = {s: S.CLOSE for s in S if s is not S.NONE}

# (direction, event) -> {state before: state after}; missing means invalid.
TCP_TRANSITIONS: Final[Mapping[tuple[int, TcpEvent], Mapping[TcpState, TcpState]]] = {
    (ORIGINAL, TcpEvent.SYN): {
        S.NONE: S.SYN_SENT,
        S.SYN_SENT: S.SYN_SENT,  # retransmission
        S.TIME_WAIT: S.SYN_SENT,  # the port is reused: a new connection
        S.CLOSE: S.SYN_SENT,
    },
    (ORIGINAL, TcpEvent.FIN): _CLOSING,
    (ORIGINAL, TcpEvent.ACK): {
        S.SYN_RECV: S.ESTABLISHED,  # the third packet of the handshake
        S.ESTABLISHED: S.ESTABLISHED,
        S.FIN_WAIT: S.CLOSE_WAIT,  # the first FIN is acknowledged
        S.CLOSE_WAIT: S.CLOSE_WAIT,
        S.LAST_ACK: S.TIME_WAIT,  # the second FIN is acknowledged
        S.TIME_WAIT: S.TIME_WAIT,
        S.CLOSE: S.CLOSE,
    },
    (ORIGINAL, TcpEvent.RST): _RESET,
    (REPLY, TcpEvent.SYNACK): {
        S.SYN_SENT: S.SYN_RECV,
        S.SYN_RECV: S.SYN_RECV,  # retransmission
    },
    (REPLY, TcpEvent.FIN): _CLOSING,
    (REPLY, TcpEvent.ACK): {
        S.SYN_RECV: S.SYN_RECV,  # the responder repeats itself; the handshake is not done
        S.ESTABLISHED: S.ESTABLISHED,
        S.FIN_WAIT: S.CLOSE_WAIT,
        S.CLOSE_WAIT: S.CLOSE_WAIT,
        S.LAST_ACK: S.TIME_WAIT,
        S.TIME_WAIT: S.TIME_WAIT,
        S.CLOSE: S.CLOSE,
    },
    (REPLY, TcpEvent.RST): _RESET,
}
del S

# nf_conntrack_proto_tcp.c tcp_timeouts[] defaults, in seconds
DEFAULT_TCP_TIMEOUTS: Final[Mapping[TcpState, float]] = {
    TcpState.NONE: 10.0,
    TcpState.SYN_SENT: 120.0,
    TcpState.SYN_RECV: 60.0,
    TcpState.ESTABLISHED: 432000.0,
    TcpState.FIN_WAIT: 120.0,
    TcpState.CLOSE_WAIT: 60.0,
    TcpState.LAST_ACK: 30.0,
    TcpState.TIME_WAIT: 120.0,
    TcpState.CLOSE: 10.0,
}


@dataclass(frozen=True)
class Timeouts:
    tcp: Mapping[TcpState, float] = field(default_factory=lambda: dict(DEFAULT_TCP_TIMEOUTS))
    udp: float = 30.0  # nf_conntrack_udp_timeout
    udp_stream: float = 120.0  # nf_conntrack_udp_timeout_stream, once a reply was seen
    icmp: float = 30.0  # nf_conntrack_icmp_timeout


@dataclass(slots=True, eq=False)
class Flow:
    """One tracked connection. Translation fields are filled in by the NAT that created it."""

    proto: int
    orig: bytes  # KEY of the original direction, as it arrives
    reply: bytes  # KEY of the reply direction, as it arrives
    created: float
    expires: float = 0.0
    state: TcpState = TcpState.NONE
    assured: bool = False
    replied: bool = False
    packets: list[int] = field(default_factory=lambda: [0, 0])
    # per direction: (new src, new dst, new ports (4 bytes), address delta, port delta) or None
    xlate: list[tuple[bytes, bytes, bytes, int, int] | None] = field(default_factory=lambda: [None, None])
    mapping: bytes | None = None  # the NAT's endpoint-independent mapping key, to release


class Conntrack:
    def __init__(
        self,
        max_flows: int = 65536,
        timeouts: Timeouts | None = None,
        on_remove: Callable[[Flow], None] | None = None,
        events: Counter[str] | None = None,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.max_flows = max_flows
        self.timeouts = timeouts or Timeouts()
        self.on_remove = on_remove
        self.events: Counter[str] = events if events is not None else Counter()
        # Told about every flow inserted, removed or changing state (a flow cache forgets its entries).
        self.on_change: Callable[[Flow], None] | None = None
        self.keys: dict[bytes, tuple[Flow, int]] = {}
        self.flows: dict[Flow, None] = {}  # insertion ordered: oldest first
        self._unassured: dict[Flow, None] = {}
        self._next_pass: float | None = None
        self.journal: Journal | None = None  # while a frame is traced (journal.py)

    def __len__(self) -> int:
        return len(self.flows)

    def get(self, key: bytes, now: float) -> tuple[Flow, int] | None:
        found = self.keys.get(key)
        if found is not None and found[0].expires <= now:
            self.remove(found[0], Event.CONNTRACK_EXPIRED)
            return None
        return found

    def make_room(self, now: float) -> bool:
        """Ensure one free slot: early-drop the oldest unassured flow if the table is full."""
        if len(self.flows) < self.max_flows:
            return True
        self.expire(now)
        if len(self.flows) < self.max_flows:
            return True
        if not self._unassured:
            return False
        self.remove(next(iter(self._unassured)), Event.CONNTRACK_EARLY_DROP)
        return True

    def insert(self, flow: Flow, now: float) -> None:
        """Add a flow (call make_room first); its first packet is counted by update()."""
        keep(self.journal, self)
        if flow.orig in self.keys or flow.reply in self.keys or flow.orig == flow.reply:
            raise ValueError("flow key already tracked, or a flow that is its own reply")
        self.keys[flow.orig] = (flow, ORIGINAL)
        self.keys[flow.reply] = (flow, REPLY)
        self.flows[flow] = None
        self._unassured[flow] = None
        self.events[Event.CONNTRACK_NEW] += 1
        if self.on_change is not None:
            self.on_change(flow)  # its keys may have been routed untracked until now

    def update(self, flow: Flow, direction: int, tcp_flags: int, now: float) -> bool:
        """Account a packet of the flow; False if the TCP transition is invalid (it still passes)."""
        if self.journal is not None:  # tested here, not in keep(): every NAT packet on the slow path
            self.journal.keep(self, flow)
        flow.packets[direction] += 1
        timeouts = self.timeouts
        valid = True
        if flow.proto == PROTO_TCP:
            table = TCP_TRANSITIONS.get((direction, tcp_event(tcp_flags)))
            after = None if table is None else table.get(flow.state)
            if after is None:
                valid = False
                self.events[Event.CONNTRACK_TCP_INVALID] += 1
            else:
                if after is not flow.state and self.on_change is not None:
                    self.on_change(flow)
                flow.state = after
                if after is TcpState.ESTABLISHED and not flow.assured:
                    self._assure(flow)
            timeout = timeouts.tcp[flow.state]
        else:
            if direction == REPLY and not flow.replied:
                if self.on_change is not None:
                    self.on_change(flow)
                flow.replied = True
                self._assure(flow)
            if flow.proto == PROTO_UDP:
                timeout = timeouts.udp_stream if flow.replied else timeouts.udp
            else:
                timeout = timeouts.icmp
        flow.expires = now + timeout
        if self._next_pass is None or flow.expires < self._next_pass:
            self._next_pass = flow.expires
        return valid

    def steady_timeout(self, flow: Flow, direction: int) -> float | None:
        """The timeout a routine packet in this direction gives the flow, when that packet changes
        nothing but the counters and the expiry; None when it would change the flow's state.

        Routine: for TCP an ACK-only segment (no SYN, FIN or RST), which keeps ESTABLISHED as it is
        in both directions; for UDP and ICMP echo any packet, except the first reply (it sets
        "replied").
        """
        if flow.proto == PROTO_TCP:
            return self.timeouts.tcp[TcpState.ESTABLISHED] if flow.state is TcpState.ESTABLISHED else None
        if flow.proto == PROTO_UDP:
            if flow.replied:
                return self.timeouts.udp_stream
            return self.timeouts.udp if direction == ORIGINAL else None
        if flow.proto in (PROTO_ICMP, PROTO_ICMPV6):  # echo: like UDP, one timeout whether answered or not
            return self.timeouts.icmp if flow.replied or direction == ORIGINAL else None
        return None

    def refresh(self, flow: Flow, direction: int, timeout: float, now: float) -> None:
        """What ``update`` does for a routine packet (see ``steady_timeout``): count it, push the
        expiry out. The caller has checked that the flow has not expired."""
        if self.journal is not None:
            keep(self.journal, self, flow)
        flow.packets[direction] += 1
        expires = flow.expires = now + timeout
        if self._next_pass is None or expires < self._next_pass:
            self._next_pass = expires

    def _assure(self, flow: Flow) -> None:
        flow.assured = True
        self._unassured.pop(flow, None)

    def remove(self, flow: Flow, event: Event = Event.CONNTRACK_REMOVED) -> None:
        keep(self.journal, self, flow)
        if flow not in self.flows:
            return  # already gone (expired during a lookup, then swept)
        del self.flows[flow]
        self.keys.pop(flow.orig, None)
        self.keys.pop(flow.reply, None)
        self._unassured.pop(flow, None)
        self.events[event] += 1
        if self.on_remove is not None:
            self.on_remove(flow)
        if self.on_change is not None:
            self.on_change(flow)

    def next_deadline(self) -> float | None:
        return self._next_pass

    def expire(self, now: float) -> int:
        """Remove every flow whose timeout passed; reschedule for the next one to go."""
        keep(self.journal, self)
        if self._next_pass is None or now < self._next_pass:
            return 0
        stale = [f for f in self.flows if f.expires <= now]
        for flow in stale:
            self.remove(flow, Event.CONNTRACK_EXPIRED)
        soonest = min((f.expires for f in self.flows), default=None)
        self._next_pass = None if soonest is None else max(soonest, now + MIN_PASS_INTERVAL)
        return len(stale)

    def table(self, now: float) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for flow in self.flows:
            proto = flow.proto
            rows.append(
                {
                    "proto": proto_name(proto),
                    "orig": tuple_text(flow.orig),
                    "reply": tuple_text(flow.reply),
                    "state": flow.state.name if proto == PROTO_TCP else None,
                    "assured": flow.assured,
                    "expires_in": round(flow.expires - now, 3),
                    "packets": list(flow.packets),
                }
            )
        return rows


def proto_name(proto: int) -> str:
    return {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}.get(proto, str(proto))


def tuple_text(key: bytes) -> str:
    """A KEY as people read it: 10.1.0.2:40000 -> 198.19.5.5:80, or [fd00::2]:40000 -> [2001:2::1]:80."""
    if len(key) == KEY6.size:
        _, src, sport, dst, dport = KEY6.unpack(key)
        return f"[{IPv6Address(src)}]:{sport} -> [{IPv6Address(dst)}]:{dport}"
    _, src, sport, dst, dport = KEY.unpack(key)
    return f"{IPv4Address(src)}:{sport} -> {IPv4Address(dst)}:{dport}"


def describe(flow: Flow) -> str:
    """A flow as trace shows it: its protocol, then its two tuples."""
    return f"{proto_name(flow.proto)} flow {tuple_text(flow.orig)}, reply {tuple_text(flow.reply)}"
