"""Network emulation (issue 20) measured with real clients: vswitch's impairments against their settings,
its shaper against the kernel's tbf, and what an impaired port costs the unimpaired ones beside it.

Run as root from the checkout: `make bench-emulation` (or `.venv/bin/python bench/emulation.py`;
`--quick` for a smoke run of about a minute, `--only delay,loss,rate,cpu` for some of it). It prints
tables (rich on a terminal, markdown into a pipe or a file) and writes bench/results/emulation-STAMP.json.

What it builds, in namespaces named `vse<6 hex>-...` (the run's random prefix), all removed at the end,
also on an error, Ctrl-C or SIGTERM:
- vswitch: `vswitch up --ports P-a,P-b,P-c` (one L2 segment; a 10.0.0.1, b 10.0.0.2, c 10.0.0.3; taps
  with the virtio-net header and TSO), in a session of its own with its own --name and VSWITCH_RUN_DIR.
  The impairments are set over its control socket (the `link` command, as `vswitch link` sends it).
- kernel (the rate's reference): P-ka (10.0.0.1) and P-kb (10.0.0.2), veths to a Linux bridge in P-kbr,
  and `tbf` (pyroute2, netlink) on the bridge's port towards P-kb: the same place as vswitch's shaper
  (the switch's egress to the receiver), so both drop what waits longer than the latency, and neither
  pushes back on the sender's socket as a tbf on the sender's own interface would.

What it measures, every load bounded in time and count:
1. delay: ping a -> b, `-i 0.02`, N pings with b's "out" impaired by --delay D (one direction: the
   request waits, the reply does not), and N pings with no impairment just before; added delay = the
   impaired RTTs less the baseline's mean (ping's summary line: its per-reply times have 3 significant
   figures); an RTT below D itself means a request left early. D = 10, 20, 50, 100 ms.
2. loss: `ping -i 0.002 -c 10000 -q` a -> b with b's "out" at --loss 1% and 10% (the requests are lost,
   the replies not); the lost count (ping's; the stage's own count beside it also holds the odd ARP
   frame it lost) against the exact central 99% interval of Binomial(sent, p), summed
   from its probability mass function (and the normal approximation beside it, for reference).
3. rate: `iperf3 -c -t 5` (one TCP stream, the machine's congestion control unless --congestion) a -> b
   with b's "out" at --rate R (1, 10, 100 Mbit/s), --burst at vswitch's default for R and --latency 50
   ms, given explicitly to both; the same load between P-ka and P-kb through tbf at the same rate, burst
   and latency; and vswitch again with TSO off on a's interface (the sender's kernel segments in
   software, so vswitch reads wire-sized frames instead of cutting 64 KB super-frames in Python).
   Goodput is the receiver's bits per second; interleaved rounds, medians.
4. cpu: 64-byte UDP (`iperf3 -u -l 18`) a -> b, paced at 50 kpps and unpaced (-b 0), with no impairment
   anywhere, then with c impaired (--delay 10ms, both directions) and no traffic to or from c. CPU per
   packet = the vswitch process's utime + stime (/proc/PID/stat) over the load / the frames it wrote to
   b (its own counters, the `stats` command). Interleaved repetitions, medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pyroute2 import IPRoute

from vswitch.core.emulation import Impairment
from vswitch.shell.control import ControlError, request
from vswitch.shell.kernel import remove_netns_named
from vswitch.shell.state import RUN_DIR_ENV, socket_path
from vswitch.tools.bench.measure import cpu_seconds
from vswitch.tools.bench.process import (
    NotReady,
    checkout_state,
    spawn_vswitch,
    stop_instance,
    terminate,
    wait_port_table,
)
from vswitch.tools.bench.report import print_grids, ratio_text
from vswitch.tools.bench.run import Signals, machine_info
from vswitch.tools.bench.topologies import namespaces_with, new_namespace

PREFIX_STEM: Final = "vse"
START_TIMEOUT: Final = 20.0
STOP_TIMEOUT: Final = 15.0
COMMAND_TIMEOUT: Final = 15.0
TC_H_ROOT: Final = 0xFFFFFFFF
SLACK: Final = 20.0  # a load gets its planned length plus this before it is killed
BUSY_TRIES: Final = 3  # iperf3 runs when its server says it is busy with the last one
SERVER = "10.0.0.2"  # b, and kb: vswitch gives --ports addresses in order from 10.0.0.1/24
DELAYS_MS: Final = (10, 20, 50, 100)
LOSSES: Final = (0.01, 0.10)
RATES: Final = (1e6, 10e6, 100e6)
LATENCY: Final = 0.05  # the shaper's latency, both sides (vswitch's default, tbf's `latency`)
CPU_DELAY: Final = 0.010  # c's impairment in the CPU test
UDP_PAYLOAD: Final = 18  # 64-byte frames with the FCS: 14 + 20 + 8 + 18 + 4
CPU_PPS: Final = 50_000
LEVEL: Final = 0.99
Z_995: Final = 2.5758293035489  # the normal distribution's 99.5% quantile
# A TCP segment's payload over its Ethernet frame (MSS 1448 with timestamps, 1514 bytes on the tap):
# what goodput can reach at a rate counted in Ethernet bytes, as both shapers count.
PAYLOAD_FRACTION: Final = 1448 / 1514
RTT_RE: Final = re.compile(r"time=([0-9.]+) ms")
SUMMARY_RE: Final = re.compile(r"(\d+) packets transmitted, (\d+) received")
RTT_SUMMARY_RE: Final = re.compile(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms")
PARTS: Final = ("delay", "loss", "rate", "cpu")
# ETHTOOL_GTSO / ETHTOOL_STSO through SIOCETHTOOL, run inside a namespace (there is no ethtool here):
# argv[1] the interface, argv[2] 0 or 1; prints the state read back.
TSO_SNIPPET: Final = """
import ctypes, fcntl, socket, struct, sys
def call(cmd, data):
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, data), 8)
    ifr = struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(buf)) + bytes(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8946, ifr)
    return struct.unpack("II", buf.raw)[1]
