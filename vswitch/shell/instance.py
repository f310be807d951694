"""A running switch: builds the kernel side from a Topology, runs the shell, tears down what it made.

Start-up records every object in the ledger the moment it exists; a failure half-way rolls back
newest-first; a clean stop (SIGINT, SIGTERM) undoes the same list. `down()` undoes a dead
instance's ledger after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Any, Final, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from ..config.topology import (
    DEFAULT_IFNAME,
    UPLINK_SEGMENT,
    ConfigError,
    MirrorSpec,
    PortSpec,
    SegmentSpec,
    Topology,
    TrunkSpec,
    underlay_mtu_check,
)
from ..core.bpf import FilterError, compile_filter
from ..core.counters import Event
from ..core.datapath import Datapath
from ..core.emulation import Direction, Emulator, Impairment
from ..core.nat import PortForward
from ..core.vlan import Trunk
from ..core.vxlan import Tunnel, Vtep
from . import kernel, services
from .control import CommandError, ControlServer, ControlTable
from .kernel import STOP_SIGNALS, KernelError
from .loop import EMULATION_CLOCK, Shell
from .looplag import LoopLag
from .state import Ledger, lease_path, socket_path, state_path, stray_files
from .tap import Tap, TapError, open_tap, set_carrier
from .underlay import UnderlaySockets, open_sender, open_underlay

# A namespace port on a routed IPv6 segment: it takes its address and default route from our router
# advertisements (SLAAC, RFC 4862), asks for one at once when it comes up (no 1 s solicitation delay),
# and skips duplicate address detection, as our own static addresses do (the router hands out one
# /64 per segment and every interface identifier in it comes from a MAC we made).
SLAAC_CONF: Final = {"accept_ra": 1, "dad_transmits": 0, "router_solicitation_delay": 0}
# The host port: the root namespace's IPv6 stays as it was, no link-local address (addr_gen_mode 1:
# none), no advertisement taken.
HOST_CONF: Final = {"accept_ra": 0, "addr_gen_mode": 1}
# The outside namespace: a static address and routes, as an upstream router has; nothing learned.
OUTSIDE_CONF: Final = {"accept_ra": 0, "dad_transmits": 0}
# A mirror (SPAN) port's interface: no IPv6 (no link-local address, no solicitations, no MLD): it
# sends nothing by itself, and a packet socket there (tcpdump) still sees every frame it is given.
MIRROR_CONF: Final = {"disable_ipv6": 1}
SLAAC_WAIT: Final = 5.0
SLAAC_POLL: Final = 0.05
# A state folder that cannot be written is logged at most this often (each failure is counted).
STATE_ERROR_LOG_INTERVAL: Final = 10.0
logger = logging.getLogger("vswitch")


T = TypeVar("T")


class StartError(Exception):
    """Start-up could not finish; everything already made has been removed."""


@dataclass
class LivePort:
    """A port as it runs: where it is, what the kernel gave it, and its fd."""

    id: int
    label: str
    namespace: str | None
    ifname: str
    address: IPv4Interface | None
    mac: str
    segment: str
    tap: Tap
    address6: IPv6Interface | None = None
    attached: bool = False  # in a namespace vswitch did not make (pid:, /PATH): only the tap is ours

    def describe(self) -> dict[str, Any]:
        return {
            "port": self.label,
            "namespace": self.namespace,
            "interface": self.ifname,
            "mac": self.mac,
            "address": str(self.address) if self.address else None,
            "address6": str(self.address6) if self.address6 else None,
            "segment": self.segment,
            "attached": self.attached,
        }


@dataclass
class LiveTrunk:
    """A trunk as it runs: its datapath ports (vlan.Trunk), what was asked, its MAC and its tap."""

    trunk: Trunk
    spec: TrunkSpec
    mac: str
    tap: Tap

    def describe(self, names: list[str]) -> dict[str, Any]:
        return {
            "port": self.trunk.name,
            "namespace": self.spec.namespace,
            "interface": self.spec.ifname,
            "mac": self.mac,
            "vlans": dict(self.spec.vlans),
            "native": self.spec.native,
            "ports": [names[p] for p in self.trunk.ports],
        }


@dataclass
class LiveMirror:
    """A mirror as it runs: what was asked, its port (id, MAC, name there, tap) and its source's id."""

    spec: MirrorSpec
    id: int
    source: int
    ifname: str
    mac: str
    tap: Tap

    def describe(self, counters: Any) -> dict[str, Any]:
        return {
            "source": self.spec.source,
            "port": self.spec.port.label,
            "direction": self.spec.direction,
            "namespace": self.spec.port.namespace,
            "interface": self.ifname,
            "mac": self.mac,
            "copies": counters.tx_packets[self.id],
            "dropped": counters.drops[self.id].get("mirror-port", 0),
        }


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (IEEE 802 section 8.2: I/G bit 0, U/L bit 1)."""
    raw = bytearray(secrets.token_bytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


def _tap_name(instance: str) -> str:
    """A fresh root-namespace name: 'vs' + 12 hex, well under IFNAMSIZ, never an existing link."""
    for _ in range(16):
        name = f"vs{secrets.token_hex(6)}"
        if not kernel.link_exists(None, name):
            return name
    raise StartError("could not find a free interface name")


class Instance:
    def __init__(
        self,
        topology: Topology,
        control: ControlTable[Instance],
        log: Callable[[str], None] | None = None,
    ) -> None:
        """control: the requests its control socket answers (the CLI and the API serve debug.SERVED)."""
        self.control = control
        self.topology = topology
        self.ledger = Ledger(topology.name)
        self.datapath = Datapath(topology.ageing, topology.fdb_max, topology.flow_cache)
        guard = topology.protect
        self.datapath.protect(guard.storm_limit, guard.loop_guard, guard.loop_guard_hold)
        self.ports: list[LivePort] = []
        self.started_at = time.time()
        self.log = log or (lambda _msg: None)
        self._taps: list[Tap] = []
        self.router: Any = None
        self.shell: Shell | None = None  # set while serving
        self.router_macs: dict[int, bytes] = {}
        self._stop: asyncio.Event | None = None
        self.busy_poll = 0.0  # seconds of busy polling after traffic (opt-in, for latency)
        self.metrics: tuple[str, int] | None = None  # (host, port) of a Prometheus endpoint, if asked
        self.underlay_mtus: dict[str, int] = {}  # tunnel segment -> the underlay's MTU toward its remotes
        self.underlays: list[tuple[Vtep, UnderlaySockets]] = []
        self.netns_of: dict[int, str | None] = {}  # id(vtep) -> the underlay's namespace
        self.trunks: list[LiveTrunk] = []
        self.mirrors: list[LiveMirror] = []
        self.made_namespaces: set[str] = set()
        self._state_log_at = 0.0  # monotonic time before which a state write failure is not logged
        self._state_unlogged = 0
        self.loop_lag: LoopLag | None = None  # while serving: how late the loop runs its timers

    # --- start-up ----------------------------------------------------------------------------------
    def build(self) -> None:
        """Make every namespace, tap, address, route; on any failure undo all of it, raise StartError."""
        self._claim()
        try:
            self._size_tunnels()
            for segment in self.topology.segments:
                seg_index = self.datapath.add_segment(segment.name)
                # A tunnel's ports take complete frames: the underlay carries no super-frames and no
                # partial checksums. The namespace's stack finishing them measured 3% faster and 3%
                # less CPU than TSO cut here by gso.py (README), which serves frames routed in.
                offloads = segment.vxlan is None
                conf = SLAAC_CONF if segment.gateway6 is not None else None
                for spec in segment.ports:
                    self._add_port(spec, seg_index, segment.name, segment.mtu, offloads, conf)
            self._add_tunnels()
            self._add_trunks()
            uplink = self.topology.uplink
            if uplink is not None:
                seg_index = self.datapath.add_segment(UPLINK_SEGMENT)
                outside = IPv4Interface(f"{uplink.upstream}/{uplink.address.network.prefixlen}")
                outside6 = None
                if self.topology.nat6 is not None:  # the outside world's IPv6 address, static
                    outside6 = IPv6Interface(f"{uplink.upstream6}/{uplink.address6.network.prefixlen}")
                spec = PortSpec(uplink.namespace, uplink.ifname, outside, outside6)
                conf = None if outside6 is None else OUTSIDE_CONF
                self._add_port(spec, seg_index, UPLINK_SEGMENT, self.topology.uplink_mtu, True, conf)
            self._add_mirrors()
            if self.topology.routed:
                self._add_router()
                self._add_namespace_routes()
                self._add_outside_routes6()
            self._secure_ports()
        except NetlinkError as exc:
            self.teardown()
            raise StartError(f"the kernel refused a step: {os.strerror(exc.code)}") from None
        except (KernelError, TapError, OSError) as exc:
            self.teardown()
            raise StartError(str(exc)) from None
        except BaseException:
            self.teardown()
            raise

    def _claim(self) -> None:
        try:
            old = Ledger.load(self.topology.name)
        except OSError as exc:
            raise StartError(
                f"{exc}; if no vswitch {self.topology.name} is running, remove that file"
            ) from None
        if old is not None:
            if old.owner_alive():
                raise StartError(f"instance {self.topology.name} is already running (pid {old.pid})")
            raise StartError(
                f"instance {self.topology.name} left state behind (pid {old.pid} is gone): "
                f"run 'vswitch down --name {self.topology.name}' first"
            )
        try:
            self.ledger.claim()
        except FileExistsError:
            raise StartError(f"instance {self.topology.name} is starting elsewhere") from None
        except PermissionError:
            raise StartError(f"cannot write {state_path(self.topology.name)}: run as root") from None

    def _add_port(
        self,
        spec: PortSpec,
        seg_index: int,
        seg_name: str,
        mtu: int,
        offloads: bool = True,
        ipv6_conf: dict[str, int] | None = None,
    ) -> None:
        tap, mac, ifname = self._make_tap(spec, mtu, offloads, ipv6_conf, [seg_name])
        port_id = self.datapath.add_port(spec.label, seg_index)
        self._limit_macs(port_id, spec, seg_name)
        self.ports.append(
            LivePort(
                port_id,
                spec.label,
                spec.namespace,
                ifname,
                spec.address,
                mac,
                seg_name,
                tap,
                spec.address6,
                spec.attached,
            )
        )

    def _make_tap(
        self,
        spec: PortSpec,
        mtu: int,
        offloads: bool = True,
        ipv6_conf: dict[str, int] | None = None,
        segments: Sequence[str] = (),
    ) -> tuple[Tap, str, str]:
        """The tap of a port: its namespace made if missing (lo up, and its own resolv.conf naming the
        DNS of the segments given), the tap opened, recorded, moved there, named, given its IPv6
        settings, addressed and up. Returns it, its MAC and its name there. In an attached namespace
        (pid:, /PATH) only the tap is ours: nothing else there is touched."""
        namespace = spec.namespace
        if spec.attached:
            assert namespace is not None
            if kernel.netns_inode(namespace) is None:
                raise StartError(f"port {spec.label}: no namespace at {namespace} (has the process gone?)")
            if not spec.ifname:  # a container usually has its own eth0
                spec = replace(
                    spec, ifname="vs0" if kernel.link_exists(namespace, DEFAULT_IFNAME) else DEFAULT_IFNAME
                )
        if namespace is not None and not spec.attached:
            if kernel.netns_inode(namespace) is None:

                def record_netns(inode: int, cookie: int | None) -> None:
                    """Before the namespace has its name: a kill from here on leaves it recorded."""
                    self.ledger.record("netns", name=namespace, inode=inode, cookie=cookie)

                kernel.create_netns(namespace, record_netns)
                self.made_namespaces.add(namespace)
                kernel.set_lo_up(namespace)
                text = services.resolv_conf_text(self._nameservers(segments), self._search_domain())
                services.write_resolv_conf(namespace, text, self.ledger.record)
            else:
                lo = kernel.lo_state(namespace)
                if lo is not None and not lo.up:
                    # Someone else's namespace, lo down: we bring it up, and put it back when we go,
                    # recorded first (and whether it had 127.0.0.1, which lo coming up adds).
                    cookie = kernel.netns_cookie(namespace)
                    self.ledger.record("lo-up", namespace=namespace, cookie=cookie, bare=lo.bare)
                    kernel.set_lo_up(namespace)
        if namespace is not None:
            tap = open_tap(_tap_name(self.topology.name), offloads)
        else:  # the host port keeps its name: IFF_TUN_EXCL refuses a clash
            tap = open_tap(spec.ifname, offloads)
            ipv6_conf = HOST_CONF
        self._taps.append(tap)
        record = self.ledger.record("tap", name=tap.name, namespace=namespace, ifname=spec.ifname)
        try:
            mac = kernel.place_tap(
                tap.name,
                namespace,
                spec.ifname,
                spec.address,
                self.topology.txqueuelen,
                mtu,
                spec.address6,
                ipv6_conf,
            )
        except BaseException:
            # No port: its tap goes now (closed, the kernel deletes it wherever it got to), then leaves
            # the ledger. At start-up teardown would have closed it; a live add has no teardown.
            tap.close()
            self._taps.remove(tap)
            self.ledger.forget(record)
            raise
        return tap, mac, spec.ifname

    def _add_trunks(self) -> None:
        """Each trunk: a tap with no address in its namespace, at the largest MTU of its segments (a
        tag does not count against the MTU), and its ports in the datapath (vlan.py)."""
        index = {s.name: i for i, s in enumerate(self.topology.segments)}
        for spec in self.topology.trunks:
            segments = [self.topology.segments[index[name]] for name in spec.segments]
            port = PortSpec(spec.namespace, spec.ifname, name=spec.name, attached=spec.attached)
            tap, mac, ifname = self._make_tap(port, max(s.mtu for s in segments), True, None, spec.segments)
            spec = replace(spec, ifname=ifname)  # an attached one's, chosen where it is free
            trunk = Trunk(spec.label)
            native = index[spec.native] if spec.native is not None else None
            self.datapath.add_trunk(trunk, [(index[name], vid) for name, vid in spec.vlans], native)
            self.trunks.append(LiveTrunk(trunk, spec, mac, tap))

    def _add_mirrors(self) -> None:
        """Each mirror's port: a tap made as a --ports port's (its namespace made if missing, lo up,
        recorded), at its source's MTU, but with no address and no IPv6, on no segment."""
        for spec in self.topology.mirrors:
            source = next(p for p in self.ports if p.label == spec.source)
            mtu = next((s.mtu for s in self.topology.segments if s.name == source.segment), None)
            tap, mac, ifname = self._make_tap(spec.port, mtu or self.topology.uplink_mtu, True, MIRROR_CONF)
            port_id = self.datapath.add_mirror(spec.port.label)
            self.mirrors.append(LiveMirror(spec, port_id, source.id, ifname, mac, tap))

    def _size_tunnels(self) -> None:
        """A tunnel segment's MTU: the underlay's toward its remotes minus 50, or the user's if it fits.
        Asked before any port exists, so the ports and the router's interface are made with it."""
        for segment in self.topology.segments:
            spec = segment.vxlan
            if spec is None:
                continue
            if spec.netns is not None and kernel.netns_inode(spec.netns) is None:
                raise StartError(
                    f"--vxlan {segment.name}: the underlay's namespace {spec.netns} does not exist"
                )
            underlay = min(
                kernel.address_mtu(spec.netns, spec.local)
                if remote.is_multicast
                else kernel.route_mtu(spec.netns, remote)
                for remote, _ in spec.all_remotes
            )
            try:
                segment.mtu = underlay_mtu_check(segment, underlay)
            except ConfigError as exc:
                raise StartError(str(exc)) from None
            self.underlay_mtus[segment.name] = underlay

    def _add_tunnels(self) -> None:
        """Each tunnel's ports in the datapath, its static entries, and the underlay's sockets: one
        receiving socket per local address and port, shared by the tunnels (VNIs) on it."""
        vteps: dict[tuple[str | None, str, int], tuple[Vtep, list[Any]]] = {}
        for index, segment in enumerate(self.topology.segments):
            spec = segment.vxlan
            if spec is None:
                continue
            tunnel = Tunnel(spec.vni, index, -1, str(spec.local), spec.dstport, spec.ttl, segment.mtu)
            if spec.group is not None:
                tunnel.group, tunnel.group_ttl = str(spec.group), spec.group_ttl
            self.datapath.add_tunnel(tunnel, [(str(a), flooded) for a, flooded in spec.all_remotes])
            fdb = self.datapath.segments[index].switch.fdb
            for mac, address in spec.fdb:
                fdb.add_static(mac, tunnel.remotes[str(address)], owned=False)
            key = (spec.netns, str(spec.local), spec.dstport)
            vtep, remotes = vteps.setdefault(key, (Vtep(str(spec.local), spec.dstport), []))
            vtep.add(tunnel)
            remotes.extend(a for a, _ in spec.all_remotes if a not in remotes)
        for (netns, local, dstport), (vtep, remotes) in vteps.items():
            sockets = open_underlay(netns, IPv4Address(local), dstport, remotes)
            self.underlays.append((vtep, sockets))
            self.netns_of[id(vtep)] = netns

    def _open_learned_remote(self, tunnel: Tunnel, address: str) -> int:
        """A socket for a remote learned at run time (a VTEP heard from on a tunnel with a group):
        made in the underlay's namespace like the configured ones, kept for teardown. -1 if the kernel
        refuses (its frames are then tx-error drops)."""
        for vtep, sockets in self.underlays:
            if tunnel.vni in vtep.tunnels and vtep.tunnels[tunnel.vni] is tunnel:
                if address not in sockets.senders:
                    try:
                        sockets.senders[address] = open_sender(self.netns_of[id(vtep)], IPv4Address(address))
                    except KernelError as exc:
                        self.log(f"vxlan {tunnel.vni}: no socket for learned remote {address}: {exc}")
                        return -1
                return sockets.senders[address].fileno()
        return -1

    def _add_router(self) -> None:
        """One router interface per segment (the gateway), one on the uplink, NAT toward it."""
        from ..core.nat import NatConfig
        from ..core.npt import Npt
        from ..core.routed import Interface
        from ..core.router import Router
        from ..core.router6 import RaConfig
        from ..core.routes import Route

        topo = self.topology
        interfaces: list[Interface] = []
        macs: dict[int, bytes] = {}
        for index, segment in enumerate(topo.segments):
            assert segment.gateway is not None
            macs[index] = random_mac()
            interfaces.append(
                Interface(
                    index,
                    segment.name,
                    macs[index],
                    segment.gateway,
                    mtu=segment.mtu,
                    address6=segment.gateway6,
                )
            )
        routes: list[Route] = []
        nat = None
        npt: tuple[Npt, int] | None = None
        nat6: NatConfig | None = None
        if topo.uplink is not None:
            index = len(topo.segments)
            macs[index] = random_mac()
            interfaces.append(
                Interface(
                    index, UPLINK_SEGMENT, macs[index], topo.uplink.address, mtu=topo.uplink_mtu, uplink=True
                )
            )
            routes.append(Route(IPv4Network("0.0.0.0/0"), topo.uplink.upstream, index))
            forwards = []
            for fwd in topo.forwards:
                target = topo.port(fwd.namespace)
                assert target is not None and target.address is not None
                forwards.append(PortForward(fwd.proto, fwd.port, target.address.ip, fwd.target_port))
            if topo.nat6 is not None:
                uplink6 = interfaces.pop()
                interfaces.append(replace(uplink6, address6=topo.uplink.address6, advertise=False))
                routes.append(Route(IPv6Network("::/0"), topo.uplink.upstream6, index))
                if topo.nat6.prefix is not None:
                    assert topo.subnet6 is not None
                    npt = (Npt(topo.subnet6, topo.nat6.prefix), index)
                elif topo.nat6.mode == "masquerade":
                    nat6 = NatConfig(
                        uplink=index,
                        address=topo.uplink.address6.ip,
                        inside=[s.subnet6 for s in topo.segments if s.subnet6 is not None],
                        forwards=self._forwards6(),
                    )
            nat = NatConfig(
                uplink=index,
                address=topo.uplink.address.ip,
                inside=[s.subnet for s in topo.segments],
                forwards=forwards,
            )
        routes.extend(Route(r.prefix, r.via, None) for r in topo.routes)
        ra = RaConfig(max_interval=topo.ra_interval)
        dhcp, dns = services.build(topo, None)
        self.router = Router(interfaces, routes, nat, ra=ra, npt=npt, nat6=nat6, dhcp=dhcp, dns=dns)
        self.router_macs = macs
        self.datapath.attach_router(self.router, macs)
        for port in self.ports:
            if port.namespace is None:  # the root namespace's IPv6 is not ours: no advertisements
                self.datapath.port_switch[port.id].no_ra.add(port.id)
        self._refresh_names()

    # --- the services' view of the ports (shell/services.py) ----------------------------------------
    def _nameservers(self, segments: Sequence[str]) -> list[str]:
        """The DNS servers of a namespace on these segments: the router's addresses there."""
        topo = self.topology
        if not topo.routed or not topo.services.dns:
            return []
        found: list[str] = []
        for segment in topo.segments:
            if segment.name in segments and segment.gateway is not None:
                found.append(str(segment.gateway.ip))
                if segment.gateway6 is not None:
                    found.append(str(segment.gateway6.ip))
        return found

    def _search_domain(self) -> str | None:
        topo = self.topology
        return topo.name if topo.routed and topo.services.dns else None

    def _refresh_names(self) -> None:
        """Tell the services about the ports as they are now: DHCP skips their fixed addresses, DNS
        answers their names (a `=dhcp` port's by its lease)."""
        router = self.router
        if router is None:
            return
        if router.dhcp is not None:
            router.dhcp.set_static(p.address.ip for p in self.ports if p.address is not None)
        if router.dns is not None:
            hosts: dict[str, list[IPv4Address | IPv6Address]] = {}
            dhcp_ports: dict[str, int] = {}
            for p in self.ports:
                if p.segment == UPLINK_SEGMENT or p.namespace is None:
                    continue
                addresses: list[IPv4Address | IPv6Address] = []
                if p.address is not None:
                    addresses.append(p.address.ip)
                if p.address6 is not None:
                    addresses.append(p.address6.ip)
                if addresses:
                    hosts[p.label] = addresses
                else:
                    dhcp_ports[p.label] = p.id
            router.dns.set_hosts(hosts, dhcp_ports)

    def _forwards6(self) -> list[PortForward]:
        """--forward in IPv6: to the address the target takes by SLAAC on its segment (its /64 and the
        EUI-64 of its MAC, RFC 4862 5.5.3 and RFC 4291 appendix A), known before it takes it."""
        from ..core.icmp6 import link_local_of
        from ..core.wire import parse_mac

        forwards = []
        for fwd in self.topology.forwards:
            segment = self.topology.segment_of(fwd.namespace)
            port = next((p for p in self.ports if p.label == fwd.namespace), None)
            if segment is None or segment.subnet6 is None or port is None:
                continue  # a target without IPv6: the forward is IPv4's only
            interface_id = link_local_of(parse_mac(port.mac))[8:]
            target = IPv6Address(segment.subnet6.network_address.packed[:8] + interface_id)
            forwards.append(PortForward(fwd.proto, fwd.port, target, fwd.target_port))
        return forwards

    def _add_namespace_routes(self) -> None:
        """Each namespace: a default route via its gateway. The host: only what --host-routes asks."""
        for segment in self.topology.segments:
            assert segment.gateway is not None
            for spec in segment.ports:
                if spec.namespace is not None and spec.address is not None:  # not =dhcp: no address yet
                    live = next(p for p in self.ports if p.label == spec.label)
                    try:
                        kernel.add_route(
                            live.namespace, IPv4Network("0.0.0.0/0"), segment.gateway.ip, live.ifname
                        )
                    except KernelError as exc:
                        if not live.attached:
                            raise
                        # A container has its default route already: it keeps it (ours would go with
                        # our tap anyway); it reaches this segment directly, the rest as it routes.
                        self.log(f"{live.label}: no default route via {segment.gateway.ip}: {exc}")
                elif self.topology.host_routes:
                    for other in self.topology.segments:
                        if other is not segment:
                            kernel.add_route(None, other.subnet, segment.gateway.ip, spec.ifname)
                            # Routes through our tap die with it; recorded so `status` can show them.
                            self.ledger.record("route", dst=str(other.subnet), via=str(segment.gateway.ip))

    def _add_outside_routes6(self) -> None:
        """--nat6 none or prefix=: the outside namespace we made gets the route back to the inside
        prefix (or NPTv6's outside one) via our uplink address, as an upstream router would be told.
        A namespace that was there before is the user's: they add it (README)."""
        topo = self.topology
        uplink, nat6 = topo.uplink, topo.nat6
        if uplink is None or nat6 is None or nat6.mode == "masquerade":
            return
        if uplink.namespace not in self.made_namespaces:
            self.log(f"{uplink.namespace}: add a route to the inside prefixes via {uplink.address6.ip}")
            return
        if nat6.prefix is not None:
            prefixes = [nat6.prefix]
        elif topo.subnet6 is not None:
            prefixes = [topo.subnet6]
        else:
            prefixes = [s.subnet6 for s in topo.segments if s.subnet6 is not None]
        for prefix in prefixes:
            kernel.add_route(uplink.namespace, prefix, uplink.address6.ip, uplink.ifname)

    # --- live ports (vswitch port add / del / move) ------------------------------------------------
    # Each runs on the loop's thread between batches; the kernel's part (netlink, a thread in the
    # namespace) in the default executor, so forwarding goes on meanwhile. The tap is in the ledger
    # before the port forwards (_make_tap records it first): a SIGKILL at any moment leaves `down`
    # an exact list.
    def _limit_macs(self, port_id: int, spec: PortSpec, seg_name: str) -> None:
        """A namespace's port learns at most --port-mac-max MACs; the host port and the uplink carry a
        whole network's and, like trunks and tunnels, are bounded by the segment's --fdb-max only."""
        if spec.namespace is not None and seg_name != UPLINK_SEGMENT:
            self.datapath.set_port_mac_max(port_id, self.topology.protect.namespace_port_mac_max)

    def _secure_ports(self) -> None:
        """--port-security: each named port may send from its MAC and its addresses only: the static
        ones, the EUI-64 ones SLAAC forms from the segment's /64 (and the link-local one), and
        whatever the router's DHCP server has leased to that MAC while the lease lasts."""
        from ..core.protect import PortSecurity
        from ..core.wire import parse_mac

        dhcp = self.router.dhcp if self.router is not None else None

        def leased(mac: bytes) -> IPv4Address | None:
            lease = dhcp.leases.get(mac) if dhcp is not None else None
            return lease.address if lease is not None and lease.bound else None

        segments = {s.name: s for s in self.topology.segments}
        for label in self.topology.protect.port_security:
            live = self._live(label)
            seg = segments.get(live.segment)
            prefixes = [seg.subnet6.network_address] if seg is not None and seg.subnet6 is not None else []
            rules = PortSecurity.of(
                parse_mac(live.mac),
                [] if live.address is None else [live.address.ip],
                [] if live.address6 is None else [live.address6.ip],
                prefixes,
                leased if dhcp is not None else None,
            )
            self.datapath.secure(live.id, rules)

    async def add_port_live(self, text: str, segment: str | None = None, address: str | None = None) -> Any:
        from ..config.topology import parse_interface, parse_port

        spec = parse_port(text)
        if address is not None:
            spec = replace(spec, address=parse_interface(address, f"address for port {spec.label}"))
        if spec.namespace is None:
            raise CommandError("the host port is given at start (--host), not added live")
        if any(p.label == spec.label for p in self.ports):
            raise CommandError(f"there is a port {spec.label} already")
        index, seg = self._segment_named(segment)
        if spec.address is not None:
            self._check_address(spec.address, seg, spec.label)
        elif not spec.dhcp:
            spec = replace(spec, address=self._free_address(seg))
        conf = SLAAC_CONF if seg.gateway6 is not None else None
        loop = asyncio.get_running_loop()
        try:
            tap, mac, ifname = await loop.run_in_executor(
                None, _signals_held, self._make_tap, spec, seg.mtu, seg.vxlan is None, conf, [seg.name]
            )
        except StartError as exc:  # its words name the port already
            raise CommandError(str(exc)) from None
        except (KernelError, TapError, OSError) as exc:
            raise CommandError(f"port {spec.label}: {exc}") from None
        port_id = self.datapath.add_port(spec.label, index)
        self._limit_macs(port_id, spec, seg.name)
        self.datapath.access(port_id)
        live = LivePort(port_id, spec.label, spec.namespace, ifname, spec.address, mac, seg.name, tap,
                        spec.address6, spec.attached)  # fmt: skip
        self.ports.append(live)
        seg.ports.append(spec)
        if self.shell is not None:
            self.shell.attach(port_id, tap.fd)
            self.shell.set_port_mtu(port_id, seg.mtu)
        if seg.gateway is not None and live.address is not None:  # =dhcp: its client adds the route
            await loop.run_in_executor(None, _signals_held, self._default_route, live, seg)
        await self._await_slaac_of(live, seg)
        self._refresh_names()
        return live.describe()

    async def remove_port_live(self, label: str) -> Any:
        """The port's tap goes (and with it the interface in its namespace); what the switch learned
        through it goes too (Datapath.remove_port, Router.forget_addresses)."""
        live = self._live(label)
        mirrored = [m.spec.port.label for m in self.mirrors if m.source == live.id]
        if mirrored:
            raise CommandError(
                f"port {label} is mirrored to {', '.join(mirrored)}: it stays while vswitch runs"
            )
        if self.shell is not None:
            self.shell.detach(live.id)
            self.shell.emulator.forget_port(live.id)
            self.shell.emulation_changed()
        self.datapath.remove_port(live.id)
        self._forget(live)
        live.tap.close()
        self._taps.remove(live.tap)
        for entry in list(self.ledger.records):
            if entry["kind"] == "tap" and entry["name"] == live.tap.name:
                self.ledger.forget(entry)
        self.ports.remove(live)
        # Its counters stay, under a name of their own: a port added again by this name is another
        # (stats and metrics would otherwise show two series of one name).
        self.datapath.counters.names[live.id] = f"{label}~{live.id}"
        for seg in self.topology.segments:
            seg.ports = [p for p in seg.ports if p.label != label]
        self._refresh_names()
        return {"removed": label}

    async def move_port_live(self, label: str, segment: str) -> Any:
        """The port joins another segment: forgotten where it was, readdressed for the new one (its
        subnet and gateway, its MTU), as if it had been plugged into another switch."""
        live = self._live(label)
        index, seg = self._segment_named(segment)
        if seg.name == live.segment:
            raise CommandError(f"port {label} is on segment {segment} already")
        old = next(s for s in self.topology.segments if s.name == live.segment)
        spec = next(p for p in old.ports if p.label == label)
        address = live.address if live.address is not None and live.address.ip in seg.subnet else None
        new = address or self._free_address(seg)
        old_index, _ = self._segment_named(live.segment)
        self.datapath.move_port(live.id, index)
        self._forget(live)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, _signals_held, kernel.readdress, live.namespace, live.ifname, live.address, new, seg.mtu
            )
        except (KernelError, OSError) as exc:  # its namespace went (a process that exited), say
            self.datapath.move_port(live.id, old_index)
            raise CommandError(f"port {label}: {exc}") from None
        old.ports.remove(spec)
        seg.ports.append(replace(spec, address=new, address6=None))
        live.segment, live.address, live.address6 = seg.name, new, None
        if self.shell is not None:
            self.shell.set_port_mtu(live.id, seg.mtu)
        if seg.gateway is not None:
            await loop.run_in_executor(None, _signals_held, self._default_route, live, seg)
        await self._await_slaac_of(live, seg)
        self._refresh_names()
        return live.describe()

    def _mtu_of(self, live: LivePort) -> int:
        """The MTU vswitch gave a port's interface: its segment's (the uplink's for the uplink)."""
        if live.segment == UPLINK_SEGMENT:
            return self.topology.uplink_mtu
        return next(s.mtu for s in self.topology.segments if s.name == live.segment)

    def _forget(self, live: LivePort) -> None:
        """What the router knows of a port that left its segment: its tracked flows, and its neighbour
        entries by its own MAC too (the datapath forgets those of the MACs still in the FDB; a quiet
        host's may have aged out of it while the router still has it)."""
        if self.router is not None:
            from ..core.wire import parse_mac

            self.router.forget_neighbours({parse_mac(live.mac)})
            self.router.forget_addresses(_packed(live))

    async def _await_slaac_of(self, live: LivePort, seg: SegmentSpec) -> None:
        """A port added to or moved onto a routed IPv6 segment: until it has its address from our
        advertisements, or SLAAC_WAIT, as start-up waits (_await_slaac); so the answer shows it, and
        `port del` forgets the flows of it too."""
        if seg.gateway6 is None or seg.subnet6 is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SLAAC_WAIT
        while loop.time() < deadline:
            found = await loop.run_in_executor(
                None, _signals_held, kernel.slaac_address, live.namespace, live.ifname, seg.subnet6
            )
            if found is not None:
                live.address6 = found
                return
            await asyncio.sleep(SLAAC_POLL)
        self.log(f"{live.label}: no IPv6 address from the router's advertisements within {SLAAC_WAIT:g}s")

    def _live(self, label: str) -> LivePort:
        found = next((p for p in self.ports if p.label == label), None)
        if found is None:
            raise CommandError(f"no port {label} (vswitch status lists them)")
        if found.segment == UPLINK_SEGMENT or found.namespace is None:
            raise CommandError(
                f"port {label} is the {'uplink' if found.namespace else 'host port'}: not changed live"
            )
        return found

    def _segment_named(self, name: str | None) -> tuple[int, SegmentSpec]:
        segments = self.topology.segments
        if name is None:
            if len(segments) > 1:
                raise CommandError("there are several segments: say which with --segment")
            return 0, segments[0]
        for index, seg in enumerate(segments):
            if seg.name == name:
                return index, seg
        raise CommandError(f"no segment {name} (there are {', '.join(s.name for s in segments)})")

    def _check_address(self, address: IPv4Interface, seg: SegmentSpec, label: str) -> None:
        """A given address, checked as start-up checks them (topology.assign_addresses, validate): in
        a routed segment's subnet, and nobody's already (another port's, the gateway's)."""
        if seg.gateway is not None and address.ip not in seg.subnet:
            raise CommandError(f"address {address} of {label} is outside segment {seg.name} ({seg.subnet})")
        taken = {p.address.ip: f"port {p.label}" for p in self.ports if p.address is not None}
        if seg.gateway is not None:
            taken[seg.gateway.ip] = f"the gateway of {seg.name}"
        if address.ip in taken:
            raise CommandError(f"address {address.ip} is taken ({taken[address.ip]})")

    def _free_address(self, seg: SegmentSpec) -> IPv4Interface:
        taken = {p.address.ip for p in self.ports if p.address is not None}
        if self.router is not None and self.router.dhcp is not None:  # nor a DHCP client's
            taken |= set(self.router.dhcp.by_address) | {
                r.address for r in self.router.dhcp.reservations.values()
            }
        if seg.gateway is not None:
            taken.add(seg.gateway.ip)
        host = next((h for h in seg.subnet.hosts() if h not in taken), None)
        if host is None:
            raise CommandError(f"segment {seg.name}: subnet {seg.subnet} has no free address")
        return IPv4Interface(f"{host}/{seg.subnet.prefixlen}")

    def _default_route(self, live: LivePort, seg: SegmentSpec) -> None:
        """The namespace's default route via the segment's gateway; an attached one keeps its own (only
        added, never replaced: one via our gateway went with the old address when it moved)."""
        assert seg.gateway is not None
        try:
            default = IPv4Network("0.0.0.0/0")
            kernel.add_route(live.namespace, default, seg.gateway.ip, live.ifname, replace=not live.attached)
        except KernelError as exc:
            if not live.attached:
                raise CommandError(f"port {live.label}: {exc}") from None
            self.log(f"{live.label}: no default route via {seg.gateway.ip}: {exc}")

    # --- running -----------------------------------------------------------------------------------
    async def serve(self, ready: Callable[[], None] | None = None, signals: bool = True) -> None:
        """Forward until SIGINT/SIGTERM (or stop()); the caller tears down afterwards.

        signals=False leaves signal handling to the caller (the Python API serves from a thread).
        """
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # From here on a state file that cannot be rewritten costs a log line, not the switch.
        self.ledger.on_write_error = self._state_write_failed
        shell = self.shell = Shell(self.datapath, loop)
        shell.busy_poll = self.busy_poll
        for port in self.ports:
            shell.attach(port.id, port.tap.fd)
            shell.set_port_mtu(port.id, self._mtu_of(port))
        for vtep, sockets in self.underlays:
            for tunnel in vtep.tunnels.values():
                for address, port_id in tunnel.remotes.items():
                    shell.attach_sender(port_id, sockets.senders[address].fileno())
            shell.attach_vtep(vtep, sockets.receiver)
            if sockets.group_receiver is not None:
                shell.attach_vtep(vtep, sockets.group_receiver)
        shell.open_sender = self._open_learned_remote
        for live in self.trunks:
            shell.attach_trunk(live.trunk, live.tap.fd)
            mtus = [s.mtu for s in self.topology.segments if s.name in live.spec.segments]
            shell.set_port_mtu(live.trunk.port, max(mtus))  # the tap's own MTU (_add_trunks)
        for mirror in self.mirrors:
            shell.attach_mirror(mirror.id, mirror.tap.fd)
            shell.mirror(mirror.source, mirror.id, mirror.spec.directions)
        shell.on_carrier = self._carrier
        for link in self.topology.links:  # [link.PORT] tables, checked against the ports at load
            try:
                self.set_link(link.port, link.directions, link.impairment)
            except CommandError as exc:
                shell.detach_all()
                raise StartError(str(exc)) from None
        shell.start_timer()
        loop_lag = self.loop_lag = LoopLag(loop)  # started once serving, stopped in the finally below
        control = ControlServer(
            self, socket_path(self.topology.name), self.control, events=self.datapath.counters.events
        )
        # Recorded before it is bound: a kill in between leaves the ledger naming a file not there yet.
        self.ledger.record("socket", path=str(control.path))
        try:
            await control.start()
        except OSError as exc:
            shell.detach_all()
            raise StartError(
                f"cannot open the control socket {control.path}: {exc.strerror or exc}"
            ) from None
        metrics: asyncio.AbstractServer | None = None
        if self.metrics is not None:
            from .metrics import start_metrics

            try:
                metrics = await start_metrics(
                    self.datapath, *self.metrics, emulator=shell.emulator, loop_lag=loop_lag
                )
            except OSError as exc:
                shell.detach_all()
                await control.close()
                raise StartError(
                    f"cannot serve metrics on {self.metrics[0]}:{self.metrics[1]}: {exc}"
                ) from None
        # SIGHUP too (the terminal went away), unless the user started us under nohup. SIGINT is
        # always ours: a shell starts background jobs with it ignored, and Ctrl-C must still stop us.
        stop_signals = [
            sig for sig in STOP_SIGNALS if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN
        ]
        if signals:
            for sig in stop_signals:
                loop.add_signal_handler(sig, self._stop.set)
        upstream, lease_file = self._start_services(loop, shell)
        if signals:
            # Our own process (not the API's, whose objects are its caller's): what start-up made
            # (scapy's, pyroute2's, the tables' first entries) lives as long as we do, and a full
            # collection that walks it all is a pause on the packet path, growing with the live
            # flows. Frozen, the collector skips it. Under floods of new NAT flows (bench/stress/
            # floods.py, three runs each way) the control socket's worst answer fell from 20-87 ms to
            # 13-36 ms, the victims' ping p99 under UDP to random ports from 48-68 ms to 8-31 ms;
            # under ICMP echo it varies more (79-105 ms before, 21-96 ms after).
            gc.collect()
            gc.freeze()
        loop_lag.start()
        try:
            await self._await_slaac()
            self._refresh_names()  # with the addresses SLAAC gave
            if ready is not None:
                ready()
            await self._stop.wait()
        finally:
            if upstream is not None:
                upstream.close()
            if lease_file is not None:
                lease_file.stop()
            # A second Ctrl-C or SIGTERM must not cut teardown short: from here until the loop is
            # closed (after teardown) both signals are caught and ignored.
            if signals:
                for sig in stop_signals:
                    loop.add_signal_handler(sig, _ignore_signal)
            if metrics is not None:
                metrics.close()
            loop_lag.stop()
            shell.detach_all()
            await control.close()

    def _start_services(
        self, loop: asyncio.AbstractEventLoop, shell: Shell
    ) -> tuple[services.Upstream | None, services.LeaseFile | None]:
        """The DNS upstream's socket and the lease file's writer, if the router has the services."""
        router, topo = self.router, self.topology
        upstream = None
        if router is not None and router.dns is not None and topo.services.dns_upstream is not None:
            assert topo.uplink is not None
            address, port = topo.services.dns_upstream
            upstream = services.Upstream(loop, self.datapath, router.dns, shell.send, topo.uplink.namespace,
                                         address, port)  # fmt: skip
            try:
                upstream.open()
            except OSError as exc:
                self.log(
                    f"dns upstream {address}: {exc.strerror or exc}; names not ours are answered SERVFAIL"
                )
                upstream = None
        if router is None or router.dhcp is None:
            return upstream, None
        path = lease_path(topo.name)
        self.ledger.record("file", path=str(path))
        names = self.datapath.counters.names
        lease_file = services.LeaseFile(
            path, router.dhcp, lambda: dict(enumerate(names)), on_error=self._state_write_failed
        )
        lease_file.start(loop)
        return upstream, lease_file

    def leases(self, now: float) -> list[dict[str, Any]]:
        router = self.router
        if router is None or router.dhcp is None:
            return []
        rows: list[dict[str, Any]] = router.dhcp.table(now, dict(enumerate(self.datapath.counters.names)))
        return rows

    async def _await_slaac(self, timeout: float = SLAAC_WAIT) -> None:
        """Until each namespace on a routed IPv6 segment has its address from our advertisements (its
        router solicitation is answered as soon as the loop runs), or timeout: `up` is ready when the
        hosts can talk. A namespace still without one is told in the log, and does not stop us."""
        waiting = {
            port.label: (port, segment.subnet6)
            for segment in self.topology.segments
            if segment.gateway6 is not None and segment.subnet6 is not None
            for port in self.ports
            if port.segment == segment.name and port.namespace is not None
        }
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while waiting and loop.time() < deadline:
            for label, (port, prefix) in list(waiting.items()):
                found = await loop.run_in_executor(
                    None, _signals_held, kernel.slaac_address, port.namespace, port.ifname, prefix
                )
                if found is not None:
                    port.address6 = found
                    del waiting[label]
            if waiting:
                await asyncio.sleep(SLAAC_POLL)
        for label in waiting:
            self.log(f"{label}: no IPv6 address from the router's advertisements within {timeout:g}s")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # --- teardown ----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Close every tap (the kernel deletes them), then undo the ledger newest-first. A state file
        that can no longer be rewritten does not stop it: everything in the ledger is still undone."""
        self.ledger.on_write_error = self._state_write_failed
        for tap in self._taps:
            tap.close()
        self._taps.clear()
        for _, sockets in self.underlays:
            sockets.close()
        self.underlays.clear()
        undo(self.ledger)

    def _state_write_failed(self, exc: OSError) -> None:
        """The ledger (or the lease file) could not be written: counted, and logged at most once per
        STATE_ERROR_LOG_INTERVAL. The ledger in memory is still exact; only the file is behind."""
        self.datapath.counters.events[Event.STATE_WRITE_FAILED] += 1
        now = time.monotonic()
        if now < self._state_log_at:
            self._state_unlogged += 1
            return
        self._state_log_at = now + STATE_ERROR_LOG_INTERVAL
        unlogged, self._state_unlogged = self._state_unlogged, 0
        more = f" ({unlogged} more failures since the last report)" if unlogged else ""
        logger.warning(
            "state: cannot write in %s (%s): forwarding goes on, and teardown still removes what this "
            "instance made; the state file may be behind until then%s",
            self.ledger.path.parent,
            exc.strerror or exc,
            more,
        )

    # --- views for the control socket --------------------------------------------------------------
    def _now(self) -> float:
        """The core's clock: the event loop's while serving (the shell passes it to every decision)."""
        return self.shell.loop.time() if self.shell is not None else time.monotonic()

    def status(self) -> dict[str, Any]:
        guard = self.topology.protect
        blocked = self.datapath.blocked_ports(self._now())
        return {
            "instance": self.topology.name,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started_at, 3),
            "ports": [
                {
                    **p.describe(),
                    **self._leased(p),
                    "gone": self.shell is not None and not self.shell.reading(p.id),
                    "blocked": p.label in blocked,
                }
                for p in self.ports
            ],
            "segments": [
                {
                    "name": s.name,
                    "subnet": str(s.subnet),
                    "gateway": str(s.gateway) if s.gateway else None,
                    "subnet6": str(s.subnet6) if s.subnet6 else None,
                    "gateway6": str(s.gateway6) if s.gateway6 else None,
                    # the router's MAC and link-local address there: the hosts' IPv6 default gateway
                    **self._router_side(index),
                    "ports": [p.label for p in s.ports],
                    "mtu": s.mtu,
                }
                for index, s in enumerate(self.topology.segments)
            ],
            "routed": self.topology.routed,
            "uplink": None
            if self.topology.uplink is None
            else {
                "namespace": self.topology.uplink.namespace,
                "address": str(self.topology.uplink.address),
                "upstream": str(self.topology.uplink.upstream),
                "mtu": self.topology.uplink_mtu,
                **self._uplink6(),
            },
            "tunnels": self.tunnels(),
            "trunks": [t.describe(self.datapath.counters.names) for t in self.trunks],
            "mirrors": [m.describe(self.datapath.counters) for m in self.mirrors],
            "fdb_entries": sum(len(s.switch.fdb) for s in self.datapath.segments),
            "ageing": self.topology.ageing,
            "fdb_max": self.topology.fdb_max,
            "flow_cache_max": self.topology.flow_cache,
            "flow_cache_entries": 0 if self.datapath.flows is None else len(self.datapath.flows),
            "services": self._services(),
            "emulation": self.links() if self.shell is not None and self.shell.emulator.configured else None,
            "protect": {
                "port_mac_max": guard.namespace_port_mac_max,
                "storm_limit": guard.storm_limit,
                "loop_guard": guard.loop_guard,
                "loop_guard_hold": guard.loop_guard_hold,
                "port_security": list(guard.port_security),
                "blocked": {name: round(left, 1) for name, left in blocked.items()},
            },
        }

    # --- network emulation (core/emulation.py): impairments per port and direction, partitions -----
    def _emulated(self, label: str) -> LivePort:
        """A port an impairment or partition may name: a tap of ours (a namespace's port, the host port
        or the uplink); not a trunk's VLAN or a tunnel's remote, whose frames share another fd."""
        found = next((p for p in self.ports if p.label == label), None)
        if found is None:
            names = ", ".join(p.label for p in self.ports)
            raise CommandError(f"no port {label!r} (the ports: {names})")
        return found

    def _emulator(self) -> Emulator:
        if self.shell is None:
            raise CommandError("the switch is not forwarding yet")
        return self.shell.emulator

    def set_link(self, label: str, directions: Sequence[Direction], impairment: Impairment) -> dict[str, Any]:
        """Impair a port in the directions given (replacing what it had; what is queued keeps its times)."""
        live = self._emulated(label)
        emulator = self._emulator()
        try:
            impairment.check()
            selector = compile_filter(impairment.filter) if impairment.filter else None
        except (ValueError, FilterError) as exc:
            raise CommandError(f"link {label}: {exc}") from None
        assert self.shell is not None
        emulator.set(live.id, label, tuple(directions), impairment, selector, EMULATION_CLOCK())
        self.shell.emulation_changed()
        return self._link_entry(live)

    def clear_link(self, label: str, directions: Sequence[Direction] = ("in", "out")) -> dict[str, Any]:
        live = self._emulated(label)
        emulator = self._emulator()
        assert self.shell is not None
        emulator.clear(live.id, tuple(directions), EMULATION_CLOCK())
        self.shell.emulation_changed()
        return self._link_entry(live)

    def _link_entry(self, live: LivePort) -> dict[str, Any]:
        entries = self.links()["links"]
        return next((e for e in entries if e["port"] == live.label), {"port": live.label})

    def links(self) -> dict[str, Any]:
        """Every impaired link (settings, queue, counts), the partitions and the carriers taken down."""
        if self.shell is None:
            return {"links": [], "partitions": [], "carrier_down": []}
        described: dict[str, Any] = self.shell.emulator.describe(
            self.datapath.counters.names, EMULATION_CLOCK()
        )
        return described

    def partition(
        self, sources: Sequence[str], targets: Sequence[str], two_way: bool = True
    ) -> dict[str, Any]:
        """Frames from sources to targets (and back, two_way) are dropped until heal()."""
        emulator = self._emulator()
        if not sources or not targets:
            raise CommandError("a partition needs a port on each side")
        src = {label: self._emulated(label).id for label in sources}
        dst = {label: self._emulated(label).id for label in targets}
        try:
            emulator.partition(src, dst, two_way)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        assert self.shell is not None
        self.shell.emulation_changed()
        return {"partitions": [part.describe() for part in emulator.partitions]}

    def heal(self) -> dict[str, Any]:
        emulator = self._emulator()
        healed = emulator.heal()
        assert self.shell is not None
        self.shell.emulation_changed()
        return {"healed": healed}

    def _carrier(self, port: int, up: bool) -> None:
        """The emulator's carrier change, on the port's tap (TUNSETCARRIER)."""
        live = next((p for p in self.ports if p.id == port), None)
        if live is None:
            return
        try:
            set_carrier(live.tap.fd, up)
        except TapError as exc:
            self.log(f"{live.label}: cannot set the carrier {'up' if up else 'down'}: {exc}")

    def _leased(self, port: LivePort) -> dict[str, Any]:
        """A `=dhcp` port's address as its lease has it (status, and so pingall and doctor, use it)."""
        router = self.router
        if port.address is not None or router is None or router.dhcp is None:
            return {}
        now = asyncio.get_running_loop().time()
        lease = next((lease for lease in router.dhcp.bound(now) if lease.port == port.id), None)
        if lease is None:
            return {}
        seg = next(s for s in self.topology.segments if s.name == port.segment)
        return {"address": f"{lease.address}/{seg.subnet.prefixlen}", "leased": True}

    def _services(self) -> dict[str, Any] | None:
        """DHCP and DNS on the routed segments, as `status` shows them (None: no router)."""
        router, spec = self.router, self.topology.services
        if router is None:
            return None
        upstream = spec.dns_upstream
        return {
            "dhcp": router.dhcp is not None,
            "leases": 0 if router.dhcp is None else len(router.dhcp.bound(asyncio.get_running_loop().time())),
            "lease_time": spec.lease_time,
            "dns": router.dns is not None,
            "domain": None if router.dns is None else router.dns.domain,
            "dns_upstream": None if upstream is None else f"{upstream[0]}:{upstream[1]}",
        }

    def _uplink6(self) -> dict[str, str | None]:
        topo = self.topology
        if topo.uplink is None or topo.nat6 is None:
            return {"address6": None, "upstream6": None, "nat6": None}
        mode = topo.nat6.mode if topo.nat6.prefix is None else f"prefix={topo.nat6.prefix}"
        return {"address6": str(topo.uplink.address6), "upstream6": str(topo.uplink.upstream6), "nat6": mode}

    def _router_side(self, segment: int) -> dict[str, str | None]:
        from ..core.icmp6 import link_local_of
        from ..core.wire import mac_str

        mac = self.router_macs.get(segment)
        if mac is None:
            return {"router_mac": None, "link_local": None}
        v6 = self.router is not None and self.router.v6 is not None and segment in self.router.v6.link_local
        return {
            "router_mac": mac_str(mac),
            "link_local": str(IPv6Address(link_local_of(mac))) if v6 else None,
        }

    def tunnels(self) -> list[dict[str, Any]]:
        """Each VXLAN tunnel, with its remotes' traffic (what doctor checks a silent remote by)."""
        counters = self.datapath.counters
        out = []
        for tunnel in self.datapath.tunnels:
            spec = self.topology.segments[tunnel.segment].vxlan
            assert spec is not None
            flooded = {str(a): f for a, f in spec.all_remotes}
            out.append(
                {
                    "segment": self.topology.segments[tunnel.segment].name,
                    "port": counters.names[tunnel.port],
                    "vni": tunnel.vni,
                    "local": tunnel.local,
                    "netns": spec.netns,
                    "dstport": tunnel.dstport,
                    "ttl": tunnel.ttl,
                    "mtu": tunnel.mtu,
                    "underlay_mtu": self.underlay_mtus.get(self.topology.segments[tunnel.segment].name),
                    "group": tunnel.group,
                    "drops": dict(counters.drops[tunnel.port]),
                    "remotes": [
                        {
                            "address": address,
                            "port": counters.names[port],
                            "flooded": flooded.get(address, False),
                            "learned": address not in flooded,
                            "rx_packets": counters.rx_packets[port],
                            "tx_packets": counters.tx_packets[port],
                        }
                        for address, port in tunnel.remotes.items()
                    ],
                }
            )
        return out

    def fdb(self, now: float) -> list[dict[str, Any]]:
        from ..core.wire import mac_str

        names = self.datapath.counters.names
        encaps = self.datapath.encaps
        rows = []
        for seg in self.datapath.segments:
            for mac, port, age, static in seg.switch.fdb.table(now):
                row = {
                    "segment": seg.name,
                    "mac": mac_str(mac),
                    "port": names[port],
                    "age": round(age, 1),
                    "static": static,
                }
                tunnel = encaps.get(port)
                if tunnel is not None:
                    row["remote"] = tunnel.addresses[port]
                rows.append(row)
        return rows


