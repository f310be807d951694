"""Crash at any moment, many times (issue 22; `make stress-crash`): `vswitch up` SIGKILLed at random
moments of start-up, running (with live port changes) and teardown, then `vswitch down`, each time
checked for anything of vswitch's left and anything of the user's touched
(vswitch/tools/stress/crash.py says what is checked).

Bounded by both --iterations and --minutes. Prints a line per iteration (its seed and kind: a failure
is repeated by `--seed SEED --iterations 1 --kinds KIND`) and a summary, writes the results as JSON,
and exits 1 if any iteration failed. Root, real namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path

from vswitch.tools.stress.crash import KINDS, run

RESULTS = Path(__file__).resolve().parent.parent / "results"


def kinds(text: str) -> list[str]:
    chosen = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in KINDS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown)} (kinds: {', '.join(KINDS)})")
    return chosen


def report(text: str) -> None:
    print(text, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--iterations", type=int, default=50, help="at most this many (default 50)")
    add("--minutes", type=float, default=30.0, help="start none after this long (default 30)")
    add("--seed", type=int, help="the first iteration's seed; the next ones count up (default: random)")
    add("--kinds", type=kinds, default=list(KINDS), help=f"comma-separated, in turn ({','.join(KINDS)})")
    add("--prefix", default="vcr", help="every namespace made starts with this (default vcr)")
    add("--json", type=Path, help="where the results go (default bench/results/crash-TIME.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("crash: needs root (namespaces, taps)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    print(f"crash at any moment: up to {args.iterations} iterations, {args.minutes:g} min, seed {seed}, "
          f"kinds {','.join(args.kinds)}", flush=True)  # fmt: skip
    started = time.monotonic()
    results = run(args.iterations, seed, args.minutes, args.kinds, args.prefix, report)
    elapsed = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    per_kind = Counter(r.kind for r in results)
    failed_kind = Counter(r.kind for r in failed)
    clean = len(results) - len(failed)
    print(f"\n{len(results)} iterations in {elapsed:.0f}s: {clean} clean, {len(failed)} failed")
    for kind in args.kinds:
        print(f"  {kind:24} {per_kind[kind]:3} run, {failed_kind[kind]:3} failed")
    for result in failed:
        print(f"  repeat: --seed {result.seed} --iterations 1 --kinds {result.kind}")
    path = args.json or RESULTS / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"seed": seed, "kinds": args.kinds, "iterations": len(results), "failed": len(failed),
               "seconds": round(elapsed, 1), "results": [r.as_dict() for r in results]}  # fmt: skip
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results: {path}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
