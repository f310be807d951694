"""`vswitch doctor`: the troubleshooting checklist, run against the kernel and the running switch.

Each problem comes with the command that fixes it, printed for the user to run: vswitch itself never
runs `ip` command lines. Kernel state is read with pyroute2 (netlink), not by parsing `ip` output.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Any, Final

from ...config.topology import UPLINK_SEGMENT
from ...core.emulation import Impairment
from ...core.icmp6 import link_local_of
from ...core.vxlan import OVERHEAD as VXLAN_OVERHEAD
from ...shell.kernel import (
    IFA_F_TENTATIVE,
    IFF_UP,
    KernelError,
    in_namespace,
    open_existing_namespace,
    route_mtu,
)
from .common import call

NUD_FAILED = 0x20
NUD_INCOMPLETE = 0x01
IFA_F_DADFAILED: Final = 0x08  # include/uapi/linux/if_addr.h: another host answered for the address
RTPROT_RA: Final = 9  # include/uapi/linux/rtnetlink.h: a route learned from a router advertisement
# net.ipv6.conf.IFNAME.* read for each port on an IPv6 segment (Documentation/networking/ip-sysctl.rst)
IPV6_CONF: Final = (
    "disable_ipv6", "forwarding", "accept_ra", "accept_ra_defrtr", "autoconf", "accept_ra_mtu", "mtu",
)  # fmt: skip


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


def kernel_findings(
    info: dict[str, Any], port: dict[str, Any], target: str | None = None, family: int = 4
) -> list[Finding]:
    """What is wrong inside the port's namespace: it exists, lo and the link are up with the segment's
    MTU; then, family 4: the address is there, and (routed, or toward target) a route covers where it
    must send; family 6: ipv6_findings."""
    ns, ifname = port["namespace"], port["interface"]
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
        if family == 4:
            found.extend(_ipv4_findings(info, port, ipr, index[0], target))
        elif target is not None:
            found.extend(_ipv6_route_to(info, port, ipr, target))
    if family == 6:
        found.extend(ipv6_port_findings(info, port))
    return found


def _ipv6_route_to(info: dict[str, Any], port: dict[str, Any], ipr: Any, target: str) -> list[Finding]:
    """No IPv6 route toward target, for a namespace that is not told its default route by the router
    (the uplink's outside namespace, a switched segment's hosts): on a routed segment ipv6_findings
    already names the missing default route."""
    want = expect6(info, port)
    if want is not None and want.router is not None:
        return []
    routes = [r for r in ipr.get_routes(family=socket.AF_INET6, table=254) if r["type"] == 1]  # unicast
    if any(r["dst_len"] == 0 for r in routes) or _covered(routes, target):
        return []
    return [Finding(port["namespace"], f"no route to {target} (no IPv6 default route)", None)]


def _ipv4_findings(
    info: dict[str, Any], port: dict[str, Any], ipr: Any, index: int, target: str | None
) -> list[Finding]:
    ns, ifname, address = port["namespace"], port["interface"], port["address"]
    found: list[Finding] = []
    have = {
        f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
        for a in ipr.get_addr(index=index, family=socket.AF_INET)
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


# --- IPv6: what a port on an IPv6 segment must have, judged apart from reading it ------------------------
@dataclass(frozen=True)
class Expect6:
    """What vswitch set up for a port's IPv6: its segment's /64, the address (status address6: SLAAC's
    on a routed segment, a static ::N on a switched one), and on a routed segment the router's
    link-local address, the default gateway its advertisements name."""

    segment: str
    prefix: IPv6Network
    address: IPv6Interface | None
    router: IPv6Address | None  # None: a switched segment (no router, no advertisements)
    mtu: int | None


@dataclass(frozen=True)
class Route6:
    """One IPv6 default route of the namespace's main table (one per next hop of a multipath route)."""

    gateway: IPv6Address | None
    oif: int | None
    proto: int


@dataclass(frozen=True)
class Link6:
    """What the kernel shows of a port's IPv6 (read_link6): the link, its addresses with their IFA
    flags, the main table's default routes, and its net.ipv6.conf settings."""

    ifname: str
    index: int
    mac: str
    mtu: int
    addresses: tuple[tuple[IPv6Interface, int], ...]
    defaults: tuple[Route6, ...]
    conf: dict[str, int] = field(default_factory=dict)


