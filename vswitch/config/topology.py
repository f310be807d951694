"""What the user asked for, validated and resolved to concrete names and addresses. Pure: no IO.

The command line and the TOML file both produce a `Topology`; everything downstream (the kernel
plumbing, the datapath, the router) reads only this. A bad value raises ConfigError with one sentence
for the user.

Two shapes:
- switched: `--ports ns1,ns2` alone is one L2 segment, hosts numbered .1, .2, ... in order (and, with
  `--subnet6`, ::1, ::2, ... of that prefix);
- routed: several `--segment`s and/or an `--uplink`: the router owns the gateway (.1 by default) of
  every segment, hosts start at .2 and get a default route via their gateway, and traffic leaving
  through the uplink is masqueraded to the uplink address. A segment with IPv6 has a /64 (its own, or
  the next one of `--subnet6`), the router is its ::1, and the hosts configure themselves by SLAAC from
  the router's advertisements (RFC 4862), so they are given no IPv6 address here. The uplink is IPv4.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Final

from ..core.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES
from ..core.flowcache import DEFAULT_MAX_ENTRIES as FLOW_CACHE_ENTRIES
from ..core.vlan import VID_MAX, VID_MIN
from ..core.vxlan import DEFAULT_PORT as VXLAN_PORT
from ..core.vxlan import DEFAULT_TTL as VXLAN_TTL
from ..core.vxlan import OVERHEAD as VXLAN_OVERHEAD
from ..core.vxlan import VNI_MAX
from ..core.wire import parse_mac
from . import protect, services
from .errors import ConfigError as ConfigError  # re-exported: every caller knows it as topology's
from .links import LinkSetting, check_ports, link_settings_from_toml
from .protect import ProtectSpec
from .services import ServicesSpec

IFNAMSIZ: Final = 16  # the kernel's limit on a link name, with its NUL


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1..15 bytes, not . or .., no '/', ':' or whitespace."""
    if not 0 < len(name.encode()) < IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in name)


DEFAULT_SUBNET = IPv4Network("10.0.0.0/24")
DEFAULT_IFNAME = "eth0"
HOST = "host"  # the word that puts the root namespace on a segment (the host port)
DHCP = "dhcp"  # the word for an address that DHCP gives (reserved: no namespace is called that)
PID_PREFIX = "pid:"  # a port in the namespace of a process: pid:1234
PORT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
UPLINK_SEGMENT = "wan"
DEFAULT_UPLINK_ADDRESS = IPv4Interface("198.18.0.2/24")
DEFAULT_UPSTREAM = IPv4Address("198.18.0.1")
DEFAULT_UPLINK_ADDRESS6 = IPv6Interface("2001:2::2/64")
DEFAULT_UPSTREAM6 = IPv6Address("2001:2::1")
NAT6_MODES = ("masquerade", "none", "prefix=OUTSIDE/LEN")
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
INSTANCE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,11}")
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,31}")
PROTOCOLS = {"tcp": 6, "udp": 17}
# Each tap's queue toward vswitch. The kernel's default of 1000 drops bursts while the event loop is busy
# with another port; 10,000 delivered 20% more 64-byte packets on a 2-core machine (bench/README.md).
DEFAULT_TXQUEUELEN = 10000
FLOW_CACHE_MAX = 1_000_000  # entries per segment: a bound on what --flow-cache may ask for
DEFAULT_MTU = 1500
MTU_MIN = 68  # RFC 791 3.2: every internet module must forward a 68-byte datagram without fragmenting it
# A read takes 65,536 bytes after the virtio-net header: an MTU-sized packet with its Ethernet and
# VLAN headers must fit, with room to spare (the tap itself would take up to 65,535).
MTU_MAX = 65000
DEFAULT_RA_INTERVAL = 600.0  # RFC 4861 6.2.1's MaxRtrAdvInterval default
RA_INTERVAL_MIN = 0.1
RA_INTERVAL_MAX = 1800.0
IPV6_MIN_MTU = 1280  # RFC 8200 section 5: every link that carries IPv6 has an MTU of at least 1280
# SLAAC forms an address from a /64 prefix and a 64-bit interface identifier (RFC 4862 5.5.3, RFC 7421).
SLAAC_PREFIXLEN = 64
# A routed --subnet6 is cut into a /64 per segment: a site's /48 down to a /60 (16 segments).
ROUTED_SUBNET6_LENGTHS = range(48, 61)


@dataclass(frozen=True)
class PortSpec:
    """One port: an interface in a namespace (or, with namespace None, the host's) and its address.

    namespace is a name under /run/netns, which vswitch makes if missing, or, for a port attached to
    a namespace that exists (`pid:PID`, `/PATH`: a container, a process), the path of that namespace,
    which vswitch never makes, renames or removes: it owns only its tap there (`attached`)."""

    namespace: str | None
    ifname: str = DEFAULT_IFNAME
    address: IPv4Interface | None = None  # None until resolved: the next free host of the subnet
    # with --subnet6 on a switched topology: ::N for the Nth port (routed segments' hosts use SLAAC)
    address6: IPv6Interface | None = None
    name: str | None = None  # the port's own name (PORT=), else its namespace's or pidPID
    dhcp: bool = False  # =dhcp: the address comes from DHCP (the DHCP issue serves it)
    attached: bool = False

    @property
    def label(self) -> str:
        """How the user names this port in other commands (capture, trace, stats, DNS)."""
        if self.name is not None:
            return self.name
        return self.namespace if self.namespace is not None else HOST


@dataclass(frozen=True)
class VxlanSpec:
    """A segment's VXLAN tunnel (RFC 7348): its VNI, the underlay socket's end, the remote VTEPs."""

    vni: int
    local: IPv4Address
    netns: str | None  # the underlay's namespace (None: the root namespace)
    remotes: tuple[IPv4Address, ...] = ()
    dstport: int = VXLAN_PORT
    ttl: int = VXLAN_TTL
    fdb: tuple[tuple[bytes, IPv4Address], ...] = ()  # static (MAC, remote) entries
    # A multicast group: floods go to it, and the VTEPs heard from are learned as remotes (RFC 7348
    # section 4.2). Its TTL is 1 unless ttl= is given, as the kernel's vxlan sends multicast.
    group: IPv4Address | None = None
    group_ttl: int = 1

    @property
    def all_remotes(self) -> list[tuple[IPv4Address, bool]]:
        """Every remote with whether floods reach it: one named only by a static entry is not; the
        group is one, flooded."""
        named = [(r, True) for r in self.remotes] + ([(self.group, True)] if self.group else [])
        extra = dict.fromkeys(a for _, a in self.fdb if a not in self.remotes)
        return named + [(a, False) for a in extra]


@dataclass(frozen=True)
class TrunkSpec:
    """A port in namespace that carries several segments, each tagged with its VID (802.1Q)."""

    namespace: str
    vlans: tuple[tuple[str, int], ...]  # (segment, VID)
    native: str | None = None  # the segment of untagged frames
    ifname: str = DEFAULT_IFNAME
    name: str | None = None  # as PortSpec's: the port's own name (pid:, /PATH)
    attached: bool = False  # in a namespace that exists (pid:, /PATH): only the tap is ours

    @property
    def label(self) -> str:
        return self.name if self.name is not None else self.namespace

    @property
    def segments(self) -> list[str]:
        return [s for s, _ in self.vlans] + ([self.native] if self.native else [])


MIRROR_DIRECTIONS: Final = ("in", "out", "both")


@dataclass(frozen=True)
class MirrorSpec:
    """Port mirroring (a SPAN port): copies of source's frames go to port, a namespace's port that
    belongs to no segment (no address, never flooded to or learned, what it sends is dropped).
    directions: "in" (what source sends into the switch), "out" (what the switch writes to source)."""

    source: str  # a port's label
    port: PortSpec  # the mirror port: made like a --ports port, without an address
    directions: tuple[str, ...] = ("in", "out")

    @property
    def direction(self) -> str:
        return "both" if len(self.directions) == 2 else self.directions[0]


