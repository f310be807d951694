"""VXLAN (RFC 7348) against real namespaces: vswitch's tunnel to the kernel's own VTEP, between vswitch
instances on two and on three underlay hosts, path MTU through a routed tunnel segment, bad underlay
input as named drops, a static FDB entry, capture of the inner and the outer packets (and the outer
headers as they are on the wire), doctor on a remote that never answers, and bad command lines.

The underlay is built here with pyroute2, never by vswitch: "host" namespaces joined by a veth pair
(or each by a veth into a kernel bridge in a namespace of its own), addresses 10.250.0.N/24. The
kernel VTEP on the far host is what `ip link add vx0 type vxlan id 42 local B remote A dstport 4789`
makes, in a bridge br0 with a veth to an end namespace, as a Linux host bridges a VXLAN segment.
The underlay veths hand over what a Linux sender leaves partial (inner TCP checksums of a kernel
VTEP, as over any veth), and the kernel VTEP's test runs once more with them completed, as a real
NIC puts them on the wire (wire_like). Nothing is made, bound or routed in the root namespace.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from vswitch.shell.kernel import open_existing_namespace

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    background_cli,
    create_namespace,
    links,
    mac_of,
    make_world,
    namespaces,
    netns_exec,
    new_root_links,
    ping_until_exit,
    pings,
    transfer,
    tx_checksum_offload_off,
    wait_for,
)

pytestmark = pytest.mark.root

VNI = 42
DSTPORT = 4789
TUNNEL = f"vx{VNI}"  # the tunnel's port: underlay-level drops are counted here
A, B, C = "10.250.0.1", "10.250.0.2", "10.250.0.3"  # underlay hosts
UNDERLAY_MTU = 1500
TUNNEL_MTU = UNDERLAY_MTU - 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
TCP_BYTES = 100_000_000
FIRST_PING = 30.0  # the first ping of a test: both switches up, ARP across the tunnel
NUD_BAD = 0x01 | 0x20  # NUD_INCOMPLETE, NUD_FAILED: an entry without a usable lladdr
NUD_PERMANENT = 0x80

VXLAN_I = 0x08  # RFC 7348 5: the I flag, "set to 1 for a valid VXLAN Network ID"
VXLAN_HEADER = struct.Struct("!B3sI")  # flags, 24 reserved bits, VNI << 8 | 8 reserved bits


@pytest.fixture
def xenv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("vsx" + 6 hex)."""
    with make_world(tmp_path, "vsx") as world:
        yield world


def remote_port(address: str) -> str:
    """The port vswitch names after one remote VTEP."""
    return f"{TUNNEL}@{address}"


