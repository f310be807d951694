"""Runtime faults (issue 22) done to a running switch: a port's link set down or its MTU raised from
inside its namespace, its tap deleted with `ip link del`, its namespace deleted, the control socket's
file removed, the state folder made read-only, a control client that connects and never reads.

Each gives one clear line on vswitch's stderr and a counted event (or drop) that `vswitch stats`
shows, and the rest keeps forwarding: a stream between two other ports (pings at 20 a second, every
one answered, or a TCP transfer whose bytes arrive intact) runs across the fault.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vswitch.shell.control import ControlError, request
from vswitch.shell.kernel import remove_netns_named

from .conftest import (
    CLI_TIMEOUT,
    Env,
    Switch,
    addresses_of,
    make_world,
    namespaces,
    netns_exec,
    pings,
    transfer,
    wait_for,
)

pytestmark = pytest.mark.root

EVENT_WAIT = 10.0  # seconds for a counter to move (the link check runs every 1 s, the socket's every 2 s)
STREAM_PINGS = 40  # the stream between the two other ports: 2 s of pings, 50 ms apart


@dataclass
class Lab:
    """A switch of three ports: a and b carry the stream, c takes the fault."""

    env: Env
    sw: Switch
    a: str
    b: str
    c: str
    ip: dict[str, str]


def lab(env: Env) -> Lab:
    a, b, c = env.ns("a"), env.ns("b"), env.ns("c")
    sw = env.switch(a, b, c)
    ip = addresses_of(sw)
    assert pings(a, ip[b]) and pings(a, ip[c])
    return Lab(env, sw, a, b, c, ip)


class Stream:
    """Pings from a to b, STREAM_PINGS of them 50 ms apart, started now; `check` says all came back."""

    def __init__(self, lab: Lab) -> None:
        argv = ["ip", "netns", "exec", lab.a, "ping", "-n", "-q", "-c", str(STREAM_PINGS), "-i", "0.05",
                "-W", "2", lab.ip[lab.b]]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lab.env.peers.append(self.proc)  # killed in teardown if still there

    def check(self) -> None:
        out, err = self.proc.communicate(timeout=30)
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert summary is not None, (out, err)
        assert summary.groups() == (str(STREAM_PINGS), str(STREAM_PINGS)), out


def events(sw: Switch) -> dict[str, int]:
    return dict(sw.request("stats")["events"])


def event_reaches(sw: Switch, name: str, count: int = 1) -> bool:
    return events(sw).get(name, 0) >= count


def cli_stats(sw: Switch) -> dict[str, Any]:
    """`vswitch stats --json` through the real CLI: what a person sees."""
    result: dict[str, Any] = sw.query("stats")
    return result


def logged(sw: Switch, text: str) -> bool:
    return text in sw.stderr()


def assert_no_traceback(sw: Switch) -> None:
    assert "Traceback" not in sw.stderr(), sw.stderr()


def stopped_cleanly(lab: Lab) -> None:
    """SIGTERM: exit 0, every namespace the switch made removed (the faulty port's too)."""
    assert lab.sw.stop() == 0, lab.sw.stderr()
    assert "stopped, removed what it created" in lab.sw.stdout()
    assert namespaces(lab.env.prefix) == set()
    assert_no_traceback(lab.sw)


# --- a port's link set down inside its namespace ------------------------------------------------------------
def test_a_link_set_down_in_its_namespace_is_one_logged_episode(env: Env) -> None:
    r = lab(env)
    stream = Stream(r)
    netns_exec(r.c, ["ip", "link", "set", "eth0", "down"])
    # Frames to c now: a's pings to it (its ARP flood first) are written to a tap whose link is down.
    lost = netns_exec(r.a, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", r.ip[r.c]], check=False)
    assert lost.returncode != 0, lost.stdout
    wait_for(lambda: event_reaches(r.sw, "port-link-down"), EVENT_WAIT, "a port-link-down event")
    assert logged(r.sw, f"port {r.c}: link is down in its namespace; frames to it are dropped")
    stats = cli_stats(r.sw)
    assert stats["events"]["port-link-down"] == 1  # one episode, however many frames
    assert stats["ports"][r.c]["drops"]["tx-error"] >= 3

    netns_exec(r.c, ["ip", "link", "set", "eth0", "up"])
    wait_for(lambda: pings(r.a, r.ip[r.c]), EVENT_WAIT, "a to reach c again once its link is up")
    wait_for(lambda: logged(r.sw, f"port {r.c}: link is up again"), EVENT_WAIT, "the 'up again' line")
    assert cli_stats(r.sw)["events"]["port-link-up"] == 1
    stream.check()
    assert pings(r.a, r.ip[r.b], count=3)
    stopped_cleanly(r)


# --- a port's MTU raised inside its namespace ---------------------------------------------------------------
def test_a_frame_over_the_segments_mtu_is_dropped_as_over_mtu_and_logged_with_its_size(env: Env) -> None:
    r = lab(env)
    stream = Stream(r)
    netns_exec(r.c, ["ip", "link", "set", "eth0", "mtu", "4000"])
    big = netns_exec(
        r.c, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-s", "3000", r.ip[r.a]], check=False
    )
    assert big.returncode != 0, big.stdout
    drops = cli_stats(r.sw)["ports"][r.c]["drops"]
    assert drops.get("over-mtu", 0) >= 2, drops
    # 3000 bytes of ICMP data + 8 + 20 + 14: one frame of 3042 bytes, not a GSO one.
    assert logged(r.sw, f"port {r.c}: dropped a 3042-byte frame, over the segment's MTU 1500 (+18")
    assert (
        netns_exec(r.c, ["ping", "-n", "-c", "1", "-W", "2", "-s", "1000", r.ip[r.a]], check=False).returncode
        == 0
    )
    stream.check()
    stopped_cleanly(r)


# --- a port's tap deleted in its namespace, or the namespace deleted ----------------------------------------
@pytest.mark.parametrize("how", ["ip link del", "namespace deleted"])
def test_a_port_whose_tap_goes_away_is_no_longer_read_and_the_others_forward(env: Env, how: str) -> None:
    r = lab(env)
    stream = Stream(r)
    if how == "ip link del":
        netns_exec(r.c, ["ip", "link", "del", "eth0"])
    else:
        remove_netns_named(r.c)
    wait_for(lambda: event_reaches(r.sw, "port-gone"), EVENT_WAIT, "a port-gone event")
    assert logged(r.sw, f"port {r.c}: its tap is gone")
    status = {p["port"]: p for p in r.sw.query("status")["ports"]}
    assert status[r.c]["gone"] is True and status[r.a]["gone"] is False
    assert not pings(r.a, r.ip[r.c])  # a frame to it: counted, not an error of the switch
    stream.check()
    assert cli_stats(r.sw)["events"]["port-gone"] == 1
    assert r.sw.alive()
    stopped_cleanly(r)


# --- the control socket's file removed ----------------------------------------------------------------------
def test_a_removed_control_socket_is_made_again_and_the_cli_says_what_happened(env: Env) -> None:
    r = lab(env)
    # Stopped, the switch cannot put its socket back before the CLI looks: the CLI's words are sure.
    os.kill(r.sw.pid, signal.SIGSTOP)
    try:
        r.sw.socket_path.unlink()
        missing = env.vswitch("status", "--name", r.sw.name)
    finally:
        os.kill(r.sw.pid, signal.SIGCONT)
    assert missing.returncode == 1
    assert (
        f"the control socket {r.sw.socket_path} is missing, but the instance is running (pid {r.sw.pid})"
        in (missing.stderr)
    )
    stream = Stream(r)

    def restored() -> bool:
        try:
            return event_reaches(r.sw, "control-socket-restored")
        except ControlError:  # not yet: the socket's file is still missing
            return False

    wait_for(restored, EVENT_WAIT, "the socket made again")
    assert logged(r.sw, f"control: the socket {r.sw.socket_path} was removed; listening on it again")
    assert cli_stats(r.sw)["events"]["control-socket-restored"] == 1
    stream.check()
    stopped_cleanly(r)
    assert not r.sw.socket_path.exists()


# --- the state folder read-only -----------------------------------------------------------------------------
@pytest.fixture
def tmpfs_env(tmp_path: Path) -> Iterator[Env]:
    """The Env harness (its "vsi" prefix) whose run dir is a tmpfs of its own, which a test may remount
    read-only: root writes through any mode bits, not through a read-only mount. Unmounted after the
    harness has cleaned up (its `vswitch down` needs the state file)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(run_dir)], check=True)
    try:
        with make_world(tmp_path, "vsi") as world:
            yield world
            subprocess.run(["mount", "-o", "remount,rw", str(run_dir)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(run_dir)], check=False)


def test_a_read_only_state_folder_is_logged_and_forwarding_and_teardown_go_on(tmpfs_env: Env) -> None:
    env = tmpfs_env
    r = lab(env)
    d = env.ns("d")
    subprocess.run(["mount", "-o", "remount,ro", str(env.run_dir)], check=True)
    with pytest.raises(OSError):
        (env.run_dir / "probe").write_text("x")  # the test's own check that root cannot write there
    stream = Stream(r)
    added = env.vswitch("port", "add", d, "--name", r.sw.name, "--json", timeout=30)
    assert added.returncode == 0, added.stderr  # its tap is in the ledger in memory only
    wait_for(lambda: event_reaches(r.sw, "state-write-failed"), EVENT_WAIT, "a state-write-failed event")
    assert logged(r.sw, f"state: cannot write in {env.run_dir} (Read-only file system): forwarding goes on")
    assert pings(d, r.ip[r.a])
    stream.check()
    assert cli_stats(r.sw)["events"]["state-write-failed"] >= 1
    # Teardown removes everything, the namespace added while the file could not say so included.
    stopped_cleanly(r)
    assert d not in namespaces(env.prefix)
    assert logged(r.sw, f"control: cannot remove {r.sw.socket_path}")
    subprocess.run(["mount", "-o", "remount,rw", str(env.run_dir)], check=True)
    # The stale file names what is gone already: `down` finds nothing left and clears it.
    down = env.vswitch("down", "--name", r.sw.name)
    assert down.returncode == 0, down.stderr
    assert not r.sw.state_path.exists()


# --- a control client that connects and never reads ---------------------------------------------------------
def test_a_control_client_that_never_reads_is_disconnected_and_nothing_else_waits(env: Env) -> None:
    r = lab(env)
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stalled.connect(str(r.sw.socket_path))
        # A capture of the stream's own ports: a line per frame it carries, none of them read.
        stalled.sendall(json.dumps({"cmd": "capture", "ports": [r.a, r.b]}).encode() + b"\n")
        transfer(env, r.a, r.b, r.ip[r.b], 16 << 20, seed=22)
        status = request(r.sw.socket_path, "status", timeout=2.0)  # another client, answered at once
        assert {p["port"] for p in status["ports"]} == {r.a, r.b, r.c}
        wait_for(lambda: event_reaches(r.sw, "control-client-stalled"), EVENT_WAIT, "the client dropped")
        assert logged(r.sw, "control: a client stopped reading (")
        # Its connection is closed: what it never read ends with EOF.
        stalled.settimeout(CLI_TIMEOUT)
        while stalled.recv(1 << 16):
            pass
    finally:
        stalled.close()
    assert cli_stats(r.sw)["events"]["control-client-stalled"] == 1
    transfer(env, r.a, r.b, r.ip[r.b], 4 << 20, seed=23)
    stopped_cleanly(r)
