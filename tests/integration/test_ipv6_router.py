"""The IPv6 router (issue 16) against the kernel's own IPv6 stack in real namespaces.

The namespaces configure themselves from the router's advertisements (SLAAC), so every check here
reads what the kernel made of them: `ip -6 -j addr/route`, ping -6, traceroute -6, tracepath -6, and
the errors the kernel reports for the router's ICMPv6. The standard topology is lan = a, b (1500) and
dmz = c (1280) out of fd00:77::/48; each test starts its own switch (about half a second) so that no
neighbour or path MTU cache carries over from one test to the next.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from .conftest import (
    Env,
    RootView,
    Switch,
    create_namespace,
    free_root_subnet,
    links,
    make_world,
    namespaces,
    netns_exec,
    root_view,
    transfer,
    wait_for,
)

pytestmark = pytest.mark.root

SUBNET6 = "fd00:77::/48"
LAN6 = IPv6Network("fd00:77::/64")  # the first /64 of SUBNET6: the first segment's
DMZ6 = IPv6Network("fd00:77:0:1::/64")  # the second
LAN_GW = "fd00:77::1"
DMZ_GW = "fd00:77:0:1::1"
FOREVER = 0xFFFFFFFF  # valid_life_time of a static address
IFA_F_NODAD = 0x02  # include/uapi/linux/if_addr.h
TCP_BYTES = 100_000_000
ETH_P_IPV6 = 0x86DD
ICMPV6 = 58  # next header
ECHO_REQUEST = 128
ROUTER_ADVERTISEMENT = 134
ROGUE_PREFIX = IPv6Network("fd00:66:0:5::/64")
ROGUE_ROUTER = "fe80::bad:1"
ROGUE_COUNT = 3

# Run inside a namespace with the project's Python: one router advertisement from argv[2] to all nodes
# for the /64 argv[3] (SLAAC and on-link, router lifetime 30 min), argv[4] times, out of argv[1].
ROGUE_RA = """
import sys
from scapy.all import (
    Ether, ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6, conf, get_if_hwaddr, sendp
)
conf.verb = 0
iface, source, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mac = get_if_hwaddr(iface)
ra = (
    Ether(src=mac, dst="33:33:00:00:00:01")
    / IPv6(src=source, dst="ff02::1", hlim=255)
    / ICMPv6ND_RA(routerlifetime=1800)
    / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    / ICMPv6NDOptPrefixInfo(prefix=prefix, prefixlen=64, L=1, A=1, validlifetime=3600, preferredlifetime=1800)
)
sendp(ra, iface=iface, count=count, inter=0.05)
"""

# Run inside a namespace: one UDP datagram on a connected socket to (argv[1], port argv[2]); print what
# came back: the reply, or the name of the error the kernel raised for an ICMPv6 answer.
UDP_ASK6 = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    sock.settimeout(3)
    sock.send(b"anyone?")
    try:
        print(sock.recv(2048))
    except OSError as exc:
        print(type(exc).__name__)
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The shared harness with this file's namespace prefix ("v6r" + 6 hex), removed pass or fail."""
    with make_world(tmp_path, "v6r") as world:
        yield world


