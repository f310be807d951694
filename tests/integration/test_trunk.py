"""802.1Q trunks (issue 15) against real namespaces, with Open vSwitch's userspace datapath on the other end.

The far end of vswitch's trunk is what a person would plug into it: ovs-vswitchd, run privately as the
bench runs it (PrivateOvs: its own database and sockets in the test's temp dir), inside the trunk's
namespace T, with a netdev-datapath bridge whose trunk port is T's eth0 (vswitch's tap) and whose
access ports, tag=10 and tag=20, are veths into the namespaces o10 and o20. This kernel has no 8021q
devices and no VLAN-filtering bridge: OVS is the real VLAN switch here. It needs
other_config:userspace-tso-enable=true: without it OVS reads its ports through AF_PACKET without the
virtio-net header, so the partial checksums and TSO super-frames of the namespaces' TCP reach it
unfinished and TCP stalls (pings pass); with it, nothing else (no ethtool) is needed. OVS rebuilds the
virtio-net header's offsets from its own parse of each frame, and a namespace's stack trusts a partial
checksum: so one test has a1 forward the stream through a veth without checksum offload, where the
kernel segments and checksums by the offsets vswitch left after the pop.

The edge cases run without OVS: scapy-built frames written into T's eth0 (or an access port's) by an
AF_PACKET socket, and AF_PACKET listeners in the namespaces that put back the tag the kernel moved
into the packet's metadata (PACKET_AUXDATA), so a listener sees a frame with its tags as the wire had
it. Every frame a test sends carries the test's random token and a label; listeners report the
labelled frames they hear and stop at a label of their own, sent last, after which nothing earlier
can still be on its way to them (a tap write delivers before it returns, OVS reads each port in
order): an "X never arrived" is asserted after a positive control, not after a sleep.
Namespaces the edge cases make themselves have IPv6 off, so their eth0 sends nothing of its own and
drop counts are exact. Nothing is made in the root namespace but OVS's ovsdb-server process, whose
only socket is a Unix socket in the temp dir.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from vswitch.tools.bench.ovs import PrivateOvs

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    addresses_of,
    background_cli,
    create_namespace,
    ipv4_addresses,
    links,
    mac_of,
    make_world,
    namespaces,
    netns_exec,
    new_root_links,
    pings,
    transfer,
    tx_checksum_offload_off,
    wait_for,
)

pytestmark = pytest.mark.root

LAN, DMZ = "lan", "dmz"
VID = {LAN: 10, DMZ: 20}
SUBNET = {LAN: "10.1.0.0/24", DMZ: "10.2.0.0/24"}
GATEWAY = {LAN: "10.1.0.1", DMZ: "10.2.0.1"}  # the router's .1 on each segment
ACCESS_IP = {LAN: "10.1.0.2", DMZ: "10.2.0.2"}  # a1, a2: the segments' access ports
BEHIND_OVS = {LAN: "10.1.0.50/24", DMZ: "10.2.0.50/24"}  # o10, o20
TCP_BYTES = 100_000_000
FIRST_PING = 30.0  # vswitch, OVS and the router's ARP all have to be there
HEAR = 10.0  # a frame a listener is told to expect arrives within this
LISTEN = 60.0  # a listener's own deadline: it stops by then whatever happens
BRIDGE = "br0"
STAMP_TYPE = 0x88B5  # IEEE 802 local experimental ethertype: no stack in a namespace answers it
TPID = 0x8100
BROADCAST = "ff:ff:ff:ff:ff:ff"
UNKNOWN_MAC = "02:5e:00:00:0b:0b"  # a unicast destination no namespace has: flooded in its segment
STRANGER_MAC = "02:5e:00:00:0d:0d"  # the source of frames that must be dropped (and not learned)
TOS = 0xE0  # CS7: a frame's IP priority must not leak into the PCP it leaves a trunk with


@pytest.fixture
def tenv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("vst" + 6 hex)."""
    with make_world(tmp_path, "vst") as world:
        yield world


class OvsSide:
    """The private OVS instances of one test; stop() ends them (teardown does, before the namespaces go)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.stacks: list[PrivateOvs] = []

    def bridge(self, ns: str, hosts: Sequence[Host], trunk: str = "eth0", trunks: Sequence[int] = ()) -> None:
        """ovs-vswitchd in ns with one netdev bridge: `trunk` its trunk port (trunks=..., or every VLAN
        when empty), and a veth `vVID` into each host's namespace as an access port tag=VID."""
        root_before = set(links(None))
        for host in hosts:
            attach(ns, f"v{host.vid}", host)
        ovs = PrivateOvs(self.env.tmp / f"ovs{len(self.stacks)}", ns)
        self.stacks.append(ovs)  # before start(): teardown stops whatever part of it did start
        ovs.start(tso=True)
        commands = ["add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev"]
        commands += ["fail_mode=standalone", "--", "add-port", BRIDGE, trunk]
        if trunks:
            commands.append("trunks=" + ",".join(str(vid) for vid in trunks))
        for host in hosts:
            commands += ["--", "add-port", BRIDGE, f"v{host.vid}", f"tag={host.vid}"]
        ovs.configure(*commands)  # standalone and no controller: the bridge's one flow is NORMAL
        rows = ovs.interfaces()
        for name in [trunk, *(f"v{host.vid}" for host in hosts)]:
            row = rows.get(name, {})
            assert isinstance(row.get("ofport"), int) and not row.get("error"), (
                name, row, ovs.log_tail("ovs-vswitchd"),
            )  # fmt: skip
        # The datapath's own ports (ovs-netdev, the bridge's internal port) are ovs-vswitchd's
        # namespace's, not the root's.
        assert {"ovs-netdev", BRIDGE} & (set(links(None)) - root_before) == set()
        assert {"ovs-netdev", BRIDGE} <= set(links(ns))

    def stop(self) -> list[str]:
        return [problem for ovs in reversed(self.stacks) for problem in ovs.stop()]