call(0x1F, int(sys.argv[2]))
print(call(0x1E, 0))
"""


class EmulationBenchError(Exception):
    """A step could not be built or measured; str() is one sentence."""


@dataclass(frozen=True)
class Plan:
    delay_pings: int = 100
    delay_interval: float = 0.02
    loss_pings: int = 10_000
    loss_interval: float = 0.002
    tcp_seconds: int = 5
    rounds: int = 3  # of the rate and CPU tests
    cpu_seconds: int = 5
    congestion: str | None = None
    seed: int | None = None  # the loss stage's seed (None: a fresh random draw each run)


QUICK: Final = Plan(delay_pings=20, loss_pings=2000, tcp_seconds=2, rounds=1, cpu_seconds=2)


# --- processes and namespaces ----------------------------------------------------------------------
def in_ns(
    namespace: str, argv: list[str], timeout: float, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    if check and proc.returncode != 0:
        raise EmulationBenchError(
            f"{' '.join(argv)} in {namespace} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


@dataclass
class Bench:
    """Everything one run builds, recorded as it is made so that teardown() removes exactly that."""

    prefix: str
    work: Path
    plan: Plan
    namespaces: list[str] = field(default_factory=list)  # made here (the kernel's)
    vswitch: subprocess.Popen[bytes] | None = None
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    loads: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return self.prefix

    def ns(self, tag: str) -> str:
        return f"{self.prefix}-{tag}"

    @property
    def socket(self) -> Path:
        return socket_path(self.instance)

    # --- building ------------------------------------------------------------------------------------
    def build_vswitch(self) -> None:
        argv = [sys.executable, "-m", "vswitch", "up", "--name", self.instance, "--json", "--ports"]
        argv.append(",".join(self.ns(tag) for tag in ("a", "b", "c")))
        self.vswitch, out_path = spawn_vswitch(argv, self.work, "vswitch")
        try:
            wait_port_table(self.vswitch, out_path, START_TIMEOUT)
        except NotReady as exc:
            raise EmulationBenchError(str(exc)) from None
        ports = json.loads(out_path.read_text())["ports"]
        found = {p["port"]: p["address"] for p in ports}
        if found.get(self.ns("b")) != f"{SERVER}/24":
            raise EmulationBenchError(f"vswitch gave b {found.get(self.ns('b'))}, not {SERVER}/24")

    def new_ns(self, tag: str) -> str:
        return new_namespace(self.ns(tag), self.namespaces)

    def build_kernel(self) -> None:
        """ka and kb with veths to a bridge in kbr; tbf goes on pb, the bridge's port towards kb."""
        a, b, sw = self.new_ns("ka"), self.new_ns("kb"), self.new_ns("kbr")
        with IPRoute(netns=sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            bridge = ipr.link_lookup(ifname="br0")[0]
            for host, port in ((a, "pa"), (b, "pb")):
                ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host})
                ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=bridge, state="up")
            ipr.link("set", index=bridge, state="up")
        for host, address in ((a, "10.0.0.1"), (b, SERVER)):
            with IPRoute(netns=host) as ipr:
                index = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=index, address=address, prefixlen=24)
                ipr.link("set", index=index, state="up")

    def start_server(self, namespace: str) -> None:
        log = self.work / f"iperf3-{namespace}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, "iperf3", "-s", "--forceflush"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append(proc)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while b"listening" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EmulationBenchError(f"iperf3 -s in {namespace} did not start: {log.read_text()[-300:]}")
            time.sleep(0.05)

    def wait_reachable(self, client: str) -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while in_ns(client, ["ping", "-n", "-q", "-c", "1", "-W", "1", SERVER], 10, check=False).returncode:
            if time.monotonic() > deadline:
                raise EmulationBenchError(f"{SERVER} is unreachable from {client}")
            time.sleep(0.1)

    # --- vswitch's control socket ----------------------------------------------------------------------
    def impair(self, port: str, direction: str, **fields: Any) -> dict[str, Any]:
        """Set port's impairment (Impairment's field names and units) and check vswitch took it as given."""
        wanted = Impairment(**fields).check().settings()
        entry: dict[str, Any] = request(
            self.socket, "link", op="set", port=self.ns(port), direction=direction, impairment=wanted
        )
        for side in ("in", "out") if direction == "both" else (direction,):
            got = entry.get(side, {}).get("settings")
            if got != wanted:
                raise EmulationBenchError(f"link {port} {side}: vswitch holds {got}, not {wanted}")
        return entry

    def clear(self, port: str) -> None:
        request(self.socket, "link", op="clear", port=self.ns(port), direction="both")

    def stage_stats(self, port: str, direction: str) -> dict[str, int]:
        for entry in request(self.socket, "link", op="list")["links"]:
            if entry["port"] == self.ns(port) and direction in entry:
                return dict(entry[direction]["stats"])
        return {}

    def port_counters(self) -> dict[str, dict[str, Any]]:
        ports: dict[str, dict[str, Any]] = request(self.socket, "stats")["ports"]
        return ports

    def set_tso(self, tag: str, on: bool) -> None:
        """TSO of eth0 in namespace tag (what `ethtool -K eth0 tso on|off` does), checked read back."""
        namespace = self.ns(tag)
        proc = in_ns(namespace, [sys.executable, "-c", TSO_SNIPPET, "eth0", str(int(on))], COMMAND_TIMEOUT)
        if proc.stdout.strip() != str(int(on)):
            raise EmulationBenchError(
                f"TSO of eth0 in {namespace} reads {proc.stdout.strip()!r} after set {on}"
            )

    # --- teardown ------------------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        problems: list[str] = []
        for load in self.loads:
            if load.poll() is None:
                load.kill()
                load.wait(5)
        for server in self.servers:
            problems.extend(terminate(server, "iperf3 -s", 5))
        if self.vswitch is not None:
            problems.extend(self._stop_vswitch(self.vswitch))
        for name in reversed(self.namespaces):
            try:
                remove_netns_named(name)
            except OSError as exc:
                problems.append(f"namespace {name}: {exc}")
        for name in namespaces_with(f"{self.prefix}-"):  # vswitch's own, if it could not remove them
            problems.append(f"namespace {name} was left behind; removed")
            with contextlib.suppress(OSError):
                remove_netns_named(name)
        return problems

    def _stop_vswitch(self, proc: subprocess.Popen[bytes]) -> list[str]:
        return stop_instance(proc, self.instance, STOP_TIMEOUT, COMMAND_TIMEOUT)


