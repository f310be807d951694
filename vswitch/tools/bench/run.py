"""One bench run: build every contender, measure them in interleaved rounds, tear everything down.

Rounds interleave (round 1: A B C D, round 2: A B C D, ...) so slow drifts of the machine (thermal,
page cache, a neighbour's load) spread over all contenders instead of favouring whoever ran first;
each figure is the median over the rounds. Everything built is torn down in `finally`, on success,
on an error and on Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from ... import __version__
from . import measure, report
from .measure import FAMILY_FIGURES, FIGURES, FLOOR_FIGURES, IperfServer, Plan
from .topologies import (
    BASELINE,
    CONTENDERS,
    DESCRIPTIONS,
    FLOOR,
    IPV4_COUNTERPART,
    IPV6_CONTENDERS,
    NOT_AGAINST_FLOOR,
    BenchError,
    Contender,
    Skipped,
    available_optional,
    cleanup_all,
    optional_notes,
)

TUN_PATH = "/dev/net/tun"
DEFAULT_CONGESTION = "/proc/sys/net/ipv4/tcp_congestion_control"
AVAILABLE_CONGESTION = "/proc/sys/net/ipv4/tcp_available_congestion_control"


def default_out_dir() -> Path:
    """bench/results of the checkout vswitch runs from, else of the current directory."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and (checkout / "bench").is_dir():
        return checkout / "bench" / "results"
    return Path("bench") / "results"


def choose(args: argparse.Namespace) -> tuple[Plan, int, str]:
    if args.tiny:
        plan, rounds, mode = measure.TINY_PLAN, 1, "tiny"
    elif args.quick:
        plan, rounds, mode = measure.QUICK_PLAN, 1, "quick"
    else:
        plan, rounds, mode = measure.DEFAULT_PLAN, 3, "default"
    if args.congestion is not None:
        plan = dataclasses.replace(plan, congestion=args.congestion)
    return plan, args.rounds or rounds, mode


def check_congestion(name: str | None) -> None:
    """The kernel must offer the algorithm (iperf3 would fail each TCP load, one by one)."""
    if name is None:
        return
    try:
        offered = Path(AVAILABLE_CONGESTION).read_text().split()
    except OSError:
        return  # no list to check against: iperf3 says so if it is wrong
    if name not in offered:
        raise BenchError(
            f"TCP congestion control {name!r} is not available here: choose from {', '.join(offered)}"
        )


def parse_contenders(text: str | None, ipv6: bool = False) -> list[str]:
    """The contenders to measure, in order: those named (default: every IPv4 one this machine can
    run), then, with ipv6 (--ipv6), the router's IPv6 ones not named already."""
    default = [*CONTENDERS, *available_optional()]
    known = [*default, *IPV6_CONTENDERS]
    names = [n.strip() for n in text.split(",") if n.strip()] if text else default
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise BenchError(
            f"unknown contender(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(known)}"
        )
    if ipv6:
        names = [*names, *IPV6_CONTENDERS]
    return list(dict.fromkeys(names))


# Kernel contenders that configure their router with commands netlink does not cover.
ROUTER_COMMANDS: dict[str, list[str]] = {
    "kernel-nat": ["nft", "sysctl"],
    "kernel-nat6": ["nft", "sysctl"],
    "kernel-routed6": ["sysctl"],
}


