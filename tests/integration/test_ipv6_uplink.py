"""IPv6 through the uplink (issue 17), `--nat6 none` and `--nat6 prefix=` (NPTv6, RFC 6296), in real
namespaces against the kernel's own IPv6 stack.

The lab: lan = a and dmz = b out of fd00:80::/52 (SLAAC), the uplink w, which vswitch makes: w is
2001:2::1/64, the router 2001:2::2/64 (RFC 5180's benchmarking range). With `none` the outside sees
the inside addresses and w routes fd00:80::/52 back via 2001:2::2; with `prefix=2001:2:0:1000::/52`
it sees each inside address mapped (stateless, both ways) and w routes only that prefix back. Each
test starts its own switch, so that no neighbour or path cache carries over.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from vswitch.core.npt import Npt

from .conftest import TCP_SERVER6, Env, Switch, finish, make_world, namespaces, netns_exec, read_line

pytestmark = pytest.mark.root

SUBNET6 = IPv6Network("fd00:80::/52")
OUTSIDE = IPv6Network("2001:2:0:1000::/52")
UPSTREAM6 = "2001:2::1"  # w, the outside
ROUTER6 = "2001:2::2"  # the router's uplink address
GATEWAY6 = {"a": "fd00:80::1", "b": "fd00:80:0:1::1"}  # the router on lan and on dmz
MODES = {"none": "none", "prefix": f"prefix={OUTSIDE}"}
TCP_BYTES = 100_000_000
PORT = 5001


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The shared harness with this file's namespace prefix ("v6u" + 6 hex), removed pass or fail."""
    with make_world(tmp_path, "v6u") as world:
        yield world


@dataclass
class Lab:
    sw: Switch
    mode: str
    ns: dict[str, str]  # "a", "b", "w" -> the namespace
    ip: dict[str, str]  # "a", "b" -> the SLAAC address, as `up --json` printed it

    def seen_outside(self, host: str) -> str:
        """host's address as w sees it: its own with `none`, NPTv6's mapping of it with `prefix`."""
        if self.mode == "none":
            return self.ip[host]
        mapped = Npt(SUBNET6, OUTSIDE).outward(IPv6Address(self.ip[host]).packed)
        assert mapped is not None, self.ip[host]
        return str(IPv6Address(mapped))


def start_lab(env: Env, mode: str) -> Lab:
    ns = {tag: env.ns(tag) for tag in ("a", "b", "w")}
    sw = env.router(
        "--segment", f"lan={ns['a']}", "--segment", f"dmz={ns['b']}", "--subnet6", str(SUBNET6),
        "--uplink", ns["w"], "--nat6", MODES[mode],
    )  # fmt: skip
    by_ns = {p["namespace"]: p.get("address6") for p in sw.table["ports"] if p["namespace"]}
    ip = {tag: str(by_ns[ns[tag]]).split("/")[0] for tag in ("a", "b")}
    assert all(IPv6Address(address) in SUBNET6 for address in ip.values()), sw.table
    return Lab(sw, mode, ns, ip)


def ping6(ns: str, target: str) -> tuple[bool, str]:
    """One `ping -6` (bounded by -W): (it came back, what ping printed)."""
    proc = netns_exec(ns, ["ping", "-6", "-n", "-c", "1", "-W", "2", target], check=False, timeout=15)
    return proc.returncode == 0, proc.stdout + proc.stderr


def traceroute_hops(ns: str, target: str) -> list[str]:
    """`traceroute -6 -n` (UDP probes, one per hop): the address that answered at each hop."""
    proc = netns_exec(ns, ["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "5", target], timeout=30)
    return re.findall(r"^\s*\d+\s+(\S+)", proc.stdout, re.MULTILINE)


def routes6(ns: str) -> list[dict[str, Any]]:
    out = netns_exec(ns, ["ip", "-6", "-j", "route", "show"], timeout=10).stdout
    result: list[dict[str, Any]] = json.loads(out or "[]")
    return result


def global_addresses6(ns: str) -> list[str]:
    out = netns_exec(ns, ["ip", "-6", "-j", "addr", "show", "scope", "global"], timeout=10).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out)
        for a in link["addr_info"]
        if "local" in a
    ]


