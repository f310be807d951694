"""Crash at any moment (issue 22): `vswitch up` SIGKILLed at a random point of start-up, of running
(after live port changes, or while one is in flight) or of teardown, then `vswitch down`; afterwards
nothing of vswitch's is left, and nothing of the user's was touched.

The user's world is real, and checked rather than assumed: a namespace that was there before (a veth
pair with an address on each end, a route through it, lo down and bare) is one of the switch's ports,
and a process in a namespace of its own (`unshare --net sleep`, with a veth pair, an address and a
route too) is attached by `pid:PID`. Both are snapshotted (links, addresses, the routes of every
table, lo's state) before vswitch starts and compared exactly after `down`; the namespaces must be the
same ones (cookie), and the process alive.

What must be gone: every namespace vswitch made (and its /run/netns mount point), every /etc/netns
folder of this iteration, every file in the run folder (state, .sock, leases, *.tmp, *.claim), every
process of the instance, its taps; and the root namespace's addresses and routes are as before.

An iteration is one seed and one kind: the seed decides the moment of the kill and the live changes
before it, so `--seed S --iterations 1 --kinds K` repeats one (the names are fresh each time).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ...shell import kernel
from ...shell.control import ControlError, request

T = TypeVar("T")

KINDS: Final = (
    "startup/any",
    "startup/build",
    "running/after-changes",
    "running/during-change",
    "teardown/idle",
    "teardown/after-changes",
)
VSWITCH: Final = (sys.executable, "-m", "vswitch")
START_TIMEOUT: Final = 30.0  # `up` ready, or a build step seen
EXIT_TIMEOUT: Final = 20.0  # a killed or stopped process gone
CLI_TIMEOUT: Final = 60.0  # `vswitch down`
REQUEST_TIMEOUT: Final = 30.0  # one live port change
SETTLE_TIMEOUT: Final = 10.0  # the user's namespaces steady before the first snapshot
STARTUP_WINDOW: Final = 1.5  # startup/any: the kill comes 0 .. this many seconds after the spawn
BUILD_WINDOW: Final = 0.25  # startup/build: after the first sign of building
CHANGE_WINDOW: Final = 0.05  # running/during-change: after the request went (a change takes 15-50 ms)
RUNNING_WINDOW: Final = 0.2  # running/after-changes: after the last change answered
TEARDOWN_WINDOW: Final = 0.25  # teardown/*: after SIGTERM (a teardown takes about 0.2 s)
UNDO_WINDOW: Final = 0.04  # teardown/*: after the ledger's first record was undone
POLL: Final = 0.002  # how often a build step is looked for: the kill must land during the build

IFF_UP: Final = 0x1
IFA_F_TENTATIVE: Final = 0x40  # include/uapi/linux/if_addr.h: duplicate address detection running
NETNS_ETC: Final = Path("/etc/netns")
USER_NET: Final = ("10.254.0.1/30", "10.254.0.2/30", "10.253.0.0/24")  # the user's veth ends, their route


@dataclass
class Result:
    """One iteration: what was done, when the kill came, and what was left or touched (problems)."""

    seed: int
    kind: str
    moment: str = ""
    ledger: list[str] = field(default_factory=list)  # the state file's record kinds when down ran
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        fields = ("seed", "kind", "ok", "moment", "ledger", "problems")
        return {**{name: getattr(self, name) for name in fields}, "seconds": round(self.seconds, 3)}


# --- views of the kernel --------------------------------------------------------------------------------
def snapshot(where: str | None) -> dict[str, list[str]]:
    """A namespace (a name, a path, None: the root) as the user sees it: links (index, name, flags,
    MTU, MAC, kind, operstate), addresses (with their flags), routes of every table, IPv4 and IPv6.
    Counters and timers are left out; a flag that duplicate address detection clears by itself too."""
    with IPRoute() if where is None else IPRoute(netns=where, flags=0) as ipr:
        names: dict[int, str] = {}
        links = []
        for link in ipr.get_links():
            name = str(link.get_attr("IFLA_IFNAME"))
            names[link["index"]] = name
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            links.append(
                f"{link['index']} {name} flags={link['flags']:#x} mtu={link.get_attr('IFLA_MTU')} "
                f"mac={link.get_attr('IFLA_ADDRESS')} kind={kind} oper={link.get_attr('IFLA_OPERSTATE')}"
            )
        addresses = []
        for addr in ipr.get_addr():
            flags = (addr.get_attr("IFA_FLAGS") or addr["flags"]) & ~IFA_F_TENTATIVE
            addresses.append(
                f"{names.get(addr['index'], addr['index'])} {addr.get_attr('IFA_LOCAL') or ''} "
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']} scope={addr['scope']} flags={flags:#x}"
            )
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.route("dump", family=family):
                oif = route.get_attr("RTA_OIF")
                routes.append(
                    f"table={route.get_attr('RTA_TABLE')} {route.get_attr('RTA_DST') or 'default'}"
                    f"/{route['dst_len']} via={route.get_attr('RTA_GATEWAY')} "
                    f"dev={names.get(oif, oif) if oif is not None else None} type={route['type']} "
                    f"scope={route['scope']} proto={route['proto']} src={route.get_attr('RTA_PREFSRC')} "
                    f"metric={route.get_attr('RTA_PRIORITY')}"
                )
    return {"links": sorted(links), "addresses": sorted(addresses), "routes": sorted(routes)}


def differences(before: dict[str, list[str]], after: dict[str, list[str]], where: str) -> list[str]:
    """Each line that one snapshot has and the other lacks, said as gone or new."""
    found = []
    for key in before:
        was, now = set(before[key]), set(after[key])
        what = {"links": "link", "addresses": "address", "routes": "route"}[key]
        found += [f"{where}: {what} gone: {line}" for line in sorted(was - now)]
        found += [f"{where}: {what} new: {line}" for line in sorted(now - was)]
    return found


def root_differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """The root namespace as before, but for links that are in only one of the two views: another
    program's (other switches' taps passing through) come and go, with their addresses and routes.
    Our own taps are checked by name (leftover_taps)."""

    def names(view: dict[str, list[str]]) -> set[str]:
        return {line.split()[1] for line in view["links"]}

    churn = names(before) ^ names(after)

    def steady(view: dict[str, list[str]]) -> dict[str, list[str]]:
        def keep(line: str) -> bool:
            return not any(f" {name} " in f" {line} " or f"dev={name} " in line for name in churn)

        return {
            "addresses": [a for a in view["addresses"] if a.split()[0] not in churn],
            "routes": [r for r in view["routes"] if keep(r)],
        }

    return differences(steady(before), steady(after), "root namespace")


def tun_holders() -> set[str]:
    """The tun/tap devices some process holds open (its fdinfo says `iff: NAME`)."""
    held = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    for line in info:
                        if line.startswith("iff:"):
                            held.add(line.split()[1])
    return held


def processes_with(needle: str) -> list[str]:
    """Processes (pid and command line) whose environment holds needle (NAME=VALUE), zombies aside."""
    found = []
    wanted = b"\0" + needle.encode() + b"\0"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if wanted in b"\0" + environ:
                command = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                found.append(f"{pid} {command.strip()}")
    return found


def netns_mounts(prefix: str) -> set[str]:
    """Mount points under /run/netns whose names start with prefix (a bind mount may outlive its file)."""
    found = set()
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            point = line.split()[4]
            if point.startswith(f"{kernel.NETNS_DIR}/{prefix}"):
                found.add(point.rsplit("/", 1)[1])
    return found


def named_namespaces(prefix: str) -> set[str]:
    try:
        return {n for n in os.listdir(kernel.NETNS_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def poll(predicate: Callable[[], T | None], timeout: float, interval: float = 0.02) -> T | None:
    """predicate()'s first truthy value within timeout, or None at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --- the user's world -------------------------------------------------------------------------------------