@dataclass
class SegmentSpec:
    name: str
    subnet: IPv4Network
    ports: list[PortSpec] = field(default_factory=list)
    gateway: IPv4Interface | None = None  # the router's address here (routed topologies only)
    mtu: int = DEFAULT_MTU  # of every port on the segment and of the router's interface on it
    mtu_given: bool = False  # the user set mtu: a tunnel checks it instead of setting its own
    vxlan: VxlanSpec | None = None
    subnet6: IPv6Network | None = None  # routed: a /64 the router advertises; switched: --subnet6
    gateway6: IPv6Interface | None = None  # the router's ::1 of subnet6 (routed topologies only)


@dataclass(frozen=True)
class UplinkSpec:
    """The port to the outside: `namespace` plays the upstream router at `upstream`."""

    namespace: str
    address: IPv4Interface = DEFAULT_UPLINK_ADDRESS  # the router's own uplink address (NAT source)
    upstream: IPv4Address = DEFAULT_UPSTREAM  # the outside namespace's address, our default route
    ifname: str = DEFAULT_IFNAME
    # With IPv6 on the segments: the same in RFC 5180's benchmarking range (as 198.18.0.0/15 is IPv4's)
    address6: IPv6Interface = DEFAULT_UPLINK_ADDRESS6
    upstream6: IPv6Address = DEFAULT_UPSTREAM6


@dataclass(frozen=True)
class Nat6Spec:
    """What IPv6 leaving by the uplink becomes: masqueraded to the uplink address (NAT66), routed as
    it is (none), or its prefix translated, stateless (NPTv6, RFC 6296, `prefix` the outside one)."""

    mode: str = "masquerade"
    prefix: IPv6Network | None = None


@dataclass(frozen=True)
class ForwardSpec:
    """DNAT: proto/port on the uplink address -> a namespace's address, target_port."""

    proto: int
    port: int
    namespace: str
    target_port: int


@dataclass(frozen=True)
class RouteSpec:
    """A static route; the gateway is of the prefix's family, on one of the router's segments."""

    prefix: IPv4Network | IPv6Network
    via: IPv4Address | IPv6Address


@dataclass
class Topology:
    name: str = "default"
    segments: list[SegmentSpec] = field(default_factory=list)
    uplink: UplinkSpec | None = None
    forwards: list[ForwardSpec] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    routed: bool = False
    host_routes: bool = False
    host_ifname: str | None = None  # default: vs-NAME
    ageing: float = DEFAULT_AGEING
    ra_interval: float = DEFAULT_RA_INTERVAL  # MaxRtrAdvInterval of the router's advertisements
    subnet6: IPv6Network | None = None  # routed: the --subnet6 the segments' /64s came from (NPTv6's inside)
    nat6: Nat6Spec | None = None  # IPv6 through the uplink; None: no IPv6 there (or not asked)
    fdb_max: int = DEFAULT_MAX_ENTRIES
    txqueuelen: int = DEFAULT_TXQUEUELEN
    flow_cache: int = FLOW_CACHE_ENTRIES  # per segment; 0: off
    uplink_mtu: int = DEFAULT_MTU
    trunks: list[TrunkSpec] = field(default_factory=list)
    services: ServicesSpec = field(default_factory=ServicesSpec)  # DHCP and DNS on the routed segments
    links: list[LinkSetting] = field(default_factory=list)  # impairments set at start ([link.PORT])
    protect: ProtectSpec = field(default_factory=ProtectSpec)  # MAC limits, storm control, loop guard
    mirrors: list[MirrorSpec] = field(default_factory=list)  # SPAN ports (--mirror)

    @property
    def ports(self) -> list[PortSpec]:
        return [p for s in self.segments for p in s.ports]

    def segment_of(self, label: str) -> SegmentSpec | None:
        return next((s for s in self.segments if any(p.label == label for p in s.ports)), None)

    def port(self, label: str) -> PortSpec | None:
        return next((p for p in self.ports if p.label == label), None)


# --- small parsers (one value each) ----------------------------------------------------------------
def check_namespace(name: str) -> str:
    if not NAMESPACE_RE.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"invalid namespace name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    return name


def check_instance(name: str) -> str:
    if not INSTANCE_RE.fullmatch(name):
        raise ConfigError(f"invalid instance name {name!r}: use 1-12 lower-case letters, digits, '_', '-'")
    return name


def check_ifname(name: str) -> str:
    if not valid_ifname(name):
        raise ConfigError(f"invalid interface name {name!r}: 1-15 characters, no '/', ':' or space")
    return name


def parse_interface(text: str, what: str) -> IPv4Interface:
    if "/" not in text:
        raise ConfigError(f"{what} {text!r} needs a prefix length, e.g. {text}/24")
    try:
        return IPv4Interface(text)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}") from None


def parse_address(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}") from None


def parse_subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid subnet {text!r}, e.g. 10.0.0.0/24") from None


def parse_subnet6(text: str) -> IPv6Network:
    """An IPv6 prefix for the hosts of a switched topology: global or unique local, room for hosts."""
    try:
        subnet = IPv6Network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid IPv6 subnet {text!r}, e.g. fd00:10::/64") from None
    if subnet.is_link_local or subnet.is_multicast or subnet.is_loopback or subnet.prefixlen > 126:
        raise ConfigError(f"IPv6 subnet {text!r}: give a global or unique-local prefix of /126 or shorter")
    return subnet


def parse_port(text: str) -> PortSpec:
    """One port, in the grammar every option that names or makes a port takes (README, "Ports"):
    `[PORT=](NS|pid:PID|/PATH)[:IFNAME][=ADDR/PREFIX|=dhcp]`, or `host[=ADDR/PREFIX]`.

    `PORT=` names a port only before `pid:` or `/`, so `ns1=10.0.0.7/24` keeps its meaning (namespace
    ns1 with that address). A port given by PID is named pidPID unless named; one given by path must
    be named. An attached namespace's interface defaults to eth0 where free, else vs0 (chosen at start:
    "" until then)."""
    text = text.strip()
    name = None
    head, eq, rest = text.partition("=")
    if eq and (rest.startswith(PID_PREFIX) or rest.startswith("/")):
        name, text = check_port_name(head.strip()), rest
    target, eq, value = text.partition("=")
    address, dhcp = None, False
    if eq:
        if value.strip() == DHCP:
            dhcp = True
        elif "/" not in value and head.strip() and not value.strip()[:1].isdigit():
            raise ConfigError(
                f"port {text!r}: NAME= names a port only before pid: or /PATH ({head.strip()}=pid:PID, "
                f"{head.strip()}=/PATH); after a namespace, = gives its address"
            )
        else:
            address = parse_interface(value, f"address for port {target}")
    if target.startswith(PID_PREFIX):
        digits, colon, ifname = target[len(PID_PREFIX) :].partition(":")
        if not digits.isascii() or not digits.isdigit() or int(digits) < 1:
            raise ConfigError(f"port {text!r}: pid:PID takes a process number, e.g. pid:1234")
        namespace = f"/proc/{int(digits)}/ns/net"
        label = name or f"pid{int(digits)}"
        return PortSpec(namespace, check_ifname(ifname) if colon else "", address, None, label, dhcp, True)
    if target.startswith("/"):
        slash, colon_at = target.rfind("/"), target.rfind(":")
        path, ifname = (target[:colon_at], target[colon_at + 1 :]) if colon_at > slash else (target, "")
        if name is None:
            raise ConfigError(
                f"port {target!r}: a namespace given by path needs a port name, e.g. web={target} "
                "(the name is what capture, trace and stats call it)"
            )
        ifname = check_ifname(ifname) if colon_at > slash else ""  # `/PATH:` is refused, as `NS:` is
        return PortSpec(path, ifname, address, None, name, dhcp, True)
    namespace, colon, ifname = target.partition(":")
    if namespace == HOST:
        if dhcp:
            raise ConfigError("the host port takes an address, not dhcp: the root namespace is not ours")
        return PortSpec(None, check_ifname(ifname) if colon else "", address)
    if namespace == DHCP:
        raise ConfigError(f"{DHCP!r} is a reserved word, not a namespace name")
    check_namespace(namespace)
    return PortSpec(namespace, check_ifname(ifname) if colon else DEFAULT_IFNAME, address, dhcp=dhcp)


