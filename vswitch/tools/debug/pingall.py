"""`vswitch pingall`: real pings between every pair of namespaces, and why the failing ones fail.

The pings are real (`ip netns exec NS ping`, at most PARALLEL at once). The host port takes part too:
a pair with the host port is pinged only if the root namespace's routing table sends the other
port's address through the host port (a FIB lookup first), both for the root's echo requests and for
its echo replies; so a missing --host-routes shows as "no route" and never sends a packet out of the
machine's real interface. --explain checks each failing
pair's namespaces with pyroute2 (doctor.kernel_findings) and traces a synthetic ICMP echo from the
source port, then the reply from the destination port, through a copy of the switch (no side effects).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Interface
from typing import Any, Final

from ...config.topology import UPLINK_SEGMENT
from .common import b64, call, next_hop_mac
from .doctor import NUD_FAILED, NUD_INCOMPLETE, kernel_findings, neighbour_state

PARALLEL: Final = 16


NO_ROUTE: Final = None  # a host-port pair not pinged: the root namespace routes it elsewhere


def ping(ns: str | None, address: str, count: int, timeout: float) -> bool:
    """ns None: from the root namespace (the host port)."""
    argv = [
        *(["ip", "netns", "exec", ns] if ns is not None else []),
        "ping",
        "-n",
        "-q",
        "-c",
        str(count),
        "-i",
        "0.2",
        "-W",
        f"{timeout:g}",
    ]
    try:
        proc = subprocess.run([*argv, address], capture_output=True, timeout=count * (timeout + 0.5) + 5)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _ip(port: dict[str, Any]) -> str:
    return str(IPv4Interface(port["address"]).ip)


def _echo(info: dict[str, Any], src: dict[str, Any], dst_ip: str, reply: bool) -> dict[str, Any]:
    """A synthetic echo from src's namespace, addressed as its neighbour table would address it."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    mac = next_hop_mac(info, src["port"], dst_ip)
    known, _state = neighbour_state(src["namespace"], _hop(info, src, dst_ip))
    if known and known != "00:00:00:00:00:00":
        mac = known  # what the namespace would really use
    icmp = ICMP(type=0 if reply else 8, id=0x7673, seq=1)
    frame = Ether(src=src["mac"], dst=mac) / IP(src=_ip(src), dst=dst_ip) / icmp / b"vswitch pingall"
    return {"port": src["port"], "data": b64(bytes(frame))}


def _hop(info: dict[str, Any], src: dict[str, Any], dst_ip: str) -> str:
    """The address the source namespace resolves: dst on its own subnet, else its gateway."""
    from .doctor import gateway_of

    if IPv4Interface(dst_ip + "/32").ip in IPv4Interface(src["address"]).network:
        return dst_ip
    return gateway_of(info, src) or dst_ip


def _outcome(result: dict[str, Any], target: str) -> tuple[bool, str]:
    """(reached target's port, a sentence on where the packet stopped and why)."""
    ports = [o["port"] for o in result["outputs"]]
    stages = result["stages"]
    if result["drops"]:
        where, reason = next(iter(result["drops"].items()))
        why = {
            "no-route": "the router has no route to the destination",
            "ttl-exceeded": "TTL expired in the router",
            "arp-failed": "the router's ARP for the next hop went unanswered",
        }.get(reason, "NAT refused it" if reason.startswith("nat-") else reason)
        return False, f"dropped at {where}: {reason} ({why})"
    for stage, text in stages:
        if stage == "ARP" and "unresolved" in text:
            return (
                False,
                f"the router has no ARP entry: {text}; the namespace never answered (ARP unanswered)",
            )
    if target in ports:
        flooded = any("no FDB entry" in text for _s, text in stages)
        return True, f"reaches {target}" + (" (flooded: no FDB entry for its MAC yet)" if flooded else "")
    if ports:
        return False, f"leaves on {', '.join(sorted(set(ports)))}, not on {target}"
    return False, "consumed by the switch: no frame leaves toward " + target


