"""The soak (issue 22): `make soak`, or `.venv/bin/python bench/stress/soak.py [--minutes M]`.

TCP bulk, 64-byte UDP with sequence numbers, pings, new NAT flows and MAC churn through a vswitch
router with NAT and an uplink, for --minutes (default 10), sampled every --interval seconds (10).
Prints the figures and PASS/FAIL lines, writes bench/results/soak-STAMP.json and .png; exits 0 only
if every check passed. What it builds and checks: vswitch/tools/stress/soak.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vswitch.tools.stress.soak import Plan, passed, report, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/stress/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the loads run (default 10)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--out", metavar="DIR", help="where the JSON and PNG go (default: bench/results)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60 or not 1 <= args.interval <= args.minutes * 60:
        parser.error("--minutes: more than 0, at most a day; --interval: 1 s to the run's length")
    if os.geteuid() != 0:
        print("soak: needs root (namespaces, taps)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(__file__).resolve().parents[1] / "results"

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    doc, path = run(Plan(minutes=args.minutes, interval=args.interval), out, say)
    print("\n".join(report(doc)))
    print(f"results: {path}" + (f" and {doc['plot']}" if "plot" in doc else ""))
    return 0 if passed(doc) else 1


if __name__ == "__main__":
    sys.exit(main())