# --- the loads -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pings:
    """What one ping run says. Its summary line has microseconds; each reply's `time=` has only three
    significant figures (0.1 ms from 10 ms, whole ms from 100 ms), so the figures come from the summary
    and the replies are kept for their distribution."""

    rtts: list[float]
    sent: int
    received: int
    min: float
    avg: float
    max: float
    mdev: float  # ping's standard deviation of the RTTs (over all replies, not a sample's n - 1)


def ping(client: str, count: int, interval: float, quiet: bool = False) -> Pings:
    """`count` pings to SERVER, `interval` seconds apart. No -w: with -c, a deadline makes ping send on
    until `count` replies came back, and the loss would be counted over more than `count`."""
    argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1", *(["-q"] if quiet else [])]
    proc = in_ns(client, [*argv, SERVER], count * interval * 2 + SLACK, check=False)
    summary = SUMMARY_RE.search(proc.stdout)
    if summary is None:
        raise EmulationBenchError(f"ping from {client} printed no summary: {proc.stderr.strip()}")
    stats = RTT_SUMMARY_RE.search(proc.stdout)
    lo, avg, hi, mdev = (float(x) for x in stats.groups()) if stats else (math.nan,) * 4
    rtts = [float(m) for m in RTT_RE.findall(proc.stdout)]
    return Pings(rtts, int(summary[1]), int(summary[2]), lo, avg, hi, mdev)