def furnish(where: str, ends: tuple[str, str]) -> None:
    """The user's things in a namespace: duplicate address detection off for new links (their
    addresses are final at once, so a snapshot is steady), a veth pair with an address on each end,
    both up, a route through it. lo is left as it is (down, bare)."""

    def no_dad() -> None:
        with open("/proc/sys/net/ipv6/conf/default/dad_transmits", "w") as conf:
            conf.write("0")

    kernel.in_namespace(where, no_dad)
    near, far, routed = USER_NET
    with IPRoute(netns=where, flags=0) as ipr:
        ipr.link("add", ifname=ends[0], kind="veth", peer=ends[1])
        for ifname, address in zip(ends, (near, far), strict=True):
            index = ipr.link_lookup(ifname=ifname)[0]
            ip, prefixlen = address.split("/")
            ipr.addr("add", index=index, address=ip, prefixlen=int(prefixlen))
            ipr.link("set", index=index, state="up")
        ipr.route("add", dst=routed, gateway=far.split("/")[0])


def steady_snapshot(where: str, ends: tuple[str, str]) -> dict[str, list[str]]:
    """The namespace's snapshot once it has settled: the veth ends up (operstate comes through the
    kernel's link watch, a moment after the link) with their link-local addresses, and two looks in a
    row alike. Raises RuntimeError at SETTLE_TIMEOUT."""
    last: list[dict[str, list[str]]] = []

    def link_local_routed(view: dict[str, list[str]], end: str) -> bool:
        """end has its link-local address, and the local table its route (added a moment later)."""
        found = [line.split()[-3] for line in view["addresses"] if line.startswith(f"{end} ")]
        local = [a.split("/")[0] for a in found if a.startswith("fe80:")]
        return bool(local) and all(
            any(r.startswith(f"table=255 {address}/128 ") for r in view["routes"]) for address in local
        )

    def settled() -> dict[str, list[str]] | None:
        view = snapshot(where)
        ready = all(
            any(f" {end} " in line and "oper=UP" in line for line in view["links"])
            and link_local_routed(view, end)
            for end in ends
        )
        same = bool(last) and last[-1] == view
        last.append(view)
        return view if ready and same else None

    view = poll(settled, SETTLE_TIMEOUT, 0.05)
    if view is None:
        raise RuntimeError(f"the user's namespace {where} did not settle within {SETTLE_TIMEOUT:g}s")
    return view


