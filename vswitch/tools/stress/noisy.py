"""Noisy neighbour (issue 22): one port sends a fixed overload of 64-byte frames to another while two
other ports run a TCP stream; the victims must keep at least half their unloaded throughput.

    noisy  sink  victim-a  victim-b        one L2 segment, `vswitch up --ports P-noisy,P-sink,P-va,P-vb`
       \\     |      |       /              (10.0.0.1 .. 10.0.0.4)
        `------ vswitch -----'

1. Calibration: the load generator, unpaced, noisy -> sink for a few seconds, alone: what vswitch
   forwards (the sink's rx packets per second) and what the sender reaches.
2. The overload: Plan.overload times the forwarding rate (default 1.5x: more than vswitch forwards),
   paced, provided the sender held that rate unpaced (else its own unpaced rate, which the report
   then names as a shortfall). The sender is one process on one core.
3. Rounds, interleaved: `iperf3 -c victim-b -t T` from victim-a with no noise (unloaded), then with
   the overload running from before the stream starts to after it ends (loaded). The receiver's bits
   per second; medians over the rounds; the ratio loaded / unloaded, held to >= 0.5. And a control in
   each round: the same sender at the same pace into a veth of its own namespace, which vswitch never
   sees; what the victims lose there is the sender's CPU, the rest is vswitch's handling of the noise.

What keeps the victims going is the shell's per-port batch budget (shell/loop.py, BATCH frames per
reader callback): the noisy port's reader takes at most one batch per turn of the event loop, the
victims' readers theirs, and the excess waits in the noisy tap's queue until the kernel drops it
(counted as the noisy side's tx_dropped).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from ..bench.measure import cpu_seconds
from .floods import Run, guarded, preflight
from .lab import SINK_IF, Lab, StressError, link_bytes

TARGET_RATIO: Final = 0.5  # the bar: the victims keep at least half their unloaded throughput
CONTROL_KEYS: Final = ("victim_gbps", "noise_offered_pps", "noise_sender_cpu_pct")


@dataclass(frozen=True)
class Plan:
    calibrate: float = 3.0  # seconds of unpaced noise alone
    seconds: int = 5  # each TCP run
    rounds: int = 3
    overload: float = 1.5  # the noise's pace over vswitch's calibrated forwarding rate
    pps: int | None = None  # a fixed pace instead (overrides overload)


QUICK: Final = Plan(calibrate=2.0, seconds=2, rounds=1)


def topology(lab: Lab) -> list[str]:
    return ["--ports", ",".join(lab.ns(t) for t in ("noisy", "sink", "va", "vb"))]


def noise(lab: Lab, pps: float, seconds: float, aside: str | None = None) -> Any:
    """The sender noisy -> sink (64-byte UDP frames to the sink's MAC and address), bounded; with
    aside (a lab.veth_sink namespace), the same frames into that veth instead: vswitch never sees them."""
    noisy, sink = lab.ns("noisy"), lab.ns("sink")
    count = int(pps * seconds * 1.1) if pps else 100_000_000
    where = {"ifname": SINK_IF} if aside else {}
    return lab.sender(aside or noisy, "udp64", pps, count, seconds, src_ip=lab.address(noisy),
                      dst_ip=lab.address(sink), dst_mac=str(lab.port(sink)["mac"]), **where)  # fmt: skip


def calibrate(lab: Lab, seconds: float) -> dict[str, Any]:
    """Unpaced noise alone: the sender's rate and what vswitch forwarded of it (the sink's rx)."""
    sink = lab.ns("sink")
    before, started, cpu0 = link_bytes(sink), time.monotonic(), cpu_seconds(lab.pid)
    sent = lab.sender_result(noise(lab, 0, seconds), seconds)
    after, took, cpu1 = link_bytes(sink), time.monotonic() - started, cpu_seconds(lab.pid)
    forwarded = (after["rx_packets"] - before["rx_packets"]) / sent["seconds"]
    return {
        # What the sender can offer: its attempts (the tap refuses with ENOBUFS what vswitch has not
        # taken yet), and what the tap took.
        "sender_pps": round(sent["attempted"] / sent["seconds"]),
        "accepted_pps": round(sent["pps"]),
        "sender_cpu_pct": round(100 * sent["cpu_seconds"] / sent["seconds"], 1),
        "forwarded_pps": round(forwarded),
        "vswitch_cpu_pct": round(100 * (cpu1 - cpu0) / took, 1),
    }


def tcp_run(lab: Lab, seconds: int) -> float:
    """One TCP stream victim-a -> victim-b; the receiver's Gbit/s."""
    proc = lab.iperf_client(lab.ns("va"), lab.address(lab.ns("vb")), seconds)
    result = lab.iperf_result(proc, seconds)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def loaded_run(lab: Lab, pps: float, seconds: int, aside: str | None = None) -> dict[str, Any]:
    """The stream with the overload running from half a second before it to after it (with aside: the
    sender into a veth of its own, the control: what the sender alone costs the victims)."""
    noisy, sink = aside or lab.ns("noisy"), lab.ns("sink")
    ifname = SINK_IF if aside else "eth0"
    sink0, noisy0 = link_bytes(sink), link_bytes(noisy, ifname)
    cpu0, started = cpu_seconds(lab.pid), time.monotonic()
    sender = noise(lab, pps, seconds + 2.0, aside)
    while link_bytes(noisy, ifname)["tx_packets"] - noisy0["tx_packets"] < 1000 and sender.poll() is None:
        if time.monotonic() - started > 30:
            raise StressError("the noisy sender sent nothing within 30 s")
        time.sleep(0.02)
    time.sleep(0.5)  # measurement window: the overload is at its pace before the victims start
    gbps = tcp_run(lab, seconds)
    sent = lab.sender_result(sender, seconds + 2.0)
    took = time.monotonic() - started
    sink1, noisy1 = link_bytes(sink), link_bytes(noisy, ifname)
    return {
        "victim_gbps": round(gbps, 3),
        "noise_offered_pps": round(sent["attempted"] / sent["seconds"]),
        "noise_accepted_pps": round(sent["pps"]),
        "noise_sender_cpu_pct": round(100 * sent["cpu_seconds"] / sent["seconds"], 1),
        "noise_forwarded_pps": round((sink1["rx_packets"] - sink0["rx_packets"]) / sent["seconds"]),
        "noise_dropped_at_tap": noisy1["tx_dropped"] - noisy0["tx_dropped"],
        "noise_errors": sent["errors"],
        "vswitch_cpu_pct": round(100 * (cpu_seconds(lab.pid) - cpu0) / took, 1),
    }