def iperf3(bench: Bench, client: str, seconds: int, extra: list[str]) -> dict[str, Any]:
    """One iperf3 client run to SERVER, its JSON. The server takes one test at a time and can still be
    closing the last one when the next begins ("the server is busy"): asked again, at most BUSY_TRIES."""
    argv = ["ip", "netns", "exec", client, "iperf3", "-c", SERVER, "-t", str(seconds), "-J", *extra]
    for attempt in range(1, BUSY_TRIES + 1):
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        bench.loads.append(proc)
        try:
            out, err = proc.communicate(timeout=seconds + SLACK)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
            bench.loads.remove(proc)
        try:
            result: dict[str, Any] = json.loads(out)
        except ValueError:
            raise EmulationBenchError(f"iperf3 printed no JSON: {err.strip()[-300:]}") from None
        if "error" not in result:
            return result
        if "busy" not in str(result["error"]) or attempt == BUSY_TRIES:
            raise EmulationBenchError(f"iperf3: {result['error']}")
        time.sleep(1.0)
    raise AssertionError("unreachable")  # pragma: no cover


# --- 1. delay --------------------------------------------------------------------------------------
def measure_delay(bench: Bench, say: Callable[[str], None]) -> list[dict[str, Any]]:
    plan, rows = bench.plan, []
    for delay_ms in DELAYS_MS:
        say(f"delay {delay_ms} ms: {plan.delay_pings} pings unimpaired, then as many through b out")
        bench.clear("b")
        base = ping(bench.ns("a"), plan.delay_pings, plan.delay_interval)
        bench.impair("b", "out", delay=delay_ms / 1000)
        try:
            imp = ping(bench.ns("a"), plan.delay_pings, plan.delay_interval)
        finally:
            bench.clear("b")
        if base.received < 2 or imp.received < 2:
            raise EmulationBenchError(
                f"delay {delay_ms} ms: too few replies ({base.received}, {imp.received})"
            )
        rows.append(
            {
                "setting_ms": delay_ms,
                "direction": "out of b (the request only)",
                "pings": imp.sent,
                "replies": imp.received,
                "baseline_mean_ms": base.avg,
                "baseline_stdev_ms": base.mdev,
                "rtt_mean_ms": imp.avg,
                "rtt_stdev_ms": imp.mdev,
                "rtt_min_ms": imp.min,
                "added_mean_ms": imp.avg - base.avg,
                "added_min_ms": imp.min - base.avg,
                "added_max_ms": imp.max - base.avg,
                "error_ms": imp.avg - base.avg - delay_ms,
                # A reply sooner than the delay itself: a request left the stage early, whatever the
                # baseline (an added delay below the setting by less than the baseline's spread is not).
                "early": imp.min < delay_ms,
                "baseline_rtts_ms": base.rtts,  # as ping prints them: 3 significant figures
                "rtts_ms": imp.rtts,
            }
        )
    return rows


# --- 2. loss ---------------------------------------------------------------------------------------
def binomial_interval(n: int, p: float, level: float = LEVEL) -> tuple[int, int]:
    """The central `level` interval of Binomial(n, p), exactly: the smallest lo with P(X <= lo) > tail
    and the smallest hi with P(X <= hi) >= 1 - tail, tail = (1 - level) / 2, so that P(X < lo) and
    P(X > hi) are each at most tail. The probability mass function summed in order, from logs."""
    if not 0.0 < p < 1.0:
        return (0, 0) if p <= 0.0 else (n, n)
    tail = (1.0 - level) / 2
    log_n = math.lgamma(n + 1)
    log_p, log_q = math.log(p), math.log1p(-p)
    cdf, lo = 0.0, -1
    for k in range(n + 1):
        cdf += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        if lo < 0 and cdf > tail:
            lo = k
        if cdf >= 1.0 - tail:
            return lo, k
    return lo, n


def normal_interval(n: int, p: float) -> tuple[float, float]:
    """n p -+ z(99.5%) sqrt(n p (1 - p)): the normal approximation of the same interval."""
    spread = Z_995 * math.sqrt(n * p * (1.0 - p))
    return n * p - spread, n * p + spread


