"""`vswitch bench` plumbing: it builds every contender, measures, writes JSON and PNG, leaves nothing.

A plumbing test, not a performance test: the hidden --tiny mode runs each load for one second, and
nothing here asserts a speed, only that the figures exist and are positive where traffic flowed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from vswitch.tools.bench import run, topologies
from vswitch.tools.bench.measure import FAMILY_FIGURES, FLOOR_FIGURES
from vswitch.tools.bench.topologies import IPV6_CONTENDERS

from .conftest import links, namespaces

pytestmark = pytest.mark.root

# vde-l2 and ovs-l2 run when vde_switch and ovs-vswitchd are installed (the Makefile installs Debian's
# vde2 and openvswitch-switch), so here they must run: a skip would hide a broken contender.
CONTENDERS = [
    "kernel-bridge",
    "python-floor",
    "vswitch-l2",
    "kernel-nat",
    "vswitch-nat",
    "kernel-vxlan",
    "vswitch-vxlan",
    "vde-l2",
    "ovs-l2",
]
# --ipv6 adds the router's IPv6 rows (kernel and vswitch, routed and masqueraded): about 35 s more.
ALL = [*CONTENDERS, *IPV6_CONTENDERS]
BENCH_TIMEOUT = 180.0
POSITIVE = [
    "tcp_gbps",
    "tcp4_gbps",
    "udp64_pps",
    "ping_avg_ms",
    "ping_p99_ms",
    "ping_b2b_avg_ms",
    "offered50k_pps",
]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def vswitch_processes(instance: str) -> list[str]:
    """Command lines of running `vswitch up --name instance` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"up" in argv and instance.encode() in argv:
                found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain text (the run's prefix is in every path and
    name the bench gives OVS: its private directory, database and sockets)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_bench_builds_measures_reports_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "results"
    root_links_before = set(links(None))
    argv = [sys.executable, "-m", "vswitch", "bench", "--tiny", "--out", str(out)]
    argv += ["--contenders", ",".join(CONTENDERS), "--ipv6", "--congestion", "cubic"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BENCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr

    json_files = list(out.glob("bench-*.json"))
    png_files = list(out.glob("bench-*.png"))
    assert len(json_files) == 1 and len(png_files) == 1
    assert str(json_files[0]) in proc.stdout and str(png_files[0]) in proc.stdout
    doc: dict[str, Any] = json.loads(json_files[0].read_text())

    for key in ("machine", "figures", "contenders", "samples", "results", "ratios", "skipped", "errors"):
        assert key in doc, key
    assert doc["errors"] == []
    for key in ("cores", "kernel", "python", "cpu_model", "date"):
        assert doc["machine"][key], key
    congestion = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    assert doc["machine"]["tcp_congestion_control"] == congestion  # the default, recorded
    assert doc["plan"]["congestion"] == "cubic"  # what the TCP loads used (iperf3 -C)
    assert "TCP cubic" in proc.stdout
    assert doc["prefix"].startswith("vsb")
    assert list(doc["results"]) == ALL  # --ipv6: the IPv6 rows after the ones named
    for name in ALL:
        figures = doc["results"][name]
        for key in doc["figures"]:
            assert key in figures, (name, key)
        for key in POSITIVE:
            assert isinstance(figures[key], float | int) and figures[key] > 0, (name, key, figures[key])
        assert 0 <= figures["loss50k_pct"] <= 100
        if not name.startswith("kernel"):  # a switch process (vswitch, vde_switch) is charged
            assert figures["cpu_us_per_pkt"] is not None and figures["cpu_us_per_pkt"] > 0
        else:
            assert figures["cpu_us_per_pkt"] is None  # the kernel's softirq time is not charged
        assert len(doc["samples"][name]) == 1
    assert set(doc["ratios"]) == {
        "vswitch-l2 / kernel-bridge",
        "vswitch-nat / kernel-nat",
        "vde-l2 / kernel-bridge",
        "ovs-l2 / kernel-bridge",
        "vswitch-vxlan / kernel-vxlan",  # not against the floor: two processes, a UDP socket each
        "vswitch-l2 / python-floor",
        "vswitch-nat / python-floor",
        "vswitch-routed6 / kernel-routed6",
        "vswitch-nat6 / kernel-nat6",
        "vswitch-routed6 / python-floor",
        "vswitch-nat6 / python-floor",
        "kernel-nat6 / kernel-nat",  # each IPv6 router against itself in IPv4
        "vswitch-nat6 / vswitch-nat",
    }
    assert set(doc["ratios"]["vswitch-nat6 / vswitch-nat"]) == set(FAMILY_FIGURES)
    assert "IPv6 against IPv4" in proc.stdout and "84-byte frames" in proc.stdout
    assert doc["ratios"]["vswitch-l2 / kernel-bridge"]["tcp_gbps"] > 0
    # Against the floor: the figures the issue holds vswitch to, each a ratio of the two medians.
    floor = doc["results"]["python-floor"]
    for name in ("vswitch-l2", "vswitch-nat"):
        ratios = doc["ratios"][f"{name} / python-floor"]
        assert set(ratios) == set(FLOOR_FIGURES)
        for key in FLOOR_FIGURES:
            assert ratios[key] == pytest.approx(doc["results"][name][key] / floor[key]), (name, key)
    assert "against python-floor" in proc.stdout
    assert doc["ratios"]["ovs-l2 / kernel-bridge"]["tcp_gbps"] > 0
    assert "ovs-l2" not in doc["skipped"]
    # OVS's userspace datapath, in its own switch namespace, with the taps opened for TSO.
    ovs = doc["contenders"]["ovs-l2"]
    assert ovs["namespaces"] == [f"{doc['prefix']}-ov-{tag}" for tag in ("a", "b", "sw")]
    assert "Open vSwitch" in ovs["description"] and "TSO on" in ovs["description"], ovs["description"]
    # The VXLAN pair: two hosts and two ends each; vswitch's side is two processes, both charged.
    for name, short in (("kernel-vxlan", "kx"), ("vswitch-vxlan", "vx")):
        tags = ("ha", "hb", "n1", "n2")
        assert doc["contenders"][name]["namespaces"] == [f"{doc['prefix']}-{short}-{tag}" for tag in tags]
    vxlan = doc["contenders"]["vswitch-vxlan"]
    assert len(vxlan["pids"]) == 2 and vxlan["pid"] == vxlan["pids"][0]
    # The IPv6 routers: their own namespaces, loads to an IPv6 server (vswitch's SLAAC address on the
    # second /64, or the outside in RFC 5180's range, reached through masquerade: no route back there).
    made = {
        "kernel-routed6": "a b r",
        "vswitch-routed6": "a b",
        "kernel-nat6": "c r o",
        "vswitch-nat6": "c o",
    }
    for name, own in made.items():
        info = doc["contenders"][name]
        short = topologies.SHORT[name]
        assert info["namespaces"] == [f"{doc['prefix']}-{short}-{tag}" for tag in own.split()], name
        assert info["family"] == 6 and doc["contenders"]["kernel-nat"]["family"] == 4
    routed6 = IPv6Address(doc["contenders"]["vswitch-routed6"]["server"])
    assert routed6 in IPv6Network("fd00:b6:0:1::/64") and routed6 != IPv6Address("fd00:b6:0:1::2")  # SLAAC
    assert doc["contenders"]["kernel-routed6"]["server"] == "fd00:b6:0:1::2"
    assert (
        doc["contenders"]["kernel-nat6"]["server"]
        == doc["contenders"]["vswitch-nat6"]["server"]
        == "2001:2::1"
    )
    assert doc["contenders"]["kernel-vxlan"]["pids"] == []

    png = png_files[0].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    # Nothing left behind: no namespace with the run's prefix, no switch process, no iperf3 server.
    assert namespaces(doc["prefix"]) == set()
    for name in ALL:
        server = doc["contenders"][name]["iperf3_pid"]
        assert not alive(server), f"{name}: iperf3 server pid {server} still running"
    for name in ("vswitch-l2", "vswitch-nat", "vswitch-vxlan", "vswitch-routed6", "vswitch-nat6"):
        info = doc["contenders"][name]
        for pid in info["pids"]:
            assert not alive(pid), f"{name}: vswitch pid {pid} still running"
    for instance in (
        doc["contenders"][n]["instance"]
        for n in ("vswitch-l2", "vswitch-nat", "vswitch-routed6", "vswitch-nat6")
    ):
        assert vswitch_processes(instance) == []
    vxlan_instance = doc["contenders"]["vswitch-vxlan"]["instance"]  # ...vxa; its peer is ...vxb
    assert vswitch_processes(vxlan_instance) == vswitch_processes(vxlan_instance[:-1] + "b") == []
    floor_pid = doc["contenders"]["python-floor"]["pid"]
    assert not alive(floor_pid), f"python-floor pid {floor_pid} still running"
    vde = doc["contenders"]["vde-l2"]["pid"]
    assert not alive(vde), f"vde_switch pid {vde} still running"
    # OVS: neither daemon (ovs-vswitchd was the charged pid; ovsdb-server and any other process would
    # name the private directory), no private directory, nothing new in the root namespace.
    assert not alive(ovs["pid"]), f"ovs-vswitchd pid {ovs['pid']} still running"
    assert processes_mentioning(doc["prefix"]) == []
    assert list(Path(tempfile.gettempdir()).glob(f"{doc['prefix']}-*")) == []
    root_links_after = set(links(None))
    assert {n for n in root_links_after if doc["prefix"] in n} == set()
    assert "ovs-netdev" not in root_links_after - root_links_before


def test_optional_contender_not_installed_is_named_as_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ovs-vswitchd on PATH, ovs-l2 is not offered, is refused by name, and the report says why."""
    real_which = shutil.which

    def which(program: str, *args: Any, **kwargs: Any) -> str | None:
        return None if program == "ovs-vswitchd" else real_which(program, *args, **kwargs)

    monkeypatch.setattr("vswitch.tools.bench.topologies.shutil.which", which)
    assert "ovs-l2" not in topologies.available_optional()
    assert topologies.optional_notes()["ovs-l2"] == "ovs-vswitchd not installed; skipped"
    with pytest.raises(topologies.BenchError, match="unknown contender"):
        run.parse_contenders("kernel-bridge,ovs-l2")


def test_an_unavailable_congestion_control_is_one_error_line() -> None:
    argv = [sys.executable, "-m", "vswitch", "bench", "--tiny", "--congestion", "no-such-cc"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    offered = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    choices = ", ".join(offered)
    assert proc.stderr.splitlines() == [
        f"vswitch: error: TCP congestion control 'no-such-cc' is not available here: choose from {choices}"
    ]