def _signals_held(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in an executor's thread with the stop signals blocked there. pyroute2 reaches a
    namespace through a child it forks from this thread and ends with SIGTERM; the child inherits the
    loop's signal handlers and wakeup fd, so that SIGTERM, caught in the child, would reach our loop as
    a stop. Blocked, it stays pending in the child until it exits. The process's own signals still
    come, to the main thread."""
    with kernel.stop_signals_held():
        return fn(*args)


def _packed(live: LivePort) -> set[bytes]:
    """A port's addresses as the core keys them."""
    return {a.ip.packed for a in (live.address, live.address6) if a is not None}


def _ignore_signal() -> None:
    """Teardown is under way; it removes everything whatever the user presses."""


def describe(entry: dict[str, Any]) -> str:
    """A ledger record in words, for `vswitch down` and its errors."""
    kind = entry["kind"]
    if kind == "netns":
        return f"namespace {entry['name']}"
    if kind == "socket":
        return f"control socket {entry['path']}"
    if kind == "route":
        return f"host route {entry['dst']} via {entry['via']}"
    if kind == "tap":
        return f"tap {entry['name']}"
    if kind == "lo-up":
        return f"lo brought up in namespace {entry['namespace']}"
    if kind in ("resolv-conf", "file"):
        return str(entry["path"])
    return f"{kind} {entry}"


def undo(ledger: Ledger, done: list[str] | None = None) -> list[str]:
    """Undo every record newest-first; return what could not be undone (and keep it in the ledger).
    done, if given, gets a line for each thing actually removed or found already gone."""
    problems: list[str] = []
    for entry in ledger.newest_first():
        kind = entry["kind"]
        try:
            if kind == "netns" and kernel.remove_netns_placeholder(entry["name"]):
                if done is not None:  # a kill came between the mount point and the bind mount
                    done.append(f"removed {kernel.netns_path(entry['name'])}: a mount point never mounted")
            elif kind == "netns":
                cookie = entry.get("cookie")
                removed = kernel.remove_netns(entry["name"], int(entry["inode"]), cookie)
                if done is not None:
                    name = entry["name"]
                    if removed:
                        done.append(f"removed namespace {name}")
                    elif kernel.netns_inode(name) is None:
                        done.append(f"namespace {name} was already gone")
                    else:
                        done.append(f"kept namespace {name}: it is not the one vswitch made")
            elif kind in ("socket", "file"):  # the control socket, the lease file
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry["path"])
                if done is not None:
                    done.append(f"removed {describe(entry)}")
            elif kind == "lo-up":
                bare = bool(entry.get("bare", False))
                put_back = kernel.set_lo_down(entry["namespace"], entry.get("cookie"), bare)
                if done is not None and put_back:
                    done.append(f"put lo back down in namespace {entry['namespace']}")
            elif kind == "resolv-conf":
                services.remove_resolv_conf(entry["path"], entry.get("folders", []))
                if done is not None:
                    done.append(f"removed {describe(entry)}")
            elif kind == "route" and done is not None:
                done.append(f"{describe(entry)}: went with the host port's tap")
            # "tap": a non-persistent tap dies with its last fd; nothing to do once we are closed.
        except (OSError, KernelError) as exc:
            problems.append(f"{describe(entry)}: {exc}")
            continue
        ledger.forget(entry)
    if not problems:
        ledger.release()
    return problems


def down(instance: str, timeout: float = 10.0) -> list[str]:
    """Remove what a dead instance left; stop a live one first. Returns what was done, a line each."""
    try:
        ledger = Ledger.load(instance)
    except OSError as exc:
        raise StartError(f"{exc}; if no vswitch {instance} is running, remove that file") from None
    if ledger is None:
        return _remove_stray_files(instance, [])
    if ledger.owner_alive():
        stopped = ledger.pid
        os.kill(ledger.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while ledger.owner_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if ledger.owner_alive():
            raise StartError(f"instance {instance} (pid {ledger.pid}) did not stop within {timeout:.0f}s")
        ledger = Ledger.load(instance)
        if ledger is None:
            said = [f"stopped instance {instance} (pid {stopped}); it removed what it had made"]
            return _remove_stray_files(instance, said)
    done: list[str] = []
    problems = undo(ledger, done)
    if problems:
        raise StartError("could not remove: " + "; ".join(problems))
    return _remove_stray_files(instance, done)


def _remove_stray_files(instance: str, done: list[str]) -> list[str]:
    """The instance's half-written files a kill left in the run folder (state.stray_files), removed;
    done with a line for each."""
    for path in stray_files(instance):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            done.append(f"removed {path}: left half-written by a kill")
    return done
