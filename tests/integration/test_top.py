"""`vswitch top` against a running switch while a bounded ping flood crosses it: the rates it shows
are the flood's, the tables' sizes are the switch's, and `q` in a terminal leaves it."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import subprocess
import time

import pytest

from .conftest import VSWITCH, Env, Switch, addresses_of, wait_for

pytestmark = pytest.mark.root

# Echo requests 2 ms apart (ping sends sooner when replies come back fast), bounded by count and by -w.
FLOOD_PINGS = 100_000
TOP_TIMEOUT = 20.0


def flood(env: Env, src: str, dst_ip: str) -> subprocess.Popen[str]:
    """A bounded ping flood from src: FLOOD_PINGS echo requests 0.5 ms apart, stopped by -w at the latest."""
    argv = [
        "ip",
        "netns",
        "exec",
        src,
        "ping",
        "-q",
        "-n",
        "-c",
        str(FLOOD_PINGS),
        "-i",
        "0.0005",
        "-w",
        "10",
    ]
    proc = subprocess.Popen([*argv, dst_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    env.peers.append(proc)  # stopped in teardown if the test fails first
    return proc


def two_ports(env: Env) -> tuple[Switch, str, str]:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b)
    return sw, a, b


def test_once_json_shows_the_flood_on_both_ports_and_the_fdb(env: Env) -> None:
    sw, a, b = two_ports(env)
    pinger = flood(env, a, addresses_of(sw)[b])
    try:
        wait_for(lambda: sw.request("stats")["ports"][a]["rx_packets"] > 20, 10, "the flood to start")
        top = subprocess.run(
            [*VSWITCH, "top", "--name", sw.name, "--once", "--json", "--interval", "0.5"],
            capture_output=True, text=True, timeout=TOP_TIMEOUT, env=env.environ,
        )  # fmt: skip
    finally:
        pinger.kill()
    assert top.returncode == 0, top.stderr
    view = json.loads(top.stdout)
    assert 0.4 < view["interval_s"] < 5
    # Requests come in on a and leave on b; replies the other way: hundreds or thousands a second each
    # way (bounded loosely: this asserts a rate was measured, not how fast the machine is).
    for port, direction in ((a, "rx"), (b, "tx"), (b, "rx"), (a, "tx")):
        assert view["ports"][port][f"{direction}_packets_per_s"] > 100, (port, direction, view)
    request_bytes = view["ports"][a]["rx_bytes_per_s"] / view["ports"][a]["rx_packets_per_s"]
    assert 90 <= request_bytes <= 110  # 98-byte echo frames (14 + 20 + 8 + 56), plus ARP now and then
    assert view["tables"]["fdb"] == {"lan": 2}
    assert view["drops_per_s"] == {}


def test_in_a_terminal_it_refreshes_and_q_leaves(env: Env) -> None:
    sw, a, b = two_ports(env)
    pinger = flood(env, a, addresses_of(sw)[b])
    pid, fd = pty.fork()
    if pid == 0:  # the child: vswitch top on the pseudo-terminal
        os.execvpe(VSWITCH[0], [*VSWITCH, "top", "--name", sw.name, "--interval", "0.2"], env.environ)
    screen = b""
    try:
        deadline = time.monotonic() + TOP_TIMEOUT
        while b"rx pkt/s" not in screen or a.encode() not in screen or b"FDB lan 2" not in screen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"top never drew its table: {screen[-2000:]!r}")
            if select.select([fd], [], [], left)[0]:
                screen += os.read(fd, 65536)
        os.write(fd, b"q")
        deadline = time.monotonic() + TOP_TIMEOUT
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                pytest.fail("top did not leave on q")
            if select.select([fd], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):  # the child closed the terminal on its way out
                    screen += os.read(fd, 65536)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        pinger.kill()
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_a_switch_that_is_not_running_is_one_error_line(env: Env) -> None:
    top = subprocess.run(
        [*VSWITCH, "top", "--name", "nosuchswitch", "--once"],
        capture_output=True, text=True, timeout=TOP_TIMEOUT, env=env.environ,
    )  # fmt: skip
    assert top.returncode != 0
    assert len(top.stderr.strip().splitlines()) == 1 and "nosuchswitch" in top.stderr, top.stderr
