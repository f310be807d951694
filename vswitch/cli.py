"""The `vswitch` command line: `up` runs a switch in the foreground; the rest talk to it."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .config import links, protect, services, topology
from .config.topology import ConfigError, Topology, check_instance
from .core.emulation import Impairment
from .shell.control import ControlError, request
from .shell.instance import Instance, StartError, down
from .shell.kernel import STOP_SIGNALS
from .shell.loop import new_loop
from .shell.state import socket_path
from .shell.tap import TUN_PATH

# Modules that add subcommands: each has register(subparsers) -> {command: handler(args) -> int}.
# They import heavy libraries (scapy, matplotlib) inside their handlers, so `vswitch up` starts fast.
EXTENSIONS: tuple[str, ...] = ("vswitch.tools.debug", "vswitch.tools.bench")
EXTENSION_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see 'vswitch --help')", 2)


def fail(message: str, status: int = 1) -> NoReturn:
    print(f"vswitch: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least minimum, or one error line saying why not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        return value

    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)


def build_parser() -> Parser:
    parser = Parser(prog="vswitch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vswitch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    up = sub.add_parser("up", help="create the ports and run the switch until Ctrl-C or SIGTERM")
    up.add_argument("-c", "--config", metavar="FILE", help="a TOML topology (options below add to it)")
    up.add_argument(
        "--ports", metavar="NS[,NS...]", help="one L2 segment: ns, ns:ifname or ns:ifname=ADDR/PREFIX"
    )
    up.add_argument("--subnet", help="addresses for --ports (default 10.0.0.0/24)")
    up.add_argument(
        "--subnet6",
        metavar="PREFIX",
        help="a /48-/60 (routed: a /64 per segment, by SLAAC) or the switched segment's prefix "
        "(--ports: PREFIX::1, ::2, ...)",
    )
    up.add_argument(
        "--segment",
        action="append",
        default=[],
        metavar="NAME=NS,NS[@SUBNET][,IPV6/64]",
        help="a routed L2 segment (repeatable); the router owns its .1 and the ::1 of its IPv6 /64, "
        "given after the @ as @SUBNET,IPV6/64 or @IPV6/64",
    )
    up.add_argument(
        "--uplink", metavar="NS[=ADDR/PREFIX][,via=GW]", help="a port to the outside, masqueraded"
    )
    up.add_argument(
        "--forward", action="append", default=[], metavar="PROTO:PORT=NS:PORT", help="DNAT from the uplink"
    )
    up.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="PREFIX=via GW",
        help="a static route, IPv4 or IPv6; GW is an address on a segment (IPv6: its global one)",
    )
    up.add_argument(
        "--host",
        nargs="?",
        const=True,
        default=None,
        metavar="ADDR/PREFIX",
        help="a port in the root namespace on the first segment",
    )
    up.add_argument("--host-routes", action="store_true", help="routes from the host to the other segments")
    up.add_argument("--ageing", type=positive_float, help="FDB ageing time in seconds (default 300)")
    up.add_argument(
        "--nat6",
        metavar="MODE",
        help="IPv6 through the uplink: masquerade (default), none (routed; the outside namespace gets "
        "the route back), or prefix=OUTSIDE/LEN (NPTv6, RFC 6296)",
    )
    up.add_argument(
        "--ra-interval",
        type=positive_float,
        metavar="SECONDS",
        help="the longest gap between the router's IPv6 advertisements (RFC 4861 MaxRtrAdvInterval; "
        "default 600, a lab may go down to 0.1)",
    )
    up.add_argument("--no-dhcp", action="store_true", help="no DHCP server on the routed segments")
    up.add_argument(
        "--dhcp-range",
        action="append",
        default=[],
        metavar="START-END",
        help="a segment's DHCP pool (default: its whole subnet but the router's and the ports' addresses)",
    )
    up.add_argument(
        "--dhcp-host",
        action="append",
        default=[],
        metavar="MAC=ADDR[,NAME]",
        help="a DHCP reservation: this MAC always gets ADDR (and the DNS name NAME)",
    )
    up.add_argument(
        "--lease-time", metavar="DURATION", help="DHCP lease time: 3600, 90s, 30m, 1h (default 1h)"
    )
    up.add_argument("--no-dns", action="store_true", help="no DNS server on the router's addresses")
    up.add_argument(
        "--dns-upstream",
        metavar="ADDR[:PORT]",
        help="where the router's DNS sends the names it does not hold, asked from the uplink's namespace "
        "(default: none, and such questions are REFUSED)",
    )
    up.add_argument("--fdb-max", type=positive_int, help="FDB size limit (default 8192)")
    up.add_argument(
        "--port-mac-max",
        type=positive_int,
        metavar="N",
        help="MACs one namespace's port may learn; more are dropped (default 1024; trunks, tunnels, "
        "the uplink and the host port: --fdb-max)",
    )
    up.add_argument(
        "--storm-limit",
        metavar="RATE",
        help="storm control: broadcasts, multicasts and unknown-unicast floods a second per port, each "
        "(like 1000pps; 0 or off: none; default 10000pps)",
    )
    up.add_argument(
        "--loop-guard",
        type=int,
        metavar="MOVES",
        help="a MAC moving between ports more than MOVES times a second is a loop: block the port it "
        "moved to (0: off; default 10). vswitch runs no STP",
    )
    up.add_argument(
        "--loop-guard-hold",
        metavar="SECONDS",
        help="how long the loop guard blocks a port before trying it again (default 30)",
    )
    up.add_argument(
        "--port-security",
        action="append",
        default=[],
        metavar="PORT[,PORT...]",
        help="the port may send only from its own MAC and addresses (static, DHCP-leased, EUI-64 "
        "SLAAC); spoofed frames are dropped",
    )
    up.add_argument("--txqueuelen", type=positive_int, help="each tap's queue length (default 10000)")
    up.add_argument(
        "--mtu",
        action="append",
        default=[],
        metavar="[SEGMENT=]N",
        help="MTU of every port (N) or of one segment's (wan: the uplink's); the router fragments "
        "between them (default 1500)",
    )
    up.add_argument(
        "--vxlan",
        action="append",
        default=[],
        metavar="SEGMENT=VNI,local=ADDR,netns=NS,remote=ADDR[,...]",
        help="stretch a segment to remote VTEPs over VXLAN (RFC 7348); also dstport=4789, ttl=64",
    )
    up.add_argument(
        "--trunk",
        action="append",
        default=[],
        metavar="PORT=SEGMENT:VID[,...][,native=SEGMENT]",
        help="an 802.1Q trunk port in NS carrying those segments tagged (repeatable)",
    )
    up.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="SRC=DST[,in|out|both]",
        help="copy port SRC's frames to a new port DST (a namespace, made if missing, on no segment: "
        "a SPAN port for tcpdump or an IDS); in: what SRC sends, out: what it is sent (default both)",
    )
    up.add_argument(
        "--vxlan-fdb",
        action="append",
        default=[],
        metavar="SEGMENT=MAC@ADDR",
        help="a static FDB entry: MAC lives behind the remote VTEP at ADDR (repeatable)",
    )
    up.add_argument(
        "--flow-cache",
        type=non_negative_int,
        metavar="N",
        help="cached routed/NAT flows per segment; 0 turns the cache off (default 8192)",
    )
    up.add_argument(
        "--busy-poll",
        type=positive_int,
        metavar="USEC",
        help="after traffic, poll the ports this long instead of sleeping: lower latency, a busy core",
    )
    up.add_argument("--name", help="instance name, to run several side by side (default: default)")
    up.add_argument("--json", action="store_true", help="print the port table as JSON")
    up.add_argument(
        "--metrics", metavar="[HOST:]PORT", help="serve Prometheus counters (default host 127.0.0.1)"
    )
    up.add_argument("--metrics-public", action="store_true", help="allow a non-loopback --metrics host")

    dn = sub.add_parser("down", help="stop an instance, or remove what a killed one left behind")
    dn.add_argument("--name", default="default")

    for name, text in (
        ("status", "ports and settings of a running instance"),
        ("fdb", "the MAC table"),
        ("stats", "per-port packets, bytes and drops by reason"),
        ("routes", "the router's table (routed topologies)"),
        ("arp", "the router's neighbour caches (ARP, and NDP for IPv6)"),
        ("conntrack", "tracked connections and their NAT mappings"),
        ("leases", "the DHCP leases: MAC, address, host name, port, seconds left"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--name", default="default")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    port = sub.add_parser("port", help="add, remove or move a port while the switch runs")
    ops = port.add_subparsers(dest="op", required=True, metavar="OP")
    add = ops.add_parser("add", help="a new port (its namespace made if missing, or attached)")
    add.add_argument("spec", metavar="SPEC", help="[PORT=](NS|pid:PID|/PATH)[:IFNAME][=ADDR/PREFIX|=dhcp]")
    add.add_argument("--segment", help="which segment (needed when there are several)")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--address", metavar="ADDR/PREFIX", help="its address (default: the next free one)")
    how.add_argument("--dhcp", action="store_true", help="its address comes from DHCP")
    remove = ops.add_parser("del", help="remove a port: its tap goes, and what was learned through it")
    remove.add_argument("port", metavar="PORT")
    move = ops.add_parser("move", help="move a port to another segment (readdressed for it)")
    move.add_argument("port", metavar="PORT")
    move.add_argument("--segment", required=True)
    for p in (add, remove, move):
        p.add_argument("--name", default="default")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    add_emulation_parsers(sub)
    for module in EXTENSIONS:
        EXTENSION_COMMANDS.update(importlib.import_module(module).register(sub))
    return parser


# `vswitch link` options: (field, metavar, help); the values stay text until config.links parses them,
# so a bad one is one line and exit status 2, as a bad `vswitch up` option is.
LINK_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("delay", "TIME", "hold each packet this long: 40ms, 1.5s"),
    ("jitter", "TIME", "vary the delay by up to this (never reordering)"),
    ("distribution", "uniform|normal", "of the jitter: uniform in +-jitter, or normal with sigma = jitter"),
    ("loss", "P%", "lose this share of packets: 1%%, 0.5%%"),
    ("loss_burst", "N", "lose them in bursts of N packets on average (Gilbert), at the same rate"),
    ("duplicate", "P%", "send this share twice"),
    ("reorder", "P%", "send this share at once, ahead of the delayed ones"),
    ("corrupt", "P%", "flip one bit in this share (after the checksum is completed)"),
    ("rate", "RATE", "shape to this rate: 10mbit, 1gbit (bps, kbps, mbps: BYTES a second, as tc's)"),
    ("burst", "SIZE", "the shaper's bucket: 32kb (default: 5 ms at the rate, at least two full frames)"),
    ("latency", "TIME", "drop a packet that would wait longer than this for the shaper (default 50ms)"),
    ("limit", "N", "packets the queue holds (default: the rate-delay product, at least 1000)"),
    ("flap", "UP/DOWN", "take the link down and up again, repeating: 2s/500ms"),
    ("filter", "EXPR", "impair only the frames this capture filter matches ('tcp port 80')"),
    ("seed", "N", "seed the random choices: the same seed and frames give the same result"),
)
LINK_FLAGS: tuple[tuple[str, str], ...] = (
    ("down", "take the link down: every packet is dropped (link-down)"),
    ("carrier", "with --down or --flap, take the carrier down in the namespace too"),
)


def add_emulation_parsers(sub: Any) -> None:
    """`vswitch link`, `vswitch partition`, `vswitch heal` (README "Network emulation")."""
    link = sub.add_parser(
        "link",
        help="impair a port's link (delay, loss, rate, down, ...), clear it, or list the impaired links",
        description="With no PORT: the impaired links and the partitions. With PORT and options: replace "
        "its impairment in those directions (in: what the namespace sends, out: what it is sent).",
    )
    link.add_argument("port", nargs="?", metavar="PORT", help="a port's name (as `vswitch status` shows it)")
    link.add_argument(
        "--direction", default="both", metavar="in|out|both", help="which way to impair (default both)"
    )
    for field, metavar, text in LINK_OPTIONS:
        flags = ["-f", "--filter"] if field == "filter" else [links.option(field)]
        link.add_argument(*flags, dest=field, metavar=metavar, help=text)
    for field, text in LINK_FLAGS:
        link.add_argument(links.option(field), dest=field, action="store_true", help=text)
    link.add_argument("--clear", action="store_true", help="remove the port's impairment (those directions)")
    part = sub.add_parser(
        "partition",
        help="drop frames between ports: A,B / C (both ways) or A,B --to C (one way)",
        description="Ports on one side are separated by commas; '/' stands alone between the sides. "
        "Partitions add up until `vswitch heal`.",
    )
    part.add_argument("sides", nargs="+", metavar="PORTS", help="A,B / C, or A,B with --to")
    part.add_argument("--to", metavar="PORTS", help="one way: frames from PORTS to these are dropped")
    heal = sub.add_parser("heal", help="remove every partition")
    for p in (link, part, heal):
        p.add_argument("--name", default="default")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def link_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request `vswitch link` sends, or ConfigError for what the user must fix."""
    values = {field: getattr(args, field) for field, _, _ in LINK_OPTIONS}
    values.update((field, getattr(args, field)) for field, _ in LINK_FLAGS)
    given = [links.option(field) for field, value in values.items() if value not in (None, False)]
    if args.clear:
        given.append("--clear")
    if args.port is None:
        if given:
            raise ConfigError(f"{given[0]} needs a PORT: vswitch link PORT {given[0]} ...")
        return {"op": "list"}
    directions = links.parse_directions(args.direction)
    direction = "both" if len(directions) == 2 else directions[0]
    if args.clear:
        if len(given) > 1:
            raise ConfigError(f"--clear takes no impairment, not {given[0]}")
        return {"op": "clear", "port": args.port, "direction": direction}
    impairment = links.impairment_from_options(values)
    if impairment is None:
        raise ConfigError(
            f"link {args.port}: give an impairment (--delay, --loss, --rate, --down ...) or --clear"
        )
    return {"op": "set", "port": args.port, "direction": direction, "impairment": impairment.settings()}


