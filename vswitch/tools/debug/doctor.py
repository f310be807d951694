"""`vswitch doctor`: the troubleshooting checklist, run against the kernel and the running switch.

Each problem comes with the command that fixes it, printed for the user to run: vswitch itself never
runs `ip` command lines. Kernel state is read with pyroute2 (netlink), not by parsing `ip` output.
"""

from __future__ import annotations

import argparse
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from ...config.topology import UPLINK_SEGMENT
from ...core.vxlan import OVERHEAD as VXLAN_OVERHEAD
from ...shell.kernel import IFF_UP, KernelError, in_namespace, open_existing_namespace, route_mtu
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


# Duplicate address detection as `arping -D` does it (RFC 5227 2.1.1): an ARP probe (sender address
# 0.0.0.0) for the port's own address; any answer comes from another holder of it.
PROBE_WAIT = 0.5  # seconds to collect answers (RFC 5227's PROBE_MIN is 1 s; a LAN answers in far less)
ETH_P_ARP = 0x0806
ARP_REPLY = 2


def probe_frame(mac: bytes, address: IPv4Address) -> bytes:
    return (
        b"\xff" * 6 + mac + ETH_P_ARP.to_bytes(2, "big")
        + bytes.fromhex("0001080006040001") + mac + bytes(4) + bytes(6) + address.packed
    )  # fmt: skip


def duplicate_holders(ns: str, ifname: str, address: IPv4Address, mac: str) -> list[str]:
    """The MACs other than mac that answer an ARP probe for address on ifname inside ns."""
    own = bytes.fromhex(mac.replace(":", ""))

    def probe() -> list[str]:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
            sock.bind((ifname, ETH_P_ARP))
            sock.settimeout(PROBE_WAIT)
            sock.send(probe_frame(own, address))
            deadline = time.monotonic() + PROBE_WAIT
            found: list[str] = []
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    frame = sock.recv(128)
                except TimeoutError:
                    break
                sender, sender_ip = frame[22:28], frame[28:32]
                is_reply = len(frame) >= 42 and frame[20:22] == ARP_REPLY.to_bytes(2, "big")
                if is_reply and sender_ip == address.packed and sender != own:
                    found.append(sender.hex(":"))
            return sorted(set(found))

    try:
        return in_namespace(ns, probe)
    except OSError:
        return []  # the namespace or its link is gone: kernel_findings says so


def address_findings(info: dict[str, Any]) -> list[Finding]:
    """Every namespace port's address probed: answered from elsewhere, it is a duplicate (another
    vswitch instance over VXLAN, or a host configured by hand, holds it too)."""
    ports = [p for p in info["ports"] if p["namespace"] and p["address"] and p["mac"]]
    addresses = [IPv4Interface(p["address"]).ip for p in ports]
    # The probes wait side by side: one PROBE_WAIT for the lot, not one per port.
    with ThreadPoolExecutor(max_workers=min(32, len(ports) or 1)) as pool:
        answers = list(
            pool.map(
                lambda p, a: duplicate_holders(p["namespace"], p["interface"], a, p["mac"]), ports, addresses
            )
        )
    return [
        Finding(
            port["port"],
            f"address {address} is also answered by {holder} (a duplicate, as arping -D sees)",
            "give one of the two another address",
        )
        for port, address, holders in zip(ports, addresses, answers, strict=True)
        for holder in holders
    ]


def tunnel_findings(info: dict[str, Any]) -> list[Finding]:
    """A remote VTEP we send to that never sent us anything, and an underlay whose MTU no longer fits
    the tunnel's MTU plus the 50 bytes of encapsulation."""
    found = []
    for tunnel in info.get("tunnels", []):
        where = f"{tunnel['port']} (segment {tunnel['segment']})"
        for remote in tunnel["remotes"]:
            if remote["tx_packets"] and not remote["rx_packets"]:
                found.append(
                    Finding(
                        where,
                        f"remote {remote['address']}: {remote['tx_packets']} packets sent, none received "
                        f"(is a VTEP with VNI {tunnel['vni']} listening on {remote['address']}:"
                        f"{tunnel['dstport']}, with {tunnel['local']} as its remote?)",
                    )
                )
            if IPv4Address(remote["address"]).is_multicast:
                continue  # a group answers from its members' own addresses, and has no route of its own
            try:
                underlay = route_mtu(tunnel["netns"], IPv4Address(remote["address"]))
            except KernelError as exc:
                found.append(Finding(where, f"remote {remote['address']}: {exc}"))
                continue
            if underlay < tunnel["mtu"] + VXLAN_OVERHEAD:
                found.append(
                    Finding(
                        where,
                        f"the underlay's MTU toward {remote['address']} is {underlay}: the tunnel's MTU "
                        f"{tunnel['mtu']} needs {tunnel['mtu'] + VXLAN_OVERHEAD} with the {VXLAN_OVERHEAD} "
                        "bytes of VXLAN (frames that big are dropped as tx-error)",
                        "raise the underlay interface's MTU, or restart with --mtu "
                        f"{tunnel['segment']}={underlay - VXLAN_OVERHEAD}",
                    )
                )
    return found


def cmd_doctor(args: argparse.Namespace) -> int:
    info = call(args, "debug-info")
    stats = call(args, "stats")
    arp = call(args, "arp") if info["routed"] else None
    found = findings(info, stats, arp) + tunnel_findings(info) + address_findings(info)
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