def explain(
    args: argparse.Namespace, info: dict[str, Any], src: dict[str, Any], dst: dict[str, Any]
) -> list[str]:
    reasons = [f"{f.where}: {f.text}" for f in kernel_findings(info, src, _ip(dst))]
    # Toward the uplink the reply comes back to the NAT address, not to src's own.
    natted = info.get("uplink") and dst["segment"] == UPLINK_SEGMENT and src["segment"] != UPLINK_SEGMENT
    reply_to = str(IPv4Interface(info["uplink"]["address"]).ip) if natted else _ip(src)
    reasons += [f"{f.where} (reply path): {f.text}" for f in kernel_findings(info, dst, reply_to)]
    hop = _hop(info, src, _ip(dst))
    _mac, state = neighbour_state(src["namespace"], hop)
    if state is not None and state & (NUD_FAILED | NUD_INCOMPLETE):
        word = "FAILED" if state & NUD_FAILED else "INCOMPLETE"
        reasons.append(f"{src['namespace']}: ARP unanswered for {hop} (neighbour state {word})")
    # Request and reply on one copy of the switch, so the reply meets the request's conntrack entry.
    request = _echo(info, src, _ip(dst), reply=False)
    answer = _echo(info, dst, reply_to, reply=True)
    result = call(args, "trace", **request, then=[answer])
    there, text = _outcome(result, dst["port"])
    reasons.append(f"switch, echo request: {text}")
    if there:
        back, text = _outcome(result["then"][0], src["port"])
        reasons.append(f"switch, echo reply: {text}")
        if back and len(reasons) == 2:
            reasons.append("the switch forwards both ways: the loss is inside a namespace (firewall, sysctl)")
    return reasons


def root_routes_via(address: str, ifname: str) -> bool:
    """Whether the root namespace's FIB sends address out of ifname (a lookup: nothing is sent)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        try:
            (answer,) = ipr.route("get", dst=address)
        except NetlinkError:  # no route at all (ENETUNREACH)
            return False
    return bool(index) and answer.get_attr("RTA_OIF") == index[0]


def _host_side(src: dict[str, Any], dst: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the host port, the other port) of a pair with the host port in it."""
    if src["namespace"] is None:
        return src, dst
    if dst["namespace"] is None:
        return dst, src
    return None


def _attempt(src: dict[str, Any], dst: dict[str, Any], count: int, timeout: float) -> bool | None:
    host = _host_side(src, dst)
    if host is not None and not root_routes_via(_ip(host[1]), host[0]["interface"]):
        return NO_ROUTE  # the root would send its request or its reply elsewhere
    return ping(src["namespace"], _ip(dst), count, timeout)


def cmd_pingall(args: argparse.Namespace) -> int:
    info = call(args, "debug-info")
    nodes = [p for p in info["ports"] if p["address"]]
    pairs = list(itertools.permutations(nodes, 2))
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(lambda sd: _attempt(sd[0], sd[1], args.count, args.timeout), pairs))
    ok = {(s["port"], d["port"]): r for (s, d), r in zip(pairs, results, strict=True)}
    _matrix(nodes, ok)
    tried = [r for r in results if r is not NO_ROUTE]
    reachable = sum(1 for r in tried if r)
    unrouted = len(results) - len(tried)
    untried = f"; {unrouted} with the host not tried: the root namespace routes them elsewhere"
    print(f"{reachable}/{len(tried)} reachable" + (untried if unrouted else ""))
    if args.explain:
        for (s, d), r in zip(pairs, results, strict=True):
            host = _host_side(s, d)
            if r is NO_ROUTE and host is not None:
                print(f"{s['port']} -> {d['port']} ({_ip(d)}): not tried")
                print(
                    f"    root namespace: no route to {_ip(host[1])} via {host[0]['interface']}"
                    " (see --host-routes)"
                )
            elif not r:
                print(f"{s['port']} -> {d['port']} ({_ip(d)}): unreachable")
                for line in explain(args, info, s, d):
                    print(f"    {line}")
    return 0 if reachable == len(tried) else 1


def _cell(result: bool | None) -> str:
    if result is NO_ROUTE:
        return "[dim]no route[/]"
    return "[green]ok[/]" if result else "[red]FAIL[/]"


def _matrix(nodes: list[dict[str, Any]], ok: dict[tuple[str, str], bool | None]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="reachability (row pings column)", title_justify="left", box=None, header_style="bold"
    )
    table.add_column("from \\ to")
    for node in nodes:
        table.add_column(node["port"], justify="center")
    for s in nodes:
        cells = ["-" if s is d else _cell(ok[(s["port"], d["port"])]) for d in nodes]
        table.add_row(s["port"], *cells)
    Console(soft_wrap=True).print(table)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pingall", help="ping between every pair of ports (the host port too); --explain the failures"
    )
    p.add_argument(
        "--explain", action="store_true", help="say where each failing pair's packet stops and why"
    )
    p.add_argument("--count", type=int, default=1, help="pings per pair (default 1)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default 1)")
    p.add_argument("--name", default="default")


__all__ = ["cmd_pingall", "explain"]
