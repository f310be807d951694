"""The soak (issue 22): every kind of traffic at once through a router with NAT, for minutes, sampled.

Topology, in namespaces named `vsk<6 hex>-TAG` that `vswitch up` makes and removes (a sweep removes any
left behind): lan = tcp, udp, ping, macs, macr; dmz = nat; the uplink `out` plays the outside world
(198.18.0.1; the router is 198.18.0.2 and masquerades everything that leaves). One sender per port, so
vswitch's drops, which it counts against the port a frame came in on, are each stream's own.

Streams, all ending at the run's deadline:
- tcp: iperf3 tcp -> out through NAT, capped (-b) so the two cores are not saturated and the
  accounting is of a switch that keeps up. Through NAT rather than between inside ports: the uplink
  path is the one with state (conntrack, NAT mapping, flow cache) that a soak should hold steady.
- udp: 64-byte datagrams with sequence numbers at a fixed rate, udp -> out through NAT; the receiver
  counts received, duplicated and reordered by sequence, and its socket's drops (SO_RXQ_OVFL).
- ping: ping -> out every 0.2 s.
- nat: new TCP connections per second nat -> out (each a new conntrack flow and NAT mapping).
- macs: frames with a new source MAC each (100/s) flooded on lan; macr counts them. With --ageing at
  60 s, 6000 would be live at once: the port's own bound (--port-mac-max, 1024 by default) is reached
  and held, entries age out and make room, and the new sources beyond it are `port-mac-limit` drops,
  the one reason this traffic explains, matched exactly by the accounting.

Every interval: per stream sent/received; vswitch's drops by port and reason and its events (`stats`
over the control socket), tables and their bounds, the loop's lag; the process's RSS and open fds;
the kernel's drops on the way (each namespace's eth0 tx_dropped/rx_dropped, the UDP counters of the
sender's and receiver's namespaces). At the end, after the senders stop and the receivers' counts stop
moving: sent - received for each one-way stream (udp, macs) against vswitch's drops on its port plus
the kernel's, exactly; every non-zero drop reason against what this traffic can explain; RSS and fds
after the warm-up; every table within its bound at every sample.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from pyroute2 import IPRoute

from ...shell.control import ControlError, request
from ...shell.kernel import remove_netns_named
from ...shell.state import RUN_DIR_ENV, socket_path
from ..bench.process import NotReady, spawn_vswitch, stop_instance, terminate, wait_port_table
from ..bench.run import Signals, machine_info
from ..bench.topologies import namespaces_with
from . import loads

PREFIX_STEM: Final = "vsk"
OUTSIDE: Final = "198.18.0.1"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 15.0
COMMAND_TIMEOUT: Final = 15.0
DRAIN_MAX: Final = 10.0  # seconds the receivers may take to stop counting after the senders stop
DRAIN_STEADY: Final = 1.0  # ... and how long their counts must stay unchanged
LINK_COUNTERS: Final = ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped")
UDP_PORT: Final = 9000
NAT_PORT: Final = 8080
IPERF_PORT: Final = 5201
UNKNOWN_MAC: Final = "025b00000001"  # the churn frames' destination: nobody has it, so it floods
LAN: Final = ("tcp", "udp", "ping", "macs", "macr")
FLOODED: Final = ("tcp", "udp", "ping")  # the lan ports that get the churn frames and no handler for them
DMZ: Final = ("nat",)
UPLINK: Final = "out"
WARMUP_SHARE: Final = 0.2
WARMUP_MIN: Final = 60.0
GROWTH_LIMIT: Final = 0.05
IPERF_RE: Final = re.compile(r"\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+\S+ \S*Bytes\s+([\d.]+) Kbits/sec")
PING_REPLY_RE: Final = re.compile(r"icmp_seq=(\d+) ttl=")
PING_NO_ANSWER_RE: Final = re.compile(r"no answer yet for icmp_seq=(\d+)")
PING_SUMMARY_RE: Final = re.compile(r"(\d+) packets transmitted, (\d+) received")
# Drop reasons this traffic can cause by design, and why. Any other non-zero reason is a failure.
EXPLAINED: Final[dict[str, str]] = {
    "port-mac-limit": "macs: 100 new MACs a second for 60 s of ageing is more than its port may learn",
}


class SoakError(Exception):
    """A step could not be built or run; str() is one sentence."""


@dataclass(frozen=True)
class Plan:
    minutes: float = 10.0
    interval: float = 10.0
    tcp_rate: str = "200M"  # iperf3 -b
    udp_pps: int = 2000
    udp_payload: int = 64
    ping_interval: float = 0.2
    nat_flows_per_s: float = 50.0
    mac_churn_per_s: float = 100.0
    ageing: float = 60.0  # vswitch --ageing: churned MACs age out within the run
    fdb_max: int = 4096  # vswitch --fdb-max: below rate x ageing (6000), so the bound is reached too

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def warmup(self) -> float:
        """The first 20% of the run or a minute, whichever is longer, but at most half the run."""
        return min(max(WARMUP_SHARE * self.seconds, WARMUP_MIN), self.seconds / 2)


class Load:
    """A program running in a namespace; a thread keeps the last JSON line (or parsed text) it printed."""

    def __init__(self, name: str, namespace: str, argv: list[str], work: Path, parse: Any = None) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self.lines = 0
        self._parse = parse or _json_line
        self._err = open(work / f"{name}.err", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._parse(self.state, line)
            self.lines += 1

    def wait_ready(self, timeout: float = COMMAND_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self.state.get("ready"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SoakError(f"{self.name} did not start: {self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        self._err.flush()
        return Path(self._err.name).read_text(errors="replace").strip()[-300:]

    def stop(self) -> list[str]:
        problems = terminate(self.proc, self.name, 5)
        self._thread.join(5)
        self._err.close()
        return problems


def _json_line(state: dict[str, Any], line: str) -> None:
    with contextlib.suppress(ValueError):
        state.update(json.loads(line))


def _iperf_server_line(state: dict[str, Any], line: str) -> None:
    """iperf3 -s's text: each interval line adds its bytes, from its bitrate (5 significant figures, where
    the transfer column has 3) times its length; the summary line after the dashes is not added."""
    if "listening" in line:
        state["ready"] = True
    if line.startswith("- - -"):
        state["summary"] = True
    match = IPERF_RE.search(line)
    if match is None or state.get("summary"):
        return
    seconds = float(match[2]) - float(match[1])
    state["bytes"] = state.get("bytes", 0) + round(float(match[3]) * 1000 / 8 * seconds)


def _iperf_client_line(state: dict[str, Any], line: str) -> None:
    """iperf3 -c -J: one JSON document at the end; its totals are exact (bytes, retransmits)."""
    state.setdefault("text", []).append(line)
    if line.rstrip() == "}":
        with contextlib.suppress(ValueError):
            end = json.loads("".join(state["text"]))["end"]
            state["final_sent_bytes"] = int(end["sum_sent"]["bytes"])
            state["final_received_bytes"] = int(end["sum_received"]["bytes"])
            state["retransmits"] = int(end["sum_sent"].get("retransmits", 0))
        state["text"] = []


def _ping_line(state: dict[str, Any], line: str) -> None:
    if (match := PING_REPLY_RE.search(line)) is not None:
        state["received"] = state.get("received", 0) + 1
        state["sent"] = max(state.get("sent", 0), int(match[1]))
    elif (match := PING_NO_ANSWER_RE.search(line)) is not None:
        state["sent"] = max(state.get("sent", 0), int(match[1]))
    elif (match := PING_SUMMARY_RE.search(line)) is not None:
        state["final_sent"], state["final_received"] = int(match[1]), int(match[2])


@dataclass
class Soak:
    """Everything one run builds, recorded as it is made, so that teardown() removes exactly that."""

    prefix: str
    work: Path
    plan: Plan
    vswitch: subprocess.Popen[bytes] | None = None
    loads: dict[str, Load] = field(default_factory=dict)
    pid: int = 0

    def ns(self, tag: str) -> str:
        return f"{self.prefix}-{tag}"

    @property
    def socket(self) -> Path:
        return socket_path(self.prefix)

    # --- building --------------------------------------------------------------------------------
    def build(self) -> None:
        plan = self.plan
        argv = [sys.executable, "-m", "vswitch", "up", "--name", self.prefix, "--json"]
        argv += ["--segment", "lan=" + ",".join(self.ns(t) for t in LAN)]
        argv += ["--segment", "dmz=" + ",".join(self.ns(t) for t in DMZ), "--uplink", self.ns(UPLINK)]
        argv += ["--ageing", f"{plan.ageing:g}", "--fdb-max", str(plan.fdb_max)]
        self.vswitch, out_path = spawn_vswitch(argv, self.work, "vswitch")
        try:
            wait_port_table(self.vswitch, out_path, START_TIMEOUT)
        except NotReady as exc:
            raise SoakError(str(exc)) from None
        self.pid = int(request(self.socket, "status")["pid"])
        for tag in (*LAN, *DMZ):
            self._wait_reachable(self.ns(tag))

    def _wait_reachable(self, namespace: str) -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        argv = ["ip", "netns", "exec", namespace, "ping", "-n", "-q", "-c", "1", "-W", "1", OUTSIDE]
        while subprocess.run(argv, capture_output=True, timeout=COMMAND_TIMEOUT).returncode != 0:
            if time.monotonic() > deadline:
                raise SoakError(f"{OUTSIDE} is unreachable from {namespace}")
            time.sleep(0.1)

    def start_loads(self) -> None:
        plan, py = self.plan, sys.executable
        seconds = f"{plan.seconds:g}"
        listen = f"{plan.seconds + DRAIN_MAX + 5:g}"  # receivers outlive the senders by the drain

        def start(name: str, tag: str, argv: list[str], parse: Any = None) -> Load:
            load = self.loads[name] = Load(name, self.ns(tag), argv, self.work, parse)
            return load

        def script(source: str, *args: object) -> list[str]:
            return [py, "-c", loads.program(source), *map(str, args)]

        start("udp-rx", UPLINK, script(loads.UDP_RECEIVER, OUTSIDE, UDP_PORT, listen)).wait_ready()
        start("nat-rx", UPLINK, script(loads.TCP_LISTENER, OUTSIDE, NAT_PORT, listen)).wait_ready()
        start("macs-rx", "macr", script(loads.MAC_RECEIVER, "eth0", listen)).wait_ready()
        iperf_s = ["iperf3", "-s", "-1", "-B", OUTSIDE, "-p", str(IPERF_PORT), "--forceflush", "-f", "k"]
        start("tcp-rx", UPLINK, [*iperf_s, "-i", "1"], _iperf_server_line).wait_ready()
        iperf_c = ["iperf3", "-c", OUTSIDE, "-p", str(IPERF_PORT), "-t", f"{plan.seconds:.0f}", "-b"]
        start("tcp", "tcp", [*iperf_c, plan.tcp_rate, "-J"], _iperf_client_line)
        start(
            "udp", "udp", script(loads.UDP_SENDER, OUTSIDE, UDP_PORT, plan.udp_pps, seconds, plan.udp_payload)
        )
        count = round(plan.seconds / plan.ping_interval)
        ping = ["ping", "-n", "-O", "-i", f"{plan.ping_interval:g}", "-c", str(count)]
        start("ping", "ping", [*ping, "-w", f"{plan.seconds + 5:.0f}", OUTSIDE], _ping_line)
        start("nat", "nat", script(loads.NAT_CLIENT, OUTSIDE, NAT_PORT, plan.nat_flows_per_s, seconds))
        start("macs", "macs", script(loads.MAC_SENDER, "eth0", plan.mac_churn_per_s, seconds, UNKNOWN_MAC))

    # --- sampling ----------------------------------------------------------------------------------
    def sample(self, elapsed: float) -> dict[str, Any]:
        rss, fds = _rss_kib(self.pid), len(os.listdir(f"/proc/{self.pid}/fd"))  # before our request's fd
        stats = request(self.socket, "stats")
        return {
            "t": round(elapsed, 2),
            "streams": self.streams(),
            "vswitch": {
                "rss_kib": rss,
                "fds": fds,
                "ports": {
                    name: {k: v for k, v in port.items() if k != "rx_bytes" and k != "tx_bytes"}
                    for name, port in stats["ports"].items()
                },
                "drops": stats["drops"],
                "events": {**stats["events"], **stats.get("router", {}).get("events", {})},
                "tables": stats["tables"],
                "bounds": stats["bounds"],
                "loop_lag": stats.get("loop_lag", {}),
            },
            "kernel": self.kernel_counters(),
        }

    def streams(self) -> dict[str, Any]:
        s = {name: dict(load.state) for name, load in self.loads.items()}

        def get(name: str, key: str) -> Any:
            return s.get(name, {}).get(key, 0)

        return {
            # iperf3's totals come at the end (-J); a sample has the server's count so far
            "tcp": {"sent_bytes": None, "received_bytes": get("tcp-rx", "bytes"), "retransmits": None},
            "udp": {"sent": get("udp", "sent"), "received": get("udp-rx", "received"),
                    "send_errors": get("udp", "errors"), "duplicates": get("udp-rx", "duplicates"),
                    "reordered": get("udp-rx", "reordered"), "socket_drops": get("udp-rx", "socket_drops")},
            "ping": {"sent": get("ping", "sent"), "received": get("ping", "received")},
            "nat": {"sent": get("nat", "attempts"), "received": get("nat", "ok"),
                    "failed": s.get("nat", {}).get("failed", {}), "accepted": get("nat-rx", "accepted")},
            "macs": {"sent": get("macs", "sent"), "received": get("macs-rx", "received"),
                     "send_errors": get("macs", "errors"), "duplicates": get("macs-rx", "duplicates"),
                     "socket_drops": get("macs-rx", "socket_drops")},
        }  # fmt: skip

    def kernel_counters(self) -> dict[str, Any]:
        """Each namespace's eth0 drops (the tap's queue: tx_dropped; its receive path: rx_dropped) and
        the UDP counters of the namespaces that send and receive the UDP stream."""
        links: dict[str, dict[str, int]] = {}
        for tag in (*LAN, *DMZ, UPLINK):
            with IPRoute(netns=self.ns(tag)) as ipr:
                link = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0]
                stats = link.get("IFLA_STATS64") or link.get("stats64")
                links[tag] = {k: int(stats[k]) for k in LINK_COUNTERS}
                # The qdisc's drops, for the record: an enqueue drop also reaches the sending UDP socket
                # as ENOBUFS, counted as SndbufErrors, so the accounting counts it there, once.
                links[tag]["qdisc_drops"] = sum(
                    int(q.get_attr("TCA_STATS")["drop"]) for q in ipr.get_qdiscs(index=link["index"])
                    if q.get_attr("TCA_STATS") is not None
                )  # fmt: skip
        return {
            "links": links,
            "udp_sender_ns": _snmp_udp(self.ns("udp")),
            "udp_receiver_ns": _snmp_udp(self.ns(UPLINK)),
        }

    def drain(self) -> float:
        """Wait until every sender is done and the receivers' counts stop moving; the seconds it took."""
        started = time.monotonic()
        senders = [self.loads[n] for n in ("tcp", "udp", "ping", "nat", "macs")]
        while any(load.proc.poll() is None for load in senders):
            if time.monotonic() - started > DRAIN_MAX + 30:
                raise SoakError("the senders did not finish by their deadline")
            time.sleep(0.1)
        receivers = [self.loads[n] for n in ("udp-rx", "macs-rx", "nat-rx")]
        last, steady_since = None, time.monotonic()
        while time.monotonic() - started < DRAIN_MAX:
            counts = [json.dumps(load.state, sort_keys=True) for load in receivers]
            if counts != last:
                last, steady_since = counts, time.monotonic()
            elif time.monotonic() - steady_since >= DRAIN_STEADY:
                break
            time.sleep(0.1)
        return time.monotonic() - started

    # --- teardown ------------------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        problems: list[str] = []
        for load in self.loads.values():
            problems.extend(load.stop())
        if self.vswitch is not None:
            problems.extend(self._stop_vswitch(self.vswitch))
        for name in namespaces_with(f"{self.prefix}-"):  # vswitch's own, if it could not remove them
            problems.append(f"namespace {name} was left behind; removed")
            with contextlib.suppress(OSError):
                remove_netns_named(name)
        return problems

    def _stop_vswitch(self, proc: subprocess.Popen[bytes]) -> list[str]:
        return stop_instance(proc, self.prefix, STOP_TIMEOUT, COMMAND_TIMEOUT)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SoakError(f"no VmRSS for process {pid}")