def expect6(info: dict[str, Any], port: dict[str, Any]) -> Expect6 | None:
    """What the port's IPv6 should look like; None for a port vswitch gave no IPv6 (the host port
    among them: its link is left without IPv6 on purpose)."""
    if port["namespace"] is None:
        return None
    for segment in info["segments"]:
        if segment["name"] == port["segment"] and segment.get("subnet6"):
            routed = bool(info["routed"] and segment.get("gateway6") and segment.get("link_local"))
            return Expect6(
                segment["name"],
                IPv6Network(segment["subnet6"]),
                IPv6Interface(port["address6"]) if port.get("address6") else None,
                IPv6Address(segment["link_local"]) if routed else None,
                segment.get("mtu"),
            )
    return None


def slaac_address(prefix: IPv6Network, mac: str) -> IPv6Interface:
    """The address SLAAC forms in a /64 from a MAC (modified EUI-64, RFC 4291 appendix A)."""
    iid = int.from_bytes(link_local_of(bytes.fromhex(mac.replace(":", "")))[8:], "big")
    return IPv6Interface(f"{IPv6Address(int(prefix.network_address) | iid)}/{prefix.prefixlen}")


def ipv6_findings(ns: str, link: Link6, want: Expect6) -> list[Finding]:
    """The IPv6 checklist of one port: a usable address in its segment's /64 (not tentative, not
    failed duplicate address detection); on a routed segment a default route via the router's
    link-local address, learned from its advertisements (proto ra); the IPv6 MTU its segment has (the
    one the router advertises). Each failure names its cause where the settings show one."""
    ifname, conf = link.ifname, link.conf
    sysctl = f"ip netns exec {ns} sysctl -w net.ipv6.conf.{ifname}"
    if conf.get("disable_ipv6"):
        return [Finding(ns, f"IPv6 is disabled on {ifname} (disable_ipv6 1)", f"{sysctl}.disable_ipv6=0")]
    found: list[Finding] = []
    # Why advertisements would be ignored: accept_ra 0, or 1 while the namespace forwards (ip-sysctl.rst).
    ignores_ra: tuple[str, str] | None = None  # (why, the fix)
    if want.router is not None:
        accept_ra = conf.get("accept_ra", 1)
        if accept_ra == 0:
            ignores_ra = "accept_ra 0: the router's advertisements are ignored", f"{sysctl}.accept_ra=1"
        elif accept_ra == 1 and conf.get("forwarding"):
            ignores_ra = (
                "forwarding 1 with accept_ra 1: a forwarding namespace ignores advertisements",
                f"{sysctl}.accept_ra=2",
            )
    # The address
    ours = [(a, flags) for a, flags in link.addresses if a.ip in want.prefix]
    for address, flags in ours:
        if flags & IFA_F_DADFAILED:
            found.append(
                Finding(
                    ns,
                    f"address {address} on {ifname} failed duplicate address detection: another host on "
                    f"{want.segment} holds it (vswitch arp shows its MAC)",
                    f"ip -n {ns} addr del {address} dev {ifname}  # once the other holder has gone: "
                    f"ip -n {ns} addr add {address} dev {ifname} nodad",
                )
            )
        elif flags & IFA_F_TENTATIVE:
            found.append(
                Finding(
                    ns,
                    f"address {address} on {ifname} is tentative: duplicate address detection has not "
                    "finished, and until it does the address cannot be used",
                    f"ip -n {ns} addr del {address} dev {ifname} && "
                    f"ip -n {ns} addr add {address} dev {ifname} nodad",
                )
            )
    if not ours:
        expected = want.address or slaac_address(want.prefix, link.mac)
        how = "SLAAC would give it" if want.router is not None else "vswitch gave it"
        text, fix = f"no IPv6 address in {want.prefix} on {ifname} ({how} {expected})", None
        if ignores_ra is not None:
            text, fix = f"{text}; {ignores_ra[0]}", ignores_ra[1]
        elif want.router is not None and conf.get("autoconf", 1) == 0:
            text, fix = f"{text}; autoconf 0: SLAAC is off", f"{sysctl}.autoconf=1"
        found.append(Finding(ns, text, fix or f"ip -n {ns} addr add {expected} dev {ifname} nodad"))
    # The default route
    if want.router is not None:
        found.extend(_default_route6(ns, link, want.router, ignores_ra))
    # The MTU: only when the link's is right (kernel_findings reports the link's; the IPv6 MTU follows it)
    if want.mtu is not None and link.mtu == want.mtu and conf.get("mtu", want.mtu) != want.mtu:
        where = f"its segment {want.segment}" + (" and the router's advertisements" if want.router else "")
        text = f"{ifname}'s IPv6 MTU is {conf['mtu']}, {where} say {want.mtu}"
        fix = f"{sysctl}.mtu={want.mtu}"
        if want.router is not None and conf.get("accept_ra_mtu", 1) == 0:
            text += " (accept_ra_mtu 0: the advertised MTU is ignored)"
            fix += f" net.ipv6.conf.{ifname}.accept_ra_mtu=1"
        found.append(Finding(ns, text, fix))
    return found


