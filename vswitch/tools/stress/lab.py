"""One stress run's world: a `vswitch up` process with its namespaces, the victims' loads and the flood
sender, every one recorded as it starts so that close() stops exactly those, also on an error or Ctrl-C.

The namespaces are vswitch's own (`vswitch up` makes the ones it is given and removes them when it
exits); their names all start with the run's prefix, and close() sweeps any a killed vswitch left.
Every program runs bounded: iperf3 with -t, ping with -c and -w, the sender with --count and
--seconds, each also under a timeout here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute

from ...shell.control import ControlError, request
from ...shell.kernel import remove_netns_named
from ...shell.state import socket_path
from ..bench.measure import percentile
from ..bench.process import NotReady, spawn_vswitch, stop_instance, terminate, wait_port_table
from ..bench.topologies import namespaces_with, new_namespace

START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 15.0
COMMAND_TIMEOUT: Final = 15.0
SLACK: Final = 15.0  # a bounded program gets its planned length plus this before it is killed
SINK_IF: Final = "sink0"  # veth_sink's interface
CONTROL_TIMEOUT: Final = 2.0  # "the control socket answers": within this
LOAD_MODULE: Final = "vswitch.tools.stress.load"
RTT_RE: Final = re.compile(r"time=([0-9.]+) ms")
SUMMARY_RE: Final = re.compile(r"(\d+) packets transmitted, (\d+) received")


class StressError(Exception):
    """A step could not be built or measured; str() is one sentence."""


@dataclass(frozen=True)
class Pings:
    """One ping run: replies' RTTs (ms), requests sent and answered."""

    rtts: list[float]
    sent: int
    received: int

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "loss_pct": round(100 * (self.sent - self.received) / self.sent, 2) if self.sent else None,
            "median_ms": round(statistics.median(self.rtts), 3) if self.rtts else None,
            "p99_ms": round(percentile(self.rtts, 99), 3) if self.rtts else None,
        }


def in_ns(namespace: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def link_bytes(namespace: str, ifname: str = "eth0") -> dict[str, int]:
    """An interface's 64-bit counters (rx/tx packets, bytes, dropped) as its namespace's kernel sees them."""
    with IPRoute(netns=namespace) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
    stats = link.get("IFLA_STATS64") or link.get("stats64")
    keys = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")
    return {key: int(stats[key]) for key in keys}


def set_mtu(namespace: str, mtu: int, ifname: str = "eth0") -> None:
    with IPRoute(netns=namespace) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat's first line (idle and iowait are not
    busy): two readings give the machine's utilisation between them."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return float(sum(fields) - idle), float(sum(fields))


def busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """The machine's CPU use between two machine_busy() readings, in percent of all its cores."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else None


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB, from /proc/PID/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@dataclass
class Lab:
    """A `vswitch up` with the given topology arguments, its namespaces named prefix-TAG."""

    prefix: str
    instance: str
    work: Path
    proc: subprocess.Popen[bytes] | None = None
    table: dict[str, Any] = field(default_factory=dict)  # `vswitch up --json`'s port table
    programs: list[subprocess.Popen[Any]] = field(default_factory=list)  # loads and servers running
    namespaces: list[str] = field(default_factory=list)  # made here (not by vswitch)

    def ns(self, tag: str) -> str:
        return f"{self.prefix}-{tag}"

    @property
    def socket(self) -> Path:
        return socket_path(self.instance)

    # --- vswitch ---------------------------------------------------------------------------------------
    def start(self, topology: list[str]) -> None:
        """Start `vswitch up TOPOLOGY --name INSTANCE --json` in a session of its own; ready when it printed
        its port table."""
        argv = [sys.executable, "-m", "vswitch", "up", *topology, "--name", self.instance, "--json"]
        self.proc, out_path = spawn_vswitch(argv, self.work, self.instance)
        try:
            wait_port_table(self.proc, out_path, START_TIMEOUT)
        except NotReady as exc:
            raise StressError(str(exc)) from None
        self.table = json.loads(out_path.read_text().splitlines()[0])

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise StressError("vswitch is not running")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def port(self, namespace: str) -> dict[str, Any]:
        for port in self.table.get("ports", []):
            if port.get("namespace") == namespace:
                return dict(port)
        raise StressError(f"vswitch has no port in {namespace}")

    def address(self, namespace: str) -> str:
        return str(self.port(namespace)["address"]).split("/")[0]

    def ask(self, cmd: str, timeout: float = CONTROL_TIMEOUT) -> Any:
        return request(self.socket, cmd, timeout=timeout)

    def control_answers(self, timeout: float = CONTROL_TIMEOUT) -> tuple[bool, float, str]:
        """(answered, seconds it took, why not): one `status` over the control socket."""
        started = time.monotonic()
        try:
            self.ask("status", timeout)
        except (ControlError, OSError, ValueError) as exc:
            return False, time.monotonic() - started, str(exc)
        return True, time.monotonic() - started, ""

    def cli_status(self) -> tuple[bool, float, str]:
        """`vswitch status --json` through the real CLI, bounded: (answered, seconds, why not)."""
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "vswitch", "status", "--name", self.instance, "--json"],
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return False, time.monotonic() - started, f"no answer within {COMMAND_TIMEOUT:g}s"
        took = time.monotonic() - started
        if proc.returncode != 0:
            return False, took, proc.stderr.strip()
        try:
            json.loads(proc.stdout)
        except ValueError:
            return False, took, "status printed no JSON"
        return True, took, ""

    def veth_sink(self, tag: str) -> str:
        """A namespace of the lab's own with a veth pair SINK_IF - its peer, both up: somewhere a sender
        can send to that is not vswitch (what its frames cost the machine without vswitch taking them)."""
        namespace = new_namespace(self.ns(tag), self.namespaces)
        with IPRoute(netns=namespace) as ipr:
            ipr.link("add", ifname=SINK_IF, kind="veth", peer={"ifname": f"{SINK_IF}p"})
            for ifname in (SINK_IF, f"{SINK_IF}p"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        return namespace

    # --- the victims' and attackers' programs ----------------------------------------------------------
    def spawn(self, namespace: str, argv: list[str], log: Path | None = None) -> subprocess.Popen[str]:
        """A program inside namespace, in a session of its own, recorded for close()."""
        out: Any = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 (closed below)
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],
                stdout=out,
                stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()
        self.programs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], timeout: float, what: str) -> tuple[str, str]:
        """Wait for a bounded program's end (killed if it overstays timeout); its stdout and stderr."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=5)
            raise StressError(f"{what} did not end within {timeout:g}s") from None
        finally:
            if proc in self.programs:
                self.programs.remove(proc)
        return out or "", err or ""

    def iperf_server(self, namespace: str) -> subprocess.Popen[str]:
        log = self.work / f"iperf3-s-{namespace}.log"
        proc = self.spawn(namespace, ["iperf3", "-s", "--forceflush"], log)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while "listening" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StressError(f"iperf3 -s in {namespace} did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)
        return proc

    def iperf_client(self, namespace: str, server: str, seconds: int) -> subprocess.Popen[str]:
        """One TCP stream for `seconds`, its JSON at the end."""
        return self.spawn(namespace, ["iperf3", "-c", server, "-t", str(seconds), "-J"])

    def iperf_result(self, proc: subprocess.Popen[str], seconds: int) -> dict[str, Any]:
        out, err = self.finish(proc, seconds + SLACK, "iperf3 -c")
        try:
            result: dict[str, Any] = json.loads(out)
        except ValueError:
            raise StressError(f"iperf3 printed no JSON: {err.strip()[-300:]}") from None
        if "error" in result:
            raise StressError(f"iperf3: {result['error']}")
        return result

    def ping(self, namespace: str, target: str, seconds: float, interval: float) -> subprocess.Popen[str]:
        count = max(1, round(seconds / interval))
        argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1", "-w", str(int(seconds) + 2)]
        return self.spawn(namespace, [*argv, target])

    def pings(self, proc: subprocess.Popen[str], seconds: float) -> Pings:
        out, err = self.finish(proc, seconds + SLACK, "ping")
        summary = SUMMARY_RE.search(out)
        if summary is None:
            raise StressError(f"ping printed no summary: {err.strip()}")
        return Pings([float(m) for m in RTT_RE.findall(out)], int(summary[1]), int(summary[2]))

    def wait_reachable(self, namespace: str, target: str) -> None:
        """One ping at a time until target answers (ARP, FDB and conntrack are warm after it)."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while in_ns(namespace, ["ping", "-n", "-q", "-c", "1", "-W", "1", target], 10).returncode:
            if time.monotonic() > deadline:
                raise StressError(f"{target} is unreachable from {namespace}")
            time.sleep(0.1)

    def sender(
        self,
        namespace: str,
        kind: str,
        pps: float,
        count: int,
        seconds: float,
        **frame_args: str,
    ) -> subprocess.Popen[str]:
        """The load generator as its own process, its socket in namespace (it enters it itself)."""
        argv = [sys.executable, "-m", LOAD_MODULE, "--netns", namespace, "--kind", kind, "--pps", f"{pps:g}",
                "--count", str(count), "--seconds", f"{seconds:g}"]  # fmt: skip
        for key, value in frame_args.items():
            argv += [f"--{key.replace('_', '-')}", value]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        self.programs.append(proc)
        return proc

    def sender_result(self, proc: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
        """The sender's JSON line. Its budget: building up to 65536 frames, then the send itself."""
        out, err = self.finish(proc, seconds + SLACK + 30, "the load generator")
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise StressError(f"the load generator exited {proc.returncode}: {err.strip()[-300:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    # --- teardown --------------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop every program, then vswitch (SIGTERM, SIGKILL and `vswitch down` if it does not go),
        then sweep namespaces with the prefix; return what went wrong."""
        problems: list[str] = []
        for proc in reversed(self.programs):
            problems.extend(terminate(proc, " ".join(map(str, proc.args[:6])), 5))
        self.programs.clear()
        if self.proc is not None:
            problems.extend(stop_instance(self.proc, self.instance, STOP_TIMEOUT, COMMAND_TIMEOUT))
            self.proc = None
        for name in reversed(self.namespaces):
            try:
                remove_netns_named(name)
            except OSError as exc:
                problems.append(f"namespace {name}: {exc}")
        self.namespaces.clear()
        for name in namespaces_with(f"{self.prefix}-"):
            problems.append(f"namespace {name} was left behind; removed")
            with contextlib.suppress(OSError):
                remove_netns_named(name)
        return problems


def environ_run_dir(work: Path) -> None:
    """vswitch's state files and control sockets go under work (private to the run)."""
    from ...shell.state import RUN_DIR_ENV

    (work / "run").mkdir(exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(work / "run")
