"""Real-kernel harness: uniquely named namespaces, a `vswitch up` process per switch, bounded peers.

Every test gets its own namespace prefix (`vsi` + 6 hex), its own instance names and its own
VSWITCH_RUN_DIR, so tests cannot see each other. The finalizers stop what the test started (SIGTERM,
then SIGKILL and `vswitch down`), kill leftover peers and remove every namespace with the test's prefix,
even when the test failed. Nothing waits by sleeping: `wait_for` polls a predicate against a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from vswitch.shell.control import ControlError, request
from vswitch.shell.kernel import remove_netns_named
from vswitch.tools.bench.process import terminate

NETNS_DIR = Path("/run/netns")
PEER = Path(__file__).with_name("peer.py")
VSWITCH = [sys.executable, "-m", "vswitch"]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 15.0

T = TypeVar("T")


# --- polling -----------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until predicate() is truthy and return its value; fail the test with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# --- kernel views ------------------------------------------------------------------------------------
def namespaces(prefix: str = "") -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def links(ns: str | None = None) -> dict[str, dict[str, Any]]:
    """Interfaces of a namespace (None: root) by name, as `ip -j link` reports them."""
    argv = ["ip", "-j"] + (["-n", ns] if ns else []) + ["addr", "show"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True).stdout
    return {entry["ifname"]: entry for entry in json.loads(out or "[]")}


def ipv4_addresses(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"]


def create_namespace(name: str, extra_links: Sequence[tuple[str, str]] = ()) -> None:
    """A namespace the test owns (not vswitch), with lo up and extra (ifname, address/prefix) links.

    Extra links are dummies, or empty bridges where this kernel has no dummy driver; either way an
    interface that vswitch must neither touch nor remove.
    """
    netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for ifname, address in extra_links:
            try:
                ipr.link("add", ifname=ifname, kind="dummy")
            except NetlinkError as exc:
                if exc.code not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                    raise
                ipr.link("add", ifname=ifname, kind="bridge")
            index = ipr.link_lookup(ifname=ifname)[0]
            ip, prefixlen = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
            ipr.link("set", index=index, state="up")


# --- processes -----------------------------------------------------------------------------------------
def netns_exec(
    ns: str, argv: Sequence[str], timeout: float = 30.0, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv inside namespace ns, bounded in time; raise with its stderr when check and it fails."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, input=input
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} in {ns} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The next stdout line of proc, within timeout (select, so a silent child cannot hang us)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"{what}: process exited ({proc.wait(5)}) without a line: {err.strip()}")
            return line.rstrip("\n")


def finish(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """Wait for a peer to exit 0 and return the JSON it printed last."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        pytest.fail(f"{what} did not finish within {timeout:g}s")
    if proc.returncode != 0:
        pytest.fail(f"{what} exited {proc.returncode}: {err.strip()}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def background_cli(env: Env, sw: Switch, *args: str) -> subprocess.Popen[str]:
    """`vswitch ARGS --name SW` in the background (capture, trace --live); stopped in teardown."""
    proc = subprocess.Popen(
        [*VSWITCH, *args, "--name", sw.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env.environ,
    )  # fmt: skip
    env.peers.append(proc)
    return proc


def ping_until_exit(proc: subprocess.Popen[str], ns: str, addr: str, what: str) -> str:
    """Ping (bounded, one at a time) until a capture process has seen enough and exits 0 (a capture
    attaches asynchronously, so the first pings may go by unseen); its stdout."""

    def done() -> bool:
        if proc.poll() is not None:
            return True
        netns_exec(ns, ["ping", "-n", "-c", "1", "-W", "1", addr], check=False)
        return proc.poll() is not None

    wait_for(done, 30, what)
    out, err = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, err
    return out


# Run inside a namespace: turn the link's tx checksum offload off (pyroute2's ethtool; no ethtool binary).
_CHECKSUM_OFFLOAD_OFF = """
import sys
from pyroute2.ethtool import Ethtool
ethtool = Ethtool()
features = ethtool.get_features(sys.argv[1])
features.features["tx-checksum-ip-generic"].enable = False
ethtool.set_features(sys.argv[1], features)
print(ethtool.get_features(sys.argv[1]).features["tx-checksum-ip-generic"].enable)
"""


def tx_checksum_offload_off(ns: str, ifname: str) -> None:
    """Make the kernel finish every checksum before a packet leaves ns by ifname (skb_checksum_help),
    as a real NIC puts them on the wire: a veth otherwise hands its peer CHECKSUM_PARTIAL skbs."""
    out = netns_exec(ns, [sys.executable, "-c", _CHECKSUM_OFFLOAD_OFF, ifname]).stdout.strip()
    assert out == "False", f"tx checksum offload still on for {ifname} in {ns}: {out}"


def sigterm_then_kill(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    terminate(proc, "a test's process", timeout)


@dataclass
class Env:
    """One test's world: its namespace prefix, its run dir, and everything to clean up afterwards."""

    prefix: str
    run_dir: Path
    tmp: Path
    switches: list[Switch] = field(default_factory=list)
    peers: list[subprocess.Popen[str]] = field(default_factory=list)
    _names: int = 0

    def ns(self, tag: str) -> str:
        """A namespace name owned by this test: prefix + tag."""
        return f"{self.prefix}{tag}"

    def instance_name(self) -> str:
        self._names += 1
        return f"t{self.prefix[3:]}{self._names}"

    @property
    def environ(self) -> dict[str, str]:
        return {**os.environ, "VSWITCH_RUN_DIR": str(self.run_dir)}

    def vswitch(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a one-shot `vswitch ...` command with this test's run dir."""
        return subprocess.run(
            [*VSWITCH, *args], capture_output=True, text=True, timeout=timeout, env=self.environ
        )

    def switch(self, *ports: str, args: Sequence[str] = (), name: str | None = None) -> Switch:
        """Start `vswitch up --ports ...` and wait until its control socket answers."""
        sw = Switch(self, name or self.instance_name(), list(ports), list(args))
        self.switches.append(sw)
        sw.start()
        return sw

    def router(self, *args: str, name: str | None = None) -> Switch:
        """Start a routed `vswitch up --segment ... [--uplink ...]` (no --ports) and wait until it answers."""
        return self.switch(args=args, name=name)

    def peer(self, ns: str | None, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
        """Start peer.py inside ns (None: the root namespace) in the background; killed in teardown.

        With stdin, the test holds a pipe to the peer's stdin (tcp-accept and tcp-hold stop on a line).
        """
        prefix = ["ip", "netns", "exec", ns] if ns is not None else []
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(PEER), *args],
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.peers.append(proc)
        return proc

    def run_peer(self, ns: str | None, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run peer.py to completion inside ns (None: the root namespace) and return its JSON."""
        if ns is None:
            proc = subprocess.run(
                [sys.executable, str(PEER), *args], capture_output=True, text=True, timeout=timeout
            )
            if proc.returncode != 0:
                pytest.fail(f"peer {' '.join(args)} in root exited {proc.returncode}: {proc.stderr.strip()}")
        else:
            proc = netns_exec(ns, [sys.executable, str(PEER), *args], timeout=timeout)
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for proc in self.peers:
            sigterm_then_kill(proc)
        for sw in self.switches:
            problems.extend(sw.cleanup())
        for name in sorted(namespaces(self.prefix)):
            remove_netns_named(name)
        return problems


class Switch:
    """One `vswitch up` process in the foreground, as a person would run it."""

    def __init__(self, env: Env, name: str, ports: list[str], args: list[str]) -> None:
        self.env = env
        self.name = name
        ports_args = ["--ports", ",".join(ports)] if ports else []  # none: a routed --segment topology
        self.argv = [*VSWITCH, "up", *ports_args, "--name", name, "--json", *args]
        self.stdout_path = env.tmp / f"{name}.stdout"
        self.stderr_path = env.tmp / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.table: dict[str, Any] = {}
        self.ignored: tuple[signal.Signals, ...] = ()  # signals it starts with ignored (a background job)

    @property
    def socket_path(self) -> Path:
        return self.env.run_dir / f"{self.name}.sock"

    @property
    def state_path(self) -> Path:
        return self.env.run_dir / f"{self.name}.json"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, env=self.env.environ, preexec_fn=self._ignore_signals
            )
        wait_for(self._ready, START_TIMEOUT, f"vswitch {self.name} to answer status")
        self.table = json.loads(self.stdout().splitlines()[0])

    def _ignore_signals(self) -> None:
        """In the child before exec: what a shell does to a job it starts in the background."""
        for sig in self.ignored:
            signal.signal(sig, signal.SIG_IGN)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"vswitch up exited {self.proc.returncode} before it was ready: {self.stderr()}")
        try:
            request(self.socket_path, "status", timeout=2.0)
        except (ControlError, OSError, ValueError):
            return False
        # Its port table is printed once everything is up (the metrics server starts after the
        # control socket answers): ready is both.
        return "\n" in self.stdout()

    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def request(self, cmd: str) -> Any:
        """Ask the control socket directly (no CLI process): cheap, for polling."""
        return request(self.socket_path, cmd)

    def query(self, cmd: str) -> Any:
        """`vswitch CMD --name NAME --json`, through the real CLI, parsed."""
        proc = self.env.vswitch(cmd, "--name", self.name, "--json")
        if proc.returncode != 0:
            pytest.fail(f"vswitch {cmd} exited {proc.returncode}: {proc.stderr.strip()}")
        return json.loads(proc.stdout)

    def ledger(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def tap_names(self) -> list[str]:
        """Root-namespace names vswitch gave its taps before moving them (from the state file)."""
        return [r["name"] for r in self.ledger()["records"] if r["kind"] == "tap"]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send sig and wait for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vswitch {self.name} did not exit within {timeout:g}s of signal {sig}")

    def cleanup(self) -> list[str]:
        """Finalizer: make sure the process is gone and its ledger undone, whatever the test did."""
        problems: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"vswitch {self.name} ignored SIGTERM; killed")
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        if self.state_path.exists():
            down = self.env.vswitch("down", "--name", self.name)
            if down.returncode != 0:
                problems.append(f"vswitch down --name {self.name}: {down.stderr.strip()}")
        return problems


@contextlib.contextmanager
def make_world(tmp_path: Path, family: str) -> Iterator[Env]:
    """An Env whose namespaces are named family + 6 hex; everything in it removed afterwards."""
    world = Env(prefix=f"{family}{secrets.token_hex(3)}", run_dir=tmp_path / "run", tmp=tmp_path)
    try:
        yield world
    finally:
        problems = world.cleanup()
        assert not problems, problems


HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def _resolv_conf_state() -> tuple[bytes, int, int] | None:
    """The host's /etc/resolv.conf: its bytes, inode and mtime (None: there is none)."""
    try:
        info = HOST_RESOLV_CONF.stat()
        return HOST_RESOLV_CONF.read_bytes(), info.st_ino, info.st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.fixture(scope="session", autouse=True)
def host_resolv_conf_untouched() -> Iterator[None]:
    """The whole run's promise to the machine: DHCP clients in the namespaces, vswitch's own
    /etc/netns/NS/resolv.conf files, none of it reaches the host's /etc/resolv.conf (byte-identical,
    the same file, never rewritten)."""
    before = _resolv_conf_state()
    yield
    assert _resolv_conf_state() == before, "the host's /etc/resolv.conf changed during the test run"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """This test's namespaces, run dir and processes; all removed afterwards, pass or fail."""
    with make_world(tmp_path, "vsi") as world:
        yield world


def transfer(env: Env, src: str, dst: str, dst_ip: str, nbytes: int, seed: int) -> dict[str, Any]:
    """nbytes of seeded pseudo-random data over TCP from src to a receiver on dst_ip in dst; asserts
    that the receiver counted the same bytes with the same sha256, and returns what was sent."""
    receiver = env.peer(dst, "tcp-recv", "--bind", dst_ip, "--port", "5001", "--timeout", "90")
    assert read_line(receiver, 15, f"TCP receiver in {dst} to listen") == "ready"
    sent: dict[str, Any] = env.run_peer(
        src, "tcp-send", "--host", dst_ip, "--port", "5001", "--bytes", str(nbytes),
        "--seed", str(seed), "--timeout", "90", timeout=120,
    )  # fmt: skip
    got = finish(receiver, 30, f"TCP receiver in {dst}")
    assert sent["bytes"] == nbytes
    assert got == sent  # same byte count, same sha256
    return sent


def pings(src: str | None, dst_ip: str, count: int = 1) -> bool:
    """A real `ping -c N -W 2` from namespace src (None: root) 0.2 s apart; True when all came back."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst_ip]
    if src is None:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    proc = netns_exec(src, argv, check=False)
    return proc.returncode == 0


def mac_of(ns: str, ifname: str = "eth0") -> str:
    return str(links(ns)[ifname]["address"])


def new_root_links(before: set[str]) -> set[str]:
    """Root-namespace links that appeared since `before` and look like vswitch taps."""
    return {n for n in links(None) if n.startswith("vs") and n not in before}


def signal_name(sig: int) -> str:
    return signal.Signals(sig).name


def addresses_of(sw: Switch) -> dict[str, str]:
    """Port label (namespace, or the host tap's name) -> its IPv4 address without prefix, from `up --json`."""
    return {
        (p["namespace"] or p["interface"]): p["address"].split("/")[0]
        for p in sw.table["ports"]
        if p["address"]
    }


def stop_peer(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """Tell a stdin-controlled peer (tcp-accept, tcp-hold) to finish, and return its JSON."""
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()  # communicate() in finish() closes it
    return finish(proc, timeout, what)


# --- the root namespace (host port tests) ---------------------------------------------------------------
@dataclass(frozen=True)
class RootView:
    """What the root namespace looks like: links, (ifname, address) pairs, (dst, gateway, oif) routes."""

    links: frozenset[str]
    addresses: frozenset[tuple[str, str]]
    routes: frozenset[tuple[str, str | None, str | None]]

    def without(self, ifnames: AbstractSet[str]) -> RootView:
        return RootView(
            self.links - ifnames,
            frozenset(a for a in self.addresses if a[0] not in ifnames),
            frozenset(r for r in self.routes if r[2] not in ifnames),
        )


def root_view(family: int = socket.AF_INET) -> RootView:
    """The root namespace's links, addresses and main-table routes of one family (default IPv4, or
    socket.AF_INET6), read with pyroute2."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addresses = {
            (names.get(a["index"], str(a["index"])), f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(family=family)
        }
        routes = set()
        for r in ipr.get_routes(family=family, table=254):
            dst = r.get_attr("RTA_DST")
            oif = r.get_attr("RTA_OIF")
            routes.add(
                (
                    f"{dst}/{r['dst_len']}" if dst else "default",
                    r.get_attr("RTA_GATEWAY"),
                    names.get(oif) if oif is not None else None,
                )
            )
    return RootView(frozenset(names.values()), frozenset(addresses), frozenset(routes))


def assert_root_restored(before: RootView, after: RootView, ours: str) -> None:
    """After teardown the root namespace is as before: our tap is gone, nothing else changed.

    Links that exist in only one of the two views and are not ours (another test's taps passing
    through the root namespace) are churn and ignored, with their addresses and routes.
    """
    assert ours not in after.links, f"host port {ours} left in the root namespace"
    churn = (before.links ^ after.links) - {ours}
    assert after.without(churn) == before.without(churn)


def free_root_subnet(first: str = "10.77") -> tuple[str, int]:
    """A (first two octets, N) such that FIRST.N.0/24 and the next two N overlap no root route or address."""
    view = root_view()
    taken: list[IPv4Network] = []
    for dst, _, _ in view.routes:
        if dst != "default":
            taken.append(IPv4Network(dst, strict=False))
    for _, address in view.addresses:
        taken.append(IPv4Network(address, strict=False))
    for n in range(secrets.randbelow(200) + 10, 250):
        candidates = [IPv4Network(f"{first}.{n + i}.0/24") for i in range(3)]
        if not any(c.overlaps(t) for c in candidates for t in taken if t.prefixlen > 0):
            return first, n
    pytest.fail(f"no free {first}.N.0/24 subnet in the root namespace")


# --- the routed reference topology (issue 3) ------------------------------------------------------------
UPLINK_ADDRESS = "198.18.0.2"  # the router's uplink address: what the outside sees (masquerade source)
UPSTREAM_ADDRESS = "198.18.0.1"  # the outside namespace


@dataclass
class Routed:
    """lan = ns1, ns2 (10.1.0.0/24), dmz = ns3 (10.2.0.0/24), uplink `wan`, tcp:8080 -> ns3:80."""

    sw: Switch
    ns1: str
    ns2: str
    ns3: str
    wan: str
    ip: dict[str, str]


def start_routed(env: Env, *extra: str) -> Routed:
    ns1, ns2, ns3, wan = (env.ns(t) for t in ("1", "2", "3", "w"))
    sw = env.router(
        "--segment", f"lan={ns1},{ns2}", "--segment", f"dmz={ns3}", "--uplink", wan,
        "--forward", f"tcp:8080={ns3}:80", *extra,
    )  # fmt: skip
    ip = addresses_of(sw)
    assert ip == {ns1: "10.1.0.2", ns2: "10.1.0.3", ns3: "10.2.0.2", wan: UPSTREAM_ADDRESS}
    return Routed(sw, ns1, ns2, ns3, wan, ip)


def unshare_sleep(env: Env) -> subprocess.Popen[str]:
    """A process in a network namespace of its own (`unshare --net sleep 600`, killed in teardown with
    the test's peers), once unshare(2) has run: before that, /proc/PID/ns/net is still ours, and a tap
    attached there would land in the root namespace."""
    proc = subprocess.Popen(
        ["unshare", "--net", "sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    env.peers.append(proc)
    ours = os.stat("/proc/self/ns/net").st_ino

    def own_namespace() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"unshare --net sleep exited {proc.returncode}: {proc.communicate()[1].strip()}")
        with contextlib.suppress(FileNotFoundError):
            return os.stat(f"/proc/{proc.pid}/ns/net").st_ino != ours
        return False

    wait_for(own_namespace, 10, "unshare --net to enter a namespace of its own")
    return proc


# Run inside a namespace: accept one TCP connection on [::]:argv[1] within argv[2] seconds, read it to
# the end and print one JSON line: the bytes, their sha256 and the peer's address as this side sees it.
TCP_SERVER6 = """
import hashlib, json, socket, sys
port, timeout = int(sys.argv[1]), float(sys.argv[2])
with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::", port))
    srv.listen(1)
    srv.settimeout(timeout)
    print("ready", flush=True)
    conn, peer = srv.accept()
    with conn:
        conn.settimeout(timeout)
        digest, received = hashlib.sha256(), 0
        while chunk := conn.recv(1 << 18):
            digest.update(chunk)
            received += len(chunk)
print(json.dumps({"bytes": received, "sha256": digest.hexdigest(), "peer": peer[0]}))
"""