def _default_route6(
    ns: str, link: Link6, router: IPv6Address, ignores_ra: tuple[str, str] | None
) -> list[Finding]:
    ifname, conf = link.ifname, link.conf
    found: list[Finding] = []
    via_router = [r for r in link.defaults if r.gateway == router and r.oif == link.index]
    if not via_router:
        text = f"no IPv6 default route via the router (expected: default via {router} dev {ifname} proto ra)"
        fix = f"ip -n {ns} -6 route add default via {router} dev {ifname}"
        if ignores_ra is not None:
            text, fix = f"{text}; {ignores_ra[0]}", ignores_ra[1]
        elif conf.get("accept_ra_defrtr", 1) == 0:
            text += "; accept_ra_defrtr 0: advertisements give no default route"
            fix = f"ip netns exec {ns} sysctl -w net.ipv6.conf.{ifname}.accept_ra_defrtr=1"
        else:
            text += " (the router's next advertisement brings it back)"
        found.append(Finding(ns, text, fix))
    elif not any(r.proto == RTPROT_RA for r in via_router):
        found.append(
            Finding(
                ns,
                f"the IPv6 default route via {router} was set by hand (proto {via_router[0].proto}), not "
                "learned from the router's advertisements: it will not follow them",
                None,
                problem=False,
            )
        )
    for route in link.defaults:
        if route in via_router:
            continue
        gateway = f" via {route.gateway}" if route.gateway is not None else ""
        learned = "a router advertisement from another router" if route.proto == RTPROT_RA else "set by hand"
        found.append(
            Finding(
                ns,
                f"an IPv6 default route{gateway} that is not the router's ({router}): {learned}",
                f"ip -n {ns} -6 route del default{gateway}"
                + (f" dev {ifname}" if route.oif == link.index else ""),
            )
        )
    return found


def read_link6(ns: str, ifname: str) -> Link6 | None:
    """The kernel's side of ipv6_findings, by netlink and (for net.ipv6.conf) /proc/sys inside ns;
    None when the namespace or the link is gone (kernel_findings reports that)."""
    try:
        ipr = open_existing_namespace(ns)
    except FileNotFoundError:
        return None
    with ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        index = found[0]
        link = ipr.get_links(index)[0]
        addresses = tuple(
            (
                IPv6Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"),
                a.get_attr("IFA_FLAGS") or a["flags"],
            )
            for a in ipr.get_addr(index=index, family=socket.AF_INET6)
        )
        defaults: list[Route6] = []
        for route in ipr.get_routes(family=socket.AF_INET6, table=254):
            if route["dst_len"] != 0 or route["type"] != 1:  # RTN_UNICAST: not the unreachable catch-all
                continue
            hops = route.get_attr("RTA_MULTIPATH")
            if hops:
                for hop in hops:
                    defaults.append(
                        Route6(_address6(hop.get_attr("RTA_GATEWAY")), hop["oif"], route["proto"])
                    )
            else:
                gateway = _address6(route.get_attr("RTA_GATEWAY"))
                defaults.append(Route6(gateway, route.get_attr("RTA_OIF"), route["proto"]))
    try:
        conf = in_namespace(ns, _conf_reader(ifname))
    except OSError:
        conf = {}
    return Link6(
        ifname,
        index,
        str(link.get_attr("IFLA_ADDRESS")),
        link.get_attr("IFLA_MTU"),
        addresses,
        tuple(defaults),
        conf,
    )


def _address6(text: str | None) -> IPv6Address | None:
    return IPv6Address(text) if text else None


def _conf_reader(ifname: str) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        conf: dict[str, int] = {}
        for key in IPV6_CONF:
            try:
                with open(f"/proc/sys/net/ipv6/conf/{ifname}/{key}") as setting:
                    conf[key] = int(setting.read())
            except (OSError, ValueError):
                continue  # an older kernel without the setting: judged by its default
        return conf

    return read