def partition_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control request `vswitch partition` sends: A,B / C both ways, A,B --to C one way."""
    text = " ".join(args.sides)
    if args.to is not None:
        if "/" in text:
            raise ConfigError("partition: give A,B / C (both ways) or A,B --to C (one way), not both")
        return {"sources": _port_list(text), "targets": _port_list(args.to), "two_way": False}
    sources, sep, targets = text.partition("/")
    if not sep or "/" in targets:
        raise ConfigError(f"partition {text!r}: give the two sides as A,B / C (or A,B --to C for one way)")
    return {"sources": _port_list(sources), "targets": _port_list(targets), "two_way": True}


def _port_list(text: str) -> list[str]:
    names = text.replace(",", " ").split()
    if not names:
        raise ConfigError("partition: each side needs at least one port")
    return names


def topology_from_args(args: argparse.Namespace) -> Topology:
    """The TOML file first (if any), then the command line on top of it."""
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as handle:
                req = topology.request_from_toml(handle.read())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.config}: {exc.strerror}") from None
    else:
        req = topology.Request()
    if args.name is not None:
        req.name = args.name
    if args.ports:
        req.ports = topology.parse_ports(args.ports)
    elif args.ports is not None:
        raise ConfigError("--ports needs a comma-separated list of namespaces, e.g. ns1,ns2,ns3")
    if args.subnet is not None:
        req.subnet = topology.parse_subnet(args.subnet)
    if args.subnet6 is not None:
        req.subnet6 = topology.parse_subnet6(args.subnet6)
    for text in args.segment:
        req.add_segment(*topology.parse_segment6(text))
    if args.uplink is not None:
        req.uplink = topology.parse_uplink(args.uplink)
    req.forwards.extend(topology.parse_forward(text) for text in args.forward)
    req.routes.extend(topology.parse_route(text) for text in args.route)
    if args.host is not None:
        req.host = True
        if isinstance(args.host, str):
            req.host_address = topology.parse_interface(args.host, "host address")
    req.host_routes = req.host_routes or args.host_routes
    if args.ageing is not None:
        req.ageing = args.ageing
    if args.ra_interval is not None:
        req.ra_interval = args.ra_interval
    if args.nat6 is not None:
        req.nat6 = topology.parse_nat6(args.nat6)
    if args.fdb_max is not None:
        req.fdb_max = args.fdb_max
    if args.port_mac_max is not None:
        req.protect.port_mac_max = args.port_mac_max
    if args.storm_limit is not None:
        req.protect.storm_limit = protect.parse_storm_limit(args.storm_limit)
    if args.loop_guard is not None:
        req.protect.loop_guard = args.loop_guard
    if args.loop_guard_hold is not None:
        req.protect.loop_guard_hold = protect.parse_hold(args.loop_guard_hold)
    for text in args.port_security:
        req.protect.port_security.extend(protect.parse_port_list(text))
    if args.txqueuelen is not None:
        req.txqueuelen = args.txqueuelen
    if args.flow_cache is not None:
        req.flow_cache = args.flow_cache
    for text in args.mtu:
        segment, mtu = topology.parse_mtu(text)
        if segment is None:
            req.mtu = mtu
        else:
            req.segment_mtu[segment] = mtu
    for text in args.vxlan:
        segment, spec = topology.parse_vxlan(text)
        if segment in req.vxlan:
            raise ConfigError(f"--vxlan {segment}: the segment has a tunnel already")
        req.vxlan[segment] = spec
    req.vxlan_fdb.extend(topology.parse_vxlan_fdb(text) for text in args.vxlan_fdb)
    req.trunks.extend(topology.parse_trunk(text) for text in args.trunk)
    req.mirrors.extend(topology.parse_mirror(text) for text in args.mirror)
    _services_from_args(req.services, args)
    return topology.build(req)


def _services_from_args(spec: services.ServicesSpec, args: argparse.Namespace) -> None:
    """The DHCP and DNS options over what a config file said."""
    if args.no_dhcp:
        spec.dhcp = False
    if args.no_dns:
        spec.dns = False
    spec.dhcp_ranges.extend(services.parse_dhcp_range(text) for text in args.dhcp_range)
    spec.dhcp_hosts.extend(services.parse_dhcp_host(text) for text in args.dhcp_host)
    if args.lease_time is not None:
        spec.lease_time = services.check_lease_time(services.parse_duration(args.lease_time, "--lease-time"))
    if args.dns_upstream is not None:
        spec.dns_upstream = services.parse_dns_upstream(args.dns_upstream)


# capabilities(7): taps and links need CAP_NET_ADMIN; naming namespaces (a bind mount) CAP_SYS_ADMIN.
NEEDED_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def preflight() -> None:
    if os.geteuid() != 0:
        fail("vswitch up needs root (CAP_NET_ADMIN) to create namespaces and taps")
    held = effective_capabilities()
    missing = [name for name, bit in NEEDED_CAPABILITIES.items() if not held >> bit & 1]
    if missing:
        fail(f"vswitch up needs {' and '.join(missing)}, which this process does not have")
    if not os.path.exists(TUN_PATH):
        fail(f"{TUN_PATH} is missing: load the tun module (modprobe tun)")


def cmd_up(args: argparse.Namespace) -> int:
    try:
        topology = topology_from_args(args)
    except ConfigError as exc:
        fail(str(exc), 2)
    preflight()
    from .tools.debug import SERVED

    instance = Instance(topology, control=SERVED)
    if args.busy_poll is not None:
        instance.busy_poll = args.busy_poll / 1e6
    if args.metrics is not None:
        from .shell.metrics import parse_listen

        try:
            instance.metrics = parse_listen(args.metrics, args.metrics_public)
        except ValueError as exc:
            fail(str(exc), 2)
    # SIGINT/SIGTERM/SIGHUP stay blocked while the kernel side is built and torn down: a signal waits
    # until the switch serves (it stops at once) or is ignored (teardown always finishes). Blocking,
    # not a Python handler, because pyroute2 forks helpers that would run the handler too.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        instance.build()
    except StartError as exc:
        fail(str(exc))
    loop = new_loop()
    try:
        loop.run_until_complete(instance.serve(ready=lambda: serving(instance, args.json)))
    except StartError as exc:
        print(f"vswitch: error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        instance.teardown()
        loop.close()
    print(f"vswitch {topology.name}: stopped, removed what it created", flush=True)
    return 0


def serving(instance: Instance, as_json: bool) -> None:
    """The loop's signal handlers are in place: show the ports, then let signals through."""
    print_ports(instance, as_json)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def print_ports(instance: Instance, as_json: bool) -> None:
    rows = [p.describe() for p in instance.ports]
    mirrors = [m.describe(instance.datapath.counters) for m in instance.mirrors]
    if as_json:
        print(json.dumps({"instance": instance.topology.name, "ports": rows, "mirrors": mirrors}), flush=True)
        return
    table(
        f"vswitch {instance.topology.name}: forwarding (Ctrl-C to stop)",
        ["port", "namespace", "interface", "mac", "address"],
        [
            [
                r["port"],
                r["namespace"] or "(root)",
                r["interface"],
                r["mac"],
                " ".join(a for a in (r["address"], r["address6"]) if a) or "-",
            ]
            for r in rows
        ],
    )
    for m in mirrors:
        print(f"mirror {m['source']} -> {m['port']} ({m['direction']}): {m['namespace']} {m['interface']}")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(str(c) for c in row))
    Console(soft_wrap=True).print(t)
    sys.stdout.flush()


