"""The router's services as configured: DHCP and DNS on the routed segments (core/dhcp.py, core/dns.py).

On by default wherever there is a router, as on a libvirt or LXD network; `--no-dhcp` and `--no-dns`
turn them off. The options are checked against the topology once it is built (`check`): a pool or a
reservation lies inside one segment's subnet and clear of the router's and the ports' addresses, and
an upstream resolver needs the uplink that reaches it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, ip_address
from typing import Any, Final, Protocol

from .errors import ConfigError

DEFAULT_LEASE_TIME: Final = 3600.0
LEASE_TIME_MIN: Final = 2.0  # a test's; RFC 2131 sets no floor (dnsmasq's is 120 s)
LEASE_TIME_MAX: Final = 365 * 86400.0
DNS_PORT: Final = 53
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNITS: Final = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAC: Final = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")


@dataclass(frozen=True)
class DhcpHost:
    """A reservation (`--dhcp-host MAC=ADDR[,NAME]`): this client always gets this address (and name)."""

    mac: bytes
    address: IPv4Address
    name: str | None = None


@dataclass
class ServicesSpec:
    dhcp: bool = True
    dhcp_ranges: list[tuple[IPv4Address, IPv4Address]] = field(default_factory=list)
    dhcp_hosts: list[DhcpHost] = field(default_factory=list)
    lease_time: float = DEFAULT_LEASE_TIME
    dns: bool = True
    dns_upstream: tuple[IPv4Address | IPv6Address, int] | None = None

    @property
    def given(self) -> list[str]:
        """The options that ask for a router's services (refused on a plain switch)."""
        given = []
        if self.dhcp_ranges:
            given.append("--dhcp-range")
        if self.dhcp_hosts:
            given.append("--dhcp-host")
        if self.lease_time != DEFAULT_LEASE_TIME:
            given.append("--lease-time")
        if self.dns_upstream is not None:
            given.append("--dns-upstream")
        return given


