"""The VXLAN pair: two end namespaces on one L2 segment carried over a UDP underlay, by the kernel and
by two vswitch processes.

Both contenders build the same picture:

    n1 eth0 10.0.0.1/24 (MTU 1450)                                n2 eth0 10.0.0.2/24 (MTU 1450)
        |                                                              |
    host A: VTEP 198.18.10.1 ---- underlay veth, MTU 1500 ---- host B: VTEP 198.18.10.2
            (kernel: veth + vxlan0 in bridge br0;                      (the mirror)
             vswitch: `vswitch up --ports n1 --vxlan lan=42,...`)

VNI 42, UDP port 4789 (IANA's VXLAN port), unicast: each VTEP names the other as its remote, so no
multicast is needed and the underlay is one veth pair between the two host namespaces. 1450 is 1500
less VXLAN's 50 bytes of outer headers (14 Ethernet + 20 IPv4 + 8 UDP + 8 VXLAN), so no inner frame is
fragmented in the underlay. The underlay is in 198.18.0.0/15 (RFC 2544's benchmarking range), and
nothing of either contender is in the root namespace: the underlay veth is made in host A with its
peer in host B, the kernel's bridge, vxlan device and veths inside the host namespaces.

This module holds the plumbing the two contenders share (topologies.py builds them); everything
netlink does goes through pyroute2.
"""

from __future__ import annotations

from pyroute2 import IPRoute

VNI = 42
PORT = 4789  # IANA's VXLAN port (RFC 7348)
UNDERLAY_PREFIX = 24
UNDERLAY_MTU = 1500
OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
OVERLAY_MTU = UNDERLAY_MTU - OVERHEAD
UNDERLAY_IF = "ul0"  # the underlay veth's name in both host namespaces
SEGMENT = "lan"  # what vswitch calls the segment of --ports
# (host tag, its underlay address, end tag, the end's address) for host A, then host B.
SIDES: tuple[tuple[str, str, str, str], ...] = (
    ("ha", "198.18.10.1", "n1", "10.0.0.1"),
    ("hb", "198.18.10.2", "n2", "10.0.0.2"),
)
END_PREFIX = 24
END_IF = "eth0"


def underlay(host_a: str, host_b: str) -> None:
    """One veth pair between the two host namespaces (made in A, its peer in B), addressed and up."""
    with IPRoute(netns=host_a) as ipr:
        ipr.link("add", ifname=UNDERLAY_IF, kind="veth", peer={"ifname": UNDERLAY_IF, "net_ns_fd": host_b})
    for host, (_, address, _, _) in zip((host_a, host_b), SIDES, strict=True):
        with IPRoute(netns=host) as ipr:
            index = ipr.link_lookup(ifname=UNDERLAY_IF)[0]
            ipr.link("set", index=index, mtu=UNDERLAY_MTU)
            ipr.addr("add", index=index, address=address, prefixlen=UNDERLAY_PREFIX)
            ipr.link("set", index=index, state="up")


def kernel_vtep(host: str, end: str, local: str, remote: str, end_address: str) -> None:
    """In host: vxlan0 (VNI 42, local, unicast remote, port 4789) and a veth to end's eth0, both in a
    Linux bridge br0, every overlay link at MTU 1450; end's eth0 addressed."""
    with IPRoute(netns=host) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        bridge = ipr.link_lookup(ifname="br0")[0]
        ipr.link(
            "add",
            ifname="vxlan0",
            kind="vxlan",
            vxlan_id=VNI,
            vxlan_local=local,
            vxlan_group=remote,  # a unicast group is the one remote VTEP (iproute2's `remote`)
            vxlan_port=PORT,
        )
        ipr.link("add", ifname="p0", kind="veth", peer={"ifname": END_IF, "net_ns_fd": end})
        for port in ("vxlan0", "p0"):
            index = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=index, mtu=OVERLAY_MTU)
            ipr.link("set", index=index, master=bridge, state="up")
        ipr.link("set", index=bridge, state="up")  # a bridge's MTU follows its ports' smallest: 1450
    with IPRoute(netns=end) as ipr:
        index = ipr.link_lookup(ifname=END_IF)[0]
        ipr.link("set", index=index, mtu=OVERLAY_MTU)
        ipr.addr("add", index=index, address=end_address, prefixlen=END_PREFIX)
        ipr.link("set", index=index, state="up")


def vswitch_topology(host: str, end: str, local: str, remote: str, end_address: str) -> list[str]:
    """`vswitch up` arguments for one host: end's eth0 on segment lan, lan carried over VXLAN by a
    socket in host. vswitch makes end and its tap; the tap takes the segment's MTU (1450) itself."""
    ports = f"{end}:{END_IF}={end_address}/{END_PREFIX}"
    vxlan = f"{SEGMENT}={VNI},local={local},netns={host},remote={remote}"
    return ["--ports", ports, "--vxlan", vxlan]


def mtu_problems(ends: list[str]) -> list[str]:
    """What is wrong with the end namespaces' MTU: both contenders must carry 1450-byte frames, or
    their TCP figures measure different segment sizes (and a larger one cannot cross the underlay)."""
    problems = []
    for end in ends:
        with IPRoute(netns=end) as ipr:
            mtu = ipr.get_links(ipr.link_lookup(ifname=END_IF)[0])[0].get("IFLA_MTU")
        if mtu != OVERLAY_MTU:
            problems.append(f"{end}'s {END_IF} has MTU {mtu}, not {OVERLAY_MTU}")
    return problems