# --- helpers -------------------------------------------------------------------------------------------
def interface_id(mac: str) -> int:
    """The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A): ff:fe in the middle,
    the universal/local bit flipped."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return int.from_bytes(eui, "big")


def link_local(mac: str) -> str:
    return str(IPv6Address((0xFE80 << 112) | interface_id(mac)))


def ip6(ns: str, *args: str) -> list[dict[str, Any]]:
    """`ip -6 -j ARGS` inside ns, parsed."""
    out = netns_exec(ns, ["ip", "-6", "-j", *args], timeout=10).stdout
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


def addresses6(ns: str) -> list[dict[str, Any]]:
    (link,) = ip6(ns, "addr", "show", "dev", "eth0")
    return [a for a in link["addr_info"] if a["family"] == "inet6"]


def in_prefix(ns: str, prefix: IPv6Network) -> list[dict[str, Any]]:
    return [a for a in addresses6(ns) if IPv6Address(a["local"]) in prefix]


def ping6(ns: str, target: str, *options: str, wait: float = 2) -> tuple[bool, str]:
    """One `ping -6` (bounded by -W): (it came back, what ping printed)."""
    argv = ["ping", "-6", "-n", "-c", "1", "-W", f"{wait:g}", *options, target]
    proc = netns_exec(ns, argv, check=False, timeout=wait + 10)
    return proc.returncode == 0, proc.stdout + proc.stderr


def traceroute_hops(ns: str, target: str) -> list[str]:
    """`traceroute -6 -n` (UDP probes, one per hop): the address that answered at each hop."""
    proc = netns_exec(ns, ["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "5", target], timeout=30)
    return re.findall(r"^\s*\d+\s+(\S+)", proc.stdout, re.MULTILINE)


def absent_for(seconds: float, seen: Callable[[], object]) -> object:
    """Poll seen() until the deadline; the first truthy value it returns (something that must not
    appear), or None when it never did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = seen()
        if value:
            return value
        time.sleep(0.05)
    return seen() or None


@dataclass
class Lab:
    """lan = a, b (LAN6, MTU 1500), dmz = c (DMZ6, MTU 1280); addresses by SLAAC."""

    sw: Switch
    a: str
    b: str
    c: str
    ip: dict[str, str]  # namespace -> its SLAAC address, as `up --json` printed it
    router_mac: dict[str, str]  # segment -> the router's MAC on it

    def gateway_ll(self, segment: str) -> str:
        return link_local(self.router_mac[segment])


def start_lab(env: Env, *extra: str, name: str | None = None) -> Lab:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    sw = env.router(
        "--segment", f"lan={a},{b}", "--segment", f"dmz={c}", "--subnet6", SUBNET6, "--mtu", "dmz=1280",
        *extra, name=name,
    )  # fmt: skip
    ip = {p["namespace"]: p["address6"].split("/")[0] for p in sw.table["ports"] if p["namespace"]}
    assert set(ip) == {a, b, c} and all(ip.values()), sw.table
    router_mac = {
        row["segment"]: row["mac"] for row in sw.request("fdb") if row["port"] == f"router:{row['segment']}"
    }
    assert set(router_mac) == {"lan", "dmz"}, router_mac
    return Lab(sw, a, b, c, ip, router_mac)


# --- 1. SLAAC ------------------------------------------------------------------------------------------
def test_hosts_autoconfigure_address_and_default_route_from_the_advertisements(env: Env) -> None:
    lab = start_lab(env)
    status = lab.sw.query("status")
    assert {s["name"]: (s["subnet6"], s["gateway6"]) for s in status["segments"]} == {
        "lan": (str(LAN6), f"{LAN_GW}/64"),
        "dmz": (str(DMZ6), f"{DMZ_GW}/64"),
    }
    for ns, segment, prefix in ((lab.a, "lan", LAN6), (lab.b, "lan", LAN6), (lab.c, "dmz", DMZ6)):
        mac = links(ns)["eth0"]["address"]
        (glob,) = [a for a in addresses6(ns) if a["scope"] == "global"]
        address = IPv6Address(glob["local"])
        assert address in prefix and glob["prefixlen"] == 64, (ns, glob)
        # Learned from an advertisement: the kernel marks it dynamic, with the prefix's finite lifetime.
        assert glob.get("dynamic") is True and glob["valid_life_time"] != FOREVER, (ns, glob)
        assert int(address) & ((1 << 64) - 1) == interface_id(mac), f"{ns}: {address} is not EUI-64 of {mac}"
        assert lab.ip[ns] == str(address), "up --json shows the address the kernel made"
        (ports_row,) = [p for p in status["ports"] if p["namespace"] == ns]
        assert ports_row["address6"] == f"{address}/64"

        (default,) = ip6(ns, "route", "show", "default")
        assert (default["gateway"], default["dev"], default["protocol"]) == (
            lab.gateway_ll(segment),
            "eth0",
            "ra",
        ), (ns, default)
    assert lab.gateway_ll("lan") != lab.gateway_ll("dmz")


