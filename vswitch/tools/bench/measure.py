"""The figures: what is sent, what is counted, and how each number is made. Every run is bounded.

- TCP Gbit/s: `iperf3 -J`, 1 stream and 4 streams (-P 4), the receiver's bits per second.
- 64-byte UDP pps: `iperf3 -u -l 18 -b 0` (14 Ethernet + 20 IPv4 + 8 UDP + 18 payload = 60 bytes,
  64 with the FCS a real wire would add) for duration + 1 s; in a window of `duration` seconds in the
  middle, the receiving interface's rx_packets delta over the window's length. Interface counters,
  not iperf3's own count: iperf3 counts what its socket took, so a slow receiving application would
  be charged to the switch; the counter counts what the switch delivered into the namespace.
- CPU µs per packet: the switch process's utime + stime (/proc/PID/stat) over the same window,
  divided by the packets delivered in it; for vswitch-vxlan the sum of its two processes' (every
  packet crosses both: encapsulated by one, decapsulated by the other). The kernel contenders forward
  (and encapsulate) in softirq context, charged to whichever task happens to run: no figure (None,
  shown as n/a).
- Loss at 50 kpps: iperf3 paced to 50,000 64-byte frames per second; loss from the client's
  tx_packets and the server's rx_packets deltas over the whole run (again what the switch lost, not
  the receiving socket).
- IPv6 (the router's IPv6 contenders, Contender.family 6): the same loads with `iperf3 -6` and
  `ping -6`, and the same 18-byte UDP payload, so the "64-byte" frame is 84 bytes there (the IPv6
  header is 20 bytes longer than IPv4's; no IPv6 UDP frame fits in 64, and iperf3 takes no payload
  under 16). The same packet less the header difference: packets per second and CPU per packet
  compare across the families, and 50 kpps is the same -b.
- Ping RTT: `ping -i 0.005` (root may go below 0.2 s); avg and p99 of the per-packet times. Again
  `-i 0.0002`, back to back: a switch process that sleeps between pings pays a wake-up per crossing,
  and on a VM whose idle vCPUs halt that wake-up, not the forwarding, is most of the 5 ms figure; the
  back-to-back figure is the forwarding with the process (and the vCPUs) still awake.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from .process import terminate
from .topologies import BenchError, Contender, interface_counters

UDP_PAYLOAD = 18  # 64-byte frame: 64 - 4 FCS - 14 Ethernet - 20 IPv4 - 8 UDP
FRAME_BYTES = 64
FRAME_BYTES6 = FRAME_BYTES + 20  # the same payload over IPv6 (40-byte header): 84 with the FCS
FIXED_PPS = 50_000
WARMUP = 0.5  # seconds skipped at the start of a UDP run before the counting window opens
CLIENT_SLACK = 20.0  # an iperf3 client gets its duration plus this before it is killed
SERVER_START = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
RTT_RE = re.compile(r"time=([0-9.]+) ms")

# Figure key -> (label, unit, higher is better). The order is the order of the table and chart.
FIGURES: dict[str, tuple[str, str, bool]] = {
    "tcp_gbps": ("TCP, 1 stream", "Gbit/s", True),
    "tcp4_gbps": ("TCP, 4 streams", "Gbit/s", True),
    "udp64_pps": ("64-byte UDP delivered", "packets/s", True),
    "cpu_us_per_pkt": ("switch CPU per 64-byte packet (saturated)", "µs", False),
    "cpu_us_per_pkt_50k": ("switch CPU per 64-byte packet at 50 kpps", "µs", False),
    "loss50k_pct": ("loss at 50 kpps, 64-byte", "%", False),
    "ping_avg_ms": ("ping RTT avg", "ms", False),
    "ping_p99_ms": ("ping RTT p99", "ms", False),
    "ping_b2b_avg_ms": ("ping RTT avg, back to back", "ms", False),
}
# The figures each vswitch contender is held to python-floor by (its ratio to the floor's, same run).
FLOOR_FIGURES: tuple[str, ...] = (
    "tcp_gbps",
    "udp64_pps",
    "cpu_us_per_pkt",
    "cpu_us_per_pkt_50k",
    "ping_avg_ms",
    "ping_b2b_avg_ms",
)

# The figures an IPv6 router is held to the same router in IPv4 by (the loss at 50 kpps is 0 for all).
FAMILY_FIGURES: tuple[str, ...] = (
    "tcp_gbps",
    "tcp4_gbps",
    "udp64_pps",
    "cpu_us_per_pkt",
    "cpu_us_per_pkt_50k",
    "ping_avg_ms",
    "ping_b2b_avg_ms",
)


@dataclass(frozen=True)
class Plan:
    """How long each load runs. Whole seconds: iperf3 takes -t as an integer."""

    tcp: int
    tcp4: int
    udp: int
    loss: int
    pings: int
    ping_interval: float = 0.005
    b2b_pings: int = 1000
    b2b_interval: float = 0.0002  # 0.2 ms: nobody goes to sleep between two pings
    congestion: str | None = None  # iperf3 -C for the TCP loads; None: the machine's default

    def steps(self) -> list[tuple[str, str]]:
        """(step key, label) in the order a contender runs them within a round."""
        return [
            ("tcp", f"TCP 1 stream ({self.tcp} s)"),
            ("tcp4", f"TCP 4 streams ({self.tcp4} s)"),
            ("udp", f"64-byte UDP flood ({self.udp} s)"),
            ("loss", f"50 kpps ({self.loss} s)"),
            ("ping", f"{self.pings} pings"),
            ("ping-b2b", f"{self.b2b_pings} pings back to back"),
        ]

    def seconds_per_round(self) -> float:
        """Rough wall time of one contender in one round (for the progress display)."""
        pinging = self.pings * self.ping_interval + self.b2b_pings * self.b2b_interval
        return self.tcp + self.tcp4 + self.udp + 1 + self.loss + pinging + 2


DEFAULT_PLAN = Plan(tcp=10, tcp4=10, udp=5, loss=5, pings=200)
QUICK_PLAN = Plan(tcp=3, tcp4=3, udp=2, loss=2, pings=50, b2b_pings=250)
TINY_PLAN = Plan(tcp=1, tcp4=1, udp=1, loss=1, pings=20, b2b_pings=20)  # the integration test's plumbing run


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds (/proc/PID/stat fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces: split after it
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(pct/100 * n) of the sorted list)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class IperfServer:
    """`iperf3 -s` in the server namespace for the whole run; stopped by the caller (stop())."""

    def __init__(self, contender: Contender, log_dir: Path) -> None:
        self.contender = contender
        self.log = log_dir / f"iperf3-{contender.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.contender.server_ns, "iperf3", "-s", "--forceflush"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START
        while b"listening" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{self.contender.name}: iperf3 -s did not start: {self._tail()}")
            time.sleep(0.05)

    def _tail(self) -> str:
        return self.log.read_text(errors="replace").strip()[-300:]

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, "iperf3 -s", 5)


def family_flag(c: Contender) -> list[str]:
    """`-6` for an IPv6 contender (iperf3 and ping alike), nothing for IPv4."""
    return ["-6"] if c.family == 6 else []


def _client_argv(c: Contender, duration: int, extra: list[str]) -> list[str]:
    return [
        "ip",
        "netns",
        "exec",
        c.client_ns,
        "iperf3",
        *family_flag(c),
        "-c",
        c.server_ip,
        "-t",
        str(duration),
        "-J",
        *extra,
    ]


def _iperf_result(c: Contender, stdout: str, stderr: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(stdout)
    except ValueError:
        raise BenchError(f"{c.name}: iperf3 printed no JSON: {stderr.strip()[-300:]}") from None
    if "error" in result:
        raise BenchError(f"{c.name}: iperf3: {result['error']}")
    return result


def run_iperf(c: Contender, duration: int, extra: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        _client_argv(c, duration, extra),
        capture_output=True,
        text=True,
        timeout=duration + CLIENT_SLACK,
        start_new_session=True,
    )
    return _iperf_result(c, proc.stdout, proc.stderr)


def tcp_gbps(c: Contender, duration: int, streams: int = 1, congestion: str | None = None) -> float:
    extra = ["-P", str(streams)] if streams > 1 else []
    if congestion is not None:
        extra += ["-C", congestion]
    result = run_iperf(c, duration, extra)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


class Sampler:
    """Counters and CPU time at one instant: the server's rx, the client's tx, the switch's CPU."""

    def __init__(self, c: Contender) -> None:
        self.c = c
        self.server = IPRoute(netns=c.server_ns)
        self.client = IPRoute(netns=c.client_ns)

    def close(self) -> None:
        self.server.close()
        self.client.close()

    def sample(self) -> tuple[float, int, int, float | None]:
        """(monotonic time, server rx_packets, client tx_packets, switch CPU seconds or None): the CPU
        of every switch process the contender has (two for vswitch-vxlan), None when the kernel
        forwards."""
        rx = interface_counters(self.server, self.c.server_if)[0]
        tx = interface_counters(self.client, self.c.client_if)[1]
        pids = self.c.pids
        cpu = sum(cpu_seconds(pid) for pid in pids) if pids else None
        return time.monotonic(), rx, tx, cpu


