"""The in-process Python API serves the same control commands as `vswitch up`, debug ones included.

The control table is explicit (`vswitch.tools.debug.SERVED`, handed to the Instance by the CLI and by
`vswitch.api`), so capture, trace, inject and debug-info must answer whatever modules the caller
imported. The switch runs in a fresh interpreter that imports only `vswitch.api`; the real CLI talks to
it from outside, with the same VSWITCH_RUN_DIR. Teardown stops the interpreter (SIGTERM, then SIGKILL
and `vswitch down`) and checks that its namespaces and taps are gone.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vswitch.shell.control import request
from vswitch.shell.kernel import remove_netns_named
from vswitch.tools.bench.process import terminate

from .conftest import CLI_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, VSWITCH, links, namespaces, wait_for

pytestmark = pytest.mark.root

# Run with `python -c SERVE A B NAME`: imports vswitch.api and nothing else of vswitch explicitly.
# One JSON line ({"name", "ports"}) once it serves; stops (and removes what it made) when stdin closes
# or on SIGTERM. The handler ignores further SIGTERMs so a second one cannot cut the clean-up short.
SERVE = r"""
import json
import signal
import sys

from vswitch.api import Switch


def on_term(signum, _frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, on_term)
a, b, name = sys.argv[1:4]
sw = Switch(ports=[a, b], name=name)
try:
    sw.start()
    print(json.dumps({"name": sw.name, "ports": sw.ports}), flush=True)
    sys.stdin.read()
finally:
    sw.stop()
"""


@dataclass
class ApiRun:
    """The interpreter running `vswitch.api.Switch`, and what the test needs to talk to it."""

    proc: subprocess.Popen[str]
    name: str
    prefix: str
    a: str
    b: str
    run_dir: Path
    stderr_path: Path
    environ: dict[str, str]
    ports: dict[str, dict[str, Any]]  # namespace -> Port.describe()
    taps: list[str]  # the names the taps had in the root namespace (from the ledger)

    @property
    def socket_path(self) -> Path:
        return self.run_dir / f"{self.name}.sock"

    @property
    def state_path(self) -> Path:
        return self.run_dir / f"{self.name}.json"

    def ip(self, ns: str) -> str:
        return str(self.ports[ns]["address"]).split("/")[0]

    def vswitch(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """The real CLI against this instance: `python -m vswitch ARGS --name NAME`."""
        return subprocess.run(
            [*VSWITCH, *args, "--name", self.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ,
        )

    def background(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*VSWITCH, *args, "--name", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environ,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def ready_line(proc: subprocess.Popen[str], stderr_path: Path, timeout: float) -> str:
    """The interpreter's one ready line, within timeout; its stderr in the failure if it died first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(
                f"the API switch printed no ready line within {timeout:g}s: {stderr_path.read_text()}"
            )
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            line = proc.stdout.readline()
            if not line:
                code = proc.wait(STOP_TIMEOUT)
                pytest.fail(f"the API switch exited {code} before it was ready: {stderr_path.read_text()}")
            return line.rstrip("\n")


def stop_and_check(run: ApiRun) -> list[str]:
    """Stop the interpreter (SIGTERM, then SIGKILL and `vswitch down`); what it made must be gone."""
    killed = terminate(run.proc, f"the API switch {run.name}", STOP_TIMEOUT)
    problems = list(killed)
    for pipe in (run.proc.stdin, run.proc.stdout):
        if pipe is not None:
            pipe.close()
    if not killed and run.proc.returncode != 128 + signal.SIGTERM:  # SERVE's handler: SystemExit(143)
        problems.append(f"the API switch exited {run.proc.returncode}, not 143 (SIGTERM): {run.stderr()}")
    if not killed and run.state_path.exists():
        problems.append(f"the API switch stopped but left its state file {run.state_path}")
    if killed or run.state_path.exists():
        down = run.vswitch("down")
        if down.returncode != 0:
            problems.append(f"vswitch down --name {run.name}: {down.stderr.strip()}")
    left = sorted(namespaces(run.prefix))
    if left:
        problems.append(f"namespaces left behind: {left}")
        for name in left:
            remove_netns_named(name)
    taps = sorted(set(run.taps) & set(links(None)))
    if taps:
        problems.append(f"taps left in the root namespace: {taps}")
    if run.state_path.exists() or run.socket_path.exists():
        problems.append(f"{run.name}'s state file or control socket left in {run.run_dir}")
    return problems


@pytest.fixture
def api_switch(tmp_path: Path) -> Iterator[ApiRun]:
    """A 2-port switched `vswitch.api.Switch` in a fresh interpreter, stopped and checked afterwards."""
    token = secrets.token_hex(3)
    prefix = f"vsa{token}"
    a, b, name = f"{prefix}a", f"{prefix}b", f"api{token}"
    run_dir = tmp_path / "run"
    environ = {**os.environ, "VSWITCH_RUN_DIR": str(run_dir)}
    stderr_path = tmp_path / f"{name}.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, a, b, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=environ,
        )
    run = ApiRun(proc, name, prefix, a, b, run_dir, stderr_path, environ, {}, [])
    try:
        ready = json.loads(ready_line(proc, stderr_path, START_TIMEOUT))
        assert ready["name"] == name
        run.ports = {p["namespace"]: p for p in ready["ports"]}
        ledger = json.loads(run.state_path.read_text())
        run.taps = [r["name"] for r in ledger["records"] if r["kind"] == "tap"]
        yield run
    finally:
        problems = stop_and_check(run)
        assert not problems, problems