def preflight(names: list[str]) -> None:
    if os.geteuid() != 0:
        raise BenchError("vswitch bench needs root (namespaces, veths, taps)")
    needed = ["iperf3", "ping", "ip"]
    needed += [p for n in names for p in ROUTER_COMMANDS.get(n, []) if p not in needed]
    missing = [p for p in needed if shutil.which(p) is None]
    if missing:
        raise BenchError(f"missing program(s): {', '.join(missing)}")
    if any(n.startswith("vswitch") for n in names) and not os.path.exists(TUN_PATH):
        raise BenchError(f"{TUN_PATH} is missing: load the tun module (modprobe tun)")


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=5)
        iperf_version = iperf.stdout.splitlines()[0].strip() if iperf.stdout else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        iperf_version = "unknown"
    try:  # bulk TCP figures depend on it (BBR paces, CUBIC fills queues): it is part of the setting
        congestion = Path(DEFAULT_CONGESTION).read_text().strip()
    except OSError:
        congestion = "unknown"
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "vswitch": __version__,
        "iperf3": iperf_version,
        "tcp_congestion_control": congestion,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Signals:
    """SIGINT/SIGTERM unwind the bench through its clean-up, then are ignored until it is done.

    A handler, not SIG_IGN or a blocked mask: pyroute2 forks short-lived helpers (netns sockets) and
    stops them with SIGTERM, and a helper inherits both. In a helper the handler dies as the default
    action would, so it never runs our clean-up and never outlives its parent's wait.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.tearing_down = False
        self.old: dict[int, Any] = {}

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            os._exit(128 + signum)
        if not self.tearing_down:
            raise KeyboardInterrupt(f"signal {signum}")

    def install(self) -> None:
        self.old = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    try:
        names = parse_contenders(args.contenders, getattr(args, "ipv6", False))
        check_congestion(args.congestion)
        preflight(names)
    except BenchError as exc:
        print(f"vswitch: error: {exc}", file=sys.stderr)
        return 2
    plan, rounds, mode = choose(args)
    out_dir = Path(args.out) if args.out else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"vsb{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    doc: dict[str, Any] = {
        "schema": 1,
        "mode": mode,
        "rounds": rounds,
        "plan": plan.__dict__,
        "prefix": prefix,
        "machine": machine_info(),
        "contenders": {},
        "skipped": optional_notes(),
        "errors": [],
        "figures": {k: {"label": v[0], "unit": v[1], "higher_is_better": v[2]} for k, v in FIGURES.items()},
        "samples": {},
        "results": {},
        "ratios": {},
    }
    contenders: list[Contender] = []
    servers: list[IperfServer] = []
    signals = Signals()
    signals.install()
    interrupted = False
    started = time.monotonic()
    try:
        with report.Display(names, rounds, plan) as display:
            measured: list[Contender] = []
            for name in names:
                display.status(f"building {name}")
                contender = Contender(name, prefix, DESCRIPTIONS[name], run_dir=work / "run")
                contenders.append(contender)  # before build(): a half-built one is torn down too
                try:
                    contender.build()
                    server = IperfServer(contender, work)
                    servers.append(server)
                    server.start()
                    measure.wait_reachable(contender)
                except Skipped as exc:  # not there by design (a mode vswitch refuses): not an error
                    doc["skipped"][name] = f"{exc}; skipped"
                    display.note(f"{name}: {doc['skipped'][name]}")
                    display.advance(rounds * len(plan.steps()))
                    continue
                except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                    doc["errors"].append(f"{name} not measured: {exc}")
                    display.advance(rounds * len(plan.steps()))
                    continue
                measured.append(contender)
                doc["contenders"][name] = {
                    "kind": contender.kind,
                    "family": contender.family,
                    "server": contender.server_ip,  # what the loads are sent to
                    "description": contender.description,
                    "instance": contender.instance,
                    "pid": contender.pid,
                    "pids": contender.pids,  # the processes CPU per packet is charged to
                    "iperf3_pid": server.proc.pid if server.proc is not None else None,
                    "namespaces": list(contender.namespaces),
                }
            for r in range(1, rounds + 1):
                for contender in measured:
                    figures: dict[str, float | None] = {}
                    for step, label in plan.steps():
                        display.status(f"round {r}/{rounds}  {contender.name}: {label}")
                        try:
                            measure.run_step(contender, step, plan, figures)
                        except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                            doc["errors"].append(f"round {r} {contender.name} {step}: {exc}")
                        display.advance()
                    doc["samples"].setdefault(contender.name, []).append({"round": r, **figures})
                    display.done(r, contender.name, figures)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signals.tearing_down = True
        for server in servers:
            server.stop()
        problems = cleanup_all(contenders, prefix)
        shutil.rmtree(work, ignore_errors=True)
        signals.restore()
    doc["errors"].extend(f"clean-up: {p}" for p in problems)
    if interrupted:
        print("vswitch bench: interrupted; removed everything it built", file=sys.stderr)
        return 130
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    summarise(doc)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"bench-{stamp}.json"
    png_path = out_dir / f"bench-{stamp}.png"
    doc["files"] = {"json": str(json_path), "png": str(png_path)}
    report.print_table(doc)
    report.write_chart(doc, png_path)
    report.write_json(doc, json_path)
    for error in doc["errors"]:
        print(f"vswitch bench: {error}", file=sys.stderr)
    print(f"results: {json_path}\nchart:   {png_path}")
    return 1 if doc["errors"] else 0


def summarise(doc: dict[str, Any]) -> None:
    """Medians per contender and figure, then ratios of medians: each switch to its kernel
    counterpart (every figure), each vswitch contender whose IO the floor is (all but
    NOT_AGAINST_FLOOR) to python-floor (FLOOR_FIGURES), and each IPv6 router to the same router in
    IPv4 (FAMILY_FIGURES)."""
    for name, samples in doc["samples"].items():
        keys = [*FIGURES, "offered50k_pps"]
        doc["results"][name] = {k: measure.median([s.get(k) for s in samples]) for k in keys}
    results = doc["results"]
    pairs = [(ours, theirs, list(FIGURES)) for ours, theirs in BASELINE.items()]
    held = [name for name in results if name.startswith("vswitch") and name not in NOT_AGAINST_FLOOR]
    pairs += [(name, FLOOR, list(FLOOR_FIGURES)) for name in held]
    pairs += [(six, four, list(FAMILY_FIGURES)) for six, four in IPV4_COUNTERPART.items()]
    for ours, theirs, keys in pairs:
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            doc["ratios"][f"{ours} / {theirs}"] = {
                k: (a[k] / b[k] if a.get(k) is not None and b.get(k) else None) for k in keys
            }