def _udp_run(c: Contender, seconds: int, rate: str) -> subprocess.Popen[str]:
    extra = ["-u", "-l", str(UDP_PAYLOAD), "-b", rate]
    return subprocess.Popen(
        _client_argv(c, seconds, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(c: Contender, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=5)
        raise
    return _iperf_result(c, out, err)


def _per_packet_us(cpu0: float | None, cpu1: float | None, packets: int) -> float | None:
    if cpu0 is None or cpu1 is None or packets <= 0:
        return None
    return (cpu1 - cpu0) / packets * 1e6


def udp_flood(c: Contender, window: int) -> tuple[float, float | None]:
    """(64-byte packets delivered per second, switch CPU µs per delivered packet) at full blast."""
    sampler = Sampler(c)
    try:
        proc = _udp_run(c, window + 1, "0")  # -b 0: as fast as the sender can
        try:
            time.sleep(WARMUP)
            t0, rx0, _, cpu0 = sampler.sample()
            time.sleep(window)
            t1, rx1, _, cpu1 = sampler.sample()
        finally:
            _finish(c, proc, window + 1 + CLIENT_SLACK)
    finally:
        sampler.close()
    delivered = rx1 - rx0
    return delivered / (t1 - t0), _per_packet_us(cpu0, cpu1, delivered)


def fixed_rate_loss(c: Contender, seconds: int, pps: int = FIXED_PPS) -> tuple[float, float | None, float]:
    """(loss %, switch CPU µs per packet, offered pps) for 64-byte UDP paced at pps."""
    sampler = Sampler(c)
    try:
        _, rx0, tx0, cpu0 = sampler.sample()
        proc = _udp_run(c, seconds, str(pps * UDP_PAYLOAD * 8))  # iperf3 paces payload bits
        _finish(c, proc, seconds + CLIENT_SLACK)
        time.sleep(0.2)  # let the last frames drain through the switch
        _, rx1, tx1, cpu1 = sampler.sample()
    finally:
        sampler.close()
    sent, received = tx1 - tx0, rx1 - rx0
    if sent <= 0:
        raise BenchError(f"{c.name}: the 50 kpps client sent nothing")
    loss = max(0.0, (sent - received) / sent * 100)
    return loss, _per_packet_us(cpu0, cpu1, received), sent / seconds


def ping_rtt(c: Contender, count: int, interval: float) -> tuple[float, float]:
    """(avg ms, p99 ms) over the replies of `count` pings sent `interval` seconds apart."""
    deadline = math.ceil(count * interval + 3)
    argv = ["ping", *family_flag(c), "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1"]
    argv += ["-w", str(deadline)]
    proc = subprocess.run(
        ["ip", "netns", "exec", c.client_ns, *argv, c.server_ip],
        capture_output=True,
        text=True,
        timeout=deadline + CLIENT_SLACK,
        start_new_session=True,
    )
    rtts = [float(m) for m in RTT_RE.findall(proc.stdout)]
    if not rtts:
        raise BenchError(f"{c.name}: no ping replies from {c.server_ip}: {proc.stderr.strip()}")
    return statistics.fmean(rtts), percentile(rtts, 99)


def wait_reachable(c: Contender, timeout: float = 15.0) -> None:
    """One ping at a time until the server answers (ARP or neighbour discovery, FDB and conntrack are
    warm after it)."""
    deadline = time.monotonic() + timeout
    while True:
        ping = ["ping", *family_flag(c), "-n", "-q", "-c", "1", "-W", "1", c.server_ip]
        proc = subprocess.run(
            ["ip", "netns", "exec", c.client_ns, *ping],
            capture_output=True,
            timeout=10,
            start_new_session=True,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{c.name}: {c.server_ip} is unreachable from {c.client_ns}")
        time.sleep(0.1)


def run_step(c: Contender, step: str, plan: Plan, figures: dict[str, float | None]) -> None:
    """One measurement of one contender; its figures go into `figures`."""
    if step == "tcp":
        figures["tcp_gbps"] = tcp_gbps(c, plan.tcp, congestion=plan.congestion)
    elif step == "tcp4":
        figures["tcp4_gbps"] = tcp_gbps(c, plan.tcp4, streams=4, congestion=plan.congestion)
    elif step == "udp":
        figures["udp64_pps"], figures["cpu_us_per_pkt"] = udp_flood(c, plan.udp)
    elif step == "loss":
        loss, cpu, offered = fixed_rate_loss(c, plan.loss)
        figures["loss50k_pct"], figures["cpu_us_per_pkt_50k"] = loss, cpu
        figures["offered50k_pps"] = offered
    elif step == "ping":
        figures["ping_avg_ms"], figures["ping_p99_ms"] = ping_rtt(c, plan.pings, plan.ping_interval)
    elif step == "ping-b2b":
        figures["ping_b2b_avg_ms"], _ = ping_rtt(c, plan.b2b_pings, plan.b2b_interval)
    else:
        raise ValueError(f"unknown step {step!r}")


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