@pytest.fixture
def ovs(tenv: Env) -> Iterator[OvsSide]:
    """OVS instances for the test; stopped after it, pass or fail, before tenv removes the namespaces."""
    side = OvsSide(tenv)
    try:
        yield side
    finally:
        problems = side.stop()
        assert not problems, problems


# --- namespaces and links (pyroute2; nothing passes through the root namespace) ----------------------
@dataclass(frozen=True)
class Host:
    """A namespace on an access port of OVS: eth0 with address (ADDR/PREFIX) and a default route."""

    ns: str
    vid: int
    address: str
    gateway: str | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def attach(bridge_ns: str, ifname: str, host: Host) -> None:
    """A new namespace for host, joined by a veth (ifname in bridge_ns, eth0 in the host) made in
    bridge_ns with its peer born in the host's namespace."""
    create_namespace(host.ns)
    with IPRoute(netns=bridge_ns) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host.ns})
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
    with IPRoute(netns=host.ns) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ip, prefixlen = host.address.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
        ipr.link("set", index=index, state="up")
        if host.gateway:
            ipr.route("add", dst="0.0.0.0/0", gateway=host.gateway)


def quiet_namespace(name: str) -> None:
    """A namespace of the test's own, made before vswitch (which then uses it as it is), whose new
    links get no IPv6: its eth0 sends nothing unless a test writes into it."""
    create_namespace(name)
    netns_exec(name, ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])


def trunk_link(ns: str) -> dict[str, Any]:
    return links(ns)["eth0"]


# --- stamped frames: scapy builds, AF_PACKET sends, AF_PACKET listens ------------------------------------
LABEL_LEN = 16


def stamped(
    token: bytes, label: str, src: str, dst: str = BROADCAST, tags: Sequence[tuple[int, int]] = ()
) -> bytes:
    """An Ethernet frame (scapy) from src to dst under the 802.1Q tags (VID, PCP), outer first, whose
    payload is the test's token and a label, with the local experimental ethertype."""
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.packet import Raw

    payload = token + label.encode().ljust(LABEL_LEN, b"\0")
    assert len(payload) == len(token) + LABEL_LEN, label
    frame = Ether(dst=dst, src=src, type=TPID if tags else STAMP_TYPE)
    for n, (vid, pcp) in enumerate(tags):
        frame = frame / Dot1Q(vlan=vid, prio=pcp, type=TPID if n + 1 < len(tags) else STAMP_TYPE)
    return bytes(frame / Raw(payload)).ljust(60, b"\0")


def tags_of(frame: bytes) -> tuple[list[tuple[int, int]], int]:
    """The 802.1Q tags (VID, PCP) of a frame, outer first, and the ethertype after them."""
    found: list[tuple[int, int]] = []
    at = 12
    while int.from_bytes(frame[at : at + 2], "big") == TPID:
        tci = int.from_bytes(frame[at + 2 : at + 4], "big")
        found.append((tci & 0x0FFF, tci >> 13))
        at += 4
    return found, int.from_bytes(frame[at : at + 2], "big")


SENDER = """
import socket, sys
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
    sock.bind((sys.argv[1], 0))
    for frame in sys.argv[2:]:
        sock.send(bytes.fromhex(frame))
"""


def send(ns: str, *frames: bytes, ifname: str = "eth0") -> None:
    """Frames written as they are out of ns's ifname, in order, by one AF_PACKET socket."""
    netns_exec(ns, [sys.executable, "-c", SENDER, ifname, *(frame.hex() for frame in frames)])


LISTENER = """
import json, select, socket, struct, sys, time
ifname, token, stop, seconds = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3], float(sys.argv[4])
SOL_PACKET, PACKET_AUXDATA, ETH_P_ALL = 263, 8, 3
VLAN_VALID, VLAN_TPID_VALID = 0x10, 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
sock.bind((ifname, 0))
print("ready", flush=True)
deadline = time.monotonic() + seconds
while (left := deadline - time.monotonic()) > 0:
    if not select.select([sock], [], [], left)[0]:
        break
    data, ancillary, _, address = sock.recvmsg(1 << 16, socket.CMSG_SPACE(AUXDATA.size))
    if address[2] == socket.PACKET_OUTGOING:
        continue
    for level, kind, raw in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _, _, _, _, tci, tpid = AUXDATA.unpack_from(raw)
            if status & VLAN_VALID:  # the receive path moved the outer tag into metadata: put it back
                tpid = tpid if status & VLAN_TPID_VALID else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    at = data.find(token)
    if at < 0:
        continue
    label = data[at + len(token) : at + len(token) + 16].rstrip(b"\\0").decode()
    print(json.dumps({"label": label, "frame": data.hex()}), flush=True)
    if label == stop:
        break
print(json.dumps({"end": True}), flush=True)
"""