# --- 2. ping -------------------------------------------------------------------------------------------
def test_ping6_across_segments_and_to_the_router(env: Env) -> None:
    lab = start_lab(env)
    for src, dst in ((lab.a, lab.c), (lab.c, lab.a), (lab.b, lab.c), (lab.c, lab.b), (lab.a, lab.b)):
        ok, out = ping6(src, lab.ip[dst])
        assert ok, f"{src} -> {dst}: {out}"
    for src, gateway, segment in ((lab.a, LAN_GW, "lan"), (lab.c, DMZ_GW, "dmz")):
        for target in (gateway, f"{lab.gateway_ll(segment)}%eth0"):
            ok, out = ping6(src, target)
            assert ok and "ttl=64" in out, f"{src} -> router {target}: {out}"
    ok, out = ping6(lab.a, DMZ_GW)
    assert ok, f"the router's address on the other segment answers too: {out}"


# --- 3. traceroute -------------------------------------------------------------------------------------
def test_traceroute6_shows_the_gateway_then_the_destination(env: Env) -> None:
    lab = start_lab(env)
    assert traceroute_hops(lab.a, lab.ip[lab.c]) == [LAN_GW, lab.ip[lab.c]]
    assert traceroute_hops(lab.c, lab.ip[lab.a]) == [DMZ_GW, lab.ip[lab.a]]


# --- 4. path MTU ---------------------------------------------------------------------------------------
def test_path_mtu_is_learned_from_the_routers_packet_too_big(env: Env) -> None:
    lab = start_lab(env)
    dst = lab.ip[lab.c]
    assert links(lab.a)["eth0"]["mtu"] == 1500 and links(lab.c)["eth0"]["mtu"] == 1280
    for ns in (lab.a, lab.b):  # no path MTU known before: what follows learns it
        netns_exec(ns, ["ip", "-6", "route", "flush", "cache"], timeout=10)
        (route,) = ip6(ns, "route", "get", dst)
        assert "mtu" not in route.get("metrics", [{}])[0], route

    trace = netns_exec(lab.a, ["tracepath", "-6", "-n", "-m", "5", dst], timeout=30).stdout
    assert re.search(r"Resume: pmtu 1280 hops 2 back 2", trace), trace
    assert re.search(rf"^\s*1\??:\s+{re.escape(LAN_GW)}\s", trace, re.MULTILINE), trace
    (route,) = ip6(lab.a, "route", "get", dst)
    assert route["metrics"][0].get("mtu") == 1280, f"the kernel keeps the path MTU it was told: {route}"

    ok, out = ping6(lab.b, dst, "-M", "do", "-s", "1400")
    assert not ok
    assert re.search(rf"From {re.escape(LAN_GW)} icmp_seq=1 Packet too big: mtu=1280", out), out
    ok, out = ping6(lab.b, dst, "-M", "do", "-s", "1200")
    assert ok and "1208 bytes from" in out, out
    assert lab.sw.request("stats")["router"]["drops"].get("packet-too-big", 0) >= 2


# --- 5. TCP --------------------------------------------------------------------------------------------
def test_100mb_of_tcp_over_ipv6_across_segments_intact(env: Env) -> None:
    """From the 1500 segment into the 1280 one, so the router also sees MSS and MTU differ."""
    lab = start_lab(env)
    start = time.monotonic()
    transfer(env, lab.a, lab.c, lab.ip[lab.c], TCP_BYTES, seed=16)
    assert time.monotonic() - start < 60
    ports = lab.sw.request("stats")["ports"]
    assert ports["router:dmz"]["tx_bytes"] >= TCP_BYTES, "the stream went through the router"
    assert ports[lab.c]["tx_bytes"] >= TCP_BYTES


