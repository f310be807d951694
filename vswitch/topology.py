"""What the user asked for, validated and resolved to concrete names and addresses. Pure: no IO.

The command line and the TOML file both produce a `Topology`; everything downstream (the kernel
plumbing, the datapath) reads only this. A bad value raises ConfigError with one sentence for the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from .fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from .tap import valid_ifname

DEFAULT_SUBNET = IPv4Network("10.0.0.0/24")
DEFAULT_IFNAME = "eth0"
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
INSTANCE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,11}")


class ConfigError(Exception):
    """A command line or configuration the user must fix; str() is the one line we print."""


@dataclass(frozen=True)
class PortSpec:
    """One namespace's port: the interface vswitch puts in it and its address."""

    namespace: str
    ifname: str = DEFAULT_IFNAME
    address: IPv4Interface | None = None  # None until resolved: the next free host of the subnet

    @property
    def label(self) -> str:
        """How the user names this port in other commands (capture, trace): the namespace."""
        return self.namespace


@dataclass
class SegmentSpec:
    name: str
    subnet: IPv4Network
    ports: list[PortSpec] = field(default_factory=list)


@dataclass
class Topology:
    name: str = "default"
    segments: list[SegmentSpec] = field(default_factory=list)
    ageing: float = DEFAULT_AGEING
    fdb_max: int = DEFAULT_MAX_ENTRIES

    @property
    def ports(self) -> list[PortSpec]:
        return [p for s in self.segments for p in s.ports]


def check_namespace(name: str) -> str:
    if not NAMESPACE_RE.fullmatch(name):
        raise ConfigError(
            f"invalid namespace name {name!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    return name


def check_instance(name: str) -> str:
    if not INSTANCE_RE.fullmatch(name):
        raise ConfigError(
            f"invalid instance name {name!r}: use 1-12 lower-case letters, digits, '_', '-'"
        )
    return name


def parse_port(text: str) -> PortSpec:
    """`ns`, `ns:ifname` or `ns:ifname=10.0.0.7/24`."""
    text = text.strip()
    address: IPv4Interface | None = None
    if "=" in text:
        text, addr_text = text.split("=", 1)
        try:
            address = IPv4Interface(addr_text)
        except ValueError:
            raise ConfigError(f"invalid address {addr_text!r} for port {text!r}") from None
        if "/" not in addr_text:
            raise ConfigError(f"address {addr_text!r} needs a prefix length, e.g. {addr_text}/24")
    namespace, _, ifname = text.partition(":")
    check_namespace(namespace)
    ifname = ifname or DEFAULT_IFNAME
    if not valid_ifname(ifname):
        raise ConfigError(f"invalid interface name {ifname!r}: 1-15 characters, no '/', ':' or space")
    return PortSpec(namespace, ifname, address)


def parse_ports(text: str) -> list[PortSpec]:
    items = [item for item in text.split(",")]
    if not text.strip() or any(not item.strip() for item in items):
        raise ConfigError("--ports needs a comma-separated list of namespaces, e.g. ns1,ns2,ns3")
    return [parse_port(item) for item in items]


def parse_subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        raise ConfigError(f"invalid subnet {text!r}, e.g. 10.0.0.0/24") from None


def assign_addresses(segment: SegmentSpec, reserved: set[IPv4Address] | None = None) -> None:
    """Give each port without an address the next free host of the segment's subnet, in order."""
    taken = set(reserved or ())
    taken.update(p.address.ip for p in segment.ports if p.address is not None)
    hosts = (h for h in segment.subnet.hosts() if h not in taken)
    resolved: list[PortSpec] = []
    for port in segment.ports:
        if port.address is None:
            host = next(hosts, None)
            if host is None:
                raise ConfigError(
                    f"subnet {segment.subnet} is too small for {len(segment.ports)} ports"
                )
            port = PortSpec(port.namespace, port.ifname, IPv4Interface(f"{host}/{segment.subnet.prefixlen}"))
        resolved.append(port)
    segment.ports = resolved


def validate(topology: Topology) -> Topology:
    """Checks that need the whole picture: duplicates, overlaps, sizes."""
    check_instance(topology.name)
    ports = topology.ports
    if not ports:
        raise ConfigError("no ports: give --ports ns1,ns2,...")
    seen: set[tuple[str, str]] = set()
    for port in ports:
        key = (port.namespace, port.ifname)
        if key in seen:
            raise ConfigError(f"port {port.namespace}:{port.ifname} is listed twice")
        seen.add(key)
    addresses: set[IPv4Address] = set()
    for port in ports:
        assert port.address is not None
        if port.address.ip in addresses:
            raise ConfigError(f"address {port.address.ip} is given to two ports")
        addresses.add(port.address.ip)
    if topology.ageing <= 0:
        raise ConfigError("--ageing must be a positive number of seconds")
    if topology.fdb_max < 1:
        raise ConfigError("--fdb-max must be at least 1")
    return topology


def single_segment(
    name: str, ports: list[PortSpec], subnet: IPv4Network = DEFAULT_SUBNET, **options: float
) -> Topology:
    """The `--ports` shorthand: one L2 segment, hosts numbered .1, .2, ... in order."""
    segment = SegmentSpec("lan", subnet, list(ports))
    assign_addresses(segment)
    topo = Topology(name=name, segments=[segment])
    if "ageing" in options:
        topo.ageing = float(options["ageing"])
    if "fdb_max" in options:
        topo.fdb_max = int(options["fdb_max"])
    return validate(topo)


__all__ = [
    "ConfigError",
    "PortSpec",
    "SegmentSpec",
    "Topology",
    "parse_ports",
    "parse_subnet",
    "single_segment",
]