@dataclass(frozen=True)
class Heard:
    label: str
    frame: bytes

    @property
    def tags(self) -> list[tuple[int, int]]:
        return tags_of(self.frame)[0]

    @property
    def ethertype(self) -> int:
        return tags_of(self.frame)[1]


class Listener:
    """An AF_PACKET listener on ns's ifname, for frames carrying token, until the label `stop`."""

    def __init__(self, env: Env, ns: str, token: bytes, stop: str, ifname: str = "eth0") -> None:
        self.ns = ns
        self.stop = stop
        argv = [sys.executable, "-c", LISTENER, ifname, token.hex(), stop, str(LISTEN)]
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        env.peers.append(self.proc)  # type: ignore[arg-type]  # bytes, not str: only ever stopped there
        self.buffer = b""
        self.heard: list[Heard] = []
        self.ended = False
        assert self._line(15.0) == b"ready", f"the listener in {ns} did not start"

    def _line(self, timeout: float) -> bytes:
        """Its next stdout line (unbuffered reads, so select() never misses a line already read)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the listener in {self.ns} said nothing for {timeout:g}s")
            if select.select([self.proc.stdout], [], [], left)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    pytest.fail(f"the listener in {self.ns} exited {self.proc.wait(5)}: {err.strip()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def _next(self, timeout: float) -> Heard | None:
        record = json.loads(self._line(timeout))
        if record.get("end"):
            self.ended = True
            return None
        heard = Heard(record["label"], bytes.fromhex(record["frame"]))
        self.heard.append(heard)
        return heard

    def wait(self, label: str, timeout: float = HEAR) -> Heard:
        """The first frame labelled `label` that it heard, waiting for it up to timeout."""
        deadline = time.monotonic() + timeout
        for heard in self.heard:
            if heard.label == label:
                return heard
        while not self.ended:
            got = self._next(max(deadline - time.monotonic(), 0.001))
            if got is not None and got.label == label:
                return got
        pytest.fail(f"the listener in {self.ns} ended without hearing {label!r}: {self.labels()}")

    def finish(self, timeout: float = HEAR) -> list[str]:
        """Every label it heard, in order, once it has heard its stop label."""
        self.wait(self.stop, timeout)
        while not self.ended:
            self._next(timeout)
        assert self.proc.wait(CLI_TIMEOUT) == 0
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.labels()

    def labels(self) -> list[str]:
        return [heard.label for heard in self.heard]

    def get(self, label: str) -> Heard:
        (heard,) = [h for h in self.heard if h.label == label]
        return heard


# --- the switch's views -----------------------------------------------------------------------------------
def port_drops(sw: Switch, port: str, cli: bool = False) -> dict[str, int]:
    """A port's drops by reason: the control socket for polling, the CLI (cli) to assert."""
    stats = sw.query("stats") if cli else sw.request("stats")
    drops: dict[str, int] = stats["ports"][port]["drops"]
    return drops


def drops_reach(sw: Switch, port: str, reason: str, target: int) -> bool:
    return port_drops(sw, port).get(reason, 0) >= target


def the_trunk(sw: Switch) -> dict[str, Any]:
    (trunk,) = sw.query("status")["trunks"]
    result: dict[str, Any] = trunk
    return result


def fdb_places(sw: Switch, mac: str) -> set[tuple[str, str]]:
    """(segment, port) of every FDB row for mac, through the CLI."""
    return {(row["segment"], row["port"]) for row in sw.query("fdb") if row["mac"] == mac}


def segment_args(a1: str, a2: str) -> list[str]:
    return ["--segment", f"{LAN}={a1}@{SUBNET[LAN]}", "--segment", f"{DMZ}={a2}@{SUBNET[DMZ]}"]


def trunk_spec(t: str, vlans: dict[str, int], native: str | None = None) -> str:
    """The --trunk value: T=SEG:VID[,SEG:VID...][,native=SEG]."""
    items = [f"{segment}:{vid}" for segment, vid in vlans.items()]
    if native is not None:
        items.append(f"native={native}")
    return f"{t}=" + ",".join(items)


# --- the router on a stick, with OVS behind the trunk ------------------------------------------------------
@dataclass(frozen=True)
class Stick:
    """lan = a1 + VLAN 10 of T, dmz = a2 + VLAN 20 of T; OVS in T puts o10 in VLAN 10, o20 in VLAN 20."""

    sw: Switch
    a1: str
    a2: str
    t: str
    o10: Host
    o20: Host


def router_on_a_stick(env: Env, ovs: OvsSide) -> Stick:
    a1, a2, t = env.ns("a1"), env.ns("a2"), env.ns("t")
    sw = env.router(*segment_args(a1, a2), "--trunk", trunk_spec(t, VID))
    assert addresses_of(sw) == {a1: ACCESS_IP[LAN], a2: ACCESS_IP[DMZ]}
    o10 = Host(env.ns("o10"), VID[LAN], BEHIND_OVS[LAN], GATEWAY[LAN])
    o20 = Host(env.ns("o20"), VID[DMZ], BEHIND_OVS[DMZ], GATEWAY[DMZ])
    ovs.bridge(t, [o10, o20], trunks=sorted(VID.values()))
    wait_for(lambda: pings(o10.ns, ACCESS_IP[LAN]), FIRST_PING, "o10 (behind OVS) to ping a1")
    return Stick(sw, a1, a2, t, o10, o20)