# --- the underlay and the kernel's VTEP (pyroute2) ----------------------------------------------------
def index_of(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    assert found, f"no link {ifname}"
    return int(found[0])


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair made in ns_a with its peer born in ns_b (it never passes through the root)."""
    with IPRoute(netns=ns_a) as ipr:
        ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})


def configure(
    ns: str, ifname: str, address: str | None = None, mtu: int | None = None, master: str | None = None
) -> None:
    """Set a link's MTU, bridge and address (ADDR/PREFIX), then bring it up."""
    with IPRoute(netns=ns) as ipr:
        index = index_of(ipr, ifname)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        if master is not None:
            ipr.link("set", index=index, master=index_of(ipr, master))
        if address is not None:
            ip, prefixlen = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
        ipr.link("set", index=index, state="up")


def kernel_bridge(ns: str, ifname: str = "br0") -> None:
    """A kernel bridge, STP off and no forward delay: its ports forward as soon as they are up."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=ifname, kind="bridge", br_forward_delay=0)
        ipr.link("set", index=index_of(ipr, ifname), state="up")


def wire_like(ns: str, ifname: str = "ul0") -> None:
    """Checksums completed before a packet leaves ns by ifname, as a real NIC puts them on the wire.

    A veth hands its peer a CHECKSUM_PARTIAL skb whose checksum is still to be done: a kernel VTEP on
    the other side trusts that state, and vswitch passes such a frame on as NEEDS_CSUM
    (vxlan.received_vnet_header); with the offload off the kernel completes it first.
    """
    tx_checksum_offload_off(ns, ifname)


def host_pair(env: Env, wire: bool = False) -> tuple[str, str]:
    """Underlay hosts ha (10.250.0.1/24) and hb (10.250.0.2/24) on one veth pair, ul0 to ul0; with
    wire, checksums completed before they leave (wire_like)."""
    ha, hb = env.ns("ha"), env.ns("hb")
    create_namespace(ha)
    create_namespace(hb)
    veth(ha, "ul0", hb, "ul0")
    for host, address in ((ha, A), (hb, B)):
        configure(host, "ul0", f"{address}/24")
        if wire:
            wire_like(host)
    wait_for(lambda: pings(ha, B), 10, "the underlay hosts to ping each other")
    return ha, hb


def host_star(env: Env, count: int) -> list[str]:
    """Underlay hosts h1..hN (10.250.0.N/24), each with a veth ul0 into a kernel bridge in namespace ub."""
    hub = env.ns("ub")
    create_namespace(hub)
    kernel_bridge(hub)
    hosts = []
    for n in range(1, count + 1):
        host = env.ns(f"h{n}")
        create_namespace(host)
        veth(host, "ul0", hub, f"p{n}")
        configure(hub, f"p{n}", master="br0")
        configure(host, "ul0", f"10.250.0.{n}/24")
        hosts.append(host)
    for n in range(2, count + 1):
        wait_for(partial(pings, hosts[0], f"10.250.0.{n}"), 10, f"underlay host 1 to ping host {n}")
    return hosts


@dataclass(frozen=True)
class KernelSide:
    """The far end made of kernel parts: vx0 and br0 in `host`, a veth into `end`, which has `address`."""

    host: str
    end: str
    address: str


def kernel_vtep(
    env: Env, host: str, local: str, remote: str, end_address: str, gateway: str = "", link: str = ""
) -> KernelSide:
    """`ip link add vx0 type vxlan id 42 local LOCAL remote REMOTE dstport 4789` in host, MTU 1450, in a
    bridge br0 with a veth ve0 whose peer is eth0 (END_ADDRESS, MTU 1450) in a new end namespace."""
    end = env.ns("ke")
    create_namespace(end)
    kernel_bridge(host)
    with IPRoute(netns=host) as ipr:
        # remote is a unicast VTEP, or a multicast group; a group needs its link (`dev ul0`).
        extra = {"vxlan_link": index_of(ipr, link)} if link else {}
        ipr.link(
            "add", ifname="vx0", kind="vxlan", vxlan_id=VNI, vxlan_local=local, vxlan_group=remote,
            vxlan_port=DSTPORT, **extra,
        )  # fmt: skip
    configure(host, "vx0", mtu=TUNNEL_MTU, master="br0")
    veth(host, "ve0", end, "eth0")
    configure(host, "ve0", mtu=TUNNEL_MTU, master="br0")
    configure(end, "eth0", end_address, mtu=TUNNEL_MTU)
    if gateway:
        with IPRoute(netns=end) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
    return KernelSide(host, end, end_address.split("/")[0])


def add_address(ns: str, ifname: str, address: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ip, prefixlen = address.split("/")
        ipr.addr("add", index=index_of(ipr, ifname), address=ip, prefixlen=int(prefixlen))


def set_mtu(ns: str, ifname: str, mtu: int) -> None:
    with open_existing_namespace(ns) as ipr:
        ipr.link("set", index=index_of(ipr, ifname), mtu=mtu)


# --- reading the kernel and the switch ---------------------------------------------------------------
def neighbour(ns: str, ip: str) -> str | None:
    """The link-layer address ns's neighbour table holds for ip (None: no entry, or unresolved)."""
    with open_existing_namespace(ns) as ipr:
        for entry in ipr.get_neighbours(family=socket.AF_INET):
            if entry.get_attr("NDA_DST") == ip and not entry["state"] & NUD_BAD:
                lladdr: str | None = entry.get_attr("NDA_LLADDR")
                return lladdr
    return None


def kernel_fdb_dst(host: str, mac: str) -> str | None:
    """The remote VTEP (dst) that the kernel's vx0 in host has learned for mac, from `bridge fdb`."""
    out = netns_exec(host, ["bridge", "-j", "fdb", "show", "dev", "vx0"]).stdout
    for entry in json.loads(out or "[]"):
        if entry.get("mac") == mac and "dst" in entry:
            dst: str = entry["dst"]
            return dst
    return None


def fdb_rows(sw: Switch, mac: str, cli: bool = False) -> list[dict[str, Any]]:
    """The FDB rows for mac: through the control socket for polling, through the CLI (cli) to assert."""
    rows: list[dict[str, Any]] = sw.query("fdb") if cli else sw.request("fdb")
    return [row for row in rows if row["mac"] == mac]


def learned_from(sw: Switch, mac: str, remote: str) -> bool:
    """sw's FDB has mac on the port of remote VTEP `remote` (polled through the control socket)."""
    return any(row["port"] == remote_port(remote) for row in fdb_rows(sw, mac))


def the_tunnel(sw: Switch) -> dict[str, Any]:
    (tunnel,) = sw.query("status")["tunnels"]
    result: dict[str, Any] = tunnel
    return result


def remote_counters(sw: Switch, address: str) -> dict[str, Any]:
    (tunnel,) = sw.request("status")["tunnels"]
    (remote,) = [r for r in tunnel["remotes"] if r["address"] == address]
    result: dict[str, Any] = remote
    return result


def tunnel_drops(sw: Switch) -> dict[str, int]:
    """Drops by reason over the tunnel's ports: vx42 itself and every vx42@REMOTE."""
    total: dict[str, int] = {}
    for name, port in sw.request("stats")["ports"].items():
        if name == TUNNEL or name.startswith(f"{TUNNEL}@"):
            for reason, count in port["drops"].items():
                total[reason] = total.get(reason, 0) + count
    return total


def drops_reach(sw: Switch, reason: str, target: int) -> bool:
    return tunnel_drops(sw).get(reason, 0) >= target


def vxlan_args(segment: str, local: str, host: str, *remotes: str) -> list[str]:
    spec = [f"{segment}={VNI}", f"local={local}", f"netns={host}", *(f"remote={r}" for r in remotes)]
    return ["--vxlan", ",".join(spec)]


# --- crafted frames --------------------------------------------------------------------------------------
def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def vxlan(vni: int = VNI, flags: int = VXLAN_I, reserved: int = 0, reserved_low: int = 0) -> bytes:
    """A VXLAN header (RFC 7348 5.1): flags, 24 reserved bits, the VNI, 8 reserved bits."""
    return VXLAN_HEADER.pack(flags, reserved.to_bytes(3, "big"), vni << 8 | reserved_low)


def ether(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    frame = mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload
    return frame.ljust(60, b"\x00")


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (RFC 826): who has target_ip, tell src_ip at src_mac."""
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac_bytes(src_mac), socket.inet_aton(src_ip), bytes(6),
        socket.inet_aton(target_ip),
    )  # fmt: skip
    return ether("ff:ff:ff:ff:ff:ff", src_mac, 0x0806, arp)


UDP_SENDER = """
import json, socket, sys
dst, port = sys.argv[1], int(sys.argv[2])
for source, data in json.load(sys.stdin):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(bytes.fromhex(data), (dst, port))
"""

FLOW_PORT = 7777  # one inner UDP flow: source and destination port both this
FLOW_SENDER = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((sys.argv[1], int(sys.argv[2])))
    sock.sendto(b"one flow", (sys.argv[3], int(sys.argv[2])))
"""

FRAME_SENDER = """
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
    sock.bind((sys.argv[1], 0))
    sock.send(bytes.fromhex(sys.argv[2]))
"""


def send_underlay(ns: str, dst: str, datagrams: Sequence[tuple[str, bytes]]) -> None:
    """Each (source address, payload) as one UDP datagram from ns to dst:4789, by a plain socket."""
    data = json.dumps([(source, payload.hex()) for source, payload in datagrams])
    netns_exec(ns, [sys.executable, "-c", UDP_SENDER, dst, str(DSTPORT)], input=data)


def send_frame(ns: str, frame: bytes, ifname: str = "eth0") -> None:
    """One raw Ethernet frame out of ns's ifname (an AF_PACKET socket: any source MAC we like)."""
    netns_exec(ns, [sys.executable, "-c", FRAME_SENDER, ifname, frame.hex()])


# --- 1. vswitch against the kernel's VTEP -----------------------------------------------------------------
@pytest.mark.parametrize("wire", [False, True], ids=["veth-partial-checksums", "wire-like"])
def test_kernel_vtep_pings_resolves_arp_learns_and_carries_100mb_both_ways(xenv: Env, wire: bool) -> None:
    ha, hb = host_pair(xenv, wire)
    far = kernel_vtep(xenv, hb, local=B, remote=A, end_address="10.0.0.2/24")
    nsv = xenv.ns("v")
    sw = xenv.switch(f"{nsv}:eth0=10.0.0.1/24", args=vxlan_args("lan", A, ha, B))
    assert links(nsv)["eth0"]["mtu"] == TUNNEL_MTU

    wait_for(lambda: pings(nsv, far.address), FIRST_PING, "vswitch's side to ping the kernel's side")
    assert pings(nsv, far.address, count=3), "vswitch side -> kernel side"
    assert pings(far.end, "10.0.0.1", count=3), "kernel side -> vswitch side"
    v_mac, e_mac = mac_of(nsv), mac_of(far.end)
    assert neighbour(nsv, far.address) == e_mac
    assert neighbour(far.end, "10.0.0.1") == v_mac

    # The kernel's vx0 learned vswitch's port behind vswitch's VTEP address, as it learns any VTEP's.
    assert wait_for(lambda: kernel_fdb_dst(hb, v_mac), 10, "vx0 to learn vswitch's port MAC") == A
    wait_for(lambda: learned_from(sw, e_mac, B), 10, "vswitch to learn the kernel side's MAC")
    (far_row,) = fdb_rows(sw, e_mac, cli=True)
    assert (far_row["segment"], far_row["port"], far_row["remote"], far_row["static"]) == (
        "lan", remote_port(B), B, False,
    )  # fmt: skip
    (near_row,) = fdb_rows(sw, v_mac, cli=True)
    assert near_row["port"] == nsv and near_row.get("remote") is None, near_row

    tunnel = the_tunnel(sw)
    expected = {
        "segment": "lan", "vni": VNI, "local": A, "netns": ha, "dstport": DSTPORT, "ttl": 64,
        "mtu": TUNNEL_MTU, "underlay_mtu": UNDERLAY_MTU,
    }  # fmt: skip
    assert {key: tunnel.get(key) for key in expected} == expected, tunnel
    (remote,) = tunnel["remotes"]
    assert (remote["address"], remote["port"]) == (B, remote_port(B))
    assert remote["rx_packets"] >= 3 and remote["tx_packets"] >= 3, remote

    transfer(xenv, nsv, far.end, far.address, TCP_BYTES, seed=42)
    transfer(xenv, far.end, nsv, "10.0.0.1", TCP_BYTES, seed=43)


# --- 2. a routed segment over the tunnel: path MTU discovery --------------------------------------------
@dataclass(frozen=True)
class RoutedTunnel:
    """lan = nsv + the tunnel to the kernel side (10.1.0.0/24), other = nsr (10.2.0.0/24)."""

    sw: Switch
    ha: str
    hb: str
    far: KernelSide
    nsv: str
    nsr: str


def routed_tunnel(env: Env) -> RoutedTunnel:
    ha, hb = host_pair(env)
    far = kernel_vtep(env, hb, local=B, remote=A, end_address="10.1.0.100/24", gateway="10.1.0.1")
    nsv, nsr = env.ns("v"), env.ns("r")
    sw = env.router(
        "--segment", f"lan={nsv}@10.1.0.0/24", "--segment", f"other={nsr}@10.2.0.0/24",
        *vxlan_args("lan", A, ha, B),
    )  # fmt: skip
    return RoutedTunnel(sw, ha, hb, far, nsv, nsr)


def test_routed_tunnel_segment_answers_df_with_frag_needed_mtu_1450(xenv: Env) -> None:
    """lan's MTU is the tunnel's (1450), other's 1500: from other, a 1450-byte DF echo to the kernel
    side passes, a 1500-byte one gets "fragmentation needed" with mtu 1450 from other's gateway."""
    r = routed_tunnel(xenv)
    assert links(r.nsv)["eth0"]["mtu"] == TUNNEL_MTU and links(r.nsr)["eth0"]["mtu"] == UNDERLAY_MTU
    segments = {s["name"]: s for s in r.sw.query("status")["segments"]}
    assert (segments["lan"]["mtu"], segments["other"]["mtu"]) == (TUNNEL_MTU, UNDERLAY_MTU)
    wait_for(lambda: pings(r.nsr, r.far.address), FIRST_PING, "other to ping the kernel side via the router")

    fits = netns_exec(
        r.nsr, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do", "-s", "1422", r.far.address],
        check=False,
    )  # fmt: skip
    assert fits.returncode == 0 and "1430 bytes from" in fits.stdout, fits.stdout

    refused = netns_exec(
        r.nsr, ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", r.far.address], check=False
    )
    assert refused.returncode != 0
    assert re.search(r"From 10\.2\.0\.1 icmp_seq=1 Frag needed and DF set \(mtu = 1450\)", refused.stdout), (
        refused.stdout
    )
    assert r.sw.query("stats")["router"]["drops"].get("fragmentation-needed", 0) >= 1


def test_tcp_routed_into_the_tunnel_from_an_offloading_segment_arrives_intact(xenv: Env) -> None:
    """other's tap keeps TSO: its TCP reaches the router as 64 KB super-frames, routed into lan, whose
    tunnel cuts and checksums them in software (gso.py) for the kernel VTEP; and back the other way.
    Nothing is dropped for a bad virtio-net header or for size."""
    r = routed_tunnel(xenv)
    wait_for(lambda: pings(r.nsr, r.far.address), FIRST_PING, "other to ping the kernel side via the router")
    transfer(xenv, r.nsr, r.far.end, r.far.address, TCP_BYTES // 4, seed=45)
    transfer(xenv, r.far.end, r.nsr, "10.2.0.2", TCP_BYTES // 4, seed=46)
    drops = r.sw.query("stats")["drops"]
    assert not {"bad-vnet-header", "vxlan-too-big", "fragmentation-unsupported"} & set(drops), drops


# --- 3. bad underlay input --------------------------------------------------------------------------------
def test_bad_underlay_input_is_dropped_by_name_and_forwarding_goes_on(xenv: Env) -> None:
    """From the far host's own UDP sockets: runts, bad flags, an unknown VNI, a sender that is no
    configured remote, an inner frame claiming the router's MAC; then a frame too big for the tunnel
    from vswitch's side (over its port's MTU, which is the tunnel's). Each is counted under its name,
    none is learned, and traffic still flows."""
    r = routed_tunnel(xenv)
    wait_for(lambda: pings(r.far.end, "10.2.0.2"), FIRST_PING, "the kernel side to ping other via the router")
    router_mac = neighbour(r.far.end, "10.1.0.1")
    assert router_mac, "the kernel side resolved its gateway (the router) across the tunnel"
    nsv_mac = mac_of(r.nsv)
    add_address(r.hb, "ul0", f"{C}/24")  # hb may now also send from C, which is no configured remote

    strangers = {reason: f"02:00:00:00:be:{n:02x}" for n, reason in enumerate(("flags", "vni", "remote"), 1)}

    def inner(src: str) -> bytes:
        return ether(nsv_mac, src, 0x0800, bytes(46))

    cases: list[tuple[str, str, list[bytes]]] = [
        # shorter than VXLAN + Ethernet headers (22 bytes): one byte short, and the header alone
        ("vxlan-runt", B, [vxlan() + bytes(13), vxlan()]),
        # I flag clear; a reserved flag bit; a bit in the 24 reserved bits; one in the 8 after the VNI
        (
            "vxlan-bad-flags",
            B,
            [
                vxlan(flags=0) + inner(strangers["flags"]),
                vxlan(flags=VXLAN_I | 0x04) + inner(strangers["flags"]),
                vxlan(reserved=0x000100) + inner(strangers["flags"]),
                vxlan(reserved_low=0x01) + inner(strangers["flags"]),
            ],
        ),
        ("vxlan-unknown-vni", B, [vxlan(vni=VNI + 1) + inner(strangers["vni"])]),
        ("vxlan-unknown-remote", C, [vxlan() + inner(strangers["remote"])]),
        ("src-is-switch", B, [vxlan() + arp_request(router_mac, "10.1.0.1", "10.1.0.2")]),
    ]
    before = tunnel_drops(r.sw)
    for reason, source, payloads in cases:
        send_underlay(r.hb, A, [(source, p) for p in payloads])
        target = before.get(reason, 0) + len(payloads)
        wait_for(partial(drops_reach, r.sw, reason, target), 10, f"{len(payloads)} more {reason} drops")
    after = tunnel_drops(r.sw)
    for reason, _, payloads in cases:
        assert after.get(reason, 0) - before.get(reason, 0) == len(payloads), (reason, before, after)
    # Underlay-level drops belong to the tunnel's own port (no remote port fits them), through the CLI.
    tunnel_port = r.sw.query("stats")["ports"][TUNNEL]["drops"]
    for reason, _, payloads in cases[:4]:
        assert tunnel_port.get(reason, 0) - before.get(reason, 0) == len(payloads), (reason, tunnel_port)
    rows = r.sw.query("fdb")
    assert not [row for row in rows if row["mac"] in strangers.values()], rows
    assert not [row for row in rows if row["mac"] == router_mac and row["port"].startswith(TUNNEL)], rows

    # A frame bigger than the tunnel takes: nsv's MTU raised behind vswitch's back, a DF echo of 1500.
    # It is over its own segment's MTU (the tunnel's) already: dropped as it is read off nsv's port,
    # as the kernel bridge and Open vSwitch drop a frame over the port's MTU (vxlan-too-big is left
    # for a frame that fits its port but not the tunnel, test_gso.py).
    total = r.sw.request("stats")["ports"][r.nsv]["drops"].get("over-mtu", 0)
    set_mtu(r.nsv, "eth0", UNDERLAY_MTU)
    big = netns_exec(
        r.nsv, ["ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "1472", r.far.address], check=False
    )
    assert big.returncode != 0, big.stdout
    wait_for(
        lambda: r.sw.request("stats")["ports"][r.nsv]["drops"].get("over-mtu", 0) > total,
        10,
        "an over-mtu drop on nsv's port",
    )
    set_mtu(r.nsv, "eth0", TUNNEL_MTU)

    assert pings(r.nsr, r.far.address, count=3), "other -> kernel side, after the bad input"
    assert pings(r.far.end, "10.1.0.2", count=3), "kernel side -> lan, after the bad input"
    assert neighbour(r.far.end, "10.1.0.1") == router_mac


# --- 4. two vswitch instances -------------------------------------------------------------------------------
def test_two_instances_on_two_hosts_ping_and_carry_tcp(xenv: Env) -> None:
    ha, hb = host_pair(xenv)
    nsx, nsy = xenv.ns("x"), xenv.ns("y")
    one = xenv.switch(f"{nsx}:eth0=10.0.0.1/24", args=vxlan_args("lan", A, ha, B))
    two = xenv.switch(f"{nsy}:eth0=10.0.0.2/24", args=vxlan_args("lan", B, hb, A))
    assert links(nsx)["eth0"]["mtu"] == TUNNEL_MTU and links(nsy)["eth0"]["mtu"] == TUNNEL_MTU

    wait_for(lambda: pings(nsx, "10.0.0.2"), FIRST_PING, "the first instance's port to ping the second's")
    assert pings(nsx, "10.0.0.2", count=3) and pings(nsy, "10.0.0.1", count=3)
    assert wait_for(lambda: learned_from(one, mac_of(nsy), B), 10, "instance one to learn nsy behind B")
    assert wait_for(lambda: learned_from(two, mac_of(nsx), A), 10, "instance two to learn nsx behind A")
    (row,) = fdb_rows(one, mac_of(nsy), cli=True)
    assert row["remote"] == B, row

    transfer(xenv, nsx, nsy, "10.0.0.2", TCP_BYTES, seed=44)


def test_doctor_flags_an_address_two_instances_both_gave_out(xenv: Env) -> None:
    """Two instances number their ports alike: each namespace's 10.0.0.1 answers the other's ARP
    probe across the tunnel, and doctor says so on both sides (as arping -D would); a third address,
    given once, is not flagged."""
    ha, hb = host_pair(xenv)
    nsx, nsy, nsz = xenv.ns("x"), xenv.ns("y"), xenv.ns("z")
    one = xenv.switch(f"{nsx}:eth0=10.0.0.1/24,{nsz}:eth0=10.0.0.3/24", args=vxlan_args("lan", A, ha, B))
    two = xenv.switch(f"{nsy}:eth0=10.0.0.1/24", args=vxlan_args("lan", B, hb, A))
    for sw, ns, other in ((one, nsx, nsy), (two, nsy, nsx)):
        doctor = xenv.vswitch("doctor", "--name", sw.name, timeout=60)
        problems = [line for line in doctor.stdout.splitlines() if line.startswith("PROBLEM")]
        assert doctor.returncode == 1, doctor.stdout
        assert any(ns in line and "10.0.0.1" in line and mac_of(other) in line for line in problems), (
            doctor.stdout
        )
        assert not any("10.0.0.3" in line for line in problems), doctor.stdout


GROUP = "239.1.1.42"


def test_a_group_floods_to_the_kernel_vtep_and_its_vtep_is_learned_as_a_remote(xenv: Env) -> None:
    """group= and no remote=, against `ip link add vx0 type vxlan id 42 local B group G dev ul0`:
    floods go to the group, each side learns the other's VTEP from what it hears, and unicast then
    goes to that VTEP (RFC 7348 section 4.2)."""
    ha, hb = host_pair(xenv)
    far = kernel_vtep(xenv, hb, B, GROUP, "10.0.0.2/24", link="ul0")
    nsv = xenv.ns("v")
    sw = xenv.switch(
        f"{nsv}:eth0=10.0.0.1/24", args=["--vxlan", f"lan={VNI},local={A},netns={ha},group={GROUP}"]
    )
    wait_for(
        lambda: pings(nsv, far.address), FIRST_PING, "vswitch's side to ping the kernel's over the group"
    )
    assert pings(far.end, "10.0.0.1", count=2)
    tunnel = the_tunnel(sw)
    assert tunnel["group"] == GROUP
    remotes = {r["address"]: r for r in tunnel["remotes"]}
    assert set(remotes) == {GROUP, B}, remotes
    assert remotes[GROUP]["tx_packets"] > 0 and remotes[GROUP]["rx_packets"] == 0, remotes  # floods out
    assert remotes[B]["learned"] and remotes[B]["rx_packets"] > 0 and remotes[B]["tx_packets"] > 0, remotes
    assert wait_for(lambda: learned_from(sw, mac_of(far.end), B), 10, "vswitch to learn the far end behind B")
    assert kernel_fdb_dst(hb, mac_of(nsv)) == A
    transfer(xenv, nsv, far.end, far.address, TCP_BYTES // 10, seed=47)


def test_three_instances_on_one_group_find_each_other(xenv: Env) -> None:
    """Three instances with group= only: a flood reaches both others through the group, every pair
    pings, and each instance has learned the other two VTEPs."""
    hosts = host_star(xenv, 3)
    underlay = [f"10.250.0.{n}" for n in (1, 2, 3)]
    ends = [xenv.ns(f"g{n}") for n in (1, 2, 3)]
    switches = [
        xenv.switch(
            f"{ends[i]}:eth0=10.0.0.{i + 1}/24",
            args=["--vxlan", f"lan={VNI},local={underlay[i]},netns={hosts[i]},group={GROUP}"],
        )
        for i in range(3)
    ]
    wait_for(lambda: pings(ends[0], "10.0.0.3"), FIRST_PING, "the first instance's port to ping the third's")
    failed = [(s, d) for s, d in itertools.permutations(range(3), 2) if not pings(ends[s], f"10.0.0.{d + 1}")]
    assert failed == [], failed
    for i, sw in enumerate(switches):
        learned = {r["address"] for r in the_tunnel(sw)["remotes"] if r["learned"]}
        assert learned == {u for u in underlay if u != underlay[i]}, (sw.name, learned)


# --- 5. three instances on a bridged underlay ---------------------------------------------------------------
def test_three_instances_full_mesh_ping_and_flood_a_broadcast_to_both_others(xenv: Env) -> None:
    hosts = host_star(xenv, 3)
    underlay = [f"10.250.0.{n}" for n in (1, 2, 3)]
    ends = [xenv.ns(f"n{n}") for n in (1, 2, 3)]
    overlay = [f"10.0.0.{n}" for n in (1, 2, 3)]
    switches = [
        xenv.switch(
            f"{ends[i]}:eth0={overlay[i]}/24",
            args=vxlan_args("lan", underlay[i], hosts[i], *(u for u in underlay if u != underlay[i])),
        )
        for i in range(3)
    ]
    for i, sw in enumerate(switches):
        tunnel = the_tunnel(sw)
        assert tunnel["local"] == underlay[i]
        assert sorted(r["address"] for r in tunnel["remotes"]) == [u for u in underlay if u != underlay[i]]

    wait_for(lambda: pings(ends[0], overlay[2]), FIRST_PING, "the first instance's port to ping the third's")
    failed = [(s, d) for s, d in itertools.permutations(range(3), 2) if not pings(ends[s], overlay[d])]
    assert failed == [], [(ends[s], overlay[d]) for s, d in failed]

    # One broadcast ARP request out of n1, from a MAC nothing else uses: head-end replication sends it
    # to both remotes; each instance learns the MAC behind 10.250.0.1, and n3 (asked) hears it.
    sender_mac, sender_ip = "02:00:00:0a:7e:01", "10.0.0.99"
    send_frame(ends[0], arp_request(sender_mac, sender_ip, overlay[2]))
    for sw in switches[1:]:
        wait_for(partial(learned_from, sw, sender_mac, underlay[0]), 10, f"{sw.name} to learn the sender")
        (row,) = fdb_rows(sw, sender_mac, cli=True)
        assert (row["port"], row["remote"]) == (remote_port(underlay[0]), underlay[0]), row
    assert [row["port"] for row in fdb_rows(switches[0], sender_mac)] == [ends[0]]
    assert wait_for(lambda: neighbour(ends[2], sender_ip), 10, "n3 to hear the request") == sender_mac


# --- 6. static FDB, capture, the wire, doctor ---------------------------------------------------------------
def tshark_fields(path: Path, fields: Sequence[str]) -> list[list[str]]:
    shark = subprocess.run(
        ["tshark", "-r", str(path), "-n", "-T", "fields", "-E", "occurrence=f",
         *(a for f in fields for a in ("-e", f))],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True,
    )  # fmt: skip
    return [line.split("\t") for line in shark.stdout.splitlines()]


def flag(value: str) -> bool:
    """A boolean field as tshark prints it (1/0 up to 4.0, True/False since)."""
    return value in ("1", "True")


def test_static_fdb_capture_inner_and_outer_and_doctor_flags_a_silent_remote(xenv: Env) -> None:
    ha, hb = host_pair(xenv)
    far = kernel_vtep(xenv, hb, local=B, remote=A, end_address="10.0.0.2/24")
    silent, ghost_mac = "10.250.0.9", "02:00:00:00:00:99"  # an address no host holds, a MAC behind it
    nsv = xenv.ns("v")
    sw = xenv.switch(
        f"{nsv}:eth0=10.0.0.1/24",
        args=[*vxlan_args("lan", A, ha, B, silent), "--vxlan-fdb", f"lan={ghost_mac}@{silent}"],
    )
    (static,) = fdb_rows(sw, ghost_mac, cli=True)
    assert (static["segment"], static["port"], static["remote"], static["static"]) == (
        "lan", remote_port(silent), silent, True,
    )  # fmt: skip
    wait_for(lambda: pings(nsv, far.address), FIRST_PING, "vswitch's side to ping the kernel's side")

    # Inner frames on the tunnel's port: the request goes out into the tunnel, the reply comes in.
    cap = background_cli(xenv, sw, "capture", TUNNEL, "--count", "4", "--filter", "icmp")
    lines = ping_until_exit(cap, nsv, far.address, "capture of 4 inner ICMP frames").splitlines()
    assert len(lines) == 4, lines
    assert any(f" {TUNNEL} out " in x and "echo-request" in x for x in lines), lines
    assert any(f" {TUNNEL} in " in x and "echo-reply" in x for x in lines), lines

    # --outer: the same echoes as UDP datagrams to port 4789 carrying VNI 42, both ways.
    path = xenv.tmp / "outer.pcap"
    cap = background_cli(xenv, sw, "capture", TUNNEL, "--outer", "-w", str(path), "--count", "8")
    ping_until_exit(cap, nsv, far.address, "capture of 8 outer packets")
    rows = tshark_fields(path, ["ip.src", "ip.dst", "udp.dstport", "vxlan.vni", "icmp.type"])
    assert [A, B, str(DSTPORT), str(VNI), "8"] in rows, rows
    assert [B, A, str(DSTPORT), str(VNI), "0"] in rows, rows

    # On the wire in the far host: vswitch's datagrams of one inner flow (UDP, fixed ports) with DF,
    # TTL 64, UDP checksum 0 and one source port from the dynamic range (RFC 7348 5: a hash of the
    # inner headers). Sent until tshark has seen 4, as ping_until_exit does: no guess at when it starts.
    one_flow = (
        f"src host {A} and udp dst port {DSTPORT} and udp[28:2] = 0x0800 and udp[39] = 17"
        f" and udp[52:2] = {FLOW_PORT}"
    )
    wire = subprocess.Popen(
        ["ip", "netns", "exec", hb, "tshark", "-i", "ul0", "-l", "-n", "-c", "4", "-a", "duration:60",
         "-f", one_flow, "-T", "fields", "-E", "occurrence=f", "-e", "ip.flags.df", "-e", "ip.ttl",
         "-e", "udp.srcport", "-e", "udp.checksum", "-e", "vxlan.vni"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    xenv.peers.append(wire)

    def wire_saw_four() -> bool:
        if wire.poll() is None:
            netns_exec(nsv, [sys.executable, "-c", FLOW_SENDER, "10.0.0.1", str(FLOW_PORT), far.address])
        return wire.poll() is not None

    wait_for(wire_saw_four, 60, "tshark in the far host to see 4 datagrams of one flow")
    out, _ = wire.communicate(timeout=CLI_TIMEOUT)
    seen = [line.split("\t") for line in out.splitlines() if line.count("\t") == 4]
    assert len(seen) == 4, out
    assert all(
        flag(df) and ttl == "64" and int(csum, 16) == 0 and vni == str(VNI) for df, ttl, _, csum, vni in seen
    ), seen
    ports = {int(row[2]) for row in seen}
    assert len(ports) == 1 and 49152 <= ports.pop() <= 65535, seen

    # The static entry: frames for ghost_mac go to the silent remote only, never flooded to B.
    with open_existing_namespace(nsv) as ipr:
        ipr.neigh(
            "add", dst="10.0.0.99", lladdr=ghost_mac, ifindex=index_of(ipr, "eth0"), state=NUD_PERMANENT
        )
    to_silent = remote_counters(sw, silent)["tx_packets"]
    # What B's VTEP is sent while echoes go to ghost_mac and to the kernel side by turns: the kernel
    # side's (the positive control: the capture sees B's traffic) and never ghost_mac's.
    cap = background_cli(xenv, sw, "capture", remote_port(B), "--count", "4", "--filter", "icmp")

    def alternate() -> bool:
        netns_exec(nsv, ["ping", "-n", "-c", "1", "-W", "1", "10.0.0.99"], check=False)
        netns_exec(nsv, ["ping", "-n", "-c", "1", "-W", "1", far.address], check=False)
        return cap.poll() is not None

    wait_for(alternate, 60, "a capture of 4 ICMP frames on B's port")
    captured, err = cap.communicate(timeout=15)
    assert cap.returncode == 0, err
    assert far.address in captured and "10.0.0.99" not in captured, captured
    assert remote_counters(sw, silent)["tx_packets"] >= to_silent + 2, "echoes toward the silent VTEP"
    assert remote_counters(sw, silent)["rx_packets"] == 0
    assert remote_counters(sw, B)["rx_packets"] > 0

    doctor = xenv.vswitch("doctor", "--name", sw.name, timeout=60)
    problems = [line for line in doctor.stdout.splitlines() if line.startswith("PROBLEM")]
    assert doctor.returncode == 1, doctor.stdout
    assert any(silent in line for line in problems), doctor.stdout
    assert not any(B in line for line in problems), doctor.stdout


# --- 7. bad command lines -----------------------------------------------------------------------------------
ERROR_CASES: dict[str, tuple[list[str], str]] = {
    # name: (the options after --ports V, with {ha} {hb} {ghost} filled in; a word the error must name)
    "unknown-segment": (["--vxlan", f"nope={VNI},local={A},netns={{ha}},remote={B}"], "nope"),
    "missing-local": (["--vxlan", f"lan={VNI},netns={{ha}},remote={B}"], "local"),
    "netns-missing": (["--vxlan", f"lan={VNI},local={A},netns={{ghost}},remote={B}"], "{ghost}"),
    "mtu-too-big-for-the-tunnel": (
        ["--mtu", str(UNDERLAY_MTU), "--vxlan", f"lan={VNI},local={A},netns={{ha}},remote={B}"],
        "mtu",
    ),
    "segment-mtu-too-big-for-the-tunnel": (
        ["--mtu", f"lan={UNDERLAY_MTU}", "--vxlan", f"lan={VNI},local={A},netns={{ha}},remote={B}"],
        "mtu",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_vxlan_command_line_is_one_error_line_and_leaves_nothing(xenv: Env, case: str) -> None:
    ha, hb = host_pair(xenv)
    names = {"ha": ha, "hb": hb, "ghost": xenv.ns("ghost")}
    options, word = ERROR_CASES[case]
    args = [option.format(**names) for option in options]
    root_before = set(links(None))
    ha_before = set(links(ha))
    nsv = xenv.ns("v")

    proc = xenv.vswitch("up", "--ports", nsv, "--name", xenv.instance_name(), *args, timeout=60)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vswitch: error: "), proc.stderr
    assert word.format(**names).lower() in lines[0].lower(), proc.stderr
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert namespaces(xenv.prefix) == {ha, hb}, "a namespace was left behind"
    assert set(links(ha)) == ha_before
    assert new_root_links(root_before) == set()
    assert not xenv.run_dir.exists() or list(xenv.run_dir.iterdir()) == []