# --- one value each ---------------------------------------------------------------------------------
def parse_duration(text: str, what: str) -> float:
    """Seconds, or a number with a unit: 90, 90s, 30m, 1h, 1d."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{what} {text!r}: a duration like 3600, 90s, 30m, 1h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def check_lease_time(seconds: float, what: str = "--lease-time") -> float:
    if not (math.isfinite(seconds) and LEASE_TIME_MIN <= seconds <= LEASE_TIME_MAX):
        raise ConfigError(f"{what} must be {LEASE_TIME_MIN:g} s to 365 days, not {seconds:g} s")
    return seconds


def parse_dhcp_range(text: str) -> tuple[IPv4Address, IPv4Address]:
    """START-END, two IPv4 addresses of one segment."""
    first, sep, last = text.partition("-")
    try:
        if not sep:
            raise ValueError
        start, end = IPv4Address(first.strip()), IPv4Address(last.strip())
    except ValueError:
        raise ConfigError(f"--dhcp-range {text!r}: give START-END, e.g. 10.0.0.100-10.0.0.199") from None
    if start > end:
        raise ConfigError(f"--dhcp-range {text!r}: the start is after the end")
    return start, end


def parse_dhcp_host(text: str) -> DhcpHost:
    """MAC=ADDR[,NAME]."""
    mac_text, sep, rest = text.partition("=")
    mac_text = mac_text.strip()
    if not sep or not _MAC.fullmatch(mac_text):
        raise ConfigError(f"--dhcp-host {text!r}: give MAC=ADDR[,NAME], e.g. 02:00:00:00:00:10=10.0.0.10,web")
    mac = bytes.fromhex(re.sub("[:-]", "", mac_text))
    if mac[0] & 1 or mac == bytes(6):
        raise ConfigError(f"--dhcp-host {text!r}: a reservation needs a unicast MAC")
    address_text, _, name = rest.partition(",")
    try:
        address = IPv4Address(address_text.strip())
    except ValueError:
        raise ConfigError(f"--dhcp-host {text!r}: {address_text.strip()!r} is not an IPv4 address") from None
    name = name.strip().lower()
    if name and not _LABEL.fullmatch(name):
        raise ConfigError(f"--dhcp-host {text!r}: the name must be one DNS label (letters, digits, '-')")
    return DhcpHost(mac, address, name or None)


def parse_dns_upstream(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    """ADDR, ADDR:PORT (IPv4) or [ADDR]:PORT (IPv6)."""
    host, port = text.strip(), DNS_PORT
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", host)
    if bracketed:
        host, port = bracketed.group(1), int(bracketed.group(2) or DNS_PORT)
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
        if not port_text.isdigit():
            raise ConfigError(f"--dns-upstream {text!r}: the port must be a number")
        port = int(port_text)
    try:
        address = ip_address(host)
    except ValueError:
        raise ConfigError(
            f"--dns-upstream {text!r}: give an address (ADDR, ADDR:PORT or [ADDR]:PORT)"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"--dns-upstream {text!r}: the port must be 1 to 65535")
    if address.is_unspecified or address.is_multicast:
        raise ConfigError(f"--dns-upstream {text!r}: not a resolver's address")
    return address, port


def from_toml(data: dict[str, Any]) -> ServicesSpec:
    """The keys dhcp, dhcp_range, dhcp_host, lease_time, dns and dns_upstream of a config file."""
    spec = ServicesSpec()
    for key in ("dhcp", "dns"):
        value = data.get(key, True)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        setattr(spec, key, value)
    spec.dhcp_ranges = [parse_dhcp_range(text) for text in _strings(data, "dhcp_range")]
    spec.dhcp_hosts = [parse_dhcp_host(text) for text in _strings(data, "dhcp_host")]
    if "lease_time" in data:
        value = data["lease_time"]
        if isinstance(value, str):
            seconds = parse_duration(value, "lease_time")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise ConfigError(f"lease_time must be seconds or a duration like '1h', not {value!r}")
        spec.lease_time = check_lease_time(seconds, "lease_time")
    if "dns_upstream" in data:
        value = data["dns_upstream"]
        if not isinstance(value, str):
            raise ConfigError("dns_upstream must be a string (ADDR, ADDR:PORT or [ADDR]:PORT)")
        spec.dns_upstream = parse_dns_upstream(value)
    return spec


TOML_KEYS: Final = {"dhcp", "dhcp_range", "dhcp_host", "lease_time", "dns", "dns_upstream"}


def _strings(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings")
    return list(value)


# --- against the topology ---------------------------------------------------------------------------
class Port(Protocol):
    """What check reads of topology.PortSpec (a protocol: topology imports this module)."""

    @property
    def label(self) -> str: ...

    @property
    def address(self) -> IPv4Interface | None: ...


class Segment(Protocol):
    """What check reads of topology.SegmentSpec."""

    name: str
    subnet: IPv4Network
    gateway: IPv4Interface | None
    ports: list[Any]


class Topology(Protocol):
    """What check reads of topology.Topology."""

    routed: bool
    uplink: Any
    segments: list[Any]


def check(spec: ServicesSpec, topology: Topology) -> None:
    """Refuse what cannot work: services without a router, a pool or a reservation outside the
    segments or on an address that is taken, an upstream with no uplink to reach it by."""
    if not topology.routed:
        if spec.given:
            raise ConfigError(
                f"{', '.join(spec.given)} need(s) a router: give --segment or --uplink (DHCP and DNS "
                "are served on routed segments)"
            )
        return
    if spec.dns_upstream is not None and topology.uplink is None:
        raise ConfigError("--dns-upstream needs --uplink: the upstream resolver is asked from its namespace")
    if spec.dns_upstream is not None and not spec.dns:
        raise ConfigError("--dns-upstream and --no-dns contradict each other")
    if not spec.dhcp and (spec.dhcp_ranges or spec.dhcp_hosts):
        raise ConfigError("--dhcp-range and --dhcp-host need DHCP: drop --no-dhcp")
    served: list[Segment] = [s for s in topology.segments if s.gateway is not None]
    taken = _taken(topology)
    for start, end in spec.dhcp_ranges:
        segment = _segment_of(served, start)
        if segment is None or end not in segment.subnet:
            raise ConfigError(f"--dhcp-range {start}-{end}: not inside one segment's subnet")
        if start == segment.subnet.network_address or end == segment.subnet.broadcast_address:
            raise ConfigError(
                f"--dhcp-range {start}-{end}: the subnet's network and broadcast addresses are not hosts"
            )
    ranged = {_segment_of(served, start).name for start, _ in spec.dhcp_ranges}  # type: ignore[union-attr]
    if len(ranged) != len(spec.dhcp_ranges):
        raise ConfigError("--dhcp-range: one range per segment")
    macs: set[bytes] = set()
    addresses: set[IPv4Address] = set()
    for host in spec.dhcp_hosts:
        what = f"--dhcp-host {host.address}"
        if _segment_of(served, host.address) is None:
            raise ConfigError(f"{what}: not inside a routed segment's subnet")
        if host.address in taken:
            raise ConfigError(f"{what}: the address is {taken[host.address]}'s")
        if host.mac in macs or host.address in addresses:
            raise ConfigError(f"{what}: a MAC or an address is reserved twice")
        macs.add(host.mac)
        addresses.add(host.address)


def _segment_of(segments: list[Segment], address: IPv4Address) -> Segment | None:
    return next((s for s in segments if address in s.subnet), None)


def _taken(topology: Topology) -> dict[IPv4Address, str]:
    """The addresses already somebody's: the router's and the ports' fixed ones."""
    taken: dict[IPv4Address, str] = {}
    for segment in topology.segments:
        if segment.gateway is not None:
            taken[segment.gateway.ip] = "the router"
        for port in segment.ports:
            if port.address is not None:
                taken[port.address.ip] = f"port {port.label}"
    return taken
