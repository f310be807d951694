"""`vswitch bench`: vswitch against the kernel's bridge, NAT, VXLAN and (--ipv6) IPv6 router, the same
topology side by side.

Only the argument parser lives here; the bench itself (pyroute2 plumbing, rich, matplotlib) is
imported when the command runs, so registering the subcommand keeps `vswitch up` start-up fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]
# For the help text only (topologies.py, which imports pyroute2, holds the real lists; a test checks).
CONTENDER_NAMES = (
    "kernel-bridge,python-floor,vswitch-l2,vswitch-l2-busy,kernel-nat,vswitch-nat,kernel-vxlan,vswitch-vxlan"
)
OPTIONAL_NAMES = "vde-l2,ovs-l2"
IPV6_NAMES = "kernel-routed6,vswitch-routed6,kernel-nat6,vswitch-nat6"


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 20:
        raise argparse.ArgumentTypeError(f"must be 1 to 20: {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> dict[str, Handler]:
    bench = subparsers.add_parser(
        "bench",
        help="userspace vs kernel forwarding: TCP, 64-byte pps, CPU/packet, loss, RTT",
        description=(
            "Build the same topology on each contender in namespaces of its own, measure them in "
            "interleaved rounds and report medians (table, JSON, PNG chart). Default: 3 rounds, "
            "about 17 minutes with vde_switch and Open vSwitch; --quick: 1 round, about 2 minutes."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="a ~2 minute smoke run (short loads, 1 round)")
    bench.add_argument("--out", metavar="DIR", help="where the JSON and PNG go (default: bench/results)")
    bench.add_argument("--rounds", type=_rounds, metavar="N", help="interleaved rounds (default 3, quick 1)")
    bench.add_argument(
        "--contenders",
        metavar="LIST",
        help=f"comma-separated subset of {CONTENDER_NAMES}, {IPV6_NAMES} and, when installed, "
        f"{OPTIONAL_NAMES} (default: all but the IPv6 ones)",
    )
    bench.add_argument(
        "--ipv6",
        action="store_true",
        help=f"add the router's IPv6 contenders ({IPV6_NAMES}) to the others: about 1 minute more with "
        "--quick, 7 without",
    )
    bench.add_argument(
        "--congestion",
        metavar="NAME",
        help="TCP congestion control for the TCP loads (iperf3 -C), e.g. cubic (default: the machine's)",
    )
    # The integration test's plumbing run: 1-second loads, 20 pings. Not for figures.
    bench.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return {"bench": _run}


def _run(args: argparse.Namespace) -> int:
    from .run import run

    return run(args)
