"""`python -m vswitch.tools.bench.floor`, the bench's python-floor, between real namespaces.

The floor opens two taps with vswitch's `open_tap`, places them as eth0 in two namespaces the caller
made, prints `ready` and copies frames between them until SIGTERM or SIGINT, or until the process
that started it dies; closing the taps deletes them. These tests check each of those promises on the
real kernel: traffic crosses it both ways and arrives intact, a signal stops it cleanly and removes
its taps (never a namespace), bad arguments fail short, and an orphaned floor goes away by itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from vswitch.tools.bench.topologies import _tun_vnet_header

from .conftest import (
    Env,
    create_namespace,
    finish,
    ipv4_addresses,
    links,
    make_world,
    namespaces,
    netns_exec,
    read_line,
    transfer,
    wait_for,
)
from .peer import udp_payload

pytestmark = pytest.mark.root

FLOOR = [sys.executable, "-m", "vswitch.tools.bench.floor"]
ADDRESS_A, ADDRESS_B = "10.0.0.1", "10.0.0.2"
READY_TIMEOUT = 30.0  # imports (uvloop, pyroute2) on a loaded 2-core machine
STOP_TIMEOUT = 10.0
ORPHAN_TIMEOUT = 10.0  # the floor looks at its parent once a second
GONE_TIMEOUT = 5.0  # a tap's netdevice goes when its last fd is closed; allow the kernel a moment
CLI_TIMEOUT = 15.0
IFF_TAP = 2  # IFLA_TUN_TYPE of a tap (1 is a tun)


@dataclass
class World:
    """Two namespaces of this test's own (lo up, nothing else) and the tap prefix the floor gets."""

    env: Env
    a: str
    b: str
    tap_prefix: str

    def argv(self, *hosts: str) -> list[str]:
        hosts = hosts or (f"{self.a}={ADDRESS_A}/24", f"{self.b}={ADDRESS_B}/24")
        return [*FLOOR, *hosts, "--tap-prefix", self.tap_prefix]

    def start(self) -> subprocess.Popen[str]:
        """The floor as the test's child; stopped (SIGTERM, then SIGKILL) in teardown whatever happens."""
        proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.env.peers.append(proc)
        assert read_line(proc, READY_TIMEOUT, "the floor to print ready") == "ready"
        return proc

    def taps_anywhere(self) -> dict[str, list[str]]:
        """Interfaces that are, or may be, the floor's taps: PREFIX* in the root namespace and in both
        namespaces, and eth0 in the two namespaces (what the floor renames them to). Empty: none."""
        found = {"root": sorted(n for n in links(None) if n.startswith(self.tap_prefix))}
        for ns in (self.a, self.b):
            found[ns] = sorted(n for n in links(ns) if n.startswith(self.tap_prefix) or n == "eth0")
        return {where: names for where, names in found.items() if names}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Namespaces named vsf + 6 hex + a/b; the floor's processes stopped and every namespace with the
    prefix removed afterwards (make_world's cleanup), pass or fail."""
    with make_world(tmp_path, "vsf") as env:
        a, b = env.ns("a"), env.ns("b")
        create_namespace(a)
        create_namespace(b)
        yield World(env, a, b, tap_prefix=f"{env.prefix}t")  # vsf + 6 hex + t + 0/1: 11 characters


# --- kernel and process views ----------------------------------------------------------------------------
def tun_data(ns: str, ifname: str = "eth0") -> dict[str, Any]:
    """kind and the tun driver's IFLA_TUN_* attributes of ifname in ns, read with pyroute2."""
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        assert info is not None, f"{ifname} in {ns} has no IFLA_LINKINFO"
        data = info.get_attr("IFLA_INFO_DATA")
        return {
            "kind": info.get_attr("IFLA_INFO_KIND"),
            "type": data.get_attr("IFLA_TUN_TYPE") if data is not None else None,
            "persist": bool(data.get_attr("IFLA_TUN_PERSIST")) if data is not None else None,
            "vnet_hdr": _tun_vnet_header(ipr, index),  # the bench's own reading of IFLA_TUN_VNET_HDR
        }


def ping_all(src: str, dst_ip: str, count: int = 3) -> None:
    """count pings from src, 1 s allowed for each reply; every one must come back."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", dst_ip]
    proc = netns_exec(src, argv, timeout=CLI_TIMEOUT, check=False)
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
    assert summary is not None, f"ping from {src}: {proc.stdout.strip()} {proc.stderr.strip()}"
    assert summary.groups() == (str(count), str(count)), f"ping {src} -> {dst_ip}: {summary.group(0)}"


def process_state(pid: int) -> tuple[str, int, bytes] | None:
    """(state, ppid, cmdline) of pid from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
    return fields[0], int(fields[1]), cmdline


def floor_running(pid: int, tap_prefix: str) -> bool:
    """pid is still our floor: alive (a zombie waiting for a reaper is not) and started with our prefix.

    The prefix check guards against a recycled pid: teardown must never signal someone else's process.
    """
    state = process_state(pid)
    return state is not None and state[0] != "Z" and tap_prefix.encode() in state[2]


def kill_floor(pid: int, tap_prefix: str) -> None:
    """Teardown for a floor that is not our child: SIGKILL it if it is still running."""
    if floor_running(pid, tap_prefix):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not floor_running(pid, tap_prefix), STOP_TIMEOUT, f"floor pid {pid} to die")