def _snmp_udp(namespace: str) -> dict[str, int]:
    """The Udp lines of /proc/net/snmp as the namespace sees it."""
    argv = ["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp"]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True).stdout
    lines = [line.split() for line in text.splitlines()]
    head, values = next(pair for pair in itertools.pairwise(lines) if pair[0][0] == "Udp:")
    return {k: int(v) for k, v in zip(head[1:], values[1:], strict=True)}


# --- the figures -----------------------------------------------------------------------------------
def diff_drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Drops by port and reason that happened between two samples (non-zero only)."""
    found: dict[str, dict[str, int]] = {}
    for port, counters in after["vswitch"]["ports"].items():
        old = before["vswitch"]["ports"].get(port, {}).get("drops", {})
        delta = {r: n - old.get(r, 0) for r, n in counters["drops"].items() if n - old.get(r, 0)}
        if delta:
            found[port] = delta
    return found


def kernel_delta(before: dict[str, Any], after: dict[str, Any], tag: str, key: str) -> int:
    return int(after["kernel"]["links"][tag][key] - before["kernel"]["links"][tag][key])


def accounting(
    soak: Soak, start: dict[str, Any], end: dict[str, Any], udp_snmp: dict[str, Any]
) -> dict[str, Any]:
    """For each one-way stream: sent - received against vswitch's drops on its port and the kernel's on
    the way. Exact for udp and macs; for ping, nat and tcp (answered or retried) any loss needs drops."""
    drops = diff_drops(start, end)
    s = end["streams"]
    port_drops = {tag: sum(drops.get(soak.ns(tag), {}).values()) for tag in (*LAN, *DMZ, UPLINK)}
    udp_kernel = {
        "sender_tap_tx_dropped": kernel_delta(start, end, "udp", "tx_dropped"),
        "sender_ns_udp_sndbuf_errors": udp_snmp["sndbuf_errors"],
        "receiver_tap_rx_dropped": kernel_delta(start, end, UPLINK, "rx_dropped"),
        "receiver_socket_drops": s["udp"]["socket_drops"],
    }
    macs_kernel = {
        "sender_tap_tx_dropped": kernel_delta(start, end, "macs", "tx_dropped"),
        "receiver_tap_rx_dropped": kernel_delta(start, end, "macr", "rx_dropped"),
        "receiver_socket_drops": s["macs"]["socket_drops"],
    }
    result: dict[str, Any] = {}
    for name, kernel in (("udp", udp_kernel), ("macs", macs_kernel)):
        lost = s[name]["sent"] - s[name]["received"]
        explained = port_drops[name] + sum(kernel.values())
        result[name] = {
            "sent": s[name]["sent"], "received": s[name]["received"], "lost": lost,
            "vswitch_drops": drops.get(soak.ns(name), {}), "kernel_drops": kernel,
            "explained": explained, "adds_up": lost == explained,
        }  # fmt: skip
    ping_lost = s["ping"]["sent"] - s["ping"]["received"]
    ping_drops = port_drops["ping"] + port_drops[UPLINK]
    nat_lost = s["nat"]["sent"] - s["nat"]["received"]
    nat_drops = port_drops["nat"] + port_drops[UPLINK]
    result["ping"] = {
        "sent": s["ping"]["sent"],
        "received": s["ping"]["received"],
        "lost": ping_lost,
        "drops_on_its_ports": ping_drops,
        "adds_up": ping_lost == 0 or ping_drops >= ping_lost,
    }
    result["nat"] = {
        "sent": s["nat"]["sent"],
        "received": s["nat"]["received"],
        "lost": nat_lost,
        "failed": s["nat"]["failed"],
        "drops_on_its_ports": nat_drops,
        "adds_up": nat_lost == 0 or nat_drops >= nat_lost,
    }
    tcp = s["tcp"]
    result["tcp"] = {"sent_bytes": tcp["sent_bytes"], "received_bytes": tcp["received_bytes"],
                     "retransmits": tcp["retransmits"], "drops_on_its_ports": port_drops["tcp"],
                     "adds_up": tcp["sent_bytes"] == tcp["received_bytes"]}  # fmt: skip
    return result


def kernel_drops(start: dict[str, Any], end: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The kernel's non-zero drop counters of each namespace's eth0 over the run, each with what
    explains it (None: nothing does)."""
    # The churn frames vswitch flooded: all that macr received (the rest were port-mac-limit drops).
    macs_flooded = end["streams"]["macs"]["received"]
    found: dict[str, dict[str, Any]] = {}
    for tag, counters in end["kernel"]["links"].items():
        for key in ("rx_dropped", "tx_dropped", "qdisc_drops"):
            count = counters.get(key, 0) - start["kernel"]["links"][tag].get(key, 0)
            if not count:
                continue
            why = None
            if key == "rx_dropped" and tag in FLOODED and count == macs_flooded:
                why = (
                    "every MAC churn frame flooded to this lan port: nothing in this namespace takes "
                    "ethertype 0x88b5 (in macr a packet socket does)"
                )
            found[f"{tag}.{key}"] = {"count": count, "explained": why}
    return found


