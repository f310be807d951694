"""The contenders: the same two-host topology built by the kernel and by vswitch.

Every contender is a client namespace and a server namespace joined by something under test (a
kernel bridge, a kernel router with nft masquerade, or a `vswitch up` process). Namespaces are named
``<prefix>-<tag>`` with the bench's random prefix (``vsb`` + hex), so they cannot clash with anything
else on the machine, and teardown removes exactly the ones this run created. Kernel plumbing goes
through pyroute2 (netlink); the only commands run are `sysctl` and `nft -f -` inside the router
namespace, which netlink does not cover, and the other switches' own programs (vde_switch; OVS's
ovsdb-tool, ovsdb-server, ovs-vswitchd and ovs-vsctl: see ovs.py).

The IPv6 router contenders (IPV6_CONTENDERS, added by --ipv6 or named) are the router's IPv6 rows:
the kernel forwarding IPv6 between two segments (net.ipv6.conf.all.forwarding=1) or masquerading
to the outside (an nft `ip6` masquerade on its uplink), against `vswitch up --segment ... --subnet6`
routed and `--uplink ... --nat6 masquerade`. Inside addresses come from fd00::/8, the outside from
2001:2::/48 (RFC 5180's benchmarking range). If `vswitch up` refuses --nat6 masquerade at start-up,
vswitch-nat6 is skipped with vswitch's reason (Skipped) instead of failing the run.

The VXLAN pair (vxlan.py) has two host namespaces joined by an underlay veth and an end namespace
behind each, on the kernel's vxlan devices and bridges or on one `vswitch up` per host; the vswitch
side's CPU per packet is both processes'.

A vswitch contender is a real `vswitch up` subprocess with its own --name and VSWITCH_RUN_DIR, in a
session of its own (Ctrl-C reaches the bench, which then stops it in order): SIGTERM first, SIGKILL
and `vswitch down` if it does not go.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ...shell.kernel import remove_netns_named, stop_signals_held
from . import vxlan
from .ovs import OvsError, PrivateOvs
from .ovs import version as ovs_version
from .process import terminate

NETNS_DIR = Path("/run/netns")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
COMMAND_TIMEOUT = 15.0
OUTSIDE = "198.18.0.1"  # the simulated outside world (RFC 2544 benchmarking range 198.18.0.0/15)
# IPv6: the inside out of fd00::/8 (ULA), the outside out of 2001:2::/48 (RFC 5180's benchmarking
# range). vswitch gives the routed segments the /64s of SUBNET6 in order (LAN6, then DMZ6), its router
# is ::1 of each, and with --uplink the outside namespace has OUTSIDE6 and the router ROUTER_OUTSIDE6:
# the kernel contenders are built with the same plan.
SUBNET6: Final = "fd00:b6::/48"
LAN6: Final = "fd00:b6::"  # the first segment's /64
DMZ6: Final = "fd00:b6:0:1::"  # the second's
OUTSIDE6: Final = "2001:2::1"
ROUTER_OUTSIDE6: Final = "2001:2::2"
NAT6_MODE: Final = "masquerade"  # what vswitch-nat6 asks for (vswitch's default, said out loud)

CONTENDERS: tuple[str, ...] = (
    "kernel-bridge",
    "python-floor",
    "vswitch-l2",
    "vswitch-l2-busy",
    "kernel-nat",
    "vswitch-nat",
    "kernel-vxlan",
    "vswitch-vxlan",
)
# The router's IPv6 rows, measured with --ipv6 (or when named): not in the default run, which keeps
# its length (--quick about 2 minutes); these four add about a minute to --quick, 7 to the full run.
IPV6_CONTENDERS: tuple[str, ...] = (
    "kernel-routed6",
    "vswitch-routed6",
    "kernel-nat6",
    "vswitch-nat6",
)
BUSY_POLL_USEC = 10_000  # vswitch-l2-busy: --busy-poll, longer than the ping interval (5 ms)
# Optional contenders, measured only when installed; absent ones are named in the report.
OPTIONAL: dict[str, str] = {"vde-l2": "vde_switch", "ovs-l2": "ovs-vswitchd"}
# The optional contenders the bench can build; others are only named as skipped.
BUILDABLE_OPTIONAL: tuple[str, ...] = ("vde-l2", "ovs-l2")
SHORT: dict[str, str] = {
    "kernel-bridge": "kb",
    "python-floor": "fl",
    "vswitch-l2": "l2",
    "vswitch-l2-busy": "lb",
    "kernel-nat": "kn",
    "vswitch-nat": "vn",
    "kernel-vxlan": "kx",
    "vswitch-vxlan": "vx",
    "vde-l2": "vd",
    "ovs-l2": "ov",
    "kernel-routed6": "kr",
    "vswitch-routed6": "vr",
    "kernel-nat6": "k6",
    "vswitch-nat6": "v6",
}
# Which kernel figure a vswitch figure is compared with.
BASELINE: dict[str, str] = {
    "vswitch-l2": "kernel-bridge",
    "vswitch-l2-busy": "kernel-bridge",
    "vswitch-nat": "kernel-nat",
    "vswitch-vxlan": "kernel-vxlan",
    "vde-l2": "kernel-bridge",
    "ovs-l2": "kernel-bridge",
    "vswitch-routed6": "kernel-routed6",
    "vswitch-nat6": "kernel-nat6",
}
# The same router in the other family: each IPv6 contender's figures over its IPv4 counterpart's.
IPV4_COUNTERPART: dict[str, str] = {
    "kernel-nat6": "kernel-nat",
    "vswitch-nat6": "vswitch-nat",
}
# The floor: vswitch's IO with no switch (floor.py). Every vswitch contender is also held to it, but
# those in NOT_AGAINST_FLOOR.
FLOOR = "python-floor"
FLOOR_MODULE = "vswitch.tools.bench.floor"  # what python-floor runs (python -m)
# vswitch contenders not held to the floor, and why: the floor is one process between two taps.
NOT_AGAINST_FLOOR: dict[str, str] = {
    "vswitch-vxlan": "two processes, each between a tap and a UDP socket: not the floor's IO",
}


class BenchError(Exception):
    """A contender could not be built or measured; str() is one sentence for the user."""


class StartRefused(BenchError):
    """A program the bench started exited before it was ready; stderr is what it said."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