# --- the tests -------------------------------------------------------------------------------------------
def test_floor_forwards_both_ways_through_vswitch_taps(world: World) -> None:
    world.start()

    # Its taps are vswitch's: placed as eth0 with the address asked for, IFF_TAP with the virtio-net
    # header, and not persistent (closing them deletes them). None is left in the root namespace.
    for ns, address in ((world.a, ADDRESS_A), (world.b, ADDRESS_B)):
        eth0 = links(ns)["eth0"]
        assert ipv4_addresses(eth0) == [f"{address}/24"], (ns, eth0)
        assert "UP" in eth0["flags"], (ns, eth0["flags"])
        assert eth0["mtu"] == 1500, (ns, eth0["mtu"])
        assert tun_data(ns) == {"kind": "tun", "type": IFF_TAP, "persist": False, "vnet_hdr": True}, ns
    assert [n for n in links(None) if n.startswith(world.tap_prefix)] == []

    # Both ways: each side pings the other (request one way, reply the other), every reply back.
    ping_all(world.a, ADDRESS_B)
    ping_all(world.b, ADDRESS_A)

    # TCP A -> B, data intact (same byte count, same sha256), offloaded segments across the floor.
    transfer(world.env, world.a, world.b, ADDRESS_B, nbytes=8_000_000, seed=7)

    # UDP B -> A: every datagram, small and MTU-sized, arrives as sent and in order.
    sizes, count = (64, 1400), 10
    receiver = world.env.peer(world.a, "udp-recv", "--bind", ADDRESS_A, "--port", "5002",
                              "--count", str(len(sizes) * count), "--timeout", "10")  # fmt: skip
    assert read_line(receiver, 15, f"UDP receiver in {world.a} to bind") == "ready"
    sent = world.env.run_peer(world.b, "udp-send", "--host", ADDRESS_A, "--port", "5002",
                              "--sizes", ",".join(map(str, sizes)), "--count", str(count))  # fmt: skip
    assert sent == {"sent": len(sizes) * count}
    got = finish(receiver, 20, f"UDP receiver in {world.a}")
    assert got["datagrams"] == [udp_payload(s, i).hex() for s in sizes for i in range(count)]


