"""The host port (issue 6): a tap `vs-NAME` left in the root namespace, on one of the switch's segments.

These tests touch the root namespace, so they only ever talk to addresses of their own subnet
(10.77.N.0/24, checked free first), never add a route toward the machine's own interfaces, and
compare the root's links, addresses and routes before and after: teardown must restore them exactly.
"""

from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from .conftest import (
    Env,
    RootView,
    Switch,
    addresses_of,
    assert_root_restored,
    finish,
    free_root_subnet,
    pings,
    read_line,
    root_view,
)

pytestmark = pytest.mark.root


def added(before: RootView, now: RootView, tap: str) -> RootView:
    """What appeared in the root namespace on our tap (other tests' taps may come and go meanwhile)."""
    return RootView(
        frozenset(now.links - before.links) & {tap},
        frozenset(a for a in now.addresses - before.addresses if a[0] == tap),
        frozenset(r for r in now.routes - before.routes if r[2] == tap),
    )


def route_oif(dst: str) -> str | None:
    """The root namespace's egress interface for dst: a FIB lookup, nothing is sent."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        (answer,) = ipr.route("get", dst=dst)
        oif = answer.get_attr("RTA_OIF")
    return None if oif is None else names.get(oif)


def stop_and_check_restored(sw: Switch, before: RootView, tap: str) -> None:
    assert sw.stop() == 0
    assert_root_restored(before, root_view(), tap)


def test_namespace_and_root_ping_each_other_over_the_host_port(env: Env) -> None:
    first, n = free_root_subnet()
    subnet = f"{first}.{n}"
    before = root_view()
    ns1, ns2 = env.ns("1"), env.ns("2")
    sw = env.switch(ns1, ns2, args=["--subnet", f"{subnet}.0/24", "--host"])
    tap = f"vs-{sw.name}"
    ip = addresses_of(sw)
    assert ip == {ns1: f"{subnet}.1", ns2: f"{subnet}.2", tap: f"{subnet}.3"}
    assert added(before, root_view(), tap) == RootView(
        frozenset({tap}),
        frozenset({(tap, f"{subnet}.3/24")}),
        frozenset({(f"{subnet}.0/24", None, tap)}),  # the connected route, nothing else
    )
    assert pings(ns1, ip[tap], count=2)
    assert pings(None, ip[ns1], count=2) and pings(None, ip[ns2])
    stop_and_check_restored(sw, before, tap)


def test_tcp_between_root_and_a_namespace_both_ways(env: Env) -> None:
    first, n = free_root_subnet()
    subnet = f"{first}.{n}"
    before = root_view()
    ns1 = env.ns("1")
    sw = env.switch(ns1, env.ns("2"), args=["--subnet", f"{subnet}.0/24", f"--host={subnet}.100/24"])
    tap = f"vs-{sw.name}"
    ip = addresses_of(sw)
    assert ip[tap] == f"{subnet}.100"

    server = env.peer(None, "http-serve", "--bind", ip[tap], "--port", "18080", "--timeout", "20")
    assert read_line(server, 15, "HTTP server in root to listen") == "ready"
    got = env.run_peer(ns1, "http-get", "--url", f"http://{ip[tap]}:18080/", "--timeout", "10", timeout=20)
    assert got == {"status": 200, "body": f"hello from {ip[tap]}"}
    assert finish(server, 10, "HTTP server in root")["clients"] == [ip[ns1]]

    server = env.peer(ns1, "http-serve", "--bind", ip[ns1], "--port", "80", "--timeout", "20")
    assert read_line(server, 15, "HTTP server in ns1 to listen") == "ready"
    got = env.run_peer(None, "http-get", "--url", f"http://{ip[ns1]}/", "--timeout", "10", timeout=20)
    assert got == {"status": 200, "body": f"hello from {ip[ns1]}"}
    assert finish(server, 10, "HTTP server in ns1")["clients"] == [ip[tap]]
    stop_and_check_restored(sw, before, tap)


def routed_with_host(env: Env, *extra: str) -> tuple[Switch, RootView, str, dict[str, str], str]:
    """lan = ns1 + host port, dmz = ns3, on free 10.77.N/N+1 subnets; returns the dmz subnet too."""
    first, n = free_root_subnet()
    lan, dmz = f"{first}.{n}", f"{first}.{n + 1}"
    before = root_view()
    ns1, ns3 = env.ns("1"), env.ns("3")
    sw = env.router("--segment", f"lan={ns1},host@{lan}.0/24", "--segment", f"dmz={ns3}@{dmz}.0/24", *extra)
    tap = f"vs-{sw.name}"
    ip = addresses_of(sw)
    assert ip == {ns1: f"{lan}.2", tap: f"{lan}.3", ns3: f"{dmz}.2"}
    return sw, before, tap, ip, dmz


def test_host_routes_let_root_reach_another_segment(env: Env) -> None:
    sw, before, tap, ip, dmz = routed_with_host(env, "--host-routes")
    lan_gw = ip[env.ns("1")].rsplit(".", 1)[0] + ".1"
    assert added(before, root_view(), tap).routes == {
        (f"{ip[tap].rsplit('.', 1)[0]}.0/24", None, tap),
        (f"{dmz}.0/24", lan_gw, tap),
    }
    assert route_oif(ip[env.ns("3")]) == tap
    assert pings(None, ip[env.ns("3")], count=2), "root -> router -> dmz and back"
    assert pings(env.ns("3"), ip[tap]), "and the other way"
    every_pair = env.vswitch("pingall", "--timeout", "1", "--name", sw.name)
    assert every_pair.returncode == 0 and "6/6 reachable\n" in every_pair.stdout, every_pair.stdout
    stop_and_check_restored(sw, before, tap)


def test_without_host_routes_root_has_no_route_to_other_segments(env: Env) -> None:
    sw, before, tap, ip, dmz = routed_with_host(env)
    assert added(before, root_view(), tap).routes == {(f"{ip[tap].rsplit('.', 1)[0]}.0/24", None, tap)}
    assert not any(r[0] == f"{dmz}.0/24" for r in root_view().routes)
    # A lookup only: no traffic toward the machine's own default route.
    assert route_oif(ip[env.ns("3")]) != tap
    assert pings(None, ip[env.ns("1")]), "the host port's own segment is still connected"
    stop_and_check_restored(sw, before, tap)


def test_pingall_includes_the_host_port_and_only_where_root_routes_through_it(env: Env) -> None:
    """Without --host-routes the root namespace has no route to dmz: pingall must not ping dmz from the
    root, nor the root from dmz (the request, or the reply, would leave by the machine's default
    route), and says so; every other pair pings."""
    sw, before, tap, ip, _dmz = routed_with_host(env)
    ns3 = env.ns("3")
    out = env.vswitch("pingall", "--explain", "--timeout", "1", "--name", sw.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4/4 reachable; 2 with the host not tried" in out.stdout, out.stdout
    assert f"host -> {ns3} ({ip[ns3]}): not tried" in out.stdout
    assert f"{ns3} -> host ({ip[tap]}): not tried" in out.stdout
    assert out.stdout.count(f"no route to {ip[ns3]} via {tap}") == 2
    stop_and_check_restored(sw, before, tap)