class Skipped(BenchError):
    """Not measured, by design rather than by fault: str() is the reason, printed and in the JSON's
    `skipped`; the run does not count it as an error."""


@dataclass(frozen=True)
class Vswitch:
    """One `vswitch up` process a contender started: what stopping it and `vswitch down` need."""

    instance: str
    run_dir: Path  # its VSWITCH_RUN_DIR
    proc: subprocess.Popen[bytes]


@dataclass
class Contender:
    """One thing under test, once built: where to send from, where to, and what to watch."""

    name: str
    prefix: str
    description: str
    client_ns: str = ""
    server_ns: str = ""
    server_ip: str = ""
    client_if: str = "eth0"
    server_if: str = "eth0"
    namespaces: list[str] = field(default_factory=list)  # the ones this contender created
    proc: subprocess.Popen[bytes] | None = None  # the (first) vswitch, vde_switch or floor process
    ovs: PrivateOvs | None = None  # ovs-l2: its private ovsdb-server and ovs-vswitchd
    instance: str | None = None  # the (first) vswitch's --name
    run_dir: Path | None = None
    vswitches: list[Vswitch] = field(default_factory=list)  # every `vswitch up` (vswitch-vxlan: two)

    @property
    def family(self) -> int:
        """4 or 6: which IP the loads speak (iperf3 -6, ping -6 for the IPv6 router contenders)."""
        return 6 if self.name in IPV6_CONTENDERS else 4

    @property
    def kind(self) -> str:
        if self.name.startswith("vswitch"):
            return "vswitch"
        if self.name == FLOOR:
            return "floor"
        return "kernel" if self.name.startswith("kernel") else "other"

    @property
    def pid(self) -> int | None:
        """The switch process whose CPU time is charged to the packets (None: the kernel forwards)."""
        if self.ovs is not None:  # ovs-vswitchd forwards; ovsdb-server only holds the configuration
            return self.ovs.vswitchd.pid if self.ovs.vswitchd is not None else None
        return self.proc.pid if self.proc is not None else None

    @property
    def pids(self) -> list[int]:
        """Every process whose CPU time is charged to the packets: both vswitches of vswitch-vxlan
        (a packet crosses the two), else the one switch process; none when the kernel forwards."""
        if self.vswitches:
            return [v.proc.pid for v in self.vswitches]
        return [self.pid] if self.pid is not None else []

    def ns(self, tag: str) -> str:
        """prefix-XX-tag: XX tells the contenders apart (kb, l2, kn, vn), so names never collide."""
        return f"{self.prefix}-{SHORT[self.name]}-{tag}"

    # --- building ----------------------------------------------------------------------------------
    def build(self) -> None:
        builders = {
            "kernel-bridge": self._kernel_bridge,
            "python-floor": self._python_floor,
            "vswitch-l2": self._vswitch_l2,
            "vswitch-l2-busy": self._vswitch_l2_busy,
            "kernel-nat": self._kernel_nat,
            "vswitch-nat": self._vswitch_nat,
            "kernel-vxlan": self._kernel_vxlan,
            "vswitch-vxlan": self._vswitch_vxlan,
            "vde-l2": self._vde_l2,
            "ovs-l2": self._ovs_l2,
            "kernel-routed6": self._kernel_routed6,
            "vswitch-routed6": self._vswitch_routed6,
            "kernel-nat6": self._kernel_nat6,
            "vswitch-nat6": self._vswitch_nat6,
        }
        try:
            builders[self.name]()
        except NetlinkError as exc:
            raise BenchError(f"{self.name}: netlink refused a step: {os.strerror(exc.code)}") from None
        except OvsError as exc:
            raise BenchError(f"{self.name}: {exc}") from None

    def _new_ns(self, tag: str) -> str:
        return new_namespace(self.ns(tag), self.namespaces)

    def _kernel_bridge(self) -> None:
        """Two hosts with veths to a bridge that lives in a namespace of its own."""
        a, b, sw = self._new_ns("a"), self._new_ns("b"), self._new_ns("br")
        with IPRoute(netns=sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            bridge = ipr.link_lookup(ifname="br0")[0]
            for host, port in ((a, "pa"), (b, "pb")):
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host})
                index = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=index, master=bridge, state="up")
            ipr.link("set", index=bridge, state="up")
        for host, address in ((a, "10.0.0.1"), (b, "10.0.0.2")):
            _address(host, "eth0", address, 24)
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _kernel_nat(self) -> None:
        """client -- veth -- router (ip_forward, nft masquerade) -- veth -- outside (198.18.0.1)."""
        client, router, outside = self._new_ns("c"), self._new_ns("r"), self._new_ns("o")
        with IPRoute(netns=router) as ipr:
            ipr.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": client})
            ipr.link("add", ifname="wan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": outside})
        _address(router, "lan0", "10.1.0.1", 24)
        _address(router, "wan0", "198.18.0.2", 24)
        _address(client, "eth0", "10.1.0.2", 24)
        _address(outside, "eth0", OUTSIDE, 24)
        with IPRoute(netns=client) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway="10.1.0.1")
        in_netns(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        rules = (
            "table ip vsbench {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            '    oifname "wan0" masquerade\n'
            "  }\n"
            "}\n"
        )
        in_netns(router, ["nft", "-f", "-"], stdin=rules)
        self.client_ns, self.server_ns, self.server_ip = client, outside, OUTSIDE

    def _kernel_routed6(self) -> None:
        """a -- veth -- router (IPv6 forwarding) -- veth -- b, on vswitch's two /64s of SUBNET6."""
        a, b, router = self._new_ns("a"), self._new_ns("b"), self._new_ns("r")
        with IPRoute(netns=router) as ipr:
            ipr.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": a})
            ipr.link("add", ifname="lan1", kind="veth", peer={"ifname": "eth0", "net_ns_fd": b})
        for host, port, prefix in ((a, "lan0", LAN6), (b, "lan1", DMZ6)):
            _address6(router, port, f"{prefix}1", 64)
            _address6(host, "eth0", f"{prefix}2", 64)
            _default_route6(host, f"{prefix}1")
        in_netns(router, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        self.client_ns, self.server_ns, self.server_ip = a, b, f"{DMZ6}2"

    def _kernel_nat6(self) -> None:
        """client -- veth -- router (IPv6 forwarding, nft ip6 masquerade) -- veth -- outside 2001:2::1.
        The outside has no route to the inside: replies come back to the router's own address."""
        client, router, outside = self._new_ns("c"), self._new_ns("r"), self._new_ns("o")
        with IPRoute(netns=router) as ipr:
            ipr.link("add", ifname="lan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": client})
            ipr.link("add", ifname="wan0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": outside})
        _address6(router, "lan0", f"{LAN6}1", 64)
        _address6(router, "wan0", ROUTER_OUTSIDE6, 64)
        _address6(client, "eth0", f"{LAN6}2", 64)
        _address6(outside, "eth0", OUTSIDE6, 64)
        _default_route6(client, f"{LAN6}1")
        in_netns(router, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
        rules = (
            "table ip6 vsbench {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            '    oifname "wan0" masquerade\n'
            "  }\n"
            "}\n"
        )
        in_netns(router, ["nft", "-f", "-"], stdin=rules)
        self.client_ns, self.server_ns, self.server_ip = client, outside, OUTSIDE6

    def _kernel_vxlan(self) -> None:
        """Two hosts on an underlay veth, each with a vxlan device and a veth to its end namespace in
        a Linux bridge (vxlan.py)."""
        hosts = [self._new_ns(host) for host, _, _, _ in vxlan.SIDES]
        ends = [self._new_ns(end) for _, _, end, _ in vxlan.SIDES]
        vxlan.underlay(*hosts)
        locals_ = [local for _, local, _, _ in vxlan.SIDES]
        for host, end, local, remote, (_, _, _, address) in zip(
            hosts, ends, locals_, reversed(locals_), vxlan.SIDES, strict=True
        ):
            vxlan.kernel_vtep(host, end, local, remote, address)
        self._check_overlay_mtu(ends)
        self.client_ns, self.server_ns, self.server_ip = ends[0], ends[1], vxlan.SIDES[1][3]

    def _vswitch_vxlan(self) -> None:
        """The same hosts and underlay, and a `vswitch up` per host that makes its end namespace and
        carries segment lan to the other host's vswitch over VXLAN. Both are started, each with its
        own --name and VSWITCH_RUN_DIR, and both must be ready before anything is measured."""
        assert self.run_dir is not None
        hosts = [self._new_ns(host) for host, _, _, _ in vxlan.SIDES]
        vxlan.underlay(*hosts)
        locals_ = [local for _, local, _, _ in vxlan.SIDES]
        ends = [self.ns(end) for _, _, end, _ in vxlan.SIDES]
        for host, end, local, remote, (tag, _, _, address) in zip(
            hosts, ends, locals_, reversed(locals_), vxlan.SIDES, strict=True
        ):
            instance = f"b{self.prefix[3:]}{SHORT[self.name]}{tag[-1]}"  # ...vxa, ...vxb
            topology = vxlan.vswitch_topology(host, end, local, remote, address)
            self._vswitch_up(topology, [end], instance, self.run_dir / instance)
        self._check_overlay_mtu(ends)
        self.client_ns, self.server_ns, self.server_ip = ends[0], ends[1], vxlan.SIDES[1][3]

    def _check_overlay_mtu(self, ends: list[str]) -> None:
        problems = vxlan.mtu_problems(ends)
        if problems:
            raise BenchError(f"{self.name}: {'; '.join(problems)}")

    def _vswitch_l2(self) -> None:
        a, b = self.ns("a"), self.ns("b")
        self._vswitch_up(["--ports", f"{a},{b}"], [a, b])
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _vswitch_l2_busy(self) -> None:
        a, b = self.ns("a"), self.ns("b")
        self._vswitch_up(["--ports", f"{a},{b}", "--busy-poll", str(BUSY_POLL_USEC)], [a, b])
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _vswitch_nat(self) -> None:
        client, outside = self.ns("c"), self.ns("o")
        self._vswitch_up(["--segment", f"lan={client}", "--uplink", outside], [client, outside])
        self.client_ns, self.server_ns, self.server_ip = client, outside, OUTSIDE

    def _vswitch_routed6(self) -> None:
        """Two routed segments out of SUBNET6; the server is b's SLAAC address, as vswitch reports it."""
        a, b = self.ns("a"), self.ns("b")
        topology = ["--segment", f"a={a}", "--segment", f"b={b}", "--subnet6", SUBNET6]
        self._vswitch_up(topology, [a, b])
        self.client_ns, self.server_ns, self.server_ip = a, b, self._slaac_address(b)

    def _vswitch_nat6(self) -> None:
        """A routed segment and the uplink, IPv6 masqueraded to ROUTER_OUTSIDE6 (--nat6 masquerade).
        If vswitch refuses that mode at start-up, Skipped with its reason: a row for a feature that is
        not there yet, not a fault of the run."""
        client, outside = self.ns("c"), self.ns("o")
        topology = ["--segment", f"lan={client}", "--uplink", outside, "--subnet6", SUBNET6]
        topology += ["--nat6", NAT6_MODE]
        try:
            self._vswitch_up(topology, [client, outside])
        except StartRefused as exc:
            if refuses_nat6(exc.stderr):
                raise Skipped(f"vswitch up refused --nat6 {NAT6_MODE}: {last_line(exc.stderr)}") from None
            raise
        self.client_ns, self.server_ns, self.server_ip = client, outside, OUTSIDE6

    def _slaac_address(self, namespace: str) -> str:
        """The IPv6 address vswitch reports for the port in namespace (`vswitch status --json`,
        ports[].address6: what SLAAC gave it); asked again until it is there, bounded."""
        assert self.instance is not None and self.run_dir is not None
        env = {**os.environ, "VSWITCH_RUN_DIR": str(self.run_dir)}
        argv = [sys.executable, "-m", "vswitch", "status", "--name", self.instance, "--json"]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
            if proc.returncode == 0:
                try:
                    found = port_address6(json.loads(proc.stdout), namespace)
                except (ValueError, AttributeError):  # not the JSON object status prints
                    found = None
                if found is not None:
                    return found
            if time.monotonic() > deadline:
                why = proc.stderr.strip() or "no address6 for that port"
                late = f"{namespace} has no SLAAC address after {START_TIMEOUT:g}s"
                raise BenchError(f"{self.name}: {late}: {why}")
            time.sleep(0.2)

    def _python_floor(self) -> None:
        """floor.py in a session of its own: two taps, A to B and back, no switching."""
        assert self.run_dir is not None
        a, b = self._new_ns("a"), self._new_ns("b")
        argv = [sys.executable, "-m", FLOOR_MODULE, f"{a}=10.0.0.1/24", f"{b}=10.0.0.2/24"]
        argv += ["--tap-prefix", f"{self.prefix}fl"]
        self._start(argv, f"floor-{self.prefix}", "floor.py", lambda out: b"ready" in out)
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _vde_l2(self) -> None:
        """vde_switch (Debian vde2) with a tap per host (`-t`), each moved into its namespace.

        vde_switch opens the taps itself, without the virtio-net header, so TCP crosses it in MTU-sized
        frames; it is the classic userspace switch users compare against.
        """
        assert self.run_dir is not None
        a, b = self._new_ns("a"), self._new_ns("b")
        ctl = self.run_dir / f"vde-{self.prefix}"
        ctl.mkdir(parents=True, exist_ok=True)
        taps = [f"{self.prefix}vd{tag}" for tag in ("a", "b")]
        argv = ["vde_switch", "-s", str(ctl / "ctl"), "-M", str(ctl / "mgmt")]
        for tap in taps:
            argv += ["-t", tap]
        # The console reads stdin: a pipe we hold open keeps it running until we stop it.
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        with IPRoute() as ipr:
            while not all(ipr.link_lookup(ifname=tap) for tap in taps):
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise BenchError(f"vde-l2: vde_switch exited {self.proc.returncode}: {err.strip()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"vde-l2: vde_switch made no taps within {START_TIMEOUT:g}s")
                time.sleep(0.05)
            for tap, host in zip(taps, (a, b), strict=True):
                index = ipr.link_lookup(ifname=tap)[0]
                ipr.link("set", index=index, net_ns_fd=host)
        for tap, host, address in zip(taps, (a, b), ("10.0.0.1", "10.0.0.2"), strict=True):
            with IPRoute(netns=host) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=tap)[0], ifname="eth0")
            _address(host, "eth0", address, 24)
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _ovs_l2(self) -> None:
        """Open vSwitch's userspace datapath (datapath_type=netdev): one bridge, NORMAL forwarding.

        ovs-vswitchd runs privately (ovs.py) inside a switch namespace of this contender and makes two
        `type=tap` ports there; each tap is then moved into its host namespace, as for vde-l2. OVS keeps
        reading and writing a tap through the fd it opened, so the move does not disturb the datapath
        (its ioctls by interface name fail from then on: a few warnings in its log, no effect on
        forwarding). Taps beat veths added as `system` ports (AF_PACKET) here by about half again in
        TCP and 64-byte pps. With other_config:userspace-tso-enable=true OVS opens the taps with the
        virtio-net header and TSO, so TCP super-frames cross it whole, as they cross vswitch; the
        description records whether it did (IFLA_TUN_VNET_HDR of the taps).
        """
        assert self.run_dir is not None
        a, b, sw = self._new_ns("a"), self._new_ns("b"), self._new_ns("sw")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Recorded before start(): teardown stops whatever part of it did start.
        self.ovs = PrivateOvs(self.run_dir / f"ovs-{self.prefix}", sw)
        self.ovs.start(tso=True)
        bridge = f"{self.prefix}-ovbr"  # also the name of its internal port, which stays down and unaddressed
        taps = [f"{self.prefix}ov{tag}" for tag in ("a", "b")]
        commands = ["add-br", bridge, "--", "set", "Bridge", bridge]
        commands += ["datapath_type=netdev", "fail_mode=standalone"]
        for tap in taps:
            commands += ["--", "add-port", bridge, tap, "--", "set", "Interface", tap, "type=tap"]
        self.ovs.configure(*commands)  # standalone and no controller: the bridge's one flow is NORMAL
        ports = self.ovs.interfaces()
        for tap in taps:
            row = ports.get(tap, {})
            if not isinstance(row.get("ofport"), int) or row.get("error"):
                raise BenchError(f"ovs-l2: OVS did not add port {tap}: {row.get('error') or 'no ofport'}")
        with IPRoute(netns=sw) as ipr:
            for tap, host in zip(taps, (a, b), strict=True):
                ipr.link("set", index=ipr.link_lookup(ifname=tap)[0], net_ns_fd=host)
        vnet_header = []
        for tap, host, address in zip(taps, (a, b), ("10.0.0.1", "10.0.0.2"), strict=True):
            with IPRoute(netns=host) as ipr:
                index = ipr.link_lookup(ifname=tap)[0]
                ipr.link("set", index=index, ifname="eth0")
                vnet_header.append(_tun_vnet_header(ipr, index))
            _address(host, "eth0", address, 24)
        tso = "TSO on (the taps carry the virtio-net header)" if all(vnet_header) else "TSO off"
        self.description = f"{self.description}; {ovs_version()}, {tso}"
        self.client_ns, self.server_ns, self.server_ip = a, b, "10.0.0.2"

    def _vswitch_up(
        self,
        topology: list[str],
        created: list[str],
        instance: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        """Start `vswitch up` in a session of its own; ready once it printed its port table. instance
        (its --name) and run_dir (its VSWITCH_RUN_DIR) default to the contender's."""
        assert self.run_dir is not None
        instance = instance or f"b{self.prefix[3:]}{SHORT[self.name]}"
        run_dir = run_dir or self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.instance is None:
            self.instance = instance
        # vswitch creates these namespaces and removes them on exit; listed so a crash is mopped up.
        self.namespaces.extend(created)
        env = {**os.environ, "VSWITCH_RUN_DIR": str(run_dir)}
        argv = [sys.executable, "-m", "vswitch", "up", *topology, "--name", instance, "--json"]
        self._start(argv, instance, "vswitch up", lambda out: bool(out.strip()), env, instance, run_dir)

    def _start(
        self,
        argv: list[str],
        stem: str,
        what: str,
        ready: Callable[[bytes], bool],
        env: dict[str, str] | None = None,
        instance: str | None = None,
        vswitch_run_dir: Path | None = None,
    ) -> None:
        """Run argv in a session of its own, its output in run_dir/STEM.out and .err, until ready(its
        stdout so far) says so; BenchError with its stderr if it exits first or takes too long.
        Recorded before the wait, so teardown stops it even then: as the contender's process (the
        first), and with instance and vswitch_run_dir given, as one of its vswitches."""
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        out_path, err_path = self.run_dir / f"{stem}.out", self.run_dir / f"{stem}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        if self.proc is None:
            self.proc = proc
        if instance is not None and vswitch_run_dir is not None:
            self.vswitches.append(Vswitch(instance, vswitch_run_dir, proc))
        deadline = time.monotonic() + START_TIMEOUT
        while not ready(out_path.read_bytes()):
            if proc.poll() is not None:
                why = err_path.read_text(errors="replace").strip()
                raise StartRefused(f"{self.name}: {what} {stem} exited {proc.returncode}: {why}", why)
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: {what} {stem} was not ready within {START_TIMEOUT:g}s")
            time.sleep(0.05)

    # --- teardown ----------------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Stop the switch (if any) and remove every namespace this contender made; return problems."""
        problems: list[str] = []
        if self.ovs is not None:
            problems.extend(f"{self.name}: {p}" for p in self.ovs.stop())
        for switch in self.vswitches:
            problems.extend(self._stop_vswitch(switch))
        if self.proc is not None and not self.vswitches:
            problems.extend(self._stop_other())
        for name in reversed(self.namespaces):
            try:
                remove_netns_named(name)
            except OSError as exc:
                problems.append(f"namespace {name}: {exc}")
        return problems

    def _stop_other(self) -> list[str]:
        """A switch that is not vswitch (vde_switch): SIGTERM, then SIGKILL. Its taps die with it."""
        assert self.proc is not None
        return terminate(self.proc, self.name, STOP_TIMEOUT)

    def _stop_vswitch(self, switch: Vswitch) -> list[str]:
        problems: list[str] = []
        if switch.proc.poll() is None:
            switch.proc.send_signal(signal.SIGTERM)
            try:
                switch.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"vswitch {switch.instance} ignored SIGTERM; killed")
                switch.proc.kill()
                switch.proc.wait(STOP_TIMEOUT)
        if (switch.run_dir / f"{switch.instance}.json").exists():
            env = {**os.environ, "VSWITCH_RUN_DIR": str(switch.run_dir)}
            down = subprocess.run(
                [sys.executable, "-m", "vswitch", "down", "--name", switch.instance],
                capture_output=True,
                text=True,
                env=env,
                timeout=COMMAND_TIMEOUT + STOP_TIMEOUT,
            )
            if down.returncode != 0:
                problems.append(f"vswitch down --name {switch.instance}: {down.stderr.strip()}")
        return problems