def plain_environ() -> dict[str, str]:
    """The environment of the user's own processes: no VSWITCH_RUN_DIR (vswitch's are found by it)."""
    return {k: v for k, v in os.environ.items() if k != "VSWITCH_RUN_DIR"}


@dataclass
class User:
    """The user's world: a namespace of theirs and a process in a namespace of its own, furnished,
    with their snapshots. Made once and kept across iterations while none touches it (a kill that
    did is a failure, and the runner makes a new one); dispose() removes it."""

    tag: str
    lifetime: float  # the process sleeps this long at most (seconds)
    sleeper: subprocess.Popen[bytes] | None = None
    before: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # where -> snapshot
    cookies: dict[str, int | None] = field(default_factory=dict)

    @classmethod
    @contextlib.contextmanager
    def made(cls, prefix: str, lifetime: float = 600.0) -> Iterator[User]:
        user = cls(f"{prefix}{secrets.token_hex(2)}", lifetime)
        try:
            user.build()
            yield user
        finally:
            user.dispose()

    @property
    def namespace(self) -> str:
        return f"{self.tag}u"

    @property
    def pid(self) -> int:
        """The attached process's."""
        assert self.sleeper is not None
        return self.sleeper.pid

    @property
    def attached(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def build(self) -> None:
        netns.create(self.namespace)
        furnish(self.namespace, ("u0", "u1"))
        self.sleeper = subprocess.Popen(
            ["unshare", "--net", "sleep", str(int(self.lifetime))], env=plain_environ(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        ours = os.stat("/proc/self/ns/net").st_ino
        sleeper = self.sleeper

        def unshared() -> bool:
            if sleeper.poll() is not None:
                raise RuntimeError(f"unshare --net sleep exited {sleeper.returncode}")
            with contextlib.suppress(FileNotFoundError):
                return os.stat(self.attached).st_ino != ours
            return False

        if not poll(unshared, SETTLE_TIMEOUT):
            raise RuntimeError("unshare --net did not enter a namespace of its own")
        furnish(self.attached, ("p0", "p1"))
        self.before = {self.namespace: steady_snapshot(self.namespace, ("u0", "u1")),
                       self.attached: steady_snapshot(self.attached, ("p0", "p1"))}  # fmt: skip
        self.cookies = {where: kernel.netns_cookie(where) for where in self.before}

    def touched(self) -> list[str]:
        """What of theirs changed: the process gone, another namespace, a link, address or route."""
        if self.sleeper is None or self.sleeper.poll() is not None:
            return ["the attached process exited"]
        found = []
        for where, before in self.before.items():
            cookie = kernel.netns_cookie(where)
            if cookie != self.cookies[where]:
                found.append(f"{where}: not the same namespace (cookie {self.cookies[where]} -> {cookie})")
                continue
            found += differences(before, snapshot(where), where)
        return found

    def dispose(self) -> None:
        """The process killed (and reaped), the user's namespace removed."""
        if self.sleeper is not None and self.sleeper.poll() is None:
            self.sleeper.kill()
            self.sleeper.wait(EXIT_TIMEOUT)
        for name in named_namespaces(self.tag) | netns_mounts(self.tag):
            with contextlib.suppress(OSError):
                kernel.remove_netns_named(name)


@dataclass
class World:
    """One iteration: its names (vswitch's namespaces start with tag), its run folder, its vswitch, the
    user's world it runs beside; dispose() removes all of this iteration's, pass or fail."""

    tag: str
    instance: str
    workdir: Path
    user: User
    up: subprocess.Popen[bytes] | None = None
    root_before: dict[str, list[str]] = field(default_factory=dict)
    taps_seen: set[str] = field(default_factory=set)

    @classmethod
    @contextlib.contextmanager
    def made(cls, prefix: str, user: User) -> Iterator[World]:
        tag = user.tag
        while tag == user.tag:
            tag = f"{prefix}{secrets.token_hex(2)}"
        world = cls(tag, f"cr{secrets.token_hex(4)}", Path(tempfile.mkdtemp(prefix=f"{tag}-")), user)
        try:
            world.run_dir.mkdir(mode=0o700)
            world.root_before = snapshot(None)
            yield world
        finally:
            world.dispose()

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    @property
    def state_path(self) -> Path:
        return self.run_dir / f"{self.instance}.json"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"{self.instance}.sock"

    def ns(self, role: str) -> str:
        return f"{self.tag}{role}"

    @property
    def attached_label(self) -> str:
        return f"pid{self.user.pid}"

    @property
    def environ(self) -> dict[str, str]:
        """vswitch's environment: this iteration's run folder (and so its processes are findable)."""
        return {**plain_environ(), "VSWITCH_RUN_DIR": str(self.run_dir)}

    # --- vswitch ------------------------------------------------------------------------------------------
    def spawn(self) -> subprocess.Popen[bytes]:
        """`vswitch up`: lan = a namespace it makes and the user's; dmz = another it makes and the
        process by pid; an uplink namespace it makes; routed, so with DHCP (a lease file) and DNS
        (each made namespace's resolv.conf)."""
        argv = [
            *VSWITCH, "up", "--segment", f"lan={self.ns('a')},{self.user.namespace}",
            "--segment", f"dmz={self.ns('b')},pid:{self.user.pid}", "--uplink", self.ns("w"),
            "--name", self.instance, "--json",
        ]  # fmt: skip
        with open(self.workdir / "up.stdout", "wb") as out, open(self.workdir / "up.stderr", "wb") as err:
            self.up = subprocess.Popen(argv, stdout=out, stderr=err, env=self.environ, start_new_session=True)
        return self.up

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.workdir / "up.stderr").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:])
        return ""

    def ready(self) -> bool:
        """The control socket answers and the port table is printed (everything is up)."""
        assert self.up is not None
        if self.up.poll() is not None:
            raise RuntimeError(
                f"vswitch up exited {self.up.returncode} before it was ready: {self.log_tail()}"
            )
        try:
            request(self.socket_path, "status", timeout=2.0)
        except (ControlError, OSError, ValueError):
            return False
        return (self.workdir / "up.stdout").read_bytes().endswith(b"\n")

    def wait_ready(self) -> None:
        if not poll(self.ready, START_TIMEOUT):
            raise RuntimeError(f"vswitch up not ready within {START_TIMEOUT:g}s: {self.log_tail()}")

    def records(self) -> list[dict[str, Any]]:
        """The state file's records now ([] when there is none)."""
        with contextlib.suppress(OSError, ValueError):
            found: list[dict[str, Any]] = json.loads(self.state_path.read_text())["records"]
            return found
        return []

    def note_taps(self) -> None:
        """The tap names the state file gives now (to check later that none is left anywhere)."""
        with contextlib.suppress(OSError, ValueError):
            records = json.loads(self.state_path.read_text())["records"]
            self.taps_seen |= {r["name"] for r in records if r["kind"] == "tap"}

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send sig; False if the process had already exited."""
        assert self.up is not None
        if self.up.poll() is not None:
            return False
        self.up.send_signal(sig)
        return True

    def changes(self) -> list[tuple[str, dict[str, Any]]]:
        """The live port changes, in an order where each is valid after the ones before it: a port
        in a namespace vswitch makes, the attached process's and the user's moved, the new one moved
        and removed, and added again."""
        c = self.ns("c")
        return [
            ("add", {"spec": c, "segment": "lan"}),
            ("move", {"port": self.attached_label, "segment": "lan"}),
            ("move", {"port": c, "segment": "dmz"}),
            ("move", {"port": self.user.namespace, "segment": "dmz"}),
            ("del", {"port": c}),
            ("add", {"spec": c, "segment": "dmz"}),
        ]

    def change(self, op: str, fields: dict[str, Any]) -> None:
        request(self.socket_path, "port", timeout=REQUEST_TIMEOUT, op=op, **fields)
        self.note_taps()

    # --- after the kill -------------------------------------------------------------------------------
    def finish(self, result: Result) -> None:
        """Wait for the process to go, run `vswitch down`, and put what is left or touched in result."""
        assert self.up is not None
        try:
            self.up.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            result.problems.append(f"vswitch up still running {EXIT_TIMEOUT:g}s after the kill")
            self.up.kill()
            self.up.wait(EXIT_TIMEOUT)
        needle = f"VSWITCH_RUN_DIR={self.run_dir}"
        stragglers = poll(lambda: not processes_with(needle), EXIT_TIMEOUT)
        if not stragglers:
            result.problems += [f"process left after the kill: {p}" for p in processes_with(needle)]
        self.note_taps()
        with contextlib.suppress(OSError, ValueError):
            result.ledger = [r["kind"] for r in json.loads(self.state_path.read_text())["records"]]
        down = subprocess.run(
            [*VSWITCH, "down", "--name", self.instance], capture_output=True, text=True, env=self.environ,
            timeout=CLI_TIMEOUT,
        )  # fmt: skip
        if down.returncode != 0 or down.stderr:
            result.problems.append(f"vswitch down exited {down.returncode}: {down.stderr.strip()}")
        if not poll(lambda: not processes_with(needle), EXIT_TIMEOUT):
            result.problems += [f"process left after down: {p}" for p in processes_with(needle)]
        result.problems += self.leftovers() + self.touched()

    def leftovers(self) -> list[str]:
        """What of vswitch's is still there."""
        found = []
        ours = named_namespaces(self.tag)
        found += [f"namespace left: {name}" for name in sorted(ours)]
        mounts = netns_mounts(self.tag)
        found += [f"namespace still mounted: {kernel.NETNS_DIR}/{name}" for name in sorted(mounts)]
        with contextlib.suppress(FileNotFoundError):
            etc = [p for p in os.listdir(NETNS_ETC) if p.startswith(self.tag)]
            found += [f"left: {NETNS_ETC / name}" for name in sorted(etc)]
        found += [f"file left in the run folder: {p.name}" for p in sorted(self.run_dir.iterdir())]
        root_links = {line.split()[1] for line in snapshot(None)["links"]}
        before = {line.split()[1] for line in self.root_before["links"]}
        found += [f"tap left in the root namespace: {name}" for name in sorted(self.taps_seen & root_links)]
        strays = {n for n in root_links - before - self.taps_seen if n.startswith("vs")}
        if strays:
            found += [f"unheld tap in the root namespace: {n}" for n in sorted(strays - tun_holders())]
        return found

    def touched(self) -> list[str]:
        """What of the user's changed: their namespace, their process and its namespace, the root."""
        return self.user.touched() + root_differences(self.root_before, snapshot(None))

    def dispose(self) -> None:
        """Everything of this iteration goes, whatever happened: vswitch, a `down` if its state is
        left, every namespace and /etc/netns folder with the tag, the folder."""
        if self.up is not None and self.up.poll() is None:
            self.up.kill()
            self.up.wait(EXIT_TIMEOUT)
        if self.state_path.exists():
            subprocess.run([*VSWITCH, "down", "--name", self.instance], capture_output=True,
                           env=self.environ, timeout=CLI_TIMEOUT)  # fmt: skip
        for name in named_namespaces(self.tag) | netns_mounts(self.tag):
            with contextlib.suppress(OSError):
                kernel.remove_netns_named(name)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(NETNS_ETC):
                if name.startswith(self.tag):
                    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- the kinds of moment ------------------------------------------------------------------------------------
