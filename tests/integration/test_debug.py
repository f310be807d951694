"""Issue 5 against real namespaces: capture (pcap read by tshark and scapy), trace against a running
switch, inject, pingall --explain, doctor, the metrics endpoint, and the in-process Python API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from .conftest import (
    CLI_TIMEOUT,
    VSWITCH,
    Env,
    Switch,
    background_cli,
    make_world,
    ping_until_exit,
    pings,
    read_line,
)

pytestmark = pytest.mark.root


@pytest.fixture
def denv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("vsd" + 6 hex)."""
    with make_world(tmp_path, "vsd") as world:
        yield world


def routed(env: Env, *extra: str) -> tuple[Switch, dict[str, str]]:
    """lan = a, b (10.1.0.0/24), dmz = c (10.2.0.0/24), uplink w (198.18.0.1), NAT to 198.18.0.2."""
    ns = {t: env.ns(t) for t in ("a", "b", "c", "w")}
    sw = Switch(env, env.instance_name(), [], [])
    sw.argv = [
        *VSWITCH, "up", "--name", sw.name, "--json",
        "--segment", f"lan={ns['a']},{ns['b']}@10.1.0.0/24", "--segment", f"dmz={ns['c']}@10.2.0.0/24",
        "--uplink", ns["w"], *extra,
    ]  # fmt: skip
    env.switches.append(sw)
    sw.start()
    return sw, ns


def vs(env: Env, sw: Switch, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return env.vswitch(*args, "--name", sw.name, timeout=timeout)


def test_capture_writes_a_pcap_that_tshark_and_scapy_read(denv: Env) -> None:
    from scapy.layers.inet import ICMP
    from scapy.utils import rdpcap

    a, b = denv.ns("a"), denv.ns("b")
    sw = denv.switch(a, b)
    path = denv.tmp / "a.pcap"
    cap = background_cli(denv, sw, "capture", a, "-w", str(path), "--count", "4", "--filter", "icmp")
    ping_until_exit(cap, a, "10.0.0.2", "capture of 4 ICMP frames")

    shark = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "icmp", "-T", "fields", "-e", "icmp.type", "-e", "ip.src"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in shark.stdout.splitlines()]
    assert ["8", "10.0.0.1"] in rows and ["0", "10.0.0.2"] in rows  # request out of a, reply into a
    packets = rdpcap(str(path))
    assert len(packets) == 4
    assert {p[ICMP].type for p in packets} == {0, 8}


def test_capture_prints_summaries_with_direction(denv: Env) -> None:
    a, b = denv.ns("a"), denv.ns("b")
    sw = denv.switch(a, b)
    cap = background_cli(denv, sw, "capture", b, "--count", "2", "--filter", "icmp and host 10.0.0.1")
    out = ping_until_exit(cap, a, "10.0.0.2", "capture of 2 summary lines")
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert any(f" {b} out " in x and "echo-request" in x for x in lines), out
    assert any(f" {b} in " in x and "echo-reply" in x for x in lines), out


def test_trace_against_a_running_switch_has_no_side_effects(denv: Env) -> None:
    sw, ns = routed(denv)
    assert pings(ns["a"], "198.18.0.1")
    before = (sw.request("fdb"), sw.request("conntrack"), sw.request("arp"))
    expr = "Ether()/IP(dst='198.19.7.7')/TCP(sport=40000, dport=80, flags='S')"
    out = vs(denv, sw, "trace", ns["a"], expr)
    assert out.returncode == 0, out.stderr
    assert "conntrack    new tcp flow 10.1.0.2:40000 -> 198.19.7.7:80" in out.stdout
    assert "IP.src 10.1.0.2 -> 198.18.0.2" in out.stdout and f"-> port {ns['w']}" in out.stdout
    dropped = vs(denv, sw, "trace", ns["a"], "Ether()/IP(dst='10.2.0.2', ttl=1)/ICMP()")
    assert "dropped: ttl-exceeded (at router)" in dropped.stdout, dropped.stdout
    after = (sw.request("fdb"), sw.request("conntrack"), sw.request("arp"))
    strip = [[{k: v for k, v in row.items() if k not in ("age", "expires_in")} for row in t] for t in before]
    assert strip == [
        [{k: v for k, v in row.items() if k not in ("age", "expires_in")} for row in t] for t in after
    ]