def check_port_name(name: str) -> str:
    if not PORT_NAME_RE.fullmatch(name) or name in (HOST, DHCP):
        raise ConfigError(
            f"invalid port name {name!r}: 1-32 letters, digits, '_', '.', '-' (not host or dhcp)"
        )
    return name


def parse_ports(text: str, option: str = "--ports") -> list[PortSpec]:
    items = text.split(",")
    if not text.strip() or any(not item.strip() for item in items):
        raise ConfigError(f"{option} needs a comma-separated list of namespaces, e.g. ns1,ns2,ns3")
    return [parse_port(item) for item in items]


def parse_segment(text: str) -> tuple[str, list[PortSpec], IPv4Network | None]:
    """`NAME=ns1,ns2[@10.1.0.0/24]`: the IPv4 part of parse_segment6's grammar."""
    name, eq, rest = text.partition("=")
    if not eq or not SEGMENT_RE.fullmatch(name):
        raise ConfigError(f"--segment {text!r}: expected NAME=ns1,ns2[@SUBNET][,IPV6/64] with a simple NAME")
    subnet = None
    if "@" in rest:
        rest, subnet_text = rest.rsplit("@", 1)
        subnet = parse_subnet(subnet_text)
    return name, parse_ports(rest, f"--segment {name}"), subnet


def parse_segment6(text: str) -> tuple[str, list[PortSpec], IPv4Network | None, IPv6Network | None]:
    """`NAME=ns1,ns2[@10.1.0.0/24][,fd00:1:0:1::/64]`, or `NAME=ns1,ns2@fd00:1:0:1::/64` (the IPv4
    subnet then chosen as without one): the segment's own IPv6 prefix rides after the @, where only an
    IPv6 prefix has a ':'. build() checks it is a /64."""
    head, at, tail = text.rpartition("@")
    if not at or ":" not in tail:
        return (*parse_segment(text), None)
    subnet_text, _, subnet6_text = tail.rpartition(",")
    name, ports, subnet = parse_segment(f"{head}@{subnet_text}" if subnet_text else head)
    try:
        subnet6 = parse_subnet6(subnet6_text)
    except ConfigError as exc:
        raise ConfigError(f"--segment {name}: {exc}") from None
    return name, ports, subnet, subnet6


def parse_uplink(text: str) -> UplinkSpec:
    """`NS[=ADDR/PREFIX][,via=GW]`."""
    head, *options = text.split(",")
    namespace, eq, addr_text = head.partition("=")
    check_namespace(namespace.strip())
    address = parse_interface(addr_text, "uplink address") if eq else DEFAULT_UPLINK_ADDRESS
    upstream = None
    for option in options:
        key, _, value = option.partition("=")
        if key.strip() != "via":
            raise ConfigError(f"--uplink: unknown option {option!r} (expected via=GATEWAY)")
        upstream = parse_address(value, "uplink gateway")
    if upstream is None and not eq:
        upstream = DEFAULT_UPSTREAM
    elif upstream is None:
        upstream = next((h for h in address.network.hosts() if h != address.ip), None)
        if upstream is None:
            raise ConfigError(
                f"uplink address {address}: the prefix leaves no room for the upstream address "
                "(give via=GATEWAY or a shorter prefix)"
            )
    if upstream not in address.network or upstream == address.ip:
        raise ConfigError(f"uplink gateway {upstream} must be another address in {address.network}")
    return UplinkSpec(namespace.strip(), address, upstream)


def parse_nat6(text: str) -> Nat6Spec:
    """`masquerade`, `none` or `prefix=OUTSIDE/LEN` (NPTv6)."""
    text = text.strip()
    if text in ("masquerade", "none"):
        return Nat6Spec(text)
    key, eq, value = text.partition("=")
    if key.strip() != "prefix" or not eq:
        raise ConfigError(f"--nat6 {text!r}: expected one of {', '.join(NAT6_MODES)}")
    try:
        prefix = IPv6Network(value.strip())
    except ValueError:
        raise ConfigError(
            f"--nat6 {text!r}: {value.strip()!r} is not an IPv6 prefix with its host bits 0"
        ) from None
    if prefix.prefixlen > SLAAC_PREFIXLEN or prefix.is_multicast or prefix.is_link_local:
        raise ConfigError(f"--nat6 {text!r}: the outside prefix must be a global or ULA /64 or shorter")
    return Nat6Spec("prefix", prefix)


def check_mtu(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MTU_MIN <= value <= MTU_MAX:
        raise ConfigError(
            f"{what} must be a whole number of bytes from {MTU_MIN} to {MTU_MAX}, not {value!r}"
        )
    return value


def parse_mtu(text: str) -> tuple[str | None, int]:
    """`N` (every segment) or `SEGMENT=N` (one segment; `wan` is the uplink's)."""
    name, eq, value = text.partition("=")
    if not eq:
        name, value = "", name
    if eq and not SEGMENT_RE.fullmatch(name.strip()):
        raise ConfigError(f"--mtu {text!r}: expected N or SEGMENT=N, e.g. 9000 or dmz=1280")
    if not value.strip().isascii() or not value.strip().isdigit():
        raise ConfigError(f"--mtu {text!r}: expected N or SEGMENT=N, e.g. 9000 or dmz=1280")
    return (name.strip() or None), check_mtu(int(value), "--mtu")


def parse_forward(text: str) -> ForwardSpec:
    """`PROTO:PORT=NS:PORT`, e.g. tcp:8080=ns3:80."""
    match = re.fullmatch(r"(tcp|udp):(\d+)=([^:]+):(\d+)", text.strip())
    if not match:
        raise ConfigError(f"--forward {text!r}: expected PROTO:PORT=NS:PORT, e.g. tcp:8080=ns3:80")
    proto, port, namespace, target = match.groups()
    for number in (port, target):
        if not 0 < int(number) < 65536:
            raise ConfigError(f"--forward {text!r}: port {number} is outside 1-65535")
    return ForwardSpec(PROTOCOLS[proto], int(port), check_namespace(namespace), int(target))


def parse_route(text: str) -> RouteSpec:
    """`PREFIX=via GW` (or `PREFIX=GW`), IPv4 or IPv6; validate() finds the gateway's segment."""
    prefix_text, eq, via_text = text.partition("=")
    if not eq:
        raise ConfigError(f"--route {text!r}: expected PREFIX=via GATEWAY, e.g. 10.9.0.0/16=via 10.1.0.254")
    via_text = via_text.strip()
    if via_text.startswith("via"):
        via_text = via_text[3:].strip(" =")
    try:
        prefix = ip_network(prefix_text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"invalid route prefix {prefix_text!r}, e.g. 10.9.0.0/16 or fd00:9::/48") from None
    try:
        via = ip_address(via_text)
    except ValueError:
        raise ConfigError(f"invalid route gateway {via_text!r}") from None
    what = f"route {prefix} via {via}"
    if via.version != prefix.version:
        raise ConfigError(f"{what}: the gateway must be IPv{prefix.version}, as the prefix is")
    # RFC 4291 2.5.6: a link-local address is unique only on its link, so it names no segment.
    if isinstance(via, IPv6Address) and via.is_link_local:
        raise ConfigError(f"{what}: the gateway is link-local; give the gateway's global address")
    return RouteSpec(prefix, via)


VXLAN_KEYS = ("remote", "local", "netns", "dstport", "ttl", "group")


def _udp_port(text: str, what: str) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()) or not 0 < int(text) < 65536:
        raise ConfigError(f"{what} must be a UDP port from 1 to 65535, not {text!r}")
    return int(text)


