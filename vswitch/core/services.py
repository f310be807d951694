"""What the router asks of the services on its addresses, and the records passed between them.

The servers themselves (vswitch.services: DHCP over scapy's message format, DNS over dnspython's) sit
in a layer above the core: their libraries load socket and friends, which the core never does. The
router holds them through these protocols, hands them a message with the time, and sends what they
answer; the datapath's trace journals them like any table (`journal`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .counters import Drop

if TYPE_CHECKING:
    from .journal import Journal


class Reply(NamedTuple):
    """A DHCP message to send: to dst_mac/dst (broadcast, or the client's own), from src, the server."""

    iface: int
    dst_mac: bytes
    dst: IPv4Address
    src: IPv4Address
    payload: bytes
    what: str = ""  # for a trace: "OFFER 10.0.0.66", "NAK: wrong network"


class Client(NamedTuple):
    """Who asked our DNS, and where: the answer goes back from `server` (the address it asked)."""

    iface: int
    v6: bool
    address: bytes
    port: int
    server: bytes


class DhcpService(Protocol):
    events: Counter[str]
    journal: Journal | None

    def receive(
        self, iface: int, port: int, src_mac: bytes, payload: bytes, now: float, ledger: Counter[str]
    ) -> list[Reply] | Drop: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...

    def forget_port(self, port: int) -> int: ...

    def bound(self, now: float) -> Sequence[object]: ...  # the leases in force (metrics, status)


class DnsService(Protocol):
    events: Counter[str]
    journal: Journal | None
    domain: str

    @property
    def cache(self) -> Mapping[Any, object]: ...  # the answers kept (metrics, stats)

    def query(self, payload: bytes, client: Client, now: float) -> bytes | Drop | None: ...

    def upstream_reply(
        self, wire: bytes, now: float, over_tcp: bool = False
    ) -> list[tuple[Client, bytes]]: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> list[tuple[Client, bytes]]: ...