def in_flight(soak: Soak, start: dict[str, Any], samples: list[dict[str, Any]]) -> list[list[float]]:
    """[t, sent - received - vswitch's drops on the udp port] at each sample: what was on its way then
    (the loads report every loads.REPORT s, so up to that much of the rate, plus the queues)."""
    rows = []
    for sample in samples[1:]:
        udp = sample["streams"]["udp"]
        drops = sum(diff_drops(start, sample).get(soak.ns("udp"), {}).values())
        rows.append([sample["t"], udp["sent"] - udp["received"] - drops])
    return rows


def growth(samples: list[dict[str, Any]], warmup: float, key: str) -> dict[str, Any]:
    """The value at the end of the warm-up against the largest after it."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        return {"at_warmup": None, "max_after": None, "growth": None}
    base = after[0]["vswitch"][key]
    top = max(s["vswitch"][key] for s in after)
    return {"at_warmup": base, "max_after": top, "growth": round((top - base) / base, 4) if base else None}


def table_violations(samples: list[dict[str, Any]]) -> list[str]:
    found = []
    for sample in samples:
        tables, bounds = sample["vswitch"]["tables"], sample["vswitch"]["bounds"]
        for name, size in tables.items():
            bound = bounds.get(name)
            if isinstance(size, dict):  # per segment
                pairs = [(f"{name}.{k}", v, bound.get(k) if bound else None) for k, v in size.items()]
            else:
                pairs = [(name, size, bound)]
            for label, value, limit in pairs:
                if limit is not None and value > limit:
                    found.append(f"t={sample['t']}: {label} {value} > {limit}")
    return found


def checks(doc: dict[str, Any], plan: Plan) -> dict[str, dict[str, Any]]:
    samples = doc["samples"]
    result: dict[str, dict[str, Any]] = {}
    for key, label in (("rss_kib", "rss"), ("fds", "fds")):
        g = growth(samples, plan.warmup, key)
        ok = g["growth"] is not None and g["growth"] < GROWTH_LIMIT
        result[f"{label}_flat"] = {"pass": ok, **g, "limit": GROWTH_LIMIT}
    violations = table_violations(samples)
    unbounded = sorted({name for s in samples for name in s["vswitch"]["tables"]} - {
        name for s in samples for name in s["vswitch"]["bounds"]})  # fmt: skip
    result["tables_bounded"] = {"pass": not violations and not unbounded, "violations": violations[:20],
                                "tables_without_bound": unbounded}  # fmt: skip
    acc = doc["accounting"]
    result["accounting"] = {"pass": all(v["adds_up"] for v in acc.values()),
                            "streams": {k: v["adds_up"] for k, v in acc.items()}}  # fmt: skip
    reasons: Counter[str] = Counter()
    for per_port in doc["drops"].values():
        reasons.update(per_port)
    unexplained = sorted(r for r in reasons if r not in EXPLAINED)
    unexplained += sorted(k for k, v in doc["kernel_drops"].items() if v["explained"] is None)
    result["drops_explained"] = {"pass": not unexplained, "non_zero": dict(reasons),
                                 "explained": {r: EXPLAINED[r] for r in reasons if r in EXPLAINED},
                                 "kernel": doc["kernel_drops"],
                                 "unexplained": unexplained}  # fmt: skip
    return result


def run(plan: Plan, out_dir: Path, say: Any = print) -> tuple[dict[str, Any], Path]:
    """Build, load, sample, check, tear down; the document and the JSON file's path."""
    prefix = f"{PREFIX_STEM}{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    old_run_dir = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(work / "run")  # vswitch's state and control socket, private to the run
    (work / "run").mkdir()
    soak = Soak(prefix, work, plan)
    doc: dict[str, Any] = {
        "schema": 1,
        "plan": {**asdict(plan), "seconds": plan.seconds, "warmup": plan.warmup},
        "prefix": prefix,
        "machine": {**machine_info(), "loadavg_start": os.getloadavg()},
        "errors": [],
        "samples": [],
    }
    signals = Signals()
    signals.install()
    problems: list[str] = []
    try:
        say(f"building: vswitch up, lan={','.join(LAN)} dmz={','.join(DMZ)} uplink={UPLINK} ({prefix}-*)")
        soak.build()
        start = soak.sample(0.0)
        t0 = time.monotonic()
        say(f"loads running for {plan.seconds:g} s, sampled every {plan.interval:g} s")
        soak.start_loads()
        doc["samples"].append(start)
        n = 1
        while (due := n * plan.interval) <= plan.seconds + 1e-9:
            time.sleep(max(0.0, t0 + due - time.monotonic()))
            sample = soak.sample(time.monotonic() - t0)
            doc["samples"].append(sample)
            v = sample["vswitch"]
            lag = v["loop_lag"].get("recent_max", 0) * 1000
            say(f"t={sample['t']:.0f}s rss={v['rss_kib']} KiB fds={v['fds']} conntrack="
                f"{v['tables'].get('conntrack')} fdb={v['tables'].get('fdb')} lag_max10s={lag:.1f} ms "
                f"udp={sample['streams']['udp']['received']}")  # fmt: skip
            n += 1
        doc["drain_s"] = round(soak.drain(), 2)
        end = soak.sample(time.monotonic() - t0)
        end["final"] = True
        tcp = soak.loads["tcp"].state
        end["streams"]["tcp"].update(sent_bytes=tcp.get("final_sent_bytes", 0),
                                     received_bytes=tcp.get("final_received_bytes", 0),
                                     retransmits=tcp.get("retransmits", 0))  # fmt: skip
        ping = soak.loads["ping"].state
        end["streams"]["ping"].update(sent=ping.get("final_sent", 0), received=ping.get("final_received", 0))
        doc["samples"].append(end)
        snmp_start, snmp_end = start["kernel"]["udp_sender_ns"], end["kernel"]["udp_sender_ns"]
        sndbuf = snmp_end["SndbufErrors"] - snmp_start["SndbufErrors"]
        doc["accounting"] = accounting(soak, start, end, {"sndbuf_errors": sndbuf})
        doc["drops"] = diff_drops(start, end)
        doc["udp_in_flight"] = in_flight(soak, start, doc["samples"])
        doc["kernel_drops"] = kernel_drops(start, end)
        doc["events"] = {
            k: v - start["vswitch"]["events"].get(k, 0)
            for k, v in end["vswitch"]["events"].items()
            if v - start["vswitch"]["events"].get(k, 0)
        }
        doc["loop_lag"] = end["vswitch"]["loop_lag"]
        doc["checks"] = checks(doc, plan)
    except KeyboardInterrupt:
        doc["errors"].append("interrupted")
    except (SoakError, ControlError, subprocess.TimeoutExpired, OSError) as exc:
        doc["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        signals.tearing_down = True
        problems = soak.teardown()
        shutil.rmtree(work, ignore_errors=True)
        signals.restore()
        if old_run_dir is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old_run_dir
    doc["errors"].extend(f"clean-up: {p}" for p in problems)
    doc["machine"]["loadavg_end"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    if doc["samples"] and "checks" in doc:
        with contextlib.suppress(ImportError):
            write_plot(doc, path.with_suffix(".png"))
            doc["plot"] = str(path.with_suffix(".png"))
            path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc, path


def passed(doc: dict[str, Any]) -> bool:
    return not doc["errors"] and "checks" in doc and all(c["pass"] for c in doc["checks"].values())


def report(doc: dict[str, Any]) -> list[str]:
    """The figures and the PASS/FAIL lines, as printed."""
    lines: list[str] = []
    if "accounting" in doc:
        lines.append("stream  sent        received    lost  vswitch drops (its port)  kernel drops  adds up")
        for name in ("udp", "macs"):
            a = doc["accounting"][name]
            ours, kernel = sum(a["vswitch_drops"].values()), sum(a["kernel_drops"].values())
            lines.append(f"{name:<7} {a['sent']:<11} {a['received']:<11} {a['lost']:<5} "
                         f"{ours:<25} {kernel:<13} {a['adds_up']}")  # fmt: skip
        for name in ("ping", "nat"):
            a = doc["accounting"][name]
            lines.append(f"{name:<7} {a['sent']:<11} {a['received']:<11} {a['lost']:<5} "
                         f"{a['drops_on_its_ports']:<25} {'-':<13} {a['adds_up']}")  # fmt: skip
        t = doc["accounting"]["tcp"]
        lines.append(
            f"tcp     {t['sent_bytes']} B sent, {t['received_bytes']} B received, "
            f"{t['retransmits']} retransmits, {t['drops_on_its_ports']} drops on its port"
        )
        lines.append(f"vswitch drops by port and reason: {doc['drops'] or 'none'}")
        for name, drop in doc["kernel_drops"].items():
            lines.append(f"kernel drops {name}: {drop['count']} ({drop['explained'] or 'UNEXPLAINED'})")
        worst = max((row[1] for row in doc["udp_in_flight"]), default=0)
        lines.append(f"udp in flight at a sample (sent - received - drops): at most {worst}")
        lines.append(f"events: {doc['events']}")
        lag = doc.get("loop_lag", {})
        lines.append(
            f"loop lag: mean {lag.get('mean', 0) * 1000:.2f} ms, max {lag.get('max', 0) * 1000:.1f} ms"
        )
    for name, check in doc.get("checks", {}).items():
        detail = {k: v for k, v in check.items() if k not in ("pass", "kernel")}  # kernel's: above
        lines.append(f"{'PASS' if check['pass'] else 'FAIL'} {name}: {json.dumps(detail)}")
    lines.extend(f"ERROR {e}" for e in doc["errors"])
    return lines


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """RSS, fds, table sizes, the loop's lag and each stream's rate over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in doc["samples"] if not s.get("final")]
    t = [s["t"] for s in samples]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0][0]
    ax.plot(t, [s["vswitch"]["rss_kib"] / 1024 for s in samples], marker=".")
    ax.set_title("vswitch RSS (MiB)")
    ax.axvline(doc["plan"]["warmup"], color="grey", linestyle=":")
    ax = axes[0][1]
    ax.plot(t, [s["vswitch"]["fds"] for s in samples], marker=".")
    ax.set_title("open fds")
    ax.axvline(doc["plan"]["warmup"], color="grey", linestyle=":")
    ax = axes[0][2]
    for name in ("conntrack", "flow_cache", "arp", "nat_mappings"):
        ax.plot(t, [s["vswitch"]["tables"].get(name, 0) for s in samples], label=name)
    for seg in samples[-1]["vswitch"]["tables"]["fdb"]:
        ax.plot(t, [s["vswitch"]["tables"]["fdb"].get(seg, 0) for s in samples], label=f"fdb {seg}")
    ax.set_title("table sizes")
    ax.legend(fontsize="small")
    ax = axes[1][0]
    ax.plot(
        t, [s["vswitch"]["loop_lag"].get("recent_max", 0) * 1000 for s in samples], label="max of last 10 s"
    )
    ax.plot(t, [s["vswitch"]["loop_lag"].get("last", 0) * 1000 for s in samples], label="at the sample")
    ax.set_title("event loop lag (ms)")
    ax.legend(fontsize="small")
    ax = axes[1][1]
    for name in ("udp", "ping", "nat", "macs"):
        rates = _rates(samples, lambda s, n=name: s["streams"][n]["received"])
        ax.plot(t[1:], rates, label=f"{name} received")
    ax.set_yscale("symlog")
    ax.set_title("received per second")
    ax.legend(fontsize="small")
    ax = axes[1][2]
    ax.plot(t[1:], [r * 8 / 1e6 for r in _rates(samples, lambda s: s["streams"]["tcp"]["received_bytes"])])
    ax.set_title("tcp received (Mbit/s)")
    for a in axes.flat:
        a.set_xlabel("s")
    fig.suptitle(f"vswitch soak {doc['prefix']}: {doc['plan']['minutes']:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rates(samples: list[dict[str, Any]], value: Any) -> list[float]:
    return [
        (value(b) - value(a)) / (b["t"] - a["t"]) if b["t"] > a["t"] else 0.0
        for a, b in itertools.pairwise(samples)
    ]
