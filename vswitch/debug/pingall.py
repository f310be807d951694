"""`vswitch pingall`: real pings between every pair of namespaces, and why the failing ones fail.

The pings are real (`ip netns exec NS ping`, at most PARALLEL at once). --explain checks each failing
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

from ..topology import UPLINK_SEGMENT
from .common import b64, call, next_hop_mac
from .doctor import NUD_FAILED, NUD_INCOMPLETE, kernel_findings, neighbour_state

PARALLEL: Final = 16


def ping(ns: str, address: str, count: int, timeout: float) -> bool:
    argv = [
        "ip",
        "netns",
        "exec",
        ns,
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


def cmd_pingall(args: argparse.Namespace) -> int:
    info = call(args, "debug-info")
    nodes = [p for p in info["ports"] if p["namespace"] and p["address"]]
    pairs = list(itertools.permutations(nodes, 2))
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(
            pool.map(lambda sd: ping(sd[0]["namespace"], _ip(sd[1]), args.count, args.timeout), pairs)
        )
    ok = {(s["port"], d["port"]): r for (s, d), r in zip(pairs, results, strict=True)}
    _matrix(nodes, ok)
    reachable = sum(results)
    print(f"{reachable}/{len(pairs)} reachable")
    if args.explain:
        for (s, d), r in zip(pairs, results, strict=True):
            if not r:
                print(f"{s['port']} -> {d['port']} ({_ip(d)}): unreachable")
                for line in explain(args, info, s, d):
                    print(f"    {line}")
    return 0 if reachable == len(pairs) else 1


def _matrix(nodes: list[dict[str, Any]], ok: dict[tuple[str, str], bool]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="reachability (row pings column)", title_justify="left", box=None, header_style="bold"
    )
    table.add_column("from \\ to")
    for node in nodes:
        table.add_column(node["port"], justify="center")
    for s in nodes:
        cells = [
            "-" if s is d else ("[green]ok[/]" if ok[(s["port"], d["port"])] else "[red]FAIL[/]")
            for d in nodes
        ]
        table.add_row(s["port"], *cells)
    Console(soft_wrap=True).print(table)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pingall", help="ping between every pair of namespaces; --explain the failures")
    p.add_argument(
        "--explain", action="store_true", help="say where each failing pair's packet stops and why"
    )
    p.add_argument("--count", type=int, default=1, help="pings per pair (default 1)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default 1)")
    p.add_argument("--name", default="default")


__all__ = ["cmd_pingall", "explain"]
