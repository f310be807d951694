"""`vswitch pingall`: real pings between every pair of namespaces, and why the failing ones fail.

The pings are real (`ip netns exec NS ping`, at most PARALLEL at once), over IPv4 and, when any port
has an IPv6 address, over IPv6 as a second matrix (`ping -6`, each port's address from status: SLAAC's
on a routed segment; a port on an IPv6 segment with none is shown as "no address"). The host port takes
part too: a pair with the host port is pinged only if the root namespace's routing table sends the
other port's address through the host port (a FIB lookup first), both for the root's echo requests and
for its echo replies; so a missing --host-routes shows as "no route" and never sends a packet out of
the machine's real interface. --explain checks each failing pair's namespaces with pyroute2
(doctor.kernel_findings: for IPv6 the address, the RA-learned default route and the MTU), their
neighbour tables (ARP, NDP) and the router's, and traces a synthetic echo (ICMP, ICMPv6) from the source
port, then the reply from the destination port, through a copy of the switch (no side effects).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, IPv6Network, ip_address
from typing import Any, Final, Literal

from ...config.topology import UPLINK_SEGMENT
from .common import b64, call, gateway_mac, next_hop_mac
from .doctor import NUD_FAILED, NUD_INCOMPLETE, expect6, kernel_findings, neighbour_state

PARALLEL: Final = 16

Family = Literal[4, 6]
# A pair's outcome, as the matrix shows it and --json says it.
OK: Final = "ok"
FAIL: Final = "fail"
NO_ROUTE: Final = "no-route"  # a host-port pair not pinged: the root namespace routes it elsewhere
NO_ADDRESS: Final = "no-address"  # IPv6: one of the two has no address (SLAAC gave it none)


@dataclass
class Matrix:
    """One family's pings: the ports in it (each with its address in that family, or None), every
    ordered pair's outcome, and for --explain the failing pairs' reasons."""

    family: Family
    nodes: list[dict[str, Any]]
    addresses: dict[str, str | None]
    outcome: dict[tuple[str, str], str] = field(default_factory=dict)
    why: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return list(itertools.permutations(self.nodes, 2))

    @property
    def tried(self) -> int:
        return sum(1 for result in self.outcome.values() if result != NO_ROUTE)

    @property
    def reachable(self) -> int:
        return sum(1 for result in self.outcome.values() if result == OK)

    def as_json(self) -> dict[str, Any]:
        rows = []
        for s, d in self.pairs:
            row: dict[str, Any] = {
                "from": s["port"],
                "to": d["port"],
                "address": self.addresses[d["port"]],
                "result": self.outcome[(s["port"], d["port"])],
            }
            if (s["port"], d["port"]) in self.why:
                row["why"] = self.why[(s["port"], d["port"])]
            rows.append(row)
        return {
            "ports": [n["port"] for n in self.nodes],
            "pairs": rows,
            "reachable": self.reachable,
            "tried": self.tried,
        }


def ping(ns: str | None, address: str, count: int, timeout: float, family: Family = 4) -> bool:
    """ns None: from the root namespace (the host port)."""
    argv = [
        *(["ip", "netns", "exec", ns] if ns is not None else []),
        "ping",
        *(["-6"] if family == 6 else []),
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


def v4_matrix(info: dict[str, Any]) -> Matrix:
    nodes = [p for p in info["ports"] if p["address"]]
    return Matrix(4, nodes, {p["port"]: _ip(p) for p in nodes})


def v6_matrix(info: dict[str, Any], lookup: bool = True) -> Matrix | None:
    """The IPv6 matrix, if any port has an IPv6 address: those ports, and the namespaces on an IPv6
    segment that have none in status (SLAAC had not given it when `up` was ready); for these the
    kernel is asked again (lookup), in case it came since."""
    if not any(p.get("address6") for p in info["ports"]):
        return None
    nodes = [p for p in info["ports"] if p.get("address6") or expect6(info, p) is not None]
    addresses: dict[str, str | None] = {}
    for port in nodes:
        if port.get("address6"):
            addresses[port["port"]] = str(IPv6Interface(port["address6"]).ip)
        else:
            addresses[port["port"]] = _kernel_address6(info, port) if lookup else None
    return Matrix(6, nodes, addresses)


def _kernel_address6(info: dict[str, Any], port: dict[str, Any]) -> str | None:
    from ...shell.kernel import slaac_address

    want = expect6(info, port)
    if want is None:
        return None
    try:
        found = slaac_address(port["namespace"], port["interface"], want.prefix)
    except (OSError, ValueError):  # the namespace is gone: --explain says so
        return None
    return None if found is None else str(found.ip)


# --- explaining a failing pair ---------------------------------------------------------------------------
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


def _segment(info: dict[str, Any], port: dict[str, Any]) -> dict[str, Any]:
    for segment in info["segments"]:
        if segment["name"] == port["segment"]:
            return dict(segment)
    return {}


def hop6(info: dict[str, Any], src: dict[str, Any], src_ip: str, dst_ip: str) -> tuple[str, str | None]:
    """(the address src's namespace resolves by NDP for dst_ip, the MAC vswitch knows for it): dst itself
    on src's own prefix (a segment's /64 is on-link, RFC 4861 6.3.4; the uplink's is its address's),
    else the router's link-local address, the gateway its advertisements name. The MAC: the port's
    that holds the address, or the router's on src's segment for its own addresses and every off-link
    destination, else None (an on-link address no port is known to hold)."""
    segment = _segment(info, src)
    router_mac = segment.get("router_mac") or gateway_mac(info, src["segment"])
    if segment.get("subnet6"):
        prefix = IPv6Interface(segment["subnet6"]).network
    else:  # a switched segment or the uplink: the prefix of the address vswitch gave the port
        prefix = IPv6Interface(src.get("address6") or f"{src_ip}/64").network
    target = IPv6Address(dst_ip)
    if target in prefix:
        for port in info["ports"]:
            if port.get("address6") and IPv6Interface(port["address6"]).ip == target:
                return dst_ip, port["mac"]
        # the router's address here (and the subnet-router anycast address, RFC 4291 2.6.1)
        router = {
            IPv6Interface(i["address6"]).ip for i in info.get("router_interfaces", []) if i.get("address6")
        }
        return dst_ip, router_mac if target in router or target == prefix.network_address else None
    return str(segment.get("link_local") or dst_ip), router_mac


def reply_to6(info: dict[str, Any], src: dict[str, Any], src_ip: str, dst: dict[str, Any]) -> str:
    """Where dst's echo reply goes: src's own address, unless the pair crosses the uplink: then the
    router's uplink address under NAT66 (masquerade), or src's address as NPTv6 maps it (prefix=)."""
    uplink = info.get("uplink") or {}
    crosses = dst["segment"] == UPLINK_SEGMENT and src["segment"] != UPLINK_SEGMENT
    mode = str(uplink.get("nat6") or "")
    if not crosses:
        return src_ip
    if mode == "masquerade" and uplink.get("address6"):
        return str(IPv6Interface(uplink["address6"]).ip)
    if mode.startswith("prefix="):
        from ...core.npt import Npt

        outside = IPv6Network(mode.split("=", 1)[1])
        inside = IPv6Network(f"{src_ip}/{outside.prefixlen}", strict=False)
        mapped = Npt(inside, outside).outward(IPv6Address(src_ip).packed)
        return src_ip if mapped is None else str(IPv6Address(mapped))
    return src_ip  # none: routed, the outside sees the inside address


def echo6(
    info: dict[str, Any], src: dict[str, Any], src_ip: str, dst_ip: str, reply: bool, mac: str | None = None
) -> dict[str, Any]:
    """A synthetic ICMPv6 echo (RFC 4443 4.1, 4.2) from src's namespace, to the MAC its neighbour table
    has for the next hop (mac), else the one vswitch knows for it."""
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether

    _hop_ip, known = hop6(info, src, src_ip, dst_ip)
    dst_mac = mac or known or "ff:ff:ff:ff:ff:ff"
    icmp = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=0x7673, seq=1)
    frame = Ether(src=src["mac"], dst=dst_mac) / IPv6(src=src_ip, dst=dst_ip) / icmp / b"vswitch pingall"
    return {"port": src["port"], "data": b64(bytes(frame))}


DROP_WHY: Final = {
    "no-route": "the router has no route to the destination",
    "ttl-exceeded": "TTL expired in the router",
    "hop-limit-exceeded": "the hop limit expired in the router",
    "arp-failed": "the router's ARP for the next hop went unanswered",
    "nd-failed": "the router's neighbour solicitations for the next hop went unanswered",
    "packet-too-big": "bigger than the next hop's MTU (the router sends packet too big)",
    "ipv6-beyond-scope": "a link-local source cannot leave its link",
}


def _outcome(result: dict[str, Any], target: str) -> tuple[bool, str]:
    """(reached target's port, a sentence on where the packet stopped and why)."""
    ports = [o["port"] for o in result["outputs"]]
    stages = result["stages"]
    if result["drops"]:
        where, reason = next(iter(result["drops"].items()))
        why = DROP_WHY.get(reason, "NAT refused it" if reason.startswith("nat-") else reason)
        return False, f"dropped at {where}: {reason} ({why})"
    for stage, text in stages:
        if stage == "ARP" and "unresolved" in text:
            return (
                False,
                f"the router has no ARP entry: {text}; the namespace never answered (ARP unanswered)",
            )
        if stage == "NDP" and "unresolved" in text:
            return (
                False,
                f"the router has no NDP entry: {text}; the namespace never answered (NDP unanswered)",
            )
    for stage, text in stages:  # network emulation (trace's notes): what the links do around the pipeline
        if stage == "partition" and text.split(" -> ")[-1].startswith(f"{target}:"):
            return False, f"partitioned: {text} (vswitch heal removes it)"
        if stage == "link" and "dropped" in text:
            return False, f"impaired link: {text} (vswitch link PORT --clear)"
        if stage == "link" and ("loss 100%" in text):
            return False, f"impaired link: {text}: every frame is lost (vswitch link PORT --clear)"
    if target in ports:
        flooded = any("no FDB entry" in text for _s, text in stages)
        return True, f"reaches {target}" + (" (flooded: no FDB entry for its MAC yet)" if flooded else "")
    if ports:
        return False, f"leaves on {', '.join(sorted(set(ports)))}, not on {target}"
    return False, "consumed by the switch: no frame leaves toward " + target


def _unanswered(state: int | None) -> str | None:
    if state is not None and state & (NUD_FAILED | NUD_INCOMPLETE):
        return "FAILED" if state & NUD_FAILED else "INCOMPLETE"
    return None


def _router_neighbours(args: argparse.Namespace, info: dict[str, Any], cache: dict[str, Any]) -> list[Any]:
    """The router's ARP and NDP table (`vswitch arp`), asked once per run."""
    if "arp" not in cache:
        cache["arp"] = call(args, "arp") if info["routed"] else []
    rows: list[Any] = cache["arp"]
    return rows


def _router_says(rows: list[Any], address: str) -> str | None:
    for row in rows:
        try:
            same = ip_address(str(row["ip"])) == ip_address(address)
        except ValueError:
            continue
        if same and row["state"] in ("failed", "incomplete"):
            kind = "NDP" if ":" in address else "ARP"
            return f"router: {kind} for {address} is {row['state']} (the namespace never answered)"
    return None


def _switch_says(
    args: argparse.Namespace,
    request: dict[str, Any],
    answer: dict[str, Any],
    dst: str,
    src: str,
    found: bool,
) -> list[str]:
    """Request and reply traced on one copy of the switch, so the reply meets the request's conntrack
    entry; if both get through and nothing was found in the namespaces (found), the loss is inside one
    of them in a way no check sees."""
    result = call(args, "trace", **request, then=[answer])
    there, text = _outcome(result, dst)
    reasons = [f"switch, echo request: {text}"]
    if there:
        back, text = _outcome(result["then"][0], src)
        reasons.append(f"switch, echo reply: {text}")
        if back and not found:
            reasons.append("the switch forwards both ways: the loss is inside a namespace (firewall, sysctl)")
    return reasons


def explain(
    args: argparse.Namespace,
    info: dict[str, Any],
    src: dict[str, Any],
    dst: dict[str, Any],
    cache: dict[str, Any] | None = None,
) -> list[str]:
    cache = {} if cache is None else cache
    reasons = [f"{f.where}: {f.text}" for f in kernel_findings(info, src, _ip(dst))]
    # Toward the uplink the reply comes back to the NAT address, not to src's own.
    natted = info.get("uplink") and dst["segment"] == UPLINK_SEGMENT and src["segment"] != UPLINK_SEGMENT
    reply_to = str(IPv4Interface(info["uplink"]["address"]).ip) if natted else _ip(src)
    reasons += [f"{f.where} (reply path): {f.text}" for f in kernel_findings(info, dst, reply_to)]
    hop = _hop(info, src, _ip(dst))
    _mac, state = neighbour_state(src["namespace"], hop)
    if word := _unanswered(state):
        reasons.append(f"{src['namespace']}: ARP unanswered for {hop} (neighbour state {word})")
    if router := _router_says(_router_neighbours(args, info, cache), _ip(dst)):
        reasons.append(router)
    request = _echo(info, src, _ip(dst), reply=False)
    answer = _echo(info, dst, reply_to, reply=True)
    return reasons + _switch_says(args, request, answer, dst["port"], src["port"], bool(reasons))


def explain6(
    args: argparse.Namespace,
    info: dict[str, Any],
    matrix: Matrix,
    src: dict[str, Any],
    dst: dict[str, Any],
    cache: dict[str, Any] | None = None,
) -> list[str]:
    """The IPv6 side of explain: doctor's IPv6 checks of both namespaces (address, default route
    learned from the router, MTU), the NDP entries on the way (the source namespace's for its next hop,
    the router's for the destination), then the echo and its reply traced through the switch."""
    cache = {} if cache is None else cache
    src_ip, dst_ip = matrix.addresses[src["port"]], matrix.addresses[dst["port"]]
    reply_to = None if src_ip is None else reply_to6(info, src, src_ip, dst)
    reasons = [f"{f.where}: {f.text}" for f in kernel_findings(info, src, dst_ip, family=6)]
    reasons += [f"{f.where} (reply path): {f.text}" for f in kernel_findings(info, dst, reply_to, family=6)]
    for port, address in ((src, src_ip), (dst, dst_ip)):
        if address is None and not any("no IPv6 address" in reason for reason in reasons):
            reasons.append(f"{port['port']}: no IPv6 address (none in status, none in its namespace)")
    if src_ip is None or dst_ip is None or reply_to is None:
        return reasons  # nothing to trace: no address to send from or to
    hop, _known = hop6(info, src, src_ip, dst_ip)
    mac, state = neighbour_state(src["namespace"], hop)
    if word := _unanswered(state):
        reasons.append(f"{src['namespace']}: NDP unanswered for {hop} (neighbour state {word})")
    if router := _router_says(_router_neighbours(args, info, cache), dst_ip):
        reasons.append(router)
    usable = mac if mac and mac != "00:00:00:00:00:00" and not word else None
    back_mac, _ = neighbour_state(dst["namespace"], hop6(info, dst, dst_ip, reply_to)[0])
    request = echo6(info, src, src_ip, dst_ip, reply=False, mac=usable)
    answer = echo6(
        info, dst, dst_ip, reply_to, reply=True, mac=back_mac if back_mac != "00:00:00:00:00:00" else None
    )
    return reasons + _switch_says(args, request, answer, dst["port"], src["port"], bool(reasons))


# --- running the pings -----------------------------------------------------------------------------------
def root_routes_via(address: str, ifname: str) -> bool:
    """Whether the root namespace's FIB sends address out of ifname (a lookup: nothing is sent)."""
    import socket

    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        try:
            (answer,) = ipr.route("get", dst=address, family=family)
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


def _attempt(matrix: Matrix, src: dict[str, Any], dst: dict[str, Any], count: int, timeout: float) -> str:
    address = matrix.addresses[dst["port"]]
    if address is None or matrix.addresses[src["port"]] is None:
        return NO_ADDRESS
    host = _host_side(src, dst)
    if host is not None:
        other = matrix.addresses[host[1]["port"]]
        if other is None or not root_routes_via(other, host[0]["interface"]):
            return NO_ROUTE  # the root would send its request or its reply elsewhere
    return OK if ping(src["namespace"], address, count, timeout, matrix.family) else FAIL


def run(args: argparse.Namespace, matrices: list[Matrix]) -> None:
    """Every pair of every family, PARALLEL at a time, into each matrix's outcome."""
    jobs = [(m, s, d) for m in matrices for s, d in m.pairs]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(lambda j: _attempt(j[0], j[1], j[2], args.count, args.timeout), jobs))
    for (matrix, s, d), result in zip(jobs, results, strict=True):
        matrix.outcome[(s["port"], d["port"])] = result