def cmd_down(args: argparse.Namespace) -> int:
    check_or_fail(args.name)
    try:
        removed = down(args.name)
    except StartError as exc:
        fail(str(exc))
    if not removed:
        print(f"vswitch {args.name}: nothing to remove")
    for item in removed:
        print(item)
    return 0


def check_or_fail(name: str) -> None:
    try:
        check_instance(name)
    except ConfigError as exc:
        fail(str(exc), 2)


def query(args: argparse.Namespace, cmd: str) -> Any:
    check_or_fail(args.name)
    try:
        return request(socket_path(args.name), cmd)
    except ControlError as exc:
        fail(f"instance {args.name}: {exc}")


def print_json(args: argparse.Namespace, data: Any) -> bool:
    """With --json, print data as JSON and say so; otherwise leave the table to the caller."""
    if args.json:
        print(json.dumps(data, indent=2))
    return bool(args.json)


def flow_cache_summary(status: dict[str, Any]) -> str:
    if not status["flow_cache_max"]:
        return "  flow cache off"
    return f"  flow cache {status['flow_cache_entries']} (at most {status['flow_cache_max']} per segment)"


def cmd_status(args: argparse.Namespace) -> int:
    result = query(args, "status")
    if print_json(args, result):
        return 0
    print(
        f"instance {result['instance']}  pid {result['pid']}  up {result['uptime']:.0f}s  "
        f"fdb {result['fdb_entries']}/{result['fdb_max']} (ageing {result['ageing']:g}s)"
        + (flow_cache_summary(result) if result["routed"] else "")
    )
    for port, left in result.get("protect", {}).get("blocked", {}).items():
        print(f"loop guard: port {port} is blocked ({left:g}s left): a loop outside the switch?")
    mtu = {segment["name"]: segment.get("mtu") for segment in result["segments"]}
    if result["uplink"] is not None:
        mtu[topology.UPLINK_SEGMENT] = result["uplink"].get("mtu")
    table(
        "ports",
        ["port", "namespace", "interface", "mac", "address", "segment", "mtu"],
        [
            [
                p["port"],
                p["namespace"] or "(root)",
                p["interface"],
                p["mac"],
                " ".join(a for a in (p["address"], p.get("address6")) if a) or "-",
                p["segment"],
                str(mtu.get(p["segment"]) or "-"),
            ]
            for p in result["ports"]
        ],
    )
    trunks = result.get("trunks") or []
    if trunks:
        table(
            "trunks (802.1Q)",
            ["port", "namespace", "interface", "mac", "vlans", "native"],
            [
                [t["port"], t["namespace"], t["interface"], t["mac"],
                 " ".join(f"{seg}:{vid}" for seg, vid in t["vlans"].items()), t["native"] or "-"]
                for t in trunks
            ],
        )  # fmt: skip
    services = result.get("services")
    if services is not None and (services["dhcp"] or services["dns"]):
        dhcp = (
            f"DHCP {services['leases']} leases ({services['lease_time']:g}s)"
            if services["dhcp"]
            else "no DHCP"
        )
        dns = "no DNS"
        if services["dns"]:
            dns = f"DNS for .{services['domain']}, upstream {services['dns_upstream'] or 'none (REFUSED)'}"
        print(f"services: {dhcp}; {dns}")
    for m in result.get("mirrors") or []:
        print(
            f"mirror {m['source']} -> {m['port']} ({m['direction']}): {m['namespace']} {m['interface']} "
            f"{m['mac']}, {m['copies']} copies, {m['dropped']} sent by it dropped"
        )
    emulation = result.get("emulation")
    if emulation:
        print("emulation: " + emulation_summary(emulation) + " (vswitch link)")
    for t in result.get("tunnels") or []:
        print(
            f"vxlan {t['port']}: segment {t['segment']}, VNI {t['vni']}, local {t['local']}:{t['dstport']} "
            f"in {t['netns'] or 'the root namespace'}, mtu {t['mtu']} (underlay {t['underlay_mtu']}), "
            f"ttl {t['ttl']}"
        )
        table(
            "remote VTEPs",
            ["port", "remote", "flooded", "rx packets", "tx packets"],  # learned: reached by its MACs
            [
                [r["port"], r["address"],
                 "learned" if r.get("learned") else "yes" if r.get("flooded", True) else "no (fdb only)",
                 str(r["rx_packets"]), str(r["tx_packets"])]
                for r in t["remotes"]
            ],
        )  # fmt: skip
    return 0