def parse_vxlan(text: str) -> tuple[str, VxlanSpec]:
    """`SEGMENT=VNI,local=ADDR[,netns=NS][,remote=ADDR]...[,dstport=PORT][,ttl=N]`."""
    usage = (
        "expected SEGMENT=VNI,local=ADDR,netns=NS,remote=ADDR[,remote=ADDR...][,group=MCAST]"
        "[,dstport=4789][,ttl=64]"
    )
    head, *options = text.split(",")
    name, eq, vni_text = head.partition("=")
    if not eq or not SEGMENT_RE.fullmatch(name.strip()):
        raise ConfigError(f"--vxlan {text!r}: {usage}")
    values: dict[str, list[str]] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in VXLAN_KEYS:
            raise ConfigError(f"--vxlan {text!r}: unknown option {option!r} ({usage})")
        values.setdefault(key, []).append(value.strip())
    return name.strip(), vxlan_spec(
        f"--vxlan {name.strip()}",
        vni_text.strip(),
        values.get("local", []),
        values.get("netns", []),
        values.get("remote", []),
        values.get("dstport", []),
        values.get("ttl", []),
        values.get("group", []),
    )


def vxlan_spec(
    what: str,
    vni_text: str,
    local: list[str],
    netns: list[str],
    remotes: list[str],
    dstport: list[str],
    ttl: list[str],
    group: list[str] = (),  # type: ignore[assignment]
) -> VxlanSpec:
    """One VxlanSpec from its values as text (the command line's and TOML's alike)."""
    if not (vni_text.isascii() and vni_text.isdigit()) or not 0 <= int(vni_text) <= VNI_MAX:
        raise ConfigError(f"{what}: the VNI must be a number from 0 to {VNI_MAX}, not {vni_text!r}")
    for key, given in (("local", local), ("netns", netns), ("dstport", dstport), ("ttl", ttl)):
        if len(given) > 1:
            raise ConfigError(f"{what}: {key}= is given twice")
    if len(group) > 1:
        raise ConfigError(f"{what}: group= is given twice (one multicast group per tunnel)")
    multicast = parse_address(group[0], f"{what}: group") if group else None
    if multicast is not None and not multicast.is_multicast:
        raise ConfigError(f"{what}: group {multicast} must be an IPv4 multicast address (224.0.0.0/4)")
    if not local:
        raise ConfigError(f"{what}: local=ADDR is required (the underlay address to send from)")
    local_address = _unicast(local[0], f"{what}: local address")
    remote_addresses = [_unicast(r, f"{what}: remote address") for r in remotes]
    if len(set(remote_addresses)) != len(remote_addresses):
        raise ConfigError(f"{what}: a remote is named twice")
    if local_address in remote_addresses:
        raise ConfigError(f"{what}: the local address {local_address} cannot be a remote too")
    hops = int(ttl[0]) if ttl and ttl[0].isascii() and ttl[0].isdigit() else -1
    if ttl and not 1 <= hops <= 255:
        raise ConfigError(f"{what}: ttl must be from 1 to 255, not {ttl[0]!r}")
    return VxlanSpec(
        int(vni_text),
        local_address,
        check_namespace(netns[0]) if netns else None,
        tuple(remote_addresses),
        _udp_port(dstport[0], f"{what}: dstport") if dstport else VXLAN_PORT,
        hops if ttl else VXLAN_TTL,
        group=multicast,
        group_ttl=hops if ttl else 1,
    )


def _unicast(text: str, what: str) -> IPv4Address:
    address = parse_address(text, what)
    if address.is_multicast or address.is_unspecified or address == IPv4Address("255.255.255.255"):
        raise ConfigError(f"{what} {address} must be a unicast address")
    return address


def parse_trunk(text: str) -> TrunkSpec:
    """`PORT=SEG:VID[,SEG:VID...][,native=SEG]`, PORT in the port grammar without an address:
    `NS[:IFNAME]`, `pid:PID[:IFNAME]`, `NAME=pid:PID[:IFNAME]` or `NAME=/PATH[:IFNAME]`."""
    usage = "expected PORT=SEGMENT:VID[,SEGMENT:VID...][,native=SEGMENT], e.g. t1=lan:10,dmz:20"
    head, eq, rest = text.partition("=")
    if eq and (rest.startswith(PID_PREFIX) or rest.startswith("/")):  # a named port: NAME=pid:/PATH
        target, eq, rest = rest.partition("=")
        head = f"{head}={target}"
    if not eq or not rest.strip():
        raise ConfigError(f"--trunk {text!r}: {usage}")
    port = _trunk_port(head.strip(), f"--trunk {text!r}")
    vlans: list[tuple[str, int]] = []
    native = None
    for item in rest.split(","):
        key, eq2, value = item.strip().partition("=")
        if eq2:
            if key != "native" or not SEGMENT_RE.fullmatch(value.strip()) or native is not None:
                raise ConfigError(f"--trunk {text!r}: {item.strip()!r}: {usage}")
            native = value.strip()
            continue
        segment, colon2, vid = item.strip().partition(":")
        if not colon2 or not SEGMENT_RE.fullmatch(segment):
            raise ConfigError(f"--trunk {text!r}: {item.strip()!r}: {usage}")
        vlans.append((segment, check_vid(vid, f"--trunk {port.label}: VLAN of {segment}")))
    return replace(
        trunk_spec(port.namespace or "", vlans, native, port.ifname), name=port.name, attached=port.attached
    )


def _trunk_port(text: str, what: str) -> PortSpec:
    """A trunk's port: the port grammar, with no address (a trunk carries segments, not an address)."""
    port = parse_port(text)
    if port.namespace is None or port.address is not None or port.dhcp:
        raise ConfigError(f"{what}: a trunk is a namespace's port with no address of its own")
    return port


def check_vid(text: object, what: str) -> int:
    """IEEE 802.1Q table 9-2: VID 0 (priority only) and 4095 are reserved; 1-4094 name VLANs."""
    value = text.strip() if isinstance(text, str) else text
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not VID_MIN <= value <= VID_MAX:
        raise ConfigError(f"{what} must be a VLAN ID from {VID_MIN} to {VID_MAX}, not {text!r}")
    return value


def trunk_spec(namespace: str, vlans: list[tuple[str, int]], native: str | None, ifname: str) -> TrunkSpec:
    what = f"--trunk {namespace}"
    if not vlans and native is None:
        raise ConfigError(f"{what}: name at least one SEGMENT:VID")
    segments = [s for s, _ in vlans]
    vids = [v for _, v in vlans]
    for name in set(segments):
        if segments.count(name) > 1:
            raise ConfigError(f"{what}: segment {name} is given twice (one VLAN per segment on a trunk)")
    for vid in set(vids):
        if vids.count(vid) > 1:
            raise ConfigError(f"{what}: VLAN {vid} is given twice")
    if native is not None and native in segments:
        raise ConfigError(f"{what}: segment {native} cannot be both native (untagged) and tagged")
    return TrunkSpec(namespace, tuple(vlans), native, ifname)


def parse_vxlan_fdb(text: str) -> tuple[str, bytes, IPv4Address]:
    """`SEGMENT=MAC@ADDR`: a static entry, the MAC behind the remote VTEP at ADDR."""
    name, eq, rest = text.partition("=")
    mac_text, at, addr = rest.partition("@")
    if not eq or not at or not SEGMENT_RE.fullmatch(name.strip()):
        raise ConfigError(
            f"--vxlan-fdb {text!r}: expected SEGMENT=MAC@ADDR, e.g. lan=02:00:00:00:00:01@10.9.0.2"
        )
    try:
        mac = parse_mac(mac_text.strip())
    except ValueError:
        raise ConfigError(f"--vxlan-fdb {text!r}: invalid MAC address {mac_text!r}") from None
    if mac[0] & 1 or mac == bytes(6):
        raise ConfigError(f"--vxlan-fdb {text!r}: a static entry needs a unicast MAC")
    return name.strip(), mac, _unicast(addr, f"--vxlan-fdb {name.strip()}: remote address")