def cmd_pingall(args: argparse.Namespace) -> int:
    info = call(args, "debug-info")
    v4, v6 = v4_matrix(info), v6_matrix(info)
    matrices = [v4] if v6 is None else [v4, v6]
    run(args, matrices)
    if args.explain:
        cache: dict[str, Any] = {}
        for matrix in matrices:
            for s, d in matrix.pairs:
                result = matrix.outcome[(s["port"], d["port"])]
                if result in (FAIL, NO_ADDRESS):
                    if matrix.family == 4:
                        matrix.why[(s["port"], d["port"])] = explain(args, info, s, d, cache)
                    else:
                        matrix.why[(s["port"], d["port"])] = explain6(args, info, matrix, s, d, cache)
                elif result == NO_ROUTE and (host := _host_side(s, d)) is not None:
                    other = matrix.addresses[host[1]["port"]]
                    matrix.why[(s["port"], d["port"])] = [
                        f"root namespace: no route to {other} via {host[0]['interface']} (see --host-routes)"
                    ]
    if args.json:
        print(json.dumps({**v4.as_json(), "v6": None if v6 is None else v6.as_json()}, indent=2))
    else:
        for matrix in matrices:
            report(matrix, titled=v6 is not None)
    return 0 if all(m.reachable == m.tried for m in matrices) else 1


