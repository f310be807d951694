"""The soak's checks (tools/stress/soak.py) on made-up samples: each one fails when it should."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vswitch.tools.stress.soak import (
    LAN,
    Plan,
    Soak,
    accounting,
    checks,
    diff_drops,
    kernel_drops,
)

SOAK = Soak("vskt", Path("/nonexistent"), Plan(minutes=2))
TAGS = (*LAN, "nat", "out")


def sample(t: float, rss: int = 1000, fds: int = 20, conntrack: int = 10) -> dict[str, Any]:
    links = {tag: {"rx_packets": 0, "tx_packets": 0, "rx_dropped": 0, "tx_dropped": 0} for tag in TAGS}
    return {
        "t": t,
        "streams": {
            "tcp": {"sent_bytes": 100, "received_bytes": 100, "retransmits": 0},
            "udp": {"sent": 0, "received": 0, "socket_drops": 0},
            "ping": {"sent": 0, "received": 0},
            "nat": {"sent": 0, "received": 0, "failed": {}},
            "macs": {"sent": 0, "received": 0, "socket_drops": 0},
        },
        "vswitch": {
            "rss_kib": rss,
            "fds": fds,
            "ports": {f"vskt-{tag}": {"drops": {}} for tag in TAGS},
            "events": {},
            "tables": {"fdb": {"lan": 5}, "conntrack": conntrack},
            "bounds": {"fdb": {"lan": 4097}, "conntrack": 100},
            "loop_lag": {},
        },
        "kernel": {"links": links, "udp_sender_ns": {"SndbufErrors": 0}, "udp_receiver_ns": {}},
    }


def run_checks(start: dict[str, Any], end: dict[str, Any], middle: Sequence[dict[str, Any]] = ()) -> Any:
    doc: dict[str, Any] = {"samples": [start, *middle, end]}
    doc["accounting"] = accounting(SOAK, start, end, {"sndbuf_errors": 0})
    doc["drops"] = diff_drops(start, end)
    doc["kernel_drops"] = kernel_drops(start, end)
    return checks(doc, Plan(minutes=2))


def ended(udp_sent: int, udp_received: int) -> dict[str, Any]:
    end = sample(120)
    end["streams"]["udp"].update(sent=udp_sent, received=udp_received)
    return end


def test_a_clean_run_passes_every_check() -> None:
    result = run_checks(sample(0), ended(1000, 1000), [sample(60), sample(90)])
    assert {name: c["pass"] for name, c in result.items()} == dict.fromkeys(result, True)


def test_a_datagram_lost_without_a_drop_fails_the_accounting() -> None:
    result = run_checks(sample(0), ended(1000, 999), [sample(60)])
    assert not result["accounting"]["pass"] and result["accounting"]["streams"]["udp"] is False


def test_a_datagram_lost_to_a_counted_drop_adds_up_but_the_reason_must_be_explained() -> None:
    end = ended(1000, 999)
    end["vswitch"]["ports"]["vskt-udp"]["drops"] = {"tx-queue-full": 1}
    result = run_checks(sample(0), end, [sample(60)])
    assert result["accounting"]["pass"]
    assert result["drops_explained"]["unexplained"] == ["tx-queue-full"]


def test_a_kernel_drop_counts_in_the_accounting_and_the_churns_floods_are_explained() -> None:
    end = ended(1000, 999)
    end["kernel"]["links"]["out"]["rx_dropped"] = 1  # the receiving tap's queue
    end["streams"]["macs"].update(sent=50, received=50)
    for tag in ("tcp", "udp", "ping"):
        end["kernel"]["links"][tag]["rx_dropped"] = 50
    result = run_checks(sample(0), end, [sample(60)])
    assert result["accounting"]["pass"]
    assert result["drops_explained"]["unexplained"] == ["out.rx_dropped"]  # nothing explains that one
    end["kernel"]["links"]["tcp"]["rx_dropped"] = 49  # not one per churn frame: unexplained too
    assert "tcp.rx_dropped" in run_checks(sample(0), end, [sample(60)])["drops_explained"]["unexplained"]


def test_growth_after_the_warmup_and_tables_over_their_bound_fail() -> None:
    grown = run_checks(sample(0, rss=500), sample(120, rss=1060), [sample(60, rss=1000), sample(90)])
    # 500 -> 1000 before the warm-up's end (60 s) does not count; 1000 -> 1060 after it does
    assert not grown["rss_flat"]["pass"] and grown["rss_flat"]["growth"] == 0.06
    assert grown["fds_flat"]["pass"]
    leaky = run_checks(sample(0), sample(120, fds=22), [sample(60, fds=20)])
    assert not leaky["fds_flat"]["pass"]
    over = copy.deepcopy(sample(90, conntrack=101))
    result = run_checks(sample(0), sample(120), [sample(60), over])
    assert not result["tables_bounded"]["pass"]
    assert result["tables_bounded"]["violations"] == ["t=90: conntrack 101 > 100"]
