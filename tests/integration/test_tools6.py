"""Every debug tool in both families (issue 17), against real namespaces: a capture of `ping -6` through
`icmp6 and host ADDR`, pingall's IPv4 and IPv6 matrices on a dual-stack routed topology (and a switched
one), and doctor naming a broken IPv6 address, RA default route and MTU, whose own fixes heal it.

The routed topology is lan = a, b and dmz = c out of fd00:77::/48; the namespaces take their IPv6 by
SLAAC from the router's advertisements, and `up` is ready once they have it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from socket import AF_INET6
from typing import Any

import pytest
from pyroute2 import IPRoute

from .conftest import CLI_TIMEOUT, Env, Switch, background_cli, make_world, netns_exec, wait_for

pytestmark = pytest.mark.root

SUBNET6 = "fd00:77::/48"
LAN6 = "fd00:77::/64"
RTPROT_RA = 9


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The shared harness with this file's namespace prefix ("v6t" + 6 hex), removed pass or fail."""
    with make_world(tmp_path, "v6t") as world:
        yield world


def dual_stack(env: Env, *extra: str) -> tuple[Switch, dict[str, str], dict[str, str]]:
    """(switch, tag -> namespace, namespace -> its SLAAC address) for lan = a, b and dmz = c."""
    ns = {t: env.ns(t) for t in ("a", "b", "c")}
    sw = env.router(
        "--segment", f"lan={ns['a']},{ns['b']}", "--segment", f"dmz={ns['c']}", "--subnet6", SUBNET6, *extra
    )  # fmt: skip
    ip6 = {p["namespace"]: p["address6"].split("/")[0] for p in sw.table["ports"] if p["address6"]}
    assert set(ns.values()) <= set(ip6), sw.table  # (an uplink's outside namespace has one too)
    return sw, ns, ip6


