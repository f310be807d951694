"""The neighbour cache (RFC 826, with the bounds RFC 1122 2.3.2.2 asks for) and ARP frame building.

Pure: time comes in as ``now``. Three tables, each bounded so a flood cannot grow them:
- resolved entries (ip -> MAC), aged after ``timeout`` by one self-rescheduling pass;
- pending resolutions, each with a small queue of frames waiting for the MAC (oldest pushed out
  when full, RFC 1122 2.3.2.2 "SHOULD save at least one (the latest) packet"), retried every
  ``retry_interval`` up to ``retries`` requests;
- a negative cache of next hops that did not answer, so a stream of packets to a dead host costs one
  dict probe each, not an ARP request each.

``on_change`` is called when a resolved entry changes its MAC or interface or leaves the table (a flow
cache that put that MAC into frames must forget it). A refresh changes nothing a cache holds: it keeps
the same ``Neighbour`` object, whose ``updated`` the cache reads to respect freshness.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NamedTuple

from .counters import Drop, Event
from .journal import Journal, keep
from .wire import (
    ARP,
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    ETH_HDR,
    ETHERTYPE_ARP,
    ZERO_MAC,
    ZERO_VNET_HDR,
    mac_str,
)

MIN_SWEEP_INTERVAL: Final = 1.0
ARP_HEADER: Final = (1, 0x0800, 6, 4)  # htype Ethernet, ptype IPv4, hlen, plen (RFC 826)
ETH_PAD: Final = bytes(18)  # 14 + 28 = 42 bytes; pad to the 60-byte Ethernet minimum

# (routed frame awaiting its destination MAC, ingress iface, the packet as it arrived: an ICMP error
# about a frame that never left must quote the original, not its NAT-translated copy, RFC 5508 4.1)
# (frame, ingress interface, the packet as it arrived, the ingress port's drops)
Waiting = tuple[bytearray, int, bytes, Counter[str]]
CountDrop = Callable[[Counter[str], Drop], None]
# All frames parked behind unresolved next hops together, in bytes: TSO frames are up to 64 KB each,
# and one host could otherwise fill pending_max x queue_max of them (Linux: unres_qlen_bytes).
QUEUE_BYTES_MAX: Final = 4 << 20


class Words(NamedTuple):
    """What a neighbour cache counts and how it prints addresses: ARP's (IPv4) or NDP's (IPv6, RFC
    4861 7.3: the same states, bounds and queue; only the messages differ, and the router makes them)."""

    address: type[IPv4Address] | type[IPv6Address]
    probe: Event
    evicted: Event
    learned: Event
    changed: Event
    resolved: Event
    failed: Event
    aged: Event
    queue_full: Drop


ARP_WORDS: Final = Words(
    IPv4Address, Event.ARP_PROBE, Event.ARP_EVICTED, Event.ARP_LEARNED, Event.ARP_CHANGED,
    Event.ARP_RESOLVED, Event.ARP_FAILED, Event.ARP_AGED, Drop.ARP_QUEUE_FULL,
)  # fmt: skip
ND_WORDS: Final = Words(
    IPv6Address, Event.ND_PROBE, Event.ND_EVICTED, Event.ND_LEARNED, Event.ND_CHANGED,
    Event.ND_RESOLVED, Event.ND_FAILED, Event.ND_AGED, Drop.ND_QUEUE_FULL,
)  # fmt: skip


@dataclass(slots=True)
class Neighbour:
    mac: bytes
    iface: int
    updated: float
    probed: float = float("-inf")  # when we last asked it to confirm itself (a unicast request)


@dataclass(slots=True)
class Pending:
    iface: int
    tries: int
    next_try: float
    queue: deque[Waiting] = field(default_factory=deque)


# enqueue() outcomes
QUEUED: Final = 0
QUEUED_SEND_REQUEST: Final = 1
REJECTED: Final = 2  # too many next hops pending: the caller counts arp-pending-full
REJECTED_COUNTED: Final = 3  # the byte budget is spent: already counted as arp-queue-full


class ArpCache:
    def __init__(
        self,
        timeout: float = 300.0,
        retries: int = 3,
        retry_interval: float = 1.0,
        queue_max: int = 16,
        cache_max: int = 4096,
        pending_max: int = 256,
        negative_timeout: float = 5.0,
        events: Counter[str] | None = None,
        count_drop: CountDrop | None = None,
        words: Words = ARP_WORDS,
    ) -> None:
        """count_drop: how a drop is counted (the router's, into the dropped packet's ingress port);
        words: ARP's or NDP's counter names."""
        if timeout <= 0 or retry_interval <= 0 or negative_timeout < 0:
            raise ValueError("ARP timeouts must be positive")
        if retries < 1 or queue_max < 1 or cache_max < 1 or pending_max < 1:
            raise ValueError("ARP bounds must be at least 1")
        self.timeout = timeout
        self.retries = retries
        self.retry_interval = retry_interval
        self.queue_max = queue_max
        self.cache_max = cache_max
        self.pending_max = pending_max
        self.negative_timeout = negative_timeout
        self.count_drop: CountDrop = count_drop or _count_in_ledger
        self.words = words
        self.events: Counter[str] = events if events is not None else Counter()
        # Insertion order is refresh order (refresh re-inserts), so the first entry is the oldest.
        self.entries: dict[int, Neighbour] = {}
        self.pending: dict[int, Pending] = {}
        self.failed: dict[int, float] = {}  # ip -> negative entry expiry
        self.queued_bytes = 0
        self._next_sweep: float | None = None
        self.on_change: Callable[[], None] | None = None
        self.journal: Journal | None = None  # while a frame is traced (journal.py)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def lookup(self, ip: int, now: float) -> bytes | None:
        """The MAC to use for ip, or None when it must be resolved.

        Like Linux's STALE/PROBE states, an entry past its timeout is still used while it is asked
        to confirm itself (`probe_due`); only when the confirmation window also passes is it forgotten,
        so an active flow never stalls behind a broadcast request every `timeout` seconds.
        """
        entry = self.entries.get(ip)
        if entry is None or now - entry.updated >= self.timeout + self.confirm_window:
            return None
        return entry.mac

    @property
    def confirm_window(self) -> float:
        return self.retries * self.retry_interval

    def probe_due(self, ip: int, now: float) -> bytes | None:
        """For a stale entry in use: the MAC to send a unicast request to, at most once a retry
        interval; None while the entry is fresh or a probe is already out."""
        entry = self.entries.get(ip)
        if entry is None or now - entry.updated < self.timeout or now - entry.probed < self.retry_interval:
            return None
        keep(self.journal, self, entry)
        entry.probed = now
        self.events[self.words.probe] += 1
        return entry.mac

    def is_failed(self, ip: int, now: float) -> bool:
        until = self.failed.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        keep(self.journal, self)
        del self.failed[ip]
        return False

    def forget_macs(self, macs: set[bytes]) -> int:
        """Remove the entries that resolve to these MACs (a port that left took them); how many."""
        keep(self.journal, self)
        gone = [ip for ip, entry in self.entries.items() if entry.mac in macs]
        for ip in gone:
            del self.entries[ip]
        if gone:
            self._changed()
        return len(gone)

    def known(self, ip: int) -> bool:
        """In the table, for RFC 826's merge rule (pending resolutions count too)."""
        return ip in self.entries or ip in self.pending

    def learn(self, ip: int, mac: bytes, iface: int, now: float) -> list[Waiting]:
        """Record ip -> mac; return the frames that were waiting for it."""
        keep(self.journal, self, self.entries.get(ip))
        entry = self.entries.pop(ip, None)
        if entry is None:
            if len(self.entries) >= self.cache_max:
                self.sweep(now)
                if len(self.entries) >= self.cache_max:
                    del self.entries[next(iter(self.entries))]
                    self.events[self.words.evicted] += 1
                    self._changed()
            self.entries[ip] = Neighbour(mac, iface, now)
            self.events[self.words.learned] += 1
        else:
            if entry.mac != mac:
                self.events[self.words.changed] += 1
            if entry.mac != mac or entry.iface != iface:
                self._changed()
            entry.mac, entry.iface, entry.updated = mac, iface, now
            entry.probed = float("-inf")
            self.entries[ip] = entry
        if self._next_sweep is None:
            self._next_sweep = now + self.timeout + self.confirm_window
        self.failed.pop(ip, None)
        pending = self.pending.pop(ip, None)
        if pending is None:
            return []
        self.events[self.words.resolved] += 1
        self._forget_queue(pending)
        return list(pending.queue)

    def enqueue(
        self,
        ip: int,
        iface: int,
        frame: bytearray,
        in_iface: int,
        original: bytes,
        ledger: Counter[str],
        now: float,
    ) -> int:
        """Park a frame until ip resolves. QUEUED_SEND_REQUEST: the caller sends the first request."""
        size = len(frame) + len(original)
        keep(self.journal, self, self.pending.get(ip))
        if self.queued_bytes + size > QUEUE_BYTES_MAX:
            self.count_drop(ledger, self.words.queue_full)
            return REJECTED_COUNTED
        pending = self.pending.get(ip)
        if pending is None:
            if len(self.pending) >= self.pending_max:
                return REJECTED
            pending = Pending(iface, 1, now + self.retry_interval)
            self.pending[ip] = pending
            outcome = QUEUED_SEND_REQUEST
        else:
            outcome = QUEUED
            if len(pending.queue) >= self.queue_max:
                old_frame, _, old_original, old_ledger = pending.queue.popleft()
                self.queued_bytes -= len(old_frame) + len(old_original)
                self.count_drop(old_ledger, self.words.queue_full)
        pending.queue.append((frame, in_iface, original, ledger))
        self.queued_bytes += size
        return outcome

    def _forget_queue(self, pending: Pending) -> None:
        self.queued_bytes -= sum(len(frame) + len(original) for frame, _, original, _ in pending.queue)

    def next_deadline(self) -> float | None:
        deadline = self._next_sweep
        for pending in self.pending.values():
            if deadline is None or pending.next_try < deadline:
                deadline = pending.next_try
        return deadline

    def on_timer(self, now: float) -> tuple[list[tuple[int, int]], list[Waiting]]:
        """Retries due: ((iface, ip) to ask again, frames whose next hop failed)."""
        requests: list[tuple[int, int]] = []
        failed: list[Waiting] = []
        for ip, pending in list(self.pending.items()):
            if now < pending.next_try:
                continue
            keep(self.journal, self, pending)
            if pending.tries >= self.retries:
                del self.pending[ip]
                self._forget_queue(pending)
                self._remember_failure(ip, now)
                failed.extend(pending.queue)
                self.events[self.words.failed] += 1
            else:
                pending.tries += 1
                pending.next_try = now + self.retry_interval
                requests.append((pending.iface, ip))
        if self._next_sweep is not None and now >= self._next_sweep:
            self.sweep(now)
        return requests, failed

    def _remember_failure(self, ip: int, now: float) -> None:
        if len(self.failed) >= self.pending_max * 4:
            del self.failed[next(iter(self.failed))]
        self.failed[ip] = now + self.negative_timeout

    def sweep(self, now: float) -> None:
        """Remove expired entries; one pass, rescheduled for the next oldest entry."""
        limit = now - self.timeout - self.confirm_window
        keep(self.journal, self)
        stale = [ip for ip, e in self.entries.items() if e.updated <= limit]
        for ip in stale:
            del self.entries[ip]
        self.events[self.words.aged] += len(stale)
        if stale:
            self._changed()
        for ip in [ip for ip, until in self.failed.items() if until <= now]:
            del self.failed[ip]
        oldest = next(iter(self.entries.values()), None)
        self._next_sweep = (
            None
            if oldest is None
            else max(oldest.updated + self.timeout + self.confirm_window, now + MIN_SWEEP_INTERVAL)
        )

    def table(self, now: float) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {
                "ip": str(self.words.address(ip)),
                "mac": mac_str(e.mac),
                "iface": e.iface,
                "state": "reachable" if now - e.updated < self.timeout else "stale",
                "age": round(now - e.updated, 3),
            }
            for ip, e in self.entries.items()
        ]
        rows.extend(
            {
                "ip": str(self.words.address(ip)),
                "mac": None,
                "iface": p.iface,
                "state": "incomplete",
                "queued": len(p.queue),
            }
            for ip, p in self.pending.items()
        )
        rows.extend(
            {"ip": str(self.words.address(ip)), "mac": None, "iface": None, "state": "failed"}
            for ip, until in self.failed.items()
            if until > now
        )
        return rows


def build_arp(
    op: int, src_mac: bytes, src_ip: bytes, eth_dst: bytes, target_mac: bytes, target_ip: bytes
) -> bytes:
    """A complete ARP frame with an all-zero virtio-net header, padded to 60 bytes."""
    return b"".join(
        (
            ZERO_VNET_HDR,
            ETH_HDR.pack(eth_dst, src_mac, ETHERTYPE_ARP),
            ARP.pack(*ARP_HEADER, op, src_mac, src_ip, target_mac, target_ip),
            ETH_PAD,
        )
    )


def build_request(src_mac: bytes, src_ip: bytes, target_ip: bytes) -> bytes:
    return build_arp(ARP_REQUEST, src_mac, src_ip, BROADCAST_MAC, ZERO_MAC, target_ip)


def build_reply(src_mac: bytes, src_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
    return build_arp(ARP_REPLY, src_mac, src_ip, target_mac, target_mac, target_ip)


def _count_in_ledger(ledger: Counter[str], reason: Drop) -> None:
    ledger[reason] += 1