def measure_loss(bench: Bench, say: Callable[[str], None]) -> list[dict[str, Any]]:
    plan, rows = bench.plan, []
    for loss in LOSSES:
        say(f"loss {loss:.0%}: {plan.loss_pings} pings {plan.loss_interval * 1000:g} ms apart through b out")
        fields: dict[str, Any] = {"loss": loss} if plan.seed is None else {"loss": loss, "seed": plan.seed}
        bench.impair("b", "out", **fields)
        try:
            pings = ping(bench.ns("a"), plan.loss_pings, plan.loss_interval, quiet=True)
            stage = bench.stage_stats("b", "out")
        finally:
            bench.clear("b")
        sent, received = pings.sent, pings.received
        lost = sent - received
        lo, hi = binomial_interval(sent, loss)
        nlo, nhi = normal_interval(sent, loss)
        rows.append(
            {
                "setting": loss,
                "direction": "out of b (the requests only)",
                "seed": plan.seed,
                "sent": sent,
                "received": received,
                "lost": lost,
                "lost_by_stage": stage.get("lost", 0),
                "stage": stage,
                "measured": lost / sent if sent else None,
                "expected": sent * loss,
                "interval_exact": [lo, hi],
                "interval_normal": [nlo, nhi],
                "inside": lo <= lost <= hi,
            }
        )
    return rows


# --- 3. rate ---------------------------------------------------------------------------------------
def burst_for(rate: float) -> int:
    """vswitch's default burst at rate (5 ms of it, at least two full frames), given to both shapers."""
    return Impairment(rate=rate).effective_burst


def tcp_extra(plan: Plan) -> list[str]:
    return ["-C", plan.congestion] if plan.congestion else []


def rate_vswitch(bench: Bench, rate: float, sender_tso: bool) -> dict[str, Any]:
    assert bench.vswitch is not None
    plan, pid = bench.plan, bench.vswitch.pid
    if not sender_tso:
        bench.set_tso("a", False)
    try:
        bench.impair("b", "out", rate=rate, burst=burst_for(rate), latency=LATENCY)
        try:
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            result = iperf3(bench, bench.ns("a"), plan.tcp_seconds, tcp_extra(plan))
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            stage = bench.stage_stats("b", "out")
        finally:
            bench.clear("b")
    finally:
        if not sender_tso:
            bench.set_tso("a", True)
    end = result["end"]
    received_bytes = float(end["sum_received"]["bytes"])
    return {
        "goodput_bps": float(end["sum_received"]["bits_per_second"]),
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu_s": cpu1 - cpu0,
        "cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "cpu_s_per_gb": (cpu1 - cpu0) / (received_bytes / 1e9) if received_bytes else None,
        "stage": stage,
    }


def qdisc_counts(ipr: Any, index: int) -> dict[str, int]:
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc.get_attr("TCA_KIND") == "tbf":
            stats = qdisc.get_attr("TCA_STATS2")
            basic = stats.get_attr("TCA_STATS_BASIC")
            queue = stats.get_attr("TCA_STATS_QUEUE")
            return {
                "packets": int(basic["packets"]),
                "bytes": int(basic["bytes"]),
                "drops": int(queue["drops"]),
                "overlimits": int(queue["overlimits"]),
            }
    return {}


def rate_kernel(bench: Bench, rate: float) -> dict[str, Any]:
    with IPRoute(netns=bench.ns("kbr")) as ipr:
        index = ipr.link_lookup(ifname="pb")[0]
        ms = f"{LATENCY * 1000:g}ms"
        ipr.tc("add", "tbf", index, 0x10000, rate=f"{int(rate)}bit", burst=burst_for(rate), latency=ms)
        try:
            result = iperf3(bench, bench.ns("ka"), bench.plan.tcp_seconds, tcp_extra(bench.plan))
            qdisc = qdisc_counts(ipr, index)
        finally:
            ipr.tc("del", index=index, handle=0x10000, parent=TC_H_ROOT)
    end = result["end"]
    return {
        "goodput_bps": float(end["sum_received"]["bits_per_second"]),
        "retransmits": end["sum_sent"].get("retransmits"),
        "qdisc": qdisc,
    }


RATE_SIDES: Final = ("vswitch", "vswitch-tso-off", "kernel-tbf")


