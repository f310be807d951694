"""The bench's report without running a bench: a result document made here, printed into a pipe
(markdown) and on a terminal (rich), and the ratios summarise() derives."""

from __future__ import annotations

from typing import Any

import pytest

from vswitch.tools.bench import report, run
from vswitch.tools.bench.measure import FIGURES, FLOOR_FIGURES


def document() -> dict[str, Any]:
    """Two rounds of four contenders; every figure differs, so a misplaced cell shows."""
    names = ["kernel-bridge", "python-floor", "vswitch-l2", "vswitch-nat"]
    samples: dict[str, list[dict[str, float | None]]] = {}
    for i, name in enumerate(names):
        rounds = []
        for r in range(2):
            figures: dict[str, float | None] = {k: float(10 * (i + 1) + j + r) for j, k in enumerate(FIGURES)}
            if name.startswith("kernel"):
                figures["cpu_us_per_pkt"] = figures["cpu_us_per_pkt_50k"] = None
            rounds.append({"round": r + 1, **figures, "offered50k_pps": 50_000.0})
        samples[name] = rounds
    doc: dict[str, Any] = {
        "mode": "test",
        "rounds": 2,
        "plan": {"congestion": "cubic"},
        "machine": {"cpu_model": "CPU", "cores": 2, "kernel": "6.x", "tcp_congestion_control": "bbr"},
        "samples": samples,
        "results": {},
        "ratios": {},
        "skipped": {"ovs-l2": "ovs-vswitchd not installed; skipped"},
    }
    run.summarise(doc)
    return doc


def test_ratios_are_quotients_of_the_medians_against_the_kernel_and_the_floor() -> None:
    doc = document()
    results = doc["results"]
    assert set(doc["ratios"]) == {
        "vswitch-l2 / kernel-bridge",
        "vswitch-l2 / python-floor",
        "vswitch-nat / python-floor",
    }  # no kernel-nat measured: no vswitch-nat / kernel-nat
    floor = doc["ratios"]["vswitch-l2 / python-floor"]
    assert list(floor) == list(FLOOR_FIGURES)
    for key in FLOOR_FIGURES:
        assert floor[key] == pytest.approx(results["vswitch-l2"][key] / results["python-floor"][key])
    assert doc["ratios"]["vswitch-l2 / kernel-bridge"]["cpu_us_per_pkt"] is None  # the kernel has none


def test_into_a_pipe_the_tables_are_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    doc = document()
    report.print_table(doc)  # pytest's capture is not a terminal
    out = capsys.readouterr().out
    lines = out.splitlines()
    columns = ["figure", "unit", "kernel-bridge", "python-floor", "vswitch-l2", "vswitch-nat"]
    header = "| " + " | ".join([*columns, "vswitch-l2 / kernel-bridge"]) + " |"
    assert header in lines
    assert lines[lines.index(header) + 1] == "|---|---|---:|---:|---:|---:|---:|"
    tcp = next(line for line in lines if line.startswith("| TCP, 1 stream |"))
    cells = [cell.strip() for cell in tcp.strip("|").split("|")]
    assert cells == ["TCP, 1 stream", "Gbit/s", "10.50", "20.50", "30.50", "40.50", f"{30.5 / 10.5:.2f}x"]
    assert "| figure | vswitch-l2 | vswitch-nat |" in lines  # the floor's table
    assert "TCP cubic" in out and "ovs-l2: ovs-vswitchd not installed; skipped" in out
    assert all(len(line) < 400 for line in lines)  # one line per row: nothing wrapped
    assert "━" not in out and "┃" not in out  # no rich box drawing in a file


def test_on_a_terminal_the_tables_are_rich(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    report.print_table(document())
    out = capsys.readouterr().out
    assert "┃" in out or "│" in out
    assert "python-floor" in out