def serve(env: Env, ns: str) -> subprocess.Popen[str]:
    """TCP_SERVER6 in ns, listening once it returns; killed in teardown if the test fails first."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", TCP_SERVER6, str(PORT), "90"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    env.peers.append(proc)
    assert read_line(proc, 15, f"the server in {ns} to listen") == "ready"
    return proc


def send(env: Env, src: str, server: subprocess.Popen[str], address: str, nbytes: int, seed: int) -> str:
    """nbytes of seeded data over TCP from namespace src to the server at address; the server got the
    same bytes (count and sha256). The peer address the server saw."""
    sent = env.run_peer(
        src, "tcp-send", "--host", address, "--port", str(PORT), "--bytes", str(nbytes), "--seed", str(seed),
        "--timeout", "90", timeout=120,
    )  # fmt: skip
    got = finish(server, 30, f"the server at {address}")
    assert sent["bytes"] == nbytes
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    return str(got["peer"])


# --- 1. ping -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_ping6_from_either_segment_to_the_outside(env: Env, mode: str) -> None:
    lab = start_lab(env, mode)
    for host in ("a", "b"):
        ok, out = ping6(lab.ns[host], UPSTREAM6)
        assert ok, f"{host} -> {UPSTREAM6}: {out}"
    stats = lab.sw.request("stats")
    assert stats["ports"]["router:wan"]["tx_packets"] >= 2, "the echoes left by the uplink"


# --- 2. TCP, and the source the outside sees ---------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_100mb_to_a_server_outside_intact_from_the_address_the_mode_says(env: Env, mode: str) -> None:
    lab = start_lab(env, mode)
    server = serve(env, lab.ns["w"])
    start = time.monotonic()
    peer = send(env, lab.ns["a"], server, UPSTREAM6, TCP_BYTES, seed=17)
    assert time.monotonic() - start < 60
    if mode == "none":
        assert peer == lab.ip["a"], "routed as it is: the outside sees the SLAAC address"
    else:
        assert IPv6Address(peer) in OUTSIDE and IPv6Address(peer) not in SUBNET6
        assert peer == lab.seen_outside("a"), f"NPTv6 of {lab.ip['a']}"
    ports = lab.sw.request("stats")["ports"]
    assert ports["router:wan"]["tx_bytes"] >= TCP_BYTES, "the stream went through the router"


# --- 3. traceroute ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_traceroute6_shows_the_router_then_the_outside(env: Env, mode: str) -> None:
    """The last hop answers with port unreachable to the (mapped) source, quoting the probe as it
    arrived; the kernel pairs it with traceroute's socket only if the router mapped the quote back."""
    lab = start_lab(env, mode)
    assert traceroute_hops(lab.ns["a"], UPSTREAM6) == [GATEWAY6["a"], UPSTREAM6]
    assert traceroute_hops(lab.ns["b"], UPSTREAM6) == [GATEWAY6["b"], UPSTREAM6]


# --- 4. from the outside in --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_the_outside_reaches_an_inside_host_at_the_address_it_sees(env: Env, mode: str) -> None:
    """`none`: at its own address; `prefix`: at the mapped one (NPTv6 keeps no state, so a first packet
    from outside maps in as a reply would). The inside host sees w's own address either way."""
    lab = start_lab(env, mode)
    for seed, host in enumerate(("a", "b")):
        server = serve(env, lab.ns[host])
        assert send(env, lab.ns["w"], server, lab.seen_outside(host), 1_000_000, seed=seed) == UPSTREAM6
    if mode == "prefix":
        # w has no route to the inside prefix: only the mapped one was added.
        refused = env.run_peer(
            lab.ns["w"], "tcp-connect", "--host", lab.ip["a"], "--port", str(PORT), "--timeout", "5"
        )
        assert refused["result"] == "unreachable", refused


# --- 5. the route in w, and stop ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_the_route_in_w_is_there_while_running_and_w_is_gone_after_stop(env: Env, mode: str) -> None:
    lab = start_lab(env, mode)
    w = lab.ns["w"]
    back = str(SUBNET6 if mode == "none" else OUTSIDE)
    via = [(r["dst"], r.get("gateway"), r.get("dev")) for r in routes6(w) if r.get("gateway")]
    assert via == [(back, ROUTER6, "eth0")], routes6(w)
    assert global_addresses6(w) == [f"{UPSTREAM6}/64"], "static, and nothing learned from an advertisement"
    assert lab.sw.stop() == 0
    assert namespaces(env.prefix) == set(), "a, b and w were vswitch's: all removed"
