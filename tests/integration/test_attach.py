"""Ports attached to a namespace that exists (issue 18): a process's (`pid:PID`) or a bind-mounted one
(`web=/PATH`), as a container's. vswitch owns only its tap there: it makes, renames and removes nothing
else, leaves lo as it is, and its tap goes when it stops, even by SIGKILL (the tap dies with its fd).

The process is `unshare -n sleep 600`, in a network namespace of its own with lo down and nothing else;
the test kills it in teardown (Env.peers), and unmounts and removes a bind-mounted namespace it made.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    ipv4_addresses,
    links,
    make_world,
    namespaces,
    pings,
    unshare_sleep,
    wait_for,
)

pytestmark = pytest.mark.root


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """This test's world, its namespaces named att + 6 hex; everything in it removed afterwards."""
    with make_world(tmp_path, "att") as world:
        yield world


@dataclass(frozen=True)
class Namespace:
    """A network namespace vswitch did not make, reached with nsenter by a process or by a path."""

    path: str  # what the port names: /proc/PID/ns/net or the bind mount
    enter: tuple[str, ...]  # nsenter's options to run a command there

    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["nsenter", *self.enter, *argv], capture_output=True, text=True, timeout=CLI_TIMEOUT
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} in {self.path} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def links(self) -> dict[str, dict[str, Any]]:
        out = self.run(["ip", "-j", "addr", "show"]).stdout
        return {entry["ifname"]: entry for entry in json.loads(out or "[]")}

    def lo_up(self) -> bool:
        return "UP" in self.links()["lo"]["flags"]

    def default_routes(self) -> list[tuple[str, str]]:
        out = self.run(["ip", "-j", "-4", "route", "show", "default"]).stdout
        return [(r.get("gateway", ""), r["dev"]) for r in json.loads(out or "[]")]

    def pings(self, address: str, count: int = 2) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", address]
        return self.run(argv, check=False).returncode == 0


@dataclass(frozen=True)
class Held(Namespace):
    """`unshare -n sleep 600`: a process in a namespace of its own, as a container's init."""

    proc: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


def unshared(env: Env) -> Held:
    """A process in a namespace of its own (conftest.unshare_sleep), which is new: lo, down, only."""
    proc = unshare_sleep(env)
    held = Held(f"/proc/{proc.pid}/ns/net", ("--target", str(proc.pid), "--net"), proc)
    assert set(held.links()) == {"lo"} and not held.lo_up(), "a new namespace: lo, down, only"
    return held


@pytest.fixture
def bound(env: Env) -> Iterator[Namespace]:
    """A namespace made by `unshare --net=FILE`, which bind-mounts it on FILE: under a directory of
    the test's own, bound on itself and made private (a namespace cannot be bound under a shared
    mount). Unmounted and removed in teardown, pass or fail."""
    directory = Path("/run") / f"{env.prefix}{secrets.token_hex(2)}"
    path = directory / "net"
    directory.mkdir()
    steps = [
        ["mount", "--bind", str(directory), str(directory)],
        ["mount", "--make-private", str(directory)],
        ["touch", str(path)],
        ["unshare", f"--net={path}", "true"],
    ]
    try:
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True, timeout=CLI_TIMEOUT)
        yield Namespace(str(path), (f"--net={path}",))
    finally:
        for target in (path, directory):  # what is not mounted says so; that is all it may say
            subprocess.run(["umount", str(target)], capture_output=True, timeout=CLI_TIMEOUT)
        path.unlink(missing_ok=True)
        directory.rmdir()


def port_row(sw: Switch, label: str) -> dict[str, Any]:
    """The port's row of `vswitch up --json`'s table."""
    (row,) = [p for p in sw.table["ports"] if p["port"] == label]
    described: dict[str, Any] = row
    return described


def records_in(sw: Switch, namespace: str) -> list[str]:
    """The kinds of the ledger's records that name namespace (as where they are or what they are)."""
    return [r["kind"] for r in sw.ledger()["records"] if namespace in (r.get("namespace"), r.get("name"))]


def test_a_process_attached_by_pid_pings_and_keeps_its_namespace(env: Env) -> None:
    held = unshared(env)
    inode = held.inode()
    a = env.ns("a")
    sw = env.switch(a, f"pid:{held.pid}")
    row = port_row(sw, f"pid{held.pid}")
    assert (row["namespace"], row["interface"], row["address"], row["attached"]) == (
        held.path, "eth0", "10.0.0.2/24", True,
    )  # fmt: skip
    inside = held.links()
    assert set(inside) == {"lo", "eth0"}, "eth0 is free there, so the tap takes it"
    assert ipv4_addresses(inside["eth0"]) == ["10.0.0.2/24"]
    assert records_in(sw, held.path) == ["tap"], "only the tap is vswitch's there"

    assert held.pings("10.0.0.1", count=3), "the process reaches the other port"
    assert pings(a, "10.0.0.2"), "and is reached"
    assert not held.lo_up(), "lo is the process's: left down"

    taps = sw.tap_names()
    assert sw.stop() == 0
    assert held.alive() and held.inode() == inode, "the process and its namespace are untouched"
    assert set(held.links()) == {"lo"} and not held.lo_up(), "the tap went with vswitch, nothing else"
    assert not set(taps) & set(links(None)), "no tap came back to the root namespace"
    assert namespaces(env.prefix) == set(), "the namespace vswitch made for the other port is gone"