def measure_rate(bench: Bench, say: Callable[[str], None]) -> dict[str, Any]:
    plan = bench.plan
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in range(1, plan.rounds + 1):
        for rate in RATES:
            key = f"{rate / 1e6:g}"
            for side in RATE_SIDES:
                say(f"rate round {r}/{plan.rounds}: {key} Mbit/s, {side}, {plan.tcp_seconds} s")
                if side == "kernel-tbf":
                    sample = rate_kernel(bench, rate)
                else:
                    sample = rate_vswitch(bench, rate, sender_tso=side == "vswitch")
                samples.setdefault(key, {}).setdefault(side, []).append({"round": r, **sample})
    results: dict[str, Any] = {}
    for rate in RATES:
        key = f"{rate / 1e6:g}"
        row: dict[str, Any] = {"rate_bps": rate, "burst": burst_for(rate), "latency_s": LATENCY}
        row["ceiling_bps"] = rate * PAYLOAD_FRACTION  # full segments' payload at the rate
        for side in RATE_SIDES:
            runs = samples[key][side]
            row[side] = {
                "goodput_bps": statistics.median(s["goodput_bps"] for s in runs),
                "retransmits": statistics.median(s["retransmits"] or 0 for s in runs),
            }
            if side != "kernel-tbf":
                row[side]["cpu_share"] = statistics.median(s["cpu_share"] for s in runs)
                row[side]["rate_dropped"] = statistics.median(s["stage"].get("rate-dropped", 0) for s in runs)
            else:
                row[side]["drops"] = statistics.median(s["qdisc"].get("drops", 0) for s in runs)
        kernel = row["kernel-tbf"]["goodput_bps"]
        row["ratio"] = row["vswitch"]["goodput_bps"] / kernel if kernel else None
        row["ratio_tso_off"] = row["vswitch-tso-off"]["goodput_bps"] / kernel if kernel else None
        results[key] = row
    return {"samples": samples, "results": results}


# --- 4. cpu ----------------------------------------------------------------------------------------
CPU_LOADS: Final = {"50 kpps": str(CPU_PPS * UDP_PAYLOAD * 8), "unpaced": "0"}  # iperf3 -b: payload bits
CPU_CONDITIONS: Final = ("none impaired", "c delayed 10 ms")


def cpu_once(bench: Bench, bandwidth: str) -> dict[str, Any]:
    """One UDP load a -> b: vswitch's CPU seconds over it and the frames it wrote to b."""
    assert bench.vswitch is not None
    pid = bench.vswitch.pid
    before = bench.port_counters()
    cpu0 = cpu_seconds(pid)
    extra = ["-u", "-l", str(UDP_PAYLOAD), "-b", bandwidth]
    iperf3(bench, bench.ns("a"), bench.plan.cpu_seconds, extra)
    time.sleep(0.3)  # the last frames through
    cpu1 = cpu_seconds(pid)
    after = bench.port_counters()
    b, a = bench.ns("b"), bench.ns("a")
    forwarded = after[b]["tx_packets"] - before[b]["tx_packets"]
    return {
        "cpu_s": cpu1 - cpu0,
        "forwarded": forwarded,
        "read_from_a": after[a]["rx_packets"] - before[a]["rx_packets"],
        "us_per_packet": (cpu1 - cpu0) / forwarded * 1e6 if forwarded > 0 else None,
        "pps": forwarded / bench.plan.cpu_seconds,
    }


def measure_cpu(bench: Bench, say: Callable[[str], None]) -> dict[str, Any]:
    plan = bench.plan
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in range(1, plan.rounds + 1):
        for load, bandwidth in CPU_LOADS.items():
            for condition in CPU_CONDITIONS:
                say(f"cpu round {r}/{plan.rounds}: 64-byte UDP {load}, {condition}, {plan.cpu_seconds} s")
                bench.clear("c")
                if condition != CPU_CONDITIONS[0]:
                    bench.impair("c", "both", delay=CPU_DELAY)
                try:
                    sample = cpu_once(bench, bandwidth)
                    sample["c_stages"] = {d: bench.stage_stats("c", d) for d in ("in", "out")}
                finally:
                    bench.clear("c")
                samples.setdefault(load, {}).setdefault(condition, []).append({"round": r, **sample})
    results: dict[str, Any] = {}
    for load in CPU_LOADS:
        row: dict[str, Any] = {}
        for condition in CPU_CONDITIONS:
            runs = samples[load][condition]
            per = [s["us_per_packet"] for s in runs if s["us_per_packet"] is not None]
            row[condition] = {
                "us_per_packet": statistics.median(per) if per else None,
                "pps": statistics.median(s["pps"] for s in runs),
                "samples_us": per,
            }
        base, impaired = (row[c]["us_per_packet"] for c in CPU_CONDITIONS)
        row["ratio"] = impaired / base if base and impaired else None
        results[load] = row
    return {"samples": samples, "results": results}


# --- the report ------------------------------------------------------------------------------------
Grid = tuple[str, list[str], list[list[str]]]


def mbit(bps: float | None) -> str:
    return "n/a" if bps is None else f"{bps / 1e6:.3g}"