def _startup_any(world: World, rng: random.Random) -> str:
    delay = rng.uniform(0, STARTUP_WINDOW)
    world.spawn()
    time.sleep(delay)  # the random moment itself, not a wait for something
    if not world.kill():
        raise RuntimeError(f"vswitch up exited by itself within {delay:.3f}s: {world.log_tail()}")
    return f"SIGKILL {delay:.3f}s after the spawn"


def _startup_build(world: World, rng: random.Random) -> str:
    sign = rng.choice(("state file", "namespace"))
    delay = rng.uniform(0, BUILD_WINDOW)
    started = time.monotonic()
    up = world.spawn()

    def building() -> bool:
        if up.poll() is not None:
            raise RuntimeError(f"vswitch up exited {up.returncode} during the build: {world.log_tail()}")
        if sign == "state file":
            return world.state_path.exists()
        return bool(named_namespaces(world.tag))

    if not poll(building, START_TIMEOUT, POLL):
        raise RuntimeError(f"no {sign} within {START_TIMEOUT:g}s of the spawn")
    seen = time.monotonic() - started
    time.sleep(delay)
    world.note_taps()
    if not world.kill():
        raise RuntimeError(f"vswitch up exited by itself: {world.log_tail()}")
    return f"SIGKILL {delay:.3f}s after its first {sign} ({seen:.3f}s after the spawn)"


