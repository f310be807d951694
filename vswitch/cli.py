"""The `vswitch` command line: `up` runs a switch in the foreground; the rest talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .control import ControlError, request
from .instance import Instance, StartError, down
from .state import socket_path
from .tap import TUN_PATH
from .topology import ConfigError, Topology, check_instance, parse_ports, parse_subnet, single_segment


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def build_parser() -> Parser:
    parser = Parser(prog="vswitch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vswitch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    up = sub.add_parser("up", help="create the ports and run the switch until Ctrl-C or SIGTERM")
    up.add_argument("--ports", metavar="NS[,NS...]", help="namespaces to connect: ns, ns:ifname or ns:ifname=ADDR/PREFIX")
    up.add_argument("--subnet", default="10.0.0.0/24", help="addresses for --ports (default 10.0.0.0/24)")
    up.add_argument("--ageing", type=positive_float, default=300.0, help="FDB ageing time in seconds (default 300)")
    up.add_argument("--fdb-max", type=positive_int, default=8192, help="FDB size limit (default 8192)")
    up.add_argument("--name", default="default", help="instance name, to run several side by side")
    up.add_argument("--json", action="store_true", help="print the port table as JSON")

    dn = sub.add_parser("down", help="stop an instance, or remove what a killed one left behind")
    dn.add_argument("--name", default="default")

    for name, text in (
        ("status", "ports and settings of a running instance"),
        ("fdb", "the MAC table"),
        ("stats", "per-port packets, bytes and drops by reason"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--name", default="default")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def topology_from_args(args: argparse.Namespace) -> Topology:
    if not args.ports:
        raise ConfigError("nothing to connect: give --ports ns1,ns2,...")
    return single_segment(
        args.name,
        parse_ports(args.ports),
        parse_subnet(args.subnet),
        ageing=args.ageing,
        fdb_max=args.fdb_max,
    )


def preflight() -> None:
    if os.geteuid() != 0:
        fail("vswitch up needs root (CAP_NET_ADMIN) to create namespaces and taps")
    if not os.path.exists(TUN_PATH):
        fail(f"{TUN_PATH} is missing: load the tun module (modprobe tun)")


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio is the fallback
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def cmd_up(args: argparse.Namespace) -> int:
    try:
        topology = topology_from_args(args)
    except ConfigError as exc:
        fail(str(exc), 2)
    preflight()
    instance = Instance(topology)
    try:
        instance.build()
    except StartError as exc:
        fail(str(exc))
    loop = new_loop()
    try:
        loop.run_until_complete(instance.serve(ready=lambda: print_ports(instance, args.json)))
    except KeyboardInterrupt:
        pass
    finally:
        instance.teardown()
        loop.close()
    print(f"vswitch {topology.name}: stopped, removed what it created", flush=True)
    return 0


def print_ports(instance: Instance, as_json: bool) -> None:
    rows = [p.describe() for p in instance.ports]
    if as_json:
        print(json.dumps({"instance": instance.topology.name, "ports": rows}), flush=True)
        return
    table(
        f"vswitch {instance.topology.name}: forwarding (Ctrl-C to stop)",
        ["port", "namespace", "interface", "mac", "address"],
        [[r["port"], r["namespace"], r["interface"], r["mac"], r["address"] or "-"] for r in rows],
    )


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
        print(f"removed {item}")
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


def cmd_status(args: argparse.Namespace) -> int:
    result = query(args, "status")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"instance {result['instance']}  pid {result['pid']}  up {result['uptime']:.0f}s  "
          f"fdb {result['fdb_entries']}/{result['fdb_max']} (ageing {result['ageing']:g}s)")
    table("ports", ["port", "namespace", "interface", "mac", "address", "segment"],
          [[p["port"], p["namespace"] or "(root)", p["interface"], p["mac"], p["address"] or "-", p["segment"]]
           for p in result["ports"]])
    return 0


def cmd_fdb(args: argparse.Namespace) -> int:
    rows = query(args, "fdb")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table("forwarding database", ["segment", "mac", "port", "age (s)", "type"],
          [[r["segment"], r["mac"], r["port"], r["age"], "static" if r["static"] else "learned"] for r in rows])
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    snap = query(args, "stats")
    if args.json:
        print(json.dumps(snap, indent=2))
        return 0
    rows = []
    for name, p in snap["ports"].items():
        drops = ", ".join(f"{k}={v}" for k, v in p["drops"].items()) or "-"
        rows.append([name, p["rx_packets"], p["rx_bytes"], p["tx_packets"], p["tx_bytes"], drops])
    table("port counters", ["port", "rx packets", "rx bytes", "tx packets", "tx bytes", "drops"], rows)
    if snap["events"]:
        print("events: " + ", ".join(f"{k}={v}" for k, v in snap["events"].items()))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "fdb": cmd_fdb,
    "stats": cmd_stats,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