# --- 6. ICMPv6 errors ----------------------------------------------------------------------------------
def test_the_kernel_hears_the_routers_icmpv6_errors(env: Env) -> None:
    lab = start_lab(env)
    ok, out = ping6(lab.a, lab.ip[lab.c])
    assert ok, out  # neighbours resolved both sides: what follows is about each error only

    ok, out = ping6(lab.a, "fd00:99::1")
    assert not ok and f"From {LAN_GW} icmp_seq=1 Destination unreachable: No route" in out, out

    start = time.monotonic()
    ok, out = ping6(lab.a, "fd00:77:0:1::99", wait=8)  # in dmz's /64, nobody's
    elapsed = time.monotonic() - start
    assert not ok and f"From {LAN_GW} icmp_seq=1 Destination unreachable: Address unreachable" in out, out
    assert elapsed < 5.5, f"address unreachable took {elapsed:.1f}s"

    answer = netns_exec(lab.a, [sys.executable, "-c", UDP_ASK6, LAN_GW, "33434"], timeout=15).stdout
    assert answer.strip() == "ConnectionRefusedError", answer

    ok, out = ping6(lab.a, lab.ip[lab.c], "-t", "1")
    assert not ok and f"From {LAN_GW} icmp_seq=1 Time exceeded: Hop limit" in out, out

    drops = lab.sw.request("stats")["router"]["drops"]
    for reason in ("no-route", "nd-failed", "hop-limit-exceeded"):
        assert drops.get(reason, 0) >= 1, (reason, drops)


# --- 7. RA guard ---------------------------------------------------------------------------------------
def send_rogue_ra(ns: str, ifname: str = "eth0") -> None:
    netns_exec(ns, [sys.executable, "-c", ROGUE_RA, ifname, ROGUE_ROUTER, str(ROGUE_PREFIX.network_address),
                    str(ROGUE_COUNT)], timeout=30)  # fmt: skip


def rogue_effects(ns: str) -> list[str]:
    """What the rogue RA would have configured in ns: an address in its prefix, a default route via it."""
    found = [f"address {a['local']}" for a in in_prefix(ns, ROGUE_PREFIX)]
    found += [f"default via {r.get('gateway')}" for r in ip6(ns, "route", "show", "default")
              if r.get("gateway") == ROGUE_ROUTER]  # fmt: skip
    return found


def unguarded_link_takes_the_rogue_ra(env: Env) -> None:
    """The control: the same advertisement over a bare veth pair, to a namespace set up as vswitch sets
    up its ports (accept_ra 1, no DAD), does make an address and a default route."""
    sender, receiver = env.ns("rs"), env.ns("rr")
    create_namespace(sender)
    create_namespace(receiver)
    for key, value in (("accept_ra", 1), ("dad_transmits", 0)):
        netns_exec(receiver, ["sysctl", "-q", "-w", f"net.ipv6.conf.default.{key}={value}"], timeout=10)
    with IPRoute(netns=sender) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": receiver})
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
    with IPRoute(netns=receiver) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
    wait_for(lambda: any(a["scope"] == "link" and not a.get("tentative") for a in addresses6(receiver)),
             5, "the receiver's link-local address")  # fmt: skip
    assert rogue_effects(receiver) == []
    send_rogue_ra(sender)

    def configured() -> list[str] | None:
        found = rogue_effects(receiver)
        return found if len(found) == 2 else None  # an address and a default route

    got = wait_for(configured, 5, "the unguarded receiver to take the rogue prefix and router")
    assert [g.split()[0] for g in got] == ["address", "default"], got


