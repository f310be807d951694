"""NAT66 (`--nat6 masquerade`, the default; issue 17) in real namespaces against the kernel's IPv6 stack.

The lab: lan = a, b and dmz = c out of fd00:80::/52 (SLAAC), the uplink w that vswitch makes, 2001:2::1/64
with the router at 2001:2::2/64 (RFC 5180's benchmarking range), and `--forward tcp:8080=c:80`, which
serves IPv6 too (to c's SLAAC address). w has no route back to the inside: only what is masqueraded to
2001:2::2 can be answered. The reference is the kernel itself as the router, with `nft ... ip6 nat
masquerade` on its uplink: the same outside sees the same thing. Each test starts its own switch, so
that no neighbour, path MTU or conntrack state carries over.
"""

from __future__ import annotations

import json
import re
import shutil
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
    TCP_SERVER6,
    Env,
    Switch,
    create_namespace,
    finish,
    make_world,
    netns_exec,
    read_line,
    wait_for,
)

pytestmark = pytest.mark.root

SUBNET6 = IPv6Network("fd00:80::/52")
OUTSIDE6 = IPv6Network("2001:2::/64")  # the uplink's /64
UPSTREAM6 = "2001:2::1"  # w, the outside
ROUTER6 = "2001:2::2"  # the router's uplink address: what the outside sees (the masquerade source)
GATEWAY6 = {"lan": "fd00:80::1", "dmz": "fd00:80:0:1::1"}
TCP_BYTES = 100_000_000
TCP_PORT = 5001
IFA_F_NODAD = 0x02  # include/uapi/linux/if_addr.h


# Run inside a namespace: answer argv[2] GET requests on [::]:argv[1] with "hello from <its namespace
# tag argv[3]>" within argv[4] seconds, then print one JSON line with each client's address.
HTTP_SERVER6 = """
import http.server, json, socket, socketserver, sys, time
port, count, tag, timeout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
clients = []

class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):  # no reverse lookup of the bind address (slow with no DNS)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "::", port

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        clients.append(self.client_address[0])
        body = f"hello from {tag}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *items):
        pass

server = Server(("::", port), Handler)
server.timeout = timeout
deadline = time.monotonic() + timeout
print("ready", flush=True)
with server:
    while len(clients) < count and time.monotonic() < deadline:
        server.handle_request()
print(json.dumps({"clients": clients}))
"""

# Where curl is missing: the same GET with Python (no proxy from the environment), the body printed.
URL_GET = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=10) as response:
    print(response.read().decode(), end="")
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The shared harness with this file's namespace prefix ("v6n" + 6 hex), removed pass or fail."""
    with make_world(tmp_path, "v6n") as world:
        yield world


@dataclass
class Lab:
    sw: Switch
    ns: dict[str, str]  # "a", "b", "c", "w" -> the namespace
    ip: dict[str, str]  # "a", "b", "c" -> the SLAAC address, as `up --json` printed it


def start_lab(env: Env, *extra: str) -> Lab:
    ns = {tag: env.ns(tag) for tag in ("a", "b", "c", "w")}
    sw = env.router(
        "--segment", f"lan={ns['a']},{ns['b']}", "--segment", f"dmz={ns['c']}", "--subnet6", str(SUBNET6),
        "--uplink", ns["w"], "--forward", f"tcp:8080={ns['c']}:80", *extra,
    )  # fmt: skip
    by_ns = {p["namespace"]: p.get("address6") for p in sw.table["ports"] if p["namespace"]}
    ip = {tag: str(by_ns[ns[tag]]).split("/")[0] for tag in ("a", "b", "c")}
    assert all(IPv6Address(address) in SUBNET6 for address in ip.values()), sw.table
    assert str(by_ns[ns["w"]]).split("/")[0] == UPSTREAM6, sw.table
    return Lab(sw, ns, ip)


def ping6(ns: str, target: str, count: int = 1) -> tuple[bool, str]:
    """`ping -6` (bounded by -W): (every echo came back, what ping printed)."""
    argv = ["ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", "2", target]
    proc = netns_exec(ns, argv, check=False, timeout=15 + count)
    return proc.returncode == 0, proc.stdout + proc.stderr