def cmd_fdb(args: argparse.Namespace) -> int:
    rows = query(args, "fdb")
    if print_json(args, rows):
        return 0
    table(
        "forwarding database",
        ["segment", "mac", "port", "age (s)", "type"],
        [[r["segment"], r["mac"], r["port"], r["age"], "static" if r["static"] else "learned"] for r in rows],
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    snap = query(args, "stats")
    if print_json(args, snap):
        return 0
    rows = []
    for name, p in snap["ports"].items():
        drops = ", ".join(f"{k}={v}" for k, v in p["drops"].items()) or "-"
        rows.append([name, p["rx_packets"], p["rx_bytes"], p["tx_packets"], p["tx_bytes"], drops])
    table("port counters", ["port", "rx packets", "rx bytes", "tx packets", "tx bytes", "drops"], rows)
    if snap["events"]:
        print("switch events: " + ", ".join(f"{k}={v}" for k, v in snap["events"].items()))
    from .tools.debug.top import table_sizes

    sizes = table_sizes(snap.get("tables", {}))
    if sizes:
        print("tables: " + ", ".join(sizes))
    router = snap.get("router")
    if router:
        print("router drops: " + (", ".join(f"{k}={v}" for k, v in router["drops"].items()) or "-"))
        print("router events: " + (", ".join(f"{k}={v}" for k, v in router["events"].items()) or "-"))
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return "/".join(str(v) for v in value)
    return str(value)


def cmd_table(cmd: str, title: str) -> Callable[[argparse.Namespace], int]:
    """A command that prints a list of flat dicts from the router as a table (or JSON)."""

    def run(args: argparse.Namespace) -> int:
        rows = query(args, cmd)
        if print_json(args, rows):
            return 0
        columns = list(rows[0]) if rows else []
        table(title, columns, [[_cell(row.get(c)) for c in columns] for row in rows])
        if not rows:
            print("(empty)")
        return 0

    return run


def cmd_port(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"op": args.op}
    if args.op == "add":
        spec = args.spec + ("=dhcp" if args.dhcp and "=" not in args.spec.split(":")[-1] else "")
        fields.update(spec=spec, segment=args.segment, address=args.address)
    else:
        fields.update(port=args.port, segment=getattr(args, "segment", None))
    check_or_fail(args.name)
    try:
        result = request(socket_path(args.name), "port", timeout=30.0, **fields)
    except ControlError as exc:
        fail(f"instance {args.name}: {exc}")
    if not print_json(args, result):
        if args.op == "del":
            print(f"removed port {args.port}")
        else:
            address = " ".join(a for a in (result.get("address"), result.get("address6")) if a) or "-"
            print(
                f"port {result['port']}: {result['namespace']} {result['interface']} {address} "
                f"on {result['segment']}"
            )
    return 0


def control(args: argparse.Namespace, cmd: str, **fields: Any) -> Any:
    """One request to the instance args.name; its error is one line and exit status 1."""
    check_or_fail(args.name)
    try:
        return request(socket_path(args.name), cmd, **fields)
    except ControlError as exc:
        fail(f"instance {args.name}: {exc}")


def cmd_link(args: argparse.Namespace) -> int:
    try:
        fields = link_request(args)
    except ConfigError as exc:
        fail(str(exc), 2)
    result = control(args, "link", **fields)
    if print_json(args, result):
        return 0
    if fields["op"] == "list":
        print_links(result)
    else:
        print_link_entries([result], f"link {result.get('port', args.port)}")
    return 0


def _impairment_words(settings: dict[str, Any]) -> str:
    """A stage's settings as trace says them; a cleared stage has none until its queue drains."""
    if not settings:
        return "(cleared: its queue drains)"
    try:
        return Impairment.from_settings(settings).summary()
    except ValueError:  # an instance of another version: its own words
        return json.dumps(settings)


def print_link_entries(entries: list[dict[str, Any]], title: str) -> None:
    rows = []
    for entry in entries:
        for direction in ("in", "out"):
            stage = entry.get(direction)
            if stage is None:
                continue
            stats = " ".join(f"{what}={count}" for what, count in stage.get("stats", {}).items())
            queue = f"{stage['queued']}/{stage['limit']}"
            link = "down" if stage["down"] else "up"
            rows.append(
                [entry["port"], direction, link, queue, stats or "-", _impairment_words(stage["settings"])]
            )
    if not rows:
        print(f"{title}: not impaired" if len(entries) == 1 else f"{title}: none impaired")
        return
    table(title, ["port", "dir", "link", "queued/limit", "counts", "impairment"], rows)


def emulation_summary(result: dict[str, Any]) -> str:
    """One line: which ports are impaired (and how) and the partitions."""
    impaired = [
        f"{entry['port']} ({', '.join(d for d in ('in', 'out') if d in entry)})" for entry in result["links"]
    ]
    partitions = result.get("partitions") or []
    return (
        f"impaired {', '.join(impaired) or 'none'}; "
        f"partitions {'; '.join(partitions) if partitions else 'none'}"
    )


def print_links(result: dict[str, Any]) -> None:
    print_link_entries(result["links"], "links")
    partitions = result.get("partitions") or []
    print("partitions: " + ("; ".join(partitions) if partitions else "none"))
    if result.get("carrier_down"):
        print("carrier down: " + ", ".join(result["carrier_down"]))


def cmd_partition(args: argparse.Namespace) -> int:
    try:
        fields = partition_request(args)
    except ConfigError as exc:
        fail(str(exc), 2)
    result = control(args, "partition", **fields)
    if not print_json(args, result):
        print("partitions: " + "; ".join(result["partitions"]))
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    result = control(args, "heal")
    if not print_json(args, result):
        healed = result["healed"]
        print(f"healed {healed} partition{'' if healed == 1 else 's'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "routes": cmd_table("routes", "routes"),
    "arp": cmd_table("arp", "neighbours (ARP, NDP)"),
    "conntrack": cmd_table("conntrack", "connections"),
    "leases": cmd_table("leases", "DHCP leases"),
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "fdb": cmd_fdb,
    "stats": cmd_stats,
    "port": cmd_port,
    "link": cmd_link,
    "partition": cmd_partition,
    "heal": cmd_heal,
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse binds an optional positional (trace's PACKET) with the positional before it, so
    # `trace ns1 --name lab 'Ether()/...'` would leave the expression over: give it its place.
    if len(extras) == 1 and not extras[0].startswith("-") and getattr(args, "packet", "") is None:
        args.packet = extras[0]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        handler = COMMANDS.get(args.command) or EXTENSION_COMMANDS[args.command]
        return handler(args)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
