"""`vswitch doctor`: the troubleshooting checklist, run against the kernel and the running switch.

Each problem comes with the command that fixes it, printed for the user to run: vswitch itself never
runs `ip` command lines. Kernel state is read with pyroute2 (netlink), not by parsing `ip` output.
"""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from ...config.topology import UPLINK_SEGMENT
from ...shell.kernel import IFF_UP, open_existing_namespace
from .common import call

NUD_FAILED = 0x20
NUD_INCOMPLETE = 0x01


@dataclass(frozen=True)
class Finding:
    where: str
    text: str
    fix: str | None = None
    problem: bool = True  # False: a warning, worth reading, not a failure


def gateway_of(info: dict[str, Any], port: dict[str, Any]) -> str | None:
    for segment in info["segments"]:
        if port["port"] in segment["ports"] and segment.get("gateway"):
            return str(IPv4Interface(segment["gateway"]).ip)
    return None


def kernel_findings(info: dict[str, Any], port: dict[str, Any], target: str | None = None) -> list[Finding]:
    """What is wrong inside the port's namespace: it exists, lo and the link are up, the address is
    there, and (routed, or toward target) a route covers where it must send."""
    ns, ifname, address = port["namespace"], port["interface"], port["address"]
    restart = f"vswitch down --name {info['instance']}  # then start it again with vswitch up"
    if ns is None:
        return []
    try:
        ipr = open_existing_namespace(ns)
    except FileNotFoundError:
        return [Finding(ns, "the namespace is missing", restart)]
    found: list[Finding] = []
    with ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo and not ipr.get_links(lo[0])[0]["flags"] & IFF_UP:
            found.append(Finding(ns, "lo is down", f"ip -n {ns} link set lo up"))
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return [*found, Finding(ns, f"link {ifname} is missing (the port is gone)", restart)]
        link = ipr.get_links(index[0])[0]
        if not link["flags"] & IFF_UP:
            found.append(Finding(ns, f"link {ifname} is down", f"ip -n {ns} link set {ifname} up"))
        want, have_mtu = segment_mtu(info, port), link.get_attr("IFLA_MTU")
        if want is not None and have_mtu != want:
            # Bigger than the segment's: its frames exceed what the others and the router take.
            # Smaller: it drops what its neighbours send it.
            found.append(
                Finding(
                    ns,
                    f"{ifname} has MTU {have_mtu}, its segment {port['segment']} has {want}",
                    f"ip -n {ns} link set {ifname} mtu {want}",
                )
            )
        have = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index[0], family=socket.AF_INET)
        }
        if address and address not in have:
            found.append(
                Finding(
                    ns,
                    f"address {address} is missing on {ifname}",
                    f"ip -n {ns} addr add {address} dev {ifname}",
                )
            )
        routes = ipr.get_routes(family=socket.AF_INET, table=254)
        gateway = gateway_of(info, port)
        has_default = any(r["dst_len"] == 0 for r in routes)
        if info["routed"] and gateway is not None and not has_default:
            found.append(
                Finding(
                    ns,
                    f"the default route is missing (expected: default via {gateway})",
                    f"ip -n {ns} route add default via {gateway} dev {ifname}",
                )
            )
        elif target is not None and not has_default and not _covered(routes, target):
            found.append(Finding(ns, f"no route to {target} (no default route)", None))
    return found


def segment_mtu(info: dict[str, Any], port: dict[str, Any]) -> int | None:
    """The MTU vswitch gave the port's segment (None from a switch too old to say)."""
    uplink = info.get("uplink")
    found: int | None = None
    if uplink is not None and port["segment"] == UPLINK_SEGMENT:
        found = uplink.get("mtu")
    for segment in info["segments"]:
        if segment["name"] == port["segment"]:
            found = segment.get("mtu")
    return found


def _covered(routes: list[Any], target: str) -> bool:
    addr = IPv4Address(target)
    for route in routes:
        dst = route.get_attr("RTA_DST")
        if dst is not None and addr in IPv4Network(f"{dst}/{route['dst_len']}", strict=False):
            return True
    return False


def neighbour_state(ns: str | None, ip: str) -> tuple[str | None, int | None]:
    """(MAC, NUD state) of ip in the neighbour table of namespace ns (None: the root), or (None, None),
    also when the namespace is gone: kernel_findings reports that."""
    try:
        ipr = open_existing_namespace(ns)
    except FileNotFoundError:
        return None, None
    with ipr:
        for entry in ipr.get_neighbours(family=socket.AF_INET):
            if entry.get_attr("NDA_DST") == ip:
                return entry.get_attr("NDA_LLADDR"), int(entry["state"])
    return None, None


def findings(info: dict[str, Any], stats: dict[str, Any], arp: list[dict[str, Any]] | None) -> list[Finding]:
    found: list[Finding] = []
    for port in info["ports"]:
        found.extend(kernel_findings(info, port))
    if info["fdb_entries"] == 0:
        first = next((p for p in info["ports"] if p["namespace"] and p["address"]), None)
        fix = None
        if first is not None:
            others = [p for p in info["ports"] if p is not first and p["address"]]
            if others:
                to = IPv4Interface(others[0]["address"]).ip
                fix = f"ip netns exec {first['namespace']} ping -c 1 {to}"
        found.append(
            Finding("fdb", "no MAC learned yet: no frame has crossed the switch", fix, problem=False)
        )
    for row in arp or []:
        if row["state"] in ("failed", "incomplete"):
            found.append(Finding("arp", f"router: {row['ip']} is {row['state']} (no ARP reply)", None, False))
    for name, port in stats["ports"].items():
        for reason, count in port["drops"].items():
            found.append(Finding(name, f"{count} dropped: {reason}", None, problem=False))
    for reason, count in stats.get("router", {}).get("drops", {}).items():
        found.append(Finding("router", f"{count} dropped: {reason}", None, problem=False))
    return found


def cmd_doctor(args: argparse.Namespace) -> int:
    info = call(args, "debug-info")
    stats = call(args, "stats")
    arp = call(args, "arp") if info["routed"] else None
    found = findings(info, stats, arp)
    problems = [f for f in found if f.problem]
    checked = len([p for p in info["ports"] if p["namespace"]])
    print(f"instance {info['instance']}: {checked} namespaces checked, fdb {info['fdb_entries']} entries")
    for f in found:
        mark = "PROBLEM" if f.problem else "note"
        print(f"{mark:<8} {f.where}: {f.text}")
        if f.fix:
            print(f"{'':<8}   fix: {f.fix}")
    print("healthy" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor", help="check namespaces, links, addresses, routes, tables, drops; print fixes"
    )
    p.add_argument("--name", default="default")