def vs(env: Env, sw: Switch, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return env.vswitch(*args, "--name", sw.name, timeout=timeout)


def ping6(ns: str, address: str) -> bool:
    argv = ["ping", "-6", "-n", "-q", "-c", "1", "-W", "1", address]
    return netns_exec(ns, argv, check=False, timeout=10).returncode == 0


def problems(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("PROBLEM")]


def fixes(out: str) -> list[str]:
    return [line.split("fix: ", 1)[1] for line in out.splitlines() if line.strip().startswith("fix: ")]


# --- capture ---------------------------------------------------------------------------------------------
def test_capture_of_ping6_through_icmp6_and_host(env: Env) -> None:
    """Capture on c with `icmp6 and host A`, while a and b both ping c: exactly a's echoes, both ways,
    and nothing of b's (nor the router's neighbour discovery, which names neither a nor c's header)."""
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.utils import rdpcap

    sw, ns, ip6 = dual_stack(env)
    a, b, c = ns["a"], ns["b"], ns["c"]
    path = env.tmp / "c.pcap"
    cap = background_cli(env, sw, "capture", c, "-w", str(path), "-c", "4", "-f", f"icmp6 and host {ip6[a]}")

    def captured_enough() -> bool:
        # the capture attaches asynchronously: ping, one echo at a time, until it has seen 4 frames
        if cap.poll() is None:
            assert ping6(b, ip6[c]), "b cannot ping c over IPv6"
            assert ping6(a, ip6[c]), "a cannot ping c over IPv6"
        return cap.poll() is not None

    wait_for(captured_enough, 30, "a capture of 4 ICMPv6 frames of a's")
    _out, err = cap.communicate(timeout=CLI_TIMEOUT)
    assert cap.returncode == 0, err
    packets = rdpcap(str(path))
    assert len(packets) == 4
    for packet in packets:
        assert {packet[IPv6].src, packet[IPv6].dst} == {ip6[a], ip6[c]}, packet.summary()
    requests = [p for p in packets if p.haslayer(ICMPv6EchoRequest)]
    replies = [p for p in packets if p.haslayer(ICMPv6EchoReply)]
    assert len(requests) + len(replies) == 4 and requests and replies
    assert all(p[IPv6].dst == ip6[c] for p in requests) and all(p[IPv6].src == ip6[c] for p in replies)


# --- pingall ---------------------------------------------------------------------------------------------
def test_pingall_reaches_every_pair_in_both_families_on_a_dual_stack_router(env: Env) -> None:
    sw, ns, ip6 = dual_stack(env)
    out = vs(env, sw, "pingall", "--json", "--timeout", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    labels = [ns["a"], ns["b"], ns["c"]]
    for family, addresses in (("v4", {p["port"]: p["address"].split("/")[0] for p in sw.table["ports"]}),
                              ("v6", ip6)):  # fmt: skip
        matrix = result if family == "v4" else result["v6"]
        assert matrix["ports"] == labels
        assert (matrix["reachable"], matrix["tried"]) == (6, 6), matrix
        assert len(matrix["pairs"]) == 6
        for pair in matrix["pairs"]:
            assert pair["result"] == "ok", (family, pair)
            assert pair["address"] == addresses[pair["to"]]
    text = vs(env, sw, "pingall", "--timeout", "2")
    assert text.returncode == 0, text.stdout
    assert "IPv4 reachability" in text.stdout and "IPv6 reachability" in text.stdout
    assert "\n6/6 reachable\n" in text.stdout and "IPv6: 6/6 reachable\n" in text.stdout


def test_pingall_on_a_switched_segment_with_static_ipv6(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b, args=["--subnet6", "fd00:1::/64"])
    out = vs(env, sw, "pingall", "--json", "--timeout", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    v6 = json.loads(out.stdout)["v6"]
    assert (v6["reachable"], v6["tried"]) == (2, 2)
    assert {p["address"] for p in v6["pairs"]} == {"fd00:1::1", "fd00:1::2"}


def test_pingall_without_ipv6_has_no_v6_matrix(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b)
    out = vs(env, sw, "pingall", "--json", "--timeout", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["v6"] is None and (result["reachable"], result["tried"]) == (2, 2)
    assert "IPv6" not in vs(env, sw, "pingall", "--timeout", "2").stdout


def test_pingall_explains_why_the_outside_cannot_reach_in_through_nat66(env: Env) -> None:
    """With an uplink (NAT66 masquerade, the default) the inside reaches the outside in both families;
    the outside namespace has no route back to the inside prefix, and --explain says so for IPv6 as it
    does for IPv4, after tracing the echo through the switch."""
    sw, ns, ip6 = dual_stack(env, "--uplink", env.ns("w"))
    wan = env.ns("w")
    out = vs(env, sw, "pingall", "--explain", "--json", "--timeout", "0.5")
    assert out.returncode == 1, out.stdout + out.stderr
    result = json.loads(out.stdout)
    for matrix in (result, result["v6"]):
        failed = {(p["from"], p["to"]) for p in matrix["pairs"] if p["result"] != "ok"}
        assert failed == {(wan, n) for n in ns.values()}, matrix
        assert (matrix["reachable"], matrix["tried"]) == (9, 12)
    for pair in result["v6"]["pairs"]:
        if pair["from"] == wan:
            assert f"{wan}: no route to {ip6[pair['to']]} (no IPv6 default route)" in pair["why"], pair
            assert "switch, echo request: reaches " + pair["to"] in pair["why"], pair


# --- doctor ----------------------------------------------------------------------------------------------
def sysctl(ns: str, *settings: str) -> None:
    netns_exec(ns, ["sysctl", "-q", "-w", *settings], timeout=10)


def break_slaac(ns: str) -> None:
    """What a person might do by accident: advertisements off, then the SLAAC address and the default
    route it gave deleted (pyroute2, inside the test's own namespace). With accept_ra 0 no later
    advertisement brings them back, so what doctor sees cannot race the router."""
    sysctl(ns, "net.ipv6.conf.eth0.accept_ra=0")
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        for route in ipr.get_routes(family=AF_INET6, table=254):
            if route["dst_len"] == 0:
                assert route["proto"] == RTPROT_RA, route
                ipr.route(
                    "del", family=AF_INET6, dst="::/0", gateway=route.get_attr("RTA_GATEWAY"), oif=index
                )
        for address in ipr.get_addr(family=AF_INET6, index=index):
            if IPv6Address(address.get_attr("IFA_ADDRESS")) in IPv6Network(LAN6):
                ipr.addr("del", index=index, address=address.get_attr("IFA_ADDRESS"), prefixlen=64)


def ipv6_state(ns: str) -> tuple[list[str], list[Any]]:
    with IPRoute(netns=ns) as ipr:
        addresses = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=AF_INET6)]
        defaults = [
            (r.get_attr("RTA_GATEWAY"), r["proto"])
            for r in ipr.get_routes(family=AF_INET6)
            if r["dst_len"] == 0
        ]
    return addresses, defaults


def test_doctor_names_a_broken_ipv6_address_route_and_mtu_and_its_fixes_heal_them(env: Env) -> None:
    # Advertisements every half second at most: once doctor's fix lets a take them again, the router's
    # next one gives back the address and the route.
    sw, ns, ip6 = dual_stack(env, "--ra-interval", "0.5")
    a, b, c = ns["a"], ns["b"], ns["c"]
    lan_ll = next(s["link_local"] for s in sw.request("status")["segments"] if s["name"] == "lan")

    healthy = vs(env, sw, "doctor")
    assert healthy.returncode == 0, healthy.stdout
    assert problems(healthy.stdout) == [] and "IPv6" not in healthy.stdout, healthy.stdout

    break_slaac(a)
    assert ip6[a] not in ipv6_state(a)[0] and ipv6_state(a)[1] == []
    # c: an IPv6 MTU below its segment's, and the advertised MTU ignored so the router cannot mend it
    sysctl(c, "net.ipv6.conf.eth0.accept_ra_mtu=0", "net.ipv6.conf.eth0.mtu=1400")

    sick = vs(env, sw, "doctor")
    assert sick.returncode == 1, sick.stdout
    found = problems(sick.stdout)
    assert any(
        f"{a}: no IPv6 address in {LAN6} on eth0 (SLAAC would give it {ip6[a]}/64)" in line
        and "accept_ra 0" in line
        for line in found
    ), sick.stdout
    assert any(
        f"{a}: no IPv6 default route via the router (expected: default via {lan_ll} dev eth0 proto ra)"
        in line
        for line in found
    ), sick.stdout
    assert any(f"{c}: eth0's IPv6 MTU is 1400, its segment dmz" in line for line in found), sick.stdout
    assert not any(f"{b}:" in line for line in found), sick.stdout
    assert f"fix: ip netns exec {a} sysctl -w net.ipv6.conf.eth0.accept_ra=1" in sick.stdout
    assert (
        f"fix: ip netns exec {c} sysctl -w net.ipv6.conf.eth0.mtu=1500 net.ipv6.conf.eth0.accept_ra_mtu=1"
        in sick.stdout
    )
    assert len(found) == 3, sick.stdout

    # pingall: IPv4 untouched; IPv6 to and from a fails, and --explain says why
    out = vs(env, sw, "pingall", "--explain", "--json", "--timeout", "0.5")
    assert out.returncode == 1, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["reachable"] == result["tried"] == 6
    failed = [p for p in result["v6"]["pairs"] if p["result"] != "ok"]
    assert failed and all(a in (p["from"], p["to"]) for p in failed), failed
    assert {(p["from"], p["to"]) for p in failed} >= {(a, c), (c, a), (b, a)}
    for pair in failed:
        assert any("accept_ra 0" in line and "no IPv6 default route" in line for line in pair["why"]), pair
        assert any(line.startswith("switch, echo request:") for line in pair["why"]), pair

    # doctor's own fixes, run as printed, heal everything (the router's next advertisement included)
    for fix in set(fixes(sick.stdout)):
        subprocess.run(shlex.split(fix), check=True, capture_output=True, timeout=CLI_TIMEOUT)

    def doctor_healthy() -> subprocess.CompletedProcess[str] | None:
        again = vs(env, sw, "doctor")
        return again if again.returncode == 0 else None

    again = wait_for(doctor_healthy, 20, "doctor to find a and c healthy again after its fixes")
    assert problems(again.stdout) == []
    addresses, defaults = ipv6_state(a)
    assert ip6[a] in addresses and (lan_ll, RTPROT_RA) in defaults
    assert ping6(a, ip6[c])