def _apply_changes(world: World, count: int) -> list[str]:
    done = []
    for op, fields in world.changes()[:count]:
        world.change(op, fields)
        done.append(f"{op} {fields.get('spec') or fields.get('port')}")
    return done


def _running_after_changes(world: World, rng: random.Random) -> str:
    count = rng.randint(1, len(world.changes()))
    delay = rng.uniform(0, RUNNING_WINDOW)
    world.spawn()
    world.wait_ready()
    done = _apply_changes(world, count)
    time.sleep(delay)
    world.note_taps()
    if not world.kill():
        raise RuntimeError(f"vswitch up exited by itself: {world.log_tail()}")
    return f"SIGKILL {delay:.3f}s after {', '.join(done)}"


def _running_during_change(world: World, rng: random.Random) -> str:
    changes = world.changes()
    before = rng.randint(0, len(changes) - 1)
    delay = rng.uniform(0, CHANGE_WINDOW)
    world.spawn()
    world.wait_ready()
    done = _apply_changes(world, before)
    op, fields = changes[before]
    outcome: list[str] = []

    def in_flight() -> None:
        try:
            request(world.socket_path, "port", timeout=REQUEST_TIMEOUT, op=op, **fields)
            outcome.append("it had answered")
        except (ControlError, OSError, ValueError) as exc:
            outcome.append(f"it was cut short: {exc}")

    thread = threading.Thread(target=in_flight, name="port-change")
    thread.start()
    time.sleep(delay)
    world.note_taps()
    if not world.kill():
        raise RuntimeError(f"vswitch up exited by itself: {world.log_tail()}")
    thread.join(REQUEST_TIMEOUT)
    after = f" after {', '.join(done)}" if done else ""
    what = f"{op} {fields.get('spec') or fields.get('port')}"
    return f"SIGKILL {delay:.3f}s into `port {what}`{after} ({outcome[0] if outcome else 'no answer'})"