def test_ra_guard_drops_an_advertisement_from_a_port(env: Env) -> None:
    """An RA from namespace a reaches no other host, while the same RA configures an unguarded one."""
    unguarded_link_takes_the_rogue_ra(env)

    lab = start_lab(env)
    accept_ra = netns_exec(lab.b, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_ra"], timeout=10).stdout
    assert accept_ra.strip() == "1", "b takes advertisements: only the guard can keep this one away"
    before = ip6(lab.b, "route", "show", "default")
    send_rogue_ra(lab.a)
    leaked = absent_for(2.0, lambda: rogue_effects(lab.b) or rogue_effects(lab.c))
    assert leaked is None, f"the rogue RA configured a neighbour: {leaked}"
    (default,) = ip6(lab.b, "route", "show", "default")
    assert default["gateway"] == lab.gateway_ll("lan") == before[0]["gateway"]
    assert lab.sw.request("stats")["ports"][lab.a]["drops"].get("ra-guard") == ROGUE_COUNT
    ok, out = ping6(lab.b, lab.ip[lab.c])
    assert ok, f"b still routes through the real router: {out}"


# --- 8. the host port ----------------------------------------------------------------------------------
def test_host_port_leaves_the_root_namespaces_ipv6_alone(env: Env) -> None:
    first, n = free_root_subnet()
    before6, before4 = root_view(socket.AF_INET6), root_view()
    a, c = env.ns("a"), env.ns("c")
    sw = env.router(
        "--segment", f"lan={a},host@{first}.{n}.0/24", "--segment", f"dmz={c}@{first}.{n + 1}.0/24",
        "--subnet6", SUBNET6, "--ra-interval", "0.2",
    )  # fmt: skip
    tap = f"vs-{sw.name}"
    (host_row,) = [p for p in sw.table["ports"] if p["namespace"] is None]
    assert host_row["interface"] == tap and host_row["address6"] is None, host_row
    conf = Path("/proc/sys/net/ipv6/conf") / tap
    assert (conf / "accept_ra").read_text().strip() == "0"
    assert (conf / "addr_gen_mode").read_text().strip() == "1"

    ip = {p["namespace"]: p["address6"].split("/")[0] for p in sw.table["ports"] if p["namespace"]}
    for src, dst in ((a, c), (c, a)):
        ok, out = ping6(src, ip[dst])
        assert ok, out

    # Advertisements keep going to a and c (every 0.2 s at most); the host port gets none of them,
    # though IPv6 multicast on its segment does reach it.
    def advertised() -> int:
        return int(sw.request("stats")["router"]["events"].get("ra-sent", 0))

    sent = advertised()
    seen = icmpv6_types_on(tap, 1.5, lambda: ping6(a, "ff02::1%eth0", "-w", "1"))
    assert ECHO_REQUEST in seen, f"the capture on {tap} saw no IPv6 multicast from a: {seen}"
    assert ROUTER_ADVERTISEMENT not in seen, seen
    assert advertised() - sent >= 2, "the router kept advertising meanwhile"

    running = root_view(socket.AF_INET6)
    assert not [x for x in running.addresses if x[0] == tap], "an IPv6 address on the host port"
    assert not [x for x in running.routes if x[2] == tap], "an IPv6 route through the host port"
    assert_same_ipv6(before6, running, tap)

    assert sw.stop() == 0
    assert_same_ipv6(before6, root_view(socket.AF_INET6), tap)
    after4 = root_view()
    churn = (before4.links ^ after4.links) - {tap}
    assert after4.without(churn) == before4.without(churn)


def icmpv6_types_on(ifname: str, seconds: float, during: Callable[[], object]) -> set[int]:
    """The ICMPv6 types of the frames the root namespace's ifname receives for `seconds` (a packet
    socket, so it sees what the kernel would be handed whatever its IPv6 settings); `during` runs once
    the socket is bound."""
    seen: set[int] = set()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6)) as sock:
        sock.bind((ifname, ETH_P_IPV6))
        during()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame, address = sock.recvfrom(65536)
            except TimeoutError:
                break
            if address[2] != socket.PACKET_OUTGOING and len(frame) > 54 and frame[20] == ICMPV6:
                seen.add(frame[54])  # Ethernet 14 + IPv6 40: the ICMPv6 type (no extension headers)
    return seen


def assert_same_ipv6(before: RootView, now: RootView, tap: str) -> None:
    """The root's (ifname, address) and (dst, gateway, ifname) IPv6 sets are as before; interfaces that
    came or went meanwhile and are not ours (another test's) are left out of both."""
    churn = (before.links ^ now.links) - {tap}
    assert (now.without(churn).addresses, now.without(churn).routes) == (
        before.without(churn).addresses,
        before.without(churn).routes,
    )