def run_noisy(lab: Lab, plan: Plan, say: Any) -> dict[str, Any]:
    noisy, sink, va, vb = (lab.ns(t) for t in ("noisy", "sink", "va", "vb"))
    lab.start(topology(lab))
    lab.iperf_server(vb)
    lab.wait_reachable(va, lab.address(vb))
    lab.wait_reachable(noisy, lab.address(sink))  # the sink's MAC is learned: the noise is unicast
    say(f"calibrating: unpaced 64-byte UDP {noisy} -> {sink} for {plan.calibrate:g} s")
    cal = calibrate(lab, plan.calibrate)
    wanted = plan.pps or round(cal["forwarded_pps"] * plan.overload, -3)
    pps = min(wanted, cal["sender_pps"]) if not plan.pps else wanted
    row: dict[str, Any] = {"calibration": cal, "wanted_pps": wanted, "noise_pps": pps, "rounds": []}
    if pps <= cal["forwarded_pps"]:
        row["note"] = (f"the sender reached {cal['sender_pps']:,} pps unpaced, not more than vswitch "
                       f"forwards ({cal['forwarded_pps']:,}): the noise is no overload")  # fmt: skip
    aside = lab.veth_sink("aside")
    for n in range(1, plan.rounds + 1):
        say(
            f"round {n}/{plan.rounds}: TCP {va} -> {vb} {plan.seconds} s unloaded, then with "
            f"{pps:,.0f} pps of noise"
        )
        unloaded = tcp_run(lab, plan.seconds)
        loaded = loaded_run(lab, pps, plan.seconds)
        control = loaded_run(lab, pps, plan.seconds, aside)
        row["rounds"].append({"unloaded_gbps": round(unloaded, 3), **loaded,
                              "sender_aside": {k: control[k] for k in CONTROL_KEYS}})  # fmt: skip
    unloaded_med = statistics.median(r["unloaded_gbps"] for r in row["rounds"])
    loaded_med = statistics.median(r["victim_gbps"] for r in row["rounds"])
    aside_med = statistics.median(r["sender_aside"]["victim_gbps"] for r in row["rounds"])
    row["unloaded_gbps"] = round(unloaded_med, 3)
    row["loaded_gbps"] = round(loaded_med, 3)
    row["sender_aside_gbps"] = round(aside_med, 3)
    row["ratio"] = round(loaded_med / unloaded_med, 3) if unloaded_med else None
    # The share of the victims' loss that is the sender's own CPU, not vswitch's handling of the noise.
    row["ratio_sender_aside"] = round(aside_med / unloaded_med, 3) if unloaded_med else None
    row["target_ratio"] = TARGET_RATIO
    row["meets_target"] = row["ratio"] is not None and row["ratio"] >= TARGET_RATIO
    row["alive"] = lab.alive()
    row["cli_status"] = dict(zip(("ok", "seconds", "why"), lab.cli_status(), strict=True))
    return row