def _teardown(world: World, rng: random.Random, changes: bool) -> str:
    """SIGTERM, then SIGKILL: a random moment after the SIGTERM (teardown takes about 0.2 s here:
    taps closed, sockets, then the ledger undone newest-first), or, half the time, a moment after
    the ledger began to shrink (in the middle of the undo)."""
    count = rng.randint(1, len(world.changes())) if changes else 0
    sign = rng.choice(("SIGTERM", "the undo's first step"))
    delay = rng.uniform(0, TEARDOWN_WINDOW if sign == "SIGTERM" else UNDO_WINDOW)
    up = world.spawn()
    world.wait_ready()
    done = _apply_changes(world, count)
    world.note_taps()
    records = len(world.records())
    world.kill(signal.SIGTERM)
    if sign != "SIGTERM":
        poll(lambda: up.poll() is not None or len(world.records()) < records, EXIT_TIMEOUT, POLL)
    time.sleep(delay)
    after = f" after {', '.join(done)}" if done else ""
    if not world.kill():
        return f"SIGTERM{after}; it finished teardown within {delay:.3f}s of {sign}, before the SIGKILL"
    return f"SIGKILL {delay:.3f}s after {sign}{after}"


HARNESS_ERRORS: Final = (RuntimeError, OSError, NetlinkError, subprocess.SubprocessError)