def parse_mirror(text: str, what: str = "--mirror") -> MirrorSpec:
    """`SRC=DST[,in|out|both]`: copies of port SRC's frames to a new port DST, in the port grammar
    without an address (`NS[:IFNAME]`, `NAME=pid:PID[:IFNAME]`, `NAME=/PATH[:IFNAME]`). That SRC is a
    port and DST is not is checked against the whole topology (validate)."""
    usage = "expected SRC=DST[,in|out|both], e.g. ns1=span or ns1=span,in"
    source, eq, rest = text.strip().partition("=")
    body, comma, direction = rest.partition(",")
    if not eq or not source.strip() or not body.strip() or (comma and not direction.strip()):
        raise ConfigError(f"{what} {text!r}: {usage}")
    direction = direction.strip() or "both"
    if direction not in MIRROR_DIRECTIONS:
        raise ConfigError(f"{what} {text!r}: direction {direction!r} is none of in, out, both")
    port = parse_port(body)
    if port.namespace is None or port.address is not None or port.dhcp:
        raise ConfigError(
            f"{what} {text!r}: the mirror port is a namespace's port with no address (a SPAN port has none)"
        )
    directions = ("in", "out") if direction == "both" else (direction,)
    return MirrorSpec(source.strip(), port, directions)


# --- building the whole picture --------------------------------------------------------------------
@dataclass
class Request:
    """The raw options, from the command line or a TOML file, before resolution."""

    name: str = "default"
    ports: list[PortSpec] = field(default_factory=list)
    subnet: IPv4Network | None = None
    subnet6: IPv6Network | None = None  # routed: the /48-/60 cut into /64s; switched: the hosts' prefix
    segments: list[tuple[str, list[PortSpec], IPv4Network | None]] = field(default_factory=list)
    segment_subnet6: dict[str, IPv6Network] = field(default_factory=dict)  # a segment's own /64, by name
    uplink: UplinkSpec | None = None
    forwards: list[ForwardSpec] = field(default_factory=list)
    routes: list[RouteSpec] = field(default_factory=list)
    host: bool = False
    host_address: IPv4Interface | None = None
    host_ifname: str | None = None
    host_routes: bool = False
    ageing: float = DEFAULT_AGEING
    ra_interval: float = DEFAULT_RA_INTERVAL  # MaxRtrAdvInterval of the router's advertisements
    nat6: Nat6Spec | None = None  # IPv6 through the uplink; None: no IPv6 there (or not asked)
    fdb_max: int = DEFAULT_MAX_ENTRIES
    txqueuelen: int = DEFAULT_TXQUEUELEN
    flow_cache: int = FLOW_CACHE_ENTRIES  # per segment; 0: off
    mtu: int | None = None  # every segment's, unless segment_mtu names it
    segment_mtu: dict[str, int] = field(default_factory=dict)
    vxlan: dict[str, VxlanSpec] = field(default_factory=dict)  # by segment name
    vxlan_fdb: list[tuple[str, bytes, IPv4Address]] = field(default_factory=list)
    trunks: list[TrunkSpec] = field(default_factory=list)
    services: ServicesSpec = field(default_factory=ServicesSpec)
    links: list[LinkSetting] = field(default_factory=list)  # [link.PORT] tables
    protect: ProtectSpec = field(default_factory=ProtectSpec)
    mirrors: list[MirrorSpec] = field(default_factory=list)  # --mirror, [[mirror]]

    def add_segment(
        self, name: str, ports: list[PortSpec], subnet: IPv4Network | None, subnet6: IPv6Network | None = None
    ) -> None:
        """One segment as parse_segment6 gives it: its IPv6 prefix, if any, goes to segment_subnet6."""
        self.segments.append((name, ports, subnet))
        if subnet6 is not None:
            self.segment_subnet6[name] = subnet6


def build(request: Request) -> Topology:
    """Resolve a Request to a Topology: segments, subnets, gateways, addresses; then validate."""
    check_instance(request.name)
    if request.ports and request.segments:
        raise ConfigError("--ports is the one-segment shorthand: use it or --segment, not both")
    routed = bool(request.segments) or request.uplink is not None
    raw = list(request.segments)
    if request.ports:
        raw = [("lan", list(request.ports), request.subnet or (None if routed else DEFAULT_SUBNET))]
    elif request.subnet is not None:
        raise ConfigError("--subnet goes with --ports; give a segment's subnet as NAME=ns1,ns2@SUBNET")
    if not raw:
        raise ConfigError("nothing to connect: give --ports ns1,ns2,... or --segment NAME=ns1,ns2")
    if request.host:
        first = raw[0]
        if any(p.namespace is None for p in first[1]):
            raise ConfigError("the host port is listed twice")
        raw[0] = (first[0], [*first[1], PortSpec(None, "", request.host_address)], first[2])
    names = [name for name, _, _ in raw]
    if len(set(names)) != len(names):
        raise ConfigError(f"segment names must differ: {', '.join(names)}")
    if request.uplink is not None and UPLINK_SEGMENT in names:
        raise ConfigError(f"segment name {UPLINK_SEGMENT!r} is reserved for the uplink")

    if request.segment_subnet6 and not routed:
        raise ConfigError(
            "a segment's own IPv6 prefix needs a router (--segment or --uplink); --ports takes --subnet6"
        )
    for name in request.segment_subnet6:
        if name not in names:
            raise ConfigError(f"IPv6 prefix for segment {name!r}: there is no such segment")
    default_mtu = request.mtu or DEFAULT_MTU
    for name in request.segment_mtu:
        if name not in names and not (name == UPLINK_SEGMENT and request.uplink is not None):
            raise ConfigError(f"mtu for segment {name!r}: there is no such segment")

    used = [s for _, _, s in raw if s is not None]
    if request.uplink is not None:
        used.append(request.uplink.address.network)
    segments: list[SegmentSpec] = []
    for name, ports, subnet in raw:
        if subnet is None:
            subnet = _next_free_subnet(used)
            used.append(subnet)
        given = name in request.segment_mtu or request.mtu is not None
        segment = SegmentSpec(
            name, subnet, list(ports), mtu=request.segment_mtu.get(name, default_mtu), mtu_given=given
        )
        if routed:
            if subnet.prefixlen > 30:  # a router and a host need two host addresses beside the network's
                raise ConfigError(f"segment {name}: subnet {subnet} is too small for a router (at most /30)")
            segment.gateway = IPv4Interface(f"{next(iter(subnet.hosts()))}/{subnet.prefixlen}")
        segments.append(segment)
    if routed:
        _assign_subnets6(request, segments)

    _attach_vxlan(request, segments)
    host_ifname = request.host_ifname or f"vs-{request.name}"
    for segment in segments:
        segment.ports = [replace(p, ifname=host_ifname) if p.namespace is None else p for p in segment.ports]
        assign_addresses(segment, {segment.gateway.ip} if segment.gateway else set())
        if request.subnet6 is not None and not routed:
            segment.subnet6 = request.subnet6
            assign_addresses6(segment, request.subnet6)
        if segment.subnet6 is not None and segment.mtu < IPV6_MIN_MTU:
            raise ConfigError(
                f"segment {segment.name}: mtu {segment.mtu} is below {IPV6_MIN_MTU}, the least a link "
                "carrying IPv6 may have (RFC 8200 section 5)"
            )

    topology = Topology(
        name=request.name,
        segments=segments,
        uplink=request.uplink,
        forwards=list(request.forwards),
        routes=list(request.routes),
        routed=routed,
        host_routes=request.host_routes,
        host_ifname=host_ifname,
        ageing=request.ageing,
        ra_interval=request.ra_interval,
        subnet6=request.subnet6 if routed else None,
        nat6=_nat6(request, segments),
        fdb_max=request.fdb_max,
        txqueuelen=request.txqueuelen,
        flow_cache=request.flow_cache,
        uplink_mtu=request.segment_mtu.get(UPLINK_SEGMENT, default_mtu),
        trunks=list(request.trunks),
        services=request.services,
        links=list(request.links),
        protect=request.protect,
        mirrors=list(request.mirrors),
    )
    topology = validate(topology)
    services.check(request.services, topology)
    return topology