def grids(doc: dict[str, Any]) -> list[Grid]:
    plan = doc["plan"]
    out: list[Grid] = []
    if doc.get("delay"):
        rows = [
            [
                f"{d['setting_ms']}",
                f"{d['baseline_mean_ms']:.3f} ± {d['baseline_stdev_ms']:.3f}",
                f"{d['rtt_mean_ms']:.3f} ± {d['rtt_stdev_ms']:.3f}",
                f"{d['added_mean_ms']:.3f}",
                f"{d['error_ms']:+.3f}",
                f"{d['added_min_ms']:.3f} / {d['added_max_ms']:.3f}",
                f"{d['rtt_min_ms']:.3f} ({'EARLY' if d['early'] else 'not early'})",
            ]
            for d in doc["delay"]
        ]
        header = ["delay set (ms)", "baseline RTT ± sd", "impaired RTT ± sd", "added mean", "error",
                  "added min / max", "impaired RTT min"]  # fmt: skip
        title = (f"Added delay: ping a -> b, b out impaired, {plan['delay_pings']} pings "
                 f"-i {plan['delay_interval']:g} each (ms)")  # fmt: skip
        out.append((title, header, rows))
    if doc.get("loss"):
        rows = [
            [
                f"{d['setting']:.0%}",
                f"{d['sent']:,}",
                f"{d['lost']:,}",
                f"{d['lost_by_stage']:,}",
                f"{d['measured']:.3%}",
                f"{d['expected']:.0f}",
                f"{d['interval_exact'][0]}-{d['interval_exact'][1]}",
                f"{d['interval_normal'][0]:.1f}-{d['interval_normal'][1]:.1f}",
                "yes" if d["inside"] else "NO",
            ]
            for d in doc["loss"]
        ]
        header = ["loss set", "pings", "lost", "lost (stage count)", "measured", "expected",
                  "99% interval (exact)", "(normal approx.)", "inside"]  # fmt: skip
        title = f"Loss: ping -i {plan['loss_interval']:g} a -> b, b out impaired (requests lost, replies not)"
        out.append((title, header, rows))
    if doc.get("rate"):
        rows = []
        for key, row in doc["rate"]["results"].items():
            rate = row["rate_bps"]

            def cell(side: str, rate: float = rate, row: dict[str, Any] = row) -> str:
                goodput = row[side]["goodput_bps"]
                return f"{mbit(goodput)} ({goodput / rate:.0%})"

            rows.append(
                [
                    key,
                    f"{row['burst']:,}",
                    cell("vswitch"),
                    cell("vswitch-tso-off"),
                    cell("kernel-tbf"),
                    ratio_text(row["ratio"]),
                    ratio_text(row["ratio_tso_off"]),
                    f"{row['vswitch']['retransmits']:g} / {row['vswitch-tso-off']['retransmits']:g} / "
                    f"{row['kernel-tbf']['retransmits']:g}",
                    f"{row['vswitch']['cpu_share']:.0%} / {row['vswitch-tso-off']['cpu_share']:.0%}",
                ]
            )
        header = ["rate (Mbit/s)", "burst (B)", "vswitch", "vswitch, sender TSO off", "kernel tbf",
                  "vswitch / tbf", "TSO off / tbf", "retransmits (v / off / tbf)",
                  "vswitch CPU (v / off)"]  # fmt: skip
        title = (f"TCP goodput through the shaper, Mbit/s (share of the rate; full segments carry "
                 f"{PAYLOAD_FRACTION:.1%} of it), latency {LATENCY * 1000:g} ms, {plan['tcp_seconds']} s, "
                 f"median of {plan['rounds']}")  # fmt: skip
        out.append((title, header, rows))
    if doc.get("cpu"):
        rows = []
        for load, row in doc["cpu"]["results"].items():
            base, impaired = (row[c] for c in CPU_CONDITIONS)

            def runs(cell: dict[str, Any]) -> str:
                median = "n/a" if cell["us_per_packet"] is None else f"{cell['us_per_packet']:.2f}"
                return f"{median} ({', '.join(f'{x:.2f}' for x in cell['samples_us'])})"

            rows.append(
                [
                    load,
                    runs(base),
                    runs(impaired),
                    ratio_text(row["ratio"]),
                    f"{base['pps']:,.0f} / {impaired['pps']:,.0f}",
                ]
            )
        header = ["64-byte UDP a -> b", "none impaired (runs)", "c delayed 10 ms (runs)", "ratio",
                  "forwarded pps (none / c)"]  # fmt: skip
        title = (
            f"vswitch CPU µs per forwarded packet, median of {plan['rounds']} runs of {plan['cpu_seconds']} s"
        )
        out.append((title, header, rows))
    return out