# --- 9. the kernel as the reference router -------------------------------------------------------------
@dataclass
class Path6:
    """A host on the first segment, a host on the second, and the router's address on the first."""

    src: str
    dst_ip: str
    src_gateway: str


def kernel_path(env: Env) -> Path6:
    router, src, dst = env.ns("kr"), env.ns("k1"), env.ns("k3")
    for ns in (router, src, dst):  # no duplicate address detection, as on the vswitch side
        create_namespace(ns)
        netns_exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.default.dad_transmits=0"], timeout=10)
    netns_exec(router, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], timeout=10)
    legs = (("lan", src, LAN6), ("dmz", dst, DMZ6))
    with IPRoute(netns=router) as ipr:
        for name, far, prefix in legs:
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": far})
            index = ipr.link_lookup(ifname=name)[0]
            ipr.addr("add", index=index, address=str(prefix[1]), prefixlen=64, family=socket.AF_INET6,
                     flags=IFA_F_NODAD)  # fmt: skip
            ipr.link("set", index=index, state="up")
    for _, far, prefix in legs:
        with IPRoute(netns=far) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=str(prefix[2]), prefixlen=64, family=socket.AF_INET6,
                     flags=IFA_F_NODAD)  # fmt: skip
            ipr.link("set", index=index, state="up")
            ipr.route("add", dst="::/0", gateway=str(prefix[1]), family=socket.AF_INET6)
    return Path6(src, str(DMZ6[2]), LAN_GW)


def vswitch_path(env: Env) -> Path6:
    lab = start_lab(env)
    return Path6(lab.a, lab.ip[lab.c], LAN_GW)


ROUTERS: dict[str, Callable[[Env], Path6]] = {"kernel": kernel_path, "vswitch": vswitch_path}


@pytest.mark.parametrize("router", list(ROUTERS))
def test_hop_limit_and_traceroute_agree_with_the_kernel_router(env: Env, router: str) -> None:
    path = ROUTERS[router](env)
    wait_for(lambda: ping6(path.src, path.dst_ip, wait=1)[0], 10, f"{path.src} to reach {path.dst_ip}")
    ok, out = ping6(path.src, path.dst_ip, "-t", "1")
    assert not ok
    assert re.search(rf"From {re.escape(path.src_gateway)} icmp_seq=1 Time exceeded: Hop limit", out), out
    assert traceroute_hops(path.src, path.dst_ip) == [path.src_gateway, path.dst_ip]


# --- 10. stop and start again --------------------------------------------------------------------------
def pids_in(ns: str) -> list[str]:
    """Processes whose network namespace is ns (`ip netns pids`)."""
    proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=True)
    return proc.stdout.split()


def processes_naming(name: str) -> list[str]:
    """Processes whose command line carries `--name NAME` (the switch, or anything it left behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        if f"--name {name} " in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_stop_leaves_nothing_and_a_restart_autoconfigures_again(env: Env) -> None:
    """SIGTERM: namespaces, taps, state file, socket and process all gone; then `up` again with the same
    name and namespaces configures them afresh, and stops as cleanly."""
    lab = start_lab(env)
    name = lab.sw.name
    for run in range(2):
        ok, out = ping6(lab.a, lab.ip[lab.c])
        assert ok, f"run {run}: {out}"
        taps = set(lab.sw.tap_names())
        assert len(taps) == 3
        # vswitch never runs anything inside its namespaces (design: no setns), so nothing there can
        # outlive them once they are removed.
        assert {ns: pids_in(ns) for ns in (lab.a, lab.b, lab.c)} == {lab.a: [], lab.b: [], lab.c: []}
        assert processes_naming(name) != []
        assert lab.sw.stop(signal.SIGTERM) == 0
        assert namespaces(env.prefix) == set()
        assert not taps & set(links(None)), "a tap is left in the root namespace"
        assert not lab.sw.state_path.exists() and not lab.sw.socket_path.exists()
        assert processes_naming(name) == []
        if run == 0:
            lab = start_lab(env, name=name)
