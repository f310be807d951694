"""Floods against a running vswitch (issue 22), each while victims on other ports keep a TCP stream and
a ping going: is the process alive, does its control socket answer, what did the victims lose, and
how big are its tables and its memory afterwards.

The topology, fresh for every flood (so each one's tables and memory are its own):

    attacker  victim-a  victim-b          one routed segment "lan", 10.1.0.0/24, router 10.1.0.1
         \\       |       /
          `--- vswitch ---' --- uplink --- outside (198.18.0.1; the router is 198.18.0.2, masquerading)

`vswitch up --segment lan=P-att,P-va,P-vb --uplink P-out` (P: the run's prefix, `vfl` + 6 hex). The
victims: `iperf3 -c 198.18.0.1` from victim-a (one TCP stream through NAT, established before the
flood and running through it) and `ping -i 0.1 198.18.0.1` from victim-b (ICMP through NAT). Their
throughput is victim-a's eth0 tx bytes over a window (what it got to send: TCP sends only what the
path takes), the RTTs ping's, in a window before the flood (the baseline) and one during it.

The floods (FLOODS), each sent by the load generator (load.py) from the attacker's namespace, paced
at Plan.pps and bounded by count and seconds:
- random-macs: random source and destination MACs (65,536 of each): the FDB fills to its bound, the
  unknown destinations are flooded to every port of the segment, the victims' included.
- syn: TCP SYNs through NAT from random source ports to port 80 of 198.19.0.0/16 (beyond the outside,
  which does not forward: no answer ever comes): every one a new conntrack flow and NAT mapping.
- udp-ports: UDP through NAT to random ports of the outside (its kernel answers some with ICMP port
  unreachable, rate-limited).
- icmp-echo: echo requests through NAT to the outside, every identifier a flow; the outside answers.
- arp-sweep: ARP requests for every address of 10.1.0.0/16, broadcast to every port.
- fragments: first fragments (MF, offset 0) and later fragments (offset 1480) of UDP datagrams to the
  outside that never complete: NAT's fragment memory and its hold queue fill.
- runts: frames of 6 to 59 bytes (the kernel refuses to send those under 14 bytes: counted as EINVAL).
- oversized: 1518 to 9000-byte IP packets with and without DF (the attacker's MTU raised to 9000):
  "fragmentation needed" answers and fragmenting at the router.

Afterwards: vswitch alive, `vswitch status` answers (and the control socket's answer times during the
flood), drops by reason and events during the flood, table sizes (FDB, ARP, conntrack, NAT fragment
memory, flow cache) and VmRSS/VmHWM at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ...shell.control import ControlError
from ..bench.measure import cpu_seconds
from ..bench.process import checkout_state
from ..bench.report import print_grids
from ..bench.run import Signals, machine_info
from .lab import (
    SINK_IF,
    Lab,
    StressError,
    busy_pct,
    environ_run_dir,
    link_bytes,
    machine_busy,
    rss_kib,
    set_mtu,
)

PREFIX_STEM: Final = "vfl"
OUTSIDE: Final = "198.18.0.1"
BEYOND: Final = "198.19.0.1"  # in the benchmarking /15, past the outside (which does not forward)
LAN: Final = "10.1.0.0/16"  # arp-sweep's targets: the segment's /24 and the rest of its /16
WARMUP: Final = 1.0  # the victims' stream runs this long before the baseline window opens
CONTROL_POLL: Final = 0.5  # during a flood, the control socket is asked this often
OVERSIZED_MTU: Final = 9000
Say = Callable[[str], None]


@dataclass(frozen=True)
class Flood:
    kind: str  # load.py's frame kind
    what: str  # one line for the report
    dst_ip: str = OUTSIDE
    to_router: bool = True  # dst MAC: the router's (else the frames carry their own)
    attacker_mtu: int | None = None


FLOODS: Final[dict[str, Flood]] = {
    f.kind: f
    for f in (
        Flood("random-macs", "random source + destination MACs", to_router=False),
        Flood("syn", "TCP SYNs through NAT, random source ports, to a /16 that never answers", BEYOND),
        Flood("udp-ports", "UDP through NAT to random ports of the outside"),
        Flood("icmp-echo", "ICMP echo through NAT, a new identifier each"),
        Flood("arp-sweep", f"ARP requests for every address of {LAN}", to_router=False),
        Flood("fragments", "UDP fragments through NAT that never complete"),
        Flood("runts", "frames of 6-59 bytes"),
        Flood("oversized", "1518-9000-byte packets, DF and not", attacker_mtu=OVERSIZED_MTU),
    )
}


@dataclass(frozen=True)
class Plan:
    baseline: float = 5.0  # seconds of the victims alone
    flood: float = 5.0  # seconds of flood (the sender's time bound)
    pps: int = 200_000  # the sender's pace (0: as fast as it can)
    ping_interval: float = 0.1
    kinds: tuple[str, ...] = tuple(FLOODS)

    @property
    def count(self) -> int:
        """The sender's count bound: the planned frames and a tenth more (time is the bound that acts)."""
        return math.ceil(self.pps * self.flood * 1.1) if self.pps else 50_000_000


