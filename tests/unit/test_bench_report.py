"""The bench's report without running a bench: a result document made here (or recorded from a run),
printed into a pipe (markdown) and on a terminal (rich), and the ratios summarise() derives; the
router's IPv6 rows, and how --ipv6 picks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vswitch.tools.bench import IPV6_NAMES, report, run, topologies
from vswitch.tools.bench.measure import FAMILY_FIGURES, FIGURES, FLOOR_FIGURES
from vswitch.tools.bench.topologies import IPV6_CONTENDERS


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


# --- the router's IPv6 rows (--ipv6) ------------------------------------------------------------------
# Recorded: `vswitch bench --quick --contenders kernel-nat,vswitch-nat --ipv6`, one round on the 2-core
# VM (2026-12-03), rounded; (TCP, TCP x4, pps, CPU sat., CPU 50k, ping avg, ping p99, ping b2b).
RECORDED: dict[str, tuple[float | None, ...]] = {
    "kernel-nat": (17.86, 39.25, 510_425.0, None, None, 0.006, 0.065, 0.003),
    "vswitch-nat": (13.16, 15.45, 156_280.0, 5.09, 4.60, 0.110, 0.732, 0.025),
    "kernel-routed6": (18.34, 15.73, 519_822.0, None, None, 0.006, 0.074, 0.002),
    "vswitch-routed6": (9.47, 13.66, 137_249.0, 4.72, 6.00, 0.099, 0.343, 0.023),
    "kernel-nat6": (13.70, 14.54, 365_935.0, None, None, 0.008, 0.062, 0.003),
    "vswitch-nat6": (8.36, 7.35, 87_061.0, 5.84, 7.10, 0.265, 2.390, 0.054),
}
RECORDED_KEYS = (
    "tcp_gbps",
    "tcp4_gbps",
    "udp64_pps",
    "cpu_us_per_pkt",
    "cpu_us_per_pkt_50k",
    "ping_avg_ms",
    "ping_p99_ms",
    "ping_b2b_avg_ms",
)


def recorded_document(skip_nat6: bool = False) -> dict[str, Any]:
    """The recorded run as a result document; skip_nat6: as if vswitch had refused --nat6 masquerade."""
    samples: dict[str, list[dict[str, float | None]]] = {}
    skipped: dict[str, str] = {}
    for name, values in RECORDED.items():
        if skip_nat6 and name == "vswitch-nat6":
            skipped[name] = "vswitch up refused --nat6 masquerade: not yet; skipped"
            continue
        figures = dict(zip(RECORDED_KEYS, values, strict=True))
        samples[name] = [{"round": 1, **figures, "loss50k_pct": 0.0, "offered50k_pps": 49_988.0}]
    doc: dict[str, Any] = {
        "mode": "quick",
        "rounds": 1,
        "plan": {"congestion": None},
        "machine": {"cpu_model": "CPU", "cores": 2, "kernel": "6.x", "tcp_congestion_control": "bbr"},
        "samples": samples,
        "results": {},
        "ratios": {},
        "skipped": skipped,
    }
    run.summarise(doc)
    return doc


def cells(lines: list[str], label: str) -> list[str]:
    """The cells of the first markdown row whose first cell is label."""
    row = next(line for line in lines if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_ipv6_rows_against_the_kernel_and_against_ipv4(capsys: pytest.CaptureFixture[str]) -> None:
    doc = recorded_document()
    assert list(doc["ratios"]) == [
        "vswitch-nat / kernel-nat",
        "vswitch-routed6 / kernel-routed6",
        "vswitch-nat6 / kernel-nat6",
        "kernel-nat6 / kernel-nat",
        "vswitch-nat6 / vswitch-nat",
    ]  # no python-floor in this run: no ratios to it
    assert list(doc["ratios"]["vswitch-nat6 / vswitch-nat"]) == list(FAMILY_FIGURES)
    report.print_table(doc)
    out = capsys.readouterr().out
    lines = out.splitlines()
    names = list(RECORDED)
    kernel_pairs = [
        "vswitch-nat / kernel-nat",
        "vswitch-routed6 / kernel-routed6",
        "vswitch-nat6 / kernel-nat6",
    ]
    assert "| " + " | ".join(["figure", "unit", *names, *kernel_pairs]) + " |" in lines
    assert cells(lines, "TCP, 1 stream") == [
        "TCP, 1 stream", "Gbit/s", "17.86", "13.16", "18.34", "9.47", "13.70", "8.36",
        "0.74x", "0.52x", "0.61x",
    ]  # fmt: skip
    assert cells(lines, "64-byte UDP delivered")[2:8] == [
        "510,425", "156,280", "519,822", "137,249", "365,935", "87,061"
    ]  # fmt: skip
    assert cells(lines, "switch CPU per 64-byte packet (saturated)")[2:] == [
        "n/a", "5.09", "n/a", "4.72", "n/a", "5.84", "n/a", "n/a", "n/a"
    ]  # fmt: skip
    assert cells(lines, "ping RTT avg, back to back")[7] == "0.054"
    # The third table: each router in IPv6 over itself in IPv4.
    family_header = "| figure | kernel-nat6 / kernel-nat | vswitch-nat6 / vswitch-nat |"
    assert family_header in lines
    family = lines[lines.index(family_header) :]
    assert family[1] == "|---|---:|---:|"
    assert cells(family, "TCP, 1 stream") == [
        "TCP, 1 stream",
        f"{13.70 / 17.86:.2f}x",
        f"{8.36 / 13.16:.2f}x",
    ]
    assert cells(family, "switch CPU per 64-byte packet (saturated)")[1:] == ["n/a", f"{5.84 / 5.09:.2f}x"]
    assert [row.split(" |")[0].lstrip("| ") for row in family[2 : 2 + len(FAMILY_FIGURES)]] == [
        FIGURES[key][0] for key in FAMILY_FIGURES
    ]
    # Under the tables: what the IPv6 columns' small frames are.
    assert (
        "kernel-routed6, vswitch-routed6, kernel-nat6, vswitch-nat6: IPv6 (iperf3 -6, ping -6); their "
        '"64-byte" loads carry the same 18-byte UDP payload in 84-byte frames (the IPv6 header is 20 '
        "bytes longer)"
    ) in lines
    assert all(len(line) < 400 for line in lines)


def test_a_refused_masquerade_leaves_its_row_out_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    doc = recorded_document(skip_nat6=True)
    assert "vswitch-nat6" not in doc["results"]
    assert not any("vswitch-nat6" in pair for pair in doc["ratios"])
    assert "kernel-nat6 / kernel-nat" in doc["ratios"]  # the kernel's IPv6 NAT is still measured
    report.print_table(doc)
    out = capsys.readouterr().out
    assert "| figure | kernel-nat6 / kernel-nat |" in out.splitlines()
    assert "vswitch-nat6: vswitch up refused --nat6 masquerade: not yet; skipped" in out.splitlines()


def test_ipv6_rows_on_a_terminal_and_in_the_chart(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    doc = recorded_document(skip_nat6=True)
    doc["machine"] |= {"python": "3.x", "date": "today"}
    report.write_chart(doc, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "250")  # rich's width: the titles unwrapped
    report.print_table(doc)
    out = capsys.readouterr().out
    assert "IPv6 against IPv4" in out and "kernel-nat6 / kernel-nat" in out
    assert "84-byte frames" in out and "vswitch-nat6: vswitch up refused --nat6 masquerade" in out


def test_ipv6_adds_the_router_rows_to_the_contenders_named_or_the_default() -> None:
    assert run.parse_contenders("kernel-nat,vswitch-nat", ipv6=True) == [
        "kernel-nat",
        "vswitch-nat",
        *IPV6_CONTENDERS,
    ]
    assert run.parse_contenders("vswitch-nat6,kernel-nat", ipv6=True) == [
        "vswitch-nat6", "kernel-nat", "kernel-routed6", "vswitch-routed6", "kernel-nat6"
    ]  # fmt: skip
    assert run.parse_contenders("kernel-nat6") == ["kernel-nat6"]  # by name, without --ipv6
    default = run.parse_contenders(None)
    assert not set(default) & set(IPV6_CONTENDERS)  # the default run keeps its length
    assert run.parse_contenders(None, ipv6=True) == [*default, *IPV6_CONTENDERS]
    assert IPV6_NAMES.split(",") == list(IPV6_CONTENDERS)  # the help text names them all


def test_the_masquerade_row_is_skipped_only_for_a_refused_nat6() -> None:
    refused = "vswitch: error: --nat6 'masquerade': expected one of none, prefix=OUTSIDE/LEN\n"
    assert topologies.refuses_nat6(refused)
    assert topologies.last_line(refused) == "--nat6 'masquerade': expected one of none, prefix=OUTSIDE/LEN"
    assert not topologies.refuses_nat6("vswitch: error: the kernel refused a step: File exists\n")
    status = {
        "ports": [{"namespace": "c", "address6": None}, {"namespace": "o", "address6": "fd00:b6::5/64"}]
    }
    assert topologies.port_address6(status, "o") == "fd00:b6::5"
    assert topologies.port_address6(status, "c") is None