def report(matrix: Matrix, titled: bool) -> None:
    """The matrix, the count, and with --explain each failing pair's reasons (IPv4's text as before
    IPv6 came, titled only when there are two matrices)."""
    name = "IPv4" if matrix.family == 4 else "IPv6"
    _matrix(matrix, f"{name} reachability" if titled else "reachability")
    unrouted = sum(1 for r in matrix.outcome.values() if r == NO_ROUTE)
    untried = f"; {unrouted} with the host not tried: the root namespace routes them elsewhere"
    label = "IPv6: " if matrix.family == 6 else ""
    print(f"{label}{matrix.reachable}/{matrix.tried} reachable" + (untried if unrouted else ""))
    for s, d in matrix.pairs:
        key = (s["port"], d["port"])
        if key not in matrix.why:
            continue
        result = matrix.outcome[key]
        address = matrix.addresses[d["port"]] or "no IPv6 address"
        verdict = {NO_ROUTE: "not tried", NO_ADDRESS: "no address"}.get(result, "unreachable")
        print(f"{s['port']} -> {d['port']} ({address}): {verdict}")
        for line in matrix.why[key]:
            print(f"    {line}")


def _cell(result: str) -> str:
    return {
        NO_ROUTE: "[dim]no route[/]",
        NO_ADDRESS: "[yellow]no address[/]",
        OK: "[green]ok[/]",
    }.get(result, "[red]FAIL[/]")


def _matrix(matrix: Matrix, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (row pings column)", title_justify="left", box=None, header_style="bold")
    table.add_column("from \\ to")
    for node in matrix.nodes:
        table.add_column(node["port"], justify="center")
    for s in matrix.nodes:
        cells = ["-" if s is d else _cell(matrix.outcome[(s["port"], d["port"])]) for d in matrix.nodes]
        table.add_row(s["port"], *cells)
    Console(soft_wrap=True).print(table)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pingall",
        help="ping between every pair of ports (the host port too), IPv4 and IPv6; --explain the failures",
    )
    p.add_argument(
        "--explain", action="store_true", help="say where each failing pair's packet stops and why"
    )
    p.add_argument("--count", type=int, default=1, help="pings per pair (default 1)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default 1)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON: the IPv4 matrix as {"ports", "pairs": [{"from", "to", "address", "result", '
        '"why"}], "reachable", "tried"}, the IPv6 one the same way under "v6" (null without IPv6)',
    )
    p.add_argument("--name", default="default")


__all__ = ["cmd_pingall", "explain", "explain6"]
