"""`vswitch top`: a running switch's rates, refreshed every second, as iftop or `ovs-appctl dpctl/show`.

Per port: packets and bytes per second each way; drops per second by reason; the tables' sizes (FDB per
segment, ARP, conntrack, flow cache). Rates are differences of two `stats` answers over the time
between them (the switch keeps counters only, nothing per second). `q` or Ctrl-C leaves; with
`--once`, two samples an interval apart are printed and it exits (`--json` for a script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from ...shell.control import ControlError, request
from .common import instance_socket

DIRECTIONS = ("rx", "tx")


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    stats: dict[str, Any]


def sample(args: argparse.Namespace) -> Sample:
    stats = request(instance_socket(args), "stats")
    return Sample(time.monotonic(), stats)


def rates(before: Sample, after: Sample) -> dict[str, Any]:
    """Per second between two samples: each port's packets and bytes each way, drops by reason; and
    the tables' sizes as the second sample found them. A port new in the second counts from zero."""
    span = max(after.at - before.at, 1e-6)
    ports: dict[str, dict[str, float]] = {}
    old_ports = before.stats.get("ports", {})
    for name, now in after.stats.get("ports", {}).items():
        then = old_ports.get(name, {})
        ports[name] = {
            f"{d}_{unit}_per_s": max(0, now[f"{d}_{unit}"] - then.get(f"{d}_{unit}", 0)) / span
            for d in DIRECTIONS
            for unit in ("packets", "bytes")
        }
    old_drops = before.stats.get("drops", {})
    drops = {
        reason: (count - old_drops.get(reason, 0)) / span
        for reason, count in after.stats.get("drops", {}).items()
        if count > old_drops.get(reason, 0)
    }
    return {"interval_s": span, "ports": ports, "drops_per_s": drops, "tables": after.stats.get("tables", {})}


def _si(value: float) -> str:
    """A rate as a person reads it: 950, 12.3k, 4.56M."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.0f}"


_TABLE_WORDS: Final = {"nd": "ndp", "flow_cache": "flow cache"}


def table_sizes(tables: dict[str, Any]) -> list[str]:
    """`stats`' tables block as words: FDB per segment, then ARP, NDP, conntrack, flow cache where present."""
    sizes = [f"FDB {segment} {size}" for segment, size in tables.get("fdb", {}).items()]
    sizes += [
        f"{_TABLE_WORDS.get(key, key)} {tables[key]}"
        for key in ("arp", "nd", "conntrack", "flow_cache")
        if key in tables
    ]
    return sizes


def render(view: dict[str, Any], instance: str, live: bool = True) -> Any:
    """The screen: a table of ports, then drops and tables on one line each."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"vswitch {instance}: rates over {view['interval_s']:.1f} s", title_justify="left")
    table.add_column("port")
    for header in ("rx pkt/s", "rx bit/s", "tx pkt/s", "tx bit/s"):
        table.add_column(header, justify="right")
    for name, port in view["ports"].items():
        cells = []
        for d in DIRECTIONS:
            cells += [_si(port[f"{d}_packets_per_s"]), _si(port[f"{d}_bytes_per_s"] * 8)]
        table.add_row(name, *cells)
    drops = ", ".join(f"{reason} {_si(rate)}/s" for reason, rate in sorted(view["drops_per_s"].items()))
    return Group(
        table,
        Text(f"drops: {drops or 'none'}"),
        Text("tables: " + (", ".join(table_sizes(view["tables"])) or "-")),
        Text("q or Ctrl-C to leave" if live else "", style="dim"),
    )


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single keys from a terminal on stdin (cbreak mode, restored on the way out); False if stdin is
    not a terminal (then only Ctrl-C leaves)."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_q(seconds: float, keys: bool) -> bool:
    """Wait up to seconds; True if q was pressed meanwhile."""
    if not keys:
        time.sleep(seconds)
        return False
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
            return True
    return False


def cmd_top(args: argparse.Namespace) -> int:
    if not 0.1 <= args.interval <= 60:
        raise ValueError("--interval must be between 0.1 and 60 seconds")
    before = sample(args)
    if args.once:
        time.sleep(args.interval)
        view = rates(before, sample(args))
        if args.json:
            print(json.dumps(view, indent=2, sort_keys=True))
        else:
            from rich.console import Console

            Console().print(render(view, args.name, live=False))
        return 0
    from rich.console import Console
    from rich.live import Live

    try:
        with _keys() as keys, Live(console=Console(), auto_refresh=False) as live:
            while not _wait_for_q(args.interval, keys):
                after = sample(args)
                live.update(render(rates(before, after), args.name), refresh=True)
                before = after
    except KeyboardInterrupt:
        pass
    except ControlError as exc:
        raise ControlError(f"the switch stopped answering: {exc}") from None
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="live rates of a running switch: per-port pkt/s and bit/s, drops/s by reason, table sizes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", default="default")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)"
    )
    p.add_argument("--once", action="store_true", help="two samples an interval apart, print, exit")
    p.add_argument("--json", action="store_true", help="with --once: the rates as JSON")