def _nat6(request: Request, segments: list[SegmentSpec]) -> Nat6Spec | None:
    """IPv6 through the uplink: with an uplink and IPv6 on a segment, masquerade unless asked."""
    six = any(s.subnet6 is not None for s in segments)
    if request.nat6 is not None and request.uplink is None:
        raise ConfigError("--nat6 needs an --uplink (IPv6 leaves by it)")
    if request.nat6 is not None and not six:
        raise ConfigError("--nat6 needs IPv6 on the segments (--subnet6)")
    if request.uplink is None or not six:
        return None
    nat6 = request.nat6 or Nat6Spec()
    uplink_mtu = request.segment_mtu.get(UPLINK_SEGMENT, request.mtu or DEFAULT_MTU)
    if uplink_mtu < IPV6_MIN_MTU:
        raise ConfigError(
            f"the uplink carries IPv6: its mtu {uplink_mtu} is below {IPV6_MIN_MTU} (RFC 8200 section 5)"
        )
    uplink6 = request.uplink.address6.network
    for segment in segments:  # the router would have one /64 on two interfaces
        if segment.subnet6 is not None and segment.subnet6.overlaps(uplink6):
            raise ConfigError(
                f"segment {segment.name}: IPv6 prefix {segment.subnet6} is the uplink's, {uplink6}"
            )
    if nat6.prefix is not None:
        inside = request.subnet6
        if inside is None or request.segment_subnet6:
            raise ConfigError(
                "--nat6 prefix= translates the --subnet6 prefix: "
                "give --subnet6 and no segment a /64 of its own"
            )
        # RFC 6296 3.1: the two prefixes have one length, so the mapping is one-to-one.
        if nat6.prefix.prefixlen != inside.prefixlen:
            raise ConfigError(
                f"--nat6 prefix={nat6.prefix}: NPTv6 maps a prefix to one of the same length, and the inside "
                f"one, {inside}, is a /{inside.prefixlen} (RFC 6296 3.1)"
            )
        if nat6.prefix.overlaps(inside) or request.uplink.address6.network.overlaps(nat6.prefix):
            raise ConfigError(f"--nat6 prefix={nat6.prefix} overlaps the inside prefix or the uplink's")
    return nat6


def _assign_subnets6(request: Request, segments: list[SegmentSpec]) -> None:
    """Routed: each segment's /64, its own or the next of --subnet6 that no segment named for itself,
    and the router's ::1 on it. validate() checks that no two overlap."""
    for name, own in request.segment_subnet6.items():
        if own.prefixlen != SLAAC_PREFIXLEN:
            raise ConfigError(
                f"segment {name}: IPv6 prefix {own} must be a /64, the only length SLAAC takes "
                "(RFC 4862 5.5.3, RFC 7421)"
            )
    pool = request.subnet6
    if pool is not None and not (
        pool.prefixlen in ROUTED_SUBNET6_LENGTHS or (pool.prefixlen == SLAAC_PREFIXLEN and len(segments) == 1)
    ):
        raise ConfigError(
            f"--subnet6 {pool}: a router needs a /48 to /60 to give each segment a /64 of it "
            "(or the /64 itself with one segment)"
        )
    named = set(request.segment_subnet6.values())
    cuts = pool.subnets(new_prefix=SLAAC_PREFIXLEN) if pool is not None else iter(())
    free = (p for p in cuts if p not in named)
    for segment in segments:
        prefix = request.segment_subnet6.get(segment.name)
        if prefix is None and pool is not None:
            prefix = next(free, None)
            if prefix is None:
                raise ConfigError(f"--subnet6 {pool} has no /64 left for segment {segment.name}")
        if prefix is not None:
            segment.subnet6 = prefix
            segment.gateway6 = IPv6Interface(f"{prefix[1]}/{SLAAC_PREFIXLEN}")


def _attach_vxlan(request: Request, segments: list[SegmentSpec]) -> None:
    """Each --vxlan and --vxlan-fdb onto its segment; one VNI per underlay socket, one tunnel each."""
    by_name = {s.name: s for s in segments}
    for name in request.vxlan:
        if name not in by_name:
            raise ConfigError(f"--vxlan {name}: there is no segment {name!r}")
    fdb: dict[str, list[tuple[bytes, IPv4Address]]] = {}
    for name, mac, address in request.vxlan_fdb:
        if name not in request.vxlan:
            raise ConfigError(f"--vxlan-fdb {name}: segment {name!r} has no --vxlan tunnel")
        if any(m == mac for m, _ in fdb.get(name, [])):
            raise ConfigError(f"--vxlan-fdb {name}: MAC {mac.hex(':')} is given twice")
        fdb.setdefault(name, []).append((mac, address))
    vnis: dict[int, str] = {}
    for name, spec in request.vxlan.items():
        if spec.vni in vnis:
            raise ConfigError(f"--vxlan {name}: VNI {spec.vni} is already segment {vnis[spec.vni]}'s")
        vnis[spec.vni] = name
        entries = tuple(fdb.get(name, ()))
        if not spec.remotes and not entries and spec.group is None:
            raise ConfigError(
                f"--vxlan {name}: name at least one remote=ADDR, a group=MCAST (or a --vxlan-fdb entry)"
            )
        if spec.local in [a for _, a in entries]:
            raise ConfigError(f"--vxlan-fdb {name}: {spec.local} is the local address, not a remote")
        segment = by_name[name]
        segment.vxlan = replace(spec, fdb=entries)
        if segment.mtu_given and segment.mtu < MTU_MIN:
            raise ConfigError(f"--vxlan {name}: mtu {segment.mtu} is below {MTU_MIN}")


def underlay_mtu_check(segment: SegmentSpec, underlay_mtu: int) -> int:
    """The MTU a tunnel segment runs with: underlay - 50 unless the user set one, which must fit.
    A segment with IPv6 needs 1280 (RFC 8200 section 5); build() has checked a given one."""
    inner = underlay_mtu - VXLAN_OVERHEAD
    if segment.mtu_given and segment.mtu > inner:
        raise ConfigError(
            f"segment {segment.name}: mtu {segment.mtu} does not fit the VXLAN tunnel, whose inner "
            f"MTU is {inner} (the underlay's {underlay_mtu} minus {VXLAN_OVERHEAD} of encapsulation)"
        )
    least = MTU_MIN if segment.subnet6 is None else IPV6_MIN_MTU
    if not segment.mtu_given and inner < least:
        raise ConfigError(
            f"segment {segment.name}: the underlay's MTU {underlay_mtu} leaves {inner} for the tunnel, "
            f"below {least}" + ("" if segment.subnet6 is None else ", IPv6's least (RFC 8200 section 5)")
        )
    return segment.mtu if segment.mtu_given else inner