def headline(doc: dict[str, Any]) -> str:
    m, c = doc["machine"], doc["checkout"]
    dirty = " + uncommitted changes in vswitch/" if c.get("vswitch_uncommitted") else ""
    load = "/".join(f"{x:.2f}" for x in m["loadavg_start"])
    return (
        f"{doc['command']}, {m['date']}: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['iperf3']}, TCP {m['tcp_congestion_control']}; vswitch {m['vswitch']} at "
        f"{c.get('commit')}{dirty}; load average at the start {load}"
    )


def print_report(doc: dict[str, Any]) -> None:
    print_grids(headline(doc), grids(doc), doc["errors"])


# --- the run ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/emulation.py",
        description="vswitch's network emulation measured with ping and iperf3 in namespaces of its own",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute: not figures")
    parser.add_argument("--only", metavar="LIST", help=f"a comma-separated subset of {','.join(PARTS)}")
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="rounds of the rate and CPU tests (default 3)"
    )
    parser.add_argument("--seed", type=int, metavar="N", help="the loss stage's seed (default: random)")
    parser.add_argument("--congestion", metavar="NAME", help="TCP congestion control (iperf3 -C)")
    parser.add_argument("--out", metavar="DIR", help="where the JSON goes (default: bench/results)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--only: choose from {','.join(PARTS)}")
    args.parts = parts
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds: 1 to 20")
    return args


def preflight() -> None:
    if os.geteuid() != 0:
        raise EmulationBenchError("needs root (namespaces, veths, taps)")
    missing = [p for p in ("ip", "ping", "iperf3") if shutil.which(p) is None]
    if missing:
        raise EmulationBenchError(f"missing program(s): {', '.join(missing)}")


@contextlib.contextmanager
def timed(doc: dict[str, Any], part: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except (EmulationBenchError, ControlError, subprocess.TimeoutExpired, OSError) as exc:
        doc["errors"].append(f"{part}: {exc}")
    except Exception as exc:  # a bug here: the other parts still run, the report names it
        traceback.print_exc()
        doc["errors"].append(f"{part}: {type(exc).__name__}: {exc}")
    doc["elapsed_s"][part] = round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        preflight()
    except EmulationBenchError as exc:
        print(f"emulation bench: {exc}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, congestion=args.congestion, seed=args.seed, rounds=args.rounds or plan.rounds)
    checkout = Path(__file__).resolve().parents[1]
    out_dir = Path(args.out) if args.out else checkout / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{PREFIX_STEM}{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.environ[RUN_DIR_ENV] = str(work / "run")  # vswitch's state and control socket, private to the run
    (work / "run").mkdir()
    bench = Bench(prefix, work, plan)
    doc: dict[str, Any] = {
        "schema": 1,
        "command": " ".join(["bench/emulation.py", *(sys.argv[1:] if argv is None else argv)]),
        "mode": "quick" if args.quick else "default",
        "plan": asdict(plan),
        "prefix": prefix,
        "machine": {**machine_info(), "loadavg_start": os.getloadavg()},
        "checkout": checkout_state(checkout),
        "errors": [],
        "elapsed_s": {},
    }
    from rich.console import Console

    console = Console(stderr=True)

    def say(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)

    signals = Signals()
    signals.install()
    interrupted = False
    started = time.monotonic()
    problems: list[str] = []
    try:
        say(f"building: vswitch up --ports {prefix}-a,b,c and a kernel bridge with tbf ({prefix}-k*)")
        bench.build_vswitch()
        bench.start_server(bench.ns("b"))
        bench.wait_reachable(bench.ns("a"))
        if "rate" in args.parts:
            bench.build_kernel()
            bench.start_server(bench.ns("kb"))
            bench.wait_reachable(bench.ns("ka"))
        parts: dict[str, Callable[[Bench, Callable[[str], None]], Any]] = {
            "delay": measure_delay,
            "loss": measure_loss,
            "rate": measure_rate,
            "cpu": measure_cpu,
        }
        for part in args.parts:
            with timed(doc, part):
                doc[part] = parts[part](bench, say)
    except KeyboardInterrupt:
        interrupted = True
    except (EmulationBenchError, ControlError, subprocess.TimeoutExpired, OSError) as exc:
        doc["errors"].append(f"setup: {exc}")
    finally:
        signals.tearing_down = True
        problems = bench.teardown()
        shutil.rmtree(work, ignore_errors=True)
        signals.restore()
    doc["errors"].extend(f"clean-up: {p}" for p in problems)
    if interrupted:
        print("emulation bench: interrupted; removed everything it built", file=sys.stderr)
        return 130
    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["elapsed_s"]["total"] = round(time.monotonic() - started, 1)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"emulation-{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    print_report(doc)
    print(f"results: {json_path}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