# --- 1. through OVS: pings, routing between VLANs, 100 MB --------------------------------------------------
def test_ovs_vlans_reach_their_segments_and_the_router_routes_between_them(tenv: Env, ovs: OvsSide) -> None:
    s = router_on_a_stick(tenv, ovs)
    trunk = the_trunk(s.sw)
    expected = {
        "port": s.t, "namespace": s.t, "interface": "eth0", "vlans": {LAN: 10, DMZ: 20}, "native": None,
    }  # fmt: skip
    assert {key: trunk.get(key) for key in expected} == expected, trunk
    eth0 = trunk_link(s.t)
    assert "UP" in eth0["flags"] and ipv4_addresses(eth0) == [], eth0

    # The same VLAN: OVS's access port to vswitch's access port, both ways.
    assert pings(s.o10.ns, ACCESS_IP[LAN], count=3), "o10 -> a1 (VLAN 10 = lan)"
    wait_for(lambda: pings(s.o20.ns, ACCESS_IP[DMZ]), FIRST_PING, "o20 (behind OVS) to ping a2")
    assert pings(s.o20.ns, ACCESS_IP[DMZ], count=3), "o20 -> a2 (VLAN 20 = dmz)"
    assert pings(s.a1, s.o10.ip, count=3) and pings(s.a2, s.o20.ip, count=3)
    assert pings(s.o10.ns, GATEWAY[LAN]) and pings(s.o20.ns, GATEWAY[DMZ]), "the router's .1 over the trunk"
    # Routed: in tagged 10, out of the access port a2 (and back); then the router on a stick proper,
    # o10 to o20, in tagged 10 and out tagged 20 on the one trunk.
    assert pings(s.o10.ns, ACCESS_IP[DMZ], count=3), "o10 -> a2 through the router"
    assert pings(s.a2, s.o10.ip, count=3), "a2 -> o10 through the router"
    assert pings(s.o10.ns, s.o20.ip, count=3), "o10 -> o20: in on T.10, routed, out on T.20"
    assert pings(s.o20.ns, s.o10.ip, count=3), "o20 -> o10: in on T.20, routed, out on T.10"

    # Learned per VLAN sub-port, in the VLAN's segment.
    assert fdb_places(s.sw, mac_of(s.o10.ns)) == {(LAN, f"{s.t}.10")}
    assert fdb_places(s.sw, mac_of(s.o20.ns)) == {(DMZ, f"{s.t}.20")}

    # Bulk TCP, TSO super-frames popped (OVS -> a1) and pushed (a1 -> OVS), and routed across.
    transfer(tenv, s.o10.ns, s.a1, ACCESS_IP[LAN], TCP_BYTES, seed=151)
    transfer(tenv, s.a1, s.o10.ns, s.o10.ip, TCP_BYTES, seed=152)
    transfer(tenv, s.o10.ns, s.a2, ACCESS_IP[DMZ], TCP_BYTES, seed=153)
    transfer(tenv, s.o10.ns, s.o20.ns, s.o20.ip, TCP_BYTES // 4, seed=154)
    drops = s.sw.query("stats")["drops"]
    unexpected = {
        "bad-vnet-header",
        "truncated",
        "vlan-unknown",
        "vlan-on-access",
        "fragmentation-unsupported",
    }
    assert not unexpected & set(drops), drops


# --- 1b. TSO super-frames through a pop, checked by a kernel that has to finish them ----------------------


def test_tso_frames_popped_off_the_trunk_are_finished_right_by_a_kernel_that_forwards_them(
    tenv: Env, ovs: OvsSide
) -> None:
    """A stream from o10 to z, a namespace a1 routes to through a veth without checksum offload: OVS
    hands vswitch tagged TSO super-frames, vswitch pops the tag, and a1's kernel segments and
    checksums them in software, from the virtio-net header's offsets (csum_start, hdr_len), before z
    verifies every checksum. A pop that left those offsets 4 bytes off would stall the stream; a1's
    own stack (the other tests) trusts a partial checksum and would never notice. The push way cannot
    be seen like this: OVS sets the offsets afresh from its own parse of every frame it reads."""
    s = router_on_a_stick(tenv, ovs)
    z, z_ip = tenv.ns("z"), "10.9.0.2"
    create_namespace(z)
    with IPRoute(netns=z) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "fw0", "net_ns_fd": s.a1})
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=z_ip, prefixlen=24)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway="10.9.0.1")
    with IPRoute(netns=s.a1) as ipr:
        index = ipr.link_lookup(ifname="fw0")[0]
        ipr.addr("add", index=index, address="10.9.0.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
    netns_exec(s.a1, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    tx_checksum_offload_off(s.a1, "fw0")
    with IPRoute(netns=s.o10.ns) as ipr:
        ipr.route("add", dst="10.9.0.0/24", gateway=ACCESS_IP[LAN])  # a1, on lan: no router between
    wait_for(lambda: pings(s.o10.ns, z_ip), FIRST_PING, "o10 to ping z through a1")

    before = s.sw.query("stats")["ports"][s.a1]
    transfer(tenv, s.o10.ns, z, z_ip, TCP_BYTES // 4, seed=155)
    after = s.sw.query("stats")["ports"][s.a1]
    frames, nbytes = after["tx_packets"] - before["tx_packets"], after["tx_bytes"] - before["tx_bytes"]
    # Super-frames crossed, not MTU-sized frames: far fewer than 1500-byte segments would need.
    assert nbytes >= TCP_BYTES // 4 and frames < nbytes // 1500 // 4, (frames, nbytes)
    transfer(tenv, z, s.o10.ns, s.o10.ip, TCP_BYTES // 4, seed=156)


# --- 2. isolation, with positive controls -----------------------------------------------------------------
def test_ovs_vlan_floods_stay_in_their_vlan_and_never_come_back(tenv: Env, ovs: OvsSide) -> None:
    """Stamped broadcasts and unknown unicasts into VLAN 10 (from o10 behind OVS, and from a1) reach
    the other side of VLAN 10 once, untagged, and never VLAN 20's a2 and o20, nor their own sender.
    dmz's own frames, last, are the controls: they reach a2 and o20, and nothing of lan's is ahead."""
    s = router_on_a_stick(tenv, ovs)
    wait_for(lambda: pings(s.o20.ns, ACCESS_IP[DMZ]), FIRST_PING, "o20 (behind OVS) to ping a2")
    token = secrets.token_bytes(8)
    lan_end, dmz_end = "end-lan", "end-dmz"
    a1 = Listener(tenv, s.a1, token, lan_end)
    o10 = Listener(tenv, s.o10.ns, token, lan_end)
    a2 = Listener(tenv, s.a2, token, dmz_end)
    o20 = Listener(tenv, s.o20.ns, token, dmz_end)
    mac = {ns: mac_of(ns) for ns in (s.a1, s.a2, s.o10.ns, s.o20.ns)}

    send(s.o10.ns, stamped(token, "bcast-o10", mac[s.o10.ns]))
    assert a1.wait("bcast-o10").tags == []
    send(s.a1, stamped(token, "bcast-a1", mac[s.a1]))
    assert o10.wait("bcast-a1").tags == []
    send(s.o10.ns, stamped(token, "unknown-o10", mac[s.o10.ns], UNKNOWN_MAC))
    assert a1.wait("unknown-o10").tags == []
    send(s.a1, stamped(token, "unknown-a1", mac[s.a1], UNKNOWN_MAC))
    assert o10.wait("unknown-a1").tags == []

    # dmz's controls, each heard at the far end of VLAN 20; then lan's own ends.
    send(s.o20.ns, stamped(token, dmz_end, mac[s.o20.ns]))
    assert a2.finish() == [dmz_end], "a lan frame reached a2 (dmz)"
    send(s.a2, stamped(token, dmz_end, mac[s.a2]))
    assert o20.finish() == [dmz_end], "a lan frame reached o20 (VLAN 20)"
    send(s.o10.ns, stamped(token, lan_end, mac[s.o10.ns]))
    assert a1.finish() == ["bcast-o10", "unknown-o10", lan_end], "a1 heard something twice or from dmz"
    send(s.a1, stamped(token, lan_end, mac[s.a1]))
    assert o10.finish() == ["bcast-a1", "unknown-a1", lan_end], "o10 heard its own flood back, or dmz's"
    assert fdb_places(s.sw, UNKNOWN_MAC) == set()


# --- 3. the tags on the trunk, as capture shows them -------------------------------------------------------
def test_capture_on_the_trunk_shows_vid_10_for_lan_20_for_dmz_and_pcp_0_out(tenv: Env, ovs: OvsSide) -> None:
    """Pings o10 -> a1 and o10 -> o20 (router on a stick) with IP precedence 7 (TOS 0xe0), o20 -> a2:
    on T every ICMP frame is tagged with the VLAN of the OVS-side host it comes from or goes to, every
    frame vswitch writes to T is tagged, and with PCP 0 (the IP priority does not leak into it)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.utils import PcapNgReader

    s = router_on_a_stick(tenv, ovs)
    wait_for(lambda: pings(s.o20.ns, ACCESS_IP[DMZ]), FIRST_PING, "o20 (behind OVS) to ping a2")
    path = tenv.tmp / "trunk.pcapng"
    count = 60
    cap = background_cli(tenv, s.sw, "capture", s.t, "-w", str(path), "-c", str(count))
    rounds = [
        (s.o10.ns, ACCESS_IP[LAN], ["-Q", str(TOS)]),
        (s.o20.ns, ACCESS_IP[DMZ], []),
        (s.o10.ns, s.o20.ip, ["-Q", str(TOS)]),
    ]

    def captured() -> bool:  # a capture attaches asynchronously: ping until it has its count
        for src, dst, extra in rounds:
            if cap.poll() is not None:
                break
            netns_exec(src, ["ping", "-n", "-c", "1", "-W", "1", *extra, dst], check=False)
        return cap.poll() is not None

    wait_for(captured, 60, f"capture of {count} frames on {s.t}")
    assert cap.returncode == 0, cap.stderr.read() if cap.stderr else ""

    reader = PcapNgReader(str(path))
    packets = list(reader)
    reader.close()
    assert len(packets) == count
    side_vid = {mac_of(s.o10.ns): 10, mac_of(s.o20.ns): 20}
    inbound, outbound = 1, 2  # the epb_flags direction: read from T (from OVS), written to T
    seen: set[tuple[int, int, str, str, int, int]] = set()  # direction, VID, IP src, dst, ICMP type, TOS
    for p in packets:
        if p.direction == outbound:
            assert Dot1Q in p and p[Dot1Q].vlan in (10, 20), p.summary()  # no native: always tagged
            assert p[Dot1Q].prio == 0, p.summary()
        if ICMP not in p:
            continue
        assert Dot1Q in p, p.summary()
        peer = p[Ether].src if p.direction == inbound else p[Ether].dst
        assert p[Dot1Q].vlan == side_vid[peer], (p.direction, p.summary())
        seen.add((p.direction or 0, p[Dot1Q].vlan, p[IP].src, p[IP].dst, p[ICMP].type, p[IP].tos))
    o10, o20 = s.o10.ip, s.o20.ip
    for wanted in [
        (inbound, 10, o10, ACCESS_IP[LAN], 8, TOS),  # o10's request, tagged by OVS
        (outbound, 10, ACCESS_IP[LAN], o10, 0, TOS),  # a1's reply, pushed by vswitch: PCP 0 (above)
        (inbound, 20, o20, ACCESS_IP[DMZ], 8, 0),
        (outbound, 20, ACCESS_IP[DMZ], o20, 0, 0),
        (inbound, 10, o10, o20, 8, TOS),  # the router on a stick: in on VLAN 10 ...
        (outbound, 20, o10, o20, 8, TOS),  # ... out on VLAN 20
        (inbound, 20, o20, o10, 0, TOS),
        (outbound, 10, o20, o10, 0, TOS),
    ]:
        assert wanted in seen, (wanted, sorted(seen))


# --- 4. edge cases, scapy frames straight into the trunk (no OVS) -------------------------------------------
@dataclass(frozen=True)
class Bare:
    """lan = a1 + VLAN 10 of T, dmz = a2 + VLAN 20 of T; T made by the test, silent."""

    sw: Switch
    a1: str
    a2: str
    t: str


def bare_trunk(env: Env, vlans: dict[str, int], native: str | None = None, *extra: str) -> Bare:
    a1, a2, t = env.ns("a1"), env.ns("a2"), env.ns("t")
    quiet_namespace(t)  # an existing namespace: vswitch uses it, and leaves it
    sw = env.router(*segment_args(a1, a2), "--trunk", trunk_spec(t, vlans, native), *extra)
    assert addresses_of(sw) == {a1: ACCESS_IP[LAN], a2: ACCESS_IP[DMZ]}
    return Bare(sw, a1, a2, t)


def test_edge_cases_are_named_drops_double_tags_keep_the_inner_and_forwarding_goes_on(tenv: Env) -> None:
    b = bare_trunk(tenv, VID)
    token = secrets.token_bytes(8)
    t_mac, a1_mac, a2_mac = mac_of(b.t), mac_of(b.a1), mac_of(b.a2)
    a1 = Listener(tenv, b.a1, token, "end-lan")
    a2 = Listener(tenv, b.a2, token, "end-dmz")
    t = Listener(tenv, b.t, token, "end-t")
    before = {port: port_drops(b.sw, port) for port in (b.t, b.a1, b.a2)}

    send(b.t, stamped(token, "hello-10", t_mac, tags=[(10, 0)]))  # the positive control first
    assert a1.wait("hello-10").tags == []

    # A VID that is not on the trunk, three times: vlan-unknown on T, each.
    send(b.t, *(stamped(token, f"vid30-{n}", STRANGER_MAC, tags=[(30, 0)]) for n in range(3)))
    target = before[b.t].get("vlan-unknown", 0) + 3
    wait_for(partial(drops_reach, b.sw, b.t, "vlan-unknown", target), HEAR, "3 vlan-unknown drops on T")
    # Untagged, and T has no native segment, twice: vlan-untagged on T.
    send(b.t, *(stamped(token, f"untagged-{n}", STRANGER_MAC) for n in range(2)))
    target = before[b.t].get("vlan-untagged", 0) + 2
    wait_for(partial(drops_reach, b.sw, b.t, "vlan-untagged", target), HEAR, "2 vlan-untagged drops on T")
    # Tagged frames (lan's VID, and dmz's) on lan's access port a1, whose segment is on a trunk.
    send(b.a1, *(stamped(token, f"on-access-{vid}", STRANGER_MAC, tags=[(vid, 0)]) for vid in (10, 20)))
    target = before[b.a1].get("vlan-on-access", 0) + 2
    wait_for(partial(drops_reach, b.sw, b.a1, "vlan-on-access", target), HEAR, "2 vlan-on-access drops on a1")

    # Double-tagged, outer 10 (lan), inner 99: a1 gets it with the inner tag still on.
    send(b.t, stamped(token, "double", t_mac, tags=[(10, 3), (99, 5)]))
    double = a1.wait("double")
    assert (double.tags, double.ethertype) == ([(99, 5)], STAMP_TYPE), double.frame.hex()

    # Forwarding goes on: each way on each VLAN; a1's and a2's frames leave T tagged, PCP 0.
    send(b.a1, stamped(token, "from-a1", a1_mac))
    assert t.wait("from-a1").tags == [(10, 0)]
    send(b.a2, stamped(token, "from-a2", a2_mac))
    assert t.wait("from-a2").tags == [(20, 0)]
    send(
        b.t,
        stamped(token, "end-lan", t_mac, tags=[(10, 0)]),
        stamped(token, "end-dmz", t_mac, tags=[(20, 0)]),
    )
    send(b.a1, stamped(token, "end-t", a1_mac))
    assert a1.finish() == ["hello-10", "double", "end-lan"]
    assert a2.finish() == ["end-dmz"]
    assert t.finish() == ["from-a1", "from-a2", "end-t"]
    assert pings(b.a1, ACCESS_IP[DMZ], count=2) and pings(b.a2, ACCESS_IP[LAN], count=2), "routing after"

    # Each counted by name, where it came in, and exactly once; nothing dropped was learned. T's MAC
    # lives in both segments, once per VLAN sub-port.
    after = {port: port_drops(b.sw, port, cli=True) for port in (b.t, b.a1, b.a2)}

    def delta(port: str, reason: str) -> int:
        return after[port].get(reason, 0) - before[port].get(reason, 0)

    assert (delta(b.t, "vlan-unknown"), delta(b.t, "vlan-untagged"), delta(b.a1, "vlan-on-access")) == (
        3,
        2,
        2,
    )
    assert delta(b.t, "vlan-on-access") == delta(b.a1, "vlan-unknown") == delta(b.a2, "vlan-on-access") == 0
    assert fdb_places(b.sw, STRANGER_MAC) == set()
    assert fdb_places(b.sw, t_mac) == {(LAN, f"{b.t}.10"), (DMZ, f"{b.t}.20")}


def test_native_segment_carries_untagged_frames_both_ways(tenv: Env) -> None:
    """T carries dmz tagged 20 and lan untagged (native=lan): an untagged broadcast into T reaches a1
    and not a2; a1's frames leave T untagged, a2's tagged 20; VID 10 is now unknown on T. vswitch
    found T already there: it leaves it there when it stops."""
    b = bare_trunk(tenv, {DMZ: 20}, LAN)
    trunk = the_trunk(b.sw)
    assert (trunk.get("vlans"), trunk.get("native")) == ({DMZ: 20}, LAN), trunk
    token = secrets.token_bytes(8)
    t_mac, a1_mac, a2_mac = mac_of(b.t), mac_of(b.a1), mac_of(b.a2)
    a1 = Listener(tenv, b.a1, token, "end-lan")
    a2 = Listener(tenv, b.a2, token, "end-dmz")
    t = Listener(tenv, b.t, token, "end-t")
    before = port_drops(b.sw, b.t)

    send(b.t, stamped(token, "native", t_mac))
    assert a1.wait("native").tags == []
    send(b.t, stamped(token, "vid10", STRANGER_MAC, tags=[(10, 0)]))
    target = before.get("vlan-unknown", 0) + 1
    wait_for(partial(drops_reach, b.sw, b.t, "vlan-unknown", target), HEAR, "a vlan-unknown drop on T")
    send(b.a1, stamped(token, "from-a1", a1_mac))
    assert t.wait("from-a1").tags == []
    send(b.a2, stamped(token, "from-a2", a2_mac))
    assert t.wait("from-a2").tags == [(20, 0)]
    send(b.t, stamped(token, "end-lan", t_mac), stamped(token, "end-dmz", t_mac, tags=[(20, 0)]))
    send(b.a2, stamped(token, "end-t", a2_mac))
    assert a1.finish() == ["native", "end-lan"]
    assert a2.finish() == ["end-dmz"]
    assert t.finish() == ["from-a1", "from-a2", "end-t"]
    after = port_drops(b.sw, b.t, cli=True)
    assert after.get("vlan-untagged", 0) == before.get("vlan-untagged", 0)
    # T's MAC, learned from untagged frames in lan and from VLAN 20 in dmz (how the contract names the
    # native sub-port is open: T itself, or a name of its own on T).
    places = dict(fdb_places(b.sw, t_mac))
    assert set(places) == {LAN, DMZ} and places[DMZ] == f"{b.t}.20", places
    assert places[LAN] == b.t or places[LAN].startswith(f"{b.t}."), places

    assert b.sw.stop() == 0
    assert b.t in namespaces(tenv.prefix) and "eth0" not in links(b.t)


def test_priority_is_kept_trunk_to_trunk_and_lost_by_a_pop(tenv: Env) -> None:
    """Two trunks, T (lan 10, dmz 20) and U (lan 110, dmz 120): a frame into T tagged 10 with PCP 5
    leaves U tagged 110 with PCP 5 (dmz likewise with 3), and a1 untagged; a1's leaves U with PCP 0."""
    u = tenv.ns("u")
    quiet_namespace(u)
    b = bare_trunk(tenv, VID, None, "--trunk", trunk_spec(u, {LAN: 110, DMZ: 120}))
    assert sorted(trunk["port"] for trunk in b.sw.query("status")["trunks"]) == sorted([b.t, u])
    token = secrets.token_bytes(8)
    t_mac, a1_mac = mac_of(b.t), mac_of(b.a1)
    a1 = Listener(tenv, b.a1, token, "end-lan")
    listen_u = Listener(tenv, u, token, "end-u")

    send(
        b.t, stamped(token, "pcp5", t_mac, tags=[(10, 5)]), stamped(token, "pcp3-dmz", t_mac, tags=[(20, 3)])
    )
    assert listen_u.wait("pcp5").tags == [(110, 5)]
    assert listen_u.wait("pcp3-dmz").tags == [(120, 3)]
    assert a1.wait("pcp5").tags == []
    send(b.a1, stamped(token, "from-a1", a1_mac))
    assert listen_u.wait("from-a1").tags == [(110, 0)]
    send(b.a1, stamped(token, "end-u", a1_mac))
    send(b.t, stamped(token, "end-lan", t_mac, tags=[(10, 0)]))
    assert listen_u.finish() == ["pcp5", "pcp3-dmz", "from-a1", "end-u"]
    assert a1.finish() == ["pcp5", "end-lan"]


def test_trunk_with_ports_carries_the_one_segment_lan(tenv: Env) -> None:
    """--ports a1,a3 --trunk T=lan:10: T's eth0 comes up with no address and tags lan 10; vswitch made
    T, so it takes it away when it stops."""
    a1, a3, t = tenv.ns("a1"), tenv.ns("a3"), tenv.ns("t")
    sw = tenv.switch(a1, a3, args=["--trunk", f"{t}=lan:10"])
    ip = addresses_of(sw)
    assert set(ip) == {a1, a3}, ip
    trunk = the_trunk(sw)
    assert {k: trunk.get(k) for k in ("port", "namespace", "interface", "vlans", "native")} == {
        "port": t, "namespace": t, "interface": "eth0", "vlans": {LAN: 10}, "native": None,
    }, trunk  # fmt: skip
    eth0 = trunk_link(t)
    assert "UP" in eth0["flags"] and ipv4_addresses(eth0) == [], eth0
    assert pings(a1, ip[a3], count=2)

    token = secrets.token_bytes(8)
    listen_t = Listener(tenv, t, token, "end-t")
    listen_a3 = Listener(tenv, a3, token, "end-a3")
    send(t, stamped(token, "to-lan", mac_of(t), tags=[(10, 0)]))
    assert listen_a3.wait("to-lan").tags == []
    send(a1, stamped(token, "from-a1", mac_of(a1)), stamped(token, "end-t", mac_of(a1)))
    assert listen_t.finish() == ["from-a1", "end-t"]
    assert listen_t.get("from-a1").tags == [(10, 0)]
    send(t, stamped(token, "end-a3", mac_of(t), tags=[(10, 0)]))
    assert listen_a3.finish() == ["to-lan", "from-a1", "end-t", "end-a3"]

    assert sw.stop() == 0
    assert t not in namespaces(tenv.prefix)


def test_the_python_api_hook_sees_a_trunks_frames_tagged_and_can_drop_them(
    tenv: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api.Switch(trunks=[...]): the packet hook is given each frame the trunk reads, under the trunk's
    label and with its tag; what it drops is counted as 'hook', what it passes reaches lan."""
    from vswitch.api import Switch as ApiSwitch

    monkeypatch.setenv("VSWITCH_RUN_DIR", str(tenv.run_dir))
    a1, t = tenv.ns("a1"), tenv.ns("t")
    token = secrets.token_bytes(8)
    hooked: list[tuple[str, bytes]] = []

    def drop_marked(port: str, frame: bytes) -> bytes | None:
        if token in frame:
            hooked.append((port, frame[12:14]))
            if b"drop-me" in frame:
                return None
        return frame

    with ApiSwitch([a1], trunks=[f"{t}=lan:10"]) as sw:
        sw.hook = drop_marked
        listen = Listener(tenv, a1, token, "end")
        send(
            t,
            stamped(token, "drop-me", mac_of(t), tags=[(10, 0)]),
            stamped(token, "end", mac_of(t), tags=[(10, 0)]),
        )
        assert listen.finish() == ["end"]
        assert hooked == [(t, b"\x81\x00"), (t, b"\x81\x00")], hooked
        assert sw.stats()["drops"].get("hook") == 1


# --- 5. bad --trunk options -------------------------------------------------------------------------------
TRUNK_ERRORS: dict[str, tuple[str, str]] = {
    # name: (the --trunk value after "T=", a word the error line must name)
    "unknown-segment": ("lan:10,nope:20", "nope"),
    "unknown-native": ("lan:10,native=nope", "nope"),
    "vid-0": ("lan:0", "0"),
    "vid-4095": ("lan:4095", "4095"),
    "vid-4096": ("lan:4096", "4096"),
    "same-vid-twice": ("lan:10,dmz:10", "10"),
    "same-segment-twice": ("lan:10,lan:20", "lan"),
    "native-also-tagged": ("lan:10,dmz:20,native=lan", "lan"),
}


@pytest.mark.parametrize("case", list(TRUNK_ERRORS))
def test_bad_trunk_is_one_error_line_and_leaves_nothing(tenv: Env, case: str) -> None:
    spec, word = TRUNK_ERRORS[case]
    a1, a2, t = tenv.ns("a1"), tenv.ns("a2"), tenv.ns("t")
    root_before = set(links(None))
    proc = tenv.vswitch(
        "up", *segment_args(a1, a2), "--trunk", f"{t}={spec}", "--name", tenv.instance_name(), timeout=60
    )
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vswitch: error: "), proc.stderr
    assert re.search(rf"(?<![\w.]){re.escape(word)}(?![\w.])", lines[0]), (word, proc.stderr)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert namespaces(tenv.prefix) == set(), "a namespace was left behind"
    assert new_root_links(root_before) == set()
    assert not tenv.run_dir.exists() or list(tenv.run_dir.iterdir()) == []