QUICK: Final = Plan(baseline=2.0, flood=2.0)


def topology(lab: Lab) -> list[str]:
    return ["--segment", f"lan={lab.ns('att')},{lab.ns('va')},{lab.ns('vb')}", "--uplink", lab.ns("out")]


def router_mac(lab: Lab) -> str:
    for segment in lab.ask("status")["segments"]:
        if segment["name"] == "lan" and segment.get("router_mac"):
            return str(segment["router_mac"])
    raise StressError("vswitch reports no router MAC on segment lan")


def ratio(during: float | None, before: float | None) -> float | None:
    if during is None or not before:
        return None
    return round(during / before, 3)


def counter_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    delta = Counter(after)
    delta.subtract(before)
    return {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v}


def tables(stats: dict[str, Any]) -> dict[str, Any]:
    """The table sizes `stats` reports, the FDB summed over segments."""
    found = dict(stats.get("tables", {}))
    fdb = found.pop("fdb", {})
    return {"fdb": sum(fdb.values()) if isinstance(fdb, dict) else fdb, **found}


def run_flood(lab: Lab, flood: Flood, plan: Plan, say: Say) -> dict[str, Any]:
    """One flood on a fresh vswitch (lab not started yet); the row of the report."""
    att, va, vb, out = (lab.ns(t) for t in ("att", "va", "vb", "out"))
    lab.start(topology(lab))
    row: dict[str, Any] = {"kind": flood.kind, "what": flood.what}
    lab.iperf_server(out)
    for namespace in (va, vb, att):
        lab.wait_reachable(namespace, OUTSIDE)
    mac = router_mac(lab)
    if flood.attacker_mtu:
        set_mtu(att, flood.attacker_mtu)
    stream_seconds = math.ceil(WARMUP + plan.baseline + plan.flood + 2)
    stream = lab.iperf_client(va, OUTSIDE, stream_seconds)
    time.sleep(WARMUP)  # measurement window: the stream is past its slow start
    row["rss_start_kib"] = rss_kib(lab.pid)

    # Baseline: the victims alone.
    pinging = lab.ping(vb, OUTSIDE, plan.baseline, plan.ping_interval)
    t0, b0, cpu_b0, machine0 = (
        time.monotonic(),
        link_bytes(va)["tx_bytes"],
        cpu_seconds(lab.pid),
        machine_busy(),
    )
    time.sleep(plan.baseline)
    t1, b1, cpu_b1, machine1 = (
        time.monotonic(),
        link_bytes(va)["tx_bytes"],
        cpu_seconds(lab.pid),
        machine_busy(),
    )
    before_pings = lab.pings(pinging, plan.baseline)

    # The flood.
    stats0 = lab.ask("stats", 5.0)
    att_link0 = link_bytes(att)
    frame_args = {"src_ip": lab.address(att), "dst_ip": flood.dst_ip, "sweep": LAN}
    if flood.to_router:
        frame_args["dst_mac"] = mac
    say(f"{flood.kind}: {plan.pps or 'unpaced'} pps for {plan.flood:g} s")
    sender = lab.sender(att, flood.kind, plan.pps, plan.count, plan.flood, **frame_args)
    # The sender builds its frames first (up to a second or two): the window opens when it sends.
    started = time.monotonic()
    while link_bytes(att)["tx_packets"] - att_link0["tx_packets"] < 100 and sender.poll() is None:
        if time.monotonic() - started > 30:
            raise StressError(f"{flood.kind}: the sender sent nothing within 30 s")
        time.sleep(0.02)
    pinging = lab.ping(vb, OUTSIDE, plan.flood - 0.5, plan.ping_interval)
    cpu0, machine2 = cpu_seconds(lab.pid), machine_busy()
    t2, b2 = time.monotonic(), link_bytes(va)["tx_bytes"]
    answers: list[float] = []
    unanswered: list[str] = []
    window_end = t2 + plan.flood - 0.5  # the sender's time bound ends half a second after at most
    while time.monotonic() < window_end:
        ok, took, why = lab.control_answers()
        answers.append(took) if ok else unanswered.append(why)
        time.sleep(max(0.0, min(CONTROL_POLL, window_end - time.monotonic())))
    t3, b3 = time.monotonic(), link_bytes(va)["tx_bytes"]
    cpu1, machine3 = cpu_seconds(lab.pid), machine_busy()
    during_pings = lab.pings(pinging, plan.flood)
    sent = lab.sender_result(sender, plan.flood)
    att_link1 = link_bytes(att)

    # Afterwards.
    alive = lab.alive()
    cli_ok, cli_took, cli_why = lab.cli_status() if alive else (False, 0.0, "vswitch exited")
    stats1 = lab.ask("stats", 5.0) if alive else {}
    row["rss_end_kib"] = rss_kib(lab.pid) if alive else {}
    stream_result = lab.iperf_result(stream, stream_seconds) if alive else {}
    before_gbps = (b1 - b0) * 8 / (t1 - t0) / 1e9
    during_gbps = (b3 - b2) * 8 / (t3 - t2) / 1e9
    att_port0 = stats0["ports"].get(att, {})
    att_port1 = stats1.get("ports", {}).get(att, {})
    row |= {
        "sender": sent,
        "vswitch_read_pps": round(
            (att_port1.get("rx_packets", 0) - att_port0.get("rx_packets", 0)) / sent["seconds"]
        )
        if sent.get("seconds")
        else None,
        "tap_dropped": att_link1["tx_dropped"] - att_link0["tx_dropped"],  # the tap's queue was full
        "vswitch_cpu_pct": {
            "before": round(100 * (cpu_b1 - cpu_b0) / (t1 - t0), 1),
            "during": round(100 * (cpu1 - cpu0) / (t3 - t2), 1),
        },
        "machine_busy_pct": {"before": busy_pct(machine0, machine1), "during": busy_pct(machine2, machine3)},
        "alive": alive,
        "exit_code": None if alive else lab.proc.returncode if lab.proc else None,
        "control": {
            "polls": len(answers) + len(unanswered),
            "unanswered": len(unanswered),
            "why": sorted(set(unanswered))[:3],
            "max_ms": round(max(answers) * 1000, 1) if answers else None,
            "median_ms": round(sorted(answers)[len(answers) // 2] * 1000, 1) if answers else None,
        },
        "cli_status": {"ok": cli_ok, "seconds": round(cli_took, 2), "why": cli_why},
        "victim_tcp": {
            "before_gbps": round(before_gbps, 3),
            "during_gbps": round(during_gbps, 3),
            "ratio": ratio(during_gbps, before_gbps),
            "retransmits": stream_result.get("end", {}).get("sum_sent", {}).get("retransmits"),
            "iperf3_gbps": round(stream_result["end"]["sum_received"]["bits_per_second"] / 1e9, 3)
            if stream_result
            else None,
        },
        "victim_ping": {"before": before_pings.summary(), "during": during_pings.summary()},
        "drops": counter_delta(stats1.get("drops", {}), stats0.get("drops", {})),
        "events": counter_delta(stats1.get("events", {}), stats0.get("events", {})),
        "router_events": counter_delta(
            stats1.get("router", {}).get("events", {}), stats0.get("router", {}).get("events", {})
        ),
        "tables": tables(stats1) if stats1 else {},
    }
    return row


GENERATOR_SECONDS: Final = 2.0


def generator_rate(run: Run, kind: str = "udp64") -> dict[str, Any]:
    """The load generator unpaced for GENERATOR_SECONDS into one end of a veth pair in a namespace of
    its own (no vswitch): what one sender process reaches on this machine, and its CPU."""
    lab = run.new_lab()
    try:
        namespace = lab.veth_sink("gen")
        sender = lab.sender(namespace, kind, 0, 50_000_000, GENERATOR_SECONDS, ifname=SINK_IF,
                            dst_mac="02:00:00:00:00:01")  # fmt: skip
        result = lab.sender_result(sender, GENERATOR_SECONDS)
    finally:
        run.signals.tearing_down = True
        try:
            run.doc["errors"].extend(f"generator: clean-up: {p}" for p in lab.close())
        finally:
            run.signals.tearing_down = False
    return {
        "kind": kind,
        "pps": round(result["pps"]),
        "cpu_pct": round(100 * result["cpu_seconds"] / result["seconds"], 1),
        "errors": result["errors"],
        "seconds": round(result["seconds"], 2),
    }


# --- the report ------------------------------------------------------------------------------------
def _kpps(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1000:.0f}k"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _top(counts: dict[str, int], n: int = 3) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in list(counts.items())[:n]) or "none"


ROUTINE_EVENTS: Final = frozenset({"flow-cache-hits", "flow-cache-misses"})


def notable_events(row: dict[str, Any]) -> dict[str, int]:
    """The flood's events, datapath's and router's, but the flow cache's hits and misses, largest first."""
    merged = Counter(row.get("events", {})) + Counter(row.get("router_events", {}))
    return {k: v for k, v in merged.most_common() if k not in ROUTINE_EVENTS}


def flood_grid(doc: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    plan = doc["plan"]
    title = (f"Floods at {plan['pps']:,} pps for {plan['flood']:g} s (victims: TCP through NAT, ping every "
             f"{plan['ping_interval']:g} s; baseline {plan['baseline']:g} s)")  # fmt: skip
    header = ["flood", "sent", "vswitch read", "alive, ctl max", "victim TCP Gbit/s before > during",
              "ping median ms", "ping p99 ms", "ping loss", "top drops", "top events", "tables at the end",
              "RSS MiB (peak)"]  # fmt: skip
    rows = []
    for row in doc["floods"]:
        if "error" in row:
            rows.append([row["kind"], "error: " + row["error"], *[""] * (len(header) - 2)])
            continue
        tcp, ping, ctl = row["victim_tcp"], row["victim_ping"], row["control"]
        alive = "yes" if row["alive"] else f"NO (exit {row['exit_code']})"
        ctl_text = f"{ctl['max_ms']} ms" if ctl["max_ms"] is not None else "none"
        if ctl["unanswered"]:
            ctl_text += f", {ctl['unanswered']}/{ctl['polls']} unanswered"
        t = row["tables"]
        frag = t.get("nat_fragments", "?")
        tables_text = (
            f"fdb {t.get('fdb', '?')}, arp {t.get('arp', '?')}, ct {t.get('conntrack', '?')}, frag {frag}"
        )
        rss = row.get("rss_end_kib", {})
        rows.append([
            row["kind"],
            f"{_kpps(row['sender']['pps'])}pps",
            f"{_kpps(row['vswitch_read_pps'])}pps",
            f"{alive}, {ctl_text}",
            f"{tcp['before_gbps']:.2f} > {tcp['during_gbps']:.2f} (x{tcp['ratio']})",
            f"{_ms(ping['before']['median_ms'])} > {_ms(ping['during']['median_ms'])}",
            f"{_ms(ping['before']['p99_ms'])} > {_ms(ping['during']['p99_ms'])}",
            f"{ping['during']['loss_pct']}%",
            _top(row["drops"]),
            _top(notable_events(row)),
            tables_text,
            f"{rss.get('VmRSS', 0) / 1024:.0f} ({rss.get('VmHWM', 0) / 1024:.0f})",
        ])  # fmt: skip
    gen = doc.get("generator")
    if gen:
        title += (f"; the sender alone, unpaced: {gen['pps']:,} pps of 64-byte frames into a veth at "
                  f"{gen['cpu_pct']}% of a core")  # fmt: skip
    return title, header, rows


def headline(doc: dict[str, Any]) -> str:
    m, c = doc["machine"], doc["checkout"]
    dirty = " + uncommitted changes in vswitch/" if c.get("vswitch_uncommitted") else ""
    load = "/".join(f"{x:.2f}" for x in m["loadavg_start"])
    return (f"{doc['command']}, {m['date']}: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, "
            f"Python {m['python']}; vswitch {m['vswitch']} at {c.get('commit')}{dirty}; load average at the "
            f"start {load}")  # fmt: skip


def write_chart(doc: dict[str, Any], path: Path) -> None:
    """Victim TCP before and during each flood; ping p99 before and during."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["floods"] if "error" not in r]
    if not rows:
        return
    names = [r["kind"] for r in rows]
    xs = range(len(rows))
    fig, (tcp_ax, ping_ax) = plt.subplots(2, 1, figsize=(10, 7.5))
    width = 0.38
    before = [r["victim_tcp"]["before_gbps"] for r in rows]
    during = [r["victim_tcp"]["during_gbps"] for r in rows]
    tcp_ax.bar([x - width / 2 for x in xs], before, width, label="before the flood", color="#8da0cb")
    tcp_ax.bar([x + width / 2 for x in xs], during, width, label="during the flood", color="#fc8d62")
    tcp_ax.set_ylabel("victim TCP through NAT, Gbit/s")
    tcp_ax.set_xticks(list(xs), names)
    tcp_ax.legend()
    plan = doc["plan"]
    tcp_ax.set_title(
        f"vswitch under floods of {plan['pps']:,} pps, {plan['flood']:g} s each ({doc['machine']['date']})"
    )
    p_before = [r["victim_ping"]["before"]["p99_ms"] or 0 for r in rows]
    p_during = [r["victim_ping"]["during"]["p99_ms"] or 0 for r in rows]
    ping_ax.bar([x - width / 2 for x in xs], p_before, width, label="before", color="#8da0cb")
    ping_ax.bar([x + width / 2 for x in xs], p_during, width, label="during", color="#fc8d62")
    ping_ax.set_ylabel("victim ping RTT p99, ms")
    ping_ax.set_xticks(list(xs), names)
    ping_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ---------------------------------------------------------------------------------------
def preflight() -> None:
    if os.geteuid() != 0:
        raise StressError("needs root (namespaces, taps, raw sockets)")
    missing = [p for p in ("ip", "ping", "iperf3") if shutil.which(p) is None]
    if missing:
        raise StressError(f"missing program(s): {', '.join(missing)}")


@dataclass
class Run:
    """What main() of a stress script shares: its prefix, work directory, JSON document and voice."""

    name: str  # "floods", "noisy": the file names
    argv: list[str]
    out_dir: Path
    checkout: Path
    prefix: str = field(default_factory=lambda: f"{PREFIX_STEM}{secrets.token_hex(3)}")
    work: Path = field(init=False)
    doc: dict[str, Any] = field(init=False)
    labs: int = 0
    signals: Signals = field(default_factory=Signals)  # Ctrl-C unwinds a step; none lands in a clean-up

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        environ_run_dir(self.work)
        self.doc = {
            "schema": 1,
            "command": " ".join([f"bench/stress/{self.name}.py", *self.argv]),
            "prefix": self.prefix,
            "machine": {**machine_info(), "loadavg_start": os.getloadavg()},
            "checkout": checkout_state(self.checkout),
            "errors": [],
        }
        from rich.console import Console

        self.console = Console(stderr=True)

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}", highlight=False)

    def new_lab(self) -> Lab:
        self.labs += 1
        return Lab(self.prefix, f"{self.prefix}{self.labs}", self.work)

    def finish(
        self,
        grids: list[tuple[str, list[str], list[list[str]]]],
        chart: Callable[[dict[str, Any], Path], None],
    ) -> tuple[Path, Path]:
        shutil.rmtree(self.work, ignore_errors=True)
        self.doc["machine"]["loadavg_end"] = os.getloadavg()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        json_path = self.out_dir / f"stress-{self.name}-{stamp}.json"
        png_path = json_path.with_suffix(".png")
        json_path.write_text(json.dumps(self.doc, indent=1) + "\n")
        print_grids(headline(self.doc), grids, self.doc["errors"])
        try:
            chart(self.doc, png_path)
        except Exception as exc:  # the figures are in the JSON already; the picture is not worth a failure
            self.doc["errors"].append(f"chart: {type(exc).__name__}: {exc}")
            json_path.write_text(json.dumps(self.doc, indent=1) + "\n")
        print(f"results: {json_path}" + (f", {png_path}" if png_path.exists() else ""))
        return json_path, png_path


def guarded(run: Run, what: str, step: Callable[[Lab], dict[str, Any]]) -> dict[str, Any]:
    """step on a fresh lab, always closed; an error becomes the row's "error" and one of the run's."""
    lab = run.new_lab()
    started = time.monotonic()
    try:
        row = step(lab)
    except (StressError, ControlError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
        row = {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, StressError) else str(exc)}
        run.doc["errors"].append(f"{what}: {row['error']}")
        if not isinstance(exc, StressError | ControlError):
            traceback.print_exc()
    finally:
        run.signals.tearing_down = True
        try:
            problems = lab.close()
        finally:
            run.signals.tearing_down = False
        run.doc["errors"].extend(f"{what}: clean-up: {p}" for p in problems)
    row["elapsed_s"] = round(time.monotonic() - started, 1)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/stress/floods.py",
        description="Floods against vswitch while victims on other ports keep a TCP stream and a ping",
    )
    parser.add_argument("--quick", action="store_true", help="2 s windows instead of 5: a smoke run")
    parser.add_argument("--only", metavar="LIST", help=f"a comma-separated subset of {','.join(FLOODS)}")
    parser.add_argument("--pps", type=int, help=f"the floods' pace (default {Plan.pps:,}; 0: unpaced)")
    parser.add_argument("--seconds", type=float, help="the baseline's and each flood's length")
    parser.add_argument("--out", metavar="DIR", help="where the JSON and PNG go (default: bench/results)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()] if args.only else list(FLOODS)
    if not kinds or any(k not in FLOODS for k in kinds):
        parser.error(f"--only: choose from {','.join(FLOODS)}")
    args.kinds = tuple(kinds)
    if args.pps is not None and not 0 <= args.pps <= 2_000_000:
        parser.error("--pps: 0 to 2,000,000")
    if args.seconds is not None and not 1 <= args.seconds <= 60:
        parser.error("--seconds: 1 to 60")
    return args


def main(argv: list[str] | None = None, checkout: Path | None = None) -> int:
    args = parse_args(argv)
    try:
        preflight()
    except StressError as exc:
        print(f"stress floods: {exc}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, kinds=args.kinds)
    if args.pps is not None:
        plan = replace(plan, pps=args.pps)
    if args.seconds is not None:
        plan = replace(plan, baseline=args.seconds, flood=args.seconds)
    checkout = checkout or Path.cwd()
    out_dir = Path(args.out) if args.out else checkout / "bench" / "results"
    run = Run("floods", sys.argv[1:] if argv is None else argv, out_dir, checkout)
    run.doc["plan"] = asdict(plan)
    run.doc["floods"] = []
    run.signals.install()
    try:
        run.say(f"the load generator alone: unpaced 64-byte frames into a veth for {GENERATOR_SECONDS:g} s")
        try:
            run.doc["generator"] = generator_rate(run)
        except (StressError, subprocess.TimeoutExpired, OSError) as exc:
            run.doc["errors"].append(f"generator: {exc}")
        for kind in plan.kinds:
            flood = FLOODS[kind]
            run.say(f"{kind}: {flood.what}; building vswitch ({run.prefix}-att, -va, -vb, -out)")
            row = guarded(run, kind, lambda lab, flood=flood: run_flood(lab, flood, plan, run.say))  # type: ignore[misc]
            run.doc["floods"].append({"kind": kind, **row})
    except KeyboardInterrupt:
        print("stress floods: interrupted; removed everything it built", file=sys.stderr)
        shutil.rmtree(run.work, ignore_errors=True)
        return 130
    finally:
        run.signals.restore()
    run.finish([flood_grid(run.doc)], write_chart)
    return 1 if run.doc["errors"] else 0