# --- helpers ---------------------------------------------------------------------------------------
def new_namespace(name: str, made: list[str]) -> str:
    """Make namespace name with lo up; appended to made (what teardown removes) before a Ctrl-C can land."""
    with stop_signals_held():
        netns.create(name)
        made.append(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return name


def _address(namespace: str, ifname: str, address: str, prefixlen: int) -> None:
    with IPRoute(netns=namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")


def _address6(namespace: str, ifname: str, address: str, prefixlen: int) -> None:
    """A static IPv6 address without duplicate address detection (usable at once, not tentative for a
    second, as vswitch places its own), and the link up."""
    with IPRoute(netns=namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen, family=socket.AF_INET6,
                 flags=IFA_F_NODAD)  # fmt: skip
        ipr.link("set", index=index, state="up")


def _default_route6(namespace: str, gateway: str) -> None:
    with IPRoute(netns=namespace) as ipr:
        ipr.route("add", dst="::/0", gateway=gateway, family=socket.AF_INET6)


def port_address6(status: dict[str, Any], namespace: str) -> str | None:
    """The bare IPv6 address of the port in namespace, from `vswitch status --json`, or None."""
    for port in status.get("ports", []):
        if port.get("namespace") == namespace and port.get("address6"):
            return str(port["address6"]).split("/", 1)[0]
    return None


def refuses_nat6(stderr: str) -> bool:
    """Whether a `vswitch up` that exited at start-up said no to its --nat6 mode (rather than failing
    for another reason, which stays an error of the run)."""
    text = stderr.lower()
    return "nat6" in text or NAT6_MODE in text


def last_line(text: str) -> str:
    """What a program said last, without vswitch's "vswitch: error: " in front."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("vswitch: error: ") if lines else "(it said nothing)"


def _tun_vnet_header(ipr: Any, index: int) -> bool:
    """Whether a tap was opened with IFF_VNET_HDR (IFLA_TUN_VNET_HDR: what `ip -d link` shows)."""
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return bool(data.get_attr("IFLA_TUN_VNET_HDR")) if data is not None else False


def in_netns(
    namespace: str, argv: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace, bounded in time; BenchError with its stderr when it fails."""
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {namespace} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def namespaces_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def interface_counters(ipr: Any, ifname: str) -> tuple[int, int]:
    """(rx_packets, tx_packets) of ifname, from the kernel's 64-bit link statistics."""
    link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
    stats = link.get("IFLA_STATS64") or link.get("stats64")
    return int(stats["rx_packets"]), int(stats["tx_packets"])


def available_optional() -> list[str]:
    """The optional contenders this machine can run (their program is installed)."""
    return [name for name in BUILDABLE_OPTIONAL if shutil.which(OPTIONAL[name]) is not None]


def optional_notes() -> dict[str, str]:
    """Optional contenders and why they are not in this run (absent, or no topology for them yet)."""
    notes: dict[str, str] = {}
    for name, program in OPTIONAL.items():
        if shutil.which(program) is None:
            notes[name] = f"{program} not installed; skipped"
        elif name not in BUILDABLE_OPTIONAL:
            notes[name] = f"{program} is installed, but the bench has no {name} topology yet; skipped"
    return notes


def cleanup_all(contenders: list[Contender], prefix: str) -> list[str]:
    """Tear every contender down, newest first, then sweep any namespace left with our prefix."""
    problems: list[str] = []
    for contender in reversed(contenders):
        try:
            problems.extend(contender.teardown())
        except Exception as exc:  # one failure must not stop the rest of the clean-up
            problems.append(f"{contender.name}: {exc}")
    for name in namespaces_with(f"{prefix}-"):
        with contextlib.suppress(OSError):
            remove_netns_named(name)
    return problems


DESCRIPTIONS: dict[str, str] = {
    "kernel-bridge": "2 namespaces, veths to a Linux bridge in its own namespace",
    "python-floor": (
        "the floor: vswitch's taps, uvloop and reads, each frame written to the other tap as it came "
        "(no switching; vswitch/tools/bench/floor.py)"
    ),
    "vswitch-l2": "vswitch up --ports a,b (one L2 segment, tap + virtio-net header + TSO)",
    "vswitch-l2-busy": f"the same with --busy-poll {BUSY_POLL_USEC} (latency for a busy core)",
    "kernel-nat": "client - veth - router ns (ip_forward, nft masquerade) - veth - outside 198.18.0.1",
    "vswitch-nat": "vswitch up --segment lan=c --uplink o (routed, masquerade to 198.18.0.1)",
    "kernel-vxlan": (
        "n1 - veth - [host A: bridge + vxlan0] - underlay veth - [host B: vxlan0 + bridge] - veth - n2; "
        f"VNI {vxlan.VNI}, UDP {vxlan.PORT}, unicast remote, overlay MTU {vxlan.OVERLAY_MTU}"
    ),
    "vswitch-vxlan": (
        "the same hosts and underlay, a `vswitch up --ports n1 --vxlan lan=...` per host (two processes, "
        "CPU is both)"
    ),
    "vde-l2": "vde_switch -t tapA -t tapB, the taps moved into the two namespaces (no vnet header, no TSO)",
    "ovs-l2": (
        "Open vSwitch userspace datapath (netdev), private ovsdb, NORMAL action, type=tap ports moved "
        "into the two namespaces, other_config:userspace-tso-enable=true"
    ),
    "kernel-routed6": (
        f"IPv6: a {LAN6}2 - veth - router ns (net.ipv6.conf.all.forwarding=1) - veth - b {DMZ6}2, two /64s"
    ),
    "vswitch-routed6": (
        f"IPv6: vswitch up --segment a=A --segment b=B --subnet6 {SUBNET6} (routed /64s, SLAAC addresses)"
    ),
    "kernel-nat6": (
        f"IPv6: client {LAN6}2 - veth - router ns (IPv6 forwarding, nft ip6 masquerade) - veth - outside "
        f"{OUTSIDE6}"
    ),
    "vswitch-nat6": (
        f"IPv6: vswitch up --segment lan=c --uplink o --subnet6 {SUBNET6} --nat6 {NAT6_MODE} (masquerade "
        f"to {ROUTER_OUTSIDE6}, outside {OUTSIDE6})"
    ),
}
