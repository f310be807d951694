"""The routing tables, IPv4 and IPv6: longest-prefix match over connected and static routes.

One dict per prefix length present, keyed by the masked network address as an int, probed longest
first: a lookup costs one mask and one dict probe per distinct prefix length (at most 33 or 129,
usually 2 or 3), with no per-lookup allocation. One table holds one family (`bits`: 32 or 128).
Connected routes (from interface addresses) win over a static route for the same prefix, as an
administrative distance of 0 does (RFC 1812 5.2.4.3).
Every change is reported to ``on_change`` (a flow cache drops what it derived from the old table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

NextHop = tuple[int, int | None]  # (egress iface, gateway as int or None when directly connected)


@dataclass(frozen=True, slots=True)
class Route:
    """A route; iface None means "find the iface from the gateway's connected route"."""

    prefix: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address | None = None
    iface: int | None = None


class RouteError(ValueError):
    """A route that cannot be installed (our own misuse, not bad input from the wire)."""


class RouteTable:
    def __init__(self, bits: int = 32) -> None:
        self.bits = bits
        self._address: type[IPv4Address] | type[IPv6Address] = IPv4Address if bits == 32 else IPv6Address
        # (prefix length, mask, {network int: (route, next hop, connected)}), longest first
        self._levels: list[tuple[int, int, dict[int, tuple[Route, NextHop, bool]]]] = []
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _level(self, length: int) -> dict[int, tuple[Route, NextHop, bool]]:
        for plen, _, existing in self._levels:
            if plen == length:
                return existing
        ones = (1 << self.bits) - 1
        mask = (ones << (self.bits - length)) & ones
        table: dict[int, tuple[Route, NextHop, bool]] = {}
        self._levels.append((length, mask, table))
        self._levels.sort(key=lambda level: -level[0])
        return table

    def add_connected(self, prefix: IPv4Network | IPv6Network, iface: int) -> None:
        """The subnet of an interface address: reached directly on iface."""
        route = Route(prefix, None, iface)
        self._level(prefix.prefixlen)[int(prefix.network_address)] = (route, (iface, None), True)
        self._changed()

    def add(self, route: Route) -> None:
        """A static route. A gateway must be on a connected subnet (no recursive lookup)."""
        if route.prefix.max_prefixlen != self.bits:
            raise RouteError(f"route {route.prefix} is not of this table's family")
        if route.via is None:
            if route.iface is None:
                raise RouteError(f"route {route.prefix} has neither gateway nor interface")
            hop: NextHop = (route.iface, None)
        else:
            gateway = int(route.via)
            found = self._connected(gateway)
            if found is None:
                raise RouteError(f"gateway {route.via} is not on a connected subnet")
            if route.iface is not None and route.iface != found:
                raise RouteError(f"gateway {route.via} is not on interface {route.iface}")
            hop = (found, gateway)
        table = self._level(route.prefix.prefixlen)
        key = int(route.prefix.network_address)
        existing = table.get(key)
        if existing is not None and existing[2]:
            return  # the connected route stays
        table[key] = (route, hop, False)
        self._changed()

    def _connected(self, address: int) -> int | None:
        for _, mask, table in self._levels:
            entry = table.get(address & mask)
            if entry is not None and entry[2]:
                return entry[1][0]
        return None

    def lookup(self, address: int) -> NextHop | None:
        """The (egress iface, gateway or None) for a destination, longest prefix first."""
        for _, mask, table in self._levels:
            entry = table.get(address & mask)
            if entry is not None:
                return entry[1]
        return None

    def routes(self) -> Iterable[tuple[Route, NextHop, bool]]:
        for _, _, table in self._levels:
            yield from table.values()

    def table(self) -> list[dict[str, object]]:
        """JSON-ready rows, longest prefix first."""
        return [
            {
                "prefix": str(route.prefix),
                "via": None if hop[1] is None else str(self._address(hop[1])),
                "iface": hop[0],
                "type": "connected" if connected else "static",
            }
            for route, hop, connected in self.routes()
        ]
