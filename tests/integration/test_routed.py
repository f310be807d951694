"""`vswitch up --segment ... --uplink ...` as an IPv4 router between real namespaces (issue 3)."""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
from pyroute2 import IPRoute

from .conftest import (
    UPSTREAM_ADDRESS,
    Env,
    finish,
    links,
    mac_of,
    namespaces,
    netns_exec,
    new_root_links,
    pings,
    read_line,
    start_routed,
    transfer,
)

pytestmark = pytest.mark.root

TCP_BYTES = 100_000_000


def iface_of(routes: list[dict[str, Any]], prefix: str) -> int:
    """The router interface index of the route for exactly `prefix`."""
    (row,) = [r for r in routes if r["prefix"] == prefix]
    index: int = row["iface"]
    return index


def test_segments_ping_across_the_router_and_move_100mb_intact(env: Env) -> None:
    r = start_routed(env)
    for src, dst in ((r.ns1, r.ns3), (r.ns3, r.ns1), (r.ns2, r.ns3), (r.ns1, r.ns2)):
        assert pings(src, r.ip[dst]), f"{src} -> {dst} ({r.ip[dst]})"
    assert pings(r.ns1, "10.1.0.1") and pings(r.ns3, "10.2.0.1"), "the gateways answer echo"

    transfer(env, r.ns1, r.ns3, r.ip[r.ns3], TCP_BYTES, seed=11)


def test_ttl_1_gets_time_exceeded_from_the_gateway(env: Env) -> None:
    r = start_routed(env)
    assert pings(r.ns1, r.ip[r.ns3])  # ARP resolved on both sides: the answer is about TTL only
    proc = netns_exec(r.ns1, ["ping", "-n", "-c", "1", "-t", "1", "-W", "2", r.ip[r.ns3]], check=False)
    assert proc.returncode != 0, "a TTL 1 echo must not reach the other segment"
    match = re.search(r"From (\S+) icmp_seq=1 Time to live exceeded", proc.stdout)
    assert match, proc.stdout
    assert match.group(1) == "10.1.0.1", "the error comes from ns1's gateway"
    router = r.sw.query("stats")["router"]
    assert router["drops"].get("ttl-exceeded", 0) >= 1, router


def test_routes_and_arp_tables_show_the_topology(env: Env) -> None:
    r = start_routed(env)
    assert pings(r.ns1, r.ip[r.ns3]) and pings(r.ns1, UPSTREAM_ADDRESS)

    routes = r.sw.query("routes")
    simple = {(row["prefix"], row["via"], row["type"]) for row in routes}
    assert simple == {
        ("10.1.0.0/24", None, "connected"),
        ("10.2.0.0/24", None, "connected"),
        ("198.18.0.0/24", None, "connected"),
        ("0.0.0.0/0", UPSTREAM_ADDRESS, "static"),
    }
    lan, dmz, wan = (iface_of(routes, p) for p in ("10.1.0.0/24", "10.2.0.0/24", "198.18.0.0/24"))
    assert len({lan, dmz, wan}) == 3
    assert iface_of(routes, "0.0.0.0/0") == wan
    assert routes[-1]["prefix"] == "0.0.0.0/0", "longest prefix first"

    arp = {row["ip"]: row for row in r.sw.query("arp")}
    expected = {r.ip[r.ns1]: (r.ns1, lan), r.ip[r.ns3]: (r.ns3, dmz), UPSTREAM_ADDRESS: (r.wan, wan)}
    for ip, (ns, iface) in expected.items():
        assert ip in arp, (ip, arp)
        assert (arp[ip]["mac"], arp[ip]["iface"], arp[ip]["state"]) == (mac_of(ns), iface, "reachable")
    assert r.ip[r.ns2] not in arp, "ns2 never talked through the router"


def test_static_route_sends_through_a_host_in_another_segment(env: Env) -> None:
    """10.99.0.0/24 via ns3: only ns3 holds 10.99.0.1, so an answer proves the packets went to it."""
    r = start_routed(env, "--route", "10.99.0.0/24=via 10.2.0.2")
    with IPRoute(netns=r.ns3) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address="10.99.0.1", prefixlen=32)

    routes = r.sw.query("routes")
    (static,) = [row for row in routes if row["prefix"] == "10.99.0.0/24"]
    assert (static["via"], static["type"]) == ("10.2.0.2", "static")
    assert static["iface"] == iface_of(routes, "10.2.0.0/24")

    before = r.sw.query("stats")["ports"][r.ns3]["tx_packets"]
    assert pings(r.ns1, "10.99.0.1", count=3)
    assert r.sw.query("stats")["ports"][r.ns3]["tx_packets"] - before >= 3

    server = env.peer(r.ns3, "http-serve", "--bind", "10.99.0.1", "--port", "80", "--timeout", "20")
    assert read_line(server, 15, "HTTP server in ns3 to listen") == "ready"
    got = env.run_peer(r.ns1, "http-get", "--url", "http://10.99.0.1/", "--timeout", "10", timeout=20)
    assert got == {"status": 200, "body": "hello from 10.99.0.1"}
    assert finish(server, 10, "HTTP server")["clients"] == [r.ip[r.ns1]], "routed, not translated"


def test_teardown_leaves_nothing(env: Env) -> None:
    root_before = set(links(None))
    r = start_routed(env, "--route", "10.99.0.0/24=via 10.2.0.2")
    taps = r.sw.tap_names()
    assert len(taps) == 4
    assert pings(r.ns1, r.ip[r.ns3]) and pings(r.ns1, UPSTREAM_ADDRESS)
    assert r.sw.stop(signal.SIGTERM) == 0
    assert namespaces(env.prefix) == set()
    assert not r.sw.state_path.exists() and not r.sw.socket_path.exists()
    assert new_root_links(root_before) == set()
    assert not set(taps) & set(links(None))


def test_segments_with_different_mtus_fragment_or_say_frag_needed(env: Env) -> None:
    """--mtu dmz=1280: dmz's port gets that MTU, the router's dmz interface too. A 1428-byte echo
    without DF crosses in fragments (RFC 1812 5.2.6) and the answer comes back whole to ping; with
    DF the gateway answers "fragmentation needed" with dmz's MTU (RFC 1191)."""
    r = start_routed(env, "--mtu", "dmz=1280")
    assert links(r.ns1)["eth0"]["mtu"] == 1500 and links(r.ns3)["eth0"]["mtu"] == 1280
    status = r.sw.query("status")
    assert {s["name"]: s["mtu"] for s in status["segments"]} == {"lan": 1500, "dmz": 1280}
    assert status["uplink"]["mtu"] == 1500
    assert pings(r.ns1, r.ip[r.ns3])  # ARP resolved: what follows is about size only

    fragmented = netns_exec(
        r.ns1, ["ping", "-n", "-c", "2", "-W", "2", "-M", "dont", "-s", "1400", r.ip[r.ns3]]
    )
    assert "2 received" in fragmented.stdout, fragmented.stdout
    assert "bytes from" in fragmented.stdout and "1408 bytes from" in fragmented.stdout
    events = r.sw.query("stats")["router"]["events"]
    assert events.get("ip-fragmented", 0) >= 2 and events.get("ip-fragments-made", 0) >= 4, events

    refused = netns_exec(
        r.ns1, ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", r.ip[r.ns3]], check=False
    )
    assert refused.returncode != 0
    assert re.search(r"From 10\.1\.0\.1 icmp_seq=1 Frag needed and DF set \(mtu = 1280\)", refused.stdout), (
        refused.stdout
    )
    assert r.sw.query("stats")["router"]["drops"].get("fragmentation-needed", 0) >= 1