def test_sigterm_stops_the_floor_and_removes_its_taps_not_the_namespaces(world: World) -> None:
    proc = world.start()
    assert set(world.taps_anywhere()) == {world.a, world.b}  # eth0 in each while it runs

    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the floor did not exit within {STOP_TIMEOUT:g}s of SIGTERM")
    assert proc.returncode == 0, err
    assert err == "" and out == "", (out, err)  # nothing after ready: no traceback, no warning

    wait_for(lambda: not world.taps_anywhere(), GONE_TIMEOUT, "the floor's taps to disappear")
    assert namespaces(world.env.prefix) == {world.a, world.b}  # ours, untouched until teardown
    assert set(links(world.a)) == set(links(world.b)) == {"lo"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "expected NAMESPACE=ADDRESS/PREFIX, got 'nonsense'"),
        ("=10.0.0.1/24", "expected NAMESPACE=ADDRESS/PREFIX, got '=10.0.0.1/24'"),
        ("{a}=10.0.0.300/24", "not an IPv4 address with a prefix: '10.0.0.300/24'"),
    ],
)
def test_a_malformed_host_is_a_usage_error(world: World, spec: str, message: str) -> None:
    argv = world.argv(spec.format(a=world.a), f"{world.b}={ADDRESS_B}/24")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: "), proc.stderr
    assert proc.stderr.rstrip("\n").endswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not world.taps_anywhere()  # argparse fails before any tap is opened


def run_with_missing_namespace(world: World) -> tuple[subprocess.CompletedProcess[str], str]:
    """The floor with A (exists) and a namespace that does not: the first tap is placed in A as eth0,
    the second fails to move. Returns the run and the missing name."""
    missing = world.env.ns("missing")
    assert missing not in namespaces()
    argv = world.argv(f"{world.a}={ADDRESS_A}/24", f"{missing}={ADDRESS_B}/24")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=READY_TIMEOUT)
    return proc, missing


def test_a_missing_namespace_fails_and_leaves_no_tap(world: World) -> None:
    proc, missing = run_with_missing_namespace(world)
    assert proc.returncode != 0, proc.stdout
    assert "ready" not in proc.stdout
    # Both taps closed: none in the root namespace, and no eth0 left in A (the first one was placed).
    wait_for(lambda: not world.taps_anywhere(), GONE_TIMEOUT, "the floor's taps to disappear")
    assert missing not in namespaces()  # it does not make the namespace it was not given
    assert namespaces(world.env.prefix) == {world.a, world.b}


def test_a_missing_namespace_is_a_short_error(world: World) -> None:
    proc, missing = run_with_missing_namespace(world)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("python-floor: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert missing in proc.stderr


def test_the_floor_exits_when_its_parent_dies(world: World) -> None:
    # A shell starts the floor in the background, prints its pid and waits: the floor's parent is the
    # shell, which the test then SIGKILLs, as a bench killed outright would be. The floor's own output
    # goes to a file, so the shell's stdout carries only the pid line.
    out_path = world.env.tmp / "floor.out"
    shell = subprocess.Popen(
        ["sh", "-c", '"$@" >"$0" 2>&1 & echo $!; wait', str(out_path), *world.argv()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    world.env.peers.append(shell)  # stopped in teardown if the test fails before killing it
    pid = int(read_line(shell, CLI_TIMEOUT, "the shell to print the floor's pid"))
    try:

        def ready() -> bool:
            state = process_state(pid)
            # An empty cmdline is the shell's child between fork and exec: not the floor yet, not gone.
            if state is None or state[0] == "Z" or (state[2] and world.tap_prefix.encode() not in state[2]):
                pytest.fail(f"the floor exited before it was ready: {out_path.read_text()}")
            return out_path.exists() and "ready" in out_path.read_text()

        wait_for(ready, READY_TIMEOUT, "the floor (started by sh) to print ready")
        state = process_state(pid)
        assert state is not None and state[1] == shell.pid  # really the shell's child
        assert set(world.taps_anywhere()) == {world.a, world.b}

        shell.kill()
        shell.wait(STOP_TIMEOUT)
        wait_for(
            lambda: not floor_running(pid, world.tap_prefix), ORPHAN_TIMEOUT, "the orphaned floor to exit"
        )
        wait_for(lambda: not world.taps_anywhere(), GONE_TIMEOUT, "the orphaned floor's taps to go")
        assert namespaces(world.env.prefix) == {world.a, world.b}
        assert out_path.read_text() == "ready\n"  # a clean stop: no traceback, no warning
    finally:
        kill_floor(pid, world.tap_prefix)
