"""`--busy-poll`: frames still flow, the control socket still answers while it spins, and the spinning
stops by itself once traffic does (an idle switch must not burn a core)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from .conftest import Env, pings, wait_for

pytestmark = pytest.mark.root

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def test_busy_poll_forwards_answers_and_goes_idle(env: Env) -> None:
    a, b = env.ns("a"), env.ns("b")
    sw = env.switch(a, b, args=["--busy-poll", "20000"])
    assert pings(a, "10.0.0.2", count=3)
    # A bounded flood keeps the switch spinning; the control socket must still answer meanwhile.
    flood = subprocess.Popen(
        ["ip", "netns", "exec", a, "ping", "-q", "-f", "-c", "20000", "-w", "20", "10.0.0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: sw.request("stats")["ports"][a]["rx_packets"] > 2000, 15, "the flood to flow")
        status = sw.request("status")
        assert status["instance"] == sw.name
    finally:
        out, _ = flood.communicate(timeout=30)
    assert flood.returncode == 0, out
    assert re.search(r"[ ,]0% packet loss", out), out
    # Once traffic stops, the spin ends: the process's CPU time stops growing.
    pid = sw.pid

    def idle() -> bool:
        before = cpu_ticks(pid)
        time.sleep(0.5)  # a measurement window, not a synchronisation: the deadline is wait_for's
        return cpu_ticks(pid) - before <= 0.1 * CLK_TCK * 0.5

    wait_for(idle, 10, "the switch to stop spinning after the flood")