def ipv6_port_findings(info: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """ipv6_findings for a port on an IPv6 segment, read from its namespace; nothing for other ports,
    or when the namespace or the link is gone (kernel_findings says so)."""
    want = expect6(info, port)
    if want is None:
        return []
    link = read_link6(port["namespace"], port["interface"])
    return [] if link is None else ipv6_findings(port["namespace"], link, want)


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
    """Whether a route with a destination (either family) covers target."""
    addr = ip_address(target)
    for route in routes:
        dst = route.get_attr("RTA_DST")
        if dst is not None and addr in ip_network(f"{dst}/{route['dst_len']}", strict=False):
            return True
    return False


def neighbour_state(ns: str | None, ip: str) -> tuple[str | None, int | None]:
    """(MAC, NUD state) of ip (IPv4: ARP, IPv6: NDP) in the neighbour table of namespace ns (None: the
    root), or (None, None), also when the namespace is gone: kernel_findings reports that."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        ipr = open_existing_namespace(ns)
    except FileNotFoundError:
        return None, None
    with ipr:
        for entry in ipr.get_neighbours(family=family):
            if entry.get_attr("NDA_DST") in (ip, _compressed(ip)):
                return entry.get_attr("NDA_LLADDR"), int(entry["state"])
    return None, None


def _compressed(ip: str) -> str:
    """An IPv6 address as netlink prints it (the compressed form); IPv4 as it is."""
    return str(IPv6Address(ip)) if ":" in ip else ip


def findings(info: dict[str, Any], stats: dict[str, Any], arp: list[dict[str, Any]] | None) -> list[Finding]:
    found: list[Finding] = []
    for port in info["ports"]:
        found.extend(dhcp_findings(info, port) or kernel_findings(info, port))
        found.extend(ipv6_port_findings(info, port))
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
            # NDP rows sit in the same table, their ip an IPv6 address
            answer = "no neighbour advertisement" if ":" in str(row["ip"]) else "no ARP reply"
            found.append(Finding("arp", f"router: {row['ip']} is {row['state']} ({answer})", None, False))
    found.extend(emulation_findings(info))
    for name, port in stats["ports"].items():
        for reason, count in port["drops"].items():
            found.append(Finding(name, f"{count} dropped: {reason}", None, problem=False))
    for reason, count in stats.get("router", {}).get("drops", {}).items():
        found.append(Finding("router", f"{count} dropped: {reason}", None, problem=False))
    return found


def emulation_findings(info: dict[str, Any]) -> list[Finding]:
    """Impaired links and partitions are there on purpose, but one forgotten explains a lot: each is a
    note with the command that removes it."""
    emulation = info.get("emulation") or {}
    name = "" if info["instance"] == "default" else f" --name {info['instance']}"
    found = []
    for link in emulation.get("links", []):
        for direction in ("in", "out"):
            stage = link.get(direction)
            if stage is not None:
                what = Impairment.from_settings(stage["settings"]).summary()
                text = f"impaired ({direction}): {what}" + (" (down now)" if stage.get("down") else "")
                found.append(
                    Finding(link["port"], text, f"vswitch link{name} {link['port']} --clear", problem=False)
                )
    for part in emulation.get("partitions", []):
        found.append(
            Finding("partition", f"{part}: no frame crosses it", f"vswitch heal{name}", problem=False)
        )
    return found


def dhcp_findings(info: dict[str, Any], port: dict[str, Any]) -> list[Finding]:
    """A `=dhcp` port with no lease yet: no address or default route is expected of it until a client
    runs there (the fix runs one as the README says: its state files on tmpfs, not the host's)."""
    services = info.get("services") or {}
    if port["address"] or port["namespace"] is None or not services.get("dhcp") or not info["routed"]:
        return []
    if port["segment"] == UPLINK_SEGMENT and info.get("uplink") is not None:
        return []
    ns, ifname = port["namespace"], port["interface"]
    run = f"mount -t tmpfs none /run; mount -t tmpfs none /var/lib/dhcp; dhclient -1 -v {ifname}"
    fix = f"ip netns exec {ns} unshare -m sh -c '{run}'"
    what = f"no address yet: {ifname} waits for a DHCP client to ask for one"
    return [Finding(ns, what, fix, problem=False)]


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
        "doctor",
        help="check namespaces, links, addresses and routes (IPv4, and IPv6: SLAAC address, RA default "
        "route, MTU), tables, drops; print fixes",
    )
    p.add_argument("--name", default="default")
