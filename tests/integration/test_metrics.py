"""`vswitch up --metrics`: the real switch scraped over HTTP and read with prometheus-client's parser.

Counters grow with a ping, the default listener is on loopback only, and scrapes taken while a flood
crosses the switch all parse, never go backwards and leave the switch running (the page is built on
the loop's thread, between batches: see vswitch/shell/metrics.py).
"""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Env, make_world, pings, wait_for

pytestmark = pytest.mark.root

Series = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted (label, value) pairs


@pytest.fixture
def menv(tmp_path: Path) -> Iterator[Env]:
    """The shared Env harness, with this file's own namespace prefix ("vsm" + 6 hex)."""
    with make_world(tmp_path, "vsm") as world:
        yield world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    """(Content-Type, body) of GET path."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.headers["Content-Type"]), reply.read().decode()


def samples(text: str) -> dict[Series, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def port_value(values: dict[Series, float], column: str, port: str) -> float:
    return values[f"vswitch_port_{column}_total", (("port", port),)]


def listeners(port: int) -> set[str]:
    """Local addresses (kernel hex, as in /proc/net/tcp[6]) listening on TCP port, in our namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.rpartition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: TCP_LISTEN
                    found.add(address)
    return found


def test_a_ping_grows_the_counters_of_both_ports(menv: Env) -> None:
    a, b = menv.ns("a"), menv.ns("b")
    port = free_port()
    menv.switch(a, b, args=["--metrics", f"127.0.0.1:{port}"])
    ctype, text = scrape(port)
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    before = samples(text)
    assert pings(a, "10.0.0.2", count=3)
    _, text = scrape(port)
    after = samples(text)

    for column in ("rx_packets", "tx_packets"):  # a's requests in, out to b; b's replies back
        for ns in (a, b):
            assert port_value(after, column, ns) >= port_value(before, column, ns) + 3, (column, ns)
    for column in ("rx_bytes", "tx_bytes"):
        for ns in (a, b):
            assert port_value(after, column, ns) >= port_value(before, column, ns) + 3 * 98, (column, ns)
    assert after["vswitch_fdb_entries", ()] >= 2
    assert ("process_cpu_seconds_total", ()) in after
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vswitch_port_rx_packets", "vswitch_drops", "vswitch_router_drops"):
        assert families[name].type == "counter" and families[name].documentation
    assert families["vswitch_fdb_entries"].type == "gauge"
    assert "# TYPE vswitch_port_rx_packets_total counter\nvswitch_port_rx_packets_total{port=" in text


def test_the_default_host_is_loopback_and_other_paths_are_404(menv: Env) -> None:
    a, b = menv.ns("a"), menv.ns("b")
    port = free_port()
    menv.switch(a, b, args=["--metrics", str(port)])
    assert listeners(port) == {"0100007F"}  # 127.0.0.1, and nothing on any other address or on v6
    assert scrape(port)[1].startswith("# HELP ")
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(port, "/")
    assert missing.value.code == 404


def test_scrapes_during_a_flood_parse_and_never_go_backwards(menv: Env) -> None:
    a, b = menv.ns("a"), menv.ns("b")
    port = free_port()
    sw = menv.switch(a, b, args=["--metrics", f"127.0.0.1:{port}"])
    flood = subprocess.Popen(
        ["ip", "netns", "exec", a, "ping", "-q", "-f", "-c", "20000", "-w", "20", "10.0.0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    menv.peers.append(flood)
    seen: list[float] = []

    def scraped_enough() -> bool:
        seen.append(port_value(samples(scrape(port)[1]), "rx_packets", a))
        return len(seen) >= 30 and seen[-1] > 2000

    try:
        wait_for(scraped_enough, 30, "30 scrapes while the flood crosses the switch")
    finally:
        flood.communicate(timeout=30)
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert sw.alive()
    assert "Traceback" not in sw.stderr()