def grid(doc: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    row = doc["noisy"]
    title = "Noisy neighbour: 64-byte UDP overload from one port, TCP between two others (L2 segment)"
    header = ["figure", "value"]
    if "error" in row:
        return title, header, [["error", row["error"]]]
    cal = row["calibration"]
    last = row["rounds"][-1]
    rows = [
        ["vswitch forwards, 64-byte, noise alone (unpaced sender)",
         f"{cal['forwarded_pps']:,} pps (sender offered {cal['sender_pps']:,} pps at "
         f"{cal['sender_cpu_pct']}% of a core)"],
        ["noise offered (paced)", f"{row['noise_pps']:,.0f} pps; offered {last['noise_offered_pps']:,} pps "
         f"at {last['noise_sender_cpu_pct']}% of a core, forwarded {last['noise_forwarded_pps']:,} pps"],
        ["victims' TCP unloaded (median)", f"{row['unloaded_gbps']:.2f} Gbit/s"],
        ["victims' TCP with the noise (median)", f"{row['loaded_gbps']:.2f} Gbit/s"],
        ["ratio (target >= 0.5)", f"{row['ratio']} ({'met' if row['meets_target'] else 'NOT met'})"],
        ["control: the same sender into a veth of its own (vswitch never sees the noise)",
         f"{row['sender_aside_gbps']:.2f} Gbit/s, ratio {row['ratio_sender_aside']}"],
        ["rounds: unloaded / loaded / control, Gbit/s", ", ".join(
            f"{r['unloaded_gbps']:.2f} / {r['victim_gbps']:.2f} / {r['sender_aside']['victim_gbps']:.2f}"
            for r in row["rounds"])],
        ["vswitch alive, status answers", f"{row['alive']}, {row['cli_status']['ok']}"],
    ]  # fmt: skip
    if row.get("note"):
        rows.append(["note", row["note"]])
    return title, header, rows


def write_chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = doc["noisy"]
    if "error" in row:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = [
        "unloaded",
        f"{row['noise_pps'] / 1000:.0f} kpps of noise\nthrough vswitch",
        "the same sender\ninto a veth (control)",
    ]
    ax.bar(labels, [row["unloaded_gbps"], row["loaded_gbps"], row["sender_aside_gbps"]],
           color=["#8da0cb", "#fc8d62", "#a6d854"])  # fmt: skip
    ax.axhline(row["unloaded_gbps"] * TARGET_RATIO, color="grey", linestyle="--", label="half of unloaded")
    ax.set_ylabel("victims' TCP, Gbit/s (median)")
    ax.set_title(f"Noisy neighbour: ratio {row['ratio']} ({doc['machine']['date']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/stress/noisy.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="one round of 2 s: a smoke run")
    parser.add_argument("--pps", type=int, help="a fixed pace for the noise (default: 1.5x vswitch's rate)")
    parser.add_argument("--rounds", type=int, help="unloaded/loaded rounds (default 3)")
    parser.add_argument("--out", metavar="DIR", help="where the JSON and PNG go (default: bench/results)")
    args = parser.parse_args(argv)
    if args.pps is not None and not 1000 <= args.pps <= 2_000_000:
        parser.error("--pps: 1000 to 2,000,000")
    if args.rounds is not None and not 1 <= args.rounds <= 20:
        parser.error("--rounds: 1 to 20")
    return args


def main(argv: list[str] | None = None, checkout: Path | None = None) -> int:
    args = parse_args(argv)
    try:
        preflight()
    except StressError as exc:
        print(f"stress noisy: {exc}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else Plan()
    plan = replace(plan, pps=args.pps, rounds=args.rounds or plan.rounds)
    checkout = checkout or Path.cwd()
    out_dir = Path(args.out) if args.out else checkout / "bench" / "results"
    run = Run("noisy", sys.argv[1:] if argv is None else argv, out_dir, checkout)
    run.doc["plan"] = asdict(plan)
    run.signals.install()
    try:
        run.say(f"building vswitch up --ports {run.prefix}-noisy,-sink,-va,-vb")
        run.doc["noisy"] = guarded(run, "noisy", lambda lab: run_noisy(lab, plan, run.say))
    except KeyboardInterrupt:
        print("stress noisy: interrupted; removed everything it built", file=sys.stderr)
        return 130
    finally:
        run.signals.restore()
    run.finish([grid(run.doc)], write_chart)
    if run.doc["errors"]:
        return 1
    return 0