KILLERS: Final[dict[str, Callable[[World, random.Random], str]]] = {
    "startup/any": _startup_any,
    "startup/build": _startup_build,
    "running/after-changes": _running_after_changes,
    "running/during-change": _running_during_change,
    "teardown/idle": lambda world, rng: _teardown(world, rng, False),
    "teardown/after-changes": lambda world, rng: _teardown(world, rng, True),
}


def run_iteration(seed: int, kind: str, prefix: str = "vcr", user: User | None = None) -> Result:
    """One kill of kind at the moment seed decides, then `vswitch down` and the checks; beside user's
    world (made for this iteration alone when None)."""
    if kind not in KILLERS:
        raise ValueError(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    if user is None:
        try:
            with User.made(prefix) as own:
                return run_iteration(seed, kind, prefix, own)
        except HARNESS_ERRORS as exc:
            return Result(seed, kind, problems=[f"harness: the user's world: {exc}"])
    result = Result(seed, kind)
    started = time.monotonic()
    rng = random.Random(f"{seed}/{kind}")
    try:
        with World.made(prefix, user) as world:
            try:
                result.moment = KILLERS[kind](world, rng)
            except (*HARNESS_ERRORS, ControlError) as exc:
                result.problems.append(f"harness: {exc}")
                world.kill()
            if world.up is not None:
                world.finish(result)
    except HARNESS_ERRORS as exc:
        result.problems.append(f"harness: {exc}")
    result.seconds = time.monotonic() - started
    return result


def seeds_and_kinds(seed: int, kinds: Sequence[str]) -> Iterator[tuple[int, str]]:
    """Iteration i: seed + i and the kinds in turn; so the first one is `--seed S --kinds K`'s."""
    i = 0
    while True:
        yield seed + i, kinds[i % len(kinds)]
        i += 1


def line(index: int, total: int, result: Result) -> str:
    """One iteration as a line; a failure adds what was left or touched, and how to repeat it."""
    state = "ok" if result.ok else "FAIL"
    text = (f"[{index}/{total}] seed={result.seed} kind={result.kind} {state} {result.seconds:.1f}s: "
            f"{result.moment or '-'}; ledger at down: {len(result.ledger)} records")  # fmt: skip
    if not result.ok:
        text += "".join(f"\n    {p}" for p in result.problems)
        text += f"\n    repeat: --seed {result.seed} --iterations 1 --kinds {result.kind}"
    return text


def run(
    iterations: int,
    seed: int,
    minutes: float,
    kinds: Sequence[str] = KINDS,
    prefix: str = "vcr",
    report: Callable[[str], None] | None = None,
) -> list[Result]:
    """Up to iterations iterations and at most minutes of them (the last one started finishes), beside
    one user's world, made anew after a failure (which may have touched it)."""
    deadline = time.monotonic() + minutes * 60
    results: list[Result] = []
    schedule = seeds_and_kinds(seed, kinds)
    index = 0
    while index < iterations and time.monotonic() < deadline:
        with User.made(prefix, lifetime=minutes * 60 + 600) as user:
            for iteration_seed, kind in schedule:
                index += 1
                result = run_iteration(iteration_seed, kind, prefix, user)
                results.append(result)
                if report is not None:
                    report(line(index, iterations, result))
                if not result.ok or index >= iterations or time.monotonic() >= deadline:
                    break
    return results
