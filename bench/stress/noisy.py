"""Noisy neighbour (issue 22): a fixed overload from one port must not starve the others.

Run as root from the checkout: `make stress-noisy` (or `.venv/bin/python bench/stress/noisy.py`;
`--quick` for one 2-second round, `--pps N` for a fixed pace). It prints a table and writes
bench/results/stress-noisy-STAMP.json and .png. What it builds and measures:
vswitch/tools/stress/noisy.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vswitch.tools.stress.noisy import main

if __name__ == "__main__":
    sys.exit(main(checkout=Path(__file__).resolve().parents[2]))