def test_a_bind_mounted_namespace_attached_by_path_pings(env: Env, bound: Namespace) -> None:
    inode = bound.inode()
    a = env.ns("a")
    sw = env.switch(a, f"web={bound.path}")
    row = port_row(sw, "web")
    assert (row["namespace"], row["interface"], row["address"], row["attached"]) == (
        bound.path, "eth0", "10.0.0.2/24", True,
    )  # fmt: skip
    assert records_in(sw, bound.path) == ["tap"]
    assert bound.pings("10.0.0.1", count=3) and pings(a, "10.0.0.2")

    assert sw.stop() == 0
    assert bound.inode() == inode, "still the same namespace on the same path"
    assert set(bound.links()) == {"lo"} and not bound.lo_up()


def test_a_namespace_with_its_own_eth0_gets_vs0(env: Env) -> None:
    held = unshared(env)
    held.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    theirs = held.links()
    a = env.ns("a")
    sw = env.switch(a, f"pid:{held.pid}")
    assert port_row(sw, f"pid{held.pid}")["interface"] == "vs0"
    inside = held.links()
    assert set(inside) == {"lo", "eth0", "peer0", "vs0"}
    assert ipv4_addresses(inside["vs0"]) == ["10.0.0.2/24"] and ipv4_addresses(inside["eth0"]) == []
    assert held.pings("10.0.0.1", count=3)

    assert sw.stop() == 0
    after = held.links()
    assert set(after) == {"lo", "eth0", "peer0"}
    for name in ("eth0", "peer0"):
        assert (after[name]["ifindex"], after[name]["address"]) == (
            theirs[name]["ifindex"], theirs[name]["address"],
        ), f"their {name} is the one they made"  # fmt: skip


def test_after_sigkill_down_removes_only_what_the_state_file_lists(env: Env) -> None:
    held = unshared(env)
    inode = held.inode()
    a = env.ns("a")
    sw = env.switch(a, f"pid:{held.pid}")
    assert held.pings("10.0.0.1")
    ledger = sw.ledger()
    assert records_in(sw, held.path) == ["tap"]

    assert sw.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: "eth0" not in held.links(), 10, "the tap to go with the killed vswitch's fd")
    assert sw.ledger() == ledger, "the state file outlives a SIGKILL, as it was"

    down = env.vswitch("down", "--name", sw.name)
    assert down.returncode == 0 and down.stderr == "", down.stderr
    expected: set[str] = set()
    for record in ledger["records"]:
        if record["kind"] == "netns":
            expected.add(f"removed namespace {record['name']}")
        elif record["kind"] == "socket":
            expected.add(f"removed control socket {record['path']}")
        elif record["kind"] == "resolv-conf":  # the made namespace's own, for its DHCP clients
            expected.add(f"removed {record['path']}")
        else:  # a tap died with its fd: nothing to say, nothing to do
            assert record["kind"] == "tap", record
    assert set(down.stdout.splitlines()) == expected, down.stdout
    assert {r["name"] for r in ledger["records"] if r["kind"] == "netns"} == {a}
    assert held.path not in down.stdout

    assert held.alive() and held.inode() == inode, "the process and its namespace are untouched"
    assert set(held.links()) == {"lo"} and not held.lo_up()
    assert namespaces(env.prefix) == set() and not sw.state_path.exists()


def test_routed_an_attached_namespace_gets_a_default_route_and_crosses_the_router(env: Env) -> None:
    held = unshared(env)
    assert held.default_routes() == []
    a = env.ns("a")
    sw = env.router("--segment", f"lan={a}", "--segment", f"dmz=pid:{held.pid}")
    lan_ip = port_row(sw, a)["address"].split("/")[0]
    row = port_row(sw, f"pid{held.pid}")
    assert (row["interface"], row["address"], row["segment"]) == ("eth0", "10.2.0.2/24", "dmz")
    assert held.default_routes() == [("10.2.0.1", "eth0")], "its gateway is the router's dmz address"

    assert held.pings(lan_ip, count=3), "dmz -> router -> lan"
    assert pings(a, "10.2.0.2"), "and back"

    assert sw.stop() == 0
    assert held.alive() and held.default_routes() == [], "the route went with the tap"
    assert set(held.links()) == {"lo"} and not held.lo_up()