def _next_free_subnet(used: list[IPv4Network]) -> IPv4Network:
    """The next 10.N.0.0/24 (N = 1, 2, ...) that overlaps nothing already used."""
    for n in range(1, 256):
        candidate = IPv4Network(f"10.{n}.0.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise ConfigError("no free 10.N.0.0/24 subnet left: give subnets explicitly")


def assign_addresses(segment: SegmentSpec, reserved: set[IPv4Address] | None = None) -> None:
    """Give each port without an address the next free host of the segment's subnet, in order."""
    taken = set(reserved or ())
    taken.update(p.address.ip for p in segment.ports if p.address is not None)
    hosts = (h for h in segment.subnet.hosts() if h not in taken)
    resolved: list[PortSpec] = []
    for port in segment.ports:
        if port.address is None and not port.dhcp:  # =dhcp: DHCP's to give (the DHCP issue)
            host = next(hosts, None)
            if host is None:
                raise ConfigError(
                    f"subnet {segment.subnet} is too small for {len(segment.ports)} ports"
                    + (" and a gateway" if reserved else "")
                )
            port = replace(port, address=IPv4Interface(f"{host}/{segment.subnet.prefixlen}"))
        elif (
            port.address is not None and port.address.ip not in segment.subnet and segment.gateway is not None
        ):
            raise ConfigError(f"address {port.address} of {port.label} is outside segment {segment.name}")
        resolved.append(port)
    segment.ports = resolved


def assign_addresses6(segment: SegmentSpec, subnet: IPv6Network) -> None:
    """The Nth namespace port gets subnet::N (the host port is left alone: the root's IPv6 is not ours
    to change)."""
    resolved: list[PortSpec] = []
    number = 0
    for port in segment.ports:
        if port.namespace is not None:
            number += 1
            if number >= subnet.num_addresses:  # ::0 is the subnet-router anycast (RFC 4291 2.6.1)
                raise ConfigError(f"IPv6 subnet {subnet} is too small for {len(segment.ports)} ports")
            address = IPv6Interface(f"{subnet.network_address + number}/{subnet.prefixlen}")
            port = replace(port, address6=address)
        resolved.append(port)
    segment.ports = resolved


def validate(topology: Topology) -> Topology:
    """Checks that need the whole picture: duplicates, overlaps, references."""
    check_instance(topology.name)
    ports = topology.ports
    if not ports:
        raise ConfigError("no ports: give --ports ns1,ns2,...")
    namespaces = [p.namespace for p in ports if p.namespace is not None]
    if topology.uplink is not None:
        namespaces.append(topology.uplink.namespace)
    namespaces.extend(t.namespace for t in topology.trunks)
    namespaces.extend(m.port.namespace for m in topology.mirrors if m.port.namespace is not None)
    names = {s.name for s in topology.segments}
    for trunk in topology.trunks:
        for member in trunk.segments:
            if member not in names:
                raise ConfigError(f"--trunk {trunk.label}: there is no segment {member!r}")
    _check_mirrors(topology)
    seen: set[str] = set()
    for namespace in namespaces:
        if namespace in seen:
            raise ConfigError(f"namespace {namespace} is listed twice")
        seen.add(namespace)
    if sum(p.namespace is None for p in ports) > 1:
        raise ConfigError("the host port is listed twice")
    labels: set[str] = set()
    for port in ports:  # the name capture, trace, stats and DNS find it by
        if port.label in labels:
            raise ConfigError(
                f"two ports are called {port.label}: name one of them (NAME=pid:PID or NAME=/PATH)"
            )
        labels.add(port.label)
    if topology.routed:
        nets: list[IPv4Network | IPv6Network] = [s.subnet for s in topology.segments]
        if topology.uplink is not None:
            nets.append(topology.uplink.address.network)
        nets.extend(s.subnet6 for s in topology.segments if s.subnet6 is not None)
        for i, a in enumerate(nets):
            for b in nets[i + 1 :]:
                if a.overlaps(b):  # never across families
                    raise ConfigError(f"subnets {a} and {b} overlap: a router needs them apart")
    addresses: set[IPv4Address] = set()
    for segment in topology.segments:
        for port in segment.ports:
            if port.address is None:  # =dhcp
                continue
            if port.address.ip in addresses or (segment.gateway and port.address.ip == segment.gateway.ip):
                raise ConfigError(f"address {port.address.ip} is given twice")
            addresses.add(port.address.ip)
    for forward in topology.forwards:
        if topology.uplink is None:
            raise ConfigError("--forward needs an --uplink to forward from")
        if topology.port(forward.namespace) is None:
            raise ConfigError(f"--forward target {forward.namespace} is not a port")
    if topology.routes and not topology.routed:
        raise ConfigError("--route needs a routed topology (--segment or --uplink)")
    connected: list[IPv4Network | IPv6Network] = [s.subnet for s in topology.segments]
    if topology.uplink is not None:
        connected.append(topology.uplink.address.network)
    connected.extend(s.subnet6 for s in topology.segments if s.subnet6 is not None)
    for route in topology.routes:
        # RFC 1812 5.2.4.3 and RFC 4861 5.2: a next hop is a neighbour, on a connected network of the
        # prefix's family (so a hand-made RouteSpec with a gateway of the other family is on none).
        if not any(route.via in net for net in connected if net.version == route.prefix.version):
            raise ConfigError(f"route {route.prefix} via {route.via}: the gateway is on no segment")
    if topology.host_routes and not any(p.namespace is None for p in ports):
        raise ConfigError("--host-routes needs a host port (--host)")
    # nan and inf compare as no number does: a nan deadline never passes, so the FDB would never age.
    # RFC 4861 6.2.1 asks 4-1800 s; a lab may go as low as 0.1 s (RFC 6275 7.5 goes to 0.03 s).
    if not (
        math.isfinite(topology.ra_interval) and RA_INTERVAL_MIN <= topology.ra_interval <= RA_INTERVAL_MAX
    ):
        raise ConfigError(
            f"ra-interval must be {RA_INTERVAL_MIN:g} to {RA_INTERVAL_MAX:g} seconds, "
            f"not {topology.ra_interval!r}"
        )
    if not (math.isfinite(topology.ageing) and topology.ageing > 0):
        raise ConfigError(f"ageing must be a positive number of seconds, not {topology.ageing!r}")
    if topology.fdb_max < 1:
        raise ConfigError("fdb-max must be at least 1")
    if not 1 <= topology.txqueuelen <= 1_000_000:
        raise ConfigError("txqueuelen must be between 1 and 1000000")
    if not 0 <= topology.flow_cache <= FLOW_CACHE_MAX:
        raise ConfigError(f"flow-cache must be between 0 (off) and {FLOW_CACHE_MAX}")
    check_ports(topology.links, _link_ports(topology))
    protect.check(topology.protect, {p.label for p in topology.ports if p.namespace is not None})
    return topology


def _check_mirrors(topology: Topology) -> None:
    """A mirror's source is a tap port of ours (a namespace's, the host's, the uplink); its port is
    none of them, and two mirrors do not share one (a namespace named twice is refused above)."""
    kinds = _link_ports(topology)
    taken: set[str] = set()
    for mirror in topology.mirrors:
        what = f"--mirror {mirror.source}={mirror.port.label}"
        kind = kinds.get(mirror.source)
        if kind is None:
            raise ConfigError(f"{what}: there is no port {mirror.source!r} to mirror")
        if kind != "port":
            raise ConfigError(f"{what}: {mirror.source} is a {kind}; mirror a namespace's port")
        if mirror.port.label in kinds:
            kind = kinds[mirror.port.label]
            raise ConfigError(f"{what}: {mirror.port.label} is a {kind} already; a mirror port is a new one")
        if mirror.port.label in taken:
            raise ConfigError(f"{what}: mirror port {mirror.port.label} is given twice")
        taken.add(mirror.port.label)


def _link_ports(topology: Topology) -> dict[str, str]:
    """What a [link.PORT] may name, by kind: a tap of ours (a namespace's port, the host port, the
    uplink) is a "port"; trunks and tunnels are named to be refused with a reason."""
    kinds = {f"vx{s.vxlan.vni}": "tunnel" for s in topology.segments if s.vxlan is not None}
    kinds.update((t.label, "trunk") for t in topology.trunks)
    kinds.update((p.label, "port") for p in topology.ports)
    if topology.uplink is not None:
        kinds[topology.uplink.namespace] = "port"
    return kinds


def single_segment(
    name: str, ports: list[PortSpec], subnet: IPv4Network = DEFAULT_SUBNET, **options: float
) -> Topology:
    """The `--ports` shorthand with defaults, for tests and the Python API."""
    return build(
        Request(
            name=name,
            ports=ports,
            subnet=subnet,
            ageing=float(options.get("ageing", DEFAULT_AGEING)),
            fdb_max=int(options.get("fdb_max", DEFAULT_MAX_ENTRIES)),
        )
    )


# --- TOML ------------------------------------------------------------------------------------------
TOML_KEYS = (
    services.TOML_KEYS
    | protect.TOML_KEYS
    | {
        "name",
        "ports",
        "subnet",
        "subnet6",
        "segment",
        "uplink",
        "forward",
        "route",
        "host",
        "host_routes",
        "ageing",
        "ra_interval",
        "nat6",
        "fdb_max",
        "txqueuelen",
        "flow_cache",
        "mtu",
        "trunk",
        "link",
        "mirror",
    }
)


SEGMENT_KEYS = {"name", "ports", "subnet", "subnet6", "mtu", "vxlan"}
VXLAN_TOML_KEYS = {"vni", "local", "netns", "remote", "dstport", "ttl", "fdb", "group"}


def request_from_toml(text: str) -> Request:
    """The same options as the command line, as a TOML document (see README)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}") from None
    unknown = set(data) - TOML_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in the config file: {', '.join(sorted(unknown))}")
    req = Request()
    req.name = _str(data, "name", "default")
    if "ports" in data:
        req.ports = [parse_port(p) for p in _list(data, "ports")]
    if "subnet" in data:
        req.subnet = parse_subnet(_str(data, "subnet", ""))
    if "subnet6" in data:
        req.subnet6 = parse_subnet6(_str(data, "subnet6", ""))
    segments = data.get("segment", [])
    if not isinstance(segments, list):
        raise ConfigError("segment must be a list of tables: write each one as a [[segment]] section")
    for seg in segments:
        if not isinstance(seg, dict) or "name" not in seg or "ports" not in seg:
            raise ConfigError("each [[segment]] needs name and ports")
        extra = set(seg) - SEGMENT_KEYS
        if extra:
            # A top-level key written after a [[segment]] header lands in that table (TOML's rule).
            raise ConfigError(
                f"unknown key(s) in [[segment]] {seg['name']}: {', '.join(sorted(extra))} "
                "(top-level keys go before the first [[segment]])"
            )
        subnet = parse_subnet(_str(seg, "subnet", "")) if "subnet" in seg else None
        subnet6 = parse_subnet6(_str(seg, "subnet6", "")) if "subnet6" in seg else None
        ports = [parse_port(str(p)) for p in _list(seg, "ports")]
        if not SEGMENT_RE.fullmatch(str(seg["name"])):
            raise ConfigError(f"invalid segment name {seg['name']!r}")
        req.add_segment(str(seg["name"]), ports, subnet, subnet6)
        if "mtu" in seg:
            req.segment_mtu[str(seg["name"])] = check_mtu(seg["mtu"], f"mtu of segment {seg['name']}")
        if "vxlan" in seg:
            _vxlan_from_toml(req, str(seg["name"]), seg["vxlan"])
    if "uplink" in data:
        up = data["uplink"]
        if isinstance(up, str):
            req.uplink = parse_uplink(up)
        elif isinstance(up, dict) and "namespace" in up:
            text = str(up["namespace"])
            if "address" in up:
                text += f"={up['address']}"
            if "via" in up:
                text += f",via={up['via']}"
            req.uplink = parse_uplink(text)
            if "mtu" in up:
                req.segment_mtu[UPLINK_SEGMENT] = check_mtu(up["mtu"], "mtu of the uplink")
        else:
            raise ConfigError("uplink is a string (NS[=ADDR/PREFIX][,via=GW]) or a table with namespace")
    trunks = data.get("trunk", [])
    if not isinstance(trunks, list) or not all(isinstance(t, dict) for t in trunks):
        raise ConfigError("trunk must be a list of tables: write each one as a [[trunk]] section")
    req.trunks = [_trunk_from_toml(t) for t in trunks]
    req.forwards = [parse_forward(f) for f in _list(data, "forward")]
    req.routes = [parse_route(r) for r in _list(data, "route")]
    host = data.get("host", False)
    if isinstance(host, str):
        req.host, req.host_address = True, parse_interface(host, "host address")
    elif isinstance(host, bool):
        req.host = host
    else:
        raise ConfigError("host is true, false or an address like 10.0.0.100/24")
    req.host_routes = _bool(data, "host_routes", False)
    req.ageing = _seconds(data, "ageing", DEFAULT_AGEING)
    req.ra_interval = _seconds(data, "ra_interval", DEFAULT_RA_INTERVAL)
    if "nat6" in data:
        req.nat6 = parse_nat6(_str(data, "nat6", ""))
    req.fdb_max = _int(data, "fdb_max", DEFAULT_MAX_ENTRIES)
    req.txqueuelen = _int(data, "txqueuelen", DEFAULT_TXQUEUELEN)
    req.flow_cache = _int(data, "flow_cache", FLOW_CACHE_ENTRIES)
    if "mtu" in data:
        req.mtu = check_mtu(data["mtu"], "mtu")
    req.services = services.from_toml(data)
    req.mirrors = [parse_mirror(text, "mirror") for text in _list(data, "mirror")]
    if "link" in data:
        req.links = link_settings_from_toml(data["link"])
    req.protect = protect.from_toml(data)
    return req


def _trunk_from_toml(table: dict[str, Any]) -> TrunkSpec:
    """A [[trunk]] table: port (in the port grammar, no address), vlans = {segment = VID, ...}, native."""
    unknown = set(table) - {"port", "vlans", "native"}
    if unknown:
        raise ConfigError(f"unknown key(s) in [[trunk]]: {', '.join(sorted(unknown))}")
    port = _str(table, "port", "")
    trunk_port = _trunk_port(port, f"[[trunk]] {port}")
    vlans = table.get("vlans", {})
    if not isinstance(vlans, dict):
        raise ConfigError(f"[[trunk]] {port}: vlans is a table of segment = VID, e.g. {{lan = 10, dmz = 20}}")
    pairs = []
    for segment, vid in vlans.items():
        if not SEGMENT_RE.fullmatch(segment):
            raise ConfigError(f"[[trunk]] {port}: invalid segment name {segment!r}")
        if isinstance(vid, str):  # TOML has numbers: "10" is a string, as mtu and fdb_max refuse it
            what = f"[[trunk]] {port}: VLAN of {segment}"
            raise ConfigError(f"{what} must be a VLAN ID from {VID_MIN} to {VID_MAX}, not {vid!r}")
        pairs.append((segment, check_vid(vid, f"[[trunk]] {port}: VLAN of {segment}")))
    native = table.get("native")
    if native is not None and (not isinstance(native, str) or not SEGMENT_RE.fullmatch(native)):
        raise ConfigError(f"[[trunk]] {port}: native is a segment name, not {native!r}")
    spec = trunk_spec(trunk_port.namespace or "", pairs, native, trunk_port.ifname)
    return replace(spec, name=trunk_port.name, attached=trunk_port.attached)


def _vxlan_from_toml(req: Request, name: str, table: object) -> None:
    """A [segment.vxlan] table: vni, local, netns, remote (one or a list), dstport, ttl, fdb."""
    what = f"[segment.vxlan] of {name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{what} must be a table (write it as a [segment.vxlan] section)")
    unknown = set(table) - VXLAN_TOML_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in {what}: {', '.join(sorted(unknown))}")
    if "vni" not in table or isinstance(table["vni"], bool) or not isinstance(table["vni"], int):
        raise ConfigError(f"{what}: vni must be a whole number")

    def one(key: str) -> list[str]:
        if key not in table:
            return []
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{what}: {key} must be a string or a number, not {value!r}")
        return [str(value)]

    req.vxlan[name] = vxlan_spec(
        what,
        str(table["vni"]),
        one("local"),
        one("netns"),
        _list(table, "remote"),
        one("dstport"),
        one("ttl"),
        _list(table, "group"),
    )
    for entry in _list(table, "fdb"):
        req.vxlan_fdb.append(parse_vxlan_fdb(f"{name}={entry}"))


def _str(data: dict[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string")
    return value


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    """true or false only: bool("no") is True, so a string must not slip through as one."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, not {value!r}")
    return value


def _int(data: dict[str, Any], key: str, default: int) -> int:
    """A whole number; TOML's booleans and floats are refused, not rounded (int(1.5) is 1)."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, not {value!r}")
    return value


def _seconds(data: dict[str, Any], key: str, default: float) -> float:
    """A positive, finite duration: TOML can spell nan and inf, and neither is a time."""
    value = data.get(key, default)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key} must be a positive number of seconds, not {value!r}")
    return float(value)


def _list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings")
    return [str(v) for v in value]