def test_inject_reaches_a_udp_socket_in_the_namespace(denv: Env) -> None:
    a, b = denv.ns("a"), denv.ns("b")
    sw = denv.switch(a, b)
    listener = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c",
         "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(20); "
         "s.bind(('10.0.0.2', 7777)); print('ready', flush=True); "
         "print(s.recvfrom(100)[0].decode(), flush=True)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    denv.peers.append(listener)
    assert read_line(listener, 15, "UDP listener") == "ready"
    out = vs(
        denv, sw, "inject", b, "Ether()/IP(src='10.0.0.9', dst='10.0.0.2')/UDP(sport=9, dport=7777)/b'vsd-hi'"
    )
    assert out.returncode == 0, out.stderr
    assert f"injected 48 bytes into {b}" in out.stdout
    assert read_line(listener, 15, "the injected datagram") == "vsd-hi"


def test_pingall_explains_a_missing_default_route_and_doctor_fixes_it(denv: Env) -> None:
    sw, ns = routed(denv)
    healthy = vs(denv, sw, "doctor")
    assert healthy.returncode == 0, healthy.stdout
    with IPRoute(netns=ns["c"]) as ipr:
        ipr.route("del", dst="0.0.0.0/0", gateway="10.2.0.1")
    out = vs(denv, sw, "pingall", "--explain", "--timeout", "0.5")
    assert out.returncode == 1
    assert "/12 reachable" in out.stdout
    explained = out.stdout.split(f"{ns['a']} -> {ns['c']} (10.2.0.2): unreachable", 1)[1]
    assert (
        f"{ns['c']} (reply path): the default route is missing (expected: default via 10.2.0.1)" in explained
    )
    doctor = vs(denv, sw, "doctor")
    assert doctor.returncode == 1
    assert f"fix: ip -n {ns['c']} route add default via 10.2.0.1 dev eth0" in doctor.stdout

    with IPRoute(netns=ns["b"]) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="down")
    out = vs(denv, sw, "pingall", "--explain", "--timeout", "0.5")
    assert f"{ns['b']}: link eth0 is down" in out.stdout
    assert f"fix: ip -n {ns['b']} link set eth0 up" in vs(denv, sw, "doctor").stdout

    with IPRoute(netns=ns["a"]) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], mtu=9000)
    mismatch = vs(denv, sw, "doctor").stdout
    assert f"{ns['a']}: eth0 has MTU 9000, its segment lan has 1500" in mismatch
    assert f"fix: ip -n {ns['a']} link set eth0 mtu 1500" in mismatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_endpoint_serves_prometheus_text(denv: Env) -> None:
    port = free_port()
    _sw, ns = routed(denv, "--metrics", f"127.0.0.1:{port}")
    assert pings(ns["a"], "10.2.0.2")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    values = {  # prometheus-client writes every value as a float ("3.0")
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"
    }
    assert values[f'vswitch_port_rx_packets_total{{port="{ns["a"]}"}}'] >= 1
    assert values[f'vswitch_port_tx_bytes_total{{port="{ns["c"]}"}}'] > 0
    assert values["vswitch_fdb_entries"] >= 2
    assert "# TYPE vswitch_router_drops_total counter" in text
    assert values['vswitch_flow_cache_lookups_total{result="miss"}'] >= 1  # ICMP is never cached
    assert values['vswitch_flow_cache_lookups_total{result="hit"}'] >= 0
    assert values["vswitch_flow_cache_entries"] >= 0
    refused = denv.vswitch("up", "--ports", denv.ns("x"), "--metrics", "0.0.0.0:9")
    assert refused.returncode == 2 and "--metrics-public" in refused.stderr


def test_python_api_hook_drops_then_observes(denv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from vswitch.api import Switch as ApiSwitch

    monkeypatch.setenv("VSWITCH_RUN_DIR", str(denv.run_dir))
    a, b = denv.ns("a"), denv.ns("b")
    seen: list[tuple[str, int]] = []

    def no_icmp(port: str, frame: bytes) -> bytes | None:
        return None if frame[12:14] == b"\x08\x00" and frame[23] == 1 else frame

    def observe(port: str, frame: bytes) -> bytes:
        seen.append((port, len(frame)))
        return frame

    with ApiSwitch(ports=[a, b]) as sw:
        status = json.loads(denv.vswitch("status", "--name", sw.name, "--json").stdout)
        assert [p["port"] for p in status["ports"]] == [a, b]
        sw.hook = no_icmp
        assert not pings(a, sw.address(b))
        drops: dict[str, Any] = sw.stats()["drops"]
        assert drops.get("hook", 0) >= 1
        sw.hook = observe
        assert pings(a, sw.address(b))
        assert any(port == a for port, _ in seen) and any(port == b for port, _ in seen)
    assert not (denv.run_dir / f"{sw.name}.json").exists()
