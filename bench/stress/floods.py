"""Floods against vswitch while victims on other ports keep a TCP stream and a ping (issue 22).

Run as root from the checkout: `make stress-floods` (or `.venv/bin/python bench/stress/floods.py`;
`--quick` for 2-second windows, `--only syn,runts` for some of the floods, `--pps N` for another pace).
It prints a table (rich on a terminal, markdown into a pipe) and writes
bench/results/stress-floods-STAMP.json and .png. What it builds and measures:
vswitch/tools/stress/floods.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vswitch.tools.stress.floods import main

if __name__ == "__main__":
    sys.exit(main(checkout=Path(__file__).resolve().parents[2]))
