"""The stress tools against a real vswitch, briefly (issue 22): the load generator's bounds, and one flood
run end to end. The full floods and the noisy neighbour are `make stress-floods` / `make stress-noisy`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vswitch.tools.stress.floods import FLOODS, Plan, run_flood
from vswitch.tools.stress.lab import Lab, link_bytes
from vswitch.tools.stress.load import UNPACED_BURST

from .conftest import Env, make_world, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Env]:
    """An Env whose namespaces are this helper's (vfl + 6 hex), all removed afterwards."""
    with make_world(tmp_path, "vfl") as env:
        yield env


def send(env: Env, ns: str, *args: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "vswitch.tools.stress.load", "--netns", ns, *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env.environ)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_sender_stops_at_its_count_and_vswitch_forwards_what_it_sent(world: Env) -> None:
    a, b = world.ns("a"), world.ns("b")
    sw = world.switch(a, b)
    port_b = next(p for p in sw.table["ports"] if p["namespace"] == b)
    rx_before = link_bytes(b)["rx_packets"]
    frames = ["--kind", "udp64", "--dst-mac", port_b["mac"], "--src-ip", "10.0.0.1", "--dst-ip", "10.0.0.2"]
    result = send(world, a, *frames, "--count", "3000", "--seconds", "20", "--frames", "500")
    assert result["stopped_by"] == "count"
    assert result["attempted"] == 3000
    assert result["distinct_frames"] == 500
    sent = result["sent"]
    assert isinstance(sent, int) and sent > 0
    # Every frame the tap took reaches b: to b's MAC, learned or (before b spoke) flooded to the only
    # other port.
    wait_for(lambda: link_bytes(b)["rx_packets"] - rx_before >= sent, 10, "b to receive what a sent")


def test_a_paced_sender_stops_at_its_time_bound(world: Env) -> None:
    a, b = world.ns("a"), world.ns("b")
    world.switch(a, b)
    result = send(world, a, "--kind", "udp64", "--pps", "2000", "--count", "1000000", "--seconds", "1")
    assert result["stopped_by"] == "seconds"
    attempted = result["attempted"]
    assert isinstance(attempted, int) and 0 < attempted <= 2000 + UNPACED_BURST  # paced: never ahead


def test_a_runt_flood_leaves_vswitch_answering_and_counts_its_drops(
    world: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSWITCH_RUN_DIR", str(world.run_dir))
    lab = Lab(world.prefix, world.instance_name(), world.tmp)
    plan = Plan(baseline=1.0, flood=2.0, pps=20_000, kinds=("runts",))
    try:
        row = run_flood(lab, FLOODS["runts"], plan, lambda _text: None)
    finally:
        assert lab.close() == []
    assert row["alive"] and row["cli_status"]["ok"]
    assert row["control"]["unanswered"] == 0 and row["control"]["polls"] >= 2
    # The runts the kernel let through were read and dropped under their reasons.
    assert {"ip-truncated", "ip-bad-length", "arp-malformed"} <= set(row["drops"])
    # The victims were not cut off: the stream moved and pings were answered during the flood.
    assert row["victim_tcp"]["during_gbps"] > 0
    assert row["victim_ping"]["during"]["received"] > 0
    assert row["tables"]["fdb"] >= 4  # the three ports' hosts and the outside, nothing lost