def ping_until_exit(watcher: subprocess.Popen[str], ns: str, dst: str, what: str) -> None:
    """Ping from ns (bounded: -c, -w) until watcher has seen enough and exits; no sleeping."""

    def done() -> bool:
        if watcher.poll() is None:
            subprocess.run(
                ["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-w", "2", dst],
                capture_output=True,
                timeout=CLI_TIMEOUT,
            )
        return watcher.poll() is not None

    wait_for(done, 30, what)


def finished(proc: subprocess.Popen[str], what: str) -> tuple[str, str]:
    """stdout and stderr of an exited CLI process; a failure with its stderr unless it exited 0."""
    out, err = proc.communicate(timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {err.strip()}"
    return out, err


def port_stats(run: ApiRun) -> dict[str, Any]:
    proc = run.vswitch("stats", "--json")
    assert proc.returncode == 0, proc.stderr
    stats: dict[str, Any] = json.loads(proc.stdout)["ports"]
    return stats


def test_api_switch_serves_capture_trace_inject_and_debug_info(api_switch: ApiRun) -> None:
    run = api_switch
    a, b = run.a, run.b
    ip_a, ip_b = run.ip(a), run.ip(b)
    mac_a, mac_b = run.ports[a]["mac"], run.ports[b]["mac"]
    assert (ip_a, ip_b) == ("10.0.0.1", "10.0.0.2")

    # The base commands answer (the harness's view of "it is an instance at all").
    status = run.vswitch("status", "--json")
    assert status.returncode == 0, status.stderr
    assert [p["port"] for p in json.loads(status.stdout)["ports"]] == [a, b]

    # debug-info, asked directly on the control socket.
    info = request(run.socket_path, "debug-info", timeout=CLI_TIMEOUT)
    assert [p["port"] for p in info["ports"]] == [a, b]
    assert info["router_interfaces"] == []  # one switched segment: no router

    # capture: 4 frames on a's port while a pings b; every one ICMP echo between a and b.
    cap = run.background("capture", a, "--count", "4", "--filter", "icmp")
    try:
        ping_until_exit(cap, a, ip_b, "capture of 4 ICMP frames on the API switch")
        out, err = finished(cap, f"vswitch capture {a}")
    finally:
        terminate(cap, "vswitch capture", 5.0)
    lines = out.splitlines()
    assert len(lines) == 4, (out, err)
    for line in lines:
        assert " / ICMP " in line, line
        assert (
            f" {a} in  Ether / IP / ICMP {ip_a} > {ip_b} echo-request" in line
            or f" {a} out Ether / IP / ICMP {ip_b} > {ip_a} echo-reply" in line
        ), line
    assert "4 packets captured" in err

    # trace: the ping taught the FDB where b's MAC is; the trace names its stages and the egress port.
    def fdb_knows_b() -> bool:
        fdb = run.vswitch("fdb", "--json")
        return fdb.returncode == 0 and any(
            e["mac"] == mac_b and e["port"] == b for e in json.loads(fdb.stdout)
        )

    wait_for(fdb_knows_b, 15, f"the FDB to place {mac_b} on {b}")
    trace = run.vswitch("trace", a, f"Ether()/IP(dst='{ip_b}')/ICMP()")
    assert trace.returncode == 0, trace.stderr
    stages = [line.split()[0] for line in trace.stdout.splitlines()[1:]]
    assert trace.stdout.splitlines()[0] == f"trace on port {a}", trace.stdout
    assert stages[0] == "parse" and "L2" in stages and stages[-1] == "egress", trace.stdout
    assert f"IPv4 {ip_a} > {ip_b} ICMP" in trace.stdout
    assert f"FDB: {mac_b} is on {b} -> {b}" in trace.stdout
    assert trace.stdout.splitlines()[-1].endswith(f"-> port {b}"), trace.stdout

    # inject: an echo request written into b's namespace "from a" arrives there; b's kernel answers,
    # and the reply crosses the switch to a, where a capture sees it. The capture may attach after the
    # first inject, so inject (a new sequence number each time) until it has its frame.
    pcap = run.stderr_path.with_name("inject-reply.pcap")
    tx_before = port_stats(run)[b]["tx_packets"]
    reply_cap = run.background(
        "capture", a, "--count", "1", "-w", str(pcap), "--filter", f"icmp and src host {ip_b}"
    )
    injected: list[int] = []
    try:

        def reply_captured() -> bool:
            if reply_cap.poll() is None:
                seq = len(injected) + 1
                expr = f"Ether(src='{mac_a}')/IP(src='{ip_a}', dst='{ip_b}')/ICMP(id=0x5A5A, seq={seq})"
                inj = run.vswitch("inject", b, expr)
                assert inj.returncode == 0, inj.stderr
                assert f"injected 42 bytes into {b}" in inj.stdout, inj.stdout
                injected.append(seq)
            return reply_cap.poll() is not None

        wait_for(reply_captured, 30, "the reply to an injected echo request")
        finished(reply_cap, f"vswitch capture {a} -w")
    finally:
        terminate(reply_cap, "vswitch capture", 5.0)
    from scapy.layers.inet import ICMP, IP
    from scapy.utils import rdpcap

    packets = rdpcap(str(pcap))
    assert len(packets) == 1
    reply = packets[0]
    assert reply[IP].src == ip_b and reply[IP].dst == ip_a
    assert reply[ICMP].type == 0 and reply[ICMP].id == 0x5A5A and reply[ICMP].seq in injected
    assert port_stats(run)[b]["tx_packets"] >= tx_before + len(injected)
