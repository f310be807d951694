"""The soak's plumbing (issue 22): bench/stress/soak.py for 20 s, sampled every 5 s.

Not the soak itself (`make soak`, 10 minutes): this checks that every stream ran and was counted, that
the JSON has the samples and figures the soak's checks read, that those checks pass on a short run,
and that nothing of it is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import namespaces

pytestmark = pytest.mark.root

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "stress" / "soak.py"
SECONDS = 20
INTERVAL = 5


def test_a_short_soak_counts_every_stream_and_passes_its_checks(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--minutes", str(SECONDS / 60), "--interval", str(INTERVAL),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=SECONDS + 60,
    )  # fmt: skip
    (path,) = tmp_path.glob("soak-*.json")
    doc = json.loads(path.read_text())
    assert doc["errors"] == [], proc.stderr
    assert path.with_suffix(".png").stat().st_size > 0
    samples = doc["samples"]
    # the start, one per interval, and the one after the drain
    assert [s["t"] for s in samples[:-1]] == pytest.approx([0, 5, 10, 15, 20], abs=1.5)
    for sample in samples:
        v = sample["vswitch"]
        assert v["rss_kib"] > 0 and v["fds"] > 0
        assert {"fdb", "arp", "conntrack", "flow_cache", "nat_mappings"} <= v["tables"].keys()
        assert v["tables"].keys() <= v["bounds"].keys()
        assert {"last", "recent_max", "max", "mean"} <= v["loop_lag"].keys()
        assert {"udp_sender_ns", "udp_receiver_ns", "links"} <= sample["kernel"].keys()
    end = samples[-1]
    assert end["vswitch"]["loop_lag"]["count"] > 0
    acc = doc["accounting"]
    # every stream carried traffic at about its rate (loose: a loaded machine sends less, never more)
    assert 0.5 * 2000 * SECONDS <= acc["udp"]["sent"] <= 2000 * SECONDS + 1
    assert 0.5 * 100 * SECONDS <= acc["macs"]["sent"] <= 100 * SECONDS + 1
    assert acc["ping"]["sent"] >= 0.5 * SECONDS / 0.2
    assert acc["nat"]["sent"] >= 0.5 * 50 * SECONDS
    assert acc["tcp"]["received_bytes"] > 0
    assert end["vswitch"]["tables"]["fdb"]["lan"] >= acc["macs"]["received"] * 0.9  # churned MACs learned
    # a new flow each, but where the client reuses a source port whose flow is still closing (CLOSE, 10 s)
    assert end["vswitch"]["events"]["nat-new-flow"] >= 0.9 * acc["nat"]["received"]
    checks = doc["checks"]
    assert set(checks) == {"rss_flat", "fds_flat", "tables_bounded", "accounting", "drops_explained"}
    failed = {name: check for name, check in checks.items() if not check["pass"]}
    assert failed == {}, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("PASS accounting", "PASS tables_bounded", "PASS rss_flat"):
        assert line in proc.stdout
    assert namespaces(doc["prefix"]) == set()