def traceroute_hops(ns: str, target: str) -> list[str]:
    """`traceroute -6 -n` (UDP probes, one per hop): the address that answered at each hop."""
    proc = netns_exec(ns, ["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "5", target], timeout=30)
    return re.findall(r"^\s*\d+\s+(\S+)", proc.stdout, re.MULTILINE)


def routes6(ns: str) -> list[dict[str, Any]]:
    out = netns_exec(ns, ["ip", "-6", "-j", "route", "show"], timeout=10).stdout
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


def background(env: Env, ns: str, script: str, *args: str) -> subprocess.Popen[str]:
    """A Python script in ns that prints `ready` once it listens; killed in teardown if the test fails."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    env.peers.append(proc)
    assert read_line(proc, 15, f"the server in {ns} to listen") == "ready"
    return proc


def send_tcp(env: Env, src: str, dst: str, address: str, nbytes: int, seed: int) -> str:
    """nbytes of seeded data over TCP from namespace src to a server in dst at address; the server got
    the same bytes (count and sha256). The peer address the server saw."""
    server = background(env, dst, TCP_SERVER6, str(TCP_PORT), "90")
    sent = env.run_peer(
        src, "tcp-send", "--host", address, "--port", str(TCP_PORT), "--bytes", str(nbytes),
        "--seed", str(seed), "--timeout", "90", timeout=120,
    )  # fmt: skip
    got = finish(server, 30, f"the TCP server in {dst}")
    assert sent["bytes"] == nbytes
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    return str(got["peer"])


def http_get6(ns: str, url: str) -> str:
    """GET url from ns with curl (-g: the brackets of an IPv6 literal are not a glob); Python's urllib
    where curl is missing. The body."""
    if shutil.which("curl"):
        argv = ["curl", "-6", "-g", "-sS", "--noproxy", "*", "--max-time", "10", url]
    else:
        argv = [sys.executable, "-c", URL_GET, url]
    return netns_exec(ns, argv, timeout=20).stdout


def conntrack_rows(sw: Switch, proto: str, orig: str, reply: str) -> list[re.Match[str]]:
    """`vswitch conntrack --json` rows of proto whose tuples match the regexes; their groups: orig's,
    then reply's."""
    pattern = re.compile(f"{orig}\n{reply}")
    rows = [row for row in sw.query("conntrack") if row["proto"] == proto]
    return [m for row in rows if (m := pattern.fullmatch(f"{row['orig']}\n{row['reply']}"))]


def inside_routes(ns: str) -> list[str]:
    return [r["dst"] for r in routes6(ns) if IPv6Network(r["dst"], strict=False).overlaps(SUBNET6)]


ESC = re.escape
NUMBER = r"(\d+)"


# --- 1. ping --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nat6", [(), ("--nat6", "masquerade")], ids=["default", "explicit"])
def test_ping6_from_inside_to_the_outside_through_nat66(env: Env, nat6: tuple[str, ...]) -> None:
    """w has no route to fd00:80::/52: the echoes come back only because they left from 2001:2::2."""
    lab = start_lab(env, *nat6)
    assert inside_routes(lab.ns["w"]) == [], "masquerade: vswitch adds no route back in w"
    for host in ("a", "c"):
        ok, out = ping6(lab.ns[host], UPSTREAM6, count=3)
        assert ok, f"{host} -> {UPSTREAM6}: {out}"
        (echo,) = conntrack_rows(
            lab.sw, "icmpv6",
            rf"\[{ESC(lab.ip[host])}\]:{NUMBER} -> \[{ESC(UPSTREAM6)}\]:0",
            rf"\[{ESC(UPSTREAM6)}\]:0 -> \[{ESC(ROUTER6)}\]:{NUMBER}",
        )  # fmt: skip
        assert echo.group(1) == echo.group(2), "the identifier is kept when free"
    ok, out = ping6(lab.ns["w"], ROUTER6)
    assert ok, f"the router answers on its uplink address: {out}"


# --- 2. TCP, and what the outside sees --------------------------------------------------------------------
def test_100mb_to_a_server_outside_arrive_intact_from_the_nat_address(env: Env) -> None:
    lab = start_lab(env)
    start = time.monotonic()
    peer = send_tcp(env, lab.ns["a"], lab.ns["w"], UPSTREAM6, TCP_BYTES, seed=66)
    elapsed = time.monotonic() - start
    assert peer == ROUTER6, "the outside sees the router's uplink address, not a's"
    assert elapsed < 60, f"100 MB took {elapsed:.1f}s"
    # The flow, as `vswitch conntrack --json` shows it: IPv6 tuples, the port preserved, closed by FIN.
    (flow,) = conntrack_rows(
        lab.sw, "tcp",
        rf"\[{ESC(lab.ip['a'])}\]:{NUMBER} -> \[{ESC(UPSTREAM6)}\]:{TCP_PORT}",
        rf"\[{ESC(UPSTREAM6)}\]:{TCP_PORT} -> \[{ESC(ROUTER6)}\]:{NUMBER}",
    )  # fmt: skip
    assert flow.group(1) == flow.group(2), "the internal port is preserved when free (RFC 4787)"
    (row,) = [r for r in lab.sw.query("conntrack") if r["proto"] == "tcp"]
    assert row["state"] in ("TIME_WAIT", "CLOSE", "LAST_ACK", "CLOSE_WAIT", "FIN_WAIT"), row
    assert row["assured"] and min(row["packets"]) > 0, "counted both ways (hits too)"
    stats = lab.sw.request("stats")
    assert stats["ports"]["router:wan"]["tx_bytes"] >= TCP_BYTES, "the stream went through the router"
    # The established flow crossed on the flow cache (NAT66 ACKs replayed), not the router's slow path.
    events = stats["events"]
    assert events["flow-cache-hits"] > 10 * events["flow-cache-misses"], events


# --- 3. the forward, from outside and by hairpin ----------------------------------------------------------
def test_the_ipv6_forward_is_reached_from_outside_and_by_hairpin(env: Env) -> None:
    """`--forward tcp:8080=c:80` serves IPv6 at c's SLAAC address: w reaches it at 2001:2::2:8080 and c
    sees w's own address (DNAT only); a reaches it the same way and c sees 2001:2::2 (hairpin
    masquerades, so c's answer comes back through the router, RFC 5382 REQ-8)."""
    lab = start_lab(env)
    server = background(env, lab.ns["c"], HTTP_SERVER6, "80", "2", "c", "30")
    url = f"http://[{ROUTER6}]:8080/"
    assert http_get6(lab.ns["w"], url) == "hello from c"
    assert http_get6(lab.ns["a"], url) == "hello from c"
    assert finish(server, 15, "the HTTP server in c")["clients"] == [UPSTREAM6, ROUTER6]
    (forward,) = conntrack_rows(
        lab.sw, "tcp",
        rf"\[{ESC(UPSTREAM6)}\]:{NUMBER} -> \[{ESC(ROUTER6)}\]:8080",
        rf"\[{ESC(lab.ip['c'])}\]:80 -> \[{ESC(UPSTREAM6)}\]:{NUMBER}",
    )  # fmt: skip
    assert forward.group(1) == forward.group(2), "DNAT keeps the client's address and port"
    (hairpin,) = conntrack_rows(
        lab.sw, "tcp",
        rf"\[{ESC(lab.ip['a'])}\]:{NUMBER} -> \[{ESC(ROUTER6)}\]:8080",
        rf"\[{ESC(lab.ip['c'])}\]:80 -> \[{ESC(ROUTER6)}\]:{NUMBER}",
    )  # fmt: skip
    assert hairpin is not None


# --- 4. traceroute -----------------------------------------------------------------------------------------
def test_traceroute6_through_nat66_shows_the_router_then_the_outside(env: Env) -> None:
    """The last hop's port unreachable goes to 2001:2::2 quoting the probe as it left; the kernel pairs
    it with traceroute's socket only if the router translated it back, outer and quoted."""
    lab = start_lab(env)
    assert traceroute_hops(lab.ns["a"], UPSTREAM6) == [GATEWAY6["lan"], UPSTREAM6]
    assert traceroute_hops(lab.ns["c"], UPSTREAM6) == [GATEWAY6["dmz"], UPSTREAM6]
    events = lab.sw.request("stats")["router"]["events"]
    assert events.get("nat-icmp-error-translated", 0) >= 2, events


# --- 5. the kernel as the reference -------------------------------------------------------------------------
@dataclass
class Path6:
    """An inside host, the outside namespace, and the router's addresses: on the inside host's segment
    (the first traceroute hop) and on the uplink (what the outside sees)."""

    inside: str
    outside: str
    gateway: str
    uplink: str


def add_address6(ipr: IPRoute, ifname: str, address: str) -> int:
    """address/64 on ifname, without duplicate address detection, the link up; its index."""
    index: int = ipr.link_lookup(ifname=ifname)[0]
    ipr.addr("add", index=index, address=address, prefixlen=64, family=socket.AF_INET6, flags=IFA_F_NODAD)
    ipr.link("set", index=index, state="up")
    return index


def kernel_path(env: Env) -> Path6:
    """The same topology with the kernel as the router: IPv6 forwarding, a default route to w, and
    `nft ... ip6 nat ... masquerade` on its uplink; the inside host configured statically."""
    router, inside, outside = env.ns("kr"), env.ns("ka"), env.ns("kw")
    for ns in (router, inside, outside):  # no duplicate address detection, as on the vswitch side
        create_namespace(ns)
        netns_exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.default.dad_transmits=0"], timeout=10)
        netns_exec(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.default.accept_ra=0"], timeout=10)
    netns_exec(router, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], timeout=10)
    legs = (("lan", inside, GATEWAY6["lan"], "fd00:80::a"), ("wan", outside, ROUTER6, UPSTREAM6))
    with IPRoute(netns=router) as ipr:
        for name, far, ours, _ in legs:
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": far})
            add_address6(ipr, name, ours)
        ipr.route("add", dst="::/0", gateway=UPSTREAM6, family=socket.AF_INET6)
    for _, far, ours, theirs in legs:
        with IPRoute(netns=far) as ipr:
            add_address6(ipr, "eth0", theirs)
            if far == inside:  # w, like vswitch's, has no route back to the inside
                ipr.route("add", dst="::/0", gateway=ours, family=socket.AF_INET6)
    ruleset = (
        "table ip6 nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        '    oifname "wan" masquerade\n'
        "  }\n"
        "}\n"
    )
    netns_exec(router, ["nft", "-f", "-"], timeout=10, input=ruleset)
    return Path6(inside, outside, GATEWAY6["lan"], ROUTER6)


def vswitch_path(env: Env) -> Path6:
    lab = start_lab(env)
    return Path6(lab.ns["a"], lab.ns["w"], GATEWAY6["lan"], ROUTER6)


ROUTERS: dict[str, Callable[[Env], Path6]] = {"kernel": kernel_path, "vswitch": vswitch_path}


@pytest.mark.parametrize("router", list(ROUTERS))
def test_the_outside_sees_the_same_as_behind_the_kernels_ip6_masquerade(env: Env, router: str) -> None:
    """ping works, the server outside sees the router's uplink address, traceroute shows the router
    then the outside: the same whoever routes."""
    path = ROUTERS[router](env)
    assert inside_routes(path.outside) == [], "the outside has no route back to the inside"
    wait_for(lambda: ping6(path.inside, UPSTREAM6)[0], 10, f"{path.inside} to reach {UPSTREAM6}")
    ok, out = ping6(path.inside, UPSTREAM6, count=3)
    assert ok and "3 received" in out, out
    assert send_tcp(env, path.inside, path.outside, UPSTREAM6, 2_000_000, seed=6) == path.uplink
    assert traceroute_hops(path.inside, UPSTREAM6) == [path.gateway, UPSTREAM6]
